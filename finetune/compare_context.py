"""The triage engine's own context reading against medspaCy's ConText, on every probe set.

    python -m finetune.compare_context [--meqsum ../shared/data]

Both read the same catalogue matches (every rule's patterns on the normalised message); they
differ only in which matches count. Three readers:

- engine: the shipped one (negation, history, hypothetical, habit, educational framing, all as
  data in data/safety/triage.toml [context]);
- context: medspaCy's ConText with its default rules decides alone: a match counts unless
  ConText marks it negated, historical or hypothetical (a family member or other person still
  counts: an emergency is one whoever has it);
- context+framing: ConText for negation, history and hypotheticals, with the engine's framing
  kept (a general question about a topic, "sometimes", a question about nobody in particular).

A rule's `unless` exceptions are rule data and apply to all three. medspaCy runs on a blank
spaCy pipeline with its rule-based sentence splitter (PyRuSH) and ConText: no model is
downloaded. It needs spaCy 3.7 and so numpy < 2, which the project's environment does not
allow (torch and the rest use numpy 2): install it in an environment of its own
(`python -m venv ctx && ctx/bin/pip install medspacy openpyxl`) and run this module with it.
"""
from __future__ import annotations

import argparse
import time

from assistant.safety.triage import _and_part, _clause_at, _is_question, default_config, normalise, triage

from .eval_triage import DEFAULT_SETS, evaluate, flagged, load, load_meqsum, markdown

READERS = ("engine", "context", "context+framing")


class ContextReader:
    """Classifies messages with the catalogue's rules, reading each match's context with medspaCy."""

    def __init__(self, keep_framing: bool) -> None:
        import medspacy  # noqa: F401 - registers the medspacy_* pipeline components
        import spacy
        from loguru import logger

        logger.disable("PyRuSH")  # it logs every sentence split at DEBUG level

        self.cfg = default_config()
        self.keep_framing = keep_framing
        self.nlp = spacy.blank("en")
        self.nlp.add_pipe("medspacy_pyrush")
        self.context = self.nlp.add_pipe("medspacy_context", config={"input_span_type": "group",
                                                                     "span_group_name": "triage"})

    def _counts(self, doc, norm: str, m, rule, memo: dict) -> bool:
        span = doc.char_span(m.start(), m.end(), alignment_mode="expand")
        if span is None:
            return True
        key = (span.start, span.end)
        if key not in memo:
            found = next((s for s in doc.spans["triage"] if (s.start, s.end) == key), span)
            memo[key] = not (found._.is_negated or found._.is_historical or found._.is_hypothetical)
        if not memo[key]:
            return False
        if self.keep_framing:
            ctx = self.cfg.ctx
            start = norm.rfind("|", 0, m.start()) + 1
            end = norm.find("|", m.start())
            clause = norm[start: end if end >= 0 else len(norm)]
            if not rule.any_framing and ctx["educational"].search(clause) and not ctx["personal_now"].search(clause):
                return False
            if rule.context and ctx["occasional"].search(clause) and not ctx["happening_now"].search(norm):
                return False
        return True

    def __call__(self, text: str) -> str:
        cfg = self.cfg
        norm = normalise(text or "", cfg)
        # "|" marks the engine's clause breaks; as "." the sentence splitter and ConText see them too
        doc = self.nlp.make_doc(norm.replace("|", "."))
        doc = self.nlp.get_pipe("medspacy_pyrush")(doc)
        matches = {rule.id: [list(term.finditer(norm)) for term in rule.terms] for rule in cfg.rules}
        spans, seen = [], set()
        for per_term in matches.values():
            for found in per_term:
                for m in found:
                    span = doc.char_span(m.start(), m.end(), alignment_mode="expand", label="TRIAGE")
                    if span is not None and (span.start, span.end) not in seen:
                        seen.add((span.start, span.end))
                        spans.append(span)
        doc.spans["triage"] = spans
        doc = self.context(doc)
        memo: dict = {}
        question = _is_question(text or "")
        for rule in cfg.rules:
            usable = [[m for m in found if self._counts(doc, norm, m, rule, memo)] for found in matches[rule.id]]
            if not all(usable):
                continue
            if self.keep_framing and rule.context and question and not cfg.ctx["person"].search(norm):
                continue
            # as the engine: an exception holds unless the match's own part of its clause is acute
            parts = [_and_part(clause, m.start() - start)
                     for found in usable for m in found for start, clause in [_clause_at(norm, m.start())]]
            if any(u.search(norm) for u in rule.unless) and not any(cfg.ctx["acute"].search(p) for p in parts):
                continue
            return rule.level
        return "none"


def reader(name: str):
    if name == "engine":
        return lambda text: triage(text).level
    return ContextReader(keep_framing=name == "context+framing")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meqsum", help="MeQSum .xlsx (or the data folder holding meqsum/)")
    args = ap.parse_args(argv)
    sets = {path.stem: load(path) for path in DEFAULT_SETS if path.exists()}
    questions = load_meqsum(args.meqsum) if args.meqsum else []
    for name in READERS:
        t0 = time.perf_counter()
        classify = reader(name)
        load_s = time.perf_counter() - t0
        results = {stem: evaluate(rows, classify) for stem, rows in sets.items()}
        print(f"## {name} (set-up {load_s:.1f} s)\n")
        print(markdown(results))
        if questions:
            t0 = time.perf_counter()
            hits = flagged(questions, classify)
            ms = (time.perf_counter() - t0) * 1000 / len(questions)
            print(f"\nMeQSum: {len(hits)} of {len(questions)} flagged urgent ({ms:.2f} ms per question)")
        misses = [(stem, e) for stem, r in results.items() for e in r["errors"]]
        for stem, e in misses[:40]:
            print(f"- {stem}: {e['gold']} read as {e['pred']}: {e['text'][:110]}")
        if len(misses) > 40:
            print(f"- ... and {len(misses) - 40} more")
        print()


if __name__ == "__main__":
    main()
