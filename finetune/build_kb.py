"""Build the shipped knowledge base from MedQuAD (dev machines and CI only).

    python -m finetune.build_kb --source ../shared/data/medquad --out data/kb

Writes
- medquad_passages.jsonl.gz: answers cut into ~120-200-word passages at sentence
  boundaries, deduplicated (a passage found in several documents keeps the first
  doc_id and lists the others in "also"), each with title (focus: question type),
  source collection, NIH URL and document id. Question texts are *not* stored
  (GARD's opening question headings are stripped too), so retrieval is evaluated
  on questions the index has never seen.
- splits.json: every answered document -> train / valid / test (80/10/10), so the
  fine-tuning data prep reuses exactly this split.

The split hashes groups, not single documents: the same focus ("Glaucoma")
appears in several collections with near-identical answers, and cancer.gov uses
one page (URL) for several foci, so documents that share a normalised focus or a
URL are grouped (transitively) and each group lands in one split. A per-document
split would leak those answers across train and test.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

MIN_WORDS, MAX_WORDS = 120, 200
SPLIT_SALT = "medquad-split-v1"  # changing it reshuffles every split: don't
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"(])")


def collection_name(folder: str) -> str:
    """'2_GARD_QA' -> 'GARD', '8_NHLBI_QA_XML' -> 'NHLBI'."""
    return re.sub(r"^\d+_|_QA.*$", "", folder)


def load_splits(path: Path = Path("data/kb/splits.json")) -> dict[str, str]:
    """doc_id ("GARD/0000123": collection and XML id) -> "train" | "valid" | "test"."""
    return json.loads(Path(path).read_text(encoding="utf-8"))["documents"]


def split_of(focus_key: str) -> str:
    bucket = int(hashlib.sha256(f"{SPLIT_SALT}:{focus_key}".encode()).hexdigest(), 16) % 100
    return "train" if bucket < 80 else "valid" if bucket < 90 else "test"


def focus_key(focus: str, doc_id: str) -> str:
    key = re.sub(r"[^a-z0-9]+", " ", focus.lower()).strip()
    return key or doc_id


def units(answer: str) -> list[str]:
    """Sentences and list items of an answer; the XML marks paragraphs and bullets
    only with runs of spaces, so those runs are the block separators."""
    out = []
    for block in re.split(r"\s{2,}", answer.strip()):
        block = block.strip()
        if not block:
            continue
        if block.startswith("-"):
            out.append("- " + block.lstrip("- ").strip())
        else:
            out.extend(s.strip() for s in _SENTENCE_END.split(block) if s.strip())
    return out


def chunk(answer: str, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> list[str]:
    us = units(answer)
    while us and us[0].endswith("?"):
        # GARD answers open with a heading that restates the question; it carries
        # no information and would leak question wording into the index.
        us = us[1:]
    pieces: list[str] = []
    for u in us:  # a sentence longer than max_words is cut by words
        words = u.split()
        pieces.extend(" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words))
    total = sum(len(p.split()) for p in pieces)
    if total <= max_words:
        return [_join(pieces)] if pieces else []
    # Even-sized chunks: target total/n words, never below min_words when possible.
    target = max(min_words, math.ceil(total / math.ceil(total / max_words)))
    chunks, cur, n = [], [], 0
    for p in pieces:
        w = len(p.split())
        if cur and (n >= target or n + w > max_words):
            chunks.append(cur)
            cur, n = [], 0
        cur.append(p)
        n += w
    if cur:
        if chunks and n < min_words // 3 and sum(len(p.split()) for p in chunks[-1]) + n <= max_words + 40:
            chunks[-1].extend(cur)  # a short tail reads better glued to its predecessor
        else:
            chunks.append(cur)
    return [_join(c) for c in chunks]


def _join(pieces: list[str]) -> str:
    text = ""
    for p in pieces:
        sep = "\n" if p.startswith("- ") or text.endswith(":") or (text and text.split("\n")[-1].startswith("- ")) else " "
        text = p if not text else text + sep + p
    return text


def assign_splits(docs: list[dict]) -> None:
    """Set doc["split"]: union-find over shared focus keys and URLs, then hash the
    group's smallest focus key, so a group never straddles two splits."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for d in docs:
        links = ["f:" + focus_key(d["focus"], d["doc_id"])] + (["u:" + d["url"]] if d["url"] else [])
        for link in links:
            parent[find(link)] = find("d:" + d["doc_id"])
    key_of: dict[str, str] = {}
    for d in docs:
        root, key = find("d:" + d["doc_id"]), focus_key(d["focus"], d["doc_id"])
        key_of[root] = min(key_of.get(root, key), key)
    for d in docs:
        d["split"] = split_of(key_of[find("d:" + d["doc_id"])])


