"""Build the medicine names the faithfulness check knows by default (dev machines and CI only).

    python -m finetune.build_medicine_names \
        --indications ../shared/data/fda-indications/labelProductIndication.md --out data/medicines

Reads the FDA indications table (`ProductNames|UNII|` lines: the brand and generic names of
one ingredient, comma-separated) and writes `medicine_names.txt`: one ingredient a line, its
names lowercased and comma-separated, so a brand named in a note is supported by its generic
in the transcript and the other way round. An entry that lists a combination product
("oxycodone and acetaminophen") mixes ingredients, so its names are written one a line:
known as medicines, synonyms of none. Entries that are not names (strengths such as
"10 mg", percentages, "and caffeine") are left out.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

_ENTRY = re.compile(r"^([^#|][^|]*)\|[A-Z0-9]{10}\|")
_NAME = re.compile(r"^[a-z][a-z' -]*[a-z]$")


def read_groups(path: Path) -> list[list[str]]:
    groups: list[list[str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _ENTRY.match(line)
        if not m:
            continue
        names = []
        for raw in m.group(1).split(","):
            name = " ".join(raw.lower().split())
            if _NAME.match(name) and len(name) >= 4 and not name.startswith("and ") and name not in names:
                names.append(name)
        if any(" and " in n or " with " in n for n in m.group(1).lower().split(",")) or "and" in m.group(1).lower().split():
            groups.extend([n] for n in names if " and " not in n and " with " not in n)
        elif names:
            groups.append(names)
    if not groups:
        raise SystemExit(f"{path}: no 'ProductNames|UNII|' entries found")
    return groups


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--indications", type=Path,
                    default=Path("../shared/data/fda-indications/labelProductIndication.md"))
    ap.add_argument("--out", type=Path, default=Path("data/medicines"))
    args = ap.parse_args(argv)
    groups, seen = [], set()
    for g in read_groups(args.indications):
        if tuple(g) not in seen:
            seen.add(tuple(g))
            groups.append(g)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "medicine_names.txt"
    target.write_text("".join(",".join(g) + "\n" for g in groups), encoding="utf-8")
    print(f"wrote {len(groups)} ingredients, {sum(map(len, groups))} names to {target}")


if __name__ == "__main__":
    main()
