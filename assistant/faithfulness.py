"""Facts in a draft that its source does not support, and the draft without them.

A small model writing a note from a transcript adds what the notes it learned from usually
say: an age, a sex, "presents to the emergency room", a dose, a duration. Such a fact in a
clinical note is a harm, not a matter of style. `check(draft, source)` lists the facts of
these kinds the source does not support; `clean(draft, source)` rewrites the sentences that
hold them (an age, sex or setting phrase, a dose or a duration is cut out of its sentence)
or drops them, and says what it removed and why. The answer layer calls the same functions
on an answer draft with its grounding passages as the source.

Kinds: age, sex, setting (emergency room, clinic, hospital, intensive care, telephone or
video), medicine (a name in the medicine lexicon or with a drug-class ending), dose,
duration, date (month and weekday names) and number. A fact counts as supported when the
source says it in any form: "three days" = "3 days" = "72 hours", "a week" = "7 days",
"twice" = "2 times", "1/2" = "half", "120/80" = "120 over 80", "45%" = "45 percent",
"54-year-old" = "54 years old", a brand = its generic (through `synonyms`), and a medicine
name a letter or two away from a transcribed one. The check is lexical: it misses
inventions it has no words for (a made-up diagnosis) and pronouns are not checked (a
note says "he" throughout where the transcript says "you").
"""
from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Union

from .paths import DATA_DIR

KINDS = ("age", "sex", "setting", "medicine", "dose", "duration", "date", "number")
# The groups the evaluation counts: who and where (never to be invented), medicines, numbers.
CATEGORY = {"age": "identity", "sex": "identity", "setting": "identity", "medicine": "medicine",
            "dose": "number", "duration": "number", "date": "number", "number": "number"}

Synonyms = Union[Callable[[str], Iterable[str]], Mapping[str, Iterable[str]]]


@dataclass(frozen=True)
class Finding:
    kind: str  # one of KINDS
    text: str  # as the draft writes it
    sentence: str  # the sentence it is in


@dataclass(frozen=True)
class Removal:
    sentence: str  # as the draft wrote it
    kinds: tuple[str, ...]  # why
    replacement: str  # what was kept of it ("" when the sentence was dropped)


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    removed: list[Removal] = field(default_factory=list)

    @property
    def faithful(self) -> bool:
        return not self.findings

    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}

    def categories(self) -> set[str]:
        return {CATEGORY[k] for k in self.kinds()}

    def extend(self, other: "Report") -> None:
        self.findings.extend(other.findings)
        self.removed.extend(other.removed)

    def to_dict(self) -> dict:
        """A JSON-ready summary, as a task result's meta records it."""
        return {"unsupported": [{"kind": f.kind, "text": f.text} for f in self.findings],
                "removed": [{"sentence": r.sentence, "kinds": list(r.kinds), "kept": r.replacement}
                            for r in self.removed]}


# --- numbers ---------------------------------------------------------------------

_SMALL = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"hundred": 100, "thousand": 1000, "hundreds": 100, "thousands": 1000}
_ORDINALS = {w: i for i, w in enumerate(
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
    "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth".split(), 1)}
_ORDINALS.update({"thirtieth": 30})
_TIMES = {"once": 1, "twice": 2, "thrice": 3}
_FRACTIONS = {"half": 0.5, "quarter": 0.25, "third": 1 / 3}

_DURATION_DAYS = {"minute": 1 / 1440, "min": 1 / 1440, "hour": 1 / 24, "hr": 1 / 24, "day": 1, "night": 1,
                  "week": 7, "wk": 7, "fortnight": 14, "month": 30, "mo": 30, "year": 365, "yr": 365}
_DOSE_UNITS = {"mg", "mgs", "milligram", "mcg", "microgram", "g", "gram", "ml", "milliliter", "millilitre", "cc",
               "unit", "iu", "puff", "tablet", "tab", "pill", "capsule", "cap", "drop", "spray", "patch", "l",
               "liter", "litre", "meq"}
_GRAMS = {"g": 1000, "gram": 1000, "mg": 1, "mgs": 1, "milligram": 1, "mcg": 0.001, "microgram": 0.001}

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:,\d{3})*(?:\.\d+)?")


