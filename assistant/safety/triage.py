"""Deterministic red-flag triage that runs before the model on every message.

A small model must never be the thing that decides whether someone should call
an ambulance, so this layer is plain rules loaded from data/safety/triage.toml:
normalise the text, fix typos of the alarm words, match regex terms, and drop
matches that are negated, educational ("what are the signs of a stroke?"),
hypothetical, habitual or about nobody in particular. Every rule belongs to an
entry of the red-flag catalogue (data/safety/catalogue.toml), which names the
published list it comes from, so each of the verdict's `reasons` says which
rule fired, for which presentation, on whose authority.
"""
from __future__ import annotations

import bisect
import difflib
import functools
import os
import re
import tomllib
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .anchors import anchors

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "data" / "safety" / "triage.toml"
CATALOGUE = DEFAULT_CONFIG.with_name("catalogue.toml")
ENV_CONFIG = "HEALTH_ASSISTANT_SAFETY_CONFIG"
ENV_NUMBERS = {
    "emergency": "HEALTH_ASSISTANT_EMERGENCY_NUMBER",
    "crisis": "HEALTH_ASSISTANT_CRISIS_NUMBER",
    "poison": "HEALTH_ASSISTANT_POISON_NUMBER",
}
LEVELS = ("emergency", "crisis", "none")


@dataclass(frozen=True)
class Entry:
    """One presentation of the red-flag catalogue and the published list it comes from."""
    id: str
    level: str
    title: str
    publisher: str
    document: str
    url: str
    signs: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        return f"{self.publisher} {self.document}".strip()


@dataclass(frozen=True)
class Reason:
    """Why a message was flagged: the rule that fired and the catalogue entry it belongs to."""
    rule: str
    entry: str
    title: str
    source: str
    url: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.title} ({self.source})"


@dataclass(frozen=True)
class TriageResult:
    level: str  # "emergency" | "crisis" | "none"
    scope: str | None = None  # "diagnosis" | "prescription" | "dose_change" | None
    reasons: tuple[Reason, ...] = ()
    message: str | None = None  # fixed text to show instead of a model answer
    referral: str | None = None  # scope-guard line to add to a model answer

    @property
    def urgent(self) -> bool:
        return self.level != "none"


@dataclass
class _Rule:
    id: str
    entry: Entry
    level: str
    terms: list[re.Pattern]
    context: bool
    unless: list[re.Pattern] = field(default_factory=list)  # the rule does not fire if any matches
    any_framing: bool = False  # counts even in a general question ("how many would kill someone?")
    # per term: literals one of which any match contains (None: unknown); none in the message,
    # no match, and the rule is skipped without running its patterns
    gates: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gates = [anchors(term) for term in self.terms]


@dataclass
class TriageConfig:
    entries: dict[str, Entry]
    numbers: dict
    messages: dict
    referral: dict
    rules: list[_Rule]
    scopes: list[tuple[str, re.Pattern]]
    ctx: dict[str, re.Pattern]
    fuzzy_words: frozenset[str]
    fuzzy_keep: frozenset[str]
    min_ratio: float
    _by_letter: dict[str, list[str]] = field(default_factory=dict)
    _fixed: dict[str, str] = field(default_factory=dict)  # memo: most tokens repeat

    def correct(self, token: str) -> str:
        if token not in self._fixed:
            if len(self._fixed) > 50_000:
                self._fixed.clear()
            self._fixed[token] = self._closest(token)
        return self._fixed[token]

    def _closest(self, token: str) -> str:
        if len(token) < 4 or token in self.fuzzy_words or token in self.fuzzy_keep or not token.isalpha():
            return token
        candidates = self._by_letter.get(token[0], [])
        for word in candidates:  # a swapped pair ("pian") scores too low on ratio
            if len(word) == len(token) and sorted(word) == sorted(token):
                diffs = [i for i, (a, b) in enumerate(zip(word, token)) if a != b]
                if len(diffs) == 2 and diffs[1] == diffs[0] + 1:
                    return word
        best = difflib.get_close_matches(token, candidates, n=1, cutoff=self.min_ratio)
        if not best or best[0].startswith(token) or token.startswith(best[0]):
            return token  # an inflection ("swallow", "attacks"), not a typo
        return best[0]

    def render(self, level: str) -> str:
        values = dict(self.numbers)
        values["numbers_hint"] = self.messages.get("numbers_hint", "").format(**self.numbers)
        return self.messages[level].format(**values).strip()


