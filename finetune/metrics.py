"""Scores for the evaluation harness.

- ROUGE as the project's goals state it: rouge-score with Porter stemming, F1 per
  example, averaged over examples, x100. ROUGE-Lsum treats newlines as sentence
  breaks, so sentences are put on their own lines first.
- The same as MEDIQA-Chat 2023's official script computes it (`mediqa_*` keys), for
  comparison with published figures such as Flan-T5's: Hugging Face evaluate's rouge
  with its defaults, i.e. no stemming and ROUGE-Lsum on the text as it is (equal to
  ROUGE-L on one-line notes). Stemming scores about 1.5 ROUGE-1 higher on MTS-Dialog.
- PubMedQA: the label is the answer's first word (yes / no / maybe).
- Faithfulness: summaries counted by the kinds of unsupported fact they state
  (assistant.faithfulness), before and after the check removes them.
- Perplexity over the reference tokens only: the reply's own tokens, without the
  end-of-turn token that training also scores.
"""
from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Iterable, Sequence

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
MEDIQA_KEYS = tuple(f"mediqa_{k}" for k in ROUGE_KEYS)
LABELS = ("yes", "no", "maybe")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@lru_cache(maxsize=2)
def _scorer(stem: bool = True):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=stem)


def sentences_per_line(text: str) -> str:
    return "\n".join(s for line in text.splitlines() for s in _SENTENCE_END.split(line.strip()) if s)


def rouge_one(prediction: str, reference: str) -> dict[str, float]:
    scorer = _scorer()
    plain = scorer.score(reference, prediction)
    lsum = scorer.score(sentences_per_line(reference), sentences_per_line(prediction))["rougeLsum"]
    out = {k: plain[k].fmeasure * 100 for k in ("rouge1", "rouge2", "rougeL")}
    out["rougeLsum"] = lsum.fmeasure * 100
    official = _scorer(stem=False).score(reference, prediction)
    out.update({f"mediqa_{k}": official[k].fmeasure * 100 for k in ROUGE_KEYS})
    return out


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Per-example mean F1 x100 for each ROUGE variant, stemmed and as MEDIQA-Chat's script."""
    assert len(predictions) == len(references), "one prediction per reference"
    if not predictions:
        return {k: 0.0 for k in ROUGE_KEYS + MEDIQA_KEYS}
    scores = [rouge_one(p, r) for p, r in zip(predictions, references)]
    return {k: sum(s[k] for s in scores) / len(scores) for k in ROUGE_KEYS + MEDIQA_KEYS}


def unsupported_counts(categories: Sequence[Sequence[str]]) -> dict:
    """How many summaries state an unsupported fact of each category (`identity`: an age,
    sex or setting; `medicine`; `number`: a dose, duration, date or other number), of how
    many, and the share in %."""
    n = len(categories)
    out: dict = {"n": n}
    for key in ("identity", "medicine", "number"):
        count = sum(key in c for c in categories)
        out[key] = count
        out[f"{key}_pct"] = round(100 * count / n, 1) if n else 0.0
    return out


def pubmedqa_label(text: str) -> str:
    words = re.findall(r"[a-z]+", text.lower()[:40])
    return words[0] if words and words[0] in LABELS else "unknown"


def accuracy(predicted: Iterable[str], gold: Iterable[str]) -> float:
    pairs = list(zip(predicted, gold))
    return 100.0 * sum(p == g for p, g in pairs) / len(pairs) if pairs else 0.0


def reference_nll(model, tokenizer, messages: Sequence[dict]) -> tuple[float, int]:
    """Summed negative log-likelihood of the assistant reply (messages[-1]) given
    the chat-templated prompt, and the number of reply tokens scored."""
    import torch

    prompt = tokenizer.apply_chat_template(list(messages[:-1]), add_generation_prompt=True,
                                           tokenize=True, return_dict=True)["input_ids"]
    reply = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"]
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    if limit and len(prompt) + len(reply) > limit:
        prompt = prompt[-max(1, limit - len(reply)):]  # keep the reply whole; the prompt's end matters most
        reply = reply[:limit - len(prompt)]
    ids = torch.tensor([prompt + reply])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
    nll = torch.nn.functional.cross_entropy(logits, ids[0, len(prompt):], reduction="sum")
    return float(nll), len(reply)


def perplexity(model, tokenizer, records: Iterable[dict]) -> dict[str, float]:
    """Token-weighted mean NLL over reference tokens, and its exp."""
    total, count, n = 0.0, 0, 0
    for r in records:
        nll, tokens = reference_nll(model, tokenizer, r["messages"])
        total, count, n = total + nll, count + tokens, n + 1
    mean = total / count if count else float("nan")
    return {"nll": mean, "ppl": math.exp(mean) if count else float("nan"), "tokens": count, "n": n}
