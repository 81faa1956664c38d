"""What a hostile input, a full disk or a root user could do, each case reproduced: device
files, terminal escape sequences, unbounded input, inputs that used to end in a traceback,
hard links, a damaged log and the smaller cases beside them."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from assistant import batch_io
from assistant import cli as cli_module
from assistant import store as store_mod
from assistant.cli import cli
from assistant.cli_logs import logs
from assistant.store import LogDamaged, Store, StoreError
from assistant.visible import visible
from fakes import FakeBackend

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def fake(monkeypatch):
    backend = FakeBackend(reply=lambda msgs: "answer to " + msgs[-1]["content"].split()[-1])
    monkeypatch.setattr(cli_module, "load_backend", lambda *a, **k: backend)
    real_answer = cli_module.answer  # the fake model's text as it streams, not a knowledge-base extract
    monkeypatch.setattr(cli_module, "answer", lambda *a, **k: real_answer(*a, grounded=False, **k))
    return backend


def invoke(command, *args, **kw):
    return CliRunner().invoke(command, [*map(str, args)], **kw)


def one_line_error(result) -> str:
    """The error a user sees: one line, no traceback (an exception escaping click is one)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(errors) == 1, result.output
    return errors[0]


def write_jsonl(path: Path, rows) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def filled_log(tmp_path) -> Path:
    db = tmp_path / "logs.db"
    with Store(db) as st:
        sid = st.new_session("chat", "m", title="Knee pain")
        st.add_message(sid, "user", "My knee hurts after running")
        st.add_message(sid, "assistant", "Rest the knee.", model="m")
    return db


# --- 1. only regular files we create get our mode ----------------------------------------


def device_node(folder: Path) -> Path:
    """A character device like /dev/null (major 1, minor 3), readable and writable by all."""
    if not ROOT:
        pytest.skip("making a device node needs root (the case is a kiosk service run as root)")
    node = folder / "null"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    node.chmod(0o666)
    return node


def test_an_export_to_a_device_leaves_its_mode_alone(filled_log, tmp_path):
    node = device_node(tmp_path)
    r = invoke(logs, "export", "--all", "--db", filled_log, "-o", node)
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(node.stat().st_mode) == 0o666 and stat.S_ISCHR(node.stat().st_mode)


def test_an_export_into_a_pipe_is_written_and_the_pipe_keeps_its_mode(filled_log, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo, 0o644)
    fifo.chmod(0o644)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    r = invoke(logs, "export", "--all", "--db", filled_log, "-o", fifo)
    reader.join(10)
    assert r.exit_code == 0, r.output
    assert b"My knee hurts" in received[0]
    assert stat.S_IMODE(fifo.stat().st_mode) == 0o644


@pytest.mark.parametrize("kind", ["device", "pipe"])
def test_a_backup_to_a_device_or_pipe_is_refused_untouched(filled_log, tmp_path, kind):
    if kind == "device":
        target = device_node(tmp_path)
    else:
        target = tmp_path / "pipe"
        os.mkfifo(target, 0o644)
    before = stat.S_IMODE(target.stat().st_mode)
    r = invoke(logs, "backup", "--db", filled_log, target)
    assert r.exit_code == 1
    assert "not a regular file" in one_line_error(r)
    assert stat.S_IMODE(target.stat().st_mode) == before
    assert not target.with_name(target.name + "-journal").exists()


# --- 2. terminal escape sequences ---------------------------------------------------------

HOSTILE = ("\x1b[2J\x1b]0;owned\x07 Title \x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\ "
           "\x9b31m red \x90dcs\x9c \x08\x7f\r end")


def test_visible_keeps_text_and_shows_every_control_character():
    assert visible("line one\n\tindented — ünïcode ✓") == "line one\n\tindented — ünïcode ✓"
    out = visible("".join(map(chr, [*range(0x20), 0x7F, *range(0x80, 0xA0)])))
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in out.replace("\n", "").replace("\t", ""))
    assert visible("\x1b[2J") == "\u241b[2J" and visible("\x9b") == "\\x9b"