def _merge(base: dict, override: dict) -> dict:
    """An override adds to the shipped rules; it never takes the others away. Tables merge
    key by key; a list of [[rule]], [[entry]] or [[scope]] tables adds its tables, one with the
    id of a shipped one taking that one's place; a list of words adds its words. (Lists used to
    replace the shipped ones: a clinic file adding one rule turned off every other.)"""
    out = dict(base)
    for key, value in override.items():
        mine = out.get(key)
        if isinstance(value, dict) and isinstance(mine, dict):
            out[key] = _merge(mine, value)
        elif isinstance(value, list) and isinstance(mine, list) and all(isinstance(e, dict) for e in mine):
            theirs = {e.get("id"): e for e in value if isinstance(e, dict)}
            out[key] = [theirs.pop(e["id"], e) for e in mine] + [e for e in value if not isinstance(e, dict)
                                                                 or e.get("id") in theirs]
        elif isinstance(value, list) and isinstance(mine, list):
            out[key] = mine + [w for w in value if w not in mine]
        else:
            out[key] = value
    return out


class SafetyConfigError(ValueError):
    """The safety rules or a clinic's override cannot be used; the message names the file."""


def load_config(path: str | os.PathLike | None = None) -> TriageConfig:
    """Shipped rules, overlaid with a user TOML (`path`, else $HEALTH_ASSISTANT_SAFETY_CONFIG),
    then number env vars. A user file normally holds only [numbers] and maybe [messages].
    Every message is rendered once here, so a mistake in an override is reported when the
    program starts, not on the first emergency."""
    raw = tomllib.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    raw["entry"] = tomllib.loads(CATALOGUE.read_text(encoding="utf-8"))["entry"]
    user = path or os.environ.get(ENV_CONFIG)
    if user:
        try:
            text = Path(user).read_text(encoding="utf-8").removeprefix("\ufeff")  # as Notepad saves it
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise SafetyConfigError(f"{user}: cannot read the safety config: {why}") from exc
        try:
            override = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SafetyConfigError(f"{user}: not a valid safety config ({exc})") from exc
        unknown = _unknown_keys(raw, override)
        if unknown:  # a misspelt number would leave the default one in every emergency message
            raise SafetyConfigError(f"{user}: unknown {unknown}")
        raw = _merge(raw, override)
    where = user or DEFAULT_CONFIG
    try:
        cfg = _build(raw)
    except (KeyError, TypeError, ValueError, re.error) as exc:
        raise SafetyConfigError(f"{where}: not a valid safety config ({type(exc).__name__}: {exc})") from exc
    for level in cfg.messages:
        try:
            cfg.render(level)
        except KeyError as exc:
            raise SafetyConfigError(f"{where}: [messages] {level} uses {{{exc.args[0]}}}, which is not one of "
                                    f"the [numbers]: {', '.join(sorted(cfg.numbers))}") from exc
        except (ValueError, IndexError, AttributeError) as exc:
            raise SafetyConfigError(f"{where}: [messages] {level} is not a valid template ({exc}); "
                                    "write a literal brace as {{ or }}") from exc
    return cfg


_RULE_KEYS = {"rule": ({"id", "entry", "all"}, {"level", "context", "unless", "any_framing"}),
              "entry": ({"id", "level", "title", "source"}, {"signs"}),
              "scope": ({"id", "pattern"}, set())}
_SOURCE_KEYS = ({"publisher", "url"}, {"document"})
_LEVELS = ("emergency", "crisis")


