"""Turning a stream of token bytes into safe text pieces.

Both backends need the same two things: UTF-8 characters split across tokens
must not be emitted half-decoded, and text that may be the start of a stop
string must be held back until it is known not to be one.
"""
from __future__ import annotations

import codecs
from typing import Sequence


class StopMatcher:
    def __init__(self, stop: Sequence[str]):
        self.stop = [s for s in stop if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Return the text that is safe to emit now."""
        if self.stopped:
            return ""
        self.pending += text
        if not self.stop:
            out, self.pending = self.pending, ""
            return out
        cut = min((i for i in (self.pending.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.pending = self.pending[:cut], ""
            return out
        hold = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


class Utf8Decoder:
    def __init__(self) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._dec.decode(data)

    def flush(self) -> str:
        # A reply cut at its token limit can end inside a character (an emoji is often two
        # tokens): those bytes are dropped rather than shown as U+FFFD.
        if self._dec.getstate()[0]:
            self._dec.reset()
            return ""
        return self._dec.decode(b"", final=True)
