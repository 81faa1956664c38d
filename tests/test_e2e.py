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
    # a whole-visit note one greedy draft
    assert rows[0]["prompt_tokens"] % SUMMARY_BEST_OF == 0 and 0 < rows[0]["completion_tokens"] <= 48 * SUMMARY_BEST_OF
    assert 0 < rows[1]["completion_tokens"] <= 48
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
