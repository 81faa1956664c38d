"""How much input a command reads: per record and per file.

Without a bound, `ask -i /dev/zero` grew until memory ran out, and a 50 MB one-line
transcript was tokenized for ten minutes before any model call. A record over the record
limit is one bad record (the rest of a batch goes on); a file over the file limit is not
read at all. Both are set by an option or an environment variable, in bytes with an
optional K, M or G suffix (powers of 1024).
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

RECORD_ENV = "HEALTH_ASSISTANT_MAX_RECORD_SIZE"
FILE_ENV = "HEALTH_ASSISTANT_MAX_INPUT_SIZE"
RECORD_OPTION = "--max-record-size"
FILE_OPTION = "--max-input-size"
# A whole visit's transcript is a few KB to tens of KB (ACI-Bench's longest is 14 KB); a
# file of questions or visits a few MB. The defaults leave ample room above both, and bound
# the work done before the model is called: splitting a 256 KiB transcript written on one
# line into parts that fit the context took 3.3 s (1 MiB: 12.7 s), a time in which Ctrl-C
# is only noted, to take effect when generation starts.
DEFAULT_RECORD = 256 << 10
DEFAULT_FILE = 256 << 20
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_CHUNK = 1 << 20


class InputTooLarge(ValueError):
    """A file holds more than the file limit allows."""


def parse_size(text: str) -> int:
    """`1048576`, `512K`, `1M`, `2GB` or `2GiB` as bytes; ValueError says what is accepted."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"{text!r} is not a size (bytes, or a number with K, M or G, such as 512K or 2M)")
    size = int(float(m[1]) * _UNITS[m[2].upper()])
    if size < 1:
        raise ValueError(f"{text!r} is not a size above zero")
    return size


def human(size: int) -> str:
    for unit in ("G", "M", "K"):
        if size >= _UNITS[unit]:
            value = size / _UNITS[unit]
            return f"{value:.0f} {unit}iB" if value == int(value) else f"{value:.1f} {unit}iB"
    return f"{size} bytes"


@dataclass(frozen=True)
class Limits:
    record: int = DEFAULT_RECORD
    file: int = DEFAULT_FILE

    @classmethod
    def from_env(cls) -> "Limits":
        """The limits the environment sets; ValueError names the variable that is wrong."""
        values = {}
        for field, var in (("record", RECORD_ENV), ("file", FILE_ENV)):
            if os.environ.get(var, "").strip():
                try:
                    values[field] = parse_size(os.environ[var])
                except ValueError as e:
                    raise ValueError(f"{var}: {e}") from None
        return cls(**values)

    def record_problem(self, size: int) -> str | None:
        """Why a record of `size` bytes is refused, or None."""
        if size <= self.record:
            return None
        return (f"the record is {human(size)}, over the limit of {human(self.record)} per record "
                f"(raise it with {RECORD_OPTION} or {RECORD_ENV})")

    def file_problem(self) -> str:
        return (f"is over the limit of {human(self.file)} per input file, so it was not read "
                f"(raise it with {FILE_OPTION} or {FILE_ENV})")


def text_size(text: str) -> int:
    """Bytes of `text` in UTF-8, counting a character that cannot be encoded as one."""
    return len(text.encode("utf-8", errors="replace"))


def read_bounded(path: Path, limit: int) -> bytes:
    """The whole file, or InputTooLarge once more than `limit` bytes are found. A regular
    file's size is checked first; a device or a pipe (`/dev/zero`, `<(cmd)`) is read in
    pieces, so it stops at the limit and Ctrl-C is seen between pieces."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if stat.S_ISREG(st.st_mode) and st.st_size > limit:
            raise InputTooLarge(path)
        return read_stream(f, limit, path)


def read_stream(f, limit: int, name) -> bytes:
    """At most `limit` bytes of an open binary stream; InputTooLarge(name) beyond that."""
    parts: list[bytes] = []
    total = 0
    while True:
        piece = f.read(min(_CHUNK, limit + 1 - total))
        if not piece:
            return b"".join(parts)
        parts.append(piece)
        total += len(piece)
        if total > limit:
            raise InputTooLarge(name)
