"""MTS-Dialog: short doctor-patient dialogue -> one clinical-note section.

The augmented sets are back-translations of the training set (and repeat the
original rows), so they go to train only, minus anything whose original or
whose text is held out."""
from __future__ import annotations

import csv
import re
from pathlib import Path

from assistant.tasks import summary_messages

from . import drop_overlaps, near_copies, norm, record

SOURCE, LICENCE = "mts-dialog", "CC BY 4.0"
MAIN = {
    ("train", None): "Main-Dataset/MTS-Dialog-TrainingSet.csv",
    ("valid", None): "Main-Dataset/MTS-Dialog-ValidationSet.csv",
    ("test", "mts-test1"): "Main-Dataset/MTS-Dialog-TestSet-1-MEDIQA-Chat-2023.csv",
    ("test", "mts-test2"): "Main-Dataset/MTS-Dialog-TestSet-2-MEDIQA-Sum-2023.csv",
}
AUGMENTED = {
    "aug1": "Augmented-Data/MTS-Dialog-Augmented-TrainingSet-1-En-FR-EN-2402-Pairs.csv",
    "aug2": "Augmented-Data/MTS-Dialog-Augmented-TrainingSet-2-EN-ES-EN-2402-Pairs.csv",
    "aug3": "Augmented-Data/MTS-Dialog-Augmented-TrainingSet-3-FR-and-ES-3603-Pairs-final.csv",
}
_AUG_ID = re.compile(r"^(?:TR=([A-Z-]+) )?(\d+)$")  # "17" (an original row) or "TR=EN-FR-EN 17"


COLUMNS = ("ID", "section_header", "section_text", "dialogue")


def _rows(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(missing)} (columns: {', '.join(reader.fieldnames or [])})")
        for r in reader:
            if any(r[c] is None for c in COLUMNS):
                raise ValueError(f"{path}:{reader.line_num}: a row with fewer fields than the header")
            rows.append(r)
    for r in rows:  # the CSVs mix \r\n and \n line ends; users paste \n
        for k in ("dialogue", "section_text"):
            r[k] = r[k].replace("\r\n", "\n").replace("\r", "\n")
    return [r for r in rows if r["dialogue"].strip() and r["section_text"].strip()]


def _record(split: str, rid: str, row: dict, **meta) -> dict:
    return record(
        id=f"{SOURCE}/{rid}", task="summarize", source=SOURCE, licence=LICENCE, split=split,
        prompt=summary_messages(row["dialogue"], row["section_header"]), reference=row["section_text"],
        key_text=row["dialogue"], inputs={"dialogue": row["dialogue"], "section": row["section_header"]},
        section=row["section_header"], **meta,
    )


def load(root: Path, augmented: bool = True) -> tuple[list[dict], dict]:
    root = Path(root) / "mts-dialog"
    records = []
    for (split, suite), name in MAIN.items():
        part = suite.removeprefix("mts-") if suite else split
        for row in _rows(root / name):
            extra = {"suite": suite} if suite else {}
            records.append(_record(split, f"{part}/{row['ID']}", row, original_id=row["ID"], **extra))
    # Known trap: a few training dialogues reappear in valid/test (case and spacing aside),
    # and a few more as near copies (a comma or a word apart).
    records, dropped = drop_overlaps(records)
    near = near_copies(records)
    records = [r for r in records if r["id"] not in near]
    notes = {"dropped_overlapping_inputs": dropped, "dropped_near_copies": near}
    removed_ids = {i.rsplit("/", 1)[1] for i in [*dropped.get("train", []), *near]}
    if not augmented:
        return records, notes

    held = {r["meta"]["input_hash"] for r in records if r["split"] != "train"}
    seen = {(norm(r["messages"][1]["content"]), norm(r["reference"])) for r in records if r["split"] == "train"}
    added, skipped = 0, {"duplicate": 0, "held_out_original": 0, "held_out_text": 0}
    for name, path in AUGMENTED.items():
        for row in _rows(root / path):
            m = _AUG_ID.match(row["ID"].strip())
            lang, original = (m.group(1), m.group(2)) if m else (None, row["ID"])
            rec = _record("train", f"train/{name}/{(lang or 'orig').lower()}-{original}", row,
                          original_id=original, augmented=name, translation=lang)
            pair = (norm(rec["messages"][1]["content"]), norm(rec["reference"]))
            if original in removed_ids:
                skipped["held_out_original"] += 1
            elif rec["meta"]["input_hash"] in held:
                skipped["held_out_text"] += 1
            elif pair in seen:  # the untranslated originals, and translations that came out identical
                skipped["duplicate"] += 1
            else:
                seen.add(pair)
                records.append(rec)
                added += 1
    notes["augmented"] = {"added": added, "skipped": skipped}
    return records, notes
