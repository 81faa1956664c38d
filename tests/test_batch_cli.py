"""Batch `ask` and `summarize`: inputs in three formats, every bad-input case
reported with file and line while the good records still go through, and
resumable outputs that are never clobbered."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from assistant import cli as cli_module
from assistant.cli import cli
from assistant.tasks import BEST_OF_TEMPERATURE, SUMMARY_BEST_OF
from fakes import FakeBackend


@pytest.fixture
def fake(monkeypatch):
    backend = FakeBackend(reply=lambda msgs: "summary of " + msgs[-1]["content"].split()[-1])
    monkeypatch.setattr(cli_module, "load_backend", lambda *a, **k: backend)
    return backend


def run(*args):
    result = CliRunner().invoke(cli, [*map(str, args), "--no-log"], catch_exceptions=False)
    return result


def lines(path):
    return [json.loads(l) for l in path.read_text().splitlines()]


def write_jsonl(path, rows):
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return path


def test_summarize_jsonl_writes_expected_keys(tmp_path, fake):
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "dialogue": "Doctor: hi.\nPatient: cough.", "section": "CC"},
        {"id": "b", "dialogue": "Doctor: hi.\nPatient: rash."},
    ])
    out = tmp_path / "out.jsonl"
    result = run("summarize", src, "-o", out)
    assert result.exit_code == 0, result.output
    rows = lines(out)
    assert [r["id"] for r in rows] == ["a", "b"]
    assert set(rows[0]) == {"id", "summary", "model", "prompt_tokens", "completion_tokens", "seconds",
                            "input_fingerprint"}
    assert rows[0]["summary"] == "summary of cough." and rows[0]["model"] == "fake-model"
    assert "'Chief Complaint' section" in fake.prompts[0][1]["content"]


def test_every_bad_record_is_named_and_the_rest_processed(tmp_path, fake):
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "ok1", "dialogue": "Doctor: one."},
        b'{"id": "broken", "dialogue": ',
        {"id": "nofield"},
        {"dialogue": "Doctor: no id."},
        {"id": "empty", "dialogue": "   "},
        b'{"id": "latin1", "dialogue": "caf\xe9"}',
        {"id": "ok2", "dialogue": "Doctor: two."},
    ])
    out = tmp_path / "out.jsonl"
    result = run("summarize", src, tmp_path / "missing.txt", "-o", out)
    assert result.exit_code == 1
    assert [r["id"] for r in lines(out)] == ["ok1", "ok2"]
    err = result.output
    assert f"{src}:2: malformed JSON" in err
    assert f"{src}:3: missing field 'dialogue'" in err
    assert f"{src}:4: missing field 'id'" in err
    assert f"{src}:5: empty 'dialogue'" in err
    assert f"{src}:6: not valid UTF-8" in err
    assert f"{tmp_path / 'missing.txt'}: file not found" in err
    assert "6 record(s) failed" in err


def test_txt_files_one_transcript_each(tmp_path, fake):
    (tmp_path / "visit1.txt").write_text("Doctor: hello.\nPatient: headache.")
    (tmp_path / "visit2.txt").write_bytes(b"Doctor: ok.\nPatient: caf\xff\n")
    (tmp_path / "empty.txt").write_text("\n")
    out = tmp_path / "notes.md"
    result = run("summarize", tmp_path / "visit1.txt", tmp_path / "visit2.txt", tmp_path / "empty.txt", "-o", out)
    assert result.exit_code == 1
    text = out.read_text()
    assert "## visit1" in text and "summary of headache." in text and "visit2" not in text
    assert f"{tmp_path / 'visit2.txt'}:2: not valid UTF-8" in result.output
    assert f"{tmp_path / 'empty.txt'}: empty transcript" in result.output


def test_csv_columns_and_multiline_rows(tmp_path, fake):
    src = tmp_path / "visits.csv"
    src.write_text('ID,section_header,dialogue\n1,PLAN,"Doctor: line one.\nPatient: plan."\n2,CC,\n3,CC,"Doctor: x.\nPatient: fever."\n')
    out = tmp_path / "out.jsonl"
    result = run("summarize", src, "-o", out)
    assert result.exit_code == 1
    assert [r["id"] for r in lines(out)] == ["1", "3"]
    assert f"{src}:4: empty 'dialogue'" in result.output  # row 2 starts on line 4 (row 1 spans two)
    assert "'Plan' section" in fake.prompts[0][1]["content"]


def test_wrong_csv_column_is_named(tmp_path, fake):
    src = tmp_path / "visits.csv"
    src.write_text("key,body\n1,Doctor: hi.\n")
    result = run("summarize", src, "--text-column", "transcript", "--id-column", "key", "-o", tmp_path / "o.jsonl")
    assert result.exit_code == 1
    assert f"{src}:1: column 'transcript' not found; columns are: key, body" in result.output


def test_resume_skips_written_ids_and_repairs_a_cut_line(tmp_path, fake):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "dialogue": f"Doctor: item{i}."} for i in range(4)])
    out = tmp_path / "out.jsonl"
    assert run("summarize", src, "-o", out).exit_code == 0
    rows = out.read_text().splitlines(keepends=True)
    out.write_text("".join(rows[:2]) + rows[2][:15])  # a crash cut the third line
    fake.prompts.clear()
    result = run("summarize", src, "-o", out)
    assert result.exit_code == 0
    assert "resuming: 2 already" in result.output
    assert len(fake.prompts) == 2  # two records; whole-visit notes get one draft each
    assert [r["id"] for r in lines(out)] == ["0", "1", "2", "3"]


def test_resume_refuses_records_whose_input_changed(tmp_path, fake):
    # A .txt file's ids are line numbers: a question put on top shifts every id.
    src = tmp_path / "questions.txt"
    src.write_text("What causes asthma?\nWhat is glaucoma?\n")
    out = tmp_path / "answers.jsonl"
    assert run("ask", "--input", src, "-o", out).exit_code == 0
    before = out.read_bytes()
    src.write_text("What is diabetes?\nWhat causes asthma?\nWhat is glaucoma?\n")
    fake.prompts.clear()
    result = run("ask", "--input", src, "-o", out)
    assert result.exit_code == 1
    assert "input of 2 finished record(s) changed" in result.output and "(id 1, 2)" in result.output
    assert not fake.prompts and out.read_bytes() == before
    assert run("ask", "--input", src, "-o", out, "--overwrite").exit_code == 0
    assert [r["question"] for r in lines(out)] == ["What is diabetes?", "What causes asthma?", "What is glaucoma?"]


def test_resume_of_an_output_without_fingerprints_still_works(tmp_path, fake):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "dialogue": f"Doctor: item{i}."} for i in range(3)])
    out = tmp_path / "out.jsonl"
    assert run("summarize", src, "-o", out).exit_code == 0
    old = [{k: v for k, v in r.items() if k != "input_fingerprint"} for r in lines(out)[:2]]
    write_jsonl(out, old)  # as an earlier version wrote it
    fake.prompts.clear()
    result = run("summarize", src, "-o", out)
    assert result.exit_code == 0 and "resuming: 2 already" in result.output and len(fake.prompts) == 1


def test_markdown_resume_redoes_a_result_cut_off_mid_write(tmp_path, fake):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "dialogue": f"Doctor: item{i}."} for i in range(3)])
    out = tmp_path / "notes.md"
    assert run("summarize", src, "-o", out).exit_code == 0
    whole = out.read_text()
    assert whole.count("<!-- end -->") == 3
    out.write_text(whole[: whole.index("summary of item2") + 9])  # killed inside the last summary
    fake.prompts.clear()
    result = run("summarize", src, "-o", out)
    assert result.exit_code == 0 and "resuming: 2 already" in result.output and len(fake.prompts) == 1
    assert out.read_text() == whole


def test_a_markdown_resume_reads_ids_that_look_like_its_own_markers(tmp_path, fake):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "bp input: high", "dialogue": "Doctor: a."},
                                              {"id": "2", "dialogue": "Doctor: b."}])
    out = tmp_path / "notes.md"
    assert run("summarize", src, "-o", out).exit_code == 0
    result = run("summarize", src, "-o", out)
    assert result.exit_code == 0 and "resuming: 2 already" in result.output


def test_a_hand_edited_markdown_marker_is_named(tmp_path, fake):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "dialogue": "Doctor: a."}])
    out = tmp_path / "notes.md"
    assert run("summarize", src, "-o", out).exit_code == 0
    out.write_text(out.read_text().replace('<!-- id: "1"', "<!-- id: 1b"))
    result = run("summarize", src, "-o", out)
    assert result.exit_code == 1 and f"{out}:1: not a result marker" in result.output


def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(tmp_path, fake):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "dialogue": "Doctor: a."}, {"id": "2", "dialogue": "Doctor: b."}])
    out = tmp_path / "out.jsonl"
    second = []

    def reply(messages):
        if not second:  # while the first run holds the output
            second.append(run("summarize", src, "-o", out))
        return "a summary"

    fake.reply = reply
    first = run("summarize", src, "-o", out)
    assert first.exit_code == 0 and [r["id"] for r in lines(out)] == ["1", "2"]
    assert second[0].exit_code == 1 and "being written by another run" in second[0].output
    assert not (tmp_path / "out.jsonl.lock").exists()  # removed when the run ended


def test_an_unpaired_unicode_escape_is_a_bad_record_not_a_crash(tmp_path, fake):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "1", "question": "What is this \\ud83d?"}\n{"id": "2", "question": "What is asthma?"}\n')
    out = tmp_path / "answers.jsonl"
    result = run("ask", "--input", src, "-o", out)
    assert result.exit_code == 1
    assert f"{src}:1: field 'question' holds half of a character" in result.output
    assert [r["id"] for r in lines(out)] == ["2"]


def test_ask_names_a_broken_safety_config_before_loading_the_model(tmp_path, monkeypatch):
    from assistant.safety.triage import default_config

    loaded = []
    monkeypatch.setattr(cli_module, "load_backend", lambda *a, **k: loaded.append(1) or FakeBackend())
    cfg = tmp_path / "safety.toml"
    cfg.write_text('[messages]\nemergency = "Call {emergency_number} now."\n')
    monkeypatch.setenv("HEALTH_ASSISTANT_SAFETY_CONFIG", str(cfg))
    default_config.cache_clear()
    try:
        src = tmp_path / "q.txt"
        src.write_text("Is a cold contagious?\nMy chest hurts and my left arm is numb\n")
        for args in (["ask", "--input", src, "-o", tmp_path / "a.jsonl"], ["ask", "Is a cold contagious?"], ["chat"]):
            result = run(*args)
            assert result.exit_code == 1 and f"{cfg}: [messages] emergency uses {{emergency_number}}" in result.output
        assert not loaded and not (tmp_path / "a.jsonl").exists()
    finally:
        default_config.cache_clear()


def test_paths_with_brackets_are_printed_as_they_are(tmp_path, fake):
    folder = tmp_path / "visits [old]"
    folder.mkdir()
    src = write_jsonl(folder / "in.jsonl", [{"id": "1", "dialogue": "Doctor: a."}, {"id": "1", "dialogue": "b"}])
    result = run("summarize", src, "-o", folder / "o.jsonl")
    assert f"{src}:2: duplicate id '1'" in result.output  # not read as console markup
    assert f"written to {folder / 'o.jsonl'}" in result.output


def test_best_of_sets_the_drafts_per_summary_and_is_part_of_the_run(tmp_path, fake):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "dialogue": "Doctor: a."}, {"id": "2", "dialogue": "Doctor: b."}])
    out = tmp_path / "out.jsonl"
    assert run("summarize", src, "-o", out, "--best-of", "3").exit_code == 0
    assert len(fake.prompts) == 6
    assert [o.temperature for o in fake.options[:3]] == [0.0, BEST_OF_TEMPERATURE, BEST_OF_TEMPERATURE]
    assert lines(out)[1]["summary"] == "HISTORY OF PRESENT ILLNESS\n\nsummary of b."  # a whole-visit note
    # resuming with another number of drafts would mix two kinds of output
    result = run("summarize", src, "-o", out, "--best-of", "1")
    assert result.exit_code == 1 and "different run" in result.output and "best_of" in result.output
    fake.prompts.clear()
    assert run("summarize", src, "-o", tmp_path / "fast.jsonl", "--best-of", "1").exit_code == 0
    assert len(fake.prompts) == 2
    result = run("summarize", src, "-o", tmp_path / "x.jsonl", "--best-of", "0")
    assert result.exit_code == 2 and "--best-of" in result.output


def test_default_drafts_follow_each_rows_section(tmp_path, fake):
    src = tmp_path / "visits.csv"
    src.write_text("id,section,dialogue\n1,GENHX,Doctor: a.\n2,Subjective,Doctor: b.\n3,,Doctor: c.\n"
                   "4,Plan,Doctor: d.\n")
    out = tmp_path / "out.jsonl"
    assert run("summarize", src, "--section-column", "section", "-o", out).exit_code == 0
    # MTS-Dialog's sections (by code or title) are drafted; other sections and whole visits are not
    per_row = [sum(p[1]["content"].endswith(f"Doctor: {k}.") for p in fake.prompts) for k in "abcd"]
    assert per_row == [SUMMARY_BEST_OF, 1, 1, SUMMARY_BEST_OF]
    result = run("summarize", src, "--section-column", "section", "-o", out, "--best-of", str(SUMMARY_BEST_OF))
    assert result.exit_code == 1 and "different run" in result.output  # the default is not always nine


def test_output_of_another_run_is_not_overwritten(tmp_path, fake):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "dialogue": "Doctor: a."}])
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    result = run("summarize", src, "-o", out)
    assert result.exit_code == 1 and "exists and it has no run record" in result.output
    assert out.read_text() == "precious\n"
    assert run("summarize", src, "-o", out, "--overwrite").exit_code == 0
    assert lines(out)[0]["id"] == "1"
    # the same output with a different section is a different run
    result = run("summarize", src, "-o", out, "--section", "PLAN")
    assert result.exit_code == 1 and "different run" in result.output and "section" in result.output


def test_duplicate_ids_are_reported(tmp_path, fake):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "dialogue": "Doctor: a."}, {"id": "1", "dialogue": "Doctor: b."}])
    result = run("summarize", src, "-o", tmp_path / "o.jsonl")
    assert result.exit_code == 1 and f"{src}:2: duplicate id '1'" in result.output


def test_generation_failure_is_reported_per_record(tmp_path, monkeypatch):
    backend = FakeBackend(reply="one two three", fail_after=1)
    monkeypatch.setattr(cli_module, "load_backend", lambda *a, **k: backend)
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "q1", "question": "What is flu?"}])
    result = run("ask", "--input", src, "--output", tmp_path / "o.jsonl")
    assert result.exit_code == 1 and f"{src}:1: the fake model failed" in result.output


def test_ask_batch_keys(tmp_path, fake):
    src = write_jsonl(tmp_path / "q.jsonl", [{"id": 7, "question": "What is asthma?"}, {"id": 8}])
    out = tmp_path / "a.jsonl"
    result = run("ask", "--input", src, "--output", out)
    assert result.exit_code == 1 and f"{src}:2: missing field 'question'" in result.output
    row = lines(out)[0]
    assert {"id", "question", "answer", "model", "prompt_tokens", "completion_tokens", "seconds"} <= set(row)
    assert row["id"] == "7" and row["question"] == "What is asthma?"


def test_ask_streams_single_answer(fake):
    result = run("ask", "What is asthma?")
    assert result.exit_code == 0
    assert "summary of asthma?" in result.output


def test_single_transcript_printed_without_output(tmp_path, fake):
    (tmp_path / "v.txt").write_text("Doctor: hi.\nPatient: knee pain.")
    result = run("summarize", tmp_path / "v.txt")
    assert result.exit_code == 0 and "summary of pain." in result.output


def test_unknown_model_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(cli, ["ask", "hi", "--model", "nope", "--no-log"])
    assert result.exit_code == 1
    assert "error: unknown model 'nope'" in result.output and "Traceback" not in result.output


def test_batch_run_is_logged_as_one_session(tmp_path, fake):
    from assistant.store import Store

    db = tmp_path / "log.db"
    src = write_jsonl(tmp_path / "q.jsonl", [{"id": i, "question": f"Question number {i}?"} for i in range(3)])
    result = CliRunner().invoke(cli, ["ask", "--input", str(src), "--output", str(tmp_path / "a.jsonl"),
                                      "--db", str(db)])
    assert result.exit_code == 0, result.output
    with Store(db) as store:
        sessions = store.list_sessions()
        assert [s["mode"] for s in sessions] == ["batch"]
        messages = store.get_session(sessions[0]["id"])["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * 3
        assert messages[0]["content"] == "Question number 0?"
        assert all(m["status"] == "complete" for m in messages)
        assert store.search("number")


def test_single_question_is_logged_and_no_log_writes_nothing(tmp_path, fake):
    from assistant.store import Store

    db = tmp_path / "log.db"
    assert CliRunner().invoke(cli, ["ask", "What is asthma?", "--db", str(db)]).exit_code == 0
    with Store(db) as store:
        (session,) = store.list_sessions()
        msgs = store.get_session(session["id"])["messages"]
        assert [(m["role"], m["status"]) for m in msgs] == [("user", "complete"), ("assistant", "complete")]
        assert msgs[1]["content"] == "summary of asthma?" and msgs[1]["completion_tokens"] == 3
    other = tmp_path / "none.db"
    assert CliRunner().invoke(cli, ["ask", "What is asthma?", "--db", str(other), "--no-log"]).exit_code == 0
    assert not other.exists()


def test_a_quote_left_open_in_a_csv_is_an_error_not_one_merged_row(tmp_path, fake):
    src = tmp_path / "visits.csv"
    src.write_text('id,dialogue\n1,"Doctor: hi\n2,Doctor: bye\n')
    result = run("summarize", src, "-o", tmp_path / "o.jsonl")
    assert result.exit_code == 1
    assert f"{src}:2: malformed CSV row (a quoted field is never closed); the rest of the file was not read" \
        in result.output
    assert not fake.prompts and not (tmp_path / "o.jsonl").exists()


def test_a_csv_field_beyond_the_csv_modules_default_limit_is_read(tmp_path, fake):
    src = tmp_path / "visits.csv"
    src.write_text("id,dialogue\n1," + "Doctor: a." * 20000 + "\n2,Doctor: b.\n")
    result = run("summarize", src, "-o", tmp_path / "o.jsonl")
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in lines(tmp_path / "o.jsonl")] == ["1", "2"]


def test_resume_keeps_results_holding_unicode_line_separators(tmp_path, monkeypatch):
    backend = FakeBackend(reply="first\u2028second\x85third")
    monkeypatch.setattr(cli_module, "load_backend", lambda *a, **k: backend)
    src = write_jsonl(tmp_path / "q.jsonl", [{"id": i, "question": f"Question\u2028{i}?"} for i in range(3)])
    out = tmp_path / "a.jsonl"
    assert run("ask", "-i", src, "-o", out).exit_code == 0
    before = out.read_bytes()
    backend.prompts.clear()
    result = run("ask", "-i", src, "-o", out)
    assert result.exit_code == 0 and "resuming: 3 already" in result.output
    assert out.read_bytes() == before and not backend.prompts


def test_a_hand_edited_line_in_the_middle_stops_the_resume_and_keeps_the_file(tmp_path, fake):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "dialogue": f"Doctor: item{i}."} for i in range(3)])
    out = tmp_path / "out.jsonl"
    assert run("summarize", src, "-o", out).exit_code == 0
    rows = out.read_text().splitlines(keepends=True)
    edited = rows[0] + "my note\n" + rows[1]
    out.write_text(edited)
    result = run("summarize", src, "-o", out)
    assert result.exit_code == 1 and f"{out}:2: not a result line" in result.output
    assert out.read_text() == edited


def test_a_complete_last_line_without_its_newline_is_kept(tmp_path, fake):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "dialogue": f"Doctor: item{i}."} for i in range(3)])
    out = tmp_path / "out.jsonl"
    assert run("summarize", src, "-o", out).exit_code == 0
    rows = out.read_text().splitlines(keepends=True)
    out.write_text(rows[0] + rows[1].rstrip("\n"))
    fake.prompts.clear()
    assert run("summarize", src, "-o", out).exit_code == 0
    assert [r["id"] for r in lines(out)] == ["0", "1", "2"] and len(fake.prompts) == 1


def test_overwrite_keeps_the_old_output_until_the_model_has_loaded(tmp_path, fake, monkeypatch):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "dialogue": "Doctor: a."}])
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "x", "summary": "kept"}\n')

    def no_model(*a, **k):
        from assistant.models import ModelError
        raise ModelError("unknown model 'typo'")

    monkeypatch.setattr(cli_module, "load_backend", no_model)
    result = run("summarize", src, "-o", out, "--overwrite", "-m", "typo")
    assert result.exit_code == 1 and "unknown model 'typo'" in result.output
    assert out.read_text() == '{"id": "x", "summary": "kept"}\n'


def test_a_failed_start_leaves_no_output_in_the_way_of_the_corrected_run(tmp_path, fake):
    out = tmp_path / "out.jsonl"
    result = run("summarize", tmp_path / "trnscripts.jsonl", "-o", out)
    assert result.exit_code == 1 and "file not found" in result.output
    assert not out.exists() and not (tmp_path / "out.jsonl.run.json").exists()
    src = write_jsonl(tmp_path / "transcripts.jsonl", [{"id": "1", "dialogue": "Doctor: a."}])
    assert run("summarize", src, "-o", out).exit_code == 0


def test_an_output_that_is_also_an_input_is_refused(tmp_path, fake):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "dialogue": "Doctor: a."}])
    before = src.read_bytes()
    result = run("summarize", src, "-o", src, "--overwrite")
    assert result.exit_code == 1 and "is also an input" in result.output
    assert src.read_bytes() == before


def test_empty_inputs_are_errors(tmp_path, fake):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "header.csv").write_text("id,dialogue\n")
    for name in ("empty.jsonl", "header.csv"):
        result = run("summarize", tmp_path / name, "-o", tmp_path / "o.jsonl")
        assert result.exit_code == 1 and f"{tmp_path / name}: no records found" in result.output
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("name, problem", [
    ("notes.csv", "unsupported output type '.csv'"),
    ("a_dir.jsonl", "is a directory"),
])
def test_bad_output_paths_are_one_clear_line(tmp_path, fake, name, problem):
    (tmp_path / "a_dir.jsonl").mkdir()
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "dialogue": "Doctor: a."}])
    result = run("summarize", src, "-o", tmp_path / name, "--overwrite")
    assert result.exit_code == 1 and problem in result.output and "Traceback" not in result.output


def test_an_output_under_a_file_is_one_clear_line(tmp_path, fake):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "dialogue": "Doctor: a."}])
    result = run("summarize", src, "-o", src.parent / "in.jsonl.d" / ".." / "x" / "o.jsonl")
    assert result.exit_code == 0  # a plain new folder is made
    (tmp_path / "plain").write_text("")
    result = run("summarize", src, "-o", tmp_path / "plain" / "o.jsonl")
    assert result.exit_code == 1 and "cannot write the output" in result.output


def test_json_arrays_bom_and_section_header_in_json_inputs(tmp_path, fake):
    (tmp_path / "visits.json").write_text(json.dumps([
        {"id": "a", "dialogue": "Doctor: hi.\nPatient: cough.", "section_header": "PLAN"}, {"id": "b"}]))
    result = run("summarize", tmp_path / "visits.json", "-o", tmp_path / "o.jsonl")
    assert result.exit_code == 1
    assert f"{tmp_path / 'visits.json'}: item 1: missing field 'dialogue' (or 'transcript', 'conversation', 'text')" \
        in result.output
    assert "'Plan' section" in fake.prompts[0][1]["content"]
    src = tmp_path / "bom.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "1", "dialogue": "Doctor: a."}).encode() + b"\n")
    assert run("summarize", src, "-o", tmp_path / "bom.out.jsonl").exit_code == 0


def test_ask_reads_a_csv_of_questions_and_refuses_batch_flags_without_input(tmp_path, fake):
    src = tmp_path / "q.csv"
    src.write_text("Key,Question\nq1,What is a fever?\n")
    result = run("ask", "-i", src, "-o", tmp_path / "a.jsonl", "--id-column", "Key")
    assert result.exit_code == 0, result.output
    assert lines(tmp_path / "a.jsonl")[0]["question"] == "What is a fever?"
    result = run("ask", "What is a fever?", "-o", tmp_path / "b.jsonl")
    assert result.exit_code == 1 and "--output is for a batch of questions" in result.output
    assert not (tmp_path / "b.jsonl").exists()
    result = run("summarize", tmp_path / "x.txt", "--overwrite")
    assert result.exit_code == 1 and "--overwrite replaces a batch output" in result.output


def test_resume_refuses_other_columns_seed_or_repeat_penalty(tmp_path, fake):
    src = tmp_path / "visits.csv"
    src.write_text("id,note,transcript\n1,Doctor: a.,Doctor: b.\n")
    out = tmp_path / "o.jsonl"
    assert run("summarize", src, "-o", out, "--text-column", "note").exit_code == 0
    for extra in (["--text-column", "transcript"], ["--text-column", "note", "--seed", "3"],
                  ["--text-column", "note", "--repeat-penalty", "1.5"]):
        result = run("summarize", src, "-o", out, *extra)
        assert result.exit_code == 1 and "different run" in result.output, extra


def test_a_batch_stopped_by_a_second_ctrl_c_is_not_left_running(tmp_path, monkeypatch):
    from assistant.store import Store

    class Interrupting(FakeBackend):
        def stream(self, messages, options=None, cancel=None):
            if self.prompts:  # the second record: the user presses Ctrl-C twice
                raise KeyboardInterrupt
            return super().stream(messages, options, cancel)

    monkeypatch.setattr(cli_module, "load_backend", lambda *a, **k: Interrupting(reply="x"))
    src = write_jsonl(tmp_path / "t.jsonl", [{"id": 1, "dialogue": "Doctor: hi.\nPatient: cough."},
                                            {"id": 2, "dialogue": "Doctor: hi.\nPatient: rash."}])
    db = tmp_path / "log.db"
    result = CliRunner().invoke(cli, ["summarize", str(src), "-o", str(tmp_path / "a.jsonl"), "--db", str(db)])
    assert result.exit_code == 1 and "Aborted" in result.output  # click's answer to KeyboardInterrupt
    with Store(db) as store:
        (run_row,) = store.db.query("select status, counts from batch_runs")
        assert run_row["status"] == "cancelled"
        assert json.loads(run_row["counts"]) == {"done": 1, "skipped": 0, "failed": 0, "remaining": 1}
    assert [r["id"] for r in lines(tmp_path / "a.jsonl")] == ["1"]


def test_a_malformed_json_array_is_one_error_with_its_line_and_bad_bytes_are_named(tmp_path, fake):
    src = tmp_path / "visits.json"
    src.write_text('[\n  {"id": "a", "dialogue": "Doctor: hi."}\n  {"id": "b", "dialogue": "Doctor: bye."}\n]\n')
    result = run("summarize", src, "-o", tmp_path / "o.jsonl")
    assert result.exit_code == 1 and f"{src}:3: malformed JSON (Expecting ',' delimiter" in result.output
    assert not fake.prompts
    src.write_bytes(b'[{"id": "a", "dialogue": "caf\xe9"}]')
    result = run("summarize", src, "-o", tmp_path / "o.jsonl")
    assert result.exit_code == 1 and f"{src}:1: not valid UTF-8" in result.output


def test_when_every_record_fails_an_overwritten_output_is_kept(tmp_path, monkeypatch):
    from assistant.backends import BackendError

    class Failing(FakeBackend):
        def stream(self, messages, options=None, cancel=None):
            raise BackendError("the model is out of memory")

    monkeypatch.setattr(cli_module, "load_backend", lambda *a, **k: Failing())
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "dialogue": "Doctor: a."}])
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "x", "summary": "kept"}\n')
    result = run("summarize", src, "-o", out, "--overwrite")
    assert result.exit_code == 1 and "out of memory" in result.output
    assert out.read_text() == '{"id": "x", "summary": "kept"}\n'


def test_a_single_summary_stopped_before_its_merge_still_prints_the_part_summaries(tmp_path, monkeypatch):
    from assistant.backends.base import CancelToken

    be = FakeBackend(reply=lambda msgs: "part summary", context_length=400)
    monkeypatch.setattr(cli_module, "load_backend", lambda *a, **k: be)
    real_summarize = cli_module.summarize

    def stop_before_merge(*args, **kwargs):  # as if Ctrl-C came while the merge was about to start
        token: CancelToken = kwargs["cancel"]
        kwargs["on_progress"] = lambda stage, done, total: token.cancel() if stage == "part" and done == total else None
        return real_summarize(*args, **kwargs)

    monkeypatch.setattr(cli_module, "summarize", stop_before_merge)
    src = tmp_path / "long.txt"
    src.write_text("\n".join(f"Doctor: Question number {i} about the cough?\nPatient: Answer {i}, it hurts."
                             for i in range(120)))
    result = run("summarize", src)
    assert "part summary\npart summary" in result.output
    assert result.exit_code == 130  # stopped: what was printed is not the whole summary


def test_a_stopped_single_answer_exits_as_stopped(monkeypatch):
    real_answer = cli_module.answer

    def stopped(*args, **kwargs):  # as if Ctrl-C came before the first token
        kwargs["cancel"].cancel()
        return real_answer(*args, **kwargs)

    monkeypatch.setattr(cli_module, "load_backend", lambda *a, **k: FakeBackend())
    monkeypatch.setattr(cli_module, "answer", stopped)
    assert run("ask", "Is a cold contagious?").exit_code == 130
    monkeypatch.setattr(cli_module, "answer", real_answer)
    assert run("ask", "Is a cold contagious?").exit_code == 0


def test_files_saved_by_windows_tools_read_as_written(tmp_path, fake):
    from assistant.batch_io import read_records

    # Excel and PowerShell's Export-Csv: a byte-order mark, then every field quoted
    src = tmp_path / "q.csv"
    src.write_bytes(b'\xef\xbb\xbf"id","question"\r\n"1","What is asthma?"\r\n')
    (rec,) = read_records(src, "ask")
    assert (rec.id, rec.text) == ("1", "What is asthma?")
    # a .txt of questions with a byte-order mark: not part of the first question
    src = tmp_path / "q.txt"
    src.write_bytes(b"\xef\xbb\xbfWhat is asthma?\r\nWhat is gout?\r\n")
    assert [r.text for r in read_records(src, "ask")] == ["What is asthma?", "What is gout?"]
    # one transcript, one record, whichever line ends its editor wrote
    unix, windows = tmp_path / "unix.txt", tmp_path / "windows.txt"
    unix.write_bytes(b"Doctor: Any allergies?\nPatient: Penicillin.\n")
    windows.write_bytes(b"\xef\xbb\xbfDoctor: Any allergies?\r\nPatient: Penicillin.\r\n")
    (a,), (b,) = read_records(unix, "summarize"), read_records(windows, "summarize")
    assert b.text == a.text and b.fingerprint == a.fingerprint


@pytest.mark.parametrize("data, problem", [
    ("What is asthma?\r\nWhat is gout?\r\n".encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
    ("What is asthma?\n".encode("utf-32"), "is UTF-32 text; save it as UTF-8"),
    ("What is asthma?\n".encode("utf-16-le"), "holds NUL bytes"),
])
def test_text_in_another_encoding_is_named_not_read_as_records(tmp_path, fake, data, problem):
    src = tmp_path / "q.txt"
    src.write_bytes(data)
    out = tmp_path / "a.jsonl"
    result = run("ask", "-i", src, "-o", out)
    assert result.exit_code == 1 and f"{src}: {problem}" in result.output
    assert not out.exists() and not fake.prompts  # no NUL-riddled 'questions' answered


def test_chat_goes_on_after_a_message_the_model_cannot_take(tmp_path, monkeypatch):
    from assistant.store import open_store

    backend = FakeBackend(reply="Asthma narrows the airways.", context_length=700)
    monkeypatch.setattr(cli_module, "load_backend", lambda *a, **k: backend)
    db = tmp_path / "log.db"
    typed = "   \n" + "my knee " * 400 + "\nWhat is asthma?\n"  # blank, too long, then a fine one
    result = CliRunner().invoke(cli, ["chat", "--db", str(db)], input=typed, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "the question is too long for the model" in result.output and "please shorten it" in result.output
    assert "Asthma narrows the airways." in result.output  # the next message was answered
    with open_store(db) as st:
        (session,) = st.list_sessions()
        messages = st.get_session(session["id"])["messages"]
    assert [(m["role"], m["status"]) for m in messages] == [
        ("user", "complete"), ("assistant", "error"), ("user", "complete"), ("assistant", "complete")]
    assert "too long" in str(messages[1]["meta"])
    assert messages[2]["content"] == "What is asthma?"


def test_markdown_answers_carry_their_question_triage_and_sources(tmp_path, fake):
    src = tmp_path / "q.txt"
    src.write_text("What are the symptoms of asthma?\nI want to kill myself\n")
    out = tmp_path / "answers.md"
    result = run("ask", "-i", src, "-o", out)
    assert result.exit_code == 0, result.output
    first, second = out.read_text().split("<!-- end -->")[:2]
    assert "## 1\n\n> What are the symptoms of asthma?\n\n" in first
    assert "Sources:\n- " in first and "<http" in first and "Triage" not in first
    assert "> I want to kill myself\n\n**Triage: crisis**\n\n" in second
    assert run("ask", "-i", src, "-o", out).exit_code == 0 and out.read_text().count("## ") == 2  # resumes
