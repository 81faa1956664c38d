"""Which library passages an answer rests on, and how much of the question they cover.

Three outcomes besides "nothing relevant":
- full: a page answers the question (the calibrated coverage gate);
- partial: the question names a page's topic (a drug by brand or generic name, a condition
  or test by any of its names) but the page does not hold the specifics asked: the
  answer gives the page's general information and says what the library does not cover;
- missing: the question names a medicine the library has no text on: the answer says so,
  naming it, instead of answering from another page.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .vocabulary import normalise

GROUNDING_PASSAGES = 2
# Candidates looked at for those passages. An answer is grounded in one page: the best
# hit's. Mixing in the runner-up page of another document made one answer in four cite
# a page it was not about (valid split: citation precision .75 with two pages, .86 with one).
GROUNDING_CANDIDATES = 5
# A partial answer needs the page's topic named in full by the question and this share of
# the question's (IDF-weighted) words on the page: chosen on the MedicationQA and MeQSum
# dev halves (finetune/eval_answers.py): 0.3/0.2/0.15/0.1 answered 68/72/74/74 % of
# MedicationQA with citation precision 91.5/91.9/90.1/90.2 %; 0.2 cites best on both.
PARTIAL_MIN_COVERAGE = 0.2

# What a question asks about, by its words, as the library's sections name them; the
# order is the order of preference, and a page lacking one section is asked for the next.
_SECTION_CUES = [(section, re.compile(cue, re.IGNORECASE)) for section, cue in (
    ("side effects", r"\bside[- ]?effects?\b|\badverse\b"),
    ("overdose", r"\boverdos\w*\b|\btoo (?:much|many)\b"),
    ("symptoms", r"\b(?:symptoms?|signs?)\b"),
    ("interactions", r"\binteract\w*\b|\b(?:alcohol|drinking|grapefruit)\b|\b(?:with|and) (?:other )?(?:medicines?|medications?|drugs?)\b"),
    ("pregnancy", r"\bpregnan\w*\b|\bbreast ?-?feed\w*\b|\bnursing\b"),
    ("storage", r"\bstor(?:e|ed|ing|age)\b|\bfridge\b|\brefrigerat\w*\b|\bexpir\w*\b"),
    ("dosage forms", r"\b(?:tablets?|capsules?|pills?|liquid|syrup|injection|strengths?|come in)\b"),
    ("dosage", r"\bdos(?:e|es|age|ing)\b|\bhow (?:much|often|many)\b|\bmg\b|\bmiss(?:ed)? a\b|\bforg[eo]t\b"),
    ("who should not take", r"\bshould(?:n't| not) (?:take|use)\b|\bcontraindicat\w*\b|\bsafe (?:for|to|with)\b"),
    ("treatment", r"\b(?:treat\w*|cures?|cured|therap\w*)\b"),
    ("inheritance", r"\b(?:inherit\w*|hereditary|passed (?:down|on)|runs? in (?:the )?famil\w*)\b"),
    ("genetic changes", r"\bgenetic changes?\b|\bgenes? (?:\w+ ){0,2}?(?:related|involved|linked)\b"),
    ("causes", r"\bcaus\w*\b|\bwhy (?:do|does|did)\b"),
    ("frequency", r"\bhow (?:common|rare|many people)\b|\bfrequen\w*\b"),
    ("exams and tests", r"\bdiagnos\w*\b|\btests?\b|\bexams?\b"),
    ("prevention", r"\bprevent\w*\b|\bavoid (?:getting|catching)\b"),
    ("susceptibility", r"\bat risk\b|\brisk factors?\b"),
    ("outlook", r"\boutlook\b|\bprognosis\b|\blife expectancy\b"),
    ("complications", r"\bcomplications?\b"),
    ("stages", r"\bstages?\b"),
    ("research", r"\bresearch\b|\bclinical trials?\b"),
    ("uses", r"\bused? (?:for|to)\b|\bwhat (?:is|are) \w+(?: \w+)? for\b|\bwhat does \w+(?: \w+)? do\b"),
    # "what is X" itself, not "what is the normal level of X" (the search knows better there)
    ("information", r"^\W*(?:what|who) (?:is|are|'s)(?: \(are\))? (?!.*\b(?:of|for|in|with|to|from|about|after|"
                    r"during|when|if|between|like|than)\b)[^?]{1,80}\?*\s*$|\btell me about\b|\bexplain\b"),
)]
# Some sites file a section under another name (GHR: symptoms in "information"); a drug
# label's overview is its "uses".
_SECTION_ELSEWHERE = {"symptoms": ["information"], "causes": ["genetic changes"], "information": ["uses"],
                      "treatment": ["uses"]}
# A page's overview, for a partial answer: what the topic is, before anything particular.
_OVERVIEW = ("information", "uses", "important warning")


def question_sections(query: str) -> list[str]:
    """Every section of a page the question asks for, first the most particular."""
    return [section for section, cue in _SECTION_CUES if cue.search(query)]


def question_section(query: str) -> str | None:
    """The section of a page a question asks for ("what are the symptoms of X" ->
    "symptoms", "what is X" -> "information"), or None."""
    found = question_sections(query)
    return found[0] if found else None


def _page(hit) -> str:
    return hit.url or hit.doc_id


def _section_passage(knowledge, hit, sections: list[str]):
    for section in sections:
        for name in (section, *_SECTION_ELSEWHERE.get(section, ())):
            wanted = knowledge.section_of(hit, name)
            if wanted is not None:
                return wanted
    return None


def _from_page(knowledge, hits: list, sections: list[str], relevant_only: bool) -> list:
    page = _page(hits[0])
    chosen = [h for h in hits if _page(h) == page and (not relevant_only or knowledge.is_relevant([h]))]
    if not chosen:
        chosen = [hits[0]]
    wanted = _section_passage(knowledge, hits[0], sections) if sections else None
    if wanted is not None:
        chosen = [wanted, *(h for h in chosen if h.text != wanted.text)]
    return chosen[:GROUNDING_PASSAGES]


def retrieve_grounding(knowledge, query: str, section: str | None = None) -> list | None:
    """The passages an answer to `query` is grounded in: up to GROUNDING_PASSAGES
    relevant passages of the best hit's page, best first; None when nothing in
    the knowledge base is relevant (the caller says it does not know). When the
    question asks for a section of the page ("what is X", "how is X treated"), that
    section's passage comes first: every passage of a page names its topic, so the
    search alone ranked the shortest first ("what is preeclampsia" was answered from
    its inheritance and frequency passages)."""
    hits = knowledge.search(query, k=GROUNDING_CANDIDATES)
    if not knowledge.is_relevant(hits):
        return None
    return _from_page(knowledge, hits, [section] if section else question_sections(query), relevant_only=True)


def on_topic(hits: list, min_coverage: float | None = None) -> bool:
    """The question names the best page's topic in full (its title or one of its other
    names) and shares enough words with it: the page is about what was asked, though
    it may not hold the answer."""
    floor = PARTIAL_MIN_COVERAGE if min_coverage is None else min_coverage
    return bool(hits) and hits[0].topic_named >= 0.999 and hits[0].coverage >= floor


def partial_grounding(knowledge, query: str) -> list | None:
    """The overview of the page whose topic the question names, and the passage of it
    closest to the question, when no page answers it in full; else None."""
    hits = knowledge.search(query, k=GROUNDING_CANDIDATES)
    if not on_topic(hits):
        return None
    sections = question_sections(query)
    closest = _from_page(knowledge, hits, sections, relevant_only=False)[0]
    overview = _section_passage(knowledge, hits[0], list(_OVERVIEW))
    chosen = [closest] if overview is None or overview.text == closest.text else [overview, closest]
    return chosen[:GROUNDING_PASSAGES]


def topic_of(passage) -> str:
    """'Lexapro (escitalopram): side effects' -> 'Lexapro (escitalopram)'."""
    return passage.title.rsplit(": ", 1)[0]


def is_drug_page(passage) -> bool:
    return passage.source.startswith(("openFDA", "FDA "))


@dataclass
class Grounding:
    kind: str  # "full" | "partial" | "missing" | "none"
    passages: list = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # medicines named that the library has no text on

    @property
    def topic(self) -> str:
        return topic_of(self.passages[0]) if self.passages else ""


def _names_on(passage) -> set[str]:
    return {normalise(n) for n in (topic_of(passage), *passage.aliases)}


def ground(knowledge, queries: list[tuple[str, str | None]], question: str, vocabulary=None) -> Grounding:
    """Try each (query, section) in order for a full answer, then for a partial one.
    A medicine the question names that the library lacks is reported unless the page
    found is that medicine's (a question on two drugs, one in the library, gets that
    one's page and a word on the other)."""
    missing = vocabulary.drugs_not_held(question) if vocabulary is not None else []
    passages, kind = None, "none"
    for query, section in queries:
        passages = retrieve_grounding(knowledge, query, section=section)
        if passages:
            kind = "full"
            break
    if passages is None:
        for query, _ in queries:
            passages = partial_grounding(knowledge, query)
            if passages:
                kind = "partial"
                break
    if missing and passages:
        named = set()
        if vocabulary is not None:
            for phrase, alts in vocabulary.expand(question):
                named.update([phrase, *alts])
        named = {normalise(n) for n in named}
        if not is_drug_page(passages[0]) or not named & _names_on(passages[0]):
            return Grounding("missing", [], missing)  # another page would answer beside the question
    if not passages:
        return Grounding("missing" if missing else "none", [], missing)
    return Grounding(kind, passages, missing)
