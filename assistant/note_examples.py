"""Notes written for visits like a new one: the house style a summary is judged against.

The shipped file data/notes/mts_dialog_notes.jsonl.gz (built by
finetune/build_note_examples.py from MTS-Dialog's training split) holds clinical-note
sections with the dialogues they were written from. `similar` ranks those
dialogues against a new transcript by TF-IDF cosine, within the same section, and
returns the notes of the closest ones. `assistant.best_of` uses them to choose
among candidate summaries; they never go into a prompt.

Why not the knowledge base's SQLite FTS5 BM25: here the query is a whole transcript,
not a short question, and every word of it counts; cosine over TF-IDF vectors compares
two documents as wholes, and it is what the choice was measured with on validation.
The collection is ~3,500 dialogues, so an inverted index in memory builds in about
0.3 s (once, on the first chosen summary) and answers in milliseconds.
"""
from __future__ import annotations

import functools
import gzip
import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

from . import prompts
from .paths import DATA_DIR

DEFAULT_NOTES = DATA_DIR / "notes" / "mts_dialog_notes.jsonl.gz"
_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> Counter:
    return Counter(_WORD.findall(text.lower()))


class NoteExamples:
    def __init__(self, notes: list[dict]) -> None:
        self.notes = [n["note"] for n in notes]
        self.dialogues: list[str] = []
        self.sections: list[str] = []  # per dialogue
        self._owner: list[int] = []  # per dialogue: index into self.notes
        counts = []
        for i, entry in enumerate(notes):
            for dialogue in entry["dialogues"]:
                self.dialogues.append(dialogue)
                self.sections.append(entry["section"])
                self._owner.append(i)
                counts.append(_words(dialogue))
        df = Counter(word for c in counts for word in c)
        n = len(counts)
        self._idf = {w: math.log(n / (1 + d)) for w, d in df.items()}
        self._unseen_idf = math.log(max(n, 1))
        self._postings: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for d, c in enumerate(counts):
            vec = self._unit(c)
            for w, x in vec.items():
                self._postings[w].append((d, x))

    @classmethod
    def load(cls, path: Path = DEFAULT_NOTES) -> "NoteExamples":
        notes = []
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    if not (isinstance(entry["note"], str) and isinstance(entry["section"], str)
                            and isinstance(entry["dialogues"], list)):
                        raise TypeError("wrong field types")
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{line_no}: not a note example ({e})") from None
                notes.append(entry)
        return cls(notes)

    def _unit(self, counts: Counter) -> dict[str, float]:
        vec = {w: c * self._idf.get(w, self._unseen_idf) for w, c in counts.items()}
        norm = math.sqrt(sum(x * x for x in vec.values())) or 1.0
        return {w: x / norm for w, x in vec.items()}

    def similar(self, dialogue: str, section: str | None = None, k: int = 5) -> list[str]:
        """Notes of the `k` training visits most like `dialogue`, best first, each note
        once. With a known section only notes of that section count; otherwise all."""
        code = prompts.section_code(section)
        scores: dict[int, float] = defaultdict(float)
        for w, x in self._unit(_words(dialogue)).items():
            for d, y in self._postings.get(w, ()):
                if code is None or self.sections[d] == code:
                    scores[d] += x * y
        best: dict[int, float] = {}
        for d, s in scores.items():
            owner = self._owner[d]
            best[owner] = max(best.get(owner, 0.0), s)
        ranked = sorted(best, key=lambda i: (-best[i], i))
        return [self.notes[i] for i in ranked[:k]]


@functools.lru_cache(maxsize=2)
def load(path: Path = DEFAULT_NOTES) -> NoteExamples:
    return NoteExamples.load(path)
