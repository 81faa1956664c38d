"""The task layer: prompts from files, chunked summarization without
truncation, conversation trimming."""
from __future__ import annotations

import pytest

from assistant import prompts
from assistant.tasks import TaskError, answer, split_to_fit, summarize, summary_messages, summary_options
from fakes import FakeBackend


def transcript(turns: int) -> str:
    return "\n".join(f"{'Doctor' if i % 2 == 0 else 'Patient'}: turn{i} about symptom{i} today."
                     for i in range(turns))


def test_summary_prompt_comes_from_the_template_file():
    msgs = summary_messages("Doctor: Hi.\nPatient: Hello.", "GENHX")
    assert msgs[0]["content"] == prompts.template("system")
    assert "'History of Present Illness' section" in msgs[1]["content"]
    assert msgs[1]["content"].endswith("Doctor: Hi.\nPatient: Hello.")


def test_a_whole_visit_is_written_section_by_section():
    # The model was tuned on section prompts only; a whole visit is written one section at a
    # time (assistant/visit_notes.py), a long section's turns chunked as any transcript.
    be = FakeBackend(reply=lambda msgs: "partial summary", context_length=400)
    summarize(be, transcript(120))
    assert len(be.prompts) > 2
    asked = [m[1]["content"] for m in be.prompts]
    assert any("'Chief Complaint' section" in p for p in asked)
    assert any("'History of Present Illness' section" in p for p in asked)


def test_short_transcript_is_one_call(word_backend):
    result = summarize(word_backend, transcript(6), "PLAN")
    assert result.parts == 1
    assert len(word_backend.prompts) == 1
    assert result.text == "a short reply from the fake model"
    assert result.stats.completion_tokens == 7


def test_long_transcript_is_chunked_and_merged_without_losing_a_turn():
    be = FakeBackend(reply=lambda msgs: "partial summary", context_length=400)
    text = transcript(120)  # ~840 words: needs several parts
    result = summarize(be, text, "GENHX")
    part_prompts = [m[1]["content"] for m in be.prompts if "This is part" in m[1]["content"]]
    merge_prompts = [m[1]["content"] for m in be.prompts if "Combine them" in m[1]["content"]]
    assert len(part_prompts) >= 3 and merge_prompts
    for line in text.splitlines():  # every turn reached the model, none cut
        assert sum(line in p for p in part_prompts) == 1
    for p in be.prompts:
        assert be.prompt_tokens(p) + 256 <= be.context_length
    assert result.parts == len(be.prompts)
    assert result.stats.completion_tokens == 2 * len(be.prompts)


def test_merge_recurses_when_partial_summaries_do_not_fit_one_prompt():
    be = FakeBackend(reply=lambda msgs: " ".join(["fact"] * 40), context_length=420)
    result = summarize(be, transcript(300), "GENHX")
    merges = [m for m in be.prompts if "Combine them" in m[1]["content"]]
    assert len(merges) >= 2  # groups merged first, then the merged results
    assert result.text.startswith("fact")


def test_single_huge_turn_is_split_at_sentences():
    be = FakeBackend(context_length=300)
    turn = "Patient: " + " ".join(f"Sentence number {i} is here." for i in range(80))
    pieces = split_to_fit(turn, 40, be.count_tokens)
    assert all(be.count_tokens(p) <= 40 for p in pieces)
    assert " ".join(pieces).split() == turn.split()


def test_empty_transcript_is_an_error(word_backend):
    with pytest.raises(TaskError, match="empty"):
        summarize(word_backend, "  \n ")


def test_answer_keeps_history_and_trims_oldest_turns():
    be = FakeBackend(context_length=300)
    history = []
    for i in range(20):
        history += [{"role": "user", "content": f"question {i} " + "x " * 10},
                    {"role": "assistant", "content": f"answer {i} " + "y " * 10}]
    answer(be, "latest question?", history, grounded=False, safety=False)
    sent = be.prompts[-1]
    assert sent[-1]["content"] == "latest question?"
    assert sent[0]["role"] == "system"
    assert "question 19" in sent[-3]["content"]
    assert not any("question 0 " in m["content"] for m in sent)
    assert sent[1]["role"] == "user"  # whole exchanges are dropped
    # A history that starts with a reply (a greeting shown first) still never loses the question.
    answer(be, "latest question?", [{"role": "assistant", "content": "Hello! " + "z " * 300}], grounded=False,
           safety=False)
    assert [m["role"] for m in be.prompts[-1]] == ["system", "user"]
    assert be.prompts[-1][-1]["content"] == "latest question?"


def test_answer_streams_through_callback(word_backend):
    seen = []
    result = answer(word_backend, "What is a fever?", on_text=seen.append)
    assert "".join(seen) == result.text


def test_empty_question_is_an_error(word_backend):
    with pytest.raises(TaskError):
        answer(word_backend, "   ")


def test_a_reply_length_that_fills_the_context_is_named_before_any_generation():
    backend = FakeBackend(reply="x", context_length=512)
    with pytest.raises(TaskError, match="a reply of up to 600 tokens leaves no room .* 512-token context"):
        summarize(backend, "Doctor: hi.\nPatient: cough.", "GENHX", options=summary_options(max_tokens=600))
    assert not backend.prompts


def test_a_question_too_long_for_the_context_is_refused_plainly():
    backend = FakeBackend(reply="x", context_length=512)
    with pytest.raises(TaskError, match=r"the question is too long for the model \(2000 words\).*shorten it"):
        answer(backend, "pain " * 2000, grounded=False)
    assert not backend.prompts


