"""`assistant bench best-of`: what drafting several summaries costs, as a ratio of
wall time against one greedy draft, measured in one run on the same transcripts.

The transcripts are dialogues from the shipped note examples (one per section, the
commonest sections first), so the benchmark needs no data set. The two settings are
interleaved per transcript, so drift on a noisy machine hits both alike.
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Callable

from . import note_examples, tasks
from .backends.base import Backend


def sample_dialogues(count: int, examples: note_examples.NoteExamples | None = None) -> list[tuple[str, str]]:
    """(dialogue, section) pairs: the first dialogue of each of the `count` commonest sections."""
    ex = examples or note_examples.load()
    by_section = Counter(ex.sections)
    picked = []
    for section, _ in by_section.most_common(count):
        picked.append((ex.dialogues[ex.sections.index(section)], section))
    return picked


def run(backend: Backend, best_of: int = tasks.SUMMARY_BEST_OF, transcripts: int = 5,
        examples: note_examples.NoteExamples | None = None, log: Callable[[str], None] = print) -> dict:
    ex = examples or note_examples.load()
    seconds = {"greedy": 0.0, "best_of": 0.0}
    tokens = {"greedy": 0, "best_of": 0}
    tasks.summarize(backend, "Doctor: How are you?\nPatient: Fine.", "CC")  # warm-up, not timed
    dialogues = sample_dialogues(transcripts, ex)
    for i, (dialogue, section) in enumerate(dialogues, 1):
        log(f"transcript {i}/{len(dialogues)} ({section})")
        for name, n in (("greedy", 1), ("best_of", best_of)):
            start = time.perf_counter()
            result = tasks.summarize(backend, dialogue, section, best_of=n, examples=ex)
            seconds[name] += time.perf_counter() - start
            tokens[name] += result.stats.completion_tokens
    return {
        "model": backend.model_name,
        "transcripts": len(dialogues),
        "best_of": best_of,
        "seconds_per_summary": {k: round(v / len(dialogues), 3) for k, v in seconds.items()},
        "completion_tokens": tokens,
        "ratio_time_best_of_vs_greedy": round(seconds["best_of"] / seconds["greedy"], 2),
    }
