"""`assistant logs` through click's CliRunner, on real SQLite files."""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta

import pytest
from click.testing import CliRunner

from assistant.cli_logs import logs
from assistant.store import Store


@pytest.fixture
def db(tmp_path):
    return tmp_path / "logs.db"


@pytest.fixture
def filled(db):
    with Store(db) as st:
        a = st.new_session("chat", "smollm2", title="Knee pain")
        st.add_message(a, "user", "My knee hurts after running")
        w = st.start_reply(a, "smollm2", {"temperature": 0})
        w.append("Rest the knee")
        w.cancel()
        b = st.new_session("kiosk", "smollm2")
        st.add_message(b, "user", "What helps a headache?")
        st.add_message(b, "assistant", "Water and rest.", model="smollm2")
    return {"a": a, "b": b}


def run(*args, **kw):
    return CliRunner().invoke(logs, [str(a) for a in args], catch_exceptions=False, **kw)


def test_list_is_the_default(db, filled):
    for args in ([], ["--db", db], ["list", "--db", db]):
        r = run(*args, env={"ASSISTANT_DB": str(db)})
        assert r.exit_code == 0, r.output
        assert filled["a"] in r.stdout and filled["b"] in r.stdout
        assert "Knee pain" in r.stdout and "kiosk" in r.stdout and "smollm2" in r.stdout
    r = run("list", "--db", db, "--mode", "kiosk")
    assert filled["b"] in r.stdout and filled["a"] not in r.stdout


@pytest.mark.parametrize("columns", [80, 100])
def test_list_keeps_every_column_on_a_common_terminal(db, columns):
    with Store(db) as st:
        sid = st.new_session("batch", "smollm2-135m-instruct", title="A title much longer than the room left for it " * 2)
        for i in range(12):
            st.add_message(sid, "user", f"question {i}")
    r = run("list", "--db", db, env={"COLUMNS": str(columns)})
    header, _, row = r.stdout.splitlines()[:3]
    assert header.split() == ["id", "when", "mode", "model", "msgs", "title"]
    assert row.startswith(sid) and " batch " in row and " 12 " in row and "A title" in row
    assert max(len(line) for line in r.stdout.splitlines()) <= columns


def test_list_empty_and_archived(db, filled):
    assert "No sessions" in run("list", "--db", db.with_name("empty.db")).stdout
    assert run("archive", "--db", db, filled["a"]).exit_code == 0
    assert filled["a"] not in run("list", "--db", db).stdout
    assert filled["a"] in run("list", "--db", db, "--archived").stdout
    run("archive", "--db", db, filled["a"], "--undo")
    assert filled["a"] in run("list", "--db", db).stdout


def test_show_includes_status_of_partial_replies(db, filled):
    r = run("show", "--db", db, filled["a"])
    assert r.exit_code == 0
    assert "My knee hurts after running" in r.stdout and "Rest the knee" in r.stdout and "cancelled" in r.stdout


def test_rename(db, filled):
    run("rename", "--db", db, filled["b"], "Headache")
    assert "Headache" in run("show", "--db", db, filled["b"]).stdout


def test_search_ranked_with_snippets(db, filled):
    r = run("search", "--db", db, "knee")
    assert r.exit_code == 0
    assert r.stdout.count(filled["a"]) == 2 and "Rest the knee" in r.stdout
    assert "No matches" in run("search", "--db", db, '"-(').stdout


def test_export_import_round_trip(db, filled, tmp_path):
    out = tmp_path / "all.json"
    r = run("export", "--db", db, "--all", "--format", "json", "-o", out)
    assert r.exit_code == 0 and out.exists()
    stdout_json = run("export", "--db", db, "--all", "--format", "json").stdout
    assert json.loads(stdout_json)["sessions"] == json.loads(out.read_text())["sessions"]
    md = run("export", "--db", db, filled["a"]).stdout
    assert md.startswith("# Knee pain") and "cancelled" in md
    fresh = tmp_path / "fresh.db"
    r = run("import", "--db", fresh, out)
    assert r.exit_code == 0 and "Imported 2 sessions (4 messages)" in r.stdout
    assert run("export", "--db", fresh, filled["a"]).stdout == md
    assert run("export", "--db", db).exit_code == 2  # neither ids nor --all


