"""Score the triage layer on a labelled JSONL set; prints JSON and a Markdown table.

    python -m finetune.eval_triage                       # design set + holdout
    python -m finetune.eval_triage --set tests/triage_set.jsonl --errors

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

Every batch was then used to generalise the rules, so the holdout now passes at
100 % and is no longer unseen: expect paraphrases the rules have not met to be
missed at roughly those first-run rates, indirect statements of suicidal intent
most of all. An unlabelled check on
1,000 real consumer questions (MeQSum) flagged 14 as urgent before and 5 after
tuning on it, most of them arguable (a relative who swallowed caustic soda); with
the rules written for batches 4 and 5 it flags 6, the sixth "vomiting blood clots,
very small amounts".
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from assistant.safety import triage

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SETS = [ROOT / "tests" / "triage_set.jsonl", ROOT / "tests" / "triage_holdout.jsonl"]


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def evaluate(rows: list[dict]) -> dict:
    triage("warm up")  # first call loads and compiles the rules
    counts = {lvl: [0, 0] for lvl in ("emergency", "crisis")}  # [hit, total]
    routine, false_alarms, errors = 0, 0, []
    t0 = time.perf_counter()
    preds = [triage(r["text"]).level for r in rows]
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
            errors.append({"text": row["text"], "gold": gold, "pred": pred})
    out = {"n": len(rows)}
    for lvl, (hit, total) in counts.items():
        out[f"{lvl}_recall"] = round(hit / total, 4) if total else None
        out[f"{lvl}_n"] = total
    out["routine_n"] = routine
    out["false_alarm_rate"] = round(false_alarms / routine, 4) if routine else None
    out["ms_per_message"] = round(ms, 4)
    out["errors"] = errors
    return out


def markdown(results: dict[str, dict]) -> str:
    lines = [
        "| set | n | emergency recall | crisis recall | false alarms (routine) | ms/msg |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        pct = lambda v: "n/a" if v is None else f"{100 * v:.1f} %"
        lines.append(
            f"| {name} | {r['n']} | {pct(r['emergency_recall'])} ({r['emergency_n']}) | "
            f"{pct(r['crisis_recall'])} ({r['crisis_n']}) | {pct(r['false_alarm_rate'])} ({r['routine_n']}) | "
            f"{r['ms_per_message']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="sets", action="append", type=Path, help="JSONL file(s); default: design + holdout")
    ap.add_argument("--errors", action="store_true", help="include misclassified messages in the JSON")
    args = ap.parse_args(argv)
    results = {}
    for path in args.sets or DEFAULT_SETS:
        r = evaluate(load(path))
        if not args.errors:
            r.pop("errors")
        results[path.stem] = r
    print(json.dumps(results, indent=2))
    print()
    print(markdown(results))


if __name__ == "__main__":
    main()
