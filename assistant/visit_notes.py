"""Whole-visit notes: a consultation written up the way clinicians structure a note.

A transcript summarized with no section asked for becomes a note of up to seven sections,
in this order: chief complaint, history of present illness, relevant history, medicines
and allergies, examination, assessment, plan. Each section is drafted by the section
model the project already has (the section prompts it was tuned on) from the turns of the
transcript that speak to it, picked by lexical cues: asked for a plan with the whole of a
long visit, the model retold the history; given the turns where the plan is said, it
writes the plan. A section whose cues appear nowhere in the transcript is left out and
named in the result's meta: a note never says what the visit did not. Each section's
draft is checked against the whole transcript (`assistant.faithfulness`) before it is
shown, and so is the assembled note.

Two styles: "soap", the layout of ACI-Bench's notes (headings in capitals, a paragraph
each), and "gp", a terse primary-care record ("Presenting complaint: ...", shorter
sections). A long section input is chunked and merged as any long transcript is.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from . import faithfulness
from .backends.base import Backend, BackendError, CancelToken, GenerationOptions, GenerationStats

STYLES = ("soap", "gp")
DEFAULT_STYLE = "soap"


@dataclass(frozen=True)
class Section:
    key: str
    prompt: str  # the section title the model was tuned on
    headings: dict[str, str]  # style -> heading
    tokens: dict[str, int]  # style -> the most tokens its draft may take
    cues: re.Pattern | None  # turns that speak to it; None: picked by position (see `section_input`)


def _cue(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.IGNORECASE)


# Cues are what doctors and patients say when a section's matter comes up: questions about past
# illnesses and operations, the names of medicines and what is taken, the words of an
# examination, the doctor's reasoning, and what is to be done next.
SECTIONS: tuple[Section, ...] = (
    Section("chief_complaint", "Chief Complaint", {"soap": "CHIEF COMPLAINT", "gp": "Presenting complaint"},
            {"soap": 40, "gp": 24}, None),
    Section("history", "History of Present Illness", {"soap": "HISTORY OF PRESENT ILLNESS", "gp": "History"},
            {"soap": 256, "gp": 128}, None),
    Section("past_history", "Past Medical History", {"soap": "PAST HISTORY", "gp": "Background"},
            {"soap": 96, "gp": 48},
            _cue(r"\b(?:history of|past medical|medical history|surger(?:y|ies)|operations?|diagnosed|"
                 r"family history|runs in (?:the|my) family|(?:your|my) (?:mother|father|mom|dad|parents?|brother|sister)|"
                 r"smok\w*|cigarettes?|tobacco|alcohol|drink(?:s|ing)?|recreational|vap\w*|"
                 r"chronic|high blood pressure|hypertension|diabet\w*|asthma|copd|heart failure|cholesterol|"
                 r"thyroid|depression|anxiety|cancer)\b")),
    Section("medications", "Medications", {"soap": "MEDICATIONS AND ALLERGIES", "gp": "Medication and allergies"},
            {"soap": 96, "gp": 48},
            _cue(r"\b(?:medications?|medicines?|meds|taking|take (?:it|them|one|two)|prescri\w*|pills?|tablets?|"
                 r"capsules?|doses?|dosage|mg|milligrams?|units?|inhaler|insulin|supplements?|vitamins?|"
                 r"over the counter|allerg\w*)\b")),
    Section("examination", "Physical Exam", {"soap": "PHYSICAL EXAMINATION", "gp": "Examination"},
            {"soap": 128, "gp": 64},
            _cue(r"\b(?:exam\w*|let me (?:take a look|look|check|listen|feel|press)|take a (?:quick )?look|"
                 r"listen(?:ing)? to|press(?:ing)? (?:here|on)|does (?:this|that|it) hurt|tender\w*|palpat\w*|"
                 r"range of motion|vitals?|vital signs|blood pressure (?:is|was|today)|heart rate|pulse|"
                 r"temperature (?:is|was)|oxygen|lungs? (?:sound|are|is)|murmur|swelling|edema|reflex\w*|"
                 r"strength|sensation|squeeze|bend|straighten|lift your)\b")),
    Section("assessment", "Assessment", {"soap": "ASSESSMENT", "gp": "Impression"},
            {"soap": 128, "gp": 64},
            _cue(r"\b(?:assessment|impression|diagnos\w*|i think (?:you|it|this|that)|it (?:looks|sounds|seems) like|"
                 r"consistent with|most likely|probably (?:a|an|have|has)|results?|x-?rays?|mri|ct scan|cat scan|"
                 r"ultrasound|labs?|blood work|showed|shows|came back)\b")),
    Section("plan", "Plan", {"soap": "PLAN", "gp": "Plan"},
            {"soap": 160, "gp": 96},
            _cue(r"\b(?:plan|recommend\w*|prescribe|start (?:you|on)|continue|increase|decrease|stop (?:taking|the)|"
                 r"refer\w*|order(?:ing)?|schedule|follow[- ]?up|come back|see you|physical therapy|injection|"
                 r"i(?:'ll| will| am going to|'m going to|'m gon na| want you to)|we(?:'ll| will| are going to|'re going to)|"
                 r"let's|going to (?:have|get|send|order|put))\b")),
)
SECTION_KEYS = tuple(s.key for s in SECTIONS)

# The opening of a visit names its complaint: a chief complaint is drafted from the first turns.
CHIEF_COMPLAINT_WORDS = 200
# An examination cue this far into a visit (by turns) marks where the history ends.
HISTORY_ENDS_AFTER = 0.25
_EXAM_START = _cue(r"\b(?:physical exam\w*|let me (?:take a look|examine|listen|check)|i(?:'m| am) going to "
                   r"(?:examine|take a look|listen|do a (?:quick )?(?:physical )?exam)|on (?:your |my )?exam\w*|"
                   r"(?:hop|jump) up on the table)\b")
_SPEAKER = re.compile(r"(?=\[(?:doctor|patient|patient_guest|doctor_guest)\]|\b(?:Doctor|Patient|Dr|Pt|Guest_\w+)\s*:)",
                      re.IGNORECASE)
_PATIENT = re.compile(r"^\s*(?:\[patient\w*\]|patient\s*:|pt\s*:)", re.IGNORECASE)


def turns(transcript: str) -> list[str]:
    """The transcript's turns: one a line, or split at speaker tags when it is one block."""
    lines = [line.strip() for line in transcript.splitlines() if line.strip()]
    if len(lines) <= 2:
        split = [t.strip() for line in lines for t in _SPEAKER.split(line) if t.strip()]
        if len(split) > len(lines):
            return split
    return lines