def _unknown_keys(shipped: dict, override: dict) -> str | None:
    """The first table or key of an override that the shipped rules do not have, or a rule
    an override adds that lacks what a rule needs, described."""
    for table, value in override.items():
        if table not in shipped:
            return f"table [{table}] (known: {', '.join(f'[{t}]' for t in shipped)})"
        if type(value) is not type(shipped[table]):
            return (f"'{table}' as a {type(value).__name__}; the shipped rules have it as a "
                    + ("table [" + table + "]" if isinstance(shipped[table], dict) else "list [[" + table + "]]"))
        if isinstance(value, dict) and table in ("numbers", "messages"):
            extra = sorted(set(value) - set(shipped[table]))
            if extra:
                return f"key '{extra[0]}' in [{table}] (known: {', '.join(shipped[table])})"
        if table in _RULE_KEYS:
            needed, optional = _RULE_KEYS[table]
            ids = [e.get("id") for e in value if isinstance(e, dict)]
            twice = sorted({i for i in ids if ids.count(i) > 1 and i is not None})
            if twice:
                return f"[[{table}]] id '{twice[0]}' given twice"
            for n, entry in enumerate(value, 1):
                name = f"[[{table}]] number {n}" + (f" ('{entry['id']}')" if isinstance(entry, dict) and "id" in entry else "")
                if not isinstance(entry, dict):
                    return f"{name}: not a table"
                if needed - set(entry):
                    return f"{name}: no {', '.join(sorted(needed - set(entry)))}"
                if set(entry) - needed - optional:
                    return (f"key '{sorted(set(entry) - needed - optional)[0]}' in {name} "
                            f"(known: {', '.join(sorted(needed | optional))})")
                if table in ("rule", "entry") and "level" in entry and entry["level"] not in _LEVELS:
                    return f"level '{entry['level']}' in {name} (known: {', '.join(_LEVELS)})"
                if table == "entry":
                    problem = _source_problem(entry["source"])
                    if problem:
                        return f"'source' in {name}: {problem}"
                # `all = "seizure now"` (a string, not a list) would match any message with an "s"
                for key in ("all", "unless"):
                    if key in entry and not (isinstance(entry[key], list) and entry[key]
                                             and all(isinstance(t, str) and t for t in entry[key])):
                        return f"'{key}' in {name}: not a list of patterns, such as {key} = ['\\bsnake ?bite']"
                for key in ("context", "any_framing"):
                    if key in entry and not isinstance(entry[key], bool):
                        return f"'{key}' in {name}: true or false, not {entry[key]!r}"
                if "pattern" in entry and not (isinstance(entry["pattern"], str) and entry["pattern"]):
                    return f"'pattern' in {name}: not a pattern"
    return None


def _source_problem(source) -> str | None:
    """What is wrong with an entry's `source`, which every flag of it will cite."""
    needed, optional = _SOURCE_KEYS
    example = 'source = { publisher = "NICE", document = "NG51", url = "https://..." }'
    if not isinstance(source, dict):
        return f"a table such as {example}"
    if needed - set(source):
        return f"no {', '.join(sorted(needed - set(source)))} (such as {example})"
    if set(source) - needed - optional:
        extra = sorted(set(source) - needed - optional)[0]
        return f"unknown key '{extra}' (known: {', '.join(sorted(needed | optional))})"
    if not all(isinstance(v, str) and v.strip() for v in source.values()):
        return "publisher, document and url are non-empty text"
    return None


def _entries(raw: dict) -> dict[str, Entry]:
    out = {}
    for e in raw["entry"]:
        src = e["source"]
        out[e["id"]] = Entry(e["id"], e["level"], e["title"], src["publisher"], src.get("document", ""),
                             src["url"], tuple(e.get("signs", ())))
    return out


def _rule_entry(rule: dict, entries: dict[str, Entry]) -> Entry:
    """The catalogue entry a rule belongs to; its level is the entry's."""
    entry = entries.get(rule["entry"])
    if entry is None:
        raise ValueError(f"[[rule]] '{rule['id']}': entry '{rule['entry']}' is not in the catalogue "
                         "(name a shipped entry, or add an [[entry]] with that id)")
    if rule.get("level", entry.level) != entry.level:
        raise ValueError(f"[[rule]] '{rule['id']}': level '{rule['level']}', but its entry "
                         f"'{entry.id}' is '{entry.level}' (leave the level out: the entry's is used)")
    return entry


def _build(raw: dict) -> TriageConfig:
    numbers = dict(raw["numbers"])
    for key, env in ENV_NUMBERS.items():
        if os.environ.get(env):
            numbers[key] = os.environ[env]

    terms = raw.get("terms", {})

    def compile_term(src: str) -> re.Pattern:
        # {NAME} pulls in a shared term; regex quantifiers like {0,3} are left alone.
        src = re.sub(r"\{([A-Z_]+)\}", lambda m: f"(?:{terms[m.group(1)]})", src)
        return re.compile(src)

    entries = _entries(raw)
    rules = []
    for r in raw["rule"]:
        entry = _rule_entry(r, entries)
        rules.append(_Rule(r["id"], entry, entry.level, [compile_term(t) for t in r["all"]],
                           bool(r.get("context", False)), [compile_term(t) for t in r.get("unless", [])],
                           bool(r.get("any_framing", False))))
    # Crisis rules first: when both fire, the crisis text (which also names the
    # emergency number) is the right one to show.
    rules.sort(key=lambda r: r.level != "crisis")
    fz = raw.get("fuzzy", {})
    cfg = TriageConfig(
        entries=entries,
        numbers=numbers,
        messages=raw["messages"],
        referral=raw.get("referral", {}),
        rules=rules,
        scopes=[(s["id"], re.compile(s["pattern"])) for s in raw.get("scope", [])],
        ctx={k: re.compile(v) for k, v in raw["context"].items()},
        fuzzy_words=frozenset(fz.get("words", [])),
        fuzzy_keep=frozenset(fz.get("keep", [])),
        min_ratio=float(fz.get("min_ratio", 0.85)),
    )
    for w in sorted(cfg.fuzzy_words):
        cfg._by_letter.setdefault(w[0], []).append(w)
    return cfg