def _singular(unit: str) -> str:
    unit = unit.lower().rstrip(".")
    return unit[:-1] if unit.endswith("s") and unit[:-1] in _DURATION_DAYS | dict.fromkeys(_DOSE_UNITS) else unit


@dataclass
class _Number:
    value: float
    start: int
    end: int
    unit: str = ""  # singular, lowercase: "day", "mg"; "" when none follows
    old: bool = False  # "-year-old", "years old": an age
    stop: int = -1  # where the number itself ends, its unit left out


_DIGITS = re.compile(r"(?<![\w.])(?<![A-Za-z]-)(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?:st|nd|rd|th)?(?![\w])"
                     r"|(?<![\w.])(?<![A-Za-z]-)(\d+(?:\.\d+)?)(?=[a-zA-Z%])")
_UNIT_AFTER = re.compile(r"\s*(?:-\s*)?(%|percent\b|per cent\b|[a-zA-Z]+)(?:[-\s]+(old)\b)?", re.IGNORECASE)


def _unit_after(text: str, end: int) -> tuple[str, bool, int]:
    m = _UNIT_AFTER.match(text, end)
    if not m:
        return "", False, end
    unit = _singular(m.group(1))
    if unit in ("%", "percent", "per cent"):
        return "%", False, m.end()
    if unit in _DURATION_DAYS or unit in _DOSE_UNITS:
        return unit, bool(m.group(2)), m.end()
    return "", False, end


def _word_numbers(text: str) -> list[_Number]:
    """Numbers written in words: "three", "twenty-five", "one hundred and twenty", "a week"
    (1 with its unit), "twice" (2), "a half" (0.5)."""
    lower = text.lower()
    words = [(m.group(), m.start(), m.end()) for m in re.finditer(r"[a-z]+", lower)]
    out: list[_Number] = []
    i = 0
    while i < len(words):
        w, start, end = words[i]
        if w in _SMALL or w in _TENS or (w in ("a", "one") and i + 1 < len(words) and words[i + 1][0] in _SCALES):
            total, current, j = 0, 0, i
            last_end = end
            while j < len(words):
                word, s, e = words[j]
                gap = lower[last_end:s] if j > i else ""
                if j > i and gap.strip(" -"):
                    break
                if word in _SMALL and (j == i or current % 10 == 0 and current % 100 >= 20 or words[j - 1][0] in _SCALES
                                       or words[j - 1][0] == "and"):
                    current += _SMALL[word]
                elif word in _TENS and (j == i or current % 100 == 0):
                    current += _TENS[word]
                elif word in _SCALES:
                    current = max(current, 1) * _SCALES[word]
                    if word.startswith("thousand"):
                        total, current = total + current, 0
                elif word == "a" and j == i:
                    current = 0
                elif word == "and" and j > i and words[j - 1][0] in _SCALES and j + 1 < len(words) \
                        and (words[j + 1][0] in _SMALL or words[j + 1][0] in _TENS):
                    pass
                else:
                    break
                last_end = e
                j += 1
            out.append(_Number(float(total + current), start, last_end))
            i = j
            continue
        if w in _TIMES:
            out.append(_Number(float(_TIMES[w]), start, end))
        elif w in ("a", "an", "one", "per", "each", "every") and i + 1 < len(words) \
                and _singular(words[i + 1][0]) in _DURATION_DAYS and not lower[end:words[i + 1][1]].strip():
            out.append(_Number(1.0, start, end))
        elif w == "half" or (w in _FRACTIONS and i > 0 and words[i - 1][0] in ("a", "one")):
            out.append(_Number(_FRACTIONS[w], start, end))
        i += 1
    return out


def _numbers(text: str) -> list[_Number]:
    """Every number of a text with the unit that follows it, in order."""
    found = []
    for m in _DIGITS.finditer(text):
        digits = m.group(1) or m.group(3)
        raw = digits.replace(",", "") + (f".{m.group(2)}" if m.group(2) else "")
        found.append(_Number(float(raw), m.start(), m.end()))
    found.extend(_word_numbers(text))
    found.sort(key=lambda n: n.start)
    for k, n in enumerate(found):
        n.stop = n.end
        n.unit, n.old, unit_end = _unit_after(text, n.end)
        if n.unit:
            n.end = unit_end
    # "3 to 4 days", "3-4 weeks", "three or four days": the first number takes the second's unit
    for k in range(len(found) - 2, -1, -1):
        a, b = found[k], found[k + 1]
        if not a.unit and re.fullmatch(r"\s*(?:-|–|to|or)\s*", text[a.end:b.start], re.IGNORECASE):
            a.unit, a.old = b.unit, b.old
    return found