@pytest.fixture
def hostile_log(tmp_path) -> tuple[Path, str]:
    db = tmp_path / "logs.db"
    export = {"format": "health-assistant-logs", "version": 1, "sessions": [{
        "id": "imported\x1b[2J", "title": HOSTILE, "mode": "chat", "model": "m\x1b]0;x\x07",
        "created": "2025-01-01T00:00:00+00:00", "updated": "2025-01-01T00:00:00+00:00",
        "messages": [{"role": "user", "content": "wombat " + HOSTILE, "created": "2025-01-01T00:00:00+00:00"},
                     {"role": "assistant", "content": "wombat reply " + HOSTILE, "status": "error",
                      "meta": {"error": "bad \x1b[31m thing"}, "created": "2025-01-01T00:00:01+00:00"}],
        "batch_runs": [{"task": "ask\x1b[1m", "input_path": "in\x1b[2J.jsonl", "status": "complete",
                        "started": "2025-01-01T00:00:00+00:00"}],
    }]}
    src = tmp_path / "export.json"
    src.write_text(json.dumps(export))
    assert invoke(logs, "import", "--db", db, src).exit_code == 0
    return db, "imported\x1b[2J"


@pytest.mark.parametrize("columns", ["80", "20", "0"])
def test_logs_show_list_and_search_print_no_control_characters(hostile_log, columns):
    db, sid = hostile_log
    env = {"COLUMNS": columns}
    outputs = [invoke(logs, "list", "--db", db, env=env), invoke(logs, "show", "--db", db, sid, env=env),
               invoke(logs, "search", "--db", db, "wombat", env=env)]
    for r in outputs:
        assert r.exit_code == 0, r.output
        assert not any(ord(c) < 0x20 and c not in "\n" or 0x7F <= ord(c) < 0xA0 for c in r.stdout), repr(r.stdout)
    listing, shown, found = (r.stdout for r in outputs)
    assert "imported\u241b[2J" in listing.replace("\n", "") or "imported\u241b[2J" in listing
    assert "\u241b]0;owned\u2407 Title" in shown and "\\x9b31m red" in shown and "error: bad \u241b[31m" in shown
    assert "wombat" in found


async def test_the_app_shows_stored_escape_sequences_as_visible_text(hostile_log):
    from assistant.tui.app import HealthAssistantApp
    from assistant.tui.widgets import ChatMessage, SessionItem, SessionList
    from textual.widgets import Label, Markdown, Static

    db, sid = hostile_log
    app = HealthAssistantApp(backend_factory=FakeBackend, model_name="fake", store=Store(db), triage=None)
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(200):
            if app.query(SessionItem):
                break
            await pilot.pause(0.02)
        session_list = app.query_one(SessionList)
        session_list.focus()
        session_list.index = 0
        await pilot.press("enter")
        for _ in range(200):
            if app.session_id == sid and len(app.query(ChatMessage)) == 2:
                break
            await pilot.pause(0.02)
        await pilot.pause()
        shown = []
        for widget in app.query("*"):
            if isinstance(widget, (Label, Static)) and not isinstance(widget, Markdown):
                rendered = widget.render()
                shown.append(getattr(rendered, "plain", str(rendered)))
        shown += [m.source for m in app.query(Markdown)]
        text = "\n".join(shown)
        assert "wombat reply" in text and "\u241b]0;owned" in text
        assert "\x1b" not in text and "\x9b" not in text and "\x07" not in text
        assert [m.text for m in app.query(ChatMessage)][0].startswith("wombat \x1b[2J")  # copied as stored


# --- 3. input size limits -----------------------------------------------------------------


