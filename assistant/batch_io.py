"""Reading batch inputs and writing batch outputs with resume.

Inputs are read leniently: one bad record (malformed JSON, a missing field,
empty text, bytes that are not UTF-8) becomes a `RecordError` naming file, line
and problem, and the other records are still processed.

Outputs are appended one record at a time and flushed, so a run that stops
part-way can be resumed: ids already written are skipped. A sidecar file
(`<output>.run.json`) records what produced the output, so an output of a
different run is never overwritten or mixed into without `--overwrite`. An
output is only created, or replaced, once there is something to write to it.
"""
from __future__ import annotations

import codecs
import csv
import errno
import hashlib
import io
import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .limits import InputTooLarge, Limits, read_bounded, text_size

TEXT_KEYS = ("dialogue", "transcript", "conversation", "text")
SECTION_KEYS = ("section", "section_header")
CSV_ID_COLUMNS = ("id", "encounter_id", "dialogue_id")
CSV_SECTION_COLUMNS = SECTION_KEYS
MARKDOWN_END = "<!-- end -->"
OUTPUT_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".md": "markdown", ".markdown": "markdown"}
# A whole visit's transcript easily passes the csv module's default limit of 128 KiB per field.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class Record:
    id: str
    text: str
    source: str  # "file:line" for messages
    section: str | None = None

    @property
    def fingerprint(self) -> str:
        """What the result was made from; a resumed run checks it, since ids alone (a .txt
        file's line numbers) still match after a record was edited or a line inserted."""
        return hashlib.sha256(f"{self.section or ''}\0{self.text}".encode()).hexdigest()[:16]


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


def _encoding_problem(data: bytes) -> str | None:
    """Text saved in another encoding than UTF-8 (Windows tools often write UTF-16) would
    otherwise read as one bad line and then lines of NUL-riddled 'records'."""
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "is UTF-32 text; save it as UTF-8"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "is UTF-16 text; save it as UTF-8"
    if b"\x00" in data:
        return "holds NUL bytes, so it is not UTF-8 text (UTF-16 without a byte-order mark?); save it as UTF-8"
    return None


