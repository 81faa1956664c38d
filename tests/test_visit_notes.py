"""Whole-visit notes: sections drafted from the turns that speak to them, assembled in a
clinician's order, nothing said that the transcript did not say."""
from __future__ import annotations

import json
import re

import pytest

from assistant import visit_notes
from assistant.note_examples import NoteExamples
from assistant.tasks import TaskError, summarize
from fakes import FakeBackend

VISIT = "\n".join([
    "[doctor] hi , what brings you in today ?",
    "[patient] my knee has been hurting for three days .",
    "[doctor] tell me more about how it started and what makes it better or worse .",
    "[patient] i was playing soccer with my kids in the park on the weekend and i twisted it when i turned "
    "too quickly , and since then it has been sore when i walk up and down the stairs at home and at work .",
    "[doctor] okay , and has it been swollen or has it given way on you at any point since then ?",
    "[patient] it was a bit swollen the first evening , i put some ice on it and kept it up on a pillow , "
    "and it has not given way , but i have been careful with it and i have not been running at all .",
    "[doctor] does anything else bother you , like numbness or tingling in the leg or the foot ?",
    "[patient] no , nothing like that , it is just the knee itself , mostly on the inside part of it .",
    "[doctor] any past medical history ?",
    "[patient] i have high blood pressure .",
    "[doctor] what medications are you taking ?",
    "[patient] lisinopril twenty milligrams a day . no allergies .",
    "[doctor] okay , let me take a look at your knee . does this hurt ?",
    "[patient] yes , right there .",
    "[doctor] i think it's a sprain , the x-ray shows no fracture .",
    "[patient] okay .",
    "[doctor] i want you to rest it and take ibuprofen , and we'll follow up if it is not better .",
    "[patient] sounds good .",
])

# What the fake model writes for each section prompt: something of its own, so each section's
# place in the note can be seen.
WRITES = {
    "Chief Complaint": "Knee pain.",
    "History of Present Illness": "The patient reports knee pain for 3 days.",
    "Past Medical History": "Hypertension.",
    "Medications": "Lisinopril 20 mg daily. No known allergies.",
    "Physical Exam": "Tenderness of the knee.",
    "Assessment": "Knee sprain without fracture.",
    "Plan": "Rest and ibuprofen. Follow up if not better.",
}


def by_section(writes=WRITES):
    def reply(messages):
        asked = re.search(r"as the '([^']+)' section", messages[-1]["content"]).group(1)
        return writes[asked]
    return reply


def test_sections_are_assembled_in_a_clinicians_order_under_their_headings():
    be = FakeBackend(reply=by_section())
    shown = []
    result = summarize(be, VISIT, on_text=shown.append)
    headings = ["CHIEF COMPLAINT", "HISTORY OF PRESENT ILLNESS", "PAST HISTORY", "MEDICATIONS AND ALLERGIES",
                "PHYSICAL EXAMINATION", "ASSESSMENT", "PLAN"]
    assert result.text == "\n\n".join(f"{h}\n\n{WRITES[s.prompt]}" for h, s in zip(headings, visit_notes.SECTIONS))
    assert "".join(shown) == result.text  # each section shown once written
    assert len(be.calls) == 7 and result.parts == 7
    assert result.meta["style"] == "soap" and result.meta["not_discussed"] == []
    assert [s["key"] for s in result.meta["sections"]] == list(visit_notes.SECTION_KEYS)


def test_each_section_is_drafted_from_the_turns_that_speak_to_it():
    be = FakeBackend(reply=by_section())
    summarize(be, VISIT)
    sent = {re.search(r"as the '([^']+)' section", c[-1]["content"]).group(1): c[-1]["content"] for c in be.calls}
    assert "lisinopril" in sent["Medications"] and "let me take a look" not in sent["Medications"]
    assert "does this hurt" in sent["Physical Exam"] and "lisinopril" not in sent["Physical Exam"]
    assert "follow up" in sent["Plan"] and "past medical history" not in sent["Plan"]
    # the history runs until the examination begins
    assert "high blood pressure" in sent["History of Present Illness"]
    assert "x-ray" not in sent["History of Present Illness"]


def test_a_section_with_nothing_in_the_transcript_is_left_out_and_never_asked_for():
    visit = "\n".join(line for line in VISIT.splitlines() if "take a look" not in line and "right there" not in line)
    be = FakeBackend(reply=by_section())
    result = summarize(be, visit)
    assert "PHYSICAL EXAMINATION" not in result.text and "Tenderness" not in result.text
    assert "examination" in result.meta["not_discussed"]
    assert not any("'Physical Exam' section" in c[-1]["content"] for c in be.calls)


def test_a_section_that_only_repeats_the_note_is_left_out():
    writes = {**WRITES, "Assessment": "The patient reports knee pain for 3 days."}
    result = summarize(FakeBackend(reply=by_section(writes)), VISIT)
    assert "ASSESSMENT" not in result.text and "assessment" in result.meta["not_discussed"]