@dataclass
class _Source:
    text: str
    lower: str
    words: set[str]
    values: set[float]
    days: set[float]  # durations said, in days
    grams: set[float]  # masses said, in mg
    ages: set[float]  # numbers said as an age ("58 year old", "i'm fifty", "age 40")


def _round(x: float) -> float:
    return round(x, 3)


@functools.lru_cache(maxsize=64)
def _source(text: str) -> _Source:
    lower = text.lower()
    nums = _numbers(text)
    values = {_round(n.value) for n in nums}
    # "one twenty over eighty" is 120/80, "nineteen ninety" 1990: two number words in a row
    # may be one number said in parts; "seven and a half" is 7.5; ordinals are numbers too.
    tokens = [(m.group(), m.start()) for m in re.finditer(r"[a-z]+", lower)]
    for (a, _), (b, _) in zip(tokens, tokens[1:]):
        x = _SMALL.get(a, _TENS.get(a))
        y = _SMALL.get(b, _TENS.get(b))
        if x is not None and y is not None:
            values.add(float(x * 100 + y))
    for w, _ in tokens:
        if w in _ORDINALS:
            values.add(float(_ORDINALS[w]))
        if w in _SMALL or w in _TENS:
            values.add(float(_SMALL.get(w, _TENS.get(w))))
    for m in re.finditer(r"(\d+|" + "|".join(_SMALL) + r")\s+and\s+a\s+half", lower):
        x = float(m.group(1)) if m.group(1).isdigit() else float(_SMALL[m.group(1)])
        values.add(x + 0.5)
    for m in re.finditer(r"\btype\s+(i{1,2})\b", lower):
        values.add(float(len(m.group(1))))
    days = {_round(n.value * _DURATION_DAYS[n.unit]) for n in nums if n.unit in _DURATION_DAYS}
    for m in re.finditer(r"\b(?:a|one)\s+(\w+)\s+and\s+a\s+half\b", lower):
        if _singular(m.group(1)) in _DURATION_DAYS:
            days.add(_round(1.5 * _DURATION_DAYS[_singular(m.group(1))]))
    values |= _spoken_values(text, nums)
    grams = {_round(n.value * _GRAMS[n.unit]) for n in nums if n.unit in _GRAMS}
    words = set(re.findall(r"[a-z][a-z'-]*", lower))
    words |= {w.strip("'-") for w in words}
    # An age must be said as one: any number will not do ("lasix 80 mg" is no 80-year-old).
    ages = {_round(n.value) for n in nums if n.old}
    for n in nums:
        before = lower[max(0, n.start - 24):n.start]
        after = lower[n.stop:n.stop + 16]
        if re.search(r"\b(?:age|aged|i'?m|i am|he'?s|she'?s|he is|she is|who is|who'?s|you'?re|you are|turn(?:ed|ing|s)?|is now)\s+(?:about\s+|only\s+|almost\s+)?$", before) \
                or re.match(r"\s*(?:years?|yrs?)\b(?!\s+ago)|\s*y/?o\b", after):
            ages.add(_round(n.value))
    return _Source(text, lower, words, values, days, grams, ages)


def _spoken_values(text: str, nums: list[_Number]) -> set[float]:
    """Numbers said in pieces, read from the text with every number in digits: "ninety
    eight . two" and "six point seven" (98.2, 6.7), "point five" (0.5), "one twenty two over
    seventy" (122), "nineteen ninety" (1990), "three to four hundred" (300 as well)."""
    pieces, pos = [], 0
    for n in nums:
        if n.start >= pos:
            pieces.append(text[pos:n.start].lower())
            pieces.append(f"{n.value:g}")
            pos = n.stop
    pieces.append(text[pos:].lower())
    digits = "".join(pieces)
    out = set()
    for m in re.finditer(r"\b(\d+)\s*(?:\.|point)\s*(\d)\b", digits):
        out.add(float(f"{m.group(1)}.{m.group(2)}"))
    for m in re.finditer(r"(?<![\d.]\s)\bpoint\s+(\d+)\b|\b(?:a|an|is|of|about|at)\s+\.\s*(\d+)\b", digits):
        out.add(float(f"0.{m.group(1) or m.group(2)}"))
    for m in re.finditer(r"\b(\d{1,2})\s+(\d{2})\b", digits):
        out.add(float(int(m.group(1)) * 100 + int(m.group(2))))
    for m in re.finditer(r"\b(\d)\s+(?:to|or|-)\s+\d(00|000)\b", digits):
        out.add(float(m.group(1) + m.group(2)))
    return out