def section_input(section: Section, all_turns: Sequence[str]) -> list[str]:
    """The turns a section is drafted from, in transcript order; [] when none speaks to it."""
    if section.key == "chief_complaint":
        out, words = [], 0
        for t in all_turns:
            if out and words + len(t.split()) > CHIEF_COMPLAINT_WORDS:
                break
            out.append(t)
            words += len(t.split())
        # A visit that is all opening is told by its history alone: drafted twice from the same
        # turns, the two sections said the same thing.
        return out if len(out) < len(all_turns) else []
    if section.key == "history":
        start = int(len(all_turns) * HISTORY_ENDS_AFTER)
        end = next((i for i in range(start, len(all_turns)) if _EXAM_START.search(all_turns[i])), len(all_turns))
        return list(all_turns[:end])
    keep: set[int] = set()
    for i, t in enumerate(all_turns):
        if section.cues.search(t):
            keep.add(i)
            if _PATIENT.match(t):
                if i > 0:
                    keep.add(i - 1)  # what the patient was answering
            elif i + 1 < len(all_turns):
                keep.add(i + 1)  # the answer to the doctor's question, or the reply to a plan
    return [all_turns[i] for i in sorted(keep)]


_WORDS = re.compile(r"[a-z0-9]+")


def _repeats(sentence: str, seen: list[set[str]]) -> bool:
    """Whether a sentence says again what the note already says (most of its words in one
    earlier sentence): every section prompt tends to open by retelling the complaint."""
    words = set(_WORDS.findall(sentence.lower()))
    return bool(words) and any(len(words & s) >= 0.8 * len(words) for s in seen)


def _without_repeats(text: str, seen: list[set[str]]) -> str:
    kept = []
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", text.strip()):
        if sentence.strip() and not _repeats(sentence, seen):
            kept.append(sentence.strip())
            seen.append(set(_WORDS.findall(sentence.lower())))
    return " ".join(kept)


