"""DialogSum (CC BY-NC-SA 4.0, NON-COMMERCIAL): general dialogue -> short summary.
Only read with --with-dialogsum. The training file exists only in the older
release zip, where each line is a Python dict literal rather than JSON."""
from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path

from ..formats import dialogsum_messages
from . import drop_overlaps, record

SOURCE, LICENCE = "dialogsum", "CC BY-NC-SA 4.0"


def _parse(line: str) -> dict:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return ast.literal_eval(line)


def load(root: Path) -> tuple[list[dict], dict]:
    root = Path(root) / "dialogsum-nc"
    with zipfile.ZipFile(root / "history-9a79c6b" / "DialogSum_Data.zip") as z:
        train = z.read("DialogSum_Data/dialogsum.train.jsonl").decode("utf-8").splitlines()
    parts = {
        "train": train,
        "valid": (root / "DialogSum_Data" / "dialogsum.dev.jsonl").read_text(encoding="utf-8").splitlines(),
        "test": (root / "DialogSum_Data" / "dialogsum.test.jsonl").read_text(encoding="utf-8").splitlines(),
    }
    records = []
    for split, lines in parts.items():
        for line in filter(str.strip, lines):
            item = _parse(line)
            refs = [item[k] for k in ("summary", "summary1", "summary2", "summary3") if item.get(k)]
            extra = {"suite": "dialogsum", "references": refs} if split == "test" else {}
            records.append(record(
                id=f"{SOURCE}/{split}/{item['fname']}", task="summarize", source=SOURCE, licence=LICENCE,
                split=split, prompt=dialogsum_messages(item["dialogue"]), reference=refs[0],
                key_text=item["dialogue"], inputs={"dialogue": item["dialogue"]}, **extra,
            ))
    records, dropped = drop_overlaps(records)
    return records, {"licence_warning": "CC BY-NC-SA 4.0: non-commercial use only, share-alike",
                     "dropped_overlapping_inputs": dropped}