def _number_supported(n: _Number, source: _Source) -> bool:
    value = _round(n.value)
    # 1 is said as "a", "an", "once", "single", "the": never taken for an invented number
    if value in source.values or value == 1:
        return True
    if n.unit in _DURATION_DAYS and _round(n.value * _DURATION_DAYS[n.unit]) in source.days:
        return True
    if n.unit in _GRAMS and _round(n.value * _GRAMS[n.unit]) in source.grams:
        return True
    return False


# --- ages, sexes, settings, dates -----------------------------------------------------

_MALE = {"male", "man", "gentleman", "boy", "mr", "guy", "sir", "he", "him", "his", "himself", "mister", "son",
         "husband", "father", "brother"}
_FEMALE = {"female", "woman", "lady", "girl", "mrs", "ms", "miss", "ma'am", "madam", "she", "her", "hers",
           "herself", "daughter", "wife", "mother", "sister"}
_SEX_IN_DRAFT = re.compile(r"\b(male|female|man|woman|gentleman|lady|boy|girl|mr|mrs|ms)\b\.?", re.IGNORECASE)

# setting -> (how a draft names it, what in a source supports it)
_SETTINGS = {
    "emergency": (r"\bemergency (?:room|department|dept|unit|ward)\b|(?-i:\b(?:ER|ED|A&E)\b)|\bcasualty\b",
                  r"\bemergency\b|\be\.?r\b|\bed\b|\ba ?& ?e\b|\bcasualty\b"),
    "urgent care": (r"\burgent care(?: (?:center|centre|clinic))?\b", r"\burgent care\b"),
    "intensive care": (r"(?-i:\bICU\b)|\b(?:intensive|critical) care(?: unit)?\b", r"\bicu\b|\bintensive care\b|\bcritical care\b"),
    "hospital": (r"\bhospital\b|\b(?:was |were )?(?:admitted|admission)\b|\binpatient\b",
                 r"\bhospital\w*|\badmit\w*|\badmission\b|\binpatient\b|\bward\b"),
    "clinic": (r"\b(?:clinic|office|outpatient (?:clinic|department))\b",
               r"\bclinic\b|\boffice\b|\bpractice\b|\bcom(?:e|es|ing) in\b|\bcame in\b|\bin person\b|\bexamin\w*|"
               r"\bexam\b|\btake a look\b|\bhere today\b"),
    "remote": (r"\b(?:tele(?:phone|health|medicine)|phone|video(?: call| visit| consultation)?|virtual(?:ly)?|remote(?:ly)?)\b",
               r"\b(?:tele\w+|phone|call\w*|video|virtual\w*|remote\w*|zoom|screen|hear me)\b"),
}
_SETTING_DRAFT = {k: re.compile(d, re.IGNORECASE) for k, (d, _) in _SETTINGS.items()}
_SETTING_SOURCE = {k: re.compile(s, re.IGNORECASE) for k, (_, s) in _SETTINGS.items()}
# A setting in a draft is written as a place the patient is in or comes to.
_SETTING_PHRASE = r"(?:\s*,?\s*\b(?:to|in|at|into|from|via|through|by|over|on)\s+(?:the\s+|an?\s+|our\s+|this\s+|his\s+|her\s+|their\s+|your\s+)?(?:{place})(?:\s+today)?)"

_MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december"]
_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_DATE_WORD = re.compile(r"\b(" + "|".join(m.capitalize() for m in _MONTHS if m != "may")
                        + r"|May(?=\s+\d)|" + "|".join(d.capitalize() for d in _WEEKDAYS) + r")\b")


# --- medicines -------------------------------------------------------------------

