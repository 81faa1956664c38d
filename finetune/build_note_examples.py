"""Build the shipped note examples from the prepared MTS-Dialog training split.

    python -m finetune.build_note_examples --data build/data/v1 --out data/notes

Writes mts_dialog_notes.jsonl.gz: one line per distinct training note, with its
section code and every training dialogue (original and back-translated variants)
it was written from. `assistant.note_examples` finds the notes of the visits most
like a new transcript; `assistant.best_of` uses them to choose among candidate
summaries.

Only the prepared *train* split is used, whose dialogues prepare_data has already
checked against valid and test. MTS-Dialog also reuses some notes across splits
with different dialogues (66 of its 500 held-out notes are word for word in
training, mostly stock lines such as "None."); those notes are left out here, so
that choosing a draft never means matching an evaluation reference. "The same note"
means the same words as ROUGE reads them (lower case, punctuation dropped), so
"Otherwise, negative." goes with a held-out "Otherwise negative.".
"""
from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from .jsonl import iter_jsonl
from .sources import rouge_words
FILE_NAME = "mts_dialog_notes.jsonl.gz"


def same_words(note: str) -> str:
    """A note as ROUGE's tokenizer reads it."""
    return " ".join(rouge_words(note))


def mts_rows(path: Path):
    """(dialogue, section, note) of every MTS-Dialog row of a prepared JSONL file."""
    for line_no, row in iter_jsonl(path):
        if row.get("source") != "mts-dialog":
            continue
        try:
            inputs = row["meta"]["inputs"]
            yield inputs["dialogue"], inputs["section"], row["messages"][-1]["content"].strip()
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(f"{path}:{line_no}: MTS-Dialog row without {e}") from None


def collect(train_jsonl: Path, held_out: list[Path] = ()) -> tuple[list[dict], int]:
    """The notes of `train_jsonl`, less those that are a reference in `held_out`,
    and how many were left out."""
    excluded = {same_words(note) for path in held_out for _, _, note in mts_rows(path)}
    notes: dict[tuple[str, str], dict] = {}
    dropped = set()
    for dialogue, section, note in mts_rows(train_jsonl):
        if same_words(note) in excluded:
            dropped.add(same_words(note))
            continue
        entry = notes.setdefault((section, note), {"section": section, "note": note, "dialogues": []})
        if dialogue not in entry["dialogues"]:
            entry["dialogues"].append(dialogue)
    return list(notes.values()), len(dropped)


def write(notes: list[dict], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FILE_NAME
    # mtime=0: the same notes give the same bytes, so a rebuild does not show as a change.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        for entry in notes:
            gz.write((json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("build/data/v1"), help="prepared data (finetune.prepare_data)")
    ap.add_argument("--out", type=Path, default=Path("data/notes"))
    args = ap.parse_args(argv)
    held_out = [args.data / "valid.jsonl", args.data / "test.jsonl"]
    for path in [args.data / "train.jsonl", *held_out]:
        if not path.is_file():
            raise SystemExit(f"{path}: missing; run finetune.prepare_data first")
    notes, dropped = collect(args.data / "train.jsonl", held_out)
    if not notes:
        raise SystemExit(f"{args.data / 'train.jsonl'}: no MTS-Dialog rows")
    path = write(notes, args.out)
    dialogues = sum(len(n["dialogues"]) for n in notes)
    print(f"wrote {path}: {len(notes)} notes from {dialogues} dialogues, {dropped} notes left out as "
          f"held-out references ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
