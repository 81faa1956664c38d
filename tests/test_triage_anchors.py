"""The literal shortcut of assistant/safety/anchors.py: a term is skipped only when no match of
it is possible, so it can never change a verdict."""
from __future__ import annotations

import re

from assistant.safety.anchors import anchors
from assistant.safety.triage import default_config, normalise
from finetune.eval_triage import DEFAULT_SETS, load


def test_anchors_of_hand_made_patterns():
    assert anchors(re.compile(r"\bchest (?:\w+ ){0,2}?(?:pain|pressure)")) == {"chest "}
    assert anchors(re.compile(r"\bseiz\w*|\bconvuls\w*")) == {"seiz", "convuls"}
    # an optional part is not required; a repeated one is
    assert anchors(re.compile(r"(?:very )?unwell")) == {"unwell"}
    assert anchors(re.compile(r"(?:blue ){1,3}lips?")) == {"blue "}
    # a branch that can match without a literal of 3 characters or more: no shortcut
    assert anchors(re.compile(r"\bstroke\b|\b\d+ ?mg\b")) is None
    assert anchors(re.compile(r"stroke", re.IGNORECASE)) is None
    # a lookahead's words are not in the match
    assert anchors(re.compile(r"\bshot\b(?! (?:vaccine|jab))")) == {"shot"}


def test_no_term_with_a_match_is_ever_skipped():
    cfg = default_config()
    texts = [row["text"] for path in DEFAULT_SETS for row in load(path)]
    checked = 0
    for text in texts + ["\n".join(texts)]:
        norm = normalise(text, cfg)
        for rule in cfg.rules:
            for term, gate in zip(rule.terms, rule.gates):
                if gate is not None and term.search(norm):
                    checked += 1
                    assert any(a in norm for a in gate), (rule.id, term.search(norm).group(), sorted(gate))
    assert checked > 1000
    assert sum(gate is not None for rule in cfg.rules for gate in rule.gates) > 0.8 * sum(
        len(rule.gates) for rule in cfg.rules)