def test_ask_from_dev_zero_is_refused_at_the_file_limit(tmp_path, fake):
    start = time.monotonic()
    r = invoke(cli, "ask", "-i", "/dev/zero", "-o", tmp_path / "o.jsonl", "--no-log", "--max-input-size", "4M")
    assert r.exit_code == 1
    assert "/dev/zero: is over the limit of 4 MiB per input file" in r.output and "Traceback" not in r.output
    assert time.monotonic() - start < 10 and not fake.prompts


def test_a_50_mb_line_is_one_bad_record_and_the_rest_go_on(tmp_path, fake):
    src = tmp_path / "questions.txt"
    with src.open("wb") as f:
        f.write(b"What is a cold?\n")
        f.write(b"why " * (50 << 18) + b"\n")  # 50 MiB on one line
        f.write(b"What is a fever?\n")
    out = tmp_path / "o.jsonl"
    start = time.monotonic()
    r = invoke(cli, "ask", "-i", src, "-o", out, "--no-log")
    assert time.monotonic() - start < 30
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"{src}:2: the record is 50 MiB, over the limit of 256 KiB per record" in r.output
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["1", "3"]
    assert max(len(line) for line in out.read_text().splitlines()) < 10_000  # nothing of it copied out


def test_a_huge_single_question_or_transcript_is_refused_before_the_model(tmp_path, fake, monkeypatch):
    big = "why " * 100_000  # 400 KB
    r = invoke(cli, "ask", big, "--no-log")
    assert r.exit_code == 1 and "the record is 390.6 KiB, over the limit of 256 KiB per record" in one_line_error(r)
    r = invoke(cli, "ask", "--no-log", input=big)
    assert r.exit_code == 1 and "the question on stdin is over the limit" in one_line_error(r)
    visit = tmp_path / "visit.txt"
    visit.write_text("Doctor: hello.\n" * 20_000)
    r = invoke(cli, "summarize", visit, "--no-log")
    assert r.exit_code == 1 and f"{visit}: the record is" in r.output and "Traceback" not in r.output
    assert not fake.prompts


def test_limits_are_set_by_option_or_environment(tmp_path, fake):
    src = write_jsonl(tmp_path / "q.jsonl", [{"id": "a", "question": "x" * 3000}, {"id": "b", "question": "Is it?"}])
    out = tmp_path / "o.jsonl"
    r = invoke(cli, "ask", "-i", src, "-o", out, "--no-log", env={"HEALTH_ASSISTANT_MAX_RECORD_SIZE": "1K"})
    assert r.exit_code == 1 and f"{src}:1: the record is" in r.output and "over the limit of 1 KiB" in r.output
    r = invoke(cli, "ask", "-i", src, "-o", out, "--no-log", "--max-record-size", "8K",
               env={"HEALTH_ASSISTANT_MAX_RECORD_SIZE": "1K"})
    assert r.exit_code == 0, r.output  # the option wins over the environment
    r = invoke(cli, "ask", "What is a cold?", "--no-log", env={"HEALTH_ASSISTANT_MAX_INPUT_SIZE": "lots"})
    assert r.exit_code == 2 and "HEALTH_ASSISTANT_MAX_INPUT_SIZE" in r.output and "not a size" in r.output


def test_import_reads_no_more_than_the_file_limit(tmp_path):
    r = invoke(logs, "import", "--db", tmp_path / "l.db", "/dev/zero", env={"HEALTH_ASSISTANT_MAX_INPUT_SIZE": "1M"})
    assert r.exit_code == 1 and "over the limit of 1 MiB per input file" in one_line_error(r)


# --- 4. one-line errors instead of tracebacks ---------------------------------------------