def _block(section: Section, style: str, text: str) -> str:
    heading = section.headings[style]
    return f"{heading}: {text}" if style == "gp" else f"{heading}\n\n{text}"


def write_note(backend: Backend, transcript: str, summarize: Callable, style: str | None = None,
               options: GenerationOptions | None = None, on_text: Callable[[str], None] | None = None,
               cancel: CancelToken | None = None, on_progress=None, best_of: int | None = 1,
               examples=None, synonyms=None):
    """The note of a whole visit, as a `tasks.TaskResult`. `summarize` is
    `tasks.summarize` (passed in so this module needs nothing else of the task layer);
    each section is one call of it with that section's prompt and turns, checked against
    the whole transcript. `on_text` gets each section, heading included, once it is
    written and checked. meta: "style", "sections" (per section: key, input turns, words
    written), "not_discussed" (the sections left out), "faithfulness" (what was removed
    from the drafts and why), "unchecked" (the note as drafted, before the check)."""
    from .tasks import TaskError, TaskResult, _add, summary_options

    style = style or DEFAULT_STYLE
    if style not in STYLES:
        raise TaskError(f"unknown note style {style!r}; choose from {', '.join(STYLES)}")
    opts = options or summary_options()
    all_turns = turns(transcript)
    blocks: list[str] = []
    raw_blocks: list[str] = []
    report = faithfulness.Report()
    meta: dict = {"style": style, "sections": [], "not_discussed": []}
    total: GenerationStats | None = None
    calls = 0
    seen: list[set[str]] = []
    planned = [(s, section_input(s, all_turns)) for s in SECTIONS]
    for i, (section, chosen) in enumerate(planned):
        if on_progress:
            on_progress("section", i, len(planned))
        if not chosen:
            meta["not_discussed"].append(section.key)
            continue
        if cancel is not None and cancel.cancelled:
            total = _add(total, GenerationStats(finish_reason="cancelled"))
            break
        section_opts = dataclasses.replace(opts, max_tokens=min(opts.max_tokens, section.tokens[style]))
        try:
            # a long section's parts and merge report their progress as any summary's do
            result = summarize(backend, "\n".join(chosen), section.prompt, options=section_opts, cancel=cancel,
                               on_progress=on_progress, best_of=best_of, examples=examples, source=transcript,
                               synonyms=synonyms)
        except (BackendError, TaskError) as exc:
            if not blocks:
                raise
            raise TaskError(f"{exc} (after {len(blocks)} sections; the sections written are what is left)",
                            partial="\n\n".join(blocks)) from exc
        total = _add(total, result.stats)
        calls += result.parts
        found = result.meta.get("faithfulness")
        if found:
            report.extend(_report_of(found))
        raw = result.meta.get("unchecked", result.text)
        if raw.strip():
            raw_blocks.append(_block(section, style, raw.strip()))
        cancelled = result.stats.finish_reason == "cancelled"
        # a section stopped half-way keeps what it has (a long one's part summaries) as it is
        text = result.text.strip() if cancelled else _without_repeats(result.text, seen)
        meta["sections"].append({"key": section.key, "turns": len(chosen), "words": len(text.split())})
        if text:
            block = _block(section, style, text)
            if on_text is not None:
                on_text(("\n\n" if blocks else "") + block)
            blocks.append(block)
        else:
            meta["not_discussed"].append(section.key)
        if cancelled:
            break
    if on_progress:
        on_progress("section", len(planned), len(planned))
    note = "\n\n".join(blocks)
    # The sections were each checked; the note as a whole is checked once more, so that
    # nothing assembled from them can slip through.
    note, final = faithfulness.clean(note, transcript, synonyms)
    report.extend(final)
    meta["faithfulness"] = report.to_dict()
    meta["unchecked"] = "\n\n".join(raw_blocks)
    if total is None:
        total = GenerationStats(finish_reason="stop")
    return TaskResult(note, backend.model_name, total, calls, meta=meta)


def _report_of(found: dict) -> faithfulness.Report:
    return faithfulness.Report(
        [faithfulness.Finding(u["kind"], u["text"], "") for u in found.get("unsupported", [])],
        [faithfulness.Removal(r["sentence"], tuple(r["kinds"]), r["kept"]) for r in found.get("removed", [])])
