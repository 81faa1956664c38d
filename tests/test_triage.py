"""Deterministic triage layer (assistant/safety).

tests/triage_set.jsonl is both the design set (the rules in data/safety/triage.toml
were written against it) and this test, so passing it shows the rules do what was
designed, not how well they generalise. tests/triage_holdout.jsonl holds messages
written before the rules were tuned on them; finetune/eval_triage.py reports it
separately (see its docstring for first-run figures). Speed is measured, not asserted here:
`python -m finetune.eval_triage --bench`.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from assistant.safety import SafetyConfigError, TriageResult, load_config, triage
from finetune.eval_triage import evaluate, load

TESTS = Path(__file__).parent


@pytest.mark.parametrize(
    "text",
    [
        "I have crushing chest pain and I'm sweating",
        "my dad's face is drooping on one side and his speech is slurred",
        "my throat is closing up after eating peanuts",
        "the bleeding won't stop, I cut my hand deeply",
        "my daughter has been having a seizure for more than 5 minutes",
        "she passed out and won't wake up",
        "my baby is turning blue",
        "my 2 month old has a fever of 38.2",
        "my toddler swallowed some of my pills",
    ],
)
def test_emergencies(text):
    r = triage(text)
    assert r.level == "emergency", (text, r)
    assert r.reasons and r.message and "911" in r.message


@pytest.mark.parametrize(
    "text",
    ["I want to kill myself", "there's no reason to live anymore", "I have been cutting myself again",
     "i want to overdose on purpose", "my teenage son said he wants to kill himself"],
)
def test_crisis(text):
    r = triage(text)
    assert r.level == "crisis", (text, r)
    assert "988" in r.message and "911" in r.message  # crisis text also names the emergency number


@pytest.mark.parametrize(
    "text",
    [
        "What are the risk factors for stroke?",
        "How is chest pain diagnosed?",
        "my grandfather had a stroke last year, what diet helps",
        "What is the suicide rate in the US?",
        "Can a seizure be caused by low blood sugar?",
        "This traffic is killing me",
        "I cut myself shaving, how do I stop the bleeding?",
        "my arm is numb after sleeping on it",
    ],
)
def test_look_alikes_do_not_trigger(text):
    r = triage(text)
    assert r.level == "none", (text, r)
    assert r.message is None and not r.urgent


@pytest.mark.parametrize(
    "text",
    ["chest pian going into my jaw and i feel sick", "my face droping on the left side",
     "got stung by a wasp and now i cant breath", "CHEST PAIN RADIATING TO MY BACK AND ARM",
     "my frend is unconcious"],
)
def test_typos_and_case(text):
    assert triage(text).level == "emergency", text


def test_typo_of_crisis_word():
    assert triage("i keep thinking about sucide").level == "crisis"


def test_negation():
    assert triage("no chest pain, just a cough for three days").level == "none"
    assert triage("I don't have any shortness of breath or chest pain").level == "none"
    assert triage("i'm not suicidal, just stressed about exams").level == "none"
    # Negation only covers its own clause.
    assert triage("I'm not suicidal but sometimes I want to die").level == "crisis"
    assert triage("no fever, but crushing chest pain down my arm").level == "emergency"
    # ... and stops at "and": the statement after it is a statement of its own
    assert triage("no one cares and I want to die").level == "crisis"
    assert triage("my 3 week old baby is not feeding and has a fever").level == "emergency"
    assert triage("no chest pain and no shortness of breath, just a cough").level == "none"
    # "never ... like this" makes it worse, not absent
    assert triage("I have never had chest pain like this and it is going down my arm").level == "emergency"


@pytest.mark.parametrize(
    "text, scope",
    [
        ("do i have diabetes if my sugar is 130 fasting", "diagnosis"),
        ("Can you prescribe me antibiotics for my sore throat?", "prescription"),
        ("should I double my metformin dose?", "dose_change"),
        ("can i stop taking my blood pressure pills", "dose_change"),
        ("what is the treatment for glaucoma", None),
        ("should I stop my antidepressants?", "dose_change"),  # a drug named, not "medication"
        ("should I stop my warfarin before my dental work?", "dose_change"),
        ("i want to come off my antidepressants", "dose_change"),
        ("is this lump cancer", "diagnosis"),
        ("how do I stop my nosebleed?", None),
    ],
)
def test_scope_guard(text, scope):
    r = triage(text)
    assert r.level == "none" and r.scope == scope
    assert (r.referral is not None) == (scope is not None)
    if scope:
        assert "clinician" in r.referral or "pharmacist" in r.referral or "doctor" in r.referral


def test_result_shape_and_empty_input():
    r = triage("")
    assert isinstance(r, TriageResult) and r.level == "none" and r.reasons == () and r.scope is None


def test_numbers_from_user_config_file(tmp_path):
    cfg_file = tmp_path / "safety.toml"
    cfg_file.write_text('[numbers]\nregion = "EU"\nemergency = "112"\ncrisis = "116 123"\n')
    cfg = load_config(cfg_file)
    r = triage("I think I'm having a heart attack", config=cfg)
    assert "112" in r.message and "911" not in r.message and "EU" in r.message
    assert "116 123" in triage("i want to die", config=cfg).message


def test_a_config_saved_with_a_byte_order_mark_is_read(tmp_path):
    cfg_file = tmp_path / "safety.toml"
    cfg_file.write_bytes(b'\xef\xbb\xbf[numbers]\nemergency = "112"\n')
    assert "112" in load_config(cfg_file).render("emergency")


def test_numbers_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HEALTH_ASSISTANT_EMERGENCY_NUMBER", "000")
    assert "call 000" in load_config().render("emergency").lower()
    cfg_file = tmp_path / "s.toml"
    cfg_file.write_text('[numbers]\ncrisis = "13 11 14"\n')
    monkeypatch.setenv("HEALTH_ASSISTANT_SAFETY_CONFIG", str(cfg_file))
    assert "13 11 14" in load_config().render("crisis")


def test_a_clinic_override_with_a_mistake_is_named_when_loaded(tmp_path):
    with pytest.raises(SafetyConfigError, match=r"missing\.toml: cannot read the safety config"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('[numbers\nemergency = "112"\n')
    with pytest.raises(SafetyConfigError, match=r"bad\.toml: not a valid safety config"):
        load_config(bad)
    # A placeholder that is not one of the numbers used to fail only on the first emergency.
    bad.write_text('[messages]\nemergency = "Call {emergency_number} now."\n')
    with pytest.raises(SafetyConfigError, match=r"bad\.toml: \[messages\] emergency uses \{emergency_number\}, "
                                                r"which is not one of the \[numbers\]: .*emergency"):
        load_config(bad)
    bad.write_text('[numbers]\nemergnecy = "112"\n')  # misspelt: 911 would stay in every message
    with pytest.raises(SafetyConfigError, match=r"unknown key 'emergnecy' in \[numbers\] \(known: .*emergency"):
        load_config(bad)
    bad.write_text('[number]\nemergency = "112"\n')
    with pytest.raises(SafetyConfigError, match=r"unknown table \[number\]"):
        load_config(bad)
    bad.write_text('[messages]\ncrisis = "Call {emergency now."\n')
    with pytest.raises(SafetyConfigError, match=r"\[messages\] crisis is not a valid template"):
        load_config(bad)


def test_message_says_how_to_change_numbers():
    msg = triage("I can't breathe").message
    assert "HEALTH_ASSISTANT_EMERGENCY_NUMBER" in msg


def test_labelled_set_is_big_and_valid():
    rows = load(TESTS / "triage_set.jsonl")
    assert len(rows) >= 80
    assert {r["label"] for r in rows} == {"emergency", "crisis", "none"}
    assert all(r["text"].strip() and "note" in r for r in rows)


@pytest.mark.parametrize("name", ["triage_set.jsonl", "triage_holdout.jsonl"])
def test_metrics_meet_goals(name):
    m = evaluate(load(TESTS / name))
    assert m["emergency_recall"] == 1.0, m["errors"]
    assert m["crisis_recall"] == 1.0, m["errors"]
    assert m["false_alarm_rate"] <= 0.10, m["errors"]


def test_deterministic():
    text = "my husband has pressure in his chest and can't catch his breath"
    assert triage(text) == triage(text)


def test_a_clinic_rule_adds_to_the_shipped_ones(tmp_path):
    shipped = load_config()
    cfg_file = tmp_path / "clinic.toml"
    cfg_file.write_text('[numbers]\nemergency = "112"\n\n'
                        '[[rule]]\nid = "snake-bite"\nentry = "major-trauma"\nall = ["\\\\bsnake ?bite|bitten by a snake"]\n')
    cfg = load_config(cfg_file)
    assert len(cfg.rules) == len(shipped.rules) + 1
    assert triage("I was bitten by a snake an hour ago", config=cfg).level == "emergency"
    # the shipped rules still fire: adding one used to replace them all
    assert triage("I have crushing chest pain and can't breathe", config=cfg).level == "emergency"
    assert triage("I want to kill myself", config=cfg).level == "crisis"
    # an entry with a shipped id takes that rule's place, and only that one
    first = shipped.rules[-1]
    cfg_file.write_text(f'[[rule]]\nid = "{first.id}"\nentry = "{first.entry.id}"\nall = ["\\\\bnever said by anyone\\\\b"]\n')
    cfg = load_config(cfg_file)
    assert len(cfg.rules) == len(shipped.rules)
    assert [r.id for r in cfg.rules] == [r.id for r in shipped.rules]


@pytest.mark.parametrize("text, problem", [
    ('numbers = "112"\n', r"'numbers' as a str; the shipped rules have it as a table \[numbers\]"),
    ('[[rule]]\nid = "x"\nall = ["bite"]\n', r"\[\[rule\]\] number 1 \('x'\): no entry"),
    ('[[rule]]\nid = "x"\nentry = "seizure"\nlevel = "urgent"\nall = ["bite"]\n', r"level 'urgent' in \[\[rule\]\] number 1 \('x'\)"),
    ('[[rule]]\nid = "x"\nentry = "seizure"\nall = ["bite"]\nunles = ["no"]\n',
     r"key 'unles' in \[\[rule\]\] number 1 \('x'\) \(known: all, any_framing, context"),
    ('[[rule]]\nid = "x"\nentry = "seizure"\nall = ["a"]\n[[rule]]\nid = "x"\nentry = "seizure"\nall = ["b"]\n',
     r"\[\[rule\]\] id 'x' given twice"),
    ('[[rule]]\nid = "x"\nentry = "seizure"\nall = ["(unclosed"]\n', r"not a valid safety config \(error"),
    ('[[rule]]\nid = "x"\nentry = "seizure"\nall = "seizure now"\n', r"'all' in \[\[rule\]\] number 1 \('x'\): not a list"),
    ('[[rule]]\nid = "x"\nentry = "seizure"\nall = ["bite"]\ncontext = "false"\n', r"'context' in .*: true or false"),
])
def test_a_clinic_rule_with_a_mistake_is_named(tmp_path, text, problem):
    bad = tmp_path / "clinic.toml"
    bad.write_text(text)
    with pytest.raises(SafetyConfigError, match=r"clinic\.toml: .*" + problem):
        load_config(bad)
