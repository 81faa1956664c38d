"""PubMedQA (PQA-L): abstract without its conclusion + question -> yes/no/maybe
and the conclusion's first sentence. The official test split is kept; the
other 500 are split 450/50 by a hash of the PubMed id."""
from __future__ import annotations

import json
from pathlib import Path

from ..formats import pubmedqa_messages, pubmedqa_target
from . import bucket, drop_overlaps, record

SOURCE, LICENCE = "pubmedqa", "MIT"
N_VALID = 50


def load(root: Path) -> tuple[list[dict], dict]:
    folder = Path(root) / "pubmedqa" / "data"
    items = json.loads((folder / "ori_pqal.json").read_text(encoding="utf-8"))
    test_ids = set(json.loads((folder / "test_ground_truth.json").read_text(encoding="utf-8")))
    pool = sorted((pmid for pmid in items if pmid not in test_ids), key=lambda p: (bucket(p), p))
    valid_ids = set(pool[:N_VALID])
    records = []
    for pmid, item in items.items():
        split = "test" if pmid in test_ids else "valid" if pmid in valid_ids else "train"
        contexts = [f"{label}: {text}" for label, text in zip(item["LABELS"], item["CONTEXTS"])]
        extra = {"suite": "pubmedqa"} if split == "test" else {}
        records.append(record(
            id=f"{SOURCE}/{split}/{pmid}", task="pubmedqa", source=SOURCE, licence=LICENCE, split=split,
            prompt=pubmedqa_messages(item["QUESTION"], contexts),
            reference=pubmedqa_target(item["final_decision"], item["LONG_ANSWER"]),
            key_text=item["QUESTION"], inputs={"question": item["QUESTION"], "contexts": contexts},
            label=item["final_decision"], pmid=pmid, **extra,
        ))
    records, dropped = drop_overlaps(records)
    return records, {"split_rule": "official 500 test ids; the rest by sha256(pmid): first 50 valid, 450 train",
                     "target": "'<Label>. <first sentence of LONG_ANSWER>'",
                     "dropped_overlapping_inputs": dropped}