def _unix_lines(text: str) -> str:
    """Windows line ends would reach the model as extra tokens (and another fingerprint) for
    the same transcript: one visit, one note, whichever editor saved it."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _surrogate(text: str) -> bool:
    """A JSON \\uD83D escape alone decodes to half a character, which no file can hold
    (nor a record's fingerprint or result line be written with)."""
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def read_records(path: Path, kind: str, id_column: str | None = None,
                 text_column: str | None = None, section_column: str | None = None,
                 limits: Limits | None = None) -> Iterator[Record | RecordError]:
    """Yield records from one input file; `kind` is "summarize" or "ask"."""
    found = False
    for item in _read_any(path, kind, id_column, text_column, section_column, limits or Limits()):
        found = True
        yield item
    if not found:
        yield RecordError(str(path), "no records found")


def path_problem(path: Path) -> str | None:
    """Why `path` cannot be an input file, or None. Path.exists() reads a symlink loop as
    a missing file, and Path.resolve() raises RuntimeError on one: errno tells them apart."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop (a link that leads back to itself)"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "file not found"
        return f"cannot read the file: {exc.strerror}"
    except ValueError:  # a NUL byte in the name
        return "is not a valid file name"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, expected a file"
    return None


def _read_any(path: Path, kind: str, id_column: str | None, text_column: str | None,
              section_column: str | None, limits: Limits) -> Iterator[Record | RecordError]:
    problem = path_problem(path)
    if problem:
        yield RecordError(str(path), problem)
        return
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".json", ".csv", ".txt", ".md", ""):
        yield RecordError(str(path), f"unsupported input type '{suffix}' (use .txt, .jsonl or .csv)")
        return
    try:
        data = read_bounded(path, limits.file)
    except InputTooLarge:
        yield RecordError(str(path), limits.file_problem())
        return
    except OSError as exc:
        yield RecordError(str(path), f"cannot read the file: {exc.strerror}")
        return
    problem = _encoding_problem(data)
    if problem:
        yield RecordError(str(path), problem)
        return
    # A byte-order mark, as some editors write at the start of UTF-8 text, is not text.
    data = data.removeprefix(codecs.BOM_UTF8)
    text_keys = TEXT_KEYS if kind == "summarize" else ("question",)
    if suffix in (".jsonl", ".ndjson"):
        yield from _read_jsonl(path, data, text_keys, limits)
    elif suffix == ".json":
        yield from _read_json(path, data, text_keys, limits)
    elif suffix == ".csv":
        yield from _read_csv(path, data, id_column, text_column, section_column, text_keys, limits)
    elif kind == "ask":
        yield from _read_lines(path, data, limits)
    else:
        yield from _read_txt(path, data, limits)


def _read_txt(path: Path, data: bytes, limits: Limits) -> Iterator[Record | RecordError]:
    text = _unix_lines(_decode(data))
    if _bad_utf8(text):
        line = text[: next(i for i, ch in enumerate(text) if "\udc80" <= ch <= "\udcff")].count("\n") + 1
        yield RecordError(f"{path}:{line}", "not valid UTF-8")
    elif not text.strip():
        yield RecordError(str(path), "empty transcript")
    elif limits.record_problem(len(data)):
        yield RecordError(str(path), limits.record_problem(len(data)))
    else:
        yield Record(id=path.stem, text=text.strip(), source=str(path))


def _read_lines(path: Path, data: bytes, limits: Limits) -> Iterator[Record | RecordError]:
    """Plain-text questions, one per line; the id is the line number."""
    for n, raw in enumerate(data.splitlines(), 1):
        if limits.record_problem(len(raw)):
            yield RecordError(f"{path}:{n}", limits.record_problem(len(raw)))
            continue
        line = _decode(raw)
        if _bad_utf8(line):
            yield RecordError(f"{path}:{n}", "not valid UTF-8")
        elif line.strip():
            yield Record(id=str(n), text=line.strip(), source=f"{path}:{n}")


def _parse_json(text: str):
    """json.loads, with the ways it fails on hostile input other than JSONDecodeError made
    one (a RecursionError for deep nesting, a ValueError for an integer of over 4300 digits)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # Python refuses to read an integer too long to be sensible
        raise json.JSONDecodeError(str(exc).split(";")[0], "", 0) from None


def _json_problem(exc: json.JSONDecodeError) -> str:
    if exc.doc:
        return f"malformed JSON ({exc.msg} at column {exc.colno})"
    return f"malformed JSON ({exc.msg})"


def _read_jsonl(path: Path, data: bytes, text_keys: tuple[str, ...], limits: Limits
                ) -> Iterator[Record | RecordError]:
    for n, raw in enumerate(data.splitlines(), 1):
        where = f"{path}:{n}"
        if limits.record_problem(len(raw)):  # before parsing: a huge line costs memory and time
            yield RecordError(where, limits.record_problem(len(raw)))
            continue
        line = _decode(raw)
        if not line.strip():
            continue
        if _bad_utf8(line):
            yield RecordError(where, "not valid UTF-8")
            continue
        try:
            obj = _parse_json(line)
        except json.JSONDecodeError as exc:
            yield RecordError(where, _json_problem(exc))
            continue
        yield _record(obj, where, text_keys, limits)


def _read_json(path: Path, data: bytes, text_keys: tuple[str, ...], limits: Limits
               ) -> Iterator[Record | RecordError]:
    """A .json file holds one array of objects (or one object); JSON Lines are read too."""
    text = _decode(data)
    if _bad_utf8(text):
        line = text[: next(i for i, ch in enumerate(text) if "\udc80" <= ch <= "\udcff")].count("\n") + 1
        yield RecordError(f"{path}:{line}", "not valid UTF-8")
        return
    try:
        doc = _parse_json(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several JSON values: JSON Lines with a .json name
            yield from _read_jsonl(path, data, text_keys, limits)
        else:
            yield RecordError(f"{path}:{exc.lineno}" if exc.doc else str(path), _json_problem(exc))
        return
    if isinstance(doc, dict):
        yield _record(doc, str(path), text_keys, limits)
    elif isinstance(doc, list):
        for i, obj in enumerate(doc):
            yield _record(obj, f"{path}: item {i}", text_keys, limits)
    else:
        yield RecordError(str(path), "expected a JSON array of objects, or JSON Lines")


def _record(obj, where: str, text_keys: tuple[str, ...], limits: Limits) -> Record | RecordError:
    if not isinstance(obj, dict):
        return RecordError(where, "expected a JSON object")
    if "id" not in obj or obj["id"] in (None, ""):
        return RecordError(where, "missing field 'id'")
    if isinstance(obj["id"], bool) or not isinstance(obj["id"], (str, int)):
        # str() would store Python's spelling of it: "{'a': 1}", "True"
        return RecordError(where, f"field 'id' must be a string or a whole number, not {_json_type(obj['id'])}")
    key = next((k for k in text_keys if k in obj), None)
    if key is None:
        also = f" (or {', '.join(repr(k) for k in text_keys[1:])})" if len(text_keys) > 1 else ""
        return RecordError(where, f"missing field '{text_keys[0]}'{also}")
    value = obj[key]
    if not isinstance(value, str):
        return RecordError(where, f"field '{key}' must be a string")
    if not value.strip():
        return RecordError(where, f"empty '{key}'")
    if limits.record_problem(text_size(value)):
        return RecordError(where, limits.record_problem(text_size(value)))
    section = next((obj[k] for k in SECTION_KEYS if isinstance(obj.get(k), str) and obj[k].strip()), None)
    for name, field in (("id", str(obj["id"])), (key, value), ("section", section or "")):
        if _surrogate(field):  # its line was valid UTF-8, so this came from a \u escape
            return RecordError(where, f"field '{name}' holds half of a character (an unpaired \\u escape)")
    return Record(id=str(obj["id"]), text=value.strip(), source=where, section=section)


def _json_type(value) -> str:
    return {bool: "true or false", dict: "an object", list: "a list", float: "a fraction"}.get(type(value), "null")


def _pick(columns: list[str], wanted: str | None, defaults: tuple[str, ...]) -> str | None:
    if wanted:
        return wanted if wanted in columns else None
    by_name = {c.lower(): c for c in reversed(columns)}
    return next((by_name[d] for d in defaults if d in by_name), None)


def _read_csv(path: Path, data: bytes, id_column: str | None, text_column: str | None,
              section_column: str | None, text_keys: tuple[str, ...], limits: Limits
              ) -> Iterator[Record | RecordError]:
    text = _decode(data)
    # strict: a quote left open is an error, not every later row pasted into one field.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        yield RecordError(str(path), "empty CSV file")
        return
    except csv.Error as exc:
        yield RecordError(f"{path}:1", f"malformed CSV header ({exc})")
        return
    header = [h.strip() for h in header]
    id_col = _pick(header, id_column, CSV_ID_COLUMNS)
    text_col = _pick(header, text_column, text_keys)
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
            why = "a quoted field is never closed" if "unexpected end of data" in str(exc) else str(exc)
            # The reader cannot find the next row's start after this, so nothing later is read.
            yield RecordError(f"{path}:{start}", f"malformed CSV row ({why}); the rest of the file was not read")
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
        if limits.record_problem(text_size(body)):
            yield RecordError(where, limits.record_problem(text_size(body)))
            continue
        yield Record(id=rid, text=_unix_lines(body).strip(), source=where,
                     section=row[idx[sec_col]].strip() or None if sec_col else None)


# --- output ---------------------------------------------------------------

def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".run.json")


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def input_written_over(output: Path, inputs: Iterable[Path]) -> Path | None:
    """The input that writing `output` (or its run record or lock beside it) would
    overwrite, or None. Files are compared by device and inode, so a hard link or a
    symlink to an input is found whatever its name."""
    ours = {fid for p in (output, sidecar(output), output.with_name(output.name + ".lock"))
            if (fid := _file_id(p)) is not None}
    return next((p for p in inputs if _file_id(p) in ours), None)


def output_path_problem(path: Path) -> str | None:
    """Why `path` cannot be written as an output, said plainly where mkdir and open would
    say only "File exists" or raise on a symlink loop; None when it may be tried."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop (a link that leads back to itself)"
    except ValueError:
        return "is not a valid file name"
    for folder in path.parents:
        try:
            st = os.stat(folder)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return f"{folder} is a symlink loop"
            continue  # not there yet (it is made), or under a file: a folder above says which
        if not stat.S_ISDIR(st.st_mode):
            return f"{folder} is a file, not a folder"
        return None
    return None


class OutputWriter:
    """Appends results to JSONL or Markdown, resuming a matching earlier run.

    Creating the writer takes the output's lock (a `.lock` file beside it, its
    folder made if need be) and reads which ids it holds; the output itself does
    not change until the first result is written (`write` opens the file). So a
    run that fails before it has a result (a mistyped model, an input with no good
    record, every record failing) leaves an earlier output, even one marked for
    --overwrite, as it was."""

    def __init__(self, path: Path, identity: dict, overwrite: bool = False):
        self.path = path
        self.identity = identity
        self.overwrite = overwrite
        self.format = OUTPUT_SUFFIXES.get(path.suffix.lower())
        if self.format is None:
            raise OutputError(f"{path}: unsupported output type '{path.suffix}' "
                              f"(use {', '.join(OUTPUT_SUFFIXES)})")
        if path.is_dir():
            raise OutputError(f"{path}: is a directory, expected a file")
        problem = output_path_problem(path)
        if problem:
            raise OutputError(f"{path}: cannot write the output: {problem}")
        # id -> fingerprint of the input it was made from (None in outputs of earlier versions)
        self.done: dict[str, str | None] = {}
        self._keep: int | None = None  # bytes of complete records; the rest is a record cut off by a crash
        self._fh = None
        self._lock = _Lock(path)
        try:
            if path.exists() and not overwrite:
                previous = _read_identity(sidecar(path))
                if previous != identity:
                    why = ("it has no run record" if previous is None
                           else "it was written by a different run (" + _difference(previous, identity) + ")")
                    raise OutputError(f"{path} exists and {why}; use --overwrite to replace it")
                self.done = self._written_ids()
        except OutputError:
            self._lock.release()
            raise

    def changed(self, records: Iterable[Record]) -> list[str]:
        """Ids already written whose input is no longer what their result was made from."""
        return [r.id for r in records if self.done.get(r.id) not in (None, r.fingerprint)]

    def _written_ids(self) -> dict[str, str | None]:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot read it to resume: {exc.strerror}") from exc
        if self.format == "markdown":
            return self._markdown_ids(data)
        ids: dict[str, str | None] = {}
        # Split on newlines only: a JSON string may hold U+2028 and the like, which
        # str.splitlines would also split on.
        lines = data.split(b"\n")
        for n, line in enumerate(lines, 1):
            last = n == len(lines)
            if not line.strip():
                continue
            try:
                result = json.loads(line)
                rid = str(result["id"])
                ids[rid] = result.get("input_fingerprint")
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                if last:  # cut off by a crash: dropped when the run resumes
                    self._keep = len(data) - len(line)
                    break
                raise OutputError(f"{self.path}:{n}: not a result line (edited by hand?); fix or remove it, "
                                  "or use --overwrite to start again") from None
            if last:  # complete, but the newline after it was never written
                self._keep = len(data)
        return ids

    def _markdown_ids(self, data: bytes) -> dict[str, str | None]:
        """Each result is `<!-- id: "ID" input: FINGERPRINT -->`, its text, then `<!-- end -->`.
        A last result with no end marker was cut off and is dropped when the run resumes (in
        an output of an earlier version, which wrote no end markers, it is redone)."""
        ids: dict[str, str | None] = {}
        last_start, last_ended = None, True
        offset = 0
        for n, line in enumerate(data.split(b"\n"), 1):
            text = line.decode("utf-8", errors="replace").rstrip("\r")
            if text.startswith("<!-- id: ") and text.endswith(" -->"):
                # The fingerprint is hex, so the last " input: " is the separator whatever the id holds.
                rid, sep, fingerprint = text[len("<!-- id: "):-len(" -->")].rpartition(" input: ")
                if not sep:  # a marker of an earlier version: no fingerprint
                    rid, fingerprint = fingerprint, ""
                try:
                    rid = json.loads(rid)
                except json.JSONDecodeError:
                    raise OutputError(f"{self.path}:{n}: not a result marker (edited by hand?); fix or remove it, "
                                      "or use --overwrite to start again") from None
                ids[str(rid)] = fingerprint or None
                last_start, last_ended = (offset, str(rid)), False
            elif text == MARKDOWN_END:
                last_ended = True
            offset += len(line) + 1
        if last_start is not None and not last_ended:
            self._keep = last_start[0]
            del ids[last_start[1]]
        return ids

    def open(self) -> None:
        """Create (or replace, or repair) the output and record the run; from here on it changes."""
        meta = sidecar(self.path)
        try:
            if self.path.exists() and not self.overwrite:
                if self._keep is not None:
                    with self.path.open("r+b") as fh:
                        fh.truncate(self._keep)
                        if self._keep:
                            fh.seek(self._keep - 1)
                            if fh.read(1) != b"\n":
                                fh.write(b"\n")
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.write_text("", encoding="utf-8")
            tmp = meta.with_name(meta.name + ".tmp")
            tmp.write_text(json.dumps(self.identity, indent=1), encoding="utf-8")
            os.replace(tmp, meta)
            self._fh = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"{exc.filename or self.path}: cannot write the output: {exc.strerror}") from exc

    def write(self, record: dict, made_from: Record) -> None:
        if self._fh is None:
            self.open()
        fingerprint = made_from.fingerprint
        if self.format == "jsonl":
            text = json.dumps({**record, "input_fingerprint": fingerprint}, ensure_ascii=False) + "\n"
        else:
            text = (f"<!-- id: {json.dumps(str(record['id']))} input: {fingerprint} -->\n## {record['id']}\n\n"
                    f"{_markdown_body(record)}\n{MARKDOWN_END}\n\n")
        try:
            self._fh.write(text)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:  # a full disk: what was written before stays, a resumed run goes on from it
            raise OutputError(f"{self.path}: cannot write the output: {exc.strerror}") from exc
        self.done[str(record["id"])] = fingerprint

    def close(self) -> None:
        """Close the output and release its lock, also when the last write failed (a full
        disk): what could not be written is then named in an OutputError, and no lock
        file stays behind."""
        try:
            if self._fh is not None:
                fh, self._fh = self._fh, None
                try:
                    fh.close()
                except OSError as exc:
                    raise OutputError(f"{self.path}: cannot finish writing the output: {exc.strerror}") from exc
        finally:
            self._lock.release()


def _markdown_body(record: dict) -> str:
    """A summary as written; an answer under its question, with its triage level when the
    rules raised one and the sources it cites, so the file reads on its own (a .txt of
    questions gives only line numbers as ids)."""
    if "answer" not in record:
        return record.get("summary") or ""
    parts = ["\n".join("> " + line for line in record["question"].splitlines())]
    if record.get("triage", "none") != "none":
        parts.append(f"**Triage: {record['triage']}**")
    parts.append(record["answer"])
    if record.get("sources"):
        parts.append("Sources:\n" + "\n".join(f"- {s['title']} <{s['url']}>" for s in record["sources"]))
    return "\n\n".join(parts)


class _Lock:
    """`<output>.lock`, held for the run, so two runs given one output cannot both append
    every record. The kernel drops the lock when a process dies, so a file left by a
    killed run is harmless; a run that ends removes it. Where fcntl does not exist
    (Windows) runs are not locked."""

    def __init__(self, output: Path):
        self.path = output.with_name(output.name + ".lock")
        self._fh = None
        try:
            import fcntl
        except ImportError:
            return
        for _ in range(3):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fh = self.path.open("a")
            except OSError as exc:
                raise OutputError(f"{exc.filename or self.path}: cannot write the output: {exc.strerror}") from exc
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                raise OutputError(f"{output} is being written by another run; wait for it to end, "
                                  "or give another --output") from None
            try:  # the run that held it may have removed the file between our open and our lock
                same = os.fstat(fh.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fh = fh
                return
            fh.close()
        raise OutputError(f"{output} is being written by another run; wait for it to end, or give another --output")

    def release(self) -> None:
        if self._fh is not None:
            self.path.unlink(missing_ok=True)  # while still held, so no other run locks a removed file
            self._fh.close()
            self._fh = None


def _read_identity(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _difference(old: dict, new: dict) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if k not in old or k not in new or old[k] != new[k]]
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys) or "unknown"


def run_identity(task: str, model: str, inputs: Iterable[Path], **options) -> dict:
    # os.path.realpath, unlike Path.resolve, does not raise on a symlink loop (a bad input,
    # already reported as one)
    return {"task": task, "model": model, "inputs": [os.path.realpath(p) for p in inputs], **options}