# Endings of drug classes' generic names (USAN stems): a word with one of these is a medicine
# even when the lexicon does not list it.
_DRUG_STEM = re.compile(
    r"^[a-z]{3,}(?:pril|sartan|olol|dipine|statin|formin|gliptin|gliflozin|glutide|prazole|tidine|cillin|"
    r"mycin|micin|floxacin|cycline|azole|conazole|vir|mab|nib|triptan|oxetine|pramine|tyline|azepam|azolam|"
    r"profen|coxib|sone|solone|olone|semide|thiazide|parin|xaban|gatran|afil|setron|lukast|terol|tropium|"
    r"barbital|codone|morphone|phylline|dronate|vastatin)$")
_NOT_MEDICINES = {"copper", "sulfur", "aqua", "urea", "serine", "valine", "biotin", "niacin", "oxygen", "water",
                  "alcohol", "glucose", "sodium", "potassium", "calcium", "magnesium", "iron", "zinc", "caffeine",
                  "cortisone", "hormone", "ozone", "person", "reason", "season", "poison", "lesson", "someone",
                  "anyone", "everyone", "none", "stone", "bone", "done", "gone", "alone", "phone", "zone", "tone",
                  "environment", "saline", "nicotine", "ionic", "cologne", "ovir", "solution", "names", "insulin",
                  "vitamin", "electrolytes", "thyroid", "lithium", "dextrose", "ammonium", "benzoate", "ascorbate",
                  "bicarbonate", "monohydrate", "heptahydrate", "dimethyl", "ferric", "esterified", "not_held"}
_SALTS = {"hydrochloride", "hcl", "sodium", "potassium", "calcium", "acetate", "sulfate", "citrate", "maleate",
          "succinate", "tartrate", "besylate", "mesylate", "fumarate", "phosphate", "bromide", "chloride",
          "magnesium", "extended-release", "er", "xr", "xl", "sr", "cr", "dr", "usp", "injection", "tablets",
          "oral", "solution", "cream", "ointment", "gel", "topical", "dihydrate", "monohydrate", "disodium",
          "bitartrate", "medoxomil", "hyclate", "onyu", "delayed-release"}


class Lexicon:
    """Medicine names and, for each, the names it is also known by (brand and generic)."""

    def __init__(self, groups: Iterable[Iterable[str]]) -> None:
        self.names: dict[str, set[str]] = {}  # a name -> the names of its group, itself included
        for group in groups:
            names = {_base(n) for n in group if _base(n)} | {n.lower().strip() for n in group}
            names = {n for n in names if len(n) >= 4 and n not in _NOT_MEDICINES}
            for n in names:
                self.names.setdefault(n, set()).update(names)
        self.first_words = {n.split()[0] for n in self.names if " " in n}

    @classmethod
    def load(cls, *paths) -> "Lexicon":
        groups: list[list[str]] = []
        for path in paths:
            if not path.exists():
                continue
            for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip() and not line.startswith("#"):
                    names = [n.strip() for n in line.split(",") if n.strip()]
                    if not names:
                        raise ValueError(f"{path}:{line_no}: no medicine names on this line")
                    groups.append(names)
        return cls(groups)

    def is_medicine(self, word: str) -> bool:
        w = word.lower()
        return w not in _NOT_MEDICINES and (w in self.names or bool(_DRUG_STEM.match(w)))

    def also_known_as(self, name: str) -> set[str]:
        return self.names.get(name.lower(), set())


def _base(name: str) -> str:
    words = [w for w in name.lower().replace("-", " - ").split() if w not in _SALTS and w != "-"]
    return " ".join(words).strip()


@functools.lru_cache(maxsize=1)
def default_lexicon() -> Lexicon:
    """The shipped medicine names: the FDA indications table's and common primary-care
    brands and generics (data/medicines). A fuller brand <-> generic lookup is passed to
    `check` and `clean` as `synonyms`."""
    return Lexicon.load(DATA_DIR / "medicines" / "medicine_names.txt", DATA_DIR / "medicines" / "common_names.txt")


def _synonyms_of(name: str, synonyms: Synonyms | None, lexicon: Lexicon) -> set[str]:
    out = set(lexicon.also_known_as(name))
    if synonyms is not None:
        found = synonyms(name) if callable(synonyms) else synonyms.get(name.lower(), synonyms.get(name, ()))
        out.update(n.lower() for n in (found or ()))
    out.discard(name.lower())
    return out


