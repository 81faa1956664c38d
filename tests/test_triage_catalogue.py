"""The red-flag catalogue (data/safety/catalogue.toml): every entry names its published source,
every rule belongs to an entry, each entry's rules catch at least three of the blind probes
written for it (tests/triage_catalogue_probes.jsonl, by a reviewer who had not read the rules),
and a clinic's override file can add an entry or replace a shipped one."""
from __future__ import annotations

import tomllib
from collections import defaultdict

import pytest

from assistant.safety import SafetyConfigError, load_config, triage
from assistant.safety.triage import CATALOGUE
from finetune.eval_triage import PROBES, coverage, evaluate, load

SHIPPED = load_config()
PROBE_ROWS = load(PROBES)


def test_every_entry_names_a_published_source():
    raw = tomllib.loads(CATALOGUE.read_text(encoding="utf-8"))["entry"]
    assert len(raw) == len(SHIPPED.entries) >= 44  # no id given twice
    for entry in SHIPPED.entries.values():
        assert entry.level in ("emergency", "crisis") and entry.title.strip(), entry
        assert entry.publisher.strip() and entry.document.strip(), entry
        assert entry.url.startswith("https://"), entry
        assert entry.signs, f"{entry.id}: no published signs listed"


def test_every_rule_belongs_to_an_entry_of_its_level():
    used = {rule.entry.id for rule in SHIPPED.rules}
    assert used == set(SHIPPED.entries), set(SHIPPED.entries) - used  # no entry without a rule
    assert all(rule.level == rule.entry.level for rule in SHIPPED.rules)


def test_the_probes_name_exactly_the_catalogue_entries():
    named = {row["entry"] for row in PROBE_ROWS if row["label"] != "none"}
    assert named == set(SHIPPED.entries)


def test_each_entry_catches_at_least_three_of_its_own_probes():
    caught: dict[str, int] = defaultdict(int)
    for row in PROBE_ROWS:
        if row["label"] == "none":
            continue
        verdict = triage(row["text"])
        if verdict.level == row["label"] and row["entry"] in {r.entry for r in verdict.reasons}:
            caught[row["entry"]] += 1
    short = {e: caught[e] for e in SHIPPED.entries if caught[e] < 3}
    assert not short, short


def test_every_probe_caught_and_every_look_alike_routine():
    m = evaluate(PROBE_ROWS)
    assert m["emergency_recall"] == 1.0 and m["crisis_recall"] == 1.0, m["errors"]
    assert m["false_alarms"] == 0, m["errors"]
    _, gaps = coverage(PROBE_ROWS)
    assert gaps == []


def test_a_flag_names_its_entry_and_source():
    (reason,) = [r for r in triage("my baby has a rash that does not fade when I press a glass on it").reasons
                 if r.entry == "meningitis"]
    assert reason.rule and reason.title == SHIPPED.entries["meningitis"].title
    assert reason.source.startswith("NICE NG240") and "nice.org.uk" in reason.url
    assert reason.to_dict()["entry"] == "meningitis"


CLINIC_ENTRY = '''
[[entry]]
id = "snake-bite"
level = "emergency"
title = "Venomous snake bite"
source = { publisher = "Clinic", document = "Local snake-bite pathway 2026", url = "https://clinic.example/snake" }
signs = ["bitten by a snake"]

[[rule]]
id = "snake_bite"
entry = "snake-bite"
context = true
all = ['\\bsnake ?bite|bitten by a snake']
'''


def test_a_clinic_adds_an_entry(tmp_path):
    clinic = tmp_path / "clinic.toml"
    clinic.write_text(CLINIC_ENTRY, encoding="utf-8")
    cfg = load_config(clinic)
    assert set(cfg.entries) == set(SHIPPED.entries) | {"snake-bite"}
    verdict = triage("I was bitten by a snake an hour ago", config=cfg)
    assert verdict.level == "emergency"
    assert [(r.entry, r.source) for r in verdict.reasons] == [("snake-bite", "Clinic Local snake-bite pathway 2026")]
    assert triage("I was bitten by a snake an hour ago").level == "none"  # not in the shipped rules


def test_a_clinic_replaces_a_shipped_entry(tmp_path):
    clinic = tmp_path / "clinic.toml"
    clinic.write_text('''
[[entry]]
id = "stroke-tia"
level = "emergency"
title = "Stroke: call the stroke unit"
source = { publisher = "County Hospital", document = "Stroke pathway v3", url = "https://hospital.example/stroke" }
''', encoding="utf-8")
    cfg = load_config(clinic)
    assert len(cfg.entries) == len(SHIPPED.entries)
    assert cfg.entries["stroke-tia"].publisher == "County Hospital" and cfg.entries["stroke-tia"].signs == ()
    verdict = triage("my dad's face is drooping on one side", config=cfg)
    assert verdict.level == "emergency"  # the shipped rules stay attached to the entry
    assert {(r.entry, r.title, r.url) for r in verdict.reasons} == {
        ("stroke-tia", "Stroke: call the stroke unit", "https://hospital.example/stroke")}
    # the other entries are untouched
    assert triage("I have crushing chest pain and I am sweating", config=cfg).reasons[0].source.startswith("NICE CG95")


@pytest.mark.parametrize("text, problem", [
    ('[[rule]]\nid = "x"\nentry = "snake-bite"\nall = ["bite"]\n',
     r"\[\[rule\]\] 'x': entry 'snake-bite' is not in the catalogue"),
    ('[[rule]]\nid = "x"\nentry = "seizure"\nlevel = "crisis"\nall = ["bite"]\n',
     r"\[\[rule\]\] 'x': level 'crisis', but its entry 'seizure' is 'emergency'"),
    ('[[entry]]\nid = "x"\nlevel = "emergency"\ntitle = "X"\n', r"\[\[entry\]\] number 1 \('x'\): no source"),
    ('[[entry]]\nid = "x"\nlevel = "emergency"\ntitle = "X"\nsource = "NICE"\n', r"'source' in \[\[entry\]\] .*: a table"),
    ('[[entry]]\nid = "x"\nlevel = "emergency"\ntitle = "X"\nsource = { publisher = "NICE" }\n',
     r"'source' in \[\[entry\]\] .*: no url"),
    ('[[entry]]\nid = "x"\nlevel = "urgent"\ntitle = "X"\nsource = { publisher = "A", url = "https://a" }\n',
     r"level 'urgent' in \[\[entry\]\] number 1"),
])
def test_a_clinic_entry_or_rule_with_a_mistake_is_named(tmp_path, text, problem):
    bad = tmp_path / "clinic.toml"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(SafetyConfigError, match=r"clinic\.toml: .*" + problem):
        load_config(bad)

