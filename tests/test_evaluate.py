"""finetune.evaluate end to end on a canned-text backend and a tiny data set."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from assistant.backends.base import Backend, GenerationOptions, GenerationStats
from assistant import tasks
from assistant.tasks import answer_messages, summary_messages
from finetune import evaluate, formats
from finetune.sources import record


class CannedBackend(Backend):
    """Replies with `replies[<text in the prompt>]`, one word per token, at exactly 50 tokens/s."""

    name = "canned"
    model_name = "canned-model"

    def __init__(self, replies: dict[str, str]):
        self.replies = replies
        self.prompts: list[list[dict]] = []
        self.options: list[GenerationOptions | None] = []

    @property
    def context_length(self) -> int:
        return 4096

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def prompt_tokens(self, messages) -> int:
        return sum(len(m["content"].split()) for m in messages)

    def stream(self, messages, options: GenerationOptions | None = None, cancel=None):
        self.prompts.append(list(messages))
        self.options.append(options)
        prompt = messages[-1]["content"]
        reply = next((r for key, r in self.replies.items() if key in prompt), "nothing relevant")
        words = reply.split()[:(options or GenerationOptions()).max_tokens]
        self.last_stats = GenerationStats(prompt_tokens=self.prompt_tokens(messages), completion_tokens=len(words),
                                          ttft_s=0.1, total_s=0.1 + (len(words) - 1) / 50, finish_reason="stop")
        yield " ".join(words)


def _rec(id, task, source, split, prompt, reference, key, inputs, **meta):
    return record(id=id, task=task, source=source, licence="CC BY 4.0", split=split, prompt=prompt,
                  reference=reference, key_text=key, inputs=inputs, **meta)


@pytest.fixture
def data(tmp_path) -> Path:
    d1, d2 = "Doctor: Any pain?\nPatient: My knee hurts.", "Doctor: Allergies?\nPatient: Penicillin."
    ctx = ["RESULTS: It helped."]
    test = [
        _rec("mts-dialog/test1/0", "summarize", "mts-dialog", "test", summary_messages(d1, "CC"), "Knee pain.", d1,
             {"dialogue": d1, "section": "CC"}, suite="mts-test1"),
        _rec("mts-dialog/test1/1", "summarize", "mts-dialog", "test", summary_messages(d2, "ALLERGY"),
             "Allergic to penicillin.", d2, {"dialogue": d2, "section": "ALLERGY"}, suite="mts-test1"),
        _rec("mts-dialog/test2/0", "summarize", "mts-dialog", "test", summary_messages(d2, "ALLERGY"),
             "Penicillin.", d2, {"dialogue": d2, "section": "ALLERGY"}, suite="mts-test2"),
        _rec("pubmedqa/test/1", "pubmedqa", "pubmedqa", "test", formats.pubmedqa_messages("Does A work?", ctx),
             "Yes. A works.", "Does A work?", {"question": "Does A work?", "contexts": ctx}, label="yes", suite="pubmedqa"),
        _rec("pubmedqa/test/2", "pubmedqa", "pubmedqa", "test", formats.pubmedqa_messages("Does B work?", ctx),
             "No. B fails.", "Does B work?", {"question": "Does B work?", "contexts": ctx}, label="no", suite="pubmedqa"),
        _rec("meqsum/test/1", "question_summary", "meqsum", "test", formats.question_summary_messages("who makes x?"),
             "Who makes x?", "who makes x?", {"question": "who makes x?"}, suite="meqsum"),
        _rec("medquad/test/1", "answer", "medquad", "test", answer_messages("What is gout?"),
             "Gout is arthritis.", "What is gout?", {"question": "What is gout?"}, suite="medquad"),
        _rec("aci-bench/test/V1/plan", "summarize", "aci-bench", "test", summary_messages(d1, "Assessment and Plan"),
             "Knee pain. Rest.", d1, {"dialogue": d1, "section": "Assessment and Plan"}),
        _rec("aci-bench/test/V1/subjective", "summarize", "aci-bench", "test", summary_messages(d1, "Subjective"),
             "Knee hurts.", d1, {"dialogue": d1, "section": "Subjective"}),
    ]
    d3 = "Doctor: Where does it hurt?\nPatient: My knee hurts when I climb stairs."
    valid = [_rec("medquad/valid/1", "answer", "medquad", "valid", answer_messages("What is flu?"),
                  "Flu is a viral infection.", "What is flu?", {"question": "What is flu?"}),
             _rec("mts-dialog/valid/0", "summarize", "mts-dialog", "valid", summary_messages(d3, "CC"),
                  "Knee pain on stairs.", d3, {"dialogue": d3, "section": "CC"}),
             _rec("aci-bench/valid/V2/subjective", "summarize", "aci-bench", "valid",
                  summary_messages(d3, "Subjective"), "Knee pain when climbing stairs.", d3,
                  {"dialogue": d3, "section": "Subjective"})]
    out = tmp_path / "data"
    out.mkdir()
    for name, rows in (("test", test), ("valid", valid)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


REPLIES = {
    "knee hurts": "Knee pain.",  # exact: 100
    "Penicillin": "Headache.",  # disjoint: 0
    "Does A work": "Yes, it does.",  # right label
    "Does B work": "Maybe.",  # wrong label
    "who makes x": "Who makes x?",
    "gout": "Gout is a kind of arthritis.",
}


def out_predictions(out: Path) -> list[str]:
    return out.with_suffix(".predictions.jsonl").read_text(encoding="utf-8").splitlines()


def _run(data: Path, out: Path, *extra: str, backend=None):
    args = evaluate.parser().parse_args(["--data", str(data), "--out", str(out), *extra])
    args.argv = []
    backend = backend or CannedBackend(REPLIES)
    return evaluate.evaluate(args, backend=backend), backend


def test_end_to_end_metrics_and_outputs(data, tmp_path):
    out = tmp_path / "runs" / "eval" / "canned.json"
    result, backend = _run(data, out, "--suites", "mts-test1,pubmedqa,meqsum,medquad", "--label", "canned")
    saved = json.loads(out.read_text())
    assert saved == result
    s = saved["suites"]
    assert s["mts-test1"]["n"] == 2 and s["mts-test1"]["rouge1"] == pytest.approx(50)  # mean of 100 and 0
    assert s["pubmedqa"]["accuracy"] == pytest.approx(50)
    assert s["pubmedqa"]["predicted_labels"] == {"yes": 1, "maybe": 1}
    assert s["meqsum"]["rouge1"] == pytest.approx(100)
    assert 0 < s["medquad"]["rouge1"] < 100
    assert "mts-test2" not in s and not saved["limited"]
    assert saved["decode_tokens_per_s"] == pytest.approx(50)
    assert saved["machine"]["cpu"] and saved["machine"]["logical_cpus"] >= 1
    assert "llama_cpp_features" not in saved["machine"]  # a canned backend, not llama.cpp
    # the runtime's prompts: system prompt plus the readable section title
    first = backend.prompts[0]
    assert first[0]["role"] == "system" and "'Chief Complaint'" in first[-1]["content"]

    preds = [json.loads(l) for l in out.with_suffix(".predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds][:2] == ["mts-dialog/test1/0", "mts-dialog/test1/1"]
    assert preds[0]["prediction"] == "Knee pain." and preds[0]["rouge"]["rouge1"] == 100

    summary = (out.parent / "summary.md").read_text().splitlines()
    assert summary[0].startswith("| label |") and len(summary) == 3
    assert "| canned |" in summary[2] and "50.0 / 50.0 / 50.0" in summary[2] and "| 50.0 |" in summary[2]


def test_mts_valid_suite_reads_the_validation_split_only(data, tmp_path):
    result, backend = _run(data, tmp_path / "valid.json", "--suites", "mts-valid")
    s = result["suites"]
    assert list(s) == ["mts-valid"] and s["mts-valid"]["n"] == 1
    assert s["mts-valid"]["rouge1"] == pytest.approx(200 / 3, abs=0.01)  # P 2/2, R 2/4 ("Knee pain on stairs.")
    assert len(backend.prompts) == tasks.SUMMARY_BEST_OF  # the app's drafts, all of one prompt
    assert all("climb stairs" in p[-1]["content"] for p in backend.prompts)


def test_aci_suites_keep_their_splits_apart_and_are_greedy_by_default(data, tmp_path):
    result, backend = _run(data, tmp_path / "aci.json", "--suites", "aci,aci-valid,mts-valid")
    s = result["suites"]
    assert s["aci"]["n"] == 2 and s["aci-valid"]["n"] == 1
    preds = [json.loads(l) for l in out_predictions(tmp_path / "aci.json")]
    assert [p["id"] for p in preds if p["suite"] == "aci"] == ["aci-bench/test/V1/plan", "aci-bench/test/V1/subjective"]
    assert [p["id"] for p in preds if p["suite"] == "aci-valid"] == ["aci-bench/valid/V2/subjective"]
    # whole-visit sections get one greedy draft; the MTS-Dialog section gets the app's drafts
    assert len(backend.prompts) == 2 + 1 + tasks.SUMMARY_BEST_OF
    assert result["decoding"]["summary_best_of"] == "per section" and not result["decoding"]["greedy"]
    result, backend = _run(data, tmp_path / "aci9.json", "--suites", "aci-valid", "--best-of", "3")
    assert len(backend.prompts) == 3 and result["decoding"]["summary_best_of"] == 3
    result, _ = _run(data, tmp_path / "aci1.json", "--suites", "aci-valid")
    assert result["decoding"]["greedy"]


def test_visit_suites_summarize_whole_visits_against_their_full_notes(data, tmp_path):
    result, backend = _run(data, tmp_path / "visit.json", "--suites", "aci-visit,aci-visit-valid")
    preds = {p["id"]: p for p in map(json.loads, out_predictions(tmp_path / "visit.json"))}
    assert list(preds) == ["aci-bench/test/V1", "aci-bench/valid/V2"]
    assert preds["aci-bench/test/V1"]["reference"] == "Knee pain. Rest.\n\nKnee hurts."
    # a note by sections: a visit that is all opening is told by its history alone, and
    # nothing in the transcript speaks to the other sections
    assert preds["aci-bench/test/V1"]["prediction"] == "HISTORY OF PRESENT ILLNESS\n\nKnee pain."
    # R1 against the joined note: P 2/6, R 2/5 (stemmed "hurt" is not "pain")
    assert result["suites"]["aci-visit"]["rouge1"] == pytest.approx(100 * 2 * (2 / 6 * 0.4) / (2 / 6 + 0.4), abs=0.01)
    header, _, row = (tmp_path / "summary.md").read_text().splitlines()
    column = [c.strip() for c in header.split("|")].index("ACI visit R1/R2/RL")
    assert [c.strip() for c in row.split("|")][column].startswith("36.4 / ")
    quality, _ = evaluate.bar_values([result])
    assert [q[0] for q in quality] == ["ACI visit R1"]
    # one greedy call per section with something to say, each with that section's prompt
    # ("where does it hurt?" is asked in an examination, too)
    first, second = ("Doctor: Any pain?\nPatient: My knee hurts.",
                     "Doctor: Where does it hurt?\nPatient: My knee hurts when I climb stairs.")
    assert [p[-1]["content"] for p in backend.prompts] == [
        tasks.summary_messages(d, section)[-1]["content"]
        for d, section in ((first, "History of Present Illness"), (second, "History of Present Illness"),
                           (second, "Physical Exam"))]
    assert result["suites"]["aci-visit"]["unsupported"]["before"] == {
        "n": 1, "identity": 0, "identity_pct": 0.0, "medicine": 0, "medicine_pct": 0.0, "number": 0, "number_pct": 0.0}


def test_visit_records_refuse_sections_of_different_transcripts():
    def section(id, dialogue):
        return {"id": id, "reference": "x", "meta": {"inputs": {"dialogue": dialogue, "section": "S"}}}

    with pytest.raises(ValueError, match="aci-bench/test/V1/b"):
        evaluate.visits([section("aci-bench/test/V1/a", "one"), section("aci-bench/test/V1/b", "two")])


def test_bad_data_stops_the_run_before_the_model_and_keeps_earlier_predictions(data, tmp_path):
    out = tmp_path / "eval" / "run.json"
    _run(data, out, "--suites", "meqsum")
    kept = out_predictions(out)
    lines = (data / "test.jsonl").read_text().splitlines()
    (data / "test.jsonl").write_text("\n".join(lines[:2] + ['{"id": "broken",'] + lines[2:]) + "\n")
    with pytest.raises(SystemExit, match=r"cannot build suite meqsum: .*test\.jsonl:3: malformed JSON"):
        _run(data, out, "--suites", "mts-valid,meqsum")
    assert out_predictions(out) == kept
    (data / "test.jsonl").write_text("\n".join(lines[:1] + ['{"id": "x", "source": "meqsum"}'] + lines[1:]) + "\n")
    with pytest.raises(SystemExit, match=r"a record of .*test\.jsonl has no field 'meta'"):
        _run(data, out, "--suites", "meqsum")
    (data / "valid.jsonl").write_text("[1, 2]\n")
    with pytest.raises(SystemExit, match=r"cannot build suite ppl: .*valid\.jsonl:1: expected a JSON object"):
        _run(data, out, "--suites", "ppl")


def test_rows_of_an_older_table_keep_their_figures_under_their_columns(data, tmp_path):
    out = tmp_path / "eval" / "new.json"
    old_columns = [c for c in evaluate._COLUMNS if c != "ACI visit R1/R2/RL"]
    row = {c: "-" for c in old_columns} | {"label": "old", "MeQSum R1/R2/RL": "45.9 / 28.0 / 44.2"}
    out.parent.mkdir(parents=True)
    (out.parent / "summary.md").write_text("| " + " | ".join(old_columns) + " |\n|" + "---|" * len(old_columns)
                                           + "\n| " + " | ".join(row[c] for c in old_columns) + " |\n")
    _run(data, out, "--suites", "meqsum", "--label", "new")
    header, _, old_row, _ = (out.parent / "summary.md").read_text().splitlines()
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")], [c.strip() for c in old_row.strip("|").split("|")]))
    assert cells["MeQSum R1/R2/RL"] == "45.9 / 28.0 / 44.2" and cells["ACI visit R1/R2/RL"] == "-"


def test_summary_rows_are_updated_by_label(data, tmp_path):
    out = tmp_path / "eval" / "a.json"
    _run(data, out, "--suites", "meqsum", "--label", "a")
    _run(data, out.with_name("b.json"), "--suites", "meqsum", "--label", "b")
    _run(data, out, "--suites", "meqsum,mts-test2", "--label", "a")
    rows = (out.parent / "summary.md").read_text().splitlines()[2:]
    assert [r.split("|")[1].strip() for r in rows] == ["a", "b"]
    assert "0.0 / 0.0 / 0.0" in rows[0]  # a's rerun, now with mts-test2
    _run(data, out.with_name("a2.json"), "--suites", "mts-test1", "--label", "a")  # another suite of a, run apart
    rows = (out.parent / "summary.md").read_text().splitlines()[2:]
    assert len(rows) == 2 and "0.0 / 0.0 / 0.0" in rows[0] and "50.0 / 50.0 / 50.0" in rows[0]  # both kept


def test_default_labels_tell_settings_and_adapters_apart(data, tmp_path):
    out = tmp_path / "eval" / "x.json"
    labels = [_run(data, out, "--suites", "meqsum", *extra)[0]["label"] for extra in
              ([], ["--best-of", "1"], ["--repeat-penalty", "1.05"], ["--max-tokens", "50"])]
    assert labels == ["smollm2-135m-instruct", "smollm2-135m-instruct-best1", "smollm2-135m-instruct-rp1.05",
                      "smollm2-135m-instruct-max50"]  # --model, by default the embedded one
    assert evaluate.adapter_name("runs/lr3e-4/final") == "lr3e-4" and evaluate.adapter_name("data/adapters/x") == "x"


def test_a_summary_table_inside_notes_keeps_the_notes(data, tmp_path):
    out = tmp_path / "eval" / "x.json"
    out.parent.mkdir(parents=True)
    (out.parent / "summary.md").write_text("# Runs\n\nNotes above.\n")
    _run(data, out, "--suites", "meqsum", "--label", "one")
    _run(data, out, "--suites", "meqsum", "--label", "two")
    text = (out.parent / "summary.md").read_text()
    assert text.startswith("# Runs\n\nNotes above.\n| label |")
    assert [l.split("|")[1].strip() for l in text.splitlines()[5:]] == ["one", "two"]


def test_limit_and_baseline_prompt(data, tmp_path):
    out = tmp_path / "eval" / "base.json"
    result, backend = _run(data, out, "--suites", "mts-test1", "--limit", "1", "--prompt-style", "baseline")
    assert result["limited"] and result["limit"] == 1 and result["suites"]["mts-test1"]["n"] == 1
    assert result["label"].endswith("baseline-limit1")
    (prompt,) = backend.prompts
    assert prompt == [{"role": "user", "content": "Summarize the following doctor-patient conversation as the 'CC' "
                       "section of a clinical note.\n\nDoctor: Any pain?\nPatient: My knee hurts."}]
    assert result["decoding"]["greedy"] and result["decoding"]["summary_best_of"] == 1


def test_baseline_prompt_is_refused_for_whole_visits(data, tmp_path):
    with pytest.raises(SystemExit, match="aci-visit-valid with --prompt-style runtime"):
        _run(data, tmp_path / "x.json", "--suites", "aci-visit-valid", "--prompt-style", "baseline")
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("option, value", [("--best-of", "0"), ("--limit", "0"), ("--limit", "-1"),
                                           ("--max-tokens", "-3"), ("--threads", "0")])
def test_counts_below_one_are_refused(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit):
        evaluate.parser().parse_args(["--out", str(tmp_path / "x.json"), option, value])
    assert f"{option}: must be at least 1, not {value}" in capsys.readouterr().err


def test_a_run_stopped_half_way_leaves_the_last_complete_run_as_it_was(data, tmp_path):
    out = tmp_path / "eval" / "run.json"
    _run(data, out, "--suites", "mts-test1,meqsum")
    kept, kept_result = out_predictions(out), out.read_text()

    class Failing(CannedBackend):
        def stream(self, messages, options=None, cancel=None):
            if len(self.prompts) == 1:
                raise KeyboardInterrupt
            yield from super().stream(messages, options, cancel)

    with pytest.raises(KeyboardInterrupt):
        _run(data, out, "--suites", "mts-test1,meqsum", "--best-of", "1", backend=Failing(REPLIES))
    assert out_predictions(out) == kept and out.read_text() == kept_result
    assert len(out.with_suffix(".predictions.jsonl.partial").read_text().splitlines()) == 1  # what it got to


def test_a_part_cut_at_the_limit_marks_a_chunked_summary_as_cut(tmp_path):
    class SmallContext(CannedBackend):
        context_length = 150  # words: a 300-word transcript is summarized in parts, then merged

        def stream(self, messages, options=None, cancel=None):
            yield from super().stream(messages, options, cancel)
            if len(self.prompts) == 1:
                self.last_stats.finish_reason = "length"  # the first part; the merge, last, stops

    record = {"id": "long/CC", "task": "summarize", "source": "mts-dialog", "reference": "Knee pain.",
              "meta": {"inputs": {"dialogue": "Patient: my knee hurts. " * 75, "section": "CC"}}}
    backend = evaluate.StatsRecorder(SmallContext(REPLIES))
    with (tmp_path / "p.jsonl").open("w") as predictions:
        scores = evaluate.run_generation(backend, "mts-test1", [record], "runtime", 20, predictions,
                                         evaluate.SummaryDecoding(best_of=1))
    row = json.loads((tmp_path / "p.jsonl").read_text())
    assert row["calls"] > 2 and backend.calls[-1].finish_reason == "stop"
    assert row["finish_reason"] == "length" and scores["hit_max_tokens"] == 1


def test_max_tokens_reaches_the_backend(data, tmp_path):
    result, _ = _run(data, tmp_path / "e" / "short.json", "--suites", "medquad", "--max-tokens", "2")
    assert result["suites"]["medquad"]["mean_completion_tokens"] == 2


def test_summary_repeat_penalty_is_the_apps_unless_given(data, tmp_path):
    drafts = 2 * tasks.SUMMARY_BEST_OF  # two dialogues
    result, backend = _run(data, tmp_path / "e" / "default.json", "--suites", "mts-test1,medquad")
    summaries, answer = backend.options[:drafts], backend.options[drafts]
    assert len(backend.options) == drafts + 1
    assert [o.repeat_penalty for o in summaries] == [tasks.SUMMARY_REPEAT_PENALTY] * drafts
    assert tasks.SUMMARY_REPEAT_PENALTY != 1.0
    assert answer.repeat_penalty == 1.0 and answer.temperature == 0.0  # answers are not summaries
    assert result["decoding"]["summary_repeat_penalty"] == tasks.SUMMARY_REPEAT_PENALTY
    assert result["decoding"]["summary_best_of"] == "per section" and not result["decoding"]["greedy"]
    rows = [json.loads(l) for l in out_predictions(tmp_path / "e" / "default.json")]
    assert rows[0]["calls"] == tasks.SUMMARY_BEST_OF and rows[0]["chosen_draft"] == 0  # canned: all drafts alike
    result, backend = _run(data, tmp_path / "e" / "swept.json", "--suites", "mts-valid", "--repeat-penalty", "1.05",
                           "--best-of", "1")
    assert [o.repeat_penalty for o in backend.options] == [1.05]
    assert result["decoding"]["summary_repeat_penalty"] == 1.05 and result["decoding"]["greedy"]


def test_perplexity_suite(data, tmp_path, tiny_llama_dir):
    out = tmp_path / "eval" / "ppl.json"
    args = evaluate.parser().parse_args(["--model", str(tiny_llama_dir), "--data", str(data), "--out", str(out),
                                         "--suites", "ppl", "--label", "tiny"])
    args.argv = []
    result = evaluate.evaluate(args)
    ppl = result["suites"]["ppl"]
    assert ppl["tokens"] > 0 and ppl["ppl"] > 1 and set(ppl["by_source"]) == {"medquad", "mts-dialog", "aci-bench"}
    assert result["size"]["model_bytes"] > 0


def test_plot(data, tmp_path):
    out = tmp_path / "eval" / "x.json"
    _run(data, out, "--suites", "mts-test1,pubmedqa", "--label", "x")
    _run(data, out.with_name("y.json"), "--suites", "mts-test1", "--label", "y")
    png = tmp_path / "eval.png"
    assert evaluate.main(["plot", str(out), str(out.with_name("y.json")), "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    for wrong in (out.with_suffix(".predictions.jsonl"), data / "test.jsonl"):
        with pytest.raises(SystemExit, match=f"{wrong.name}: not a result of finetune.evaluate"):
            evaluate.main(["plot", str(out), str(wrong), "--out", str(png)])


def test_a_suite_two_runs_of_one_model_hold_is_named(capsys):
    runs = [{"model": "m", "suites": {"meqsum": {"rouge1": 10}}}, {"model": "m", "suites": {"meqsum": {"rouge1": 25}}}]
    (merged,) = evaluate.merge_by_model(runs, ["full.json", "limit20.json"])
    assert merged["suites"]["meqsum"]["rouge1"] == 25
    assert "meqsum of m is in both full.json and limit20.json" in capsys.readouterr().err


def test_a_suite_a_run_lacks_gets_no_bar_rather_than_zero():
    runs = [{"suites": {"meqsum": {"rouge1": 10.0}}}, {"suites": {"meqsum": {"rouge1": 40.0}, "pubmedqa": {"accuracy": 58.2}}}]
    quality, values = evaluate.bar_values(runs)
    assert [q[0] for q in quality] == ["MeQSum R1", "PubMedQA acc"]
    assert values[1] == [40.0, 58.2]
    assert values[0][0] == 10.0 and math.isnan(values[0][1])


def test_runs_of_one_model_merge_into_one_bar_group():
    runs = [{"model": "base", "suites": {"meqsum": {"rouge1": 10}}, "decode_tokens_per_s": None},
            {"model": "tuned", "adapter": "a/final", "suites": {"meqsum": {"rouge1": 40}}, "decode_tokens_per_s": 90},
            {"model": "base", "suites": {"mts-test1": {"rouge1": 14}}, "decode_tokens_per_s": 120}]
    merged = evaluate.merge_by_model(runs)
    assert [m["label"] for m in merged] == ["base", "tuned+a"]  # runs/NAME/final is named NAME
    assert merged[0]["suites"] == {"meqsum": {"rouge1": 10}, "mts-test1": {"rouge1": 14}}
    assert merged[0]["decode_tokens_per_s"] == 120 and merged[1]["decode_tokens_per_s"] == 90


def test_a_llama_cpp_run_records_the_cpu_features_its_arithmetic_follows():
    info = evaluate.machine("llama.cpp")
    assert info["cpu"] and info["llama_cpp_features"].startswith("CPU :")  # e.g. "CPU : SSE3 = 1 | AVX = 1 | ..."


def test_limit_takes_a_spread_of_the_suite_not_its_first_group():
    # as the files are written: grouped (ACI-Bench by section), 40 records a group
    records = [{"id": f"aci/visit{i}/{section}", "n": n} for n, (section, i) in
               enumerate((s, i) for s in ("Subjective", "Exam", "Results", "Plan") for i in range(40))]
    chosen = evaluate.spread(records, 20)
    assert len(chosen) == 20 and chosen == evaluate.spread(list(records), 20)  # the same every run
    assert len({r["id"].rsplit("/", 1)[1] for r in chosen}) == 4  # every group, not only the first
    assert [r["n"] for r in chosen] == sorted(r["n"] for r in chosen)  # in file order
    assert evaluate.spread(records, 500) == records and evaluate.spread(records, None) == records


def test_a_predictions_file_is_scored_again_as_the_run_scored_it(data, tmp_path, capsys):
    result, _ = _run(data, tmp_path / "visit.json", "--suites", "aci-visit,mts-test1")
    predictions = tmp_path / "visit.predictions.jsonl"
    rescored = evaluate.score_predictions(predictions)
    for suite in ("aci-visit", "mts-test1"):
        assert {k: v for k, v in rescored[suite].items() if k != "seconds_per_record"} == \
            {k: v for k, v in result["suites"][suite].items() if k != "seconds_per_record"}
    # a run stopped part-way is scored on what it wrote
    partial = tmp_path / "stopped.predictions.jsonl.partial"
    partial.write_text(predictions.read_text().splitlines()[0] + "\n")
    assert evaluate.main(["score", str(partial)]) == 0
    assert capsys.readouterr().out.startswith(f"{json.loads(predictions.read_text().splitlines()[0])['suite']}: ")
    partial.write_text("not json\n")
    with pytest.raises(SystemExit, match="stopped.predictions.jsonl.partial:1: not a prediction row"):
        evaluate.score_predictions(partial)
