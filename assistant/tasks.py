"""The task layer: what the CLI and the TUI call. Nothing above this layer
talks to a backend directly.

- `summarize` turns a transcript into a clinical-note section. A transcript
  longer than the model's context is split at turn boundaries, each part is
  summarized, and the partial summaries are merged (recursively if needed),
  so nothing is silently truncated.
- `answer` answers a health question, optionally continuing a conversation.
  Every question first goes through the deterministic triage layer: an
  emergency or a crisis gets its fixed message and the model is not asked at
  all. Health questions are grounded: passages retrieved from the local
  knowledge base go into the prompt, the answer lists them as sources, and
  when nothing relevant is found the assistant says it does not know instead
  of letting a small model guess.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from . import faithfulness, prompts
from .answer_checks import SentenceGate
# Grounding lives in its own module; these names stay importable from here.
from .grounding import (  # noqa: F401
    GROUNDING_CANDIDATES, GROUNDING_PASSAGES, ground, is_drug_page, question_section, retrieve_grounding,
)
from .backends.base import Backend, BackendError, CancelToken, GenerationOptions, GenerationStats, Message

TextCallback = Callable[[str], None]
ProgressCallback = Callable[[str, int, int], None]  # (stage, done, total)

SUMMARY_MAX_TOKENS = 256
ANSWER_MAX_TOKENS = 384
# Chosen on the MTS-Dialog validation split (100 dialogues, shipped model: ROUGE-1 31.5 at
# 1.0, 36.3 at 1.05, 37.1 at 1.1, 36.9 at 1.15, 35.6 at 1.2): decoding greedily, a small
# model otherwise loops on a sentence until the length limit.
SUMMARY_REPEAT_PENALTY = 1.1
# A summary of an MTS-Dialog section is chosen among the greedy one and SUMMARY_BEST_OF - 1
# samples (assistant/best_of.py; which summaries, `summary_drafts`). On the MTS-Dialog
# validation split (100 dialogues, shipped model) ROUGE-1 is 37.1 greedy, 37.9 best of 3,
# 39.0 best of 5, 40.6 best of 9 (40.8 of 13, 40.5 of 17: no further gain), for about
# seven times the time of one greedy draft (`assistant bench best-of`; the prompt is
# processed once, decoding repeats).
SUMMARY_BEST_OF = 9
BEST_OF_TEMPERATURE, BEST_OF_TOP_P = 0.7, 0.95
# A summary asked for with no section (a whole visit, the app's Summarize mode) is written
# as the visit's History of Present Illness. The model was tuned on section prompts only:
# asked for "a clinical note" it answered a short transcript with one stray line ("None.",
# "Accutane.") and scored lower on whole visits (ACI-Bench validation, 17 visits against
# their full notes: ROUGE-1 30.3 with that prompt, 33.8 with this one; finetune/RESULTS.md).
WHOLE_VISIT_SECTION = "History of Present Illness"


def summary_drafts(section: str | None) -> int:
    """Drafts a summary gets by default: SUMMARY_BEST_OF for a section MTS-Dialog names
    (short notes, judged against the notes of similar visits), one greedy draft for any
    other section or a whole-visit note. Drafting only pays where it was measured to: on
    ACI-Bench's 66 whole-visit validation sections nine drafts scored ROUGE-1 22.8 against
    21.5 for one greedy draft with ROUGE-2 and -L unchanged, at about seven times the time
    of a long note (finetune/RESULTS.md)."""
    return SUMMARY_BEST_OF if prompts.section_code(section) else 1


def summary_options(**overrides) -> GenerationOptions:
    """Generation defaults for summaries; `overrides` with a None value are ignored."""
    values = {"max_tokens": SUMMARY_MAX_TOKENS, "repeat_penalty": SUMMARY_REPEAT_PENALTY}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return GenerationOptions(**values)


class TaskError(ValueError):
    """The input cannot be processed (for example an empty transcript). `partial`: what
    was written before the failure (the summaries of a long transcript's finished parts)."""

    def __init__(self, message: str, partial: str = "") -> None:
        super().__init__(message)
        self.partial = partial


def _check_text(text: str, what: str) -> None:
    # Bytes that were not UTF-8 (a command-line argument, a file read leniently) or a lone
    # JSON \u escape arrive as unpaired surrogates, which no tokenizer can encode.
    bad = next((i for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff"), None)
    if bad is not None:
        raise TaskError(f"the {what} is not valid text: character {bad + 1} is not UTF-8 "
                        "(an undecodable byte or half of a character)")


@dataclass
class TaskResult:
    text: str
    model: str
    stats: GenerationStats
    parts: int = 1  # how many model calls produced the text
    meta: dict = field(default_factory=dict)

    @property
    def cancelled(self) -> bool:
        return self.stats.finish_reason == "cancelled"


def _run(backend: Backend, messages: Sequence[Message], options: GenerationOptions,
         on_text: TextCallback | None, cancel: CancelToken | None) -> tuple[str, GenerationStats]:
    if cancel is not None and cancel.cancelled:
        return "", GenerationStats(finish_reason="cancelled")
    pieces = []
    for piece in backend.stream(messages, options, cancel):
        pieces.append(piece)
        if on_text is not None:
            on_text(piece)
    assert backend.last_stats is not None
    return "".join(pieces).strip(), backend.last_stats


def _add(total: GenerationStats | None, stats: GenerationStats) -> GenerationStats:
    if total is None:
        return dataclasses.replace(stats)  # a copy, since the totals are added to in place
    total.prompt_tokens += stats.prompt_tokens
    total.completion_tokens += stats.completion_tokens
    total.total_s += stats.total_s
    # error beats cancelled beats length beats stop: a part cut at the limit lost facts the
    # merge cannot recover
    order = ("stop", "length", "cancelled", "error")
    if order.index(stats.finish_reason) >= order.index(total.finish_reason):
        total.finish_reason = stats.finish_reason
    return total


def _system() -> Message:
    return {"role": "system", "content": prompts.template("system")}


def summary_messages(dialogue: str, section: str | None = None) -> list[Message]:
    """The exact prompt a summary is generated from (also used to build training data)."""
    content = prompts.render("summarize_section", section=_title(section), dialogue=dialogue.strip())
    return [_system(), {"role": "user", "content": content}]


def _title(section: str | None) -> str:
    return prompts.section_title(section) or WHOLE_VISIT_SECTION


def answer_messages(question: str, history: Sequence[Message] = ()) -> list[Message]:
    return [_system(), *history, {"role": "user", "content": prompts.render("answer", question=question.strip())}]


def grounded_answer_messages(question: str, passages: Sequence, history: Sequence[Message] = ()) -> list[Message]:
    """The prompt of a grounded answer (also used to build grounded training examples)."""
    refs = "\n\n".join(f"[{i}] {p.title}\n{p.text.strip()}" for i, p in enumerate(passages, 1))
    content = prompts.render("answer_grounded", passages=refs, question=question.strip())
    return [_system(), *history, {"role": "user", "content": content}]


_SMALL_TALK = re.compile(
    r"^\W*(?:hi|hello|hey|good (?:morning|afternoon|evening)|thanks?(?: you)?|thank you(?: very much)?|"
    r"bye|goodbye|ok(?:ay)?|who are you|what are you|what can you do|how are you)\b"
    # a short tail ("there", "today", "so much") but no question of its own, and nothing
    # about the writer's health ("hello, I have cancer" is a health message, not a greeting;
    # "thanks, have a nice day" and "hi, I'm Sam" are still small talk)
    r"(?![\w\s,']*\b(?:what|why|when|where|which|can|should|does|do|is|my|i have|i've got|i got|"
    r"pain|hurts?|hurting|sick|ill|aches?|fever|cough\w*|cancer|hiv|symptoms?|dizzy|faint\w*|pregnant|"
    r"bleed\w*|vomit\w*|nause\w*|dying|sore|swollen|rash|breath\w*|depressed|anxious)\b)[\w\s,']{0,20}\W*$",
    re.IGNORECASE,
)


_BACK_REFERENCE = re.compile(r"\b(?:it|its|he|she|they|him|her|his|them|this|that)\b", re.IGNORECASE)


def leans_on_context(question: str) -> bool:
    """A message that says too little on its own ("what about children?", "should I wait?")
    or points back ("is it a stroke?"): it is read with what the user said before it."""
    return len(question.split()) <= 6 or bool(_BACK_REFERENCE.search(question))


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def _last_question(text: str) -> str | None:
    """The last sentence ending in "?" of a message of several sentences, else None."""
    sentences = _sentences(text)
    asked = [s for s in sentences if s.endswith("?")]
    return asked[-1] if len(sentences) > 1 and asked else None


_ASKS_ABOUT_ME = re.compile(r"\b(?:who are you|what are you|what can you do|how are you)\b", re.IGNORECASE)


def is_small_talk(text: str) -> bool:
    """Greetings and thanks ("Hi! How are you today?") are answered by the model
    directly, not from the library: every sentence must be small talk, and a question
    after a greeting ("ok, aspirin for kids?") is a question, unless it asks about the
    assistant itself."""
    def small(sentence: str) -> bool:
        asks = sentence.endswith("?")
        return bool(_SMALL_TALK.match(sentence)) and (not asks or bool(_ASKS_ABOUT_ME.search(sentence)))

    sentences = _sentences(text)
    return bool(sentences) and all(small(s) for s in sentences)


# --- chunking -------------------------------------------------------------

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def split_to_fit(text: str, budget: int, count: Callable[[str], int]) -> list[str]:
    """Split text into pieces of at most `budget` tokens, preferring turn
    (line) boundaries, then sentence boundaries, then word boundaries."""
    if budget < 8:
        raise TaskError("the model's context is too small to hold any of the transcript")
    return _split(text, budget, count, 0)


_SPLITTERS: list[tuple[Callable[[str], list[str]], str]] = [
    (lambda t: [l for l in t.splitlines() if l.strip()], "\n"),
    (lambda t: [s for s in _SENTENCE.split(t) if s.strip()], " "),
    (str.split, " "),
]


def _split(text: str, budget: int, count: Callable[[str], int], level: int) -> list[str]:
    if count(text) <= budget:
        return [text]
    if level >= len(_SPLITTERS):  # a single "word" longer than the budget: cut by characters
        half = max(1, len(text) // 2)
        return _split(text[:half], budget, count, level) + _split(text[half:], budget, count, level)
    split, joiner = _SPLITTERS[level]
    units = split(text)
    if len(units) <= 1:
        return _split(text, budget, count, level + 1)
    # Each unit is counted once, plus what a joiner costs with this tokenizer, so a long chunk
    # costs about one pass of the tokenizer rather than one per unit added to it. A chunk the
    # estimate lets over budget (a space can cost a token before digits) gives back trailing
    # units in proportion to its overshoot, which start the next chunk: turns stay whole and
    # chunks stay nearly full.
    sep = max(0, count(f"x{joiner}x") - 2 * count("x"))
    sizes = [count(u) for u in units]
    out: list[str] = []
    i = 0
    while i < len(units):
        if sizes[i] > budget:  # one unit alone is too long: split it finer
            out.extend(_split(units[i], budget, count, level + 1))
            i += 1
            continue
        j, size = i + 1, sizes[i]
        while j < len(units) and size + sep + sizes[j] <= budget:
            size += sep + sizes[j]
            j += 1
        while j - i > 1 and (exact := count(joiner.join(units[i:j]))) > budget:
            j = i + max(1, min(j - i - 1, (j - i) * budget // exact))
        out.append(joiner.join(units[i:j]))
        i = j
    return out


def _budget(backend: Backend, messages: list[Message], max_tokens: int, margin: int = 16) -> int:
    """Tokens left for the transcript once the prompt scaffolding and the reply are reserved."""
    return backend.context_length - backend.prompt_tokens(messages) - max_tokens - margin


# --- tasks ----------------------------------------------------------------

def summarize(
    backend: Backend,
    dialogue: str,
    section: str | None = None,
    options: GenerationOptions | None = None,
    on_text: TextCallback | None = None,
    cancel: CancelToken | None = None,
    on_progress: ProgressCallback | None = None,
    max_chunk_tokens: int | None = None,
    best_of: int | None = 1,
    examples=None,
    *,
    style: str | None = None,
    source: str | None = None,
    synonyms=None,
) -> TaskResult:
    """`best_of` > 1 drafts that many candidates and returns the one `best_of.choose`
    prefers among those with no unsupported fact, judged with the notes of similar visits
    from `examples` (a `note_examples.NoteExamples`; the shipped ones by default).
    `on_text` then gets the chosen text once, at the end. None means the default for the
    section (`summary_drafts`). A transcript split into parts is summarized with one draft
    per call.

    With no section, the whole visit is written as a note of several sections in `style`
    ("soap", the default, or "gp"; `visit_notes`). Every draft, part summary and merged
    summary is checked against `source` (the transcript by default) and loses the
    sentences that state what it does not say (`faithfulness.clean`, brand and generic
    names through `synonyms`); meta["faithfulness"] says what was removed and why,
    meta["unchecked"] holds the text as drafted."""
    if not dialogue or not dialogue.strip():
        raise TaskError("the transcript is empty")
    _check_text(dialogue, "transcript")
    if best_of is not None and best_of < 1:
        raise TaskError(f"best_of must be at least 1, not {best_of}")
    if not section or not section.strip():
        from . import visit_notes

        # Nine drafts per section were not worth their time on long notes (finetune/RESULTS.md).
        return visit_notes.write_note(backend, dialogue, summarize, style, options, on_text, cancel, on_progress,
                                      best_of or 1, examples, synonyms)
    if best_of is None:
        best_of = summary_drafts(section)
    source = source or dialogue
    opts = options or summary_options()
    budget = _budget(backend, summary_messages("", section), opts.max_tokens)
    if budget < 8:  # the same for every record, so say which setting to change
        raise TaskError(f"a reply of up to {opts.max_tokens} tokens leaves no room for the transcript in the "
                        f"model's {backend.context_length}-token context; lower the reply length (max tokens)")
    if max_chunk_tokens:
        budget = min(budget, max_chunk_tokens)
    if backend.count_tokens(dialogue) <= budget:
        if best_of > 1:
            return _summarize_best_of(backend, dialogue, section, opts, best_of, examples,
                                      on_text, cancel, on_progress, source, synonyms)
        # Checked a sentence at a time as it streams: what is shown is what is kept.
        cleaner = faithfulness.Cleaner(source, synonyms)
        text, stats = _run(backend, summary_messages(dialogue, section), opts, _cleaned(cleaner, on_text), cancel)
        _finish(cleaner, on_text)
        return TaskResult(cleaner.text, backend.model_name, stats, meta=_checked(cleaner.report, text))

    title = _title(section)
    # Two part summaries must fit one merge prompt, or every part would be written only for
    # the merge to fail: a part's summary is kept short enough for that.
    merge_budget = _budget(backend, _merge_messages(title, []), opts.max_tokens)
    part_tokens = min(opts.max_tokens, (merge_budget - 24) // 2)  # _merge allows 8 per summary for "Part i: "
    if part_tokens < 16:
        raise TaskError(f"this transcript needs several parts, and the model's {backend.context_length}-token "
                        f"context leaves no room to merge their summaries; lower the reply length (max tokens)")
    part_opts = dataclasses.replace(opts, max_tokens=part_tokens)
    part_budget = min(budget, _budget(backend, [_system(), {"role": "user", "content": prompts.render(
        "summarize_part", part="99", parts="99", section=title, dialogue="")}], opts.max_tokens))
    parts = split_to_fit(dialogue, part_budget, backend.count_tokens)
    summaries: list[str] = []
    try:
        return _summarize_parts(backend, parts, summaries, title, opts, part_opts, on_text, cancel, on_progress,
                                source, synonyms)
    except (BackendError, TaskError) as exc:  # a model failure, or summaries too long to merge
        if not summaries:
            raise
        # Minutes of work on a long visit are not thrown away with the failing call.
        raise TaskError(f"{exc} (after {len(summaries)} of {len(parts)} parts; the part summaries are "
                        "what is left)", partial="\n".join(summaries)) from exc


def _summarize_parts(backend: Backend, parts: list[str], summaries: list[str], title: str,
                     opts: GenerationOptions, part_opts: GenerationOptions, on_text, cancel, on_progress,
                     source: str, synonyms=None) -> TaskResult:
    """Summarize each part into `summaries` (the caller keeps them if a call fails), then merge.
    Each part's summary is checked before the merge reads it, and the merge as it streams."""
    total: GenerationStats | None = None
    calls = 0
    report = faithfulness.Report()
    drafted: list[str] = []
    for i, part in enumerate(parts, 1):
        if on_progress:
            on_progress("part", i - 1, len(parts))
        if cancel is not None and cancel.cancelled:
            return TaskResult("\n".join(summaries), backend.model_name,
                              _add(total, GenerationStats(finish_reason="cancelled")), calls)
        messages = [_system(), {"role": "user", "content": prompts.render(
            "summarize_part", part=str(i), parts=str(len(parts)), section=title, dialogue=part)}]
        text, stats = _run(backend, messages, part_opts, None, cancel)
        total = _add(total, stats)
        calls += 1
        drafted.append(text)
        text, found = faithfulness.clean(text, source, synonyms)
        report.extend(found)
        summaries.append(text)
        if stats.finish_reason == "cancelled":
            return TaskResult("\n".join(summaries), backend.model_name, total, calls,
                              meta=_checked(report, "\n".join(drafted)))
    if on_progress:
        on_progress("part", len(parts), len(parts))
    cleaner = faithfulness.Cleaner(source, synonyms)
    merged, merge_stats, merge_calls = _merge(backend, [s for s in summaries if s.strip()] or summaries, title, opts,
                                              _cleaned(cleaner, on_text), cancel, part_opts)
    _finish(cleaner, on_text)
    total = _add(total, merge_stats)
    # what the cleaner passed on, unless a cancel left merges unshown (a round's, or none yet)
    checked, found = faithfulness.clean(merged, source, synonyms)
    report.extend(found)
    if total.finish_reason == "cancelled" and not merged.strip():  # stopped before the merge wrote anything
        checked = "\n".join(summaries)
    return TaskResult(checked, backend.model_name, total, calls + merge_calls, meta=_checked(report, merged))


def _cleaned(cleaner, on_text: TextCallback | None) -> TextCallback:
    """A stream callback that passes on what `cleaner` keeps."""
    def feed(piece: str) -> None:
        kept = cleaner.feed(piece)
        if kept and on_text is not None:
            on_text(kept)
    return feed


def _finish(cleaner, on_text: TextCallback | None) -> None:
    kept = cleaner.finish()
    if kept and on_text is not None:
        on_text(kept)


def _checked(report, drafted: str) -> dict:
    return {"faithfulness": report.to_dict(), "unchecked": drafted}


def _summarize_best_of(backend: Backend, dialogue: str, section: str | None, opts: GenerationOptions,
                       n: int, examples, on_text: TextCallback | None, cancel: CancelToken | None,
                       on_progress: ProgressCallback | None, source: str | None = None, synonyms=None) -> TaskResult:
    from . import best_of, note_examples

    messages = summary_messages(dialogue, section)
    # The first draft is the one asked for (greedy by default); the others are samples
    # with their own seeds, so the whole choice is reproducible.
    sample = dataclasses.replace(opts, temperature=opts.temperature or BEST_OF_TEMPERATURE,
                                 top_p=opts.top_p if opts.top_p < 1.0 else BEST_OF_TOP_P)
    drafts: list[tuple[str, GenerationStats]] = []
    total: GenerationStats | None = None
    for i in range(n):
        if on_progress:
            on_progress("candidate", i, n)
        draft_opts = opts if i == 0 else dataclasses.replace(sample, seed=opts.seed + i)
        text, stats = _run(backend, messages, draft_opts, None, cancel)
        total = _add(total, stats)
        if stats.finish_reason == "cancelled":
            if not drafts:  # keep what the first draft got to
                drafts.append((text, stats))
            break
        drafts.append((text, stats))
    if on_progress:
        on_progress("candidate", len(drafts), n)
    cancelled = total.finish_reason == "cancelled"
    texts = [t for t, _ in drafts]
    source = source or dialogue
    # A draft stating what the transcript does not is passed over while another does not.
    faithful = [faithfulness.check(t, source, synonyms).faithful for t in texts]
    if len(texts) > 1:
        library = examples if examples is not None else note_examples.load()
        scores = best_of.utilities(texts, library.similar(dialogue, section, k=best_of.EXAMPLES))
        unchecked, chosen = best_of.best(scores), best_of.best(scores, faithful)
    else:
        unchecked = chosen = 0
    total.finish_reason = "cancelled" if cancelled else drafts[chosen][1].finish_reason
    text, report = faithfulness.clean(texts[chosen], source, synonyms)
    if on_text is not None and text:
        on_text(text)
    # "unchecked": what the choice would have been without the check, as it was drafted
    return TaskResult(text, backend.model_name, total, len(drafts),
                      meta={"best_of": n, "drafts": len(texts), "chosen": chosen, "faithful_drafts": sum(faithful),
                            **_checked(report, texts[unchecked])})


def _merge_messages(title: str, items: list[str]) -> list[Message]:
    body = "\n\n".join(f"Part {i}: {s}" for i, s in enumerate(items, 1))
    return [_system(), {"role": "user", "content": prompts.render("merge", section=title, summaries=body)}]


def _merge(backend: Backend, summaries: list[str], title: str, opts: GenerationOptions,
           on_text: TextCallback | None, cancel: CancelToken | None,
           round_opts: GenerationOptions | None = None) -> tuple[str, GenerationStats, int]:
    """Merge partial summaries, in rounds if they do not fit one prompt; `round_opts` (a
    shorter reply) for the merges of a round that is not the last, so their results fit."""
    merge_budget = _budget(backend, _merge_messages(title, []), opts.max_tokens)
    calls = 0
    total: GenerationStats | None = None
    # Group partial summaries so each merge prompt fits; repeat until one group remains.
    while True:
        groups: list[list[str]] = [[]]
        for s in summaries:
            if groups[-1] and backend.count_tokens("\n\n".join(groups[-1] + [s])) + 8 * len(groups[-1]) > merge_budget:
                groups.append([])
            groups[-1].append(s)
        if len(groups) == 1:
            text, stats = _run(backend, _merge_messages(title, groups[0]), opts, on_text, cancel)
            return text, _add(total, stats), calls + 1
        if len(groups) == len(summaries):  # no progress possible: each summary alone fills the budget
            raise TaskError("partial summaries are too long to merge within the model's context")
        merged = []
        for k, g in enumerate(groups):
            if len(g) == 1:  # nothing to combine it with this round
                merged.append(g[0])
                continue
            text, stats = _run(backend, _merge_messages(title, g), round_opts or opts, None, cancel)
            total = _add(total, stats)
            calls += 1
            if stats.finish_reason == "cancelled":  # what was merged, then every summary not yet merged
                # (a round's merges are not shown as they are written: its cut-off text is dropped)
                return "\n".join([*merged, *(s for h in groups[k:] for s in h)]), total, calls
            merged.append(text)
        summaries = merged


# A message telling how the writer (or someone in their care) feels: answered in the
# second person with when to get care, never as a clinical note.
_STORY_SUBJECT = re.compile(
    r"\b(?:i|i'?ve|i'?m|im|my (?:\w+ ){0,2}?(?:son|daughter|child|baby|kid|husband|wife|partner|mother|father|mom|mum|"
    r"dad|boy|girl))\b[^.?!]{0,60}?\b(?:have|has|had|having|feel|feels|feeling|felt|hurts?|hurting|aches?|aching|"
    r"been|got|gets|keeps?|woke|cannot|can'?t)\b", re.IGNORECASE)
_SYMPTOM = re.compile(
    r"\b(?:pains?|painful|aches?|aching|hurts?|hurting|fever|temperature|cough\w*|rash|dizz\w*|nause\w*|vomit\w*|"
    r"throw\w* up|diarrh\w*|headaches?|migraines?|sore|swollen|swelling|itch\w*|bleed\w*|tired|fatigue|exhausted|"
    r"short of breath|breath\w*|lumps?|numb\w*|tingl\w*|cramps?|burn\w*|constipat\w*|sleep\w*|anxious|anxiety|"
    r"depress\w*|chills|sweat\w*|wheez\w*|stiff\w*|weak\w*|spots?|blisters?|discharge|bloat\w*|heartburn)\b",
    re.IGNORECASE)


def is_symptom_story(text: str) -> bool:
    return bool(_STORY_SUBJECT.search(text) and _SYMPTOM.search(text))


def symptom_answer_messages(question: str, passages: Sequence, history: Sequence[Message] = ()) -> list[Message]:
    refs = "\n\n".join(f"[{i}] {p.title}\n{p.text.strip()}" for i, p in enumerate(passages, 1))
    content = prompts.render("answer_symptoms", passages=refs, question=question.strip())
    return [_system(), *history, {"role": "user", "content": content}]


def _extract(passages: Sequence, words: int = 60) -> str:
    """The opening sentences of the best passage: said when every drafted sentence failed
    its checks, since a source's own words cannot misstate it."""
    text = " ".join(passages[0].text.split())
    sentences, out = re.split(r"(?<=[.!?])\s+", text), []
    for sentence in sentences:
        if out and len(" ".join(out).split()) + len(sentence.split()) > words:
            break
        out.append(sentence)
    return f"From \"{passages[0].title}\": " + " ".join(out)


def _care_text() -> str:
    from .safety.triage import default_config

    return prompts.render("seek_care", emergency=default_config().numbers.get("emergency", "911"))


def _fixed(text: str, model: str, on_text: TextCallback | None, meta: dict) -> TaskResult:
    if on_text is not None:
        on_text(text)
    return TaskResult(text, model, GenerationStats(total_s=0.0), parts=0, meta=meta)


def answer(
    backend: Backend,
    question: str,
    history: Sequence[Message] = (),
    options: GenerationOptions | None = None,
    on_text: TextCallback | None = None,
    cancel: CancelToken | None = None,
    *,
    knowledge=None,
    grounded: bool = True,
    safety: bool = True,
) -> TaskResult:
    """Answer a health question. `meta` of the result carries "triage"
    ("emergency" | "crisis" | "none"), "sources" (list of {"title", "url"})
    and "grounded"; `knowledge` defaults to the shipped knowledge base."""
    if not question or not question.strip():
        raise TaskError("the question is empty")
    _check_text(question, "question")
    meta: dict = {"triage": "none", "sources": [], "grounded": False}
    referral = None
    if safety:
        from .safety.triage import triage

        verdict = triage(question)
        if not verdict.urgent and leans_on_context(question) and not is_small_talk(question):
            # Read with the message before it: "Is it a stroke?" right after "his face is
            # drooping" keeps the emergency on, and an emergency told in two messages ("my baby
            # has a fever", then "she is 3 weeks old") is one.
            last_user = next((m["content"] for m in reversed(history) if m["role"] == "user"), "")
            if last_user:
                together = triage(f"{last_user}\n{question}")  # a line break ends the first one's clauses
                if together.urgent:
                    verdict = together
        meta["triage"] = verdict.level
        if verdict.reasons:
            meta["triage_reasons"] = [r.to_dict() for r in verdict.reasons]  # rule, entry, title, source, url
        if verdict.urgent:
            # The fixed message is the whole reply: nothing a small model adds can be trusted here.
            return _fixed(verdict.message, "triage", on_text, meta)
        if verdict.scope:
            meta["scope"] = verdict.scope
            referral = verdict.referral
    opts = options or GenerationOptions(max_tokens=ANSWER_MAX_TOKENS)
    grounding = None
    if grounded and not is_small_talk(question):
        if knowledge is None:
            from .knowledge import KnowledgeBase, KnowledgeError

            try:
                knowledge = KnowledgeBase.default()
            except KnowledgeError as exc:
                raise TaskError(str(exc)) from exc
        grounding = ground(knowledge, _queries(question, history), question, getattr(knowledge, "vocabulary", None))
        meta["grounding"] = grounding.kind
        if grounding.missing:
            meta["not_in_library"] = list(grounding.missing)
        if grounding.kind in ("none", "missing"):
            if grounding.kind == "missing":
                text = prompts.render("not_in_library", drugs=_listing(grounding.missing))
            else:
                text = prompts.template("dont_know")
            if referral:
                text += "\n\n" + referral
            return _fixed(text, "knowledge-base", on_text, meta)
        hits = grounding.passages
        meta["grounded"] = True
        meta["sources"] = unique_sources(hits)
        story = is_symptom_story(question)
        if story:
            meta["symptom_story"] = True
        build = symptom_answer_messages if story else grounded_answer_messages
        messages = build(question, hits, _plain_history(history))
    else:
        build = None
        messages = answer_messages(question, history)
    # Drop the oldest turns of a long conversation rather than overflow the context, then
    # the least relevant reference passages.
    reserve = min(opts.max_tokens, backend.context_length // 2)
    while len(messages) > 2 and backend.prompt_tokens(messages) + reserve > backend.context_length:
        # One message at a time, then on to the next user turn: a history of any shape loses
        # its oldest exchange, never the question (always last).
        messages = [messages[0], *messages[2:]]
        while len(messages) > 2 and messages[1]["role"] != "user":
            messages = [messages[0], *messages[2:]]
    while meta["grounded"] and len(hits) > 1 and backend.prompt_tokens(messages) + reserve > backend.context_length:
        hits = hits[:-1]
        meta["sources"] = unique_sources(hits)
        messages = [*messages[:-1], build(question, hits)[-1]]
    if backend.prompt_tokens(messages) + reserve > backend.context_length:
        raise TaskError(f"the question is too long for the model ({len(question.split())} words): it reads at "
                        f"most {backend.context_length} tokens, its answer included; please shorten it")
    if not meta["grounded"]:
        text, stats = _run(backend, messages, opts, on_text, cancel)
    else:
        text, stats = _run_checked(backend, messages, opts, on_text, cancel, hits, meta)
    cancelled = stats.finish_reason == "cancelled"
    additions = []
    if grounding is not None and not cancelled:
        if grounding.kind == "partial":
            who = "Your pharmacist or prescriber" if is_drug_page(hits[0]) else "A doctor, nurse or pharmacist"
            additions.append(prompts.render("partial_answer", topic=grounding.topic, who=who))
        if grounding.missing:
            additions.append(prompts.render("not_in_library", drugs=_listing(grounding.missing)))
        if meta.get("symptom_story"):
            additions.append(_care_text())
    if referral and not cancelled:
        additions.append(referral)
    for extra in additions:
        if on_text is not None:
            on_text("\n\n" + extra)
        text += "\n\n" + extra
    return TaskResult(text, backend.model_name, stats, meta=meta)


def _queries(question: str, history: Sequence[Message]) -> list[tuple[str, str | None]]:
    """What to look up, in order: a short follow-up that points back and asks for a section
    ("How is it treated?" after "What are the symptoms of lupus?") reads that section of the
    earlier page (alone, "treated" finds a kidney booklet's title); then the question itself;
    a story's last question alone; a follow-up read with the last question looked up."""
    last_asked = next((m["content"] for m in reversed(history)
                       if m["role"] == "user" and not is_small_talk(m["content"])), "")
    asks_for = question_section(question)
    queries: list[tuple[str, str | None]] = []
    if last_asked and asks_for and _BACK_REFERENCE.search(question) and len(question.split()) <= 8:
        queries.append((last_asked, asks_for))
    queries.append((question, None))
    asked = _last_question(question)
    if asked:
        queries.append((asked, None))
    if last_asked and leans_on_context(question):
        queries.append((f"{last_asked} {question}", asks_for or question_section(last_asked)))
    return queries


def _listing(names: Sequence[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def question_of(messages: Sequence[Message]) -> str:
    return messages[-1]["content"] if messages else ""


def _unsupported_by(prompt: str, passages: Sequence) -> Callable[[str], str | None]:
    """A sentence stating an age, sex, setting, medicine, dose or number that neither the
    question nor the passages say is dropped: an answer never states what its source did not."""
    from .faithfulness import check
    from .vocabulary import Vocabulary, normalise

    source = "\n".join([prompt, *(p.text for p in passages)])
    vocabulary = Vocabulary.default()

    def other_names(name: str) -> list[str]:
        return vocabulary.terms.get(normalise(name), [])

    def unsupported(sentence: str) -> str | None:
        report = check(sentence, source, synonyms=other_names)
        return "unsupported " + ", ".join(sorted(report.kinds())) if report.findings else None

    return unsupported


def _run_checked(backend: Backend, messages: Sequence[Message], options: GenerationOptions,
                 on_text: TextCallback | None, cancel: CancelToken | None, passages: Sequence,
                 meta: dict) -> tuple[str, GenerationStats]:
    """Generate through the sentence checks: a note-voice sentence is dropped, a repeated
    one ends the answer (the model is stopped there), and an answer left with nothing
    gives the source's own opening words instead."""
    gate = SentenceGate(drop=_unsupported_by(question_of(messages), passages))
    stop = CancelToken()

    class _Either:  # the caller's cancel, or the gate's stop on a loop
        @property
        def cancelled(self) -> bool:
            return stop.cancelled or (cancel is not None and cancel.cancelled)

    def shown(piece: str) -> None:
        out = gate.feed(piece)
        if gate.looped:
            stop.cancel()
        if out and on_text is not None:
            on_text(out)

    _, stats = _run(backend, messages, options, shown, _Either())
    tail = gate.finish()
    if tail and on_text is not None:
        on_text(tail)
    if gate.looped and not (cancel is not None and cancel.cancelled):
        stats = dataclasses.replace(stats, finish_reason="stop")
    if gate.dropped:
        meta["dropped_sentences"] = [{"reason": r, "text": t} for r, t in gate.dropped]
    text = gate.text
    if stats.finish_reason != "cancelled" and (not text or gate.dropped and len(text.split()) < 5):
        fallback = _extract(passages)
        if on_text is not None:
            on_text(("\n\n" if text else "") + fallback)
        text = f"{text}\n\n{fallback}".strip()
    return text, stats


def unique_sources(passages: Sequence) -> list[dict]:
    seen, out = set(), []
    for p in passages:
        if (p.url or p.doc_id) not in seen:
            seen.add(p.url or p.doc_id)
            out.append({"title": p.title, "url": p.url})
    return out


def _plain_history(history: Sequence[Message]) -> list[Message]:
    """Earlier turns go into a grounded prompt as plain text: their reference
    passages would crowd out the ones retrieved for this question."""
    return [dict(m) for m in history if m["role"] in ("user", "assistant")]