# ---- normalisation -----------------------------------------------------------

_CONTRACTIONS = [
    (r"\b(?:can ?not|can'?t|cannnot)\b", "cannot"),
    (r"\bwon'?t\b", "will not"),
    (r"\b(is|are|was|were|do|does|did|have|has|had|could|would|should|must|ai)n'?t\b", r"\1 not"),
    (r"\bi'?m\b", "i am"),
    (r"\bi'?ve\b", "i have"),
    (r"\bi'?ll\b", "i will"),
    (r"\bi'd\b", "i would"),
    (r"\b(it|he|she|that|there|what|who)'s\b", r"\1 is"),
    (r"\b(you|we|they)'re\b", r"\1 are"),
    (r"\b(you|we|they)'ve\b", r"\1 have"),
    (r"\bwanna\b", "want to"),
    (r"\bgonna\b", "going to"),
    (r"\bgotta\b", "got to"),
    (r"\bcuz\b", "because"),
    (r"\b(?:u)\b", "you"),
    (r"'s\b", ""),  # possessive: "dad's face" -> "dad face"
]
_CONTRACTIONS = [(re.compile(p), r) for p, r in _CONTRACTIONS]
# Sentence and clause breaks; a "." between digits (38.5) is not one.
_BREAKS = re.compile(r"(?<!\d)[.](?!\d)|[!?;,:()\[\]\n]|\s[-–—]+\s|\b(?:but|however|although|though)\b")
_WORD = re.compile(r"\d+(?:\.\d+)?|[a-z]+")


def normalise(text: str, cfg: TriageConfig) -> str:
    """Lower-cased words, typos fixed, clauses joined by ' | '."""
    s = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'").replace("`", "'")
    for pattern, repl in _CONTRACTIONS:
        s = pattern.sub(repl, s)
    clauses = []
    for part in _BREAKS.split(s):
        words = [cfg.correct(w) for w in _WORD.findall(part)]
        if words:
            clauses.append(" ".join(words))
    return " | ".join(clauses)


# ---- matching ---------------------------------------------------------------

def _clause_at(norm: str, pos: int) -> tuple[int, str]:
    start = norm.rfind("|", 0, pos) + 1
    end = norm.find("|", pos)
    return start, norm[start : end if end >= 0 else len(norm)]


# A negation cue is at most a few words before its match: the prefix looked at is cut to
# this many characters, so a long clause of many matches is not scanned once per match.
_NEGATION_REACH = 120


def _usable(norm: str, m: re.Match, cfg: TriageConfig, context: bool = False,
            memo: dict | None = None, any_framing: bool = False) -> bool:
    start, clause = _clause_at(norm, m.start())
    cut = max(start, m.start() - _NEGATION_REACH)
    if cut > start:  # from a word's start: the tail of "cannot" is not a "not"
        cut = norm.find(" ", cut, m.start()) + 1 or m.start()
    prefix = " " + norm[cut : m.start()].strip() + " "
    memo = {} if memo is None else memo

    def clause_has(key: str) -> bool:  # the same clause for every match in it: searched once
        if (key, start) not in memo:
            memo[key, start] = key in cfg.ctx and bool(cfg.ctx[key].search(clause))
        return memo[key, start]

    # told of as long past ("years ago", "when she was 2") and not said to be back now, in the
    # match's own part of the clause ("a stroke years ago and his speech is slurred" is news)
    if _part_has(("historical",), clause, start, m.start(), cfg, memo) \
            and not _part_has(("current",), clause, start, m.start(), cfg, memo):
        return False
    negated = cfg.ctx["negation"].search(prefix)
    # "never had chest pain like this" is worse, not absent; a "not" beside it still denies
    if negated and not (negated.group().startswith("never") and clause_has("not_negated")):
        return False
    if not any_framing and clause_has("educational") and not clause_has("personal_now"):
        return False
    # Now and then ("sometimes"), or imagined ("what if"), in the match's own part of the clause
    # ("black stools since yesterday and I get dizzy when I stand" is not habitual bleeding):
    # counts only if the message says it is happening now
    if context and _part_has(("occasional", "hypothetical"), clause, start, m.start(), cfg, memo):
        if ("happening_now", -1) not in memo:  # the whole message's: searched once
            memo["happening_now", -1] = bool(cfg.ctx["happening_now"].search(norm))
        if not memo["happening_now", -1]:
            return False
    return True


