"""Grounded answer examples: question + passages retrieved from the shipped
knowledge base -> the reference answer.

The runtime answers health questions from retrieved passages
(`assistant.tasks.grounded_answer_messages`), so the model is trained on that
exact prompt: it learns to condense the passages it is given rather than to
recall facts it cannot hold. Retrieval here is the runtime's own, so the
passages are what a user would get, including misses.

    python -m finetune.grounded_data --data build/data/v1

writes `grounded-{train,valid,test}.jsonl` next to the split files, one record
per MedQuAD answer whose question retrieves something relevant.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from assistant.knowledge import KnowledgeBase
from assistant.tasks import grounded_answer_messages, retrieve_grounding

from .jsonl import read_jsonl


def question_of(record: dict) -> str:
    return record["messages"][-2]["content"]


def ground(records, kb: KnowledgeBase):
    """Yield grounded copies of MedQuAD answer records; count those with nothing relevant."""
    skipped = 0
    for r in records:
        if r["source"] != "medquad" or r["task"] != "answer":
            continue
        question = question_of(r)
        hits = retrieve_grounding(kb, question)
        if hits is None:
            skipped += 1  # at run time this question gets the fixed "I don't know"
            continue
        gold_doc = (r.get("meta") or {}).get("document")
        yield {
            **r,
            "id": r["id"].replace("medquad/", "medquad-grounded/", 1),
            "task": "grounded_answer",
            "source": "medquad-grounded",
            "messages": [*grounded_answer_messages(question, hits), r["messages"][-1]],
            "meta": {**(r.get("meta") or {}), "retrieved": [h.doc_id for h in hits],
                     "gold_retrieved": gold_doc in {h.doc_id for h in hits} if gold_doc else None},
        }
    ground.skipped = skipped


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("build/data/v1"))
    args = ap.parse_args(argv)
    splits = {split: _read(args.data / f"{split}.jsonl") for split in ("train", "valid", "test")}
    kb = KnowledgeBase.default()
    summary = {}
    for split, records in splits.items():
        out = args.data / f"grounded-{split}.jsonl"
        tmp = out.with_name(out.name + ".tmp")
        n = 0
        with tmp.open("w", encoding="utf-8") as f:
            for rec in ground(records, kb):
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, out)  # a failed run leaves the previous file as it was
        summary[split] = {"written": n, "nothing_relevant": ground.skipped}
    print(json.dumps(summary, indent=1))


def _read(path: Path) -> list[dict]:
    """Every split is read (and checked) before any grounded file is rewritten."""
    if not path.is_file():
        raise SystemExit(f"{path}: not found; build the splits first (python -m finetune.prepare_data)")
    try:
        return read_jsonl(path)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


if __name__ == "__main__":
    main()