def _in_source(name: str, source: _Source) -> bool:
    name = name.lower()
    if " " in name:
        return re.search(r"\b" + re.escape(name) + r"\b", source.lower) is not None
    if name in source.words:
        return True
    # Transcripts spell drug names by ear ("lisinipril", "metforman"): a word of the source a
    # letter or two away counts.
    if len(name) >= 6:
        near = [w for w in source.words if abs(len(w) - len(name)) <= 2 and w[:2] == name[:2]]
        return bool(difflib.get_close_matches(name, near, n=1, cutoff=0.8))
    return False


# --- the check -------------------------------------------------------------------

_BREAK = re.compile(r"(?<=[.!?])\s+|\n\s*")
# A full stop after these is no sentence's end ("Dr. Lee", "e.g. ibuprofen", "J. Smith").
_ABBREVIATION = re.compile(r"(?:\b(?:Dr|Mr|Ms|Mrs|St|vs|No|approx|Jr|Sr|e\.g|i\.e|a\.m|p\.m)|\b[A-Za-z])\.$", re.IGNORECASE)


def _findings(sentence: str, source: _Source, synonyms: Synonyms | None, lexicon: Lexicon) -> list[tuple[Finding, tuple[int, int]]]:
    """Each unsupported fact of one sentence with its span in the sentence."""
    out: list[tuple[Finding, tuple[int, int]]] = []

    def add(kind: str, start: int, end: int) -> None:
        out.append((Finding(kind, sentence[start:end].strip(), sentence), (start, end)))

    ages: list[tuple[int, int]] = []
    for m in re.finditer(r"\b(?:aged?|age of)\s+(\d+|[a-z]+(?:[- ][a-z]+)?)\b|\b(\d+)\s*(?:y\.?o\.?|y/o|yrs? old)(?!\w)",
                         sentence, re.IGNORECASE):
        nums = _numbers(m.group(1) or m.group(2))
        if nums:
            ages.append((m.start(), m.end()))
            if _round(nums[0].value) not in source.ages:
                add("age", m.start(), m.end())
    nums = _numbers(sentence)
    for k, n in enumerate(nums):
        if any(s <= n.start < e for s, e in ages):
            continue
        # a list's numbering ("1. Hypertension") is no fact
        if re.match(r"[.)](?:\s|$)", sentence[n.end:n.end + 2]) and not sentence[:n.start].strip(" -*#\t"):
            continue
        # "120/80", "1/2": each part said, or the fraction
        if n.old:
            if _round(n.value) not in source.ages:
                add("age", n.start, n.end)
            continue
        after = sentence[n.end:n.end + 1]
        before = sentence[max(0, n.start - 1):n.start]
        if after == "/" and k + 1 < len(nums) and nums[k + 1].start == n.end + 1 and nums[k + 1].value:
            frac = _round(n.value / nums[k + 1].value)
            if frac in source.values and n.value < nums[k + 1].value:
                nums[k + 1].value = 1.0  # the denominator is supported with it
                continue
        elif before == "/" and n.value == 1.0:
            continue
        if _number_supported(n, source):
            continue
        if n.unit in _DURATION_DAYS:
            kind = "duration"
        elif n.unit in _DOSE_UNITS:
            kind = "dose"
        elif re.search(r"\b(?:" + "|".join(_MONTHS) + r")\s*$", sentence[:n.start], re.IGNORECASE) \
                or (1900 <= n.value <= 2100 and n.value == int(n.value)):
            kind = "date"
        else:
            kind = "number"
        add(kind, n.start, n.end)
    for m in _SEX_IN_DRAFT.finditer(sentence):
        word = m.group(1).lower()
        same = _MALE if word in _MALE else _FEMALE
        if not (same & source.words):
            add("sex", m.start(), m.end())
    for setting, pattern in _SETTING_DRAFT.items():
        for m in pattern.finditer(sentence):
            if not _SETTING_SOURCE[setting].search(source.text):
                add("setting", m.start(), m.end())
    for m in _DATE_WORD.finditer(sentence):
        if m.group(1).lower() not in source.words:
            add("date", m.start(), m.end())
    words = list(re.finditer(r"[A-Za-z][A-Za-z-]{3,}", sentence))
    for k, m in enumerate(words):
        name = m.group().lower()
        if k + 1 < len(words) and not sentence[m.end():words[k + 1].start()].strip() \
                and f"{name} {words[k + 1].group().lower()}" in lexicon.names:
            name = f"{name} {words[k + 1].group().lower()}"  # "insulin glargine"
        if not lexicon.is_medicine(name) or any(s <= m.start() < e for _, (s, e) in out):
            continue
        if any(_in_source(n, source) or any(_in_source(s, source) for s in _synonyms_of(n, synonyms, lexicon))
               for n in {name, _base(name), name.split()[0]} if n):
            continue
        add("medicine", m.start(), m.start() + len(name))
    # one finding per span: an age's number is not also a number
    seen, unique = set(), []
    for f, span in out:
        if span not in seen:
            seen.add(span)
            unique.append((f, span))
    return unique


