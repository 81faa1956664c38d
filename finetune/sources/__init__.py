"""One reader per dataset. Each `load(root, ...)` returns (records, notes):
records in the shared JSONL shape, notes for the manifest (what was dropped
and why)."""
from __future__ import annotations

import hashlib
from typing import Iterable

from assistant.backends.base import Message


# Every source a training example can come from, with its licence (each reader also
# records one per example); medquad-grounded is MedQuAD with retrieved passages.
LICENCES = {"mts-dialog": "CC BY 4.0", "aci-bench": "CC BY 4.0", "medquad": "CC BY 4.0",
            "medquad-grounded": "CC BY 4.0", "meqsum": "CC BY 4.0", "pubmedqa": "MIT",
            "dialogsum": "CC BY-NC-SA 4.0"}


def norm(text: str) -> str:
    """What "the same text" means for deduplication and leakage checks."""
    return " ".join(text.lower().split())


def input_hash(text: str) -> str:
    return hashlib.sha256(norm(text).encode("utf-8")).hexdigest()[:16]


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