def _part_has(keys: tuple[str, ...], clause: str, start: int, pos: int, cfg: TriageConfig, memo: dict) -> bool:
    """Whether the part of the clause between the " and "s around `pos` matches any of the
    context patterns `keys`; the cuts of a clause are found once, and each part searched once
    (a long pasted clause of many matches stays linear)."""
    if ("cuts", start) not in memo:
        memo["cuts", start] = [m.start() for m in re.finditer(" and ", clause)]
    cuts = memo["cuts", start]
    i = bisect.bisect_right(cuts, pos - start - 1)
    lo = cuts[i - 1] + len(" and ") if i else 0
    key = ("part", keys, start + lo)
    if key not in memo:
        hi = cuts[i] if i < len(cuts) else len(clause)
        memo[key] = any(cfg.ctx[k].search(clause[lo:hi]) for k in keys if k in cfg.ctx)
    return memo[key]


_QUESTION_START = re.compile(
    r"^\W*(?:what|how|why|when|where|which|who|can|could|is|are|does|do|should|would|will|tell|explain)\b", re.I
)


def _is_question(text: str) -> bool:
    return "?" in text or bool(_QUESTION_START.match(text))


def _rule_fires(rule: _Rule, norm: str, cfg: TriageConfig, question: bool, memo: dict | None = None) -> bool:
    if not all(gate is None or any(a in norm for a in gate) for gate in rule.gates):
        return False
    clauses: list[str] = []  # the clauses of the rule's usable matches
    parts: list[str] = []  # the same, cut at "and": where the match itself is
    for term in rule.terms:
        usable = [m for m in term.finditer(norm) if _usable(norm, m, cfg, rule.context, memo, rule.any_framing)]
        if not usable:
            return False
        for m in usable:
            start, clause = _clause_at(norm, m.start())
            clauses.append(clause)
            parts.append(_and_part(clause, m.start() - start))

    def in_clauses(key: str, within: list[str]) -> bool:
        return any(cfg.ctx[key].search(c) for c in within)

    if rule.context:
        if question and not cfg.ctx["person"].search(norm):
            return False
        if cfg.ctx["past"].search(norm) and not cfg.ctx["current"].search(norm) \
                and not in_clauses("now_in_clause", clauses):
            return False
    # "stabbed two years ago and the scar itches again": the acute word must describe the match
    if any(u.search(norm) for u in rule.unless) and not in_clauses("acute", parts):
        return False
    return True


def _and_part(clause: str, pos: int) -> str:
    """The piece of a clause between the " and "s around `pos`."""
    start = clause.rfind(" and ", 0, pos)
    end = clause.find(" and ", pos)
    return clause[start + len(" and ") if start >= 0 else 0 : end if end >= 0 else len(clause)]


@functools.lru_cache(maxsize=1)
def default_config() -> TriageConfig:
    return load_config()


def triage(text: str, config: TriageConfig | None = None) -> TriageResult:
    cfg = config or default_config()
    norm = normalise(text or "", cfg)
    question = _is_question(text or "")
    memo: dict = {}  # per clause: what its framing says (the same for every rule)
    fired = [r for r in cfg.rules if _rule_fires(r, norm, cfg, question, memo)]
    level = fired[0].level if fired else "none"
    scope = next((sid for sid, pat in cfg.scopes if pat.search(norm)), None)
    return TriageResult(
        level=level,
        scope=scope,
        reasons=tuple(Reason(r.id, r.entry.id, r.entry.title, r.entry.source, r.entry.url) for r in fired),
        message=cfg.render(level) if fired else None,
        referral=cfg.referral.get(scope) if scope else None,
    )
