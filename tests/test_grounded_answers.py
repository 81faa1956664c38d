"""Grounded, safe answers through the task layer: triage first, retrieval,
sources, the "I don't know" path, and the batch output keys."""
from __future__ import annotations

import gzip
import json

import pytest
from click.testing import CliRunner

from assistant import cli as cli_module
from assistant import prompts
from assistant.cli import cli
from assistant.backends.base import GenerationOptions
from assistant.knowledge import KnowledgeBase
from assistant.tasks import answer
from fakes import FakeBackend

PASSAGES = [
    {"id": 0, "doc_id": "NEI/glaucoma", "source": "NEI", "url": "https://example.org/glaucoma",
     "focus": "Glaucoma", "qtype": "symptoms", "title": "Glaucoma: symptoms",
     "text": "Glaucoma often has no early symptoms. Over time side vision is slowly lost."},
    {"id": 1, "doc_id": "NIDDK/diabetes", "source": "NIDDK", "url": "https://example.org/diabetes",
     "focus": "Diabetes", "qtype": "treatment", "title": "Diabetes: treatment",
     "text": "Type 2 diabetes is managed with healthy eating, physical activity and sometimes metformin."},
]


@pytest.fixture
def kb(tmp_path):
    path = tmp_path / "kb.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for p in PASSAGES:
            f.write(json.dumps(p) + "\n")
    return KnowledgeBase(path, cache_dir=tmp_path / "cache", min_coverage=0.5)


def test_health_question_is_grounded_and_cites_its_source(kb):
    be = FakeBackend(reply="It often has no early symptoms.")
    result = answer(be, "What are the symptoms of glaucoma?", knowledge=kb)
    prompt = be.prompts[0][-1]["content"]
    assert "[1] Glaucoma: symptoms\nGlaucoma often has no early symptoms." in prompt
    assert prompt.endswith("Question: What are the symptoms of glaucoma?")
    assert "Diabetes" not in prompt  # an irrelevant passage is not offered
    assert result.meta == {"triage": "none", "grounded": True, "grounding": "full",
                           "sources": [{"title": "Glaucoma: symptoms", "url": "https://example.org/glaucoma"}]}


def test_an_answer_is_grounded_in_one_page(tmp_path):
    from assistant.tasks import GROUNDING_PASSAGES, retrieve_grounding

    page = {"source": "NEI", "url": "https://example.org/glaucoma", "focus": "Glaucoma"}
    rows = [{"id": i, "doc_id": "NEI/glaucoma", "title": "Glaucoma: treatment", **page,
             "text": f"Glaucoma treatment, part {i}: eye drops lower the pressure in the eye."} for i in range(3)]
    rows.append({"id": 3, "doc_id": "GARD/glaucoma", "source": "GARD", "url": "https://example.org/gard-glaucoma",
                 "focus": "Glaucoma", "title": "Glaucoma: information",
                 "text": "Glaucoma damages the optic nerve; eye drops or surgery lower the eye pressure."})
    rows += [{**p, "id": 4 + i} for i, p in enumerate(PASSAGES[1:])]  # unrelated pages give BM25 its IDF
    path = tmp_path / "kb.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    kb = KnowledgeBase(path, cache_dir=tmp_path / "cache", min_coverage=0.3)
    everything = kb.search("glaucoma treatment with eye drops", k=4)
    assert len({h.url for h in everything}) == 2  # the other page is relevant too
    hits = retrieve_grounding(kb, "glaucoma treatment with eye drops")
    assert len(hits) == GROUNDING_PASSAGES and {h.url for h in hits} == {everything[0].url}
    assert retrieve_grounding(kb, "Which football team won the cup in 1966?") is None

    # a context too small for every passage: the least relevant are left out, not the question
    from assistant.tasks import grounded_answer_messages

    question = "glaucoma treatment with eye drops"
    sizes = [FakeBackend().prompt_tokens(grounded_answer_messages(question, hits[:n])) for n in (1, len(hits))]
    be = FakeBackend(reply="Eye drops.", context_length=sizes[0] + 20 + 1)
    result = answer(be, question, knowledge=kb, options=GenerationOptions(max_tokens=20))
    assert result.text == "Eye drops." and result.meta["grounded"] and sizes[0] < sizes[1]
    assert "[1] Glaucoma: treatment" in be.prompts[0][-1]["content"] and "[2]" not in be.prompts[0][-1]["content"]


def test_nothing_relevant_means_i_do_not_know_without_asking_the_model(kb):
    be = FakeBackend()
    streamed = []
    result = answer(be, "Which football team won the cup in 1966?", knowledge=kb, on_text=streamed.append)
    assert be.prompts == []
    assert result.text == prompts.template("dont_know") == "".join(streamed)
    assert result.meta["sources"] == [] and result.meta["grounded"] is False