def read_documents(source: Path) -> list[dict]:
    """One dict per XML document that has at least one non-empty answer, with its split."""
    docs = []
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        coll = collection_name(folder.name)
        for xml_path in sorted(folder.glob("*.xml")):
            root = ET.parse(xml_path).getroot()
            qas = []
            for pair in root.iter("QAPair"):
                q = pair.find("Question")
                answer = (pair.findtext("Answer") or "").strip()
                if q is None or not answer:  # A.D.A.M./MedlinePlus drug answers were removed upstream
                    continue
                qas.append({"qid": q.get("qid"), "qtype": q.get("qtype") or "", "question": " ".join((q.text or "").split()), "answer": answer})
            if not qas:
                continue
            doc_id = f"{coll}/{xml_path.stem}"  # the id attribute repeats in a few cancer.gov files
            focus = " ".join((root.findtext("Focus") or "").split())
            # MedlinePlus lists the names people use for a topic ("A1C": HbA1C, Glycohemoglobin):
            # a question that uses one of them must find the page. GARD's and GHR's synonyms are
            # mostly scientific variants and acronyms, which matched unrelated questions (on
            # valid they lowered citation precision by 5 points): not kept.
            synonyms = ([" ".join((s.text or "").split()) for s in root.iter("Synonym")]
                        if coll == "MPlus_Health_Topics" else [])
            docs.append({"doc_id": doc_id, "source": coll, "url": root.get("url") or "", "focus": focus, "qas": qas,
                         "aliases": [s for s in dict.fromkeys(synonyms) if s and s.lower() != focus.lower()]})
    assign_splits(docs)
    return docs


def build(source: Path, out: Path) -> dict:
    docs = read_documents(source)
    if not docs:
        raise SystemExit(f"{source}: no MedQuAD documents with answers (expected folders of XML files, "
                         "as in ../shared/data/medquad)")
    out.mkdir(parents=True, exist_ok=True)
    seen: dict[str, dict] = {}
    splits: dict[str, str] = {}
    stats = Counter()
    records = []
    for doc in docs:
        splits[doc["doc_id"]] = doc["split"]
        stats[f"docs_{doc['split']}"] += 1
        for qa in doc["qas"]:
            stats["answers"] += 1
            for text in chunk(qa["answer"]):
                # Merged only within one topic (GARD often copies GHR's page on the same
                # disease): a sentence two diseases share ("inherited in an autosomal dominant
                # pattern") kept once would leave every page but the first without it.
                topic = focus_key(doc["focus"], doc["doc_id"])
                key = hashlib.sha1(f"{topic}\0{' '.join(text.lower().split())}".encode()).hexdigest()
                if key in seen:  # same text in another document on the same topic
                    stats["duplicate_passages"] += 1
                    first = seen[key]
                    if doc["doc_id"] != first["doc_id"] and doc["doc_id"] not in first.setdefault("also", []):
                        first["also"].append(doc["doc_id"])
                    continue
                title = f"{doc['focus'] or doc['doc_id']}: {qa['qtype'] or 'information'}"
                seen[key] = {"id": len(records), "doc_id": doc["doc_id"], "source": doc["source"], "url": doc["url"],
                             "focus": doc["focus"], "qtype": qa["qtype"], "title": title, "text": text}
                if doc["aliases"]:
                    seen[key]["aliases"] = doc["aliases"]
                records.append(seen[key])
    stats["passages"] = len(records)
    stats["documents"] = len(splits)
    words = sorted(len(r["text"].split()) for r in records)
    stats["passage_words_median"] = words[len(words) // 2]
    stats["passage_words_p95"] = words[int(len(words) * 0.95)]

    gz_path = out / "medquad_passages.jsonl.gz"
    with open(gz_path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        for r in records:  # mtime=0 and a fixed order keep the file (and its hash) reproducible
            gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
    split_doc = {
        "method": f"documents sharing a normalised focus or a URL are grouped (transitively); "
                  f"sha256('{SPLIT_SALT}:' + the group's smallest focus key) % 100: <80 train, <90 valid, else test. "
                  "doc_id = collection/XML file name. Only documents with answers are listed.",
        "counts": {s: sum(1 for v in splits.values() if v == s) for s in ("train", "valid", "test")},
        "documents": dict(sorted(splits.items())),
    }
    (out / "splits.json").write_text(json.dumps(split_doc, indent=0) + "\n", encoding="utf-8")
    return dict(stats)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=Path("../shared/data/medquad"))
    ap.add_argument("--out", type=Path, default=Path("data/kb"))
    args = ap.parse_args(argv)
    print(json.dumps(build(args.source, args.out), indent=2))


if __name__ == "__main__":
    main()
