"""The session store: an SQLite log of every session. The only module that touches the database.

Location: ``$ASSISTANT_DB`` if set, else ``$XDG_DATA_HOME/health-assistant/logs.db``
(``~/.local/share/health-assistant/logs.db``). The file is created with mode 0600.

Public API::

    Store(path=None)                                  # raises StoreError on any bad file
    store.new_session(mode, model, title=None) -> str          # mode: chat | kiosk | batch
    store.add_message(session_id, role, content, *, model=None, options=None,
                      status="complete", meta=None, stats=None) -> int   # committed at once
    store.start_reply(session_id, model, options=None) -> ReplyWriter
        writer.append(piece)        # flushed to disk at most every FLUSH_INTERVAL_S
        writer.finish(stats=None, status="complete", meta=None)
        writer.cancel(stats=None)   # status "cancelled", partial text kept
        writer.fail(error, stats=None)  # status "error", error in meta["error"]
    store.start_batch(task, input_path, output_path, model) -> (session_id, run_id)
    store.add_batch_item(session_id, input_text, output_text, *, model=None, options=None,
                         stats=None, status="complete", meta=None) -> (user_id, reply_id)
    store.finish_batch(run_id, counts, status="complete")
    store.list_sessions(limit=20, mode=None, include_archived=False) -> list[dict]
    store.get_session(id) -> dict (with "messages" and "batch_runs")
    store.search(query, limit=20, mark=("**", "**")) -> list[dict]   # bm25-ranked, snippet
    store.rename_session(id, title); store.archive_session(id, archived=True)
    store.delete_session(id); store.delete_before(when) -> dict; store.vacuum()
    store.export(ids=None, fmt="markdown" | "json") -> str; store.import_json(src, max_bytes=None) -> dict
    store.summary() -> dict; store.check() -> str | None; store.backup(path); store.close()
    recover(damaged_path, new_path) -> dict   # what a damaged log still holds, into a new log

    logging_enabled() / set_logging(bool)   # marker file $XDG_CONFIG_HOME/health-assistant/logs-off
    open_store(path=None) -> Store | None   # None when logging is switched off

Every failure of the database (not a database, written by a newer version, read-only
location, disk full, locked too long) is raised as ``StoreError`` whose message names
the file and the problem; ``LogNotWritable`` (a read-only location) and ``LogDamaged``
(the file is damaged: checked when opened for writing, and at the first "malformed"
error, after which nothing more is written) are the two a caller may treat apart. Session ids are time-sortable ULIDs; message ids are integers.
A message's ``status`` is one of complete / partial / cancelled / error.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import sqlite_utils
from sqlite_utils.db import NotFoundError

from . import paths
from .limits import FILE_ENV, InputTooLarge, human, read_bounded

DB_ENV = "ASSISTANT_DB"
FLUSH_INTERVAL_S = 0.5
BUSY_TIMEOUT_MS = 10_000
STATUSES = ("complete", "partial", "cancelled", "error")
MODES = ("chat", "kiosk", "batch")
EXPORT_FORMAT = "health-assistant-logs"
_SQLITE_HEADER = b"SQLite format 3\x00"


class StoreError(Exception):
    """The log database could not be opened, read or written."""


class SessionNotFound(StoreError):
    pass


class LogNotWritable(StoreError):
    """The log cannot be created or written where it is (a read-only folder or share)."""


class LogDamaged(StoreError):
    """The log's file is damaged: it is read as far as it can be, never written."""


RECOVER_HINT = ("`assistant logs recover NEW.db` copies what can still be read into a new file, "
                "leaving this one as it is")
# How long opening a log for writing may spend checking it. PRAGMA quick_check reads every
# page: milliseconds for a log of a few MB; a larger one is checked as far as the budget
# goes, and a damaged page found later still stops writes at the first error it causes.
INTEGRITY_BUDGET_S = 0.3


# --- locations and the on/off switch --------------------------------------------------


def default_db_path() -> Path:
    return paths.data_home() / "logs.db"


def resolve_db_path(path: str | os.PathLike | None = None) -> Path:
    if path:
        return Path(path).expanduser()
    if os.environ.get(DB_ENV):
        return Path(os.environ[DB_ENV]).expanduser()
    return default_db_path()


def _logs_off_marker() -> Path:
    return paths.config_home() / "logs-off"


def logging_enabled() -> bool:
    return not _logs_off_marker().exists()


def set_logging(enabled: bool) -> None:
    marker = _logs_off_marker()
    try:
        if enabled:
            marker.unlink(missing_ok=True)
        else:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("Session logging is off. Run `assistant logs on` to turn it back on.\n")
    except OSError as e:
        raise StoreError(f"{marker}: cannot change the logging switch: {e.strerror}") from e


def open_store(path: str | os.PathLike | None = None) -> "Store | None":
    """The write path's entry point: a Store, or None when the user switched logging off."""
    return Store(path) if logging_enabled() else None


# --- small helpers ----------------------------------------------------------------------

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


_last_id = [0]
_id_lock = threading.Lock()