def test_delete_by_id_asks_unless_yes(db, filled):
    r = run("delete", "--db", db, filled["a"], input="n\n")
    assert f"Permanently delete 1 session(s): {filled['a']} (Knee pain)?" in r.stdout
    assert "Nothing deleted" in r.stdout and filled["a"] in run("list", "--db", db).stdout
    r = run("delete", "--db", db, filled["a"], "--yes", "--vacuum")
    assert r.exit_code == 0 and "Deleted 1 session" in r.stdout
    assert filled["a"] not in run("list", "--db", db).stdout
    assert "No matches" in run("search", "--db", db, "knee").stdout


def test_a_vacuum_of_its_own_after_a_reader_kept_deleted_text(db, filled):
    import sqlite3
    from pathlib import Path

    reader = sqlite3.connect(db)
    reader.execute("begin")
    reader.execute("select count(*) from messages").fetchone()  # an open read holds the WAL
    r = run("delete", "--db", db, "--before", "2999-01-01", "--yes", "--vacuum")
    assert r.exit_code == 1 and "run `assistant logs vacuum`" in r.output  # a command that exists
    reader.close()
    r = run("vacuum", "--db", db)
    assert r.exit_code == 0 and "Vacuumed." in r.stdout
    assert not any(b"Knee pain" in p.read_bytes() for p in Path(db).parent.glob(Path(db).name + "*"))


def test_delete_before_date(db, filled):
    tomorrow = (datetime.now() + timedelta(days=1)).date().isoformat()
    yesterday = (datetime.now() - timedelta(days=1)).date().isoformat()
    assert "Deleted 0 messages and 0 sessions" in run("delete", "--db", db, "--before", yesterday, "--yes").stdout
    r = run("delete", "--db", db, "--before", tomorrow, input="y\n")
    assert "Deleted 4 messages and 2 sessions" in r.stdout
    assert "No sessions" in run("list", "--db", db).stdout
    assert run("delete", "--db", db, "--before", "last tuesday", "--yes").exit_code == 2
    for edge in ("9999-12-31T23:00-05:00", "0001-01-01T00:00+09:00"):  # past either end of the calendar in UTC
        r = run("delete", "--db", db, "--before", edge, "--yes")
        assert r.exit_code == 2 and "out of the range of dates" in r.output


def test_backup_and_path(db, filled, tmp_path):
    dest = tmp_path / "copy.db"
    assert run("backup", "--db", db, dest).exit_code == 0
    assert filled["b"] in run("list", "--db", dest).stdout
    assert run("path", "--db", db).stdout.strip() == str(db)
    assert run("path", env={"ASSISTANT_DB": str(dest)}).stdout.strip() == str(dest)


def test_on_off_status(db, filled):
    assert "Logging: on" in run("status", "--db", db).stdout
    run("off")
    r = run("status", "--db", db)
    assert "Logging: off" in r.stdout and "Sessions: 2" in r.stdout and str(db) in r.stdout
    run("on")
    assert "Logging: on" in run("status", "--db", db).stdout


@pytest.mark.parametrize("command", [["list"], ["show", "x"], ["search", "x"], ["export", "--all"], ["status"],
                                     ["delete", "x", "--yes"]])
def test_store_errors_are_one_red_line_and_exit_1(tmp_path, command):
    bad = tmp_path / "notes.db"
    bad.write_text("not a database at all\n" * 50)
    before = hashlib.sha256(bad.read_bytes()).hexdigest()
    r = CliRunner().invoke(logs, [*command, "--db", str(bad)], color=True)
    assert r.exit_code == 1
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit)
    assert "Traceback" not in r.output
    assert r.stdout == "" or command == ["status"]  # status prints what it knows before opening
    assert r.stderr.count("\n") == 1 and "\x1b[31m" in r.stderr
    assert str(bad) in r.stderr and "not a SQLite database" in r.stderr
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == before


def test_unknown_session_is_a_clean_error(db, filled):
    r = CliRunner().invoke(logs, ["show", "--db", str(db), "doesnotexist"])
    assert r.exit_code == 1 and "no session" in r.stderr and r.exception.__class__ is SystemExit