def test_invented_facts_are_removed_from_each_section_and_reported():
    writes = {**WRITES, "History of Present Illness": "The patient is a 54-year-old male who presents to the "
                                                      "emergency room with knee pain for 3 days.",
              "Plan": "Start metformin 500 mg. Rest and ibuprofen."}
    shown = []
    result = summarize(FakeBackend(reply=by_section(writes)), VISIT, on_text=shown.append)
    assert "HISTORY OF PRESENT ILLNESS\n\nThe patient presents with knee pain for 3 days." in result.text
    assert "PLAN\n\nRest and ibuprofen." in result.text
    assert "54" not in result.text and "metformin" not in result.text and "emergency" not in result.text
    assert "".join(shown) == result.text  # nothing invented is ever shown
    kinds = {u["kind"] for u in result.meta["faithfulness"]["unsupported"]}
    assert kinds == {"age", "sex", "setting", "medicine", "dose"}
    assert "54-year-old" in result.meta["unchecked"] and "metformin" in result.meta["unchecked"]


def test_the_gp_style_is_terse_one_line_a_section():
    be = FakeBackend(reply=by_section())
    result = summarize(be, VISIT, style="gp")
    lines = result.text.split("\n\n")
    assert lines[0] == "Presenting complaint: Knee pain." and lines[-1].startswith("Plan: Rest and ibuprofen.")
    soap = FakeBackend(reply=by_section())
    summarize(soap, VISIT)
    assert [o.max_tokens for o in be.options] < [o.max_tokens for o in soap.options]
    assert all(a.max_tokens <= b.max_tokens for a, b in zip(be.options, soap.options))


def test_an_unknown_style_is_named():
    with pytest.raises(TaskError, match="unknown note style 'letter'; choose from soap, gp"):
        summarize(FakeBackend(), VISIT, style="letter")


def test_one_draft_per_section_by_default_and_a_single_section_is_unchanged():
    be = FakeBackend(reply=by_section())
    summarize(be, VISIT, best_of=None, examples=NoteExamples([]))
    assert len(be.calls) == 7
    one = FakeBackend(reply="Rest.")
    result = summarize(one, VISIT, "PLAN", best_of=1)
    assert result.text == "Rest." and len(one.calls) == 1
    assert "'Plan' section" in one.calls[0][-1]["content"] and "what brings you in" in one.calls[0][-1]["content"]


def test_a_transcript_in_one_block_is_split_at_its_speakers():
    block = "Doctor: What brings you in? Patient: A cough. Doctor: Any medicines? Patient: None."
    assert visit_notes.turns(block) == ["Doctor: What brings you in?", "Patient: A cough.",
                                        "Doctor: Any medicines?", "Patient: None."]


def test_a_model_failure_keeps_the_sections_written():
    from assistant.backends.base import BackendError

    def reply(messages):
        if "'Medications' section" in messages[-1]["content"]:
            raise BackendError("the model failed")
        return by_section()(messages)

    with pytest.raises(TaskError, match="after 3 sections") as failure:  # complaint, history, background
        summarize(FakeBackend(reply=reply), VISIT)
    assert failure.value.partial.startswith("CHIEF COMPLAINT\n\nKnee pain.")


def test_best_of_prefers_a_faithful_draft_and_records_the_unchecked_choice():
    # The first two drafts agree with each other most but state an age and a setting the
    # transcript never gave; the third says only what was said.
    be = FakeBackend(replies=["The patient is a 54-year-old who presents to the emergency room with knee pain.",
                              "The patient is a 54-year-old with knee pain in the emergency room.",
                              "Knee pain for 3 days."])
    result = summarize(be, VISIT, "GENHX", best_of=3, examples=NoteExamples([]))
    assert result.text == "Knee pain for 3 days." and result.meta["chosen"] == 2
    assert result.meta["faithful_drafts"] == 1
    assert result.meta["unchecked"].startswith("The patient is a 54-year-old")
    # none faithful: the best is chosen, then cleaned
    be = FakeBackend(replies=["The patient is a 54-year-old with knee pain.", "A 40-year-old with knee pain."])
    result = summarize(be, VISIT, "GENHX", best_of=2, examples=NoteExamples([]))
    assert "year-old" not in result.text and result.meta["faithful_drafts"] == 0


def test_cli_style_option(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from assistant import cli as cli_module

    backend = FakeBackend(reply=by_section())
    monkeypatch.setattr(cli_module, "load_backend", lambda *a, **k: backend)
    src = tmp_path / "visit.txt"
    src.write_text(VISIT, encoding="utf-8")
    out = tmp_path / "notes.jsonl"
    result = CliRunner().invoke(cli_module.cli, ["summarize", str(src), "--style", "gp", "-o", str(out), "--no-log"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text().splitlines()[0])["summary"].startswith("Presenting complaint: Knee pain.")
    bad = CliRunner().invoke(cli_module.cli, ["summarize", str(src), "--style", "letter"])
    assert bad.exit_code == 2 and "letter" in bad.output


def test_a_visit_that_is_all_opening_is_told_by_its_history_alone():
    be = FakeBackend(reply=by_section())
    result = summarize(be, "[doctor] what brings you in ?\n[patient] my knee hurts .")
    # (the three days the fake model writes were never said here, and are cut)
    assert result.text == "HISTORY OF PRESENT ILLNESS\n\nThe patient reports knee pain."
    assert "chief_complaint" in result.meta["not_discussed"]
    assert not any("'Chief Complaint' section" in c[-1]["content"] for c in be.calls)
