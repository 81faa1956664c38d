"""Consumer questions as patients write them: how many get an answer with a source, and is the
source about what was asked. Evaluation only: these sets are never shipped or trained on.

    python -m finetune.eval_answers                                 # grounding only, every set, no model
    python -m finetune.eval_answers --sets liveqa --generate --limit 30 --out runs/answers-liveqa.jsonl

Sets (../shared/data):
- medicationqa: 690 medication questions with their drug ("Focus (Drug)"), type and reference answer;
- liveqa: TREC 2017 LiveQA medical test, 104 questions (<MESSAGE>) with FOCUS annotations and references;
- meqsum: 1,000 consumer questions (CHQ), no reference answers; citation precision is judged
  against the set's one-line summary of each question (the page's topic words all in it).
MedicationQA and MeQSum are halved by a hash of the question into `dev` (thresholds and word lists
were chosen there) and `held` (reported, never tuned on); LiveQA is reported whole, never tuned on.

Figures: share answered with a source (full or partial), partial answers, "not in my library"
answers naming a drug, citation precision (the cited page's topic or other names name the
question's annotated focus: the drug for MedicationQA, any FOCUS for LiveQA), and with
--generate, ROUGE-1/L against the references (rouge-score, stemming), the share of answers in
a clinical note's voice and the share that repeat a sentence or list header.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from assistant.answer_checks import is_note_voice, repeats
from assistant.grounding import ground, topic_of
from assistant.knowledge import KnowledgeBase
from assistant.safety.triage import triage
from assistant.tasks import _queries
from assistant.vocabulary import normalise

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = ("medicationqa", "liveqa", "meqsum")


def half(text: str) -> str:
    return "dev" if int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) % 2 == 0 else "held"


def _xlsx(path: Path) -> list[tuple]:
    import openpyxl

    wb = openpyxl.load_workbook(path, read_only=True)
    rows = list(wb.active.iter_rows(values_only=True))
    wb.close()
    return rows


def load(name: str, data: Path = DATA) -> list[dict]:
    if name == "medicationqa":
        rows = _xlsx(data / "medicationqa" / "MedInfo2019-QA-Medications.xlsx")
        out = [{"id": f"mqa-{i}", "question": str(r[0]).strip(), "focus": [str(r[1] or "").strip()],
                "type": r[2], "reference": str(r[3] or "")} for i, r in enumerate(rows[1:], 1) if r[0]]
    elif name == "liveqa":
        root = ET.parse(data / "liveqa" / "TestDataset" / "TREC-2017-LiveQA-Medical-Test.xml").getroot()
        out = []
        for q in root.iter("NLM-QUESTION"):
            message = " ".join((q.findtext("Original-Question/MESSAGE") or "").split())
            focus = [" ".join((f.text or "").split()) for f in q.iter("FOCUS")]
            refs = [" ".join((a.text or "").split()) for a in q.iter("ANSWER")]
            out.append({"id": q.get("qid"), "question": message, "focus": focus, "reference": refs[0] if refs else ""})
    elif name == "meqsum":
        rows = _xlsx(data / "meqsum" / "MeQSum_ACL2019_BenAbacha_Demner-Fushman.xlsx")
        out = []
        for i, r in enumerate(rows[1:], 1):
            chq = str(r[1] or "")
            message = re.sub(r"(?s)^.*?MESSAGE:\s*", "", chq) if "MESSAGE:" in chq else chq
            # The set's one-line summary names what is asked: a cited page whose topic words are
            # all in it is on the question (a looser judge than an annotated focus).
            out.append({"id": f"meqsum-{i}", "question": " ".join(message.split()), "focus": [str(r[2] or "")],
                        "reference": ""})
    else:
        raise SystemExit(f"unknown set {name!r}; choose from {', '.join(SETS)}")
    for r in out:
        r["half"] = "all" if name == "liveqa" else half(r["question"])
    return out


def _words(text: str) -> set[str]:
    return {w.rstrip("s") for w in normalise(text).split() if len(w) > 2}


def cites_focus(passage, focus: list[str], vocabulary=None) -> bool:
    """The cited page is about an annotated focus: all of the focus's words are among the
    page's names (its topic or other names), or all of the page topic's words are in the
    focus; a drug also matches by its brand or generic name."""
    names = [topic_of(passage), *passage.aliases]
    page = [_words(n) for n in names if _words(n)]
    for f in focus:
        options = [f]
        if vocabulary is not None:
            options += [alt for _, alts in vocabulary.expand(f) for alt in alts]
        for option in options:
            fw = _words(option)
            if fw and any(fw <= p or p <= fw for p in page):
                return True
    return False


def ground_all(kb: KnowledgeBase, rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        verdict = triage(r["question"])
        g = ground(kb, _queries(r["question"], []), r["question"], kb.vocabulary)
        out.append({**r, "triage": verdict.level, "grounding": g.kind, "missing": g.missing,
                    "cited": [p.title for p in g.passages[:1]],
                    "precise": bool(g.passages) and bool(r["focus"]) and cites_focus(g.passages[0], r["focus"], kb.vocabulary)})
    return out


def summarise(rows: list[dict]) -> dict:
    n = len(rows)
    sourced = [r for r in rows if r["grounding"] in ("full", "partial")]
    judged = [r for r in sourced if r["focus"]]
    res = {"questions": n,
           "answered_with_source": round(len(sourced) / n, 4) if n else 0.0,
           "full": sum(r["grounding"] == "full" for r in rows),
           "partial": sum(r["grounding"] == "partial" for r in rows),
           "not_in_library": sum(r["grounding"] == "missing" for r in rows),
           "dont_know": sum(r["grounding"] == "none" for r in rows),
           "urgent_by_triage": sum(r["triage"] != "none" for r in rows)}
    if judged:
        res["citation_precision"] = round(sum(r["precise"] for r in judged) / len(judged), 4)
        res["citations_judged"] = len(judged)
    if any("answer" in r for r in rows):
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
        gen = [r for r in rows if "answer" in r]
        scored = [scorer.score(r["reference"], r["answer"]) for r in gen if r["reference"]]
        if scored:
            res["rouge1"] = round(100 * sum(s["rouge1"].fmeasure for s in scored) / len(scored), 2)
            res["rougeL"] = round(100 * sum(s["rougeL"].fmeasure for s in scored) / len(scored), 2)
        res["generated"] = len(gen)
        res["note_voice"] = sum(is_note_voice(r["answer"]) for r in gen)
        res["repeats"] = sum(repeats(r["answer"]) for r in gen)
        res["seconds_per_answer"] = round(sum(r["seconds"] for r in gen) / len(gen), 2)
    return res


def generate(rows: list[dict], kb: KnowledgeBase, model: str | None, out: Path | None) -> None:
    from assistant.backends.base import GenerationOptions
    from assistant.backends import load_backend
    from assistant.tasks import ANSWER_MAX_TOKENS, answer

    done = {}
    if out and out.exists():  # resume: answers already written are kept
        for line in out.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            done[rec["id"]] = rec
    backend = load_backend(model)
    f = out.open("a", encoding="utf-8") if out else None
    try:
        for r in rows:
            if r["id"] in done:
                r.update(answer=done[r["id"]]["answer"], seconds=done[r["id"]]["seconds"])
                continue
            t0 = time.perf_counter()
            result = answer(backend, r["question"], knowledge=kb, options=GenerationOptions(max_tokens=ANSWER_MAX_TOKENS))
            r["answer"], r["seconds"] = result.text, round(time.perf_counter() - t0, 2)
            if f:
                f.write(json.dumps({"id": r["id"], "answer": r["answer"], "seconds": r["seconds"],
                                    "grounding": result.meta.get("grounding")}, ensure_ascii=False) + "\n")
                f.flush()
    finally:
        if f:
            f.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--half", choices=("dev", "held", "all"), default=None,
                    help="only this half of MedicationQA/MeQSum (default: both, reported apart)")
    ap.add_argument("--generate", action="store_true", help="also write answers with the model (slow)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--limit", type=int, default=None, help="answers to generate per set (spread over the set)")
    ap.add_argument("--out", type=Path, default=None, help="JSONL of generated answers (resumable)")
    ap.add_argument("--errors", action="store_true", help="print the questions not answered or cited off focus")
    args = ap.parse_args(argv)
    kb = KnowledgeBase.default()
    report = {}
    for name in args.sets.split(","):
        rows = ground_all(kb, load(name, args.data))
        halves = sorted({r["half"] for r in rows}) if args.half is None else [args.half]
        for h in halves:
            part = [r for r in rows if h == "all" or r["half"] == h]
            if args.generate:
                step = max(1, len(part) // args.limit) if args.limit else 1
                chosen = part[::step][: args.limit] if args.limit else part
                out = args.out.with_name(f"{args.out.stem}-{name}-{h}.jsonl") if args.out else None
                generate(chosen, kb, args.model, out)
            report[f"{name}/{h}"] = summarise(part)
            if args.errors:
                for r in part:
                    if r["grounding"] in ("none", "missing") or (r["focus"] and r["grounding"] in ("full", "partial")
                                                                  and not r["precise"]):
                        print(f"{name}/{h}\t{r['grounding']}\t{r['focus']}\t{r['cited']}\t{r['question'][:120]}")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
