"""MeQSum: a consumer health question (as sent, often long) -> one short question."""
from __future__ import annotations

from pathlib import Path

from ..formats import question_summary_messages
from . import bucket, drop_overlaps, record

SOURCE, LICENCE = "meqsum", "CC BY 4.0"
FILE = "MeQSum_ACL2019_BenAbacha_Demner-Fushman.xlsx"
SIZES = {"valid": 100, "test": 100}  # the rest (800) is train


def load(root: Path) -> tuple[list[dict], dict]:
    from openpyxl import load_workbook

    book = load_workbook(Path(root) / "meqsum" / FILE, read_only=True)
    rows = book["QS"].iter_rows(values_only=True)
    header = [str(c).strip() if c else "" for c in next(rows)]
    col = {name: header.index(name) for name in ("File", "CHQ", "Summary")}
    items = [(str(r[col["File"]]).strip(), str(r[col["CHQ"]]), str(r[col["Summary"]]))
             for r in rows if r[col["CHQ"]] and r[col["Summary"]]]
    book.close()
    # Ordering by a hash of the file name gives exact sizes and a split that
    # does not depend on row order.
    items.sort(key=lambda it: (bucket(it[0]), it[0]))
    n_test, n_valid = SIZES["test"], SIZES["valid"]
    records = []
    for i, (name, chq, summary) in enumerate(items):
        split = "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
        extra = {"suite": "meqsum"} if split == "test" else {}
        records.append(record(
            id=f"{SOURCE}/{split}/{name}", task="question_summary", source=SOURCE, licence=LICENCE,
            split=split, prompt=question_summary_messages(chq), reference=summary,
            key_text=chq, inputs={"question": chq}, file=name, **extra,
        ))
    records, dropped = drop_overlaps(records)
    return records, {"split_rule": "sort by sha256(File); first 100 test, next 100 valid, rest train",
                     "dropped_overlapping_inputs": dropped}