def test_deep_json_is_one_bad_record_and_the_batch_goes_on(tmp_path, fake):
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "ok1", "question": "What is a cold?"},
        b'{"id": "deep", "question": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"id": ' + b"9" * 5000 + b', "question": "long number"}',
        {"id": "ok2", "question": "What is a fever?"},
    ])
    out = tmp_path / "o.jsonl"
    r = invoke(cli, "ask", "-i", src, "-o", out, "--no-log")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"{src}:2: malformed JSON (nested too deeply)" in r.output
    assert f"{src}:3: malformed JSON (Exceeds the limit (4300 digits)" in r.output
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["ok1", "ok2"]
    array = tmp_path / "deep.json"
    array.write_text("[" * 100_000 + "]" * 100_000)
    r = invoke(cli, "summarize", array, "-o", tmp_path / "o2.jsonl", "--no-log")
    assert r.exit_code == 1 and f"{array}: malformed JSON (nested too deeply)" in r.output


def test_symlink_loops_are_named(tmp_path, fake):
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    good = write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "dialogue": "Doctor: hi."}])
    r = invoke(cli, "summarize", loop, "--no-log")
    assert r.exit_code == 1 and f"{loop}: is a symlink loop" in r.output and "Traceback" not in r.output
    r = invoke(cli, "summarize", loop, good, "-o", tmp_path / "o.jsonl", "--no-log")
    assert r.exit_code == 1 and f"{loop}: is a symlink loop" in r.output and "Traceback" not in r.output
    r = invoke(cli, "summarize", good, "-o", loop, "--no-log")
    assert r.exit_code == 1 and "is a symlink loop" in one_line_error(r)
    r = invoke(logs, "list", "--db", loop)
    assert r.exit_code == 1 and "symlink loop" in one_line_error(r)


def test_bytes_that_are_not_utf8_in_arguments_or_stdin_are_named(tmp_path, fake):
    r = invoke(cli, "ask", "caf\udce9 ?")  # how Python hands over a non-UTF-8 argument
    assert r.exit_code == 1 and "the question is not UTF-8 text" in one_line_error(r)
    r = invoke(cli, "ask", input=b"caf\xe9 ?\n")
    assert r.exit_code == 1 and "the question on stdin is not UTF-8 text (byte 4)" in one_line_error(r)
    visit = tmp_path / "visit.txt"
    visit.write_text("Doctor: hello.")
    r = invoke(cli, "summarize", visit, "--section", "GEN\udce9", "--no-log")
    assert r.exit_code == 1 and "--section is not UTF-8 text" in one_line_error(r)
    assert not fake.prompts


def test_a_batch_from_a_file_with_a_non_utf8_name_is_logged(tmp_path, fake):
    name = os.fsdecode(b"visits-\xe9.jsonl")
    src = write_jsonl(tmp_path / name, [{"id": "1", "dialogue": "Doctor: hi."}])
    db = tmp_path / "l.db"
    r = invoke(cli, "summarize", src, "-o", tmp_path / "o.jsonl", "--db", db)
    assert r.exit_code == 0, r.output
    with Store(db) as st:
        run = st.get_session(st.list_sessions()[0]["id"])["batch_runs"][0]
    assert run["input_path"].endswith("visits-\\xe9.jsonl")


@pytest.mark.parametrize("where, value, problem", [
    ("id", "a\ud800b", "field 'id' holds half of a character"),
    ("meta", {"note": "x\udfff"}, "field 'meta' holds half of a character"),
    ("meta", {"k\ud83d": 1}, "field 'meta' holds half of a character"),
    ("meta", json.loads("[" * 500 + "]" * 500), "field 'meta' must be an object"),
    ("meta", {"a": json.loads("[" * 500 + "]" * 500)}, "nested more than 64 levels"),
    ("counts", {"x": "\udc80"}, "field 'counts' holds half of a character"),
])
def test_an_import_with_a_lone_surrogate_or_deep_value_is_refused_whole(tmp_path, filled_log, where, value, problem):
    session = {"id": "s1", "mode": "chat", "created": "2025-01-01T00:00:00", "updated": "2025-01-01T00:00:00",
               "messages": [{"role": "user", "content": "hi", "created": "2025-01-01T00:00:00"}],
               "batch_runs": [{"task": "ask", "status": "complete", "started": "2025-01-01T00:00:00"}]}
    if where == "id":
        session["id"] = value
    elif where == "meta":
        session["messages"][0]["meta"] = value
    else:
        session["batch_runs"][0]["counts"] = value
    src = tmp_path / "export.json"
    src.write_text(json.dumps({"format": "health-assistant-logs", "sessions": [session]}))
    before = digest(filled_log)
    r = invoke(logs, "import", "--db", filled_log, src)
    assert r.exit_code == 1 and problem in one_line_error(r) and "nothing was imported" in r.output
    with Store(filled_log) as st:
        assert len(st.list_sessions()) == 1
    assert digest(filled_log) == before


