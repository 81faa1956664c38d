"""End to end: the installed `assistant` command on the real embedded model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from assistant.models import DEFAULT_MODEL
from assistant.tasks import SUMMARY_BEST_OF

pytestmark = pytest.mark.e2e
ASSISTANT = Path(sys.executable).parent / "assistant"


def run(args, tmp_path, **kw):
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    return subprocess.run([str(ASSISTANT), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300, **kw)


def test_ask_streams_a_real_answer(tmp_path):
    r = run(["ask", "What is a common cold?", "--max-tokens", "40"], tmp_path)
    assert r.returncode == 0, r.stderr
    words = r.stdout.split()
    assert len(words) >= 10
    assert "tokens" in r.stderr and "tok/s" in r.stderr


def test_summarize_batch_on_the_real_model(tmp_path):
    src = tmp_path / "visits.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"id": "v1", "section": "CC", "dialogue": "Doctor: What brings you in today?\nPatient: I have had a sore throat and fever for three days."},
        {"id": "v2", "dialogue": "Doctor: Any allergies?\nPatient: Yes, I am allergic to penicillin, it gives me hives."},
    ]) + "\n")
    out = tmp_path / "notes.jsonl"
    r = run(["summarize", src, "-o", out, "--max-tokens", "48"], tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [x["id"] for x in rows] == ["v1", "v2"]
    for row in rows:
        assert row["model"] == DEFAULT_MODEL
        assert row["summary"].strip() and row["prompt_tokens"] > 20
    # an MTS-Dialog section gets SUMMARY_BEST_OF drafts of one prompt, at most 48 tokens each;
    # a whole-visit note one greedy draft per section the visit speaks to (history, allergies)
    assert rows[0]["prompt_tokens"] % SUMMARY_BEST_OF == 0 and 0 < rows[0]["completion_tokens"] <= 48 * SUMMARY_BEST_OF
    assert 0 < rows[1]["completion_tokens"] <= 48 * 2
    assert rows[1]["summary"].startswith("HISTORY OF PRESENT ILLNESS\n\n")
    # a second run resumes: nothing left to do
    r = run(["summarize", src, "-o", out, "--max-tokens", "48"], tmp_path)
    assert r.returncode == 0 and "2 already there" in r.stderr


def test_models_lists_the_embedded_model(tmp_path):
    r = run(["models", "list", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows[0]["name"] == DEFAULT_MODEL
    assert rows[-1]["name"] == "smollm2-135m-instruct" and rows[-1]["quantization"] == "Q4_1"


def test_default_model_still_chats(tmp_path):
    """Tuning for notes and grounded answers must not break plain conversation:
    a greeting gets a short conversational reply, not a clinical note."""
    r = run(["ask", "Hello! How are you today?", "--max-tokens", "40", "--no-log"], tmp_path)
    assert r.returncode == 0, r.stderr
    reply = r.stdout.strip()
    assert len(reply.split()) >= 3
    assert not reply.lower().startswith(("the patient", "patient", "no ", "denies"))
    assert "don't know" not in reply and "Sources:" not in reply  # small talk skips the library


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "mts-dialog").is_dir(), reason="the source data lives only on dev machines and CI")
def test_the_fine_tuning_pipeline_runs_short_from_the_source_data(tmp_path):
    """What RESULTS.md does at full size, small: prepare the data, train the real model a
    few steps, build its GGUF and evaluate it through the app's task layer."""
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    repo = Path(__file__).resolve().parents[1]

    def step(*args):
        done = subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, env=env,
                              cwd=repo, timeout=600)
        assert done.returncode == 0, f"{args[0]}: {done.stderr[-3000:]}"
        return done

    data = tmp_path / "v1"
    step("finetune.prepare_data", "--source", SHARED, "--out", data, "--limit", "12")
    assert (data / "train.jsonl").is_file() and (data / "test.jsonl").is_file()
    run_dir = tmp_path / "run"
    config = tmp_path / "smoke.toml"
    config.write_text((repo / "finetune/configs/smoke.toml").read_text()
                      .replace("build/data/v1", str(data)).replace("max_steps = 4", "max_steps = 2"))
    step("finetune.train", "--config", config, "--limit", "16", "--out", run_dir, "--no-progress")
    recipe = json.loads((run_dir / "final" / "recipe.json").read_text())
    assert recipe["steps"] == 2 and recipe["tokens"] > 0
    gguf = tmp_path / "tuned.gguf"
    step("assistant.build_model", run_dir / "final", "--out", gguf)
    out = tmp_path / "eval" / "tuned.json"
    step("finetune.evaluate", "--model", gguf, "--suites", "mts-valid,meqsum", "--limit", "2", "--best-of", "1",
         "--max-tokens", "24", "--data", data, "--out", out)
    result = json.loads(out.read_text())
    assert result["suites"]["mts-valid"]["n"] == 2 and result["suites"]["meqsum"]["n"] == 2
    assert 0 <= result["suites"]["mts-valid"]["rouge1"] <= 100 and result["machine"]["llama_cpp_features"]
    assert len(out.with_suffix(".predictions.jsonl").read_text().splitlines()) == 4