def new_id() -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, so ids sort by creation time.

    Within one millisecond the previous id plus one is used (ULID's monotonic mode),
    so ids made by one process keep their order.
    """
    with _id_lock:
        n = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
        if n >> 80 == _last_id[0] >> 80 and n <= _last_id[0]:
            n = _last_id[0] + 1
        _last_id[0] = n
    return "".join(_CROCKFORD[(n >> shift) & 31] for shift in range(125, -1, -5))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _iso(when: datetime) -> str:
    # Naive datetimes are the user's local time (e.g. `--before 2025-01-01`).
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def fts_query(text: str) -> str:
    """Each word becomes a quoted FTS5 term (implicit AND): no user input is FTS syntax."""
    return " ".join(f'"{word}"' for word in re.findall(r"\w+", text))


def _explain(exc: sqlite3.Error, path: Path | None = None) -> str:
    msg = str(exc)
    low = msg.lower()
    if "malformed" in low:
        return f"the log is damaged ({msg}); {RECOVER_HINT}"
    if "not a database" in low:
        return f"not a valid SQLite database ({msg})"
    if "full" in low or (path is not None and "disk i/o error" in low and _disk_full(path)):
        return f"the disk is full or the database reached its size limit ({msg})"
    if "readonly" in low or "read-only" in low or "unable to open" in low:
        return f"cannot write there: read-only location or no permission ({msg})"
    if "locked" in low or "busy" in low:
        return f"the database stayed locked by another process for too long ({msg})"
    return msg


def _disk_full(path: Path) -> bool:
    """Whether the folder holding `path` has no room left: SQLite reports a write that found
    no room while it opens a file as a plain "disk I/O error"."""
    try:
        st = os.statvfs(path.parent)
    except (OSError, AttributeError):
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def _storable(text: str | None) -> str | None:
    """A file name or title as SQLite can store it: bytes of a name that are not UTF-8
    (kept by Python as lone surrogates) shown as \\x escapes instead of failing the write."""
    if text is None:
        return None
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # half of a character from a \u escape, not an undecodable byte
        return text.encode("utf-8", "replace").decode("utf-8")


def _read_header(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(len(_SQLITE_HEADER))


def _side_file_of(path: Path) -> Path | None:
    """The SQLite database whose journal, WAL or shared-memory file `path` is, if any."""
    for suffix in ("-wal", "-shm", "-journal"):
        if path.name.endswith(suffix):
            base = path.with_name(path.name[: -len(suffix)])
            try:
                if base.is_file() and _read_header(base) == _SQLITE_HEADER:
                    return base
            except OSError:
                pass
    return None


def _is_log(path: Path) -> bool:
    """Whether a SQLite file is one of ours (it has the migrations table) or holds nothing yet."""
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            names = {r[0] for r in conn.execute("select name from sqlite_master")}
            return not names or "_migrations" in names
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def write_export(dest: Path, text: str) -> None:
    """Write an export readable by the owner only, never over a database (the log above all,
    gone if written over) or one of its side files. StoreError says why not."""
    if holds_sqlite(dest):
        raise StoreError(f"{dest}: is a SQLite database; refusing to write the export over it")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        paths.write_private(dest, text)
    except OSError as e:
        raise StoreError(f"{dest}: cannot write the export: {e.strerror}") from e


def holds_sqlite(path: Path) -> bool:
    """Whether `path` is a SQLite database or one of its side files (journal, WAL, shared
    memory): what an export or any other text must never be written over."""
    path = Path(path)
    if _side_file_of(path) is not None:
        return True
    try:
        return path.is_file() and _read_header(path) == _SQLITE_HEADER
    except OSError:
        return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except (OSError, ValueError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _create_private(path: Path) -> None:
    """Create an empty file readable by the owner only, before SQLite opens it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)  # the umask may have masked bits off; make it exact anyway