@pytest.mark.parametrize("message, level", [
    ("My dad's face is drooping and he can't lift his arm", "emergency"),
    ("i want to end my life", "crisis"),
])
def test_emergencies_get_the_fixed_message_before_any_model_output(kb, message, level):
    be = FakeBackend()
    streamed = []
    result = answer(be, message, knowledge=kb, on_text=streamed.append)
    assert be.prompts == []  # the model is never asked
    assert result.meta["triage"] == level
    assert streamed == [result.text]
    assert ("988" if level == "crisis" else "911") in result.text


def test_educational_question_about_stroke_is_not_an_alarm(kb):
    result = answer(FakeBackend(), "What are the risk factors for stroke?", knowledge=kb)
    assert result.meta["triage"] == "none"


def test_prescription_request_gets_general_information_and_a_referral(kb):
    be = FakeBackend(reply="Metformin is a common medicine.")
    result = answer(be, "Can you prescribe me metformin for my type 2 diabetes?", knowledge=kb)
    assert be.prompts, "general information still comes from the model"
    assert result.meta["scope"] == "prescription"
    assert result.text.startswith("Metformin is a common medicine.")
    assert "pharmacist" in result.text.split("\n\n")[-1]


@pytest.mark.parametrize("text, small", [
    ("hello", True), ("Hi! How are you today?", True), ("Thanks, bye.", True),
    ("Hello, what causes glaucoma?", False), ("Hi. My knee hurts when I run.", False),
    ("Hello, what is flu?", False), ("thanks, is it contagious?", False),
    ("hello, I have cancer", False), ("hey I have chest pain", False), ("hi, I feel sick", False),
    ("Thanks, I appreciate it", True), ("thanks, have a nice day", True), ("Hi, I'm Sam", True),
    ("Okay, got it, thanks!", True), ("ok I have hiv", False),
    ("ok, aspirin for kids?", False), ("hello, diabetes?", False), ("Okay, and for children?", False),
    ("Hi, who are you?", True),
    # a health statement after a greeting is a health message, not a greeting
    ("hi, I am dizzy", False), ("hello, I feel faint", False), ("ok, I am pregnant", False),
    ("hello, I am bleeding", False), ("Thanks, I'm feeling better", True),
])
def test_small_talk_detection(text, small):
    from assistant.tasks import is_small_talk

    assert is_small_talk(text) is small


def test_an_emergency_stays_on_for_the_questions_that_follow_it(kb):
    be = FakeBackend(reply="Wait and see.")
    first = "My dad's face is drooping and he can't lift his arm"
    assert answer(be, first, knowledge=kb).meta["triage"] == "emergency"
    history = [{"role": "user", "content": first}, {"role": "assistant", "content": "Call 911."}]
    for follow_up in ("Should I wait until morning?", "Is it a stroke?", "he also cannot speak"):
        result = answer(be, follow_up, history, knowledge=kb)
        assert result.meta["triage"] == "emergency" and "911" in result.text, follow_up
    assert not be.prompts  # the model was never asked
    assert answer(be, "thanks", history, knowledge=kb).meta["triage"] == "none"  # small talk is small talk


@pytest.mark.parametrize("first, then", [
    ("my baby has a fever of 38.5", "she is 3 weeks old"),
    ("my chest hurts", "now it's spreading to my left arm and I'm sweating"),
    ("I'm allergic to peanuts and I ate some", "now my throat feels tight"),
    ("my baby is 2 weeks old and not well", "fever too"),  # the first one's "not" stays in it
])
def test_an_emergency_told_in_two_messages_is_one(kb, first, then):
    be = FakeBackend(reply="Rest.")
    assert answer(be, first, knowledge=kb).meta["triage"] == "none"  # not yet an emergency alone
    history = [{"role": "user", "content": first}, {"role": "assistant", "content": "Rest."}]
    result = answer(be, then, history, knowledge=kb)
    assert result.meta["triage"] == "emergency" and "911" in result.text
    assert len(be.prompts) <= 1  # the model answered the first message only


def test_a_follow_up_is_looked_up_alone_first_and_with_the_last_question_when_it_says_too_little(kb):
    be = FakeBackend(reply="An answer.")
    history = [{"role": "user", "content": "What are the symptoms of glaucoma?"},
               {"role": "assistant", "content": "Often none early."}, {"role": "user", "content": "Thanks!"},
               {"role": "assistant", "content": "You're welcome."}]
    # Standing alone, it keeps its own topic rather than the previous one.
    result = answer(be, "How is type 2 diabetes treated?", history, knowledge=kb)
    assert [s["title"] for s in result.meta["sources"]] == ["Diabetes: treatment"]
    # Saying too little, it is read with the last question looked up (not the "Thanks!").
    result = answer(be, "Does it get worse over time?", history, knowledge=kb)
    assert [s["title"] for s in result.meta["sources"]] == ["Glaucoma: symptoms"]


