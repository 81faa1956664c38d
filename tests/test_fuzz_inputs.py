"""Property-based fuzzing of what a user hands the assistant: batch input files, log imports
and search queries, as arbitrary bytes, nested JSON and text with lone surrogates.

Whatever the input: the exit code is 0, 1 or 2 (never a traceback), each bad record is one
line of the failure list, the input file is unchanged, and the log passes SQLite's
integrity check. Seeded (derandomize) and bounded (max_examples, deadline), so a run is
the same every time and takes about fifteen seconds.
"""
from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assistant import cli as cli_module
from assistant.cli import cli
from assistant.cli_logs import logs
from assistant.store import Store, fts_query
from fakes import FakeBackend

FUZZ = settings(max_examples=60, deadline=timedelta(seconds=20), derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

# Any character, lone surrogates (what a JSON \ud83d escape or an undecodable byte becomes) included.
chars = st.one_of(st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=()),
                  st.sampled_from("\x00\x1b\n\r\t\"\\,{}[]:"))
texts = st.text(chars, max_size=40)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), texts)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(texts, inner, max_size=4)), max_leaves=12)
field_names = st.sampled_from(["id", "question", "dialogue", "transcript", "text", "section", "section_header"])
records = st.one_of(st.dictionaries(field_names, values, max_size=4), values)


def encode_json(value, ascii_only: bool) -> bytes:
    # ensure_ascii writes a lone surrogate as a \u escape; without it, as the bytes
    # "surrogatepass" makes, which are not UTF-8.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text


@st.composite
def batch_files(draw) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from([".jsonl", ".json", ".csv", ".txt"]))
    kind = draw(st.sampled_from(["bytes", "structured", "deep"]))
    if kind == "bytes":
        return suffix, draw(st.binary(max_size=300))
    if kind == "deep":
        depth = draw(st.integers(50, 50_000))
        line = b'{"id": "d", "question": ' + b"[" * depth + b"]" * depth + b"}"
        return suffix, b'{"id": "ok", "question": "What is a cold?"}\n' + line + b"\n"
    rows = draw(st.lists(records, max_size=5))
    ascii_only = draw(st.booleans())
    if suffix == ".csv":
        header = draw(st.sampled_from(["id,question", "id,dialogue,section", "question", "ID,Text"]))
        cells = [",".join(csv_cell(v if isinstance(v, str) else json.dumps(v)) for v in
                          (r.values() if isinstance(r, dict) else [r])) for r in rows]
        return suffix, "\n".join([header, *cells]).encode("utf-8", "surrogatepass")
    if suffix == ".txt":
        return suffix, "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows
                                 ).encode("utf-8", "surrogatepass")
    if suffix == ".json":
        return suffix, encode_json(rows, ascii_only)
    return suffix, b"\n".join(encode_json(r, ascii_only) for r in rows)


@pytest.fixture
def fake(monkeypatch):
    backend = FakeBackend(reply="a short reply", delay=0)
    monkeypatch.setattr(cli_module, "load_backend", lambda *a, **k: backend)
    return backend


def integrity_ok(db: Path) -> bool:
    if not db.exists():
        return True
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def assert_clean(result, codes=(0, 1, 2)) -> None:
    assert result.exit_code in codes, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


def assert_one_line_per_failure(output: str) -> None:
    """The failure list's count matches its lines: no record's error spread over several."""
    m = re.search(r"^(\d+) record\(s\) failed:$", output, re.MULTILINE)
    if m:
        listed = output[m.end():].strip("\n").split("\n")
        assert len([line for line in listed if line.startswith("  ")]) == int(m[1]), output


@FUZZ
@given(task=st.sampled_from(["ask", "summarize"]), file=batch_files())
def test_batch_readers_never_crash_and_leave_the_input_alone(fake, task, file):
    suffix, data = file
    with tempfile.TemporaryDirectory() as d:
        src, db = Path(d) / f"input{suffix}", Path(d) / "logs.db"
        src.write_bytes(data)
        args = [task, *(["-i"] if task == "ask" else []), str(src), "-o", str(Path(d) / "out.jsonl"),
                "--db", str(db)] + (["--best-of", "1"] if task == "summarize" else [])
        result = CliRunner().invoke(cli, args)
        assert_clean(result)
        assert_one_line_per_failure(result.output)
        assert src.read_bytes() == data
        assert integrity_ok(db)