def test_splitting_counts_each_turn_once_not_the_growing_chunk():
    be = FakeBackend()
    calls = []

    def count(text):
        calls.append(text)
        return be.count_tokens(text)

    text = transcript(2000)
    pieces = split_to_fit(text, 300, count)
    assert all(be.count_tokens(p) <= 300 for p in pieces)
    assert "\n".join(pieces).splitlines() == text.splitlines()
    assert len(calls) < 3 * 2000  # linear in the turns; re-counting each chunk as it grew was quadratic


def test_part_summaries_are_kept_short_enough_to_merge_and_a_part_cut_at_the_limit_is_reported():
    be = FakeBackend(reply=lambda msgs: " ".join(["fact"] * 500), context_length=600)
    result = summarize(be, transcript(200), "GENHX", options=summary_options(max_tokens=256))
    part_limits = [o.max_tokens for o, m in zip(be.options, be.prompts) if "This is part" in m[1]["content"]]
    assert part_limits and max(part_limits) < 256  # two of them fit one merge prompt
    assert result.stats.finish_reason == "length"  # every call ran to its limit, the parts included


def test_a_cancel_during_the_merge_keeps_the_part_summaries_and_starts_no_further_call():
    from assistant.backends.base import CancelToken

    be = FakeBackend(reply=lambda msgs: "part summary", context_length=400)
    token = CancelToken()

    def progress(stage, done, total):
        if stage == "part" and done == total:
            token.cancel()  # Esc just as the merge begins

    result = summarize(be, transcript(120), "GENHX", cancel=token, on_progress=progress)
    assert result.cancelled and result.text.startswith("part summary\npart summary")
    assert not [m for m in be.prompts if "Combine them" in m[1]["content"]]


def test_section_titles_are_the_trained_ones_whatever_the_case_and_templates_take_exactly_their_fields():
    assert prompts.section_title("allergies") == prompts.section_title("ALLERGY") == "Allergies"
    assert prompts.section_title("history of present illness") == "History of Present Illness"
    assert prompts.section_title("Wound care") == "Wound care"  # free text passes through
    with pytest.raises(ValueError, match="takes \\['section', 'summaries'\\], was given \\['section'\\]"):
        prompts.render("merge", section="Plan")


def test_chunks_are_filled_by_what_a_joiner_costs_and_turns_stay_whole_when_the_estimate_is_short():
    be = FakeBackend()
    words = " ".join(f"word{i}" for i in range(1500))  # one unpunctuated turn, as speech-to-text writes
    assert len(split_to_fit(words, 300, be.count_tokens)) == 5  # a space costs nothing here: chunks fill up

    def newline_costs_two(text):  # a tokenizer for which joining lines costs more than one token
        return be.count_tokens(text) + 2 * text.count("\n")

    text = transcript(60)
    pieces = split_to_fit(text, 40, newline_costs_two)
    assert all(newline_costs_two(p) <= 40 for p in pieces)
    assert [line for p in pieces for line in p.splitlines()] == text.splitlines()  # every turn whole


def test_a_cancel_in_a_merge_round_keeps_what_was_not_merged_yet():
    from assistant.backends.base import CancelToken

    token = CancelToken()
    merges = []

    def reply(msgs):
        if "Combine them" in msgs[1]["content"]:
            merges.append(1)
            if len(merges) == 2:
                token.cancel()  # Esc during the second merge of the first round
            return "merged"
        return "partsummary " + " ".join(["fact"] * 40)

    be = FakeBackend(reply=reply, context_length=420)
    result = summarize(be, transcript(300), "GENHX", cancel=token)
    parts = sum("This is part" in m[1]["content"] for m in be.prompts)
    first_merge = next(m[1]["content"] for m in be.prompts if "Combine them" in m[1]["content"])
    kept = result.text.count("partsummary")  # every part summary starts so
    assert result.cancelled and result.text.startswith("merged\n")
    # the first merge's result, then every summary it did not cover, the cancelled group's included
    assert kept == parts - first_merge.count("Part ") and "merged" not in result.text[len("merged"):]


def test_a_cancel_between_two_parts_is_reported_as_cancelled():
    from assistant.backends.base import CancelToken

    token = CancelToken()
    be = FakeBackend(reply=lambda msgs: "part summary", context_length=400)
    result = summarize(be, transcript(120), "GENHX", cancel=token,
                       on_progress=lambda stage, done, total: token.cancel() if stage == "part" and done == 1 else None)
    assert result.cancelled and result.text == "part summary" and len(be.prompts) == 1


def test_a_chunk_over_its_estimate_gives_back_only_what_it_must():
    import re

    def count(text):  # like byte-level BPE: a space before a number costs a token of its own
        return len(text.split()) + len(re.findall(r" \d", text))

    numbers = " ".join(str(100 + i) for i in range(1000))  # one long line of figures
    pieces = split_to_fit(numbers, 300, count)
    assert all(count(p) <= 300 for p in pieces) and " ".join(pieces) == numbers
    assert len(pieces) <= 8  # about 2,000 tokens in chunks of 300; halving over-full chunks took 13


def test_text_that_is_not_utf8_is_a_task_error_not_a_crash(word_backend):
    # What Python makes of a command-line argument holding the bytes ff fe.
    question = b"what is \xff\xfe asthma".decode("utf-8", "surrogateescape")
    with pytest.raises(TaskError, match="question is not valid text: character 9 is not UTF-8"):
        answer(word_backend, question, grounded=False)
    with pytest.raises(TaskError, match="transcript is not valid text"):
        summarize(word_backend, "Doctor: hi \ud83d")
