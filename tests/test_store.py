"""The session store, on real SQLite files (no mocks of the database)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlite_utils

from assistant import store as store_mod
from assistant.store import ReplyWriter, SessionNotFound, Store, StoreError

WORKER = Path(__file__).with_name("store_worker.py")
ROOT = Path(__file__).resolve().parents[1]
STATS = {"prompt_tokens": 12, "completion_tokens": 3, "ttft_s": 0.05, "total_s": 0.4, "finish_reason": "stop"}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def fts_hits(path: Path, word: str) -> list[int]:
    """Ask the FTS index itself (not the content table) which rows hold `word`."""
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("select rowid from messages_fts where messages_fts match ?", [f'"{word}"'])]
    finally:
        conn.close()


def fts_vocab(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        conn.execute("create virtual table temp.v using fts5vocab('main', 'messages_fts', 'row')")
        return {r[0] for r in conn.execute("select term from temp.v")}
    finally:
        conn.close()


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "logs.db"


@pytest.fixture
def store(db_path):
    with Store(db_path) as st:
        yield st


def chat_session(st: Store, question="Is ibuprofen safe with lisinopril?", answer="Ask your pharmacist first.") -> str:
    sid = st.new_session("chat", "smollm2")
    st.add_message(sid, "user", question)
    w = st.start_reply(sid, "smollm2", {"temperature": 0.0})
    for word in answer.split(" "):
        w.append(word + " ")
    w.finish(STATS)
    return sid


def worker(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


# --- location, file mode, switch ------------------------------------------------------


def test_default_location_is_xdg_data_and_file_is_private(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    with Store() as st:
        chat_session(st)
        expected = tmp_path / "data" / "health-assistant" / "logs.db"
        assert st.path == expected
        for p in (expected, Path(f"{expected}-wal")):
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_env_var_and_explicit_path_override(monkeypatch, tmp_path):
    monkeypatch.setenv("ASSISTANT_DB", str(tmp_path / "env.db"))
    assert store_mod.resolve_db_path() == tmp_path / "env.db"
    assert store_mod.resolve_db_path(tmp_path / "x.db") == tmp_path / "x.db"
    with Store() as st:
        assert st.path == tmp_path / "env.db"
    assert (tmp_path / "env.db").exists()


def test_logging_switch_persists_in_xdg_config(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert store_mod.logging_enabled()
    store_mod.set_logging(False)
    assert (tmp_path / "cfg" / "health-assistant" / "logs-off").exists()
    assert not store_mod.logging_enabled()
    assert store_mod.open_store(tmp_path / "a.db") is None and not (tmp_path / "a.db").exists()
    store_mod.set_logging(True)
    assert store_mod.logging_enabled()
    st = store_mod.open_store(tmp_path / "a.db")
    assert isinstance(st, Store)
    st.close()


def test_connection_settings(store):
    q = lambda sql: store.db.execute(sql).fetchone()[0]
    assert q("PRAGMA journal_mode") == "wal"
    assert q("PRAGMA foreign_keys") == 1
    assert q("PRAGMA busy_timeout") >= 5000


# --- write path -------------------------------------------------------------------------


def test_messages_and_reply_figures(store):
    sid = chat_session(store)
    s = store.get_session(sid)
    assert s["mode"] == "chat" and s["model"] == "smollm2"
    user, reply = s["messages"]
    assert (user["role"], user["status"]) == ("user", "complete")
    assert reply["content"] == "Ask your pharmacist first. "
    assert reply["status"] == "complete"
    assert reply["options"] == {"temperature": 0.0}
    assert (reply["prompt_tokens"], reply["completion_tokens"]) == (12, 3)
    assert reply["ttft_s"] == 0.05 and reply["duration_s"] == 0.4
    assert reply["meta"] == {"finish_reason": "stop"}
    assert s["updated"] >= s["created"]


def test_session_ids_sort_by_time(store):
    ids = [store.new_session("chat", "m") for _ in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5 and all(len(i) == 26 for i in ids)


def test_reply_row_exists_at_once_and_flushes_on_a_timer(store):
    now = [0.0]
    sid = store.new_session("chat", "m")
    mid = store.start_reply(sid, "m", {}).message_id
    w = ReplyWriter(store, sid, mid, clock=lambda: now[0])
    content = lambda: store.get_session(sid)["messages"][0]["content"]
    assert store.get_session(sid)["messages"][0]["status"] == "partial"
    for i in range(50):
        w.append(f"w{i} ")
    assert content() == ""  # no time has passed: nothing written yet
    now[0] = 0.6
    w.append("last ")
    assert content() == w.text and w.flushes == 1
    w.append("more ")
    assert content() != w.text  # throttled again


def test_cancel_and_error_keep_partial_text_and_status(store):
    sid = store.new_session("chat", "m")
    store.add_message(sid, "user", "tell me about sleep")
    w = store.start_reply(sid, "m", {})
    w.append("Sleep is ")
    w.cancel({**STATS, "finish_reason": "cancelled"})
    w2 = store.start_reply(sid, "m", {})
    w2.append("Adults need")
    w2.fail("the model ran out of memory")
    with pytest.raises(RuntimeError):
        with store.start_reply(sid, "m", {}) as w3:
            w3.append("half")
            raise RuntimeError("boom")
    msgs = store.get_session(sid)["messages"]
    assert [(m["status"], m["content"]) for m in msgs[1:]] == [
        ("cancelled", "Sleep is "), ("error", "Adults need"), ("error", "half")]
    assert msgs[2]["meta"]["error"] == "the model ran out of memory"
    md = store.export([sid], fmt="markdown")
    assert "**cancelled**" in md and "**error**" in md and "ran out of memory" in md
    data = json.loads(store.export([sid], fmt="json"))
    assert [m["status"] for m in data["sessions"][0]["messages"]] == ["complete", "cancelled", "error", "error"]


def test_batch_run_logs_items_in_one_session(store):
    sid, run_id = store.start_batch("summarize", "/data/visits.jsonl", "/data/out.jsonl", "smollm2")
    for i in range(3):
        store.add_batch_item(sid, f"visit {i}", f"summary {i}", model="smollm2", stats=STATS)
    store.finish_batch(run_id, {"items": 3, "ok": 3, "failed": 0}, "complete")
    s = store.get_session(sid)
    assert s["mode"] == "batch"
    assert [m["role"] for m in s["messages"]] == ["user", "assistant"] * 3
    (run,) = s["batch_runs"]
    assert run["counts"] == {"items": 3, "ok": 3, "failed": 0} and run["status"] == "complete"
    assert run["input_path"] == "/data/visits.jsonl" and run["finished"]
    assert [r["id"] for r in store.list_sessions(mode="batch")] == [sid]


def test_list_rename_archive(store):
    a = chat_session(store)
    b = chat_session(store, question="second question")
    assert [r["id"] for r in store.list_sessions()] == [b, a]
    assert store.list_sessions()[0]["message_count"] == 2
    assert store.list_sessions()[0]["preview"] == "second question"
    store.rename_session(a, "Blood pressure")
    store.archive_session(b)
    assert [r["id"] for r in store.list_sessions()] == [a]
    assert store.list_sessions()[0]["title"] == "Blood pressure"
    assert len(store.list_sessions(include_archived=True)) == 2
    assert store.list_sessions(limit=1, include_archived=True)[0]["id"] == b
    # ids made in the same millisecond share their time part: take the shortest unique prefix
    unique = next(n for n in range(1, len(a) + 1) if not b.startswith(a[:n]))
    assert store.get_session(a[:unique])["id"] == a
    with pytest.raises(SessionNotFound):
        store.get_session("nope")


def test_sigkill_mid_stream_loses_at_most_the_last_half_second(db_path):
    with worker("stream", str(db_path), "100") as proc:  # closes the pipes and reaps the child
        try:
            assert proc.stdout.readline().startswith("ready")
            sent: dict[int, float] = {}
            deadline = time.time() + 30
            while time.time() < deadline:
                i, ts = proc.stdout.readline().split()
                sent[int(i)] = float(ts)
                if float(ts) - sent[0] > 1.7:
                    break
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            for line in proc.stdout.read().split("\n")[:-1]:  # complete lines printed before dying
                if line.count(" ") == 1:
                    i, ts = line.split()
                    sent[int(i)] = float(ts)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == -signal.SIGKILL

    assert integrity(db_path) == "ok"
    with Store(db_path) as st:
        (s,) = st.list_sessions()
        user, reply = st.get_session(s["id"])["messages"]
    assert (user["content"], user["status"]) == ("a question about zebras", "complete")
    assert reply["status"] == "partial"
    tokens = reply["content"].split()
    assert tokens == [f"t{i:05d}" for i in range(len(tokens))]  # an exact prefix of the stream
    # Every token streamed more than ~0.5 s before the last one is on disk (0.1 s of slack;
    # timed on the child's own clock so a stalled test process cannot make this flaky).
    last = max(sent.values())
    must_have = [i for i, ts in sent.items() if ts < last - 0.6]
    assert must_have and len(tokens) > max(must_have)


def test_two_processes_write_at_once(db_path):
    # Both start on a file that does not exist yet, so they also race on creating the schema.
    batch = worker("batch", str(db_path), "300")
    chat = worker("chat", str(db_path), "60")
    outs = [p.communicate(timeout=120) for p in (batch, chat)]
    for p, (out, err) in zip((batch, chat), outs):
        assert p.returncode == 0, err
        assert "locked" not in err
    batch_sid, chat_sid = outs[0][0].strip(), outs[1][0].strip()
    with Store(db_path) as st:
        b = st.get_session(batch_sid)
        c = st.get_session(chat_sid)
    assert sorted(m["content"] for m in b["messages"] if m["role"] == "user") == sorted(f"batch input {i}" for i in range(300))
    assert len(b["messages"]) == 600 and b["batch_runs"][0]["status"] == "complete"
    assert len(c["messages"]) == 120
    assert all(m["status"] == "complete" for m in c["messages"])
    assert c["messages"][-1]["content"] == "".join(f"chat answer 59 part {j} " for j in range(5))
    assert integrity(db_path) == "ok"


class SwitchRefusedAtFirst:
    """A connection whose first `refusals` WAL switches fail the way SQLite fails the
    loser of two processes switching a new file at once: "database is locked", at once."""

    def __init__(self, conn: sqlite3.Connection, refusals: int):
        self.conn, self.refusals, self.switches = conn, refusals, 0

    def execute(self, sql: str):
        if sql.replace(" ", "").lower() == "pragmajournal_mode=wal":
            self.switches += 1
            if self.switches <= self.refusals:
                raise sqlite3.OperationalError("database is locked")
        return self.conn.execute(sql)


def test_wal_switch_refused_by_a_concurrent_open_is_retried(db_path):
    conn = sqlite3.connect(db_path)
    flaky = SwitchRefusedAtFirst(conn, refusals=3)
    assert store_mod._enable_wal(flaky, timeout_s=5)
    assert flaky.switches == 4
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    with Store(db_path) as st:  # and the file is a good store afterwards
        st.new_session("chat", "m")


def test_wal_switch_still_refused_after_the_timeout_raises(db_path):
    conn = sqlite3.connect(db_path)
    flaky = SwitchRefusedAtFirst(conn, refusals=10**6)
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store_mod._enable_wal(flaky, timeout_s=0.3)
    assert 0.15 < time.monotonic() - started < 3
    assert flaky.switches > 2
    conn.close()


# --- search and deletion ------------------------------------------------------------------


def test_search_finds_both_roles_ranked_with_snippets(store):
    a = chat_session(store, question="My knee hurts after running", answer="Rest the knee and apply ice.")
    chat_session(store, question="What helps a headache?", answer="Water and rest often help.")
    hits = store.search("knee")
    assert {h["role"] for h in hits} == {"user", "assistant"}
    assert all(h["session_id"] == a for h in hits)
    assert any("**knee**" in h["snippet"] for h in hits)
    assert [h["rank"] for h in hits] == sorted(h["rank"] for h in hits)  # bm25: lower is better
    both = store.search("rest")
    assert len(both) == 2
    assert store.search("knee ice")[0]["role"] == "assistant"  # all words must match


def test_search_by_mode_and_one_best_hit_per_session(store):
    sid, _ = store.start_batch("summarize", "visits.jsonl", None, "smollm2")
    for i in range(30):  # a batch run: many matching messages, ranked above the chat's
        store.add_batch_item(sid, f"fever fever fever visit {i}", f"fever summary {i}", model="smollm2", stats=STATS)
    chat = chat_session(store, question="Is a fever of 38 bad?", answer="A fever of 38 is common.")
    assert all(h["mode"] != "chat" for h in store.search("fever", limit=20))  # the chat hit is crowded out
    hits = store.search("fever", limit=20, mode="chat")
    assert {h["session_id"] for h in hits} == {chat} and len(hits) == 2
    best = store.search("fever", limit=20, per_session=True)
    assert sorted(h["session_id"] for h in best) == sorted([sid, chat])
    assert best[0]["rank"] == min(h["rank"] for h in store.search("fever", limit=100))


@pytest.mark.parametrize("query", ['"', 'knee"', '-knee', 'knee -', 'NOT', 'knee OR', '"un"balanced"', '*', '(knee',
                                  'knee:', 'col:knee', "'", '^', '', '   ', 'NEAR(knee', 'ü"ber'])
def test_search_odd_punctuation_does_not_crash(store, query):
    chat_session(store, question="My knee hurts")
    hits = store.search(query)
    assert isinstance(hits, list)
    if query in ('knee"', "-knee", "knee -", "(knee", "knee:"):  # punctuation dropped, the word is found
        assert hits and "knee" in hits[0]["snippet"]


def test_delete_session_leaves_no_trace_in_fts_or_file(store, db_path):
    gone = chat_session(store, question="my xylophonist neighbour", answer="quokkaish advice")
    kept = chat_session(store, question="keep this zebra")
    assert fts_hits(db_path, "xylophonist") and "quokkaish" in fts_vocab(db_path)
    store.delete_session(gone)
    assert fts_hits(db_path, "xylophonist") == [] and fts_hits(db_path, "quokkaish") == []
    vocab = fts_vocab(db_path)
    assert "xylophonist" not in vocab and "quokkaish" not in vocab and "zebra" in vocab
    store.vacuum()
    for p in db_path.parent.glob("logs.db*"):
        assert b"xylophonist" not in p.read_bytes(), p
    with pytest.raises(SessionNotFound):
        store.get_session(gone)
    assert [r["id"] for r in store.list_sessions()] == [kept]
    assert store.search("zebra") and not store.search("xylophonist")
    assert integrity(db_path) == "ok"


def test_delete_before_removes_old_rows_only(store, db_path):
    old = chat_session(store, question="ancient wombat question")
    spanning = store.new_session("chat", "m")
    store.add_message(spanning, "user", "early wombat message")
    time.sleep(0.01)
    cutoff = datetime.now()  # naive = local time, as typed at the command line
    time.sleep(0.01)
    store.add_message(spanning, "user", "later capybara message")
    new = chat_session(store, question="fresh question")
    counts = store.delete_before(cutoff)
    assert counts == {"messages": 3, "sessions": 1}
    ids = {r["id"] for r in store.list_sessions()}
    assert ids == {spanning, new} and old not in ids
    assert [m["content"] for m in store.get_session(spanning)["messages"]] == ["later capybara message"]
    assert fts_hits(db_path, "wombat") == [] and "wombat" not in fts_vocab(db_path)
    assert store.search("capybara")
    assert store.delete_before(cutoff - timedelta(days=1)) == {"messages": 0, "sessions": 0}
    assert integrity(db_path) == "ok"


# --- export / import / backup ---------------------------------------------------------------


def _comparable(export: str) -> list[dict]:
    sessions = json.loads(export)["sessions"]
    for s in sessions:
        for m in s["messages"]:
            m.pop("id")
        for r in s["batch_runs"]:
            r.pop("id")
    return sessions


def test_export_json_import_round_trips(store, tmp_path):
    chat_session(store)
    sid = store.new_session("kiosk", "smollm2", title="Kiosk ü")
    store.add_message(sid, "user", "ça va?", meta={"triage": "green", "sources": ["a", "b"]})
    w = store.start_reply(sid, "smollm2", {"max_tokens": 8})
    w.append("partial answer")
    w.cancel()
    bsid, run = store.start_batch("qa", "in.jsonl", None, "smollm2")
    store.add_batch_item(bsid, "q", "a")
    store.finish_batch(run, {"items": 1}, "complete")
    store.archive_session(bsid)
    exported = store.export(fmt="json")
    path = tmp_path / "export.json"
    path.write_text(exported)

    with Store(tmp_path / "fresh.db") as fresh:
        assert fresh.import_json(path) == {"sessions": 3, "messages": 6, "skipped": 0}
        assert _comparable(fresh.export(fmt="json")) == _comparable(exported)
        assert fresh.search("partial")
        assert fresh.import_json(path) == {"sessions": 0, "messages": 0, "skipped": 3}
        assert fresh.export(fmt="markdown") == store.export(fmt="markdown")


def test_import_rejects_foreign_json(store, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(StoreError, match="not a health-assistant logs export"):
        store.import_json(bad)
    bad.write_text("not json")
    with pytest.raises(StoreError, match="bad.json"):
        store.import_json(bad)


def test_backup_is_a_consistent_copy_while_in_use(store, tmp_path):
    sid = chat_session(store)
    w = store.start_reply(sid, "smollm2", {})
    w.append("streaming in progress")
    w.flush()
    other = Store(store.path)  # another writer holding the file open
    other.add_message(sid, "user", "from another connection")
    dest = store.backup(tmp_path / "backups" / "copy.db")
    other.close()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert integrity(dest) == "ok"
    with Store(dest) as copy:
        msgs = copy.get_session(sid)["messages"]
    assert [m["status"] for m in msgs] == ["complete", "complete", "partial", "complete"]
    assert msgs[2]["content"] == "streaming in progress"
    with pytest.raises(StoreError, match="itself"):
        store.backup(store.path)


# --- migrations --------------------------------------------------------------------------


def test_migrations_are_named_ordered_and_applied_once(store):
    names = [fn.__name__ for fn in store_mod.MIGRATIONS]
    assert names == sorted(names) and len(names) >= 2
    assert store_mod.applied_migrations(store.db) == names
    assert store_mod.migrate(store.db) == []


def test_old_schema_file_is_upgraded_with_data_intact(db_path):
    db = sqlite_utils.Database(db_path)
    assert store_mod.migrate(db, upto="m001_initial") == ["m001_initial"]
    assert not db["batch_runs"].exists()
    db["sessions"].insert({"id": "01oldsession", "title": "old", "mode": "chat", "model": "m",
                           "created": "2024-01-01T00:00:00+00:00", "updated": "2024-01-01T00:00:00+00:00",
                           "archived": 0})
    db["messages"].insert({"session_id": "01oldsession", "role": "user", "content": "legacy platypus",
                           "created": "2024-01-01T00:00:00+00:00", "status": "complete"})
    db.close()
    with Store(db_path) as st:
        assert store_mod.applied_migrations(st.db) == [fn.__name__ for fn in store_mod.MIGRATIONS]
        assert st.db["batch_runs"].exists()
        s = st.get_session("01oldsession")
        assert s["title"] == "old" and s["messages"][0]["content"] == "legacy platypus"
        assert st.search("platypus")[0]["session_id"] == "01oldsession"
        st.start_batch("qa", "in", "out", "m")  # the new table works


# --- bad input -------------------------------------------------------------------------------


def test_newer_schema_is_refused_and_untouched(db_path):
    with Store(db_path) as st:
        chat_session(st)
    conn = sqlite3.connect(db_path)
    conn.execute("insert into _migrations (name, applied_at) values ('m999_from_the_future', 'x')")
    conn.commit()
    conn.close()
    before = sha(db_path)
    with pytest.raises(StoreError) as e:
        Store(db_path)
    assert str(db_path) in str(e.value) and "newer version" in str(e.value) and "m999_from_the_future" in str(e.value)
    assert sha(db_path) == before


@pytest.mark.parametrize("content", [b"Patient notes, definitely not a database.\n" * 200,
                                     b"SQLite format 3\x00" + bytes(range(256)) * 40])
def test_not_a_database_is_refused_and_untouched(tmp_path, content):
    path = tmp_path / "notes.db"
    path.write_bytes(content)
    before = sha(path)
    with pytest.raises(StoreError) as e:
        Store(path)
    assert str(path) in str(e.value) and ("not a SQLite database" in str(e.value) or "not a valid" in str(e.value))
    assert sha(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(StoreError, match="not a file"):
        Store(tmp_path)


@pytest.fixture
def readonly_dir(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    yield d  # the test fills it, then calls make_readonly(d)
    subprocess.run(["chattr", "-i", str(d)], capture_output=True)
    d.chmod(0o755)


def make_readonly(d: Path) -> None:
    d.chmod(0o555)
    if os.geteuid() == 0:  # root ignores permission bits; an immutable directory stops root too
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode:
            pytest.skip("running as root without a way to make a directory read-only")


def test_read_only_location_gives_a_clear_error(readonly_dir):
    make_readonly(readonly_dir)
    target = readonly_dir / "sub" / "logs.db"
    with pytest.raises(StoreError) as e:
        Store(target)
    assert str(target) in str(e.value) and "read-only" in str(e.value)
    with pytest.raises(StoreError, match="read-only"):
        Store(readonly_dir / "logs.db")


def test_existing_database_in_read_only_location(readonly_dir):
    path = readonly_dir / "logs.db"
    with Store(path) as st:
        chat_session(st)
    before = sha(path)
    make_readonly(readonly_dir)
    with pytest.raises(StoreError) as e:
        with Store(path) as st:
            chat_session(st)
    assert str(path) in str(e.value)
    assert sha(path) == before


def test_full_disk_gives_a_clear_error_without_corruption(db_path):
    with Store(db_path) as st:
        sid = chat_session(st)
    before = sha(db_path)
    st = Store(db_path)
    # A disk that is full right now: the file may not grow by a single page.
    pages = st.db.execute("PRAGMA page_count").fetchone()[0]
    st.db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StoreError) as e:
        st.add_message(sid, "user", "x" * 200_000)
    assert str(db_path) in str(e.value) and "disk is full" in str(e.value)
    assert len(st.get_session(sid)["messages"]) == 2
    st.close()
    assert sha(db_path) == before
    assert integrity(db_path) == "ok"
    with Store(db_path) as again:
        assert [m["content"] for m in again.get_session(sid)["messages"]][0] == "Is ibuprofen safe with lisinopril?"
        again.add_message(sid, "user", "space is back")


# --- benchmark ------------------------------------------------------------------------------


def test_bench_logging_synthetic_and_backend(word_backend, tmp_path):
    from assistant import bench_logging

    r = bench_logging.run(n_tokens=60, tokens_per_s=600, repeats=1, db_path=tmp_path / "b.db")
    assert r["source"] == "synthetic" and r["tokens"] == 60 and r["tokens_per_s"] == 600
    assert r["baseline_s"] >= 0.09 and r["added_s"] > 0
    assert {"added_pct", "wall_added_pct", "ok", "flushes_per_reply"} <= r.keys()
    word_backend.reply = " ".join(f"w{i}" for i in range(30))
    word_backend.delay = 0.002
    r = bench_logging.run(n_tokens=30, repeats=1, backend=word_backend)
    assert r["source"] == "backend" and r["tokens"] == 30


def test_bench_logging_module_prints_json():
    out = subprocess.run([sys.executable, "-m", "assistant.bench_logging", "--tokens", "20", "--rate", "2000",
                          "--repeats", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["tokens"] == 20


def test_session_deleted_while_reply_streams(store):
    sid = store.new_session("chat", "m")
    w = store.start_reply(sid, "m", {})
    w.append("first ")
    store.delete_session(sid)
    w.flush()
    w.finish(STATS)  # nothing left to write to; the reply itself carries on
    assert store.list_sessions() == []


def test_imported_dates_are_stored_in_utc_so_delete_before_is_right(store):
    def session(sid, when):
        return {"id": sid, "mode": "chat", "created": when, "updated": when,
                "messages": [{"role": "user", "content": sid, "created": when}],
                "batch_runs": [{"task": "qa", "started": when, "status": "complete"}]}

    store.import_json({"format": "health-assistant-logs", "sessions": [
        session("later", "2025-03-01T20:00:00-08:00"),  # 04:00 UTC on 2 March
        session("older", "20250101T120000+00:00"),
    ]})
    got = {s["id"]: s for s in (store.get_session(i) for i in ("later", "older"))}
    assert got["later"]["created"] == "2025-03-02T04:00:00.000000+00:00"
    assert got["later"]["messages"][0]["created"] == got["later"]["created"]
    assert got["later"]["batch_runs"][0]["started"] == got["later"]["created"]
    assert got["older"]["updated"] == "2025-01-01T12:00:00.000000+00:00"
    store.delete_before(datetime.fromisoformat("2025-03-02T00:00:00+00:00"))
    assert [s["id"] for s in store.list_sessions()] == ["later"]
    with pytest.raises(StoreError, match="field 'created' must be an ISO date and time"):
        store.import_json({"format": "health-assistant-logs", "sessions": [session("end", "9999-12-31T23:00:00-05:00")]})


def test_a_session_id_prefix_is_literal_and_case_sensitive(store):
    def session(sid):
        return {"id": sid, "mode": "chat", "created": "2025-01-01T00:00:00+00:00",
                "updated": "2025-01-01T00:00:00+00:00", "messages": []}

    store.import_json({"format": "health-assistant-logs", "sessions": [session(i) for i in ("visit-1", "visit-10", "A_B")]})
    store.delete_session("visit-1")
    with pytest.raises(SessionNotFound):
        store.delete_session("visit-1")  # used to fall back to a prefix and delete visit-10
    assert store.get_session("visit-10")
    with pytest.raises(SessionNotFound):
        store.get_session("a_")  # "_" was a wildcard and the case was ignored
    with pytest.raises(SessionNotFound):
        store.get_session("A_")  # a prefix stands only for the assistant's own long ids
    own = chat_session(store)
    assert store.get_session(own[:8])["id"] == own
    with pytest.raises(SessionNotFound):
        store.get_session(own[:8].upper())
    # Imported ids sorting first must not hide that two of the assistant's own share the prefix.
    other = chat_session(store)
    shared = os.path.commonprefix([own, other])
    store.import_json({"format": "health-assistant-logs", "sessions": [session(shared + s) for s in ("-a", "-b")]})
    with pytest.raises(SessionNotFound, match="matches several"):
        store.get_session(shared)


def test_vacuum_says_when_a_reader_keeps_deleted_text_on_disk(store, db_path):
    sid = chat_session(store, question="secret wombat")
    reader = sqlite3.connect(db_path)
    reader.execute("begin")
    reader.execute("select count(*) from messages").fetchone()  # an open read holds the WAL
    store.delete_session(sid)
    store.db.execute("PRAGMA busy_timeout = 100")  # the check, not the wait, is under test
    with pytest.raises(StoreError, match="another program is reading the log"):
        store.vacuum()
    reader.close()
    store.vacuum()
    assert not any(b"wombat" in p.read_bytes() for p in db_path.parent.glob("logs.db*"))


def test_backup_is_private_and_never_lands_on_a_side_file_or_another_database(store, db_path, tmp_path):
    chat_session(store)
    old = tmp_path / "old.db"
    store.backup(old)
    old.chmod(0o644)
    store.backup(old)  # a backup again over an earlier one is fine, and private again
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    with pytest.raises(StoreError, match="side file of the database"):
        store.backup(db_path.with_name(db_path.name + "-wal"))
    other = tmp_path / "patients.db"
    with sqlite3.connect(other) as conn:
        conn.execute("create table patients (id integer primary key)")
    with pytest.raises(StoreError, match="another program's SQLite database"):
        store.backup(other)


def test_backup_refuses_to_overwrite_a_non_database(store, tmp_path):
    precious = tmp_path / "thesis.txt"
    precious.write_text("years of work")
    with pytest.raises(StoreError, match="refusing"):
        store.backup(precious)
    assert precious.read_text() == "years of work"


def test_titles_are_found_in_any_case_beyond_ascii(store):
    sid = store.new_session("chat", "m", title="Ödem im Bein")
    store.new_session("kiosk", "m", title="Ödem again")
    assert [s["id"] for s in store.sessions_titled("ödem bein")] == [sid]
    assert [s["title"] for s in store.sessions_titled("ÖDEM", mode="kiosk")] == ["Ödem again"]
    assert store.sessions_titled("   ") == []