dates = st.one_of(st.sampled_from(["2025-01-01T00:00:00", "2025-03-01T20:00:00-08:00", "9999-12-31T23:59:59-12:00",
                                   "0001-01-01T00:00:00+14:00", "20250101T120000", ""]), texts, st.integers())
messages = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["user", "assistant"]), texts), "created": dates},
    optional={"content": st.one_of(texts, values), "status": st.one_of(st.sampled_from(["complete", "error"]), texts),
              "meta": values, "options": values, "prompt_tokens": scalars, "ttft_s": scalars, "id": values,
              "model": st.one_of(texts, values)})
sessions = st.fixed_dictionaries(
    {"id": st.one_of(texts, values), "mode": st.one_of(st.sampled_from(["chat", "batch"]), texts),
     "created": dates, "updated": dates},
    optional={"title": st.one_of(texts, values), "archived": scalars, "messages": st.lists(messages, max_size=3),
              "batch_runs": st.lists(st.dictionaries(st.sampled_from(["task", "status", "started", "counts",
                                                                       "input_path"]), values), max_size=2)})


@st.composite
def exports(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "structured", "structured", "structured"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    doc = {"format": "health-assistant-logs", "version": 1, "sessions": draw(st.lists(sessions, max_size=3))}
    return encode_json(doc, draw(st.booleans()))


@FUZZ
@given(data=exports())
def test_import_never_crashes_and_what_it_stores_reads_back(data):
    with tempfile.TemporaryDirectory() as d:
        src, db = Path(d) / "export.json", Path(d) / "logs.db"
        src.write_bytes(data)
        result = CliRunner().invoke(logs, ["import", "--db", str(db), str(src)])
        assert_clean(result, codes=(0, 1))
        assert src.read_bytes() == data
        assert integrity_ok(db)
        if result.exit_code == 0:  # every command reads back what was imported
            for args in (["list", "--archived", "-n", "100"], ["export", "--all", "--format", "json"],
                         ["search", "a"]):
                again = CliRunner().invoke(logs, [*args, "--db", str(db)])
                assert again.exit_code == 0, again.output
            with Store(db) as st_:
                ids = [s["id"] for s in st_.list_sessions(limit=100, include_archived=True)]
            for sid in ids:
                shown = CliRunner().invoke(logs, ["show", "--db", str(db), sid])
                assert shown.exit_code == 0, shown.output


@pytest.fixture(scope="module")
def searchable(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("search") / "logs.db"
    with Store(db) as st_:
        sid = st_.new_session("chat", "m", title="Knee pain")
        for text in ("My knee hurts after running", "Rest the knee and use ice", 'Quotes " and NEAR(a b) AND OR *'):
            st_.add_message(sid, "user", text)
    return db


@FUZZ
@given(query=st.text(chars, max_size=60))
def test_any_search_query_is_plain_words_never_fts_syntax(searchable, query):
    match = fts_query(query)
    assert all(re.fullmatch(r'"\w+"', term) for term in match.split())
    with Store(searchable, read_only_ok=True) as st_:
        st_.search(query)
        st_.sessions_titled(query)
    result = CliRunner().invoke(logs, ["search", "--db", str(searchable), "--", query])
    assert_clean(result, codes=(0,))
    assert integrity_ok(searchable)


def test_the_fuzzers_reach_the_cases_they_are_for(fake, tmp_path):
    """The strategies above produce what they claim: a deep line, a lone surrogate escape
    and bytes that are not UTF-8 each give their own one-line error."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"id": "ok", "question": "What is a cold?"}\n'
                    + b'{"id": "d", "question": ' + b"[" * 50_000 + b"]" * 50_000 + b"}\n"
                    + encode_json({"id": "s", "question": "half \ud83d"}, True) + b"\n"
                    + encode_json({"id": "b", "question": "half \ud83d"}, False) + b"\n")
    result = CliRunner().invoke(cli, ["ask", "-i", str(src), "-o", str(tmp_path / "o.jsonl"), "--no-log"])
    assert result.exit_code == 1
    assert "3 record(s) failed" in result.output
    assert f"{src}:2: malformed JSON (nested too deeply)" in result.output
    assert f"{src}:3: field 'question' holds half of a character" in result.output
    assert f"{src}:4: not valid UTF-8" in result.output
    assert_one_line_per_failure(result.output)
