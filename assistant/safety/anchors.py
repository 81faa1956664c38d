"""Literal strings a regex cannot match without, so a rule can be skipped without running it.

Every term of a triage rule is scanned over the whole message; on a long paste that is most of
the time spent. For each compiled term this finds a set of literal strings such that any match
contains at least one of them: if none occurs in the message (a plain substring test), the term
cannot match and its rule cannot fire. When a pattern gives no such set (a branch that starts
with a character class, say) the answer is None and the term is always run, so the shortcut can
only skip work, never change a verdict.
"""
from __future__ import annotations

import re

try:  # the regex parser behind `re`; private, so a Python without it just skips the shortcut
    from re import _constants as C
    from re import _parser as sre_parse
except ImportError:  # pragma: no cover - every supported Python (3.11-3.13) has them
    sre_parse = C = None

MIN_LENGTH = 3  # shorter literals ("a ") occur in nearly every message and save nothing


def anchors(pattern: re.Pattern) -> frozenset[str] | None:
    """Literals at least one of which every match of `pattern` contains, or None if unknown."""
    if sre_parse is None or pattern.flags & re.IGNORECASE:
        return None
    try:
        found = _sequence(list(sre_parse.parse(pattern.pattern, pattern.flags)))
    except Exception:  # noqa: BLE001 - an unfamiliar construct: no shortcut, the term always runs
        return None
    return frozenset(found) if found else None


def _sequence(items: list) -> set[str] | None:
    """The best set among the sequence's mandatory parts: the one whose shortest literal is
    longest (any one set is enough, since every part of the sequence is in every match)."""
    candidates: list[set[str]] = []
    run = ""
    for op, av in items:
        if op is C.LITERAL:
            run += chr(av)
            continue
        if run:
            candidates.append({run})
            run = ""
        if op is C.SUBPATTERN:
            inner = _sequence(list(av[-1]))
        elif op is C.BRANCH:
            inner = _branch(av[1])
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None)):
            inner = _sequence(list(av[2])) if av[0] >= 1 else None
        elif op is getattr(C, "ATOMIC_GROUP", None):
            inner = _sequence(list(av))
        else:  # \b, lookarounds, character classes, any character: no literal to require
            inner = None
        if inner:
            candidates.append(inner)
    if run:
        candidates.append({run})
    usable = [c for c in candidates if min(map(len, c)) >= MIN_LENGTH]
    return max(usable, key=lambda c: (min(map(len, c)), -len(c))) if usable else None


def _branch(alternatives: list) -> set[str] | None:
    found: set[str] = set()
    for alternative in alternatives:
        inner = _sequence(list(alternative))
        if not inner:
            return None  # one alternative may match without any literal
        found |= inner
    return found
