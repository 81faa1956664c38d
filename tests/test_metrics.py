"""finetune.metrics on examples whose scores are worked out by hand."""
from __future__ import annotations

import math

import pytest

from finetune import metrics


def test_rouge_identical_and_disjoint():
    same = metrics.rouge(["The patient has a cough."], ["The patient has a cough."])
    assert all(v == pytest.approx(100) for v in same.values())
    none = metrics.rouge(["fever and rash"], ["knee pain"])
    assert all(v == 0 for v in none.values())


def test_rouge_two_of_four_words():
    # unigrams: 2 of 4 shared each way -> F1 50; bigrams: "the cat" is 1 of 3 -> 33.33;
    # longest common subsequence "the cat" = 2 of 4 -> 50.
    s = metrics.rouge(["the cat sat down"], ["the cat ran away"])
    assert s["rouge1"] == pytest.approx(50)
    assert s["rouge2"] == pytest.approx(100 / 3)
    assert s["rougeL"] == pytest.approx(50)


def test_rouge_is_a_per_example_mean_with_stemming():
    s = metrics.rouge(["the cat sat down", "coughing"], ["the cat ran away", "cough"])
    assert s["rouge1"] == pytest.approx((50 + 100) / 2)


def test_the_mediqa_chat_setting_neither_stems_nor_splits_sentences():
    # MEDIQA-Chat's script: Hugging Face evaluate's rouge with its defaults (no stemmer).
    s = metrics.rouge(["the cat sat down", "coughing"], ["the cat ran away", "cough"])
    assert s["mediqa_rouge1"] == pytest.approx((50 + 0) / 2)
    s = metrics.rouge(["b c. a b."], ["a b. b c."])
    assert s["mediqa_rougeLsum"] == pytest.approx(s["mediqa_rougeL"]) and s["mediqa_rougeL"] < 100


def test_rouge_lsum_splits_sentences():
    assert metrics.sentences_per_line("No fever. No rash!\nDenies pain.") == "No fever.\nNo rash!\nDenies pain."
    # Summary-level LCS over sentences: order of the sentences does not matter, unlike ROUGE-L.
    s = metrics.rouge(["b c. a b."], ["a b. b c."])
    assert s["rougeLsum"] == pytest.approx(100)
    assert s["rougeL"] < 100


def test_pubmedqa_label_and_accuracy():
    assert metrics.pubmedqa_label("Yes, it does.") == "yes"
    assert metrics.pubmedqa_label("  Maybe. The data are mixed") == "maybe"
    assert metrics.pubmedqa_label("No.") == "no"
    assert metrics.pubmedqa_label("The answer is yes") == "unknown"
    assert metrics.pubmedqa_label("Noted.") == "unknown"
    assert metrics.pubmedqa_label("") == "unknown"
    assert metrics.accuracy(["yes", "no", "unknown"], ["yes", "yes", "no"]) == pytest.approx(100 / 3)


def test_perplexity_counts_reference_tokens_only(tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a cold?"},
                {"role": "assistant", "content": "A mild viral infection."}]
    nll, n = metrics.reference_nll(model, tok, messages)
    reply = tok("A mild viral infection.", add_special_tokens=False)["input_ids"]
    assert n == len(reply)
    # the same sum computed from a plain forward pass over prompt + reply
    prompt = tok.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    ids = torch.tensor([prompt + reply])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    expected = -sum(float(logp[len(prompt) + i - 1, t]) for i, t in enumerate(reply))
    assert nll == pytest.approx(expected, rel=1e-4)
    # a longer prompt changes what is conditioned on, not what is counted
    longer = [{"role": "system", "content": "Be brief and kind and careful."}, *messages[1:]]
    assert metrics.reference_nll(model, tok, longer)[1] == n
    result = metrics.perplexity(model, tok, [{"messages": messages}, {"messages": longer}])
    assert result["tokens"] == 2 * n and result["ppl"] == pytest.approx(math.exp(result["nll"]))