def test_export_file_is_private(db, filled, tmp_path):
    out = tmp_path / "a.md"
    assert run("export", "--db", db, filled["a"], "-o", out).exit_code == 0
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    out.chmod(0o644)  # a file that was readable by all before is not after
    assert run("export", "--db", db, filled["a"], "-o", out).exit_code == 0
    assert oct(out.stat().st_mode & 0o777) == "0o600"


def test_an_export_is_never_written_over_a_database(db, filled, tmp_path):
    for target in (db, db.with_name(db.name + "-wal")):
        r = CliRunner().invoke(logs, ["export", "--all", "--db", str(db), "-o", str(target)])
        assert r.exit_code == 1 and "is a SQLite database; refusing" in r.stderr
    assert run("show", "--db", db, filled["a"]).exit_code == 0  # the log is intact


def test_options_may_come_before_the_subcommand(db, filled):
    r = run("--db", db, "show", filled["a"])
    assert r.exit_code == 0 and filled["a"] in r.output
    assert run("--db", db).exit_code == 0  # only options: list
    backup = db.with_name("backup")  # a database file named like a command
    db.rename(backup)
    r = run("--db", backup, "show", filled["a"])
    assert r.exit_code == 0 and filled["a"] in r.output


@pytest.mark.parametrize("command", [["show", "x"], ["search", "x"], ["export", "--all"], ["delete", "x", "--yes"],
                                     ["rename", "x", "t"], ["backup", "copy.db"]])
def test_a_mistyped_db_is_an_error_and_is_not_created(tmp_path, command):
    typo = tmp_path / "typo" / "logs.db"
    r = CliRunner().invoke(logs, [*command, "--db", str(typo)])
    assert r.exit_code == 1 and "no log database here" in r.stderr and str(typo) in r.stderr
    assert not typo.parent.exists()
    r = CliRunner().invoke(logs, ["list", "--db", str(typo)])
    assert r.exit_code == 0 and "No sessions logged yet" in r.stdout and not typo.parent.exists()


def test_another_programs_database_is_refused_untouched(tmp_path):
    import sqlite3

    other = tmp_path / "clinic.db"
    with sqlite3.connect(other) as conn:
        conn.execute("create table patients (id integer primary key, name text)")
    before = hashlib.sha256(other.read_bytes()).hexdigest()
    r = CliRunner().invoke(logs, ["list", "--db", str(other)])
    assert r.exit_code == 1 and "another program's SQLite database (tables: patients)" in r.stderr
    assert hashlib.sha256(other.read_bytes()).hexdigest() == before


def test_import_checks_every_session_before_writing_any(db, filled, tmp_path):
    good = {"id": "g", "mode": "chat", "created": "2025-01-31T10:00:00+00:00", "updated": "2025-01-31T10:00:00+00:00",
            "messages": [{"role": "user", "content": "hi", "created": "2025-01-31T10:00:00+00:00"}]}
    for bad, problem in [
        ({**good, "id": "y", "created": "2024"}, "session 2: (id y) field 'created' must be an ISO date and time"),
        ({**good, "id": "y", "mode": "party"}, "field 'mode' must be one of chat, kiosk, batch"),
        ({**good, "id": "y", "messages": [{"role": "user", "created": "yesterday"}]}, "message 1: field 'created'"),
        ({**good, "id": "y", "archived": "yes"}, "field 'archived' must be true or false"),
        ({**good, "id": "y", "title": "\ud800"}, "field 'title' holds half of a character"),
        ({**good, "id": "y", "messages": [{**good["messages"][0], "prompt_tokens": 2 ** 70}]},
         "message 1: field 'prompt_tokens' must be a non-negative whole number"),
        ({**good, "id": "y", "messages": [{**good["messages"][0], "duration_s": float("nan")}]},
         "message 1: field 'duration_s' must be a non-negative number"),
        ({**good, "id": "y", "messages": [{**good["messages"][0], "meta": "x"}]}, "field 'meta' must be an object"),
        ({**good, "id": "y", "batch_runs": ["x"]}, "batch run 1: not a JSON object"),
        ({**good, "id": "y", "batch_runs": [{}]}, "batch run 1: field 'task' must be a non-empty string"),
    ]:
        path = tmp_path / "in.json"
        path.write_text(json.dumps({"format": "health-assistant-logs", "sessions": [good, bad]}))
        r = CliRunner().invoke(logs, ["import", "--db", str(db), str(path)])
        assert r.exit_code == 1 and problem in r.stderr and "nothing was imported" in r.stderr, r.stderr
    assert run("list", "--db", db).exit_code == 0
    with Store(db) as st:
        assert {s["id"] for s in st.list_sessions()} == {filled["a"], filled["b"]}