def test_a_log_that_fills_the_disk_mid_reply_is_said_once_and_the_answer_goes_on(tmp_path, fake, monkeypatch):
    fake.reply = "one two three four five six seven eight"
    monkeypatch.setattr(store_mod, "FLUSH_INTERVAL_S", 0)
    flushes = []

    def full_disk(self, message_id, **values):
        flushes.append(values)
        with self._writing("saving the reply"):
            if len(flushes) > 1:
                raise sqlite3.OperationalError("database or disk is full")
            self._messages.update(message_id, values)

    monkeypatch.setattr(Store, "_update_message", full_disk)
    r = invoke(cli, "ask", "What is a cold?", "--db", tmp_path / "l.db")
    assert r.exit_code == 0 and "Traceback" not in r.output and r.exception is None
    assert "one two three four five six seven eight" in r.stdout
    warnings = [line for line in r.output.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "the disk is full" in warnings[0]


class FullDisk:
    """An output file on a disk that fills after `room` records: writes fail with ENOSPC, and so
    does closing it while the record that did not fit is still buffered."""

    def __init__(self, fh, room: int):
        self.fh, self.room, self.pending = fh, room, False

    def write(self, text):
        if self.room <= 0:
            self.pending = True
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= 1
        return self.fh.write(text)

    def flush(self):
        self.fh.flush()

    def fileno(self):
        return self.fh.fileno()

    def close(self):
        self.fh.close()
        if self.pending:
            raise OSError(errno.ENOSPC, "No space left on device")


def test_an_output_on_a_full_disk_ends_the_run_as_an_error_with_no_lock_left(tmp_path, fake, monkeypatch):
    real_open = batch_io.OutputWriter.open

    def open_on_a_small_disk(self):
        real_open(self)
        self._fh = FullDisk(self._fh, room=1)

    monkeypatch.setattr(batch_io.OutputWriter, "open", open_on_a_small_disk)
    src = write_jsonl(tmp_path / "q.jsonl", [{"id": str(i), "question": f"Question {i}?"} for i in range(3)])
    out, db = tmp_path / "o.jsonl", tmp_path / "l.db"
    r = invoke(cli, "ask", "-i", src, "-o", out, "--db", db)
    assert r.exit_code == 1
    assert "cannot write the output: No space left on device" in one_line_error(r)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["0"]
    assert not out.with_name(out.name + ".lock").exists()
    with Store(db) as st:
        run = st.get_session(st.list_sessions()[0]["id"])["batch_runs"][0]
    assert run["status"] == "error" and run["counts"]["done"] == 1
    monkeypatch.setattr(batch_io.OutputWriter, "open", real_open)
    r = invoke(cli, "ask", "-i", src, "-o", out, "--db", db)  # room again: the run resumes
    assert r.exit_code == 0 and "resuming: 1 already" in r.output
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["0", "1", "2"]


# --- 5. hard links ------------------------------------------------------------------------


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_an_output_linked_to_an_input_is_refused(tmp_path, fake, link):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "question": "What is a cold?"}])
    out = tmp_path / "out.jsonl"
    os.link(src, out) if link == "hard" else out.symlink_to(src)
    before = src.read_bytes()
    r = invoke(cli, "ask", "-i", src, "-o", out, "--overwrite", "--no-log")
    assert r.exit_code == 1 and "is also an input (the same file as" in one_line_error(r)
    assert src.read_bytes() == before and not fake.prompts


