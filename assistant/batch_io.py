"""Reading batch inputs and writing batch outputs with resume.

Inputs are read leniently: one bad record (malformed JSON, a missing field,
empty text, bytes that are not UTF-8) becomes a `RecordError` naming file, line
and problem, and the other records are still processed.

Outputs are appended one record at a time and flushed, so a run that stops
part-way can be resumed: ids already written are skipped. A sidecar file
(`<output>.run.json`) records what produced the output, so an output of a
different run is never overwritten or mixed into without `--overwrite`.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

TEXT_KEYS = ("dialogue", "transcript", "conversation", "text")
CSV_ID_COLUMNS = ("id", "ID", "encounter_id", "dialogue_id")
CSV_TEXT_COLUMNS = ("dialogue", "transcript", "conversation", "text")
CSV_SECTION_COLUMNS = ("section", "section_header")


@dataclass
class Record:
    id: str
    text: str
    source: str  # "file:line" for messages
    section: str | None = None


@dataclass
class RecordError:
    source: str  # "file:line" or "file"
    problem: str

    def __str__(self) -> str:
        return f"{self.source}: {self.problem}"


class OutputError(ValueError):
    """The output cannot be written as asked (for example it belongs to another run)."""


def _decode(raw: bytes) -> str:
    # surrogateescape keeps undecodable bytes visible, so they can be reported per record.
    return raw.decode("utf-8", errors="surrogateescape")


def _bad_utf8(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def read_records(path: Path, kind: str, id_column: str | None = None,
                 text_column: str | None = None, section_column: str | None = None
                 ) -> Iterator[Record | RecordError]:
    """Yield records from one input file; `kind` is "summarize" or "ask"."""
    if not path.exists():
        yield RecordError(str(path), "file not found")
        return
    if path.is_dir():
        yield RecordError(str(path), "is a directory, expected a file")
        return
    suffix = path.suffix.lower()
    text_keys = TEXT_KEYS if kind == "summarize" else ("question",)
    if suffix in (".jsonl", ".ndjson", ".json"):
        yield from _read_jsonl(path, text_keys)
    elif suffix == ".csv":
        yield from _read_csv(path, id_column, text_column or ("question" if kind == "ask" else None),
                             section_column)
    elif suffix in (".txt", ".md", ""):
        if kind == "ask":
            yield from _read_lines(path)
        else:
            yield from _read_txt(path)
    else:
        yield RecordError(str(path), f"unsupported input type '{suffix}' (use .txt, .jsonl or .csv)")


def _read_txt(path: Path) -> Iterator[Record | RecordError]:
    text = _decode(path.read_bytes())
    if _bad_utf8(text):
        line = text[: next(i for i, ch in enumerate(text) if "\udc80" <= ch <= "\udcff")].count("\n") + 1
        yield RecordError(f"{path}:{line}", "not valid UTF-8")
    elif not text.strip():
        yield RecordError(str(path), "empty transcript")
    else:
        yield Record(id=path.stem, text=text.strip(), source=str(path))


def _read_lines(path: Path) -> Iterator[Record | RecordError]:
    """Plain-text questions, one per line; the id is the line number."""
    for n, raw in enumerate(path.read_bytes().splitlines(), 1):
        line = _decode(raw)
        if _bad_utf8(line):
            yield RecordError(f"{path}:{n}", "not valid UTF-8")
        elif line.strip():
            yield Record(id=str(n), text=line.strip(), source=f"{path}:{n}")


def _read_jsonl(path: Path, text_keys: tuple[str, ...]) -> Iterator[Record | RecordError]:
    for n, raw in enumerate(path.read_bytes().splitlines(), 1):
        where = f"{path}:{n}"
        line = _decode(raw)
        if not line.strip():
            continue
        if _bad_utf8(line):
            yield RecordError(where, "not valid UTF-8")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield RecordError(where, f"malformed JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            yield RecordError(where, "expected a JSON object")
            continue
        if "id" not in obj or obj["id"] in (None, ""):
            yield RecordError(where, "missing field 'id'")
            continue
        key = next((k for k in text_keys if k in obj), None)
        if key is None:
            yield RecordError(where, f"missing field '{text_keys[0]}'")
            continue
        value = obj[key]
        if not isinstance(value, str):
            yield RecordError(where, f"field '{key}' must be a string")
            continue
        if not value.strip():
            yield RecordError(where, f"empty '{key}'")
            continue
        section = obj.get("section")
        yield Record(id=str(obj["id"]), text=value.strip(), source=where,
                     section=section if isinstance(section, str) and section.strip() else None)


def _pick(columns: list[str], wanted: str | None, defaults: tuple[str, ...]) -> str | None:
    if wanted:
        return wanted if wanted in columns else None
    return next((c for c in defaults if c in columns), None)


def _read_csv(path: Path, id_column: str | None, text_column: str | None,
              section_column: str | None) -> Iterator[Record | RecordError]:
    text = _decode(path.read_bytes())
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        yield RecordError(str(path), "empty CSV file")
        return
    except csv.Error as exc:
        yield RecordError(f"{path}:1", f"malformed CSV header ({exc})")
        return
    header = [h.strip().lstrip("\ufeff") for h in header]
    id_col = _pick(header, id_column, CSV_ID_COLUMNS)
    text_col = _pick(header, text_column, CSV_TEXT_COLUMNS)
    sec_col = _pick(header, section_column, CSV_SECTION_COLUMNS)
    for wanted, found, flag in ((id_column, id_col, "--id-column"), (text_column, text_col, "--text-column")):
        if found is None:
            what = f"column '{wanted}' not found" if wanted else f"no {flag.removeprefix('--').replace('-', ' ')} found"
            yield RecordError(f"{path}:1", f"{what}; columns are: {', '.join(header)} (choose with {flag})")
            return
    if section_column and sec_col is None:
        yield RecordError(f"{path}:1", f"column '{section_column}' not found; columns are: {', '.join(header)}")
        return
    idx = {c: header.index(c) for c in header}
    line = 2
    while True:
        start = line
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield RecordError(f"{path}:{start}", f"malformed CSV row ({exc})")
            return
        line = reader.line_num + 1
        where = f"{path}:{start}"
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield RecordError(where, f"expected {len(header)} fields, found {len(row)}")
            continue
        if any(_bad_utf8(cell) for cell in row):
            yield RecordError(where, "not valid UTF-8")
            continue
        rid, body = row[idx[id_col]].strip(), row[idx[text_col]]
        if not rid:
            yield RecordError(where, f"empty '{id_col}'")
            continue
        if not body.strip():
            yield RecordError(where, f"empty '{text_col}'")
            continue
        yield Record(id=rid, text=body.strip(), source=where,
                     section=row[idx[sec_col]].strip() or None if sec_col else None)


# --- output ---------------------------------------------------------------

def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".run.json")


class OutputWriter:
    """Appends results to JSONL or Markdown, resuming a matching earlier run."""

    def __init__(self, path: Path, identity: dict, overwrite: bool = False):
        self.path = path
        self.format = "markdown" if path.suffix.lower() in (".md", ".markdown") else "jsonl"
        self.done: set[str] = set()
        meta = sidecar(path)
        if path.exists() and not overwrite:
            previous = _read_identity(meta)
            if previous != identity:
                why = ("it has no run record" if previous is None
                       else "it was written by a different run (" + _difference(previous, identity) + ")")
                raise OutputError(f"{path} exists and {why}; use --overwrite to replace it")
            self.done = self._written_ids()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("", encoding="utf-8")
        tmp = meta.with_name(meta.name + ".tmp")
        tmp.write_text(json.dumps(identity, indent=1), encoding="utf-8")
        os.replace(tmp, meta)
        self._fh = path.open("a", encoding="utf-8")

    def _written_ids(self) -> set[str]:
        data = self.path.read_text(encoding="utf-8", errors="replace")
        ids: set[str] = set()
        if self.format == "jsonl":
            good = 0
            for line in data.splitlines(keepends=True):
                try:
                    ids.add(str(json.loads(line)["id"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    break  # a line cut off by a crash: drop it and everything after
                good += len(line.encode("utf-8"))
            if not data.endswith("\n") or good < len(data.encode("utf-8")):
                with self.path.open("r+b") as fh:
                    fh.truncate(good)
        else:
            for line in data.splitlines():
                if line.startswith("<!-- id: ") and line.endswith(" -->"):
                    ids.add(json.loads(line[len("<!-- id: "):-len(" -->")]))
        return ids

    def write(self, record: dict) -> None:
        if self.format == "jsonl":
            self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            body = record.get("summary") or record.get("answer") or ""
            self._fh.write(f"<!-- id: {json.dumps(str(record['id']))} -->\n## {record['id']}\n\n{body}\n\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done.add(str(record["id"]))

    def close(self) -> None:
        self._fh.close()


def _read_identity(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _difference(old: dict, new: dict) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys) or "unknown"


def run_identity(task: str, model: str, inputs: Iterable[Path], **options) -> dict:
    return {"task": task, "model": model, "inputs": [str(p.resolve()) for p in inputs], **options}