def test_show_and_export_mark_triage_and_regenerated_replies(db):
    with Store(db) as st:
        sid = st.new_session("chat", "smollm2", title="Chest")
        st.add_message(sid, "user", "crushing chest pain", meta={"triage": "emergency"})
        first = st.add_message(sid, "assistant", "Call 911.", model="smollm2")
        st.add_message(sid, "assistant", "Call 911 now.", model="smollm2", meta={"replaces": first, "regenerated": True})
    shown = run("show", "--db", db, sid).stdout
    assert "triage: emergency" in shown and "replaced by a regenerated reply" in shown and "regenerated" in shown
    exported = run("export", "--db", db, sid).stdout
    assert exported.count("replaced by a regenerated reply") == 1 and "· triage: emergency" in exported
    # an import renumbers messages; the link from the regenerated reply follows
    with Store(db) as st:
        other = st.new_session("chat", "smollm2")
        st.add_message(other, "user", "shifts the ids of the next import")
    dump = db.with_name("dump.json")
    assert run("export", "--db", db, sid, "--format", "json", "-o", dump).exit_code == 0
    fresh = db.with_name("fresh.db")
    with Store(fresh) as st:
        st.add_message(st.new_session("chat", None), "user", "an earlier message")
    assert run("import", "--db", fresh, dump).exit_code == 0
    shown = run("show", "--db", fresh, sid).stdout
    assert shown.count("replaced by a regenerated reply") == 1
    with Store(fresh) as st:
        first_reply, second = [m for m in st.get_session(sid)["messages"] if m["role"] == "assistant"]
        assert second["meta"]["replaces"] == first_reply["id"]


def test_reading_commands_read_a_log_they_may_not_write(db, filled, tmp_path, monkeypatch):
    import assistant.store as store_mod
    from assistant.store import StoreError

    before = db.read_bytes()
    # as on a read-only share (root, who runs these tests, may write anything, so it is faked)
    real_access = store_mod.os.access
    monkeypatch.setattr(store_mod.os, "access", lambda path, mode: mode != store_mod.os.W_OK and real_access(path, mode))
    assert filled["a"] in run("list", "--db", db).stdout
    assert "Rest the knee" in run("show", "--db", db, filled["a"]).stdout
    assert filled["b"] in run("search", "--db", db, "headache").stdout
    assert '"Knee pain"' in run("export", "--db", db, "--all", "--format", "json").stdout
    assert "Sessions: 2, messages: 4" in run("status", "--db", db).stdout
    assert run("backup", "--db", db, tmp_path / "copy.db").exit_code == 0
    assert db.read_bytes() == before  # not a byte written: no WAL switch, no migration
    with Store(db, read_only_ok=True) as st, pytest.raises(StoreError, match=str(db)):
        st.rename_session(filled["a"], "changed")
    assert db.read_bytes() == before
    with Store(db, read_only_ok=True) as st:
        assert st.read_only and st.db.execute("PRAGMA query_only").fetchone()[0] == 1
    # an older log cannot be upgraded where it is: named, and left as it was
    import sqlite_utils

    old = tmp_path / "old.db"
    store_mod.migrate(sqlite_utils.Database(old), upto="m001_initial")
    old_bytes = old.read_bytes()
    r = run("list", "--db", old)
    assert r.exit_code == 1 and "cannot be upgraded where it is" in r.output and old.read_bytes() == old_bytes
    monkeypatch.undo()
    assert filled["b"] in run("list", "--db", tmp_path / "copy.db").stdout
