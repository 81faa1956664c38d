"""Score the triage layer on a labelled JSONL set; prints JSON and a Markdown table.

    python -m finetune.eval_triage                       # design set, holdout, catalogue probes
    python -m finetune.eval_triage --set tests/triage_set.jsonl --errors
    python -m finetune.eval_triage --coverage            # every catalogue entry, its probes caught or missed
    python -m finetune.eval_triage --meqsum ../shared/data   # + MeQSum's 1,000 questions flagged
    python -m finetune.eval_triage --bench               # ms per message, and for one long paste

Recall per urgent class (emergency, crisis), and the false-alarm rate: the share
of routine ("none") messages that got any urgent level. tests/triage_set.jsonl is
both the design set (the rules were written against it) and the test, so its
figures are optimistic. tests/triage_holdout.jsonl was written in batches, each
before the rules saw it; the first run of each batch is the honest estimate:

| batch | emergency recall | crisis recall | false alarms |
| --- | --- | --- | --- |
| 1 (22, before any rule) | 8/8 | 3/4 (a planned overdose read as emergency) | 0/10 |
| 2 (30) | 7/10 (paraphrased chest pain, "4 weeks" infant, chest tight + lip swelling) | 4/4 | 0/16 |
| 3 (24) | 8/9 ("heavy feeling in my chest") | 2/4 ("don't see the point in living", "want it all to end") | 0/11 |
| 4 (18 adversarial probes aimed at gaps) | 0/6 (a count of tablets, vomiting blood, stabbed, chest pain "right now") | 0/7 (a method: hang, shoot, jump; "thoughts of suicide"; "kil") | 5/5 ("tired of living with eczema", speech trouble since a stroke, choking "sometimes") |
| 5 (24, written before batch 4's fixes, run once after them) | 5/9 (coughing up a lot of blood, hit by a car, a cut that spurts, pills taken twice) | 1/6 (stockpiled pills, a rope, a car into a wall, "nobody would miss me", burning oneself) | 0/9 |
| 1-3 and 5 (unseen) | 28/36 = 78 % | 10/18 = 56 % | 0/46 |
| 6 (40 probes of gaps from a review, run once before their fixes) | 0/16 (negation across "and", "cannot speak", aspirin/xanax counts, pregnancy) | 0/10 ("end it", "kms", "no one cares and I want to die") | 7/14 (a stutter, Bell's palsy, an old stroke, "I get wheezy", a popsicle) |
| 7 (14 probes of batch 6's fixes, run once before their fixes) | 0/7 ("is it from a stroke?", choking on candy) | - | 7/7 ("cannot speak up", bleeding gums in pregnancy) |
| catalogue probes (230, tests/triage_catalogue_probes.jsonl, written blind per catalogue entry), on the rules before the catalogue | 41/156 (26 %) | 10/24 | 3/50 |
| the same probes, first run on the catalogue's rules (written from the published lists, before the probes were read) | 114/156 (73 %; 27 of 38 entries missed a probe: acute abdomen and coughing blood 1/4; anaphylaxis, burns, ectopic, GI bleed, antidepressant overdose, hypoglycaemia, sudden confusion, vision loss, torsion, thunderclap 2/4; 15 more one probe each) | 16/24 (preparatory acts 1/4, lethal-amount questions 2/4, self-harm acts 2/4, method 3/4) | 4/50 (look-alikes for household chemicals, suicidal thoughts, self-harm, seizure) |
| the same after generalising each missed entry's rules from its published signs (no longer unseen) | 156/156 | 24/24 | 0/50 |

Every batch was then used to generalise the rules, so the holdout now passes at
100 % and is no longer unseen: expect paraphrases the rules have not met to be
missed at roughly those first-run rates, indirect statements of suicidal intent
most of all. An unlabelled check on
1,000 real consumer questions (MeQSum) flagged 14 as urgent before and 5 after
tuning on it, most of them arguable (a relative who swallowed caustic soda); with
the rules written for batches 4 and 5 it flags 6, the sixth "vomiting blood clots,
very small amounts"; with the catalogue's rules still the same 6 (`--meqsum`). The
catalogue probes' first run on the catalogue's rules (73 % of emergencies, 67 % of
crises) is the honest estimate for presentations written from published lists; the
context reading is compared with medspaCy's ConText in finetune/compare_context.py.
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from assistant.safety import triage
from assistant.safety.triage import default_config

ROOT = Path(__file__).resolve().parents[1]
DESIGN_SETS = [ROOT / "tests" / "triage_set.jsonl", ROOT / "tests" / "triage_holdout.jsonl"]
PROBES = ROOT / "tests" / "triage_catalogue_probes.jsonl"
DEFAULT_SETS = DESIGN_SETS + [PROBES]
MEQSUM_FILE = "MeQSum_ACL2019_BenAbacha_Demner-Fushman.xlsx"

Classify = Callable[[str], str]  # message -> "emergency" | "crisis" | "none"


def _level(text: str) -> str:
    return triage(text).level


def load(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not a JSON line ({exc.msg})") from exc
        for key in ("text", "label"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise ValueError(f"{path}:{n}: no '{key}'")
        if row["label"] not in ("emergency", "crisis", "none"):
            raise ValueError(f"{path}:{n}: label '{row['label']}' is not emergency, crisis or none")
        rows.append(row)
    return rows


def load_meqsum(path: Path) -> list[str]:
    """The consumer questions (CHQ column) of MeQSum; `path` is the .xlsx or a folder holding it
    (directly or in meqsum/)."""
    from openpyxl import load_workbook

    path = Path(path)
    if path.is_dir():
        path = next((p for p in (path / MEQSUM_FILE, path / "meqsum" / MEQSUM_FILE) if p.exists()), path / MEQSUM_FILE)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no MeQSum file")
    book = load_workbook(path, read_only=True)
    rows = book["QS"].iter_rows(values_only=True)
    header = [str(c).strip() if c else "" for c in next(rows)]
    col = header.index("CHQ")
    questions = [str(r[col]) for r in rows if r[col]]
    book.close()
    return questions


def evaluate(rows: list[dict], classify: Classify | None = None) -> dict:
    classify = classify or _level
    classify("warm up")  # first call loads and compiles the rules
    counts = {lvl: [0, 0] for lvl in ("emergency", "crisis")}  # [hit, total]
    routine, false_alarms, errors = 0, 0, []
    t0 = time.perf_counter()
    preds = [classify(r["text"]) for r in rows]
    ms = (time.perf_counter() - t0) * 1000 / max(len(rows), 1)
    for row, pred in zip(rows, preds):
        gold = row["label"]
        if gold in counts:
            counts[gold][1] += 1
            counts[gold][0] += pred == gold
        else:
            routine += 1
            false_alarms += pred != "none"
        if pred != gold:
            errors.append({"text": row["text"], "gold": gold, "pred": pred, "entry": row.get("entry")})
    out = {"n": len(rows)}
    for lvl, (hit, total) in counts.items():
        out[f"{lvl}_recall"] = round(hit / total, 4) if total else None
        out[f"{lvl}_n"] = total
        out[f"{lvl}_hits"] = hit
    out["routine_n"] = routine
    out["false_alarms"] = false_alarms
    out["false_alarm_rate"] = round(false_alarms / routine, 4) if routine else None
    out["ms_per_message"] = round(ms, 4)
    out["errors"] = errors
    return out


def flagged(questions: list[str], classify: Classify | None = None) -> list[tuple[str, str]]:
    """Unlabelled routine questions that got an urgent level: (level, question)."""
    classify = classify or _level
    return [(lvl, q) for q in questions if (lvl := classify(q)) != "none"]


def markdown(results: dict[str, dict]) -> str:
    lines = [
        "| set | n | emergency recall | crisis recall | false alarms (routine) | ms/msg |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        def frac(hit, total):
            return "n/a" if not total else f"{hit}/{total} ({100 * hit / total:.1f} %)"
        lines.append(
            f"| {name} | {r['n']} | {frac(r['emergency_hits'], r['emergency_n'])} | "
            f"{frac(r['crisis_hits'], r['crisis_n'])} | {frac(r['false_alarms'], r['routine_n'])} | "
            f"{r['ms_per_message']:.3f} |"
        )
    return "\n".join(lines)


def coverage(probes: list[dict], classify: Classify | None = None) -> tuple[str, list[str]]:
    """Every catalogue entry with its source and its probes, each marked caught or missed; a
    look-alike (label "none") is "caught" when it stays routine. Returns the Markdown and the
    entries that are not fully covered (a probe missed, or fewer than three urgent probes)."""
    classify = classify or _level
    entries = default_config().entries
    by_entry: dict[str, list[dict]] = {}
    for row in probes:
        by_entry.setdefault(row.get("entry") or "(none)", []).append(row)
    lines, gaps = [], []
    for entry in entries.values():
        rows = by_entry.pop(entry.id, [])
        urgent = [r for r in rows if r["label"] != "none"]
        marks = [(classify(r["text"]) == r["label"], r) for r in rows]
        caught = sum(ok for ok, r in marks if r["label"] != "none")
        if caught < len(urgent) or len(urgent) < 3 or not all(ok for ok, _ in marks):
            gaps.append(entry.id)
        lines.append(f"### {entry.id} ({entry.level}): {entry.title}")
        lines.append(f"Source: {entry.source} <{entry.url}>. Probes caught: {caught}/{len(urgent)}"
                     + (f", look-alikes routine: {sum(ok for ok, r in marks if r['label'] == 'none')}/"
                        f"{len(rows) - len(urgent)}" if len(rows) > len(urgent) else ""))
        for ok, r in marks:
            kind = "look-alike" if r["label"] == "none" else r["label"]
            lines.append(f"- [{'x' if ok else ' '}] {kind}: {r['text']}")
        lines.append("")
    for name, rows in by_entry.items():  # probes naming an entry the catalogue does not have
        gaps.append(name)
        lines.append(f"### {name}: not in the catalogue ({len(rows)} probes)")
        lines.append("")
    return "\n".join(lines), gaps


def bench(repeats: int = 5) -> dict:
    """Time per message over every labelled set, and for one long paste: all those messages
    sent as one text (a long clause of repeated matches is tested for linear time apart)."""
    texts = [r["text"] for path in DEFAULT_SETS if path.exists() for r in load(path)]
    triage("warm up")
    t0 = time.perf_counter()
    for _ in range(repeats):
        for text in texts:
            triage(text)
    per_message = (time.perf_counter() - t0) * 1000 / (repeats * len(texts))
    paste = "\n".join(texts)
    t0 = time.perf_counter()
    for _ in range(repeats):
        triage(paste)
    paste_ms = (time.perf_counter() - t0) * 1000 / repeats
    words = len(paste.split())

    def seconds(n: int) -> float:  # one clause of n repeated matches
        t0 = time.perf_counter()
        triage("chest pain " * n)
        return time.perf_counter() - t0

    # ten times the text used to take ~100 times as long (quadratic): a ratio near 10 is linear
    growth = seconds(4000) / min(seconds(400) for _ in range(3))
    return {"messages": len(texts), "ms_per_message": round(per_message, 3), "paste_words": words,
            "paste_ms": round(paste_ms, 1), "paste_ms_per_1000_words": round(paste_ms * 1000 / words, 2),
            "growth_10x_text": round(growth, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="sets", action="append", type=Path,
                    help="JSONL file(s); default: design set, holdout and catalogue probes")
    ap.add_argument("--errors", action="store_true", help="include misclassified messages in the JSON")
    ap.add_argument("--coverage", action="store_true",
                    help="list every catalogue entry with its probes, caught or missed, then the per-set table")
    ap.add_argument("--probes", type=Path, default=PROBES, help="probes for --coverage (default: %(default)s)")
    ap.add_argument("--meqsum", type=Path,
                    help="MeQSum .xlsx (or the data folder holding meqsum/): count its questions flagged urgent")
    ap.add_argument("--bench", action="store_true", help="time per message and for one long paste")
    args = ap.parse_args(argv)
    if args.bench:
        print(json.dumps(bench(), indent=2))
        return
    if args.coverage:
        text, gaps = coverage(load(args.probes))
        print(text)
        print(f"Entries not fully covered: {', '.join(gaps) if gaps else 'none'}\n")
    results = {}
    for path in args.sets or [p for p in DEFAULT_SETS if p.exists()]:
        r = evaluate(load(path))
        if not args.errors:
            r.pop("errors")
        results[path.stem] = r
    if args.meqsum:
        hits = flagged(load_meqsum(args.meqsum))
        results["meqsum"] = {"n": 1000, "flagged": len(hits), "flagged_questions": [
            {"level": lvl, "question": q[:200]} for lvl, q in hits]}
    if not args.coverage:
        print(json.dumps(results, indent=2))
        print()
    print(markdown({k: v for k, v in results.items() if k != "meqsum"}))
    if "meqsum" in results:
        print(f"\nMeQSum consumer questions flagged urgent: {results['meqsum']['flagged']} of 1,000")


if __name__ == "__main__":
    main()
