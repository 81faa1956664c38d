"""MedQuAD: consumer health question -> answer from an NIH page.

Split by document, never by question: templated questions ("What is (are)
X ?") repeat within a topic, so a question-level split would put near-copies
on both sides. finetune/build_kb.py writes the split it used for the knowledge
base to data/kb/splits.json ("<collection>/<file stem>" -> split, decided by
the document's focus and URL); when that file exists it is used, so fine-tuning
and retrieval agree. Documents it does not list fall back to `medquad_split`.

Answers are long (mean 201 words, max 4,281): targets are cut at a sentence
boundary to at most `max_words` words, and train pairs are sampled per
question type so that no type (4,535 "information" pairs) dominates and the
train part stays near 0.3 M tokens."""
from __future__ import annotations

import hashlib
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

from assistant.paths import DATA_DIR
from assistant.tasks import answer_messages

from . import bucket, drop_overlaps, record

SOURCE, LICENCE = "medquad", "CC BY 4.0"
KB_SPLITS = DATA_DIR / "kb" / "splits.json"
MAX_WORDS = 250
TRAIN_PER_TYPE = 90  # with the 250-word cut: ~1,250 train pairs, ~0.3 M tokens
EVAL_PER_TYPE = 25  # valid and test: ~250 pairs each, so a full evaluation stays affordable on a CPU

_WORD = re.compile(r"\S+")
_GARD_HEADING = re.compile(r"^[^.!?\n]{3,200}\?\s+")  # "What causes X? X is ..."
_BOUNDARY = re.compile(r"[.!?][\"')\]]*(?=\s|$)|\n")


def medquad_split(doc_id: str) -> str:
    """80/10/10 by document: sha256 of the <Document id> (or the file name without it)."""
    h = hashlib.sha256(doc_id.encode("utf-8")).hexdigest()
    b = int(h[:8], 16) % 10
    return "train" if b < 8 else "valid" if b == 8 else "test"


def clean_answer(text: str) -> str:
    """The XML indents paragraphs and runs bullet lists into one line ("  - a  - b")."""
    text = re.sub(r"[ \t]{2,}- ", "\n- ", text)
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def truncate(text: str, max_words: int = MAX_WORDS) -> str:
    """At most `max_words` words, cut after the last sentence (or line) that fits;
    a single over-long sentence is cut at a word boundary instead."""
    words = list(_WORD.finditer(text))
    if len(words) <= max_words:
        return text
    limit = words[max_words - 1].end()
    ends = [m.end() for m in _BOUNDARY.finditer(text, 0, limit + 1)]  # +1: a line break right after the last word
    return text[:ends[-1] if ends else limit].rstrip()


def collection_name(folder: str) -> str:
    """'2_GARD_QA' -> 'GARD', as build_kb names documents."""
    return re.sub(r"^\d+_|_QA.*$", "", folder)


def kb_splits() -> tuple[dict[str, str], str]:
    """build_kb's document -> split map, and its description of the rule."""
    if not KB_SPLITS.is_file():
        return {}, "absent"
    data = json.loads(KB_SPLITS.read_text(encoding="utf-8"))
    return data.get("documents", data), data.get("method", "")


def read_pairs(root: Path) -> tuple[list[dict], int]:
    """Every answered pair as a plain dict; returns (pairs, empty answers skipped)."""
    kb, _ = kb_splits()
    pairs, empty = [], 0
    paths = sorted((Path(root) / "medquad").glob("*/*.xml"))
    if not paths:
        raise FileNotFoundError(2, "no MedQuAD XML files", str(Path(root) / "medquad" / "*" / "*.xml"))
    for path in paths:
        try:
            doc = ET.parse(path).getroot()
        except ET.ParseError as exc:
            raise ValueError(f"{path}: not well-formed XML ({exc})") from None
        doc_id = doc.get("id") or path.stem
        # build_kb's key is "<collection>/<file stem>" (the id attribute repeats in a few
        # cancer.gov files); an older splits.json used the id attribute.
        keys = [f"{collection_name(path.parent.name)}/{name}" for name in (path.stem, doc.get("id"))]
        kb_key = next((k for k in keys if k in kb), keys[0])
        split, rule = (kb[kb_key], "kb") if kb_key in kb else (medquad_split(doc_id), "medquad_split")
        for qa in doc.iter("QAPair"):
            q, a = qa.find("Question"), qa.find("Answer")
            question = " ".join((q.text or "").split()) if q is not None else ""
            answer = clean_answer(a.text or "") if a is not None else ""
            if path.parent.name == "2_GARD_QA":  # GARD answers open with their page heading, a question
                answer = _GARD_HEADING.sub("", answer, count=1)
            if not question or not answer:
                empty += 1
                continue
            pairs.append({
                "collection": path.parent.name, "file": path.name, "doc_id": kb_key, "split": split, "rule": rule,
                # qids repeat across collections and even across files of one collection
                "uid": f"{path.parent.name}/{path.stem}-{qa.get('pid')}", "qtype": q.get("qtype") or "unknown",
                "focus": (doc.findtext("Focus") or "").strip(), "url": doc.get("url"),
                "question": question, "answer": answer,
            })
    return pairs, empty


def load(root: Path, train_per_type: int = TRAIN_PER_TYPE, eval_per_type: int = EVAL_PER_TYPE,
         max_words: int = MAX_WORDS) -> tuple[list[dict], dict]:
    pairs, empty = read_pairs(root)
    records = []
    for p in pairs:
        extra = {"suite": "medquad"} if p["split"] == "test" else {}
        target = truncate(p["answer"], max_words)
        records.append(record(
            id=f"{SOURCE}/{p['split']}/{p['uid']}", task="answer", source=SOURCE, licence=LICENCE,
            split=p["split"], prompt=answer_messages(p["question"]), reference=target,
            key_text=p["question"], inputs={"question": p["question"]},
            document=p["doc_id"], collection=p["collection"], qtype=p["qtype"], focus=p["focus"],
            url=p["url"], truncated=target != p["answer"], **extra,
        ))
    # The same templated question can come from two documents (GARD and GHR both
    # have "What is (are) X ?"): held-out questions win.
    records, dropped = drop_overlaps(records)
    caps = {"train": train_per_type, "valid": eval_per_type, "test": eval_per_type}
    groups = defaultdict(list)
    for r in records:
        groups[r["split"], r["meta"]["qtype"]].append(r)
    sampled = []
    for (split, _), group in sorted(groups.items()):
        group.sort(key=lambda r: (bucket(r["id"].split("/", 2)[2]), r["id"]))
        sampled.extend(group[:caps[split]] if caps[split] else group)
    available = {s: sum(r["split"] == s for r in records) for s in caps}
    rules = Counter(p["rule"] for p in pairs)
    return sampled, {
        "split_rule": {"kb": "data/kb/splits.json: " + kb_splits()[1],
                       "medquad_split": "int(sha256(<Document id> or file stem)[:8], 16) % 10: "
                                        "<8 train, 8 valid, 9 test"},
        "pairs_per_split_rule": dict(rules),
        "skipped_empty_answers": empty,
        "dropped_overlapping_inputs": {k: len(v) for k, v in dropped.items()},
        "available_after_dedup": available,
        "max_per_question_type": caps,
        "target_max_words": max_words,
        "truncated_targets": sum(r["meta"]["truncated"] for r in sampled),
    }