def _enable_wal(conn: sqlite3.Connection, timeout_s: float = BUSY_TIMEOUT_MS / 1000) -> bool:
    """Switch the file to WAL (a lasting property of the file, so usually already done);
    False when SQLite refuses (a read-only location).

    Two processes opening a new file at once both try the switch. SQLite answers one of
    them "database is locked" at once, without waiting on busy_timeout, because waiting
    could deadlock (both hold a read lock and want to write), so that open is retried here
    until the other's switch is done or the timeout has passed."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return True
            return conn.execute("PRAGMA journal_mode = wal").fetchone()[0] == "wal"
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


# --- migrations (applied in order, once each, recorded in _migrations) ----------------

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []


def migration(fn: Callable[[sqlite_utils.Database], None]):
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    db["sessions"].create(
        {"id": str, "title": str, "mode": str, "model": str, "created": str, "updated": str, "archived": int},
        pk="id",
        not_null={"mode", "created", "updated", "archived"},
        defaults={"archived": 0},
    )
    db["messages"].create(
        {
            "id": int,
            "session_id": str,
            "role": str,
            "content": str,
            "created": str,
            "model": str,
            "options": str,  # GenerationOptions as JSON
            "prompt_tokens": int,
            "completion_tokens": int,
            "ttft_s": float,
            "duration_s": float,
            "status": str,
            "meta": str,  # free JSON: finish_reason, error, later triage/sources
        },
        # An INTEGER PRIMARY KEY is the rowid; the external-content FTS index refers to
        # rowids, which VACUUM may renumber for tables without one.
        pk="id",
        foreign_keys=[("session_id", "sessions", "id")],
        not_null={"session_id", "role", "content", "created", "status"},
        defaults={"content": "", "status": "complete"},
    )
    db["messages"].create_index(["session_id"])
    db["messages"].enable_fts(["content"], fts_version="FTS5", create_triggers=True)


@migration
def m002_batch_runs(db: sqlite_utils.Database) -> None:
    db["batch_runs"].create(
        {
            "id": int,
            "session_id": str,
            "task": str,
            "input_path": str,
            "output_path": str,
            "model": str,
            "counts": str,  # JSON, e.g. {"items": 40, "ok": 39, "failed": 1}
            "started": str,
            "finished": str,
            "status": str,  # running | complete | partial | cancelled | error
        },
        pk="id",
        foreign_keys=[("session_id", "sessions", "id")],
        not_null={"session_id", "task", "started", "status"},
    )
    db["batch_runs"].create_index(["session_id"])


@migration
def m003_time_indexes(db: sqlite_utils.Database) -> None:
    # `logs list` sorts by sessions.updated; `delete --before` filters on created.
    db["sessions"].create_index(["updated"])
    db["messages"].create_index(["created"])


def applied_migrations(db: sqlite_utils.Database) -> list[str]:
    if not db["_migrations"].exists():
        return []
    return [r["name"] for r in db.query("select name from _migrations order by rowid")]


def migrate(db: sqlite_utils.Database, upto: str | None = None) -> list[str]:
    """Apply the pending migrations (all, or up to and including `upto`) in one transaction.

    BEGIN IMMEDIATE takes the write lock before reading what is applied, so two
    processes opening a fresh file at once cannot both run m001.
    """
    done: list[str] = []
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        db["_migrations"].create({"name": str, "applied_at": str}, pk="name", if_not_exists=True)
        applied = set(applied_migrations(db))
        for fn in MIGRATIONS:
            if fn.__name__ not in applied:
                fn(db)
                db["_migrations"].insert({"name": fn.__name__, "applied_at": now_iso()})
                done.append(fn.__name__)
            if fn.__name__ == upto:
                break
        db.conn.execute("COMMIT")
    except BaseException:
        db.rollback()
        raise
    return done


def _quick_check(conn: sqlite3.Connection, budget_s: float) -> str | None:
    """What PRAGMA quick_check finds wrong: "" for nothing, None when it did not finish within
    `budget_s`."""
    deadline = time.monotonic() + budget_s
    conn.set_progress_handler(lambda: time.monotonic() > deadline, 1000)
    try:
        rows = conn.execute("PRAGMA quick_check(3)").fetchall()
    except sqlite3.OperationalError as e:
        if "interrupt" in str(e).lower():
            return None
        raise
    finally:
        conn.set_progress_handler(None, 0)
    problems = [" ".join(str(r[0]).split()) for r in rows if r[0] != "ok"]
    return "; ".join(problems)[:300]


def _read_only_connection(path: Path) -> sqlite3.Connection:
    """A connection that never writes. A log in WAL mode needs its -shm file, which a
    read-only folder cannot hold; SQLite then opens it only as immutable, which is right
    for a copy that nothing else writes."""
    uri = path.resolve().as_uri()
    conn = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    try:
        conn.execute("select count(*) from sqlite_master").fetchone()  # opening is lazy: read once
        return conn
    except sqlite3.OperationalError:
        conn.close()
        if os.access(path.parent, os.W_OK):
            raise
    wal = path.with_name(path.name + "-wal")
    if wal.is_file() and wal.stat().st_size:
        # immutable reads the main file only: the latest sessions would be silently missing
        raise sqlite3.OperationalError(f"{wal.name} beside it holds changes not yet in the main file, and "
                                       "they cannot be read where nothing may be written; copy both files "
                                       "somewhere writable")
    conn = sqlite3.connect(uri + "?immutable=1", uri=True, check_same_thread=False)
    conn.execute("select count(*) from sqlite_master").fetchone()
    return conn


# --- the store --------------------------------------------------------------------------


class Store:
    """The session log. Safe to share between threads; several processes may write at once."""

    def __init__(self, path: str | os.PathLike | None = None, read_only_ok: bool = False):
        """`read_only_ok`: for a caller that only reads, a log it may not write (a backup on a
        read-only share, a file of another user's) is opened read-only instead of refused."""
        self.path = resolve_db_path(path)
        self._lock = threading.RLock()
        self.damaged = False  # set by the first "malformed" error: no write is tried after it
        self._preflight(check_integrity=not read_only_ok)
        self.read_only = read_only_ok and self.path.is_file() and not (
            os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK))
        self.db = self._connect_read_only() if self.read_only else self._connect()
        self._messages = self.db.table("messages")
        self._sessions = self.db.table("sessions")
        self._runs = self.db.table("batch_runs")

    # -- opening

    def _fail(self, problem: str) -> StoreError:
        return StoreError(f"{self.path}: {problem}")

    def _preflight(self, check_integrity: bool = True) -> None:
        """Refuse a bad file before anything is written to it, so it stays byte-for-byte intact.
        `check_integrity`: a log about to be written is checked for damage first (within
        INTEGRITY_BUDGET_S): written into, a damaged log loses more, and silently."""
        p = self.path
        try:
            os.stat(p)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise self._fail("is a symlink loop (a link that leads back to itself)") from e
        if not p.exists():
            return
        if not p.is_file():
            raise self._fail("is not a file")
        try:
            header = _read_header(p)
        except OSError as e:
            raise self._fail(f"cannot read the file: {e.strerror}") from e
        if not header:
            return  # an empty file is a new database to SQLite too
        if header != _SQLITE_HEADER:
            raise self._fail("is not a SQLite database (refusing to touch it)")
        try:
            conn = _read_only_connection(p)
            try:
                known = {fn.__name__ for fn in MIGRATIONS}
                existing = sqlite_utils.Database(conn, execute_plugins=False)
                applied = applied_migrations(existing)
                tables = set(existing.table_names())
                damage = _quick_check(conn, INTEGRITY_BUDGET_S) if check_integrity else None
            finally:
                conn.close()
        except sqlite3.Error as e:
            if "malformed" in str(e).lower():
                raise LogDamaged(f"{p}: {_explain(e)}") from e
            raise self._fail(_explain(e, p)) from e
        if damage:
            raise LogDamaged(f"{p}: the log is damaged ({damage}), so nothing was written to it; {RECOVER_HINT}")
        if not applied and tables:
            raise self._fail(
                f"is another program's SQLite database (tables: {', '.join(sorted(tables)[:5])}); "
                "refusing to add the log to it: use another --db"
            )
        unknown = [name for name in applied if name not in known]
        if unknown:
            raise self._fail(
                f"was written by a newer version of the assistant (unknown migrations: {', '.join(unknown)}); "
                "upgrade the assistant or use another --db"
            )

    def _connect(self) -> sqlite_utils.Database:
        p = self.path
        try:
            p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not p.exists():
                _create_private(p)
            elif p.stat().st_size == 0:  # an empty file made beforehand (touch): it is about to hold the log
                os.chmod(p, 0o600)
        except FileExistsError:
            pass  # another process created it between our check and open
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise self._fail("cannot create the database: the disk is full") from e
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise LogNotWritable(f"{p}: cannot create the log: {e.strerror} (read-only location?)") from e
            raise self._fail(f"cannot create the database: {e.strerror}") from e
        conn = None
        try:
            conn = sqlite3.connect(p, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
            db = sqlite_utils.Database(conn)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA foreign_keys = ON")
            # Deleted text is overwritten, not just unlinked: these are health conversations.
            db.execute("PRAGMA secure_delete = ON")
            if not _enable_wal(conn):
                raise LogNotWritable(f"{p}: cannot switch the database to WAL mode (read-only location?)")
            # In WAL mode NORMAL never corrupts; a power cut may drop the last commits.
            db.execute("PRAGMA synchronous = NORMAL")
            known = [fn.__name__ for fn in MIGRATIONS]
            if set(applied_migrations(db)) != set(known):
                migrate(db)
            return db
        except (sqlite3.Error, StoreError) as e:
            if conn is not None:
                conn.close()
            if isinstance(e, StoreError):
                raise
            low = str(e).lower()
            if "readonly" in low or "read-only" in low or "unable to open" in low:
                raise LogNotWritable(f"{p}: {_explain(e)}") from e
            if "malformed" in low:
                raise LogDamaged(f"{p}: {_explain(e)}") from e
            raise self._fail(_explain(e, p)) from e

    def _connect_read_only(self) -> sqlite_utils.Database:
        """Reads without writing a byte: no WAL switch, no migration."""
        try:
            conn = _read_only_connection(self.path)
            applied = set(applied_migrations(sqlite_utils.Database(conn)))
        except sqlite3.Error as e:
            raise self._fail(f"cannot read the log here: {_explain(e)}") from e
        missing = [fn.__name__ for fn in MIGRATIONS if fn.__name__ not in applied]
        if missing:
            conn.close()
            raise self._fail("was written by an older version and cannot be upgraded where it is (no write "
                             "access); copy it somewhere writable and use --db with the copy")
        conn.execute("PRAGMA query_only = ON")
        return sqlite_utils.Database(conn)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """Serialize threads and turn any database error into a StoreError naming the file.
        The first sign of damage marks the log damaged, so nothing more is written to it."""
        with self._lock:
            try:
                yield
            except sqlite3.Error as e:
                if "malformed" in str(e).lower():
                    self.damaged = True
                    raise LogDamaged(f"{self.path}: {doing} failed: {_explain(e)}") from e
                raise self._fail(f"{doing} failed: {_explain(e, self.path)}") from e
            except UnicodeEncodeError as e:  # a lone surrogate: half a character, no UTF-8 for it
                raise self._fail(f"{doing} failed: the text holds a character that is not valid "
                                 f"UTF-8 (position {e.start + 1})") from e
            except RecursionError as e:
                raise self._fail(f"{doing} failed: a value is nested too deeply to store") from e

    @contextlib.contextmanager
    def _writing(self, doing: str) -> Iterator[None]:
        """`_guard` for a write: a log found damaged is not written to."""
        if self.damaged:
            raise LogDamaged(f"{self.path}: {doing}: the log is damaged, so nothing more is written to it; "
                             f"{RECOVER_HINT}")
        with self._guard(doing):
            yield

    @contextlib.contextmanager
    def _write(self, doing: str) -> Iterator[None]:
        """One atomic write. IMMEDIATE takes the lock up front so busy_timeout applies."""
        with self._writing(doing):
            if self.db.conn.in_transaction:  # nested: part of the caller's transaction
                yield
                return
            self.db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.db.conn.execute("COMMIT")
            except BaseException:
                self.db.rollback()
                raise

    def _resolve(self, session_id: str) -> str:
        """Accept a full id or a unique prefix of one (friendlier at the command line)."""
        if self.db.execute("select 1 from sessions where id = ?", [session_id]).fetchone():
            return session_id
        # A prefix stands for one of our own long ids only (an imported "visit-1" that is gone
        # must not turn into "visit-10"), compared plainly: LIKE would ignore case and read "_"
        # and "%" as wildcards.
        rows = list(self.db.query(
            "select id from sessions where substr(id, 1, length(:p)) = :p and length(id) = 26"
            f" and id not glob '*[^{_CROCKFORD}]*' limit 2", {"p": session_id}))
        if len(rows) == 1:
            return rows[0]["id"]
        if not rows:
            raise SessionNotFound(f"{self.path}: no session with id {session_id!r}")
        raise SessionNotFound(f"{self.path}: id prefix {session_id!r} matches several sessions")

    # -- write path

    def new_session(self, mode: str, model: str | None, title: str | None = None) -> str:
        sid = new_id()
        now = now_iso()
        with self._writing("creating a session"):
            self._sessions.insert(
                {"id": sid, "title": _storable(title), "mode": mode, "model": model, "created": now, "updated": now,
                 "archived": 0}
            )
        return sid

    def add_message(
        self,
        session_id: str,
        role: str,
        content: str,
        *,
        model: str | None = None,
        options: dict | None = None,
        status: str = "complete",
        meta: dict | None = None,
        stats: dict | None = None,
    ) -> int:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        now = now_iso()
        row = {
            "session_id": session_id,
            "role": role,
            "content": content,
            "created": now,
            "model": model,
            "options": _dumps(options),
            "status": status,
            "meta": _dumps(meta),
            **_stats_columns(stats),
        }
        with self._write("saving a message"):
            mid = self._messages.insert(row).last_pk
            self.db.execute("update sessions set updated = ? where id = ?", [now, session_id])
        return mid

    def add_batch_item(
        self,
        session_id: str,
        input_text: str,
        output_text: str,
        *,
        model: str | None = None,
        options: dict | None = None,
        stats: dict | None = None,
        status: str = "complete",
        meta: dict | None = None,
    ) -> tuple[int, int]:
        """Log one batch item (input as a user message, output as the reply) in one transaction."""
        with self._write("saving a batch item"):
            user_id = self.add_message(session_id, "user", input_text)
            reply_id = self.add_message(
                session_id, "assistant", output_text, model=model, options=options, stats=stats, status=status, meta=meta
            )
        return user_id, reply_id

    def start_reply(self, session_id: str, model: str | None, options: dict | None = None) -> "ReplyWriter":
        mid = self.add_message(session_id, "assistant", "", model=model, options=options, status="partial")
        return ReplyWriter(self, session_id, mid)

    def _update_message(self, message_id: int, **values: Any) -> None:
        with self._writing("saving the reply"):
            try:
                self._messages.update(message_id, values)
            except NotFoundError:
                pass  # the user deleted the session while the reply streamed: stop logging it

    def start_batch(self, task: str, input_path: str, output_path: str | None, model: str | None) -> tuple[str, int]:
        title = f"{task}: {Path(input_path).name}"
        with self._write("recording a batch run"):  # both or neither: no empty batch session left behind
            sid = self.new_session("batch", model, title=title)
            run_id = self._runs.insert(
                {
                    "session_id": sid,
                    "task": task,
                    "input_path": _storable(str(input_path)),
                    "output_path": None if output_path is None else _storable(str(output_path)),
                    "model": model,
                    "counts": _dumps({}),
                    "started": now_iso(),
                    "status": "running",
                }
            ).last_pk
        return sid, run_id

    def finish_batch(self, run_id: int, counts: dict, status: str = "complete") -> None:
        with self._writing("finishing a batch run"):
            self._runs.update(run_id, {"counts": _dumps(counts), "finished": now_iso(), "status": status})

    # -- read side

    def list_sessions(self, limit: int = 20, mode: str | None = None, include_archived: bool = False) -> list[dict]:
        where, args = [], []
        if mode:
            where.append("s.mode = ?")
            args.append(mode)
        if not include_archived:
            where.append("s.archived = 0")
        sql = f"""
            select s.*,
              (select count(*) from messages m where m.session_id = s.id) as message_count,
              (select substr(m.content, 1, 80) from messages m
                 where m.session_id = s.id and m.role = 'user' order by m.id limit 1) as preview
            from sessions s
            {"where " + " and ".join(where) if where else ""}
            order by s.updated desc, s.id desc
            limit ?
        """
        with self._guard("listing sessions"):
            return list(self.db.query(sql, [*args, limit]))

    def get_session(self, session_id: str) -> dict:
        with self._guard("reading a session"):
            sid = self._resolve(session_id)
            session = self._sessions.get(sid)
            session["messages"] = [_message_out(m) for m in self._messages.rows_where("session_id = ?", [sid], order_by="id")]
            session["batch_runs"] = [_run_out(r) for r in self._runs.rows_where("session_id = ?", [sid], order_by="id")]
        return session

    def search(self, query: str, limit: int = 20, mark: tuple[str, str] = ("**", "**"),
               mode: str | None = None, per_session: bool = False) -> list[dict]:
        """Best matches first. `mode` keeps one kind of session; `per_session` keeps each
        session's best match only, so one long session cannot fill the whole `limit`."""
        match = fts_query(query)
        if not match:
            return []
        hits = f"""
            select m.id, m.session_id, m.role, m.created, m.status, s.title, s.mode,
              snippet(messages_fts, 0, :open, :close, '…', 12) as snippet,
              bm25(messages_fts) as rank
            from messages_fts
              join messages m on m.id = messages_fts.rowid
              join sessions s on s.id = m.session_id
            where messages_fts match :q {"and s.mode = :mode" if mode else ""}
        """
        if per_session:
            hits = f"""
                select id, session_id, role, created, status, title, mode, snippet, rank from (
                  select *, row_number() over (partition by session_id order by rank, id) as nth from ({hits})
                ) where nth = 1
            """
        sql = f"select * from ({hits}) order by rank limit :limit"
        with self._guard("searching"):
            return list(self.db.query(sql, {"q": match, "open": mark[0], "close": mark[1], "limit": limit,
                                            "mode": mode}))

    def sessions_titled(self, query: str, limit: int = 20, mode: str | None = None) -> list[dict]:
        """Sessions whose title holds every word of `query` (any case), newest first: a title
        is what a user names a session by, and message search never sees it."""
        words = re.findall(r"\w+", query.casefold())
        if not words:
            return []
        # compared in Python: SQLite's lower() folds ASCII only ("Ödem" would not find "ödem")
        sql = "select id, title, mode, updated from sessions where title is not null"
        params: list = []
        if mode:
            sql += " and mode = ?"
            params.append(mode)
        with self._guard("searching titles"):
            rows = self.db.query(sql + " order by updated desc, id", params)
            found = [r for r in rows if all(w in r["title"].casefold() for w in words)]
        return found[:limit]

    def check(self, budget_s: float = 2.0) -> str | None:
        """What SQLite's quick check finds wrong with the log ("" for nothing; None when it
        did not finish within `budget_s`)."""
        with self._guard("checking the log"):
            try:
                return _quick_check(self.db.conn, budget_s)
            except sqlite3.DatabaseError as e:  # damage bad enough to stop the check itself
                return str(e)

    def summary(self) -> dict:
        with self._guard("reading the summary"):
            row = self.db.execute(
                "select (select count(*) from sessions), (select count(*) from messages)"
            ).fetchone()
        wal = self.path.with_name(self.path.name + "-wal")  # recent writes live there until a checkpoint
        size = self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        return {"sessions": row[0], "messages": row[1], "size_bytes": size}

    def rename_session(self, session_id: str, title: str) -> None:
        with self._writing("renaming a session"):
            self._sessions.update(self._resolve(session_id), {"title": title})

    def archive_session(self, session_id: str, archived: bool = True) -> None:
        with self._writing("archiving a session"):
            self._sessions.update(self._resolve(session_id), {"archived": int(archived)})

    # -- deleting

    def _optimize_fts(self) -> None:
        # FTS5 'delete' only adds tombstones; merging the segments drops the deleted terms.
        self.db.execute("insert into messages_fts(messages_fts) values('optimize')")

    def delete_session(self, session_id: str) -> None:
        with self._guard("deleting a session"):
            sid = self._resolve(session_id)
        with self._write("deleting a session"):
            # The AFTER DELETE trigger removes each message from the FTS index.
            self._messages.delete_where("session_id = ?", [sid])
            self._runs.delete_where("session_id = ?", [sid])
            self._sessions.delete_where("id = ?", [sid])
            self._optimize_fts()

    def delete_before(self, when: datetime) -> dict:
        """Remove every message created before `when`, and sessions with nothing newer."""
        cutoff = _iso(when)
        with self._write("deleting old sessions"):
            counts = {
                "messages": self.db.execute("delete from messages where created < ?", [cutoff]).rowcount,
            }
            self._runs.delete_where(
                "started < ? and session_id in (select id from sessions where updated < ?)", [cutoff, cutoff]
            )
            gone = self.db.execute(
                "delete from sessions where updated < ? and id not in (select session_id from messages)"
                " and id not in (select session_id from batch_runs)",
                [cutoff],
            )
            counts["sessions"] = gone.rowcount
            self._optimize_fts()
        return counts

    def vacuum(self) -> None:
        """Reclaim space and rewrite the file, so deleted text is gone from disk too."""
        with self._writing("vacuuming"):
            self._checkpoint()
            self.db.vacuum()
            self._checkpoint()

    def _checkpoint(self) -> None:
        # A checkpoint that another process's open read blocks returns busy = 1 rather than
        # failing, and deleted text would stay in the WAL file while "vacuumed" is reported.
        busy = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        if busy:
            raise StoreError(f"{self.path}: another program is reading the log, so deleted text may still be on "
                             "disk; close it (the app, another `assistant logs`) and run `assistant logs vacuum`")

    # -- export / import / backup

    def _all_ids(self) -> list[str]:
        return [r["id"] for r in self.db.query("select id from sessions order by created, id")]

    def export(self, ids: Iterable[str] | None = None, fmt: str = "markdown") -> str:
        """Export the given sessions (all when `ids` is None) as Markdown or JSON."""
        with self._guard("exporting"):
            sessions = [self.get_session(i) for i in (self._all_ids() if ids is None else ids)]
        if fmt == "json":
            doc = {"format": EXPORT_FORMAT, "version": 1, "exported": now_iso(), "sessions": sessions}
            return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
        if fmt == "markdown":
            return "\n\n".join(_session_markdown(s) for s in sessions) + "\n"
        raise ValueError(f"unknown export format {fmt!r} (markdown or json)")

    def import_json(self, source: str | os.PathLike | dict, max_bytes: int | None = None) -> dict:
        """Import a JSON export. Sessions already present (same id) are skipped; message ids are
        renumbered. `max_bytes`: a larger file is refused unread."""
        if isinstance(source, dict):
            doc = source
        else:
            try:
                data = read_bounded(Path(source), max_bytes) if max_bytes else Path(source).read_bytes()
                doc = json.loads(data.decode("utf-8"))
            except InputTooLarge as e:
                raise StoreError(f"{source}: the export is over the limit of {human(max_bytes)} per input file, "
                                 f"so it was not read (raise it with {FILE_ENV})") from e
            except RecursionError as e:
                raise StoreError(f"{source}: cannot read the export: it is nested too deeply") from e
            except (OSError, ValueError) as e:
                why = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
                raise StoreError(f"{source}: cannot read the export: {why}"[:500]) from e
        name = source if not isinstance(source, dict) else "import"
        if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT or not isinstance(doc.get("sessions"), list):
            raise StoreError(f"{name}: not a health-assistant logs export")
        for i, s in enumerate(doc["sessions"]):
            problem = _import_problem(s)
            if problem:
                raise StoreError(f"{name}: session {i + 1}: {problem}; nothing was imported")
        counts = {"sessions": 0, "messages": 0, "skipped": 0}
        session_cols = ("id", "title", "mode", "model", "created", "updated", "archived")
        try:
            with self._write("importing"):
                for s in doc["sessions"]:
                    if self.db.execute("select 1 from sessions where id = ?", [s["id"]]).fetchone():
                        counts["skipped"] += 1
                        continue
                    self._sessions.insert({k: s.get(k) for k in session_cols}
                                          | {"archived": int(s.get("archived") or 0),
                                             "created": _utc(s["created"]), "updated": _utc(s["updated"])})
                    rows = [_message_in(s["id"], m) for m in s.get("messages", [])]
                    # Messages get new ids here, so a regenerated reply's link to the one it
                    # replaced is carried over to the new id.
                    new_ids = {}
                    for m, row in zip(s.get("messages", []), rows):
                        replaces = (m.get("meta") or {}).get("replaces")
                        if replaces is not None:
                            row["meta"] = _dumps({**m["meta"], "replaces": new_ids.get(replaces)})
                        new_ids[m.get("id")] = self._messages.insert(row).last_pk
                    self._runs.insert_all(_run_in(s["id"], r) for r in s.get("batch_runs", []))
                    counts["sessions"] += 1
                    counts["messages"] += len(rows)
        except (KeyError, TypeError, AttributeError) as e:
            raise StoreError(f"{name}: malformed export ({e!r})") from e
        return counts

    def _load_recovered(self, found: dict[str, list[dict]]) -> dict:
        """Write rows read from a damaged log (see `recover`) into this new one."""
        sessions = {r["id"]: r for r in found["sessions"]}
        for r in found["messages"] + found["batch_runs"]:
            if r["session_id"] not in sessions:
                when = r.get("created") or r.get("started")
                sessions[r["session_id"]] = {"id": r["session_id"], "title": "(recovered: session details lost)",
                                             "mode": "batch" if "task" in r else "chat", "model": None,
                                             "created": when, "updated": when, "archived": 0}
        for r in found["messages"]:
            for key in ("options", "meta"):
                r[key] = r[key] if _json_or_none(r[key]) else None
        for r in found["batch_runs"]:
            r["counts"] = r["counts"] if _json_or_none(r["counts"]) else None
        with self._write("recovering"):
            self._sessions.insert_all(sessions.values(), ignore=True)
            self._messages.insert_all(found["messages"], ignore=True)
            self._runs.insert_all(found["batch_runs"], ignore=True)
        return {"sessions": len(sessions), "stand_ins": len(sessions) - len(found["sessions"]),
                "messages": len(found["messages"]), "batch_runs": len(found["batch_runs"])}

    def backup(self, dest: str | os.PathLike) -> Path:
        """A consistent copy while other processes keep writing (SQLite's online backup API)."""
        dest = Path(dest).expanduser()
        if _same_file(dest, self.path):  # by device and inode: a hard link is the log too
            raise StoreError(f"{dest}: the backup cannot overwrite the database itself")
        if dest.exists() and not dest.is_file():
            # a device (/dev/null), a pipe or a socket: SQLite cannot hold a database there, and
            # its mode is not ours to change
            raise StoreError(f"{dest}: is not a regular file (a device, a pipe or a socket); "
                             "a backup is written to a file")
        base = _side_file_of(dest)
        if base is not None:
            raise StoreError(f"{dest}: is a side file of the database {base}; refusing to write a backup there")
        if dest.is_file() and dest.stat().st_size:
            if _read_header(dest) != _SQLITE_HEADER:
                raise StoreError(f"{dest}: exists and is not a SQLite database; refusing to overwrite it")
            if not _is_log(dest):
                raise StoreError(f"{dest}: is another program's SQLite database; refusing to overwrite it")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                _create_private(dest)
            os.chmod(dest, 0o600)  # a file that was there already may have been readable by all
        except OSError as e:
            raise StoreError(f"{dest}: cannot create the backup: {e.strerror}") from e
        with self._lock:
            try:
                target = sqlite3.connect(dest)
                try:
                    self.db.conn.backup(target)
                finally:
                    target.close()
            except sqlite3.Error as e:
                raise StoreError(f"{dest}: backup failed: {_explain(e)}") from e
        return dest


# --- recovery of a damaged log ----------------------------------------------------------

_RECOVER_COLUMNS = {
    "sessions": ("id", "title", "mode", "model", "created", "updated", "archived"),
    "messages": ("id", "session_id", "role", "content", "created", "model", "options", "prompt_tokens",
                 "completion_tokens", "ttft_s", "duration_s", "status", "meta"),
    "batch_runs": ("id", "session_id", "task", "input_path", "output_path", "model", "counts", "started",
                   "finished", "status"),
}
_SALVAGE_BATCH = 200


def recover(source: str | os.PathLike, dest: str | os.PathLike) -> dict:
    """Copy every row of a damaged log that can still be read into a new log at `dest`,
    as SQLite's `.recover` does for the tables the log holds: the damaged file is opened
    read-only (immutable when it has no write-ahead log to read) and never written.
    Rows are read in rowid order; where a page cannot be read, the next readable rowid is
    found by probing further ahead and narrowing back, so one bad page loses only its own
    rows. A message whose session was lost gets a stand-in session, so it stays findable.
    Returns counts: sessions (stand_ins among them), messages, batch_runs, lost_ranges
    (unreadable stretches), invalid (rows read back in a shape no log holds, left out)."""
    src, dest = Path(source).expanduser(), Path(dest).expanduser()
    if not src.is_file():
        raise StoreError(f"{src}: no log file here")
    if _same_file(src, dest):
        raise StoreError(f"{dest}: is the damaged log itself; recover into a new file")
    if dest.exists() and (not dest.is_file() or dest.stat().st_size):
        raise StoreError(f"{dest}: exists; recover into a new file (nothing is written over an existing one)")
    try:
        if _read_header(src) != _SQLITE_HEADER:
            raise StoreError(f"{src}: is not a SQLite database, so there is nothing to recover")
        conn = _damaged_connection(src)
    except OSError as e:
        raise StoreError(f"{src}: cannot read it: {e.strerror}") from e
    except sqlite3.Error as e:
        raise StoreError(f"{src}: cannot be opened at all ({e}); nothing could be recovered") from e
    created = not dest.exists()
    try:
        found = {table: _salvage(conn, table, cols) for table, cols in _RECOVER_COLUMNS.items()}
    finally:
        conn.close()
    if not any(rows for rows, _, _ in found.values()):
        raise StoreError(f"{src}: no session, message or batch run could be read; nothing was recovered")
    try:
        with Store(dest) as out:
            counts = out._load_recovered({t: rows for t, (rows, _, _) in found.items()})
    except BaseException:
        if created:
            for side in ("", "-wal", "-shm", "-journal"):
                dest.with_name(dest.name + side).unlink(missing_ok=True)
        raise
    counts["lost_ranges"] = sum(lost for _, lost, _ in found.values())
    counts["invalid"] = sum(bad for _, _, bad in found.values())
    return counts


def _damaged_connection(path: Path) -> sqlite3.Connection:
    wal = path.with_name(path.name + "-wal")
    if wal.is_file() and wal.stat().st_size:
        return _read_only_connection(path)  # the latest sessions are in the -wal file
    conn = sqlite3.connect(path.resolve().as_uri() + "?immutable=1", uri=True)
    conn.execute("select count(*) from sqlite_master").fetchone()
    return conn


def _salvage(conn: sqlite3.Connection, table: str, columns: tuple[str, ...]) -> tuple[list[dict], int, int]:
    """The readable rows of one table, the number of unreadable stretches skipped, and the
    number of rows left out for holding values of the wrong kind."""
    sql = f"select rowid, {', '.join(columns)} from {table} where rowid >= ? order by rowid limit ?"

    def read(start: int, n: int) -> list | None:
        try:
            return conn.execute(sql, [start, n]).fetchall()
        except sqlite3.DatabaseError:
            return None

    rows: list[dict] = []
    lost = invalid = 0
    try:
        if not conn.execute("select 1 from sqlite_master where type = 'table' and name = ?", [table]).fetchone():
            return rows, lost, invalid  # a log of an older version, before this table
    except sqlite3.DatabaseError:
        pass  # the schema's own page is damaged: reading the table may still work
    start = -(2 ** 63)
    while True:
        batch = read(start, _SALVAGE_BATCH)
        if batch is None:  # a bad page in this stretch: row by row up to it
            batch = read(start, 1)
        if batch is None:
            lost += 1
            start = _next_readable(read, start)
            if start is None:
                break
            continue
        if not batch:
            break
        for r in batch:
            row = dict(zip(columns, r[1:]))
            if _recovered_row_ok(table, row):
                rows.append(row)
            else:
                invalid += 1
        if batch[-1][0] >= 2 ** 63 - 1:
            break
        start = batch[-1][0] + 1
    return rows, lost, invalid


def _next_readable(read, bad: int) -> int | None:
    """The smallest rowid above `bad` from which reading works: probe at growing distances,
    then narrow back between the last failure and the first success."""
    step = 1
    while True:
        probe = bad + step
        if probe >= 2 ** 63:
            return None
        if read(probe, 1) is not None:
            break
        bad, step = probe, step * 2
    good = probe
    while good - bad > 1:
        mid = (bad + good) // 2
        if read(mid, 1) is not None:
            good = mid
        else:
            bad = mid
    return good


def _recovered_row_ok(table: str, row: dict) -> bool:
    text = lambda *keys: all(isinstance(row[k], str) and row[k] for k in keys)  # noqa: E731
    if table == "sessions":
        return text("id", "created", "updated") and row["mode"] in MODES and _is_iso(row["created"])
    if table == "messages":
        return text("session_id", "role", "created") and isinstance(row["content"], str) \
            and row["status"] in STATUSES and _is_iso(row["created"])
    return text("session_id", "task", "started", "status") and _is_iso(row["started"])


class ReplyWriter:
    """Streams an assistant reply into its row, so a crash loses at most the last ~0.5 s.

    The row exists (status "partial") from the moment the writer is created.
    """

    def __init__(self, store: Store, session_id: str, message_id: int, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.session_id = session_id
        self.message_id = message_id
        self._clock = clock
        self._parts: list[str] = []
        self._last_flush = clock()
        self._dirty = False
        self.closed = False
        self.flushes = 0

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def append(self, piece: str) -> None:
        self._parts.append(piece)
        self._dirty = True
        if self._clock() - self._last_flush >= FLUSH_INTERVAL_S:
            self.flush()

    def replace(self, text: str) -> None:
        """Set the whole reply text (a caller that assembled it some other way)."""
        self._parts = [text]
        self._dirty = True

    def flush(self) -> None:
        if self._dirty:
            text = self.text
            self._parts = [text]
            self.store._update_message(self.message_id, content=text)
            self.flushes += 1
            self._dirty = False
        self._last_flush = self._clock()

    def finish(self, stats: dict | None = None, status: str = "complete", meta: dict | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        meta = dict(meta or {})
        if stats and stats.get("finish_reason"):
            meta.setdefault("finish_reason", stats["finish_reason"])
        self.store._update_message(
            self.message_id, content=self.text, status=status, meta=_dumps(meta or None), **_stats_columns(stats)
        )
        self._dirty = False
        self.closed = True

    def cancel(self, stats: dict | None = None) -> None:
        self.finish(stats, status="cancelled")

    def fail(self, error: str, stats: dict | None = None) -> None:
        self.finish(stats, status="error", meta={"error": str(error)})

    def __enter__(self) -> "ReplyWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.closed:
            return
        if exc_type is None:
            self.finish()
        elif issubclass(exc_type, (KeyboardInterrupt, GeneratorExit)):
            self.cancel()
        else:
            self.fail(f"{exc_type.__name__}: {exc}")


# --- row conversions --------------------------------------------------------------------


def _stats_columns(stats: dict | None) -> dict:
    if not stats:
        return {}
    return {
        "prompt_tokens": stats.get("prompt_tokens"),
        "completion_tokens": stats.get("completion_tokens"),
        "ttft_s": stats.get("ttft_s"),
        "duration_s": stats.get("total_s"),
    }


def _message_out(row: dict) -> dict:
    return row | {"options": _loads(row["options"]), "meta": _loads(row["meta"])}


def _run_out(row: dict) -> dict:
    return row | {"counts": _loads(row["counts"])}


def _json_or_none(value) -> bool:
    """Whether a stored JSON column reads back (a damaged page may hold any bytes)."""
    if value is None:
        return True
    try:
        json.loads(value)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _is_iso(value) -> bool:
    try:
        _utc(value)  # as the import will store it: a date at the end of time cannot move to UTC
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _utc(value: str | None) -> str | None:
    """An imported date in the store's own form (UTC, microseconds): dates are compared as
    text, so "2025-03-01T20:00:00-08:00" or "20250101T120000" stored as given would sort
    wrongly and `delete --before` would remove newer messages and keep older ones. A date
    with no zone is local time, as `--before` reads one."""
    return None if value is None else _iso(datetime.fromisoformat(value))


_TEXT_FIELDS = ("title", "model")
_MESSAGE_TEXT = ("content", "model", "role")
_COUNTS = ("prompt_tokens", "completion_tokens")
_SECONDS = ("ttft_s", "duration_s")


def _text_problem(value, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return f"field '{key}' must be a string or null"
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        return f"field '{key}' holds half of a character (an unpaired \\u escape)"
    return None


def _number_problem(value, key: str, integer: bool) -> str | None:
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) \
            or not 0 <= value < 2 ** 63:
        return f"field '{key}' must be a non-negative {'whole ' if integer else ''}number or null, not {value!r}"
    return None


def _import_problem(s) -> str | None:
    """What makes one exported session unfit to import (None when it is fine): the rows it
    would write are ones every command can read back."""
    if not isinstance(s, dict):
        return "not a JSON object"
    if not isinstance(s.get("id"), str) or not s["id"]:
        return "field 'id' must be a non-empty string"
    if _text_problem(s["id"], "id"):
        return _text_problem(s["id"], "id")
    where = f"(id {s['id']}) "
    if s.get("mode") not in MODES:
        return f"{where}field 'mode' must be one of {', '.join(MODES)}, not {s.get('mode')!r}"
    for key in ("created", "updated"):
        if not _is_iso(s.get(key)):
            return f"{where}field '{key}' must be an ISO date and time, not {s.get(key)!r}"
    if s.get("archived") not in (None, True, False, 0, 1):
        return f"{where}field 'archived' must be true or false, not {s.get('archived')!r}"
    for key in _TEXT_FIELDS:
        problem = _text_problem(s.get(key), key)
        if problem:
            return where + problem
    for key, label, check in (("messages", "message", _message_problem), ("batch_runs", "batch run", _run_problem)):
        items = s.get(key, [])
        if not isinstance(items, list):
            return f"{where}field '{key}' must be a list"
        for j, item in enumerate(items):
            problem = check(item) if isinstance(item, dict) else "not a JSON object"
            if problem:
                return f"{where}{label} {j + 1}: {problem}"
    return None


def _message_problem(m: dict) -> str | None:
    if not isinstance(m.get("role"), str) or not m["role"]:
        return "field 'role' must be a non-empty string"
    if not _is_iso(m.get("created")):
        return f"field 'created' must be an ISO date and time, not {m.get('created')!r}"
    if m.get("status", "complete") not in STATUSES:
        return f"field 'status' must be one of {', '.join(STATUSES)}"
    problems = [_text_problem(m.get(k), k) for k in _MESSAGE_TEXT]
    problems += [_number_problem(m.get(k), k, integer=True) for k in _COUNTS]
    problems += [_number_problem(m.get(k), k, integer=False) for k in _SECONDS]
    problems += [f"field '{k}' must be an object or null" for k in ("meta", "options")
                 if m.get(k) is not None and not isinstance(m[k], dict)]
    problems += [_json_value_problem(m.get(k), k) for k in ("meta", "options")]
    return next((p for p in problems if p), None)


_MAX_DEPTH = 64


def _json_value_problem(value, key: str) -> str | None:
    """What keeps a free JSON value (meta, options, counts) from being stored and read back:
    half a character in a string or a key, or nesting deeper than any the assistant writes
    (walked without recursion, so a deep value cannot overflow the stack here)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > _MAX_DEPTH:
            return f"field '{key}' is nested more than {_MAX_DEPTH} levels deep"
        if isinstance(item, str):
            if _text_problem(item, key):
                return _text_problem(item, key)
        elif isinstance(item, dict):
            for k, v in item.items():
                if _text_problem(k, key):
                    return _text_problem(k, key)
                stack.append((v, depth + 1))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return None


def _run_problem(r: dict) -> str | None:
    if not isinstance(r.get("task"), str) or not r["task"]:
        return "field 'task' must be a non-empty string"
    if not _is_iso(r.get("started")) or (r.get("finished") is not None and not _is_iso(r["finished"])):
        return "fields 'started' and 'finished' must be ISO dates and times"
    if not isinstance(r.get("status"), str) or not r["status"]:
        return "field 'status' must be a non-empty string"
    problems = [_text_problem(r.get(k), k) for k in ("input_path", "output_path", "model", "task", "status")]
    problems.append(_json_value_problem(r.get("counts"), "counts"))
    return next((p for p in problems if p), None)


def _message_in(session_id: str, m: dict) -> dict:
    cols = ("role", "content", "created", "model", "prompt_tokens", "completion_tokens", "ttft_s", "duration_s", "status")
    return {k: m.get(k) for k in cols} | {
        "created": _utc(m["created"]),
        "session_id": session_id,
        "content": m.get("content") or "",
        "status": m.get("status") or "complete",
        "options": _dumps(m.get("options")),
        "meta": _dumps(m.get("meta")),
    }


def _run_in(session_id: str, r: dict) -> dict:
    cols = ("task", "input_path", "output_path", "model", "started", "finished", "status")
    return {k: r.get(k) for k in cols} | {"session_id": session_id, "counts": _dumps(r.get("counts")),
                                          "started": _utc(r["started"]), "finished": _utc(r.get("finished"))}


def message_notes(messages: list[dict]) -> dict[int, list[str]]:
    """What a reader of a session needs beyond the text, per message id: the triage
    level a message raised, and which replies were regenerated or replaced (the
    user saw the replacement only once it was complete)."""
    notes: dict[int, list[str]] = {}
    for m in messages:
        meta = m.get("meta") or {}
        if meta.get("triage") in ("emergency", "crisis"):
            notes.setdefault(m["id"], []).append(f"triage: {meta['triage']}")
        if meta.get("replaces") is not None:
            notes.setdefault(m["id"], []).append("regenerated")
            if m.get("status") == "complete":
                notes.setdefault(meta["replaces"], []).append("replaced by a regenerated reply")
    return notes


def _session_markdown(s: dict) -> str:
    lines = [f"# {s['title'] or 'Untitled session'}", ""]
    lines.append(f"- id: `{s['id']}`")
    lines.append(f"- mode: {s['mode']}, model: {s['model'] or '-'}")
    lines.append(f"- created: {s['created']}, updated: {s['updated']}")
    if s["archived"]:
        lines.append("- archived")
    for r in s.get("batch_runs", []):
        lines.append(
            f"- batch run {r['id']}: task {r['task']}, {r['input_path']} -> {r['output_path'] or '-'}, "
            f"status {r['status']}, counts {json.dumps(r['counts'])}"
        )
    notes = message_notes(s["messages"])
    for m in s["messages"]:
        head = f"## {m['role']} · {m['created']}"
        if m["model"]:
            head += f" · {m['model']}"
        if m["status"] != "complete":
            head += f" · **{m['status']}**"
        for note in notes.get(m["id"], []):
            head += f" · {note}"
        lines += ["", head, "", m["content"] or "_(empty)_"]
        if m["status"] == "error" and m["meta"] and m["meta"].get("error"):
            lines += ["", f"> error: {m['meta']['error']}"]
    return "\n".join(lines)
