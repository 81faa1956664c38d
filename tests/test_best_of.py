"""Best-of-N summaries: the choice among drafts, the note examples it is judged
against, the file they ship in, and the task layer's drafting."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from assistant import best_of, note_examples, prompts
from assistant.backends.base import CancelToken
from assistant.note_examples import NoteExamples
from assistant.tasks import BEST_OF_TEMPERATURE, SUMMARY_BEST_OF, TaskError, summarize, summary_drafts
from fakes import FakeBackend
from finetune import build_note_examples

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

NOTES = [
    {"section": "ALLERGY", "note": "No known drug allergies.",
     "dialogues": ["Doctor: Any allergies to medicines?\nPatient: None that I know of.",
                   "Doctor: Are you allergic to any drugs?\nPatient: Not that I know."]},
    {"section": "ALLERGY", "note": "Penicillin causes a rash.",
     "dialogues": ["Doctor: Any drug allergies?\nPatient: Penicillin gives me a rash."]},
    {"section": "FAM/SOCHX", "note": "Father had a rash with penicillin.",
     "dialogues": ["Doctor: Family history?\nPatient: My father got a rash from penicillin."]},
]


# --- choosing -------------------------------------------------------------------

def test_the_draft_the_others_agree_with_wins():
    drafts = ["patient reports cough and fever for two days",
              "the weather was nice at the beach yesterday",
              "cough and fever for two days reported by the patient"]
    assert best_of.choose(drafts) in (0, 2)
    scores = best_of.utilities(drafts)
    assert scores[1] < min(scores[0], scores[2])


def test_notes_of_similar_visits_break_a_tie_between_drafts():
    drafts = ["No known drug allergies.", "Allergic to nothing at all."]
    assert best_of.utilities(drafts)[0] == pytest.approx(best_of.utilities(drafts)[1])
    assert best_of.choose(drafts, ["No known allergies.", "No drug allergies."]) == 0
    assert best_of.choose(drafts, ["Allergic to nothing."]) == 1


def test_equal_scores_keep_the_first_draft_and_no_drafts_is_an_error():
    assert best_of.choose(["same text", "same text", "same text"]) == 0
    assert best_of.choose(["only one"]) == 0
    with pytest.raises(ValueError, match="no candidates"):
        best_of.choose([])


# --- note examples --------------------------------------------------------------

def test_similar_ranks_by_dialogue_within_the_section():
    ex = NoteExamples(NOTES)
    got = ex.similar("Doctor: Allergies?\nPatient: Penicillin, I get a rash.", "ALLERGY", k=2)
    assert got == ["Penicillin causes a rash.", "No known drug allergies."]
    # the family-history note shares the words but not the section
    assert "Father had a rash with penicillin." not in ex.similar("penicillin rash father", "ALLERGY", k=5)
    # a section title works like its code; without a section every note counts
    assert ex.similar("penicillin rash father", "Family and Social History", k=1) == ["Father had a rash with penicillin."]
    assert ex.similar("penicillin rash father", None, k=1) == ["Father had a rash with penicillin."]


def test_a_note_written_for_several_dialogues_comes_back_once():
    got = NoteExamples(NOTES).similar("Doctor: allergic to any drugs or medicines? Patient: none I know", "ALLERGY", k=5)
    assert got.count("No known drug allergies.") == 1 and len(got) == 2


def test_section_codes():
    assert prompts.section_code("genhx") == "GENHX"
    assert prompts.section_code("History of Present Illness") == "GENHX"
    assert prompts.section_code("a section nobody has") is None
    assert prompts.section_code(None) is None


def test_a_broken_notes_file_names_the_line(tmp_path):
    path = tmp_path / "notes.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(NOTES[0]) + "\n" + json.dumps({"section": "CC", "note": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"notes\.jsonl\.gz:2: not a note example"):
        NoteExamples.load(path)


def test_build_groups_dialogues_by_note_and_reads_only_mts_dialog(tmp_path):
    def row(source, dialogue, section, note):
        return {"source": source, "meta": {"inputs": {"dialogue": dialogue, "section": section}},
                "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": note}]}

    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in [
        row("mts-dialog", "Doctor: a", "CC", "Cough."),
        row("mts-dialog", "Doctor: a, back-translated", "CC", "Cough."),
        row("mts-dialog", "Doctor: a", "CC", "Cough."),  # an exact duplicate adds nothing
        row("meqsum", "not a dialogue", "CC", "Question?"),
        row("mts-dialog", "Doctor: b", "CC", "None."),
        row("mts-dialog", "Doctor: c", "ROS", "Otherwise, negative."),
    ]) + "\n")
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps(row("mts-dialog", "Doctor: another visit", "CC", "none. ")) + "\n"
                    + json.dumps(row("mts-dialog", "Doctor: one more", "ROS", "Otherwise negative")) + "\n")
    notes, dropped = build_note_examples.collect(train, [test])
    assert notes == [{"section": "CC", "note": "Cough.", "dialogues": ["Doctor: a", "Doctor: a, back-translated"]}]
    assert dropped == 2  # held-out references as ROUGE reads them (case and punctuation aside)
    path = build_note_examples.write(notes, tmp_path / "out")
    assert NoteExamples.load(path).similar("Doctor: a", "CC") == ["Cough."]
    assert path.read_bytes() == build_note_examples.write(notes, tmp_path / "again").read_bytes()

    train.write_text(json.dumps({"source": "mts-dialog", "messages": []}) + "\n")
    with pytest.raises(ValueError, match=r"train\.jsonl:1: MTS-Dialog row without"):
        build_note_examples.collect(train)
    train.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"train\.jsonl:1: malformed JSON"):
        build_note_examples.collect(train)


def test_the_shipped_notes_load_and_cover_the_common_sections():
    ex = note_examples.load()
    assert len(ex.notes) > 1000
    for section in ("GENHX", "ROS", "FAM/SOCHX", "ALLERGY"):
        assert len(ex.similar("Doctor: How are you?\nPatient: I have a cough.", section, k=5)) == 5


@pytest.mark.skipif(not (SHARED / "mts-dialog").is_dir(), reason="the source data lives only on dev machines")
def test_no_held_out_dialogue_or_note_is_shipped():
    from finetune.sources import mts, norm

    records, _ = mts.load(SHARED, augmented=False)
    held_out = [r for r in records if r["split"] != "train"]
    assert len(held_out) == 500
    shipped_dialogues, shipped_notes = set(), set()
    with gzip.open(note_examples.DEFAULT_NOTES, "rt", encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            shipped_notes.add(norm(entry["note"]))
            shipped_dialogues.update(norm(d) for d in entry["dialogues"])
    assert not {norm(r["meta"]["inputs"]["dialogue"]) for r in held_out} & shipped_dialogues
    # MTS-Dialog reuses some notes across splits; none of those may be shipped
    assert not {norm(r["reference"]) for r in held_out} & shipped_notes


# --- the task layer ---------------------------------------------------------------

def test_summarize_drafts_then_returns_the_chosen_one():
    be = FakeBackend(replies=["Penicillin causes a rash.", "He is allergic to cats.", "A rash from penicillin."])
    shown = []
    result = summarize(be, "Doctor: Allergies?\nPatient: Penicillin.", "ALLERGY", best_of=3,
                       examples=NoteExamples(NOTES), on_text=shown.append)
    assert len(be.calls) == 3 and result.parts == 3
    assert [o.temperature for o in be.options] == [0.0, BEST_OF_TEMPERATURE, BEST_OF_TEMPERATURE]
    assert [o.seed for o in be.options] == [0, 1, 2]  # reproducible samples
    assert all(c == be.calls[0] for c in be.calls)  # one prompt, so its processing is reused
    assert result.text == "Penicillin causes a rash."
    assert shown == [result.text]  # shown once, when chosen
    assert {k: result.meta[k] for k in ("best_of", "drafts", "chosen", "faithful_drafts")} == \
        {"best_of": 3, "drafts": 3, "chosen": 0, "faithful_drafts": 3}
    assert result.stats.completion_tokens == 4 + 5 + 4


def test_cancelling_between_drafts_keeps_the_drafts_so_far():
    be = FakeBackend(replies=["First draft.", "Second draft.", "Third draft."])
    token = CancelToken()

    def progress(stage, done, total):
        if stage == "candidate" and done == 2:
            token.cancel()

    result = summarize(be, "Doctor: hi.", "CC", best_of=3, examples=NoteExamples(NOTES),
                       cancel=token, on_progress=progress)
    assert result.cancelled
    assert result.meta["drafts"] == 2 and result.text in ("First draft.", "Second draft.")


@pytest.mark.parametrize("section, drafts", [("ALLERGY", SUMMARY_BEST_OF), ("Allergies", SUMMARY_BEST_OF),
                                             ("Subjective", 1), ("Assessment and Plan", 1)])
def test_by_default_only_mts_dialog_sections_are_drafted(section, drafts):
    assert summary_drafts(section) == drafts
    be = FakeBackend(reply="A note.")
    result = summarize(be, "Doctor: Allergies?\nPatient: Penicillin.", section, best_of=None,
                       examples=NoteExamples(NOTES))
    assert len(be.calls) == drafts and result.text == "A note."
    assert result.meta.get("best_of", 1) == drafts


def test_best_of_below_one_is_an_error(word_backend):
    with pytest.raises(TaskError, match="best_of must be at least 1"):
        summarize(word_backend, "Doctor: hi.", best_of=0)


def test_bench_best_of_reports_the_time_ratio_on_shipped_dialogues():
    from assistant import bench_best_of

    ex = NoteExamples(NOTES)
    assert [s for _, s in bench_best_of.sample_dialogues(5, ex)] == ["ALLERGY", "FAM/SOCHX"]
    be = FakeBackend(reply="A two word note here.", delay=0.002)
    result = bench_best_of.run(be, best_of=4, transcripts=2, examples=ex, log=lambda m: None)
    assert result["transcripts"] == 2
    assert result["completion_tokens"] == {"greedy": 2 * 5, "best_of": 2 * 4 * 5}
    assert result["ratio_time_best_of_vs_greedy"] > 2  # four drafts of equal length each time