def _segments(text: str) -> list[tuple[str, str]]:
    """(sentence, the whitespace after it), covering the text exactly."""
    out, pos = [], 0
    for m in _BREAK.finditer(text):
        if "\n" not in m.group() and (_ABBREVIATION.search(text[max(0, m.start() - 8):m.start()])
                                      or re.fullmatch(r"\s*[-*]?\s*\d{1,2}\.", text[text.rfind("\n", 0, m.start()) + 1:m.start()])):
            continue  # an abbreviation or a list's number ("1. Hypertension")
        if m.start() > pos:
            out.append((text[pos:m.start()], m.group()))
        elif out:
            out[-1] = (out[-1][0], out[-1][1] + m.group())
        pos = m.end()
    if pos < len(text):
        out.append((text[pos:], ""))
    return out


def check(draft: str, source: str, synonyms: Synonyms | None = None, lexicon: Lexicon | None = None) -> Report:
    """The facts of `draft` that `source` does not support, one `Finding` each.

    `synonyms`: a callable name -> names, or a mapping, giving other names of a medicine
    (brand <-> generic) besides the shipped lexicon's; `lexicon`: the medicine names to look
    for (default: `default_lexicon()`)."""
    lexicon = lexicon or default_lexicon()
    src = _source(source)
    report = Report()
    for sentence, _ in _segments(draft):
        report.findings.extend(f for f, _ in _findings(sentence, src, synonyms, lexicon))
    return report


# --- rewriting ---------------------------------------------------------------------

_REWRITABLE = {"age", "sex", "setting", "dose", "duration"}


def _cut(sentence: str, span: tuple[int, int], kind: str) -> str:
    start, end = span
    if kind == "setting":
        m = None
        for m in re.finditer(_SETTING_PHRASE.format(place=r"[^,.;]*?"), sentence[:end]):
            pass
        if m is not None and m.end() >= start and m.start() <= start:
            tail = re.match(r"\s+today\b", sentence[end:])
            return sentence[:m.start()] + sentence[end + (tail.end() if tail else 0):]
        return sentence
    if kind in ("dose", "duration"):
        lead = re.search(r"(?:\b(?:for|over|x|in|within|after|about|approximately|around|roughly|nearly|almost|some|of)\s+)*"
                         r"(?:the\s+(?:past|last)\s+|a\s+period\s+of\s+)?"
                         r"(?:\b\d+(?:\.\d+)?\s*(?:-|–|to|or)\s*)?$", sentence[:start], re.IGNORECASE)  # "2-", "2 to"
        begin = lead.start() if lead else start
        tail = re.match(r"\s+ago\b", sentence[end:])
        return sentence[:begin] + sentence[end + (tail.end() if tail else 0):]
    if kind == "age":
        m = re.match(r"[- ]*(?:years?|months?|weeks?|days?)?[- ]*old\b", sentence[end:])
        return sentence[:start] + sentence[end + (m.end() if m else 0):]
    return sentence[:start] + sentence[end:]  # sex


def _tidy(sentence: str) -> str:
    s = re.sub(r"\b(is|was)\s+an?\s+(?:patient\s+)?(?:who|that)\s+", "", sentence)
    s = re.sub(r"\b(is|was)\s+an?\s+(?:patient\s+)?with\b", lambda m: "has" if m.group(1) == "is" else "had", s)
    s = re.sub(r"^(\W*)an?\s+(?:patient\s+)?(?=(?:who\s+)?(?:presents|presented|comes|came|reports|complains|is|was)\b)",
               r"\1The patient ", s, flags=re.IGNORECASE)
    s = re.sub(r"\bThe patient who\b", "The patient", s)
    s = re.sub(r"\s{2,}", " ", s)
    s = re.sub(r"\s+([,.;:!?])", r"\1", s)
    s = re.sub(r",\s*([.;:!?])", r"\1", s)
    s = re.sub(r"^\W*,\s*", "", s)
    return s.strip()