def test_a_story_then_a_question_is_answered_on_the_question(kb):
    story = ("My grandmother is 80 and lives alone, she reads a lot and walks to the market every day, "
             "her neighbour helps with the shopping. What are the symptoms of glaucoma?")
    result = answer(FakeBackend(reply="An answer."), story, knowledge=kb)
    assert [s["title"] for s in result.meta["sources"]] == ["Glaucoma: symptoms"]


def test_accented_words_find_their_page(tmp_path):
    path = tmp_path / "kb.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"id": 0, "doc_id": "GARD/sjogren", "source": "GARD", "url": "https://example.org/s",
                            "focus": "Sjogren syndrome", "qtype": "information", "title": "Sjogren syndrome",
                            "text": "Sjogren syndrome is an autoimmune disorder with dry eyes and mouth."}) + "\n")
    kb = KnowledgeBase(path, cache_dir=tmp_path / "cache", min_coverage=0.5)
    result = answer(FakeBackend(reply="An answer."), "What is Sjögren syndrome?", knowledge=kb)
    assert [s["title"] for s in result.meta["sources"]] == ["Sjogren syndrome"]


def test_small_talk_is_answered_without_the_library(kb):
    be = FakeBackend(reply="Hello! How can I help?")
    result = answer(be, "hello", knowledge=kb)
    assert result.text == "Hello! How can I help?" and result.meta["grounded"] is False
    assert "Question:" not in be.prompts[0][-1]["content"]


def test_batch_answers_carry_triage_and_sources(tmp_path, kb, monkeypatch):
    be = FakeBackend(reply="Side vision is lost slowly.")
    monkeypatch.setattr(cli_module, "load_backend", lambda *a, **k: be)
    monkeypatch.setattr(KnowledgeBase, "default", classmethod(lambda cls: kb))
    src = tmp_path / "q.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"id": "g", "question": "What are the symptoms of glaucoma?"},
        {"id": "e", "question": "my baby is 3 weeks old and has a fever of 38.5"},
        {"id": "u", "question": "Who won the cup in 1966?"},
    ]) + "\n")
    out = tmp_path / "a.jsonl"
    result = CliRunner().invoke(cli, ["ask", "--input", str(src), "--output", str(out), "--no-log"])
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["g"]["triage"] == "none"
    assert rows["g"]["sources"] == [{"title": "Glaucoma: symptoms", "url": "https://example.org/glaucoma"}]
    assert rows["e"]["triage"] == "emergency" and rows["e"]["sources"] == []
    assert rows["u"]["sources"] == [] and "don't know" in rows["u"]["answer"]


def test_building_grounded_data_checks_every_split_before_rewriting_any(tmp_path):
    from finetune import grounded_data

    (tmp_path / "grounded-train.jsonl").write_text('{"kept": true}\n')
    (tmp_path / "train.jsonl").write_text('{"id": "medquad/1"}\n{broken\n')
    with pytest.raises(SystemExit, match=r"train\.jsonl:2: malformed JSON"):
        grounded_data.main(["--data", str(tmp_path)])
    (tmp_path / "train.jsonl").write_text('{"id": "medquad/1"}\n')
    with pytest.raises(SystemExit, match=r"valid\.jsonl: not found"):
        grounded_data.main(["--data", str(tmp_path)])
    assert (tmp_path / "grounded-train.jsonl").read_text() == '{"kept": true}\n'


def test_a_follow_up_asking_for_a_section_reads_that_section_of_the_page_before():
    from assistant.knowledge import KnowledgeBase

    kb = KnowledgeBase.default()
    be = FakeBackend(reply="An answer.")
    # (alone, "How is it treated?" finds "What I need to know about Kidney Failure and How Its Treated")
    history = [{"role": "user", "content": "What are the symptoms of lupus?"}, {"role": "assistant", "content": "..."}]
    result = answer(be, "How is it treated?", history, knowledge=kb)
    assert [s["title"] for s in result.meta["sources"]] == ["Lupus: treatment"]
    assert "[1] Lupus: treatment" in be.prompts[-1][-1]["content"]
    # a longer question naming its own topic is not taken for a follow-up of lupus
    result = answer(be, "What is the treatment for type 2 diabetes, is it insulin?", history, knowledge=kb)
    assert "lupus" not in str(result.meta["sources"]).lower()
