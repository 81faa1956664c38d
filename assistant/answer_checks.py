"""Checks on an answer as it is written, sentence by sentence, before a reader sees it.

A small model tuned mostly on clinical-note sections drifts into a note's voice ("The
patient is a 30-year-old female who presents to the emergency room with ...") and, on
a long list, into loops ("Dehydration can cause a range of problems, including:" three
times). A sentence in a note's voice is dropped; a sentence or list header said before
ends the answer there. Whole sentences are released as they pass, so what streams to
the screen is exactly what is stored.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

# A clinical note's voice: a third-person patient, an age-and-sex opener, a care setting
# the patient arrives at, or a note's section names.
NOTE_VOICE = re.compile(
    r"\bthe (?:patient|pt)\b|\b\d+[- ](?:year|yr|month|week)s?[- ]old\b|\bpresent(?:s|ed|ing)? (?:to|with)\b|"
    r"\b(?:chief complaint|history of present illness|past medical history|review of systems)\b",
    re.IGNORECASE,
)
# A sentence ends at . ! ? or : followed by space, or at a line break (list items are lines).
_BOUNDARY = re.compile(r"(?<=[.!?:])[ \t]+|\n+")
MIN_WORDS_TO_COMPARE = 3


def is_note_voice(text: str) -> bool:
    return bool(NOTE_VOICE.search(text))


def _key(sentence: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", sentence.lower()).split())


@dataclass
class SentenceGate:
    """Feed it the model's pieces; it returns the text that may be shown. `drop` may
    name more sentences to leave out (a fact the sources do not support, say)."""
    drop: Callable[[str], str | None] | None = None
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (reason, sentence)
    looped: bool = False
    _buffer: str = ""
    _seen: set[str] = field(default_factory=set)
    _shown: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self._shown).strip()

    def feed(self, piece: str) -> str:
        if self.looped:
            return ""
        self._buffer += piece
        out = []
        while True:
            m = _BOUNDARY.search(self._buffer)
            if m is None:
                break
            sentence, sep = self._buffer[:m.start()], m.group(0)
            self._buffer = self._buffer[m.end():]
            shown = self._check(sentence, sep)
            if self.looped:
                self._buffer = ""
                break
            out.append(shown)
        return "".join(out)

    def finish(self) -> str:
        """The last, unterminated sentence, if it passes."""
        rest, self._buffer = self._buffer, ""
        if self.looped or not rest.strip():
            return ""
        return self._check(rest, "")

    def _check(self, sentence: str, sep: str) -> str:
        if not sentence.strip():
            return self._show(sep if self._shown else "")
        key = _key(sentence)
        if len(key.split()) >= MIN_WORDS_TO_COMPARE and key in self._seen:
            self.looped = True
            self.dropped.append(("repeated", sentence.strip()))
            return ""
        self._seen.add(key)
        reason = "note voice" if is_note_voice(sentence) else (self.drop(sentence) if self.drop else None)
        if reason:
            self.dropped.append((reason, sentence.strip()))
            return ""
        return self._show(sentence + sep)

    def _show(self, text: str) -> str:
        self._shown.append(text)
        return text


def repeats(text: str) -> bool:
    """Whether any sentence or list header of at least three words appears twice."""
    seen = set()
    for sentence in _BOUNDARY.split(text):
        key = _key(sentence)
        if len(key.split()) >= MIN_WORDS_TO_COMPARE:
            if key in seen:
                return True
            seen.add(key)
    return False