def _dangling(sentence: str) -> bool:
    """Whether cutting a phrase out left a sentence that no longer reads as one ("He is a
    with", "Take of tylenol", "of tylenol for pain")."""
    return bool(re.search(r"\b(?:an?|the|of|with|for|to|in|at)\s*(?:[,.;:!?]|$)|\ban?\s+(?:who|with|that|and)\b|"
                          r"\b(?:take|takes|taking|took|given|prescribed|on|is|was)\s+of\b|^\W*(?:of|and|or|with)\b",
                          sentence, re.IGNORECASE)) or len(re.findall(r"[A-Za-z]+", sentence)) < 2


def _clean_sentence(sentence: str, source: _Source, synonyms, lexicon) -> tuple[str, list[Finding]]:
    found = _findings(sentence, source, synonyms, lexicon)
    if not found:
        return sentence, []
    findings = [f for f, _ in found]
    if any(f.kind not in _REWRITABLE for f in findings):
        return "", findings
    rewritten = sentence
    for f, span in sorted(found, key=lambda x: -x[1][0]):  # from the end, so spans stay valid
        rewritten = _cut(rewritten, span, f.kind)
    rewritten = _tidy(rewritten)
    if rewritten and not _dangling(rewritten) and not _findings(rewritten, source, synonyms, lexicon) \
            and rewritten[0].isupper() == sentence.lstrip(" -*#\t")[:1].isupper():
        return rewritten, findings
    return "", findings


class Cleaner:
    """`clean` one piece at a time, for a draft being streamed: a sentence is checked and
    passed on once the next one has begun, and `finish` passes on the rest. What it passes
    on, joined, is what `clean` returns for the whole draft."""

    def __init__(self, source: str, synonyms: Synonyms | None = None, lexicon: Lexicon | None = None) -> None:
        self.source = _source(source)
        self.synonyms, self.lexicon = synonyms, lexicon or default_lexicon()
        self.report = Report()
        self._buffer = ""
        self._pending = ""  # whitespace owed before the next sentence kept
        self._started = False
        self.text = ""

    def feed(self, piece: str) -> str:
        self._buffer += piece
        segments = _segments(self._buffer)
        if len(segments) < 2:
            return ""
        done, last = segments[:-1], segments[-1]
        self._buffer = last[0] + last[1]
        return self._emit(done)

    def finish(self) -> str:
        out = self._emit(_segments(self._buffer), final=True)
        self._buffer = ""
        return out

    def _emit(self, segments: list[tuple[str, str]], final: bool = False) -> str:
        out = []
        for k, (sentence, space) in enumerate(segments):
            kept, findings = _clean_sentence(sentence, self.source, self.synonyms, self.lexicon)
            if findings:
                self.report.findings.extend(findings)
                self.report.removed.append(Removal(sentence.strip(), tuple(dict.fromkeys(f.kind for f in findings)),
                                                   kept.strip()))
            if kept.strip():
                if self._started:
                    out.append(self._pending)
                out.append(kept if self._started else kept.lstrip())
                self._started = True
                self._pending = space
            elif self._started:
                # the break after a dropped sentence is kept when it is the stronger one
                # (a paragraph's end), so the sections of a note stay apart
                self._pending = max(self._pending, space, key=lambda s: (s.count("\n"), len(s)))
        text = "".join(out)
        self.text += text
        return text


def clean(draft: str, source: str, synonyms: Synonyms | None = None,
          lexicon: Lexicon | None = None) -> tuple[str, Report]:
    """`draft` without its unsupported facts, and the `Report` of what was found and removed.

    A sentence whose unsupported facts are all an age, a sex, a setting, a dose or a
    duration keeps the rest when it still reads as a sentence ("The patient is a 54-year-old
    male who presents to the emergency room with chest pain." -> "The patient presents with
    chest pain."); any other is dropped. `synonyms` and `lexicon` as for `check`."""
    cleaner = Cleaner(source, synonyms, lexicon)
    cleaner.feed(draft)
    cleaner.finish()
    return cleaner.text, cleaner.report
