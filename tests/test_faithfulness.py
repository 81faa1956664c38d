"""The faithfulness check: facts a draft states that its source does not, found in any
form the source may say them in, and the draft without them."""
from __future__ import annotations

import pytest

from assistant import faithfulness
from assistant.faithfulness import Cleaner, Lexicon, check, clean

VISIT = """[doctor] hi , what brings you in today ?
[patient] i've had a cough for three days and a fever since yesterday .
[doctor] any medicines ?
[patient] i took some tylenol , and i take lisinipril twenty milligrams once a day .
[doctor] your blood pressure today is one twenty over eighty and your temperature is ninety nine . five .
[patient] i've been sick for about a week and a half , maybe half a tablet of something on monday .
[doctor] your a1c was six point seven . your oxygen is 97 percent .
[doctor] let me take a look at your throat ."""


def kinds(draft: str, source: str = VISIT) -> list[tuple[str, str]]:
    return [(f.kind, f.text) for f in check(draft, source).findings]


@pytest.mark.parametrize("draft, found", [
    ("The patient is a 54-year-old with a cough.", [("age", "54-year-old")]),
    ("She is 54 years old.", [("age", "54 years old")]),
    ("Aged 61, he reports a cough.", [("age", "Aged 61")]),
    ("The patient is a male with a cough.", [("sex", "male")]),
    ("This woman reports a cough.", [("sex", "woman")]),
    ("He presented to the emergency room.", [("setting", "emergency room")]),
    ("He was seen in the ED.", [("setting", "ED")]),
    ("Telephone consultation about a cough.", [("setting", "Telephone")]),
    ("He was transferred to the ICU.", [("setting", "ICU")]),
    ("He takes metformin daily.", [("medicine", "metformin")]),
    ("He was started on atorvastatin.", [("medicine", "atorvastatin")]),
    ("Lisinopril 40 mg daily.", [("dose", "40 mg")]),
    ("Cough for 2 weeks.", [("duration", "2 weeks")]),
    ("The cough began 10 days ago.", [("duration", "10 days")]),
    ("Seen on Friday.", [("date", "Friday")]),
    ("Symptoms began in March.", [("date", "March")]),
    ("Pain is 8/10.", [("number", "8"), ("number", "10")]),
])
def test_each_kind_of_unsupported_fact_is_found(draft, found):
    assert kinds(draft) == found


@pytest.mark.parametrize("draft", [
    "Cough for 3 days.",  # "three days"
    "Cough for 72 hours.",  # three days in hours
    "Sick for 1.5 weeks.",  # "a week and a half"
    "Sick for about 10.5 days.",  # a week and a half, in days
    "He takes lisinopril 20 mg once daily.",  # "lisinipril twenty milligrams", as transcribed
    "He took acetaminophen.",  # the generic of "tylenol"
    "He took paracetamol.",  # another name of it
    "Blood pressure 120/80.",  # "one twenty over eighty"
    "Temperature 99.5.",  # "ninety nine . five"
    "A1c 6.7.",  # "six point seven"
    "Oxygen saturation 97%.",
    "He took 1/2 tablet on Monday.",  # "half a tablet"
    "He takes it 1 time a day.",
    "1. Cough. 2. Fever.",  # a list's numbering is no fact
    "He has COVID-19 symptoms and low vitamin B12.",  # numbers inside names
    "He presents with a cough.",
    "On exam the throat was red.",  # an examination took place: he was seen in person
])
def test_a_fact_said_in_another_form_is_not_flagged(draft):
    assert kinds(draft) == []


def test_a_transcript_never_contradicts_itself():
    assert check(VISIT, VISIT).faithful


def test_brand_and_generic_names_through_given_synonyms():
    source = "[patient] i take glucovance for my sugar."
    lexicon = Lexicon([["glucovance"], ["glyburide"]])
    assert kinds("He takes glyburide.", source) == [("medicine", "glyburide")]
    assert check("He takes glyburide.", source, lexicon=lexicon).findings
    assert check("He takes glyburide.", source, synonyms={"glyburide": ["glucovance"]}, lexicon=lexicon).faithful
    assert check("He takes glyburide.", source, synonyms=lambda name: ["glucovance"], lexicon=lexicon).faithful


def test_the_invented_opening_is_rewritten_to_what_the_transcript_supports():
    text, report = clean("The patient is a 54-year-old male who presents to the emergency room with a cough "
                         "and fever for 3 days. He took Tylenol.", VISIT)
    assert text == "The patient presents with a cough and fever for 3 days. He took Tylenol."
    assert {f.kind for f in report.findings} == {"age", "sex", "setting"}
    assert report.removed[0].kinds == ("age", "sex", "setting")
    assert report.removed[0].replacement == "The patient presents with a cough and fever for 3 days."


def test_sentences_with_unsupported_medicines_or_numbers_are_dropped_and_reported():
    text, report = clean("He has a cough. He takes metformin 500 mg twice daily. Pain is 8/10. He took Tylenol.",
                         VISIT)
    assert text == "He has a cough. He took Tylenol."
    assert [r.kinds for r in report.removed] == [("dose", "number", "medicine"), ("number",)]
    assert [f.text for f in report.findings] == ["500 mg", "twice", "metformin", "8", "10"]
    assert all(r.replacement == "" for r in report.removed)
    assert report.categories() == {"medicine", "number"}
    assert report.to_dict()["removed"][1] == {"sentence": "Pain is 8/10.", "kinds": ["number"], "kept": ""}


def test_a_duration_or_dose_is_cut_out_of_a_sentence_that_stands_without_it():
    text, _ = clean("Follow up in 2 weeks by telephone.", VISIT)
    assert text == "Follow up."
    assert clean("He takes lisinopril 40 mg daily.", VISIT)[0] == "He takes lisinopril daily."


def test_paragraphs_stay_apart_when_a_sentence_between_them_goes():
    text, _ = clean("PLAN\n\nHe is 54 years old and on metformin.\n\nASSESSMENT\n\nA cough.", VISIT)
    assert text == "PLAN\n\nASSESSMENT\n\nA cough."


def test_streaming_passes_on_exactly_what_clean_returns():
    draft = ("The patient is a 54-year-old male who presents to the ER with a cough. He takes metformin. "
             "Dr. Lee saw him, e.g. for the cough.\n\nPLAN\n\nFollow up in 2 weeks.")
    cleaner = Cleaner(VISIT)
    shown = "".join(cleaner.feed(piece) for piece in draft.split(" ")[:1] + [" " + w for w in draft.split(" ")[1:]])
    shown += cleaner.finish()
    assert shown == cleaner.text == clean(draft, VISIT)[0]
    assert "metformin" not in shown and "Dr. Lee saw him, e.g. for the cough." in shown


def test_the_shipped_lexicon_knows_brands_and_generics():
    lexicon = faithfulness.default_lexicon()
    assert "furosemide" in lexicon.also_known_as("lasix")
    assert lexicon.is_medicine("lisinopril") and lexicon.is_medicine("valsartan")  # listed, or by its stem
    assert not lexicon.is_medicine("person") and not lexicon.is_medicine("solution")


def test_an_age_must_be_said_as_an_age():
    source = "[doctor] brian is a 58 year old male . increase your lasix to 80 mg . [patient] my son , who is nine ."
    assert kinds("He is an 80-year-old male.", source) == [("age", "80-year-old")]  # 80 was a dose
    assert kinds("A 1-year-old boy.", source) == [("age", "1-year-old")]  # 1 is no free pass for an age
    assert kinds("He is a 58-year-old male. His son is 9 years old.", source) == []
