"""Prompt builders for the fine-tuning tasks the runtime has no builder for
(MeQSum, PubMedQA, DialogSum). Like `assistant.tasks`, they return the exact
messages a model is prompted with, so training and evaluation share them."""
from __future__ import annotations

import re
from typing import Sequence

from assistant import prompts
from assistant.backends.base import Message

LABELS = ("yes", "no", "maybe")

# DialogSum is optional (non-commercial): its prompt lives here rather than in
# data/prompts, which ships with the app.
DIALOGSUM_PROMPT = "Summarize the following conversation in one or two sentences.\n\n{dialogue}"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _system() -> Message:
    return {"role": "system", "content": prompts.template("system")}


def question_summary_messages(question: str) -> list[Message]:
    return [_system(), {"role": "user", "content": prompts.render("summarize_question", question=question.strip())}]


def pubmedqa_messages(question: str, contexts: Sequence[str]) -> list[Message]:
    body = "\n".join(c.strip() for c in contexts if c.strip())
    return [_system(), {"role": "user", "content": prompts.render(
        "pubmedqa", contexts=body, question=question.strip())}]


def pubmedqa_target(label: str, long_answer: str) -> str:
    """"Yes. <first sentence of the conclusion>": the label comes first so it can be
    read off the first word, and one sentence keeps the target short."""
    assert label in LABELS, label
    first = _SENTENCE_END.split(long_answer.strip(), maxsplit=1)[0]
    return f"{label.capitalize()}. {first}"


def dialogsum_messages(dialogue: str) -> list[Message]:
    return [_system(), {"role": "user", "content": DIALOGSUM_PROMPT.format(dialogue=dialogue.strip())}]