# --- 6. a damaged log ---------------------------------------------------------------------


def damaged_log(tmp_path: Path, sessions: int = 300) -> Path:
    db = tmp_path / "logs.db"
    with Store(db) as st:
        for i in range(sessions):
            sid = st.new_session("chat", "m", title=f"session {i}")
            st.add_message(sid, "user", f"question {i} " + "lorem ipsum " * 40)
            st.add_message(sid, "assistant", f"answer {i} " + "dolor sit amet " * 40, model="m")
    page = 4096
    size = db.stat().st_size
    assert size > 100 * page
    rng = random.Random(7)
    with db.open("r+b") as f:
        for n in range(size // page // 2, size // page // 2 + 4):  # four pages in the middle
            f.seek(n * page)
            f.write(rng.randbytes(page))
    return db


def test_a_damaged_log_is_never_written_and_is_recovered_into_a_new_file(tmp_path, fake):
    db = damaged_log(tmp_path)
    before = digest(db)
    r = invoke(cli, "ask", "What is a cold?", "--db", db)
    assert r.exit_code == 1
    line = one_line_error(r)
    assert "the log is damaged" in line and "assistant logs recover" in line
    assert not fake.prompts and digest(db) == before
    for command in (["vacuum"], ["rename", "x", "y"]):
        r = invoke(logs, *command, "--db", db)
        assert r.exit_code == 1 and "damaged" in one_line_error(r)
    r = invoke(logs, "search", "--db", db, "lorem")  # reading goes as far as it can, then says why
    assert r.exit_code == 1 and "logs recover" in one_line_error(r)
    r = invoke(logs, "status", "--db", db)
    assert r.exit_code == 0 and "Integrity: damaged (" in r.output and "logs recover" in r.output
    assert digest(db) == before

    out = tmp_path / "recovered.db"
    r = invoke(logs, "recover", "--db", db, out)
    assert r.exit_code == 0, r.output
    assert digest(db) == before
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with sqlite3.connect(out) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Store(out) as st:
        found = st.summary()
        assert 250 <= found["sessions"] <= 300 and 500 <= found["messages"] < 600
        assert st.search("lorem")  # the search index is whole again
    assert f"Recovered {found['sessions']} sessions (" in r.output and "whose details were lost" in r.output
    r = invoke(logs, "recover", "--db", db, out)
    assert r.exit_code == 1 and "exists; recover into a new file" in one_line_error(r)


def test_a_damaged_page_found_while_writing_stops_every_later_write(tmp_path, monkeypatch):
    db = tmp_path / "logs.db"
    with Store(db) as st:
        sid = st.new_session("chat", "m")
        monkeypatch.setattr(st, "_messages", _Malformed())
        with pytest.raises(LogDamaged, match="logs recover"):
            st.add_message(sid, "user", "hello")
        with pytest.raises(LogDamaged, match="nothing more is written"):
            st.new_session("chat", "m")


class _Malformed:
    def insert(self, *a, **k):
        raise sqlite3.DatabaseError("database disk image is malformed")


def test_logs_recover_refuses_what_it_cannot_use(tmp_path, filled_log):
    r = invoke(logs, "recover", "--db", filled_log, filled_log)
    assert r.exit_code == 1 and "is the damaged log itself" in one_line_error(r)
    text = tmp_path / "notes.txt"
    text.write_text("not a database")
    r = invoke(logs, "recover", "--db", text, tmp_path / "new.db")
    assert r.exit_code == 1 and "not a SQLite database" in one_line_error(r)
    assert not (tmp_path / "new.db").exists()


# --- 7. the smaller ones ------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs, or a skip where this test may not mount one."""
    if not ROOT:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path, leave: int = 0) -> None:
    """Fill the disk, then give back `leave` bytes."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))


def test_a_disk_already_full_at_open_is_named(tiny_disk):
    fill(tiny_disk)
    with pytest.raises(StoreError, match="the disk is full"):
        Store(tiny_disk / "logs.db")


def test_a_full_disk_is_named_when_sqlite_says_only_disk_io_error(tmp_path, monkeypatch):
    def io_error(conn, timeout_s=0):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store_mod, "_enable_wal", io_error)
    monkeypatch.setattr(store_mod, "_disk_full", lambda path: True)
    with pytest.raises(StoreError, match="the disk is full"):
        Store(tmp_path / "logs.db")


def test_an_output_on_a_really_full_disk_is_one_line_and_no_lock_is_left(tiny_disk, tmp_path, fake):
    fake.reply = "word " * 100
    fill(tiny_disk, leave=12 * 1024)
    src = write_jsonl(tmp_path / "q.jsonl", [{"id": str(i), "question": f"Question {i}?"} for i in range(40)])
    out = tiny_disk / "o.jsonl"
    r = invoke(cli, "ask", "-i", src, "-o", out, "--no-log")
    assert r.exit_code == 1 and "No space left on device" in one_line_error(r)
    assert not out.with_name(out.name + ".lock").exists()
    written = [json.loads(line)["id"] for line in out.read_text().splitlines() if line.endswith("}")]
    assert 0 < len(written) < 40


def test_a_read_only_data_folder_answers_and_says_logging_is_off(tmp_path, fake):
    if not ROOT:
        pytest.skip("mounting a read-only tmpfs needs root")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        r = invoke(cli, "ask", "What is a cold?", "--db", mnt / "data" / "logs.db")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    assert r.exit_code == 0 and "Traceback" not in r.output
    assert "answer to" in r.stdout
    assert "warning:" in r.output and "this run is not logged" in r.output


def test_a_log_folder_we_may_not_write_answers_and_says_logging_is_off(tmp_path, fake, monkeypatch):
    def refused(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(store_mod, "_create_private", refused)
    r = invoke(cli, "ask", "What is a cold?", "--db", tmp_path / "logs.db")
    assert r.exit_code == 0 and "answer to" in r.stdout
    assert "Permission denied (read-only location?); this run is not logged" in r.output.replace("\n", " ")


@pytest.mark.parametrize("columns", ["20", "0"])
def test_a_narrow_terminal_keeps_ids_whole(tmp_path, columns):
    db = tmp_path / "l.db"
    with Store(db) as st:
        ids = [st.new_session("chat", "m", title=f"title {i}") for i in range(3)]
    r = invoke(logs, "list", "--db", db, env={"COLUMNS": columns})
    assert r.exit_code == 0
    assert all(i in r.stdout for i in ids)
    assert sum(1 for line in r.stdout.splitlines() if line.strip()) >= 4


def test_an_output_under_a_file_names_the_file(tmp_path, fake):
    src = write_jsonl(tmp_path / "q.jsonl", [{"id": "1", "question": "What is a cold?"}])
    (tmp_path / "file.txt").write_text("")
    r = invoke(cli, "ask", "-i", src, "-o", tmp_path / "file.txt" / "x.jsonl", "--no-log")
    assert r.exit_code == 1 and f"{tmp_path / 'file.txt'} is a file, not a folder" in one_line_error(r)


@pytest.mark.parametrize("value, kind", [({"a": 1}, "an object"), (True, "true or false"), ([1], "a list"),
                                         (1.5, "a fraction")])
def test_ids_that_are_not_strings_or_numbers_are_refused(tmp_path, fake, value, kind):
    src = write_jsonl(tmp_path / "q.jsonl", [{"id": value, "question": "What is a cold?"},
                                            {"id": 7, "question": "What is a fever?"}])
    out = tmp_path / "o.jsonl"
    r = invoke(cli, "ask", "-i", src, "-o", out, "--no-log")
    assert r.exit_code == 1 and f"{src}:1: field 'id' must be a string or a whole number, not {kind}" in r.output
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["7"]


def test_logs_status_says_when_the_log_is_readable_by_others(filled_log):
    r = invoke(logs, "status", "--db", filled_log)
    assert "Permissions" not in r.output and "Integrity: ok" in r.output
    filled_log.chmod(0o644)
    r = invoke(logs, "status", "--db", filled_log)
    assert r.exit_code == 0 and f"Permissions: 0644, readable by other users: `chmod 600 {filled_log}`" in r.output


def test_a_chat_line_that_is_not_utf8_is_named_and_the_chat_goes_on(tmp_path):
    # a real process: click's test runner echoes typed input, which a pipe does not
    db = tmp_path / "l.db"
    code = ("import sys; sys.path.insert(0, 'tests'); from fakes import FakeBackend; import assistant.cli as c; "
            "c.load_backend = lambda *a, **k: FakeBackend(reply='Asthma narrows the airways.'); "
            f"c.cli(['chat', '--db', {str(db)!r}])")
    done = subprocess.run([sys.executable, "-c", code], input=b"caf\xe9?\nWhat is asthma?\n", capture_output=True,
                          cwd=Path(__file__).parent.parent, timeout=120)
    out = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0 and "Traceback" not in out, out
    assert "that line is not UTF-8 text (character 4 is an undecodable byte)" in out
    assert "Asthma narrows the airways." in out
    with Store(db) as st:
        (session,) = st.list_sessions()
        assert st.get_session(session["id"])["messages"][0]["content"] == "What is asthma?"


def test_a_single_summary_the_log_cannot_take_is_printed_and_the_log_is_said(tmp_path, fake, monkeypatch):
    def full(*a, **k):
        raise StoreError(f"{tmp_path / 'l.db'}: recording a batch run failed: the disk is full")

    monkeypatch.setattr(Store, "start_batch", full)
    visit = tmp_path / "visit.txt"
    visit.write_text("Doctor: hello.\nPatient: I have a cough.")
    r = invoke(cli, "summarize", visit, "--db", tmp_path / "l.db")
    assert r.exit_code == 0 and "answer to cough." in r.stdout and "Traceback" not in r.output
    assert "warning:" in r.output and "the disk is full; this summary is not logged" in r.output.replace("\n", " ")


def test_errors_quoting_an_id_or_a_path_show_its_escape_sequences_as_text(tmp_path, fake):
    src = write_jsonl(tmp_path / "q.jsonl", [{"id": "x\x1b[2J", "question": "What is a cold?"},
                                            {"id": "x\x1b[2J", "question": "What is a fever?"}])
    r = invoke(cli, "ask", "-i", src, "-o", tmp_path / "o.jsonl", "--no-log")
    assert r.exit_code == 1 and "duplicate id 'x\u241b[2J'" in r.output and "\x1b" not in r.output
    export = tmp_path / "export.json"
    export.write_text(json.dumps({"format": "health-assistant-logs", "sessions": [
        {"id": "s\x1b]0;owned\x07", "mode": "nonsense", "created": "2025-01-01T00:00:00",
         "updated": "2025-01-01T00:00:00"}]}))
    r = invoke(logs, "import", "--db", tmp_path / "l.db", export)
    assert r.exit_code == 1 and "(id s\u241b]0;owned\u2407)" in one_line_error(r) and "\x1b" not in r.output


def test_a_reply_streamed_to_a_terminal_shows_escape_sequences_as_text(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    cli_module._echo("a \x1b[2J b")
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    cli_module._echo(" c \x1b[2J")
    assert capsys.readouterr().out == "a \u241b[2J b c \x1b[2J"
