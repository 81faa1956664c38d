"""One reader per dataset. Each `load(root, ...)` returns (records, notes):
records in the shared JSONL shape, notes for the manifest (what was dropped
and why)."""
from __future__ import annotations

import hashlib
import re
from typing import Iterable

from assistant.backends.base import Message


# Every source a training example can come from, with its licence (each reader also
# records one per example); medquad-grounded is MedQuAD with retrieved passages.
LICENCES = {"mts-dialog": "CC BY 4.0", "aci-bench": "CC BY 4.0", "medquad": "CC BY 4.0",
            "medquad-grounded": "CC BY 4.0", "meqsum": "CC BY 4.0", "pubmedqa": "MIT",
            "dialogsum": "CC BY-NC-SA 4.0"}


# Share of word trigrams (Jaccard) above which two inputs count as the same one.
NEAR_COPY = 0.8


def norm(text: str) -> str:
    """What "the same text" means for deduplication and leakage checks."""
    return " ".join(text.lower().split())


def input_hash(text: str) -> str:
    return hashlib.sha256(norm(text).encode("utf-8")).hexdigest()[:16]


def rouge_words(text: str) -> list[str]:
    """Words as ROUGE's tokenizer reads them: lower case, punctuation dropped."""
    return re.findall(r"[a-z0-9]+", text.lower())


def _trigrams(text: str) -> set[tuple[str, ...]]:
    words = rouge_words(text)
    return {tuple(words[i:i + 3]) for i in range(max(1, len(words) - 2))}


def near_copies(records: list[dict], key: str = "dialogue", threshold: float = NEAR_COPY) -> dict[str, str]:
    """Train records whose input is a near copy of a held-out one, mapped to that held-out
    id: at least `threshold` of their word trigrams shared (Jaccard), words as ROUGE reads
    them. MTS-Dialog holds test dialogues that differ from a training one by a comma or
    a word, which the exact check (case and spacing aside) lets through."""
    held = [(r["id"], _trigrams(r["meta"]["inputs"][key])) for r in records if r["split"] != "train"]
    found = {}
    for r in records:
        if r["split"] != "train":
            continue
        mine = _trigrams(r["meta"]["inputs"][key])
        for hid, theirs in held:
            small, large = sorted((len(mine), len(theirs)))
            if small < threshold * large:  # the Jaccard bound: too different in length to qualify
                continue
            if len(mine & theirs) >= threshold * len(mine | theirs):
                found[r["id"]] = hid
                break
    return found


def bucket(key: str) -> int:
    """A stable pseudo-random number for a key: the basis of every split and sample."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16)


def record(*, id: str, task: str, source: str, licence: str, split: str, prompt: list[Message],
           reference: str, key_text: str, inputs: dict, **meta) -> dict:
    """`prompt` is exactly what the runtime sends; the reference is appended as
    the assistant turn. `key_text` (the dialogue or question) identifies the input."""
    reference = reference.strip()
    return {
        "id": id, "task": task, "source": source, "licence": licence, "split": split,
        "messages": [*prompt, {"role": "assistant", "content": reference}],
        "reference": reference,
        "meta": {"input_hash": input_hash(key_text), "inputs": inputs, **meta},
    }


def drop_overlaps(records: Iterable[dict]) -> tuple[list[dict], dict]:
    """Remove train records whose input is also in valid or test, and valid records
    whose input is in test: the held-out side keeps its official examples."""
    records = list(records)
    held = {s: {r["meta"]["input_hash"] for r in records if r["split"] == s} for s in ("valid", "test")}
    blocked = {"train": held["valid"] | held["test"], "valid": held["test"]}
    kept, dropped = [], {"train": [], "valid": []}
    for r in records:
        if r["meta"]["input_hash"] in blocked.get(r["split"], ()):
            dropped[r["split"]].append(r["id"])
        else:
            kept.append(r)
    return kept, {k: v for k, v in dropped.items() if v}
