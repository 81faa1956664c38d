"""ACI-Bench: a full visit transcript -> one division of the clinical note.

The per-division targets (challenge_data_json/<split>_<division>.json) are
used rather than the full note: four shorter targets per visit suit a small
model and match the runtime's one-section-at-a-time summaries. Divisions the
visit does not have ("#####EMPTY#####") are skipped. The token budget on long
transcripts is applied by prepare_data, which owns the tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

from assistant.tasks import summary_messages

from . import drop_overlaps, record

SOURCE, LICENCE = "aci-bench", "CC BY 4.0"
DIVISIONS = {  # division -> the section title the prompt names (matches the note's own headings)
    "subjective": "Subjective",
    "objective_exam": "Physical Examination",
    "objective_results": "Results",
    "assessment_and_plan": "Assessment and Plan",
}
SPLITS = {
    "train": ("train", None),
    "valid": ("valid", None),
    "clinicalnlp_taskB_test1": ("test", "aci-test1"),
    "clinicalnlp_taskC_test2": ("test", "aci-test2"),
    "clef_taskC_test3": ("test", "aci-test3"),
}


def load(root: Path) -> tuple[list[dict], dict]:
    folder = Path(root) / "aci-bench" / "data" / "challenge_data_json"
    records, empty = [], 0
    for name, (split, suite) in SPLITS.items():
        for division, title in DIVISIONS.items():
            items = json.loads((folder / f"{name}_{division}.json").read_text(encoding="utf-8"))["data"]
            for item in items:
                if "#####EMPTY#####" in item["tgt"] or not item["tgt"].strip():
                    empty += 1
                    continue
                encounter = item["file"].removesuffix(f"-{division}")
                extra = {"suite": suite} if suite else {}
                records.append(record(
                    id=f"{SOURCE}/{(suite or split).removeprefix('aci-')}/{encounter}/{division}",
                    task="summarize", source=SOURCE, licence=LICENCE, split=split,
                    prompt=summary_messages(item["src"], title), reference=item["tgt"],
                    key_text=item["src"], inputs={"dialogue": item["src"], "section": title},
                    section=title, division=division, encounter=encounter, **extra,
                ))
    records, dropped = drop_overlaps(records)
    return records, {"skipped_empty_divisions": empty, "dropped_overlapping_inputs": dropped}
