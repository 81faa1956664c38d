"""The Textual terminal app.

The UI never talks to a model itself: it calls the task layer (`assistant.tasks`)
in a thread worker and gets the text back piece by piece through `on_text`,
which it forwards to the event loop with `call_from_thread`. Everything the user
types is stored before generation starts, and the reply is streamed into a
`ReplyWriter`, so a crash loses at most about half a second of it.

Start-up stays light: the model is loaded by a background thread worker (the
llama.cpp backend imports `llama_cpp` only there; nothing here imports torch or
transformers), and the app is usable while it loads.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.text import Text
from textual import events, work
from textual.app import App, ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.notifications import SeverityLevel
from textual.widgets import Footer, Input, Label, ListView, TextArea

from .. import tasks
from ..backends.base import Backend, CancelToken, GenerationOptions
from ..models import DEFAULT_MODEL
from ..visible import visible, visible_line
from .keys import app_bindings
from .screens import ConfirmScreen, HelpScreen, PromptScreen
from .widgets import (
    MARK,
    ChatMessage,
    SessionList,
    SessionRow,
    StatusLine,
    Welcome,
    banner_widgets,
)

log = logging.getLogger("assistant.tui")

ASK, SUMMARIZE = "ask", "summarize"
TASK_LABELS = {ASK: "Ask", SUMMARIZE: "Summarize"}
URGENT_LEVELS = ("emergency", "crisis")
MAX_TRANSCRIPT_BYTES = 5_000_000
# On quit, how long to wait for a reply being generated to notice its cancel before the
# model is freed: llama.cpp must not free a context a thread is still decoding with.
CLOSE_WAIT_S = 30.0
NOTES = {
    "cancelled": "⏹ cancelled: the partial answer is kept",
    "partial": "⚠ interrupted: the app closed while this was being written",
    "length": "… stopped at the length limit",
}

BackendFactory = Callable[[], Backend]
Triage = Callable[[str], Any]
_AUTO = object()


def _default_triage() -> Triage | None:
    """The safety layer when it is installed; the app works without it."""
    try:
        from ..safety.triage import triage
    except Exception:  # noqa: BLE001 - missing or broken: run without banners, but say so in the log
        log.warning("safety triage is not available; no safety banners", exc_info=True)
        return None
    return triage


def session_title(text: str, task: str, source: str | None = None) -> str:
    if task == SUMMARIZE and source:
        return f"Summary: {source}"
    first = next((line for line in text.splitlines() if line.strip()), "")
    first = re.sub(r"\s+", " ", first).strip()
    if len(first) > 60:
        first = first[:59].rstrip() + "…"
    return f"Summary: {first}" if task == SUMMARIZE else first or "Untitled"


def _slug(title: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-").lower()[:40] or "session"


def guarded(what: str):
    """Errors in a handler become a notification and a log entry, never a traceback."""

    def deco(fn):
        if asyncio.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def wrapper(self, *args, **kwargs):
                try:
                    return await fn(self, *args, **kwargs)
                except Exception as exc:  # noqa: BLE001
                    self.report_error(what, exc)
        else:
            @functools.wraps(fn)
            def wrapper(self, *args, **kwargs):
                try:
                    return fn(self, *args, **kwargs)
                except Exception as exc:  # noqa: BLE001
                    self.report_error(what, exc)
        return wrapper

    return deco


@dataclass
class Turn:
    """A question (or transcript) and its reply, as shown in the chat."""

    task: str
    question: str
    user_id: int | None = None
    reply: str = ""
    reply_id: int | None = None
    status: str = "pending"
    banner: tuple[str, str | None] | None = None  # (level, message)
    reasons: list = field(default_factory=list)  # the question's triage flags, for the banner's details
    meta: dict = field(default_factory=dict)  # what the reply is stored with
    reply_view: ChatMessage | None = None
    section: str | None = None  # a summary's section, when its file named one
    question_lost: bool = False  # a stored reply whose question never reached the log


@dataclass
class Job:
    turn: Turn
    view: ChatMessage
    history: list[dict]
    options: GenerationOptions
    cancel: CancelToken = field(default_factory=CancelToken)
    writer: Any = None  # store.ReplyWriter, or None when nothing is saved
    meta: dict = field(default_factory=dict)
    store_error: str | None = None
    forwarder: PieceForwarder | None = None
    previous: tuple | None = None  # a regenerated turn's reply (text, id, view, status, meta, shown) until the new one is done


class PieceForwarder:
    """Hands streamed pieces from the generating thread to the event loop.

    `App.call_from_thread` waits until the loop has run the call, and the loop
    can be busy for a frame laying out a long Markdown answer, so forwarding
    every token that way made llama.cpp wait on the UI (measured: about 20 ms
    a piece on a long answer). Here the thread only appends to a buffer and,
    when no flush is already queued, queues one with `call_soon_threadsafe`;
    pieces that arrive meanwhile go out together in that flush. The generator
    never blocks on the UI, and the UI does one Markdown append per frame at most.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, view: ChatMessage) -> None:
        self.loop = loop
        self.view = view
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._queued = False
        self._tasks: set[asyncio.Future] = set()
        self.closed = False

    def put(self, piece: str) -> None:  # generating thread
        with self._lock:
            self._pending.append(piece)
            if self._queued or self.closed:
                return
            self._queued = True
        try:
            self.loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # the loop is closed: the app is gone
            self.closed = True

    def _take(self) -> str:
        with self._lock:
            text = "".join(self._pending)
            self._pending.clear()
            self._queued = False
        return text

    def _flush(self) -> None:  # event loop; tasks run in creation order, so pieces stay in order
        text = self._take()
        if text:
            task = asyncio.ensure_future(self.view.write(text))
            self._tasks.add(task)  # a task nobody references may be collected mid-way
            task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:  # event loop, once generation has ended
        self.closed = True
        if self._tasks:  # flushes already queued write first
            await asyncio.gather(*self._tasks, return_exceptions=True)
        text = self._take()
        if text:
            await self.view.write(text)


class ModeTab(Label):
    def __init__(self, task: str) -> None:
        super().__init__(f" {TASK_LABELS[task]} ", id=f"mode-{task}", classes="mode-tab")
        self.task_mode = task

    async def on_click(self, event: events.Click) -> None:
        event.stop()
        await self.app.run_action(f"set_task('{self.task_mode}')")


class HealthAssistantApp(App[int]):
    """Ask health questions and summarize transcripts, with every session saved.

    Dependencies are injectable for tests: `backend_factory` returns a loaded
    `Backend` (it runs in a thread), `store` is a `Store`, a database path,
    None for the default location, or False to save nothing.
    `mode="kiosk"` stores sessions with mode "kiosk"; there is no separate kiosk
    interface yet, so the UI is otherwise the same.
    """

    CSS_PATH = "app.tcss"
    TITLE = "Health Assistant"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = app_bindings()

    def __init__(
        self,
        backend_factory: BackendFactory | None = None,
        store: Any = None,
        model_name: str | None = None,
        *,
        mode: str = "full",
        triage: Any = _AUTO,
        answer_options: GenerationOptions | None = None,
        summary_options: GenerationOptions | None = None,
        section: str | None = None,
        summary_best_of: int | None = None,  # None: tasks.summary_drafts for the section
        answer_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.model_name = model_name or DEFAULT_MODEL
        self._backend_factory = backend_factory or self._default_factory
        self._store_arg = store
        self.store = None
        self.ui_mode = mode
        self._store_mode = "kiosk" if mode == "kiosk" else "chat"
        self._triage_arg = triage
        self._triage: Triage | None = None
        self._triage_loaded = False
        self.answer_options = answer_options or GenerationOptions(max_tokens=tasks.ANSWER_MAX_TOKENS)
        self.summary_options = summary_options or tasks.summary_options()
        self.section = section
        self.summary_best_of = summary_best_of
        # Extra keyword arguments of tasks.answer (knowledge=, grounded=, safety=); tests
        # pass grounded=False so a fake model's text comes back as it is.
        self.answer_kwargs = dict(answer_kwargs or {})

        self.task_mode = ASK
        self.backend: Backend | None = None
        self.model_error: str | None = None
        self._model_event = threading.Event()
        self._store_event = asyncio.Event()  # set once the store is open (or has failed to open)
        self._owns_store = False
        self._load_started = 0.0
        self._load_timer = None
        self._quitting = False
        self._generating = threading.Lock()  # held by the thread generating a reply

        self.session_id: str | None = None
        self.session_title: str | None = None
        self.turns: list[Turn] = []
        self.job: Job | None = None
        # (file name, text) of the transcript last loaded into the prompt: the name is the
        # source of what is sent only while the prompt still holds that text.
        self._loaded_transcript: tuple[str, str, str | None] | None = None  # file name, text, section

    # --- set-up ------------------------------------------------------------------

    def _default_factory(self) -> Backend:
        from ..backends import load_backend

        return load_backend(None if self.model_name == DEFAULT_MODEL else self.model_name)

    def compose(self) -> ComposeResult:
        with Horizontal(id="topbar"):
            yield Label(" ✚ Health Assistant ", id="brand")
            yield ModeTab(ASK)
            yield ModeTab(SUMMARIZE)
            yield Label("", id="session-title")
        with Horizontal(id="body"):
            with Vertical(id="sidebar"):
                yield Label("Sessions", id="sidebar-title")
                yield Input(placeholder="Search (ctrl+f)", id="search", compact=True)
                yield Label("No sessions yet", id="sessions-empty")
                yield SessionList(id="sessions")
            with Vertical(id="main"):
                yield VerticalScroll(id="chat")
                yield TextArea(id="prompt", soft_wrap=True, tab_behavior="focus", show_line_numbers=False)
        yield StatusLine(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        status = self.query_one(StatusLine)
        status.model = self.model_name
        if self.is_headless:  # deterministic snapshots: no blinking cursors
            self.query_one("#prompt", TextArea).cursor_blink = False
            self.query_one("#search", Input).cursor_blink = False
        self.query_one("#chat", VerticalScroll).anchor()
        self._refresh_chrome()
        await self.query_one("#chat").mount(Welcome(self.task_mode))
        self.query_one("#prompt", TextArea).focus()
        if self._store_arg is False or not (self._store_arg is None or isinstance(self._store_arg, (str, Path))):
            self.store = self._store_arg or None  # a Store given by the caller (tests), or False: none
            self._store_event.set()
            await self.refresh_sessions()
        else:
            self.query_one("#sessions-empty", Label).update("Loading sessions…")

    def on_ready(self) -> None:
        """The first frame is on screen: now open the database and load the model,
        in threads, so neither delays the first frame and the app stays usable."""
        if not self._store_event.is_set():
            self._open_store()
        self._start_loading()

    @work(thread=True, group="store", exit_on_error=False, name="open store")
    def _open_store(self) -> None:
        # sqlite_utils (and the numpy it pulls in) take a few hundred ms to import.
        # Store is thread-safe (one connection, check_same_thread=False, a lock).
        store, error = None, None
        try:
            from ..store import open_store

            store = open_store(self._store_arg)
        except Exception as exc:  # noqa: BLE001 - StoreError and anything sqlite throws
            error = exc
        self._ui(self._store_opened, store, error)
        if self._quitting and store is not None and self.store is not store:
            store.close()

    async def _store_opened(self, store: Any, error: BaseException | None) -> None:
        self.store = store
        self._owns_store = store is not None
        self._store_event.set()
        if error is not None:
            self.report_error("Cannot open the session database; nothing will be saved", error)
        elif store is None:
            self.notify("Session logging is switched off: nothing will be saved.", timeout=6)
        await self.refresh_sessions()

    def _start_loading(self) -> None:
        self._load_started = time.perf_counter()
        self.query_one(StatusLine).set_state(f"loading model {self.model_name}…", "busy")
        self._load_timer = self.set_interval(0.2, self._tick_loading)
        self._load_model()

    def _tick_loading(self) -> None:
        if self._model_event.is_set():
            return
        elapsed = time.perf_counter() - self._load_started
        self.query_one(StatusLine).set_state(f"loading model {self.model_name}… {elapsed:.1f} s", "busy")

    @work(thread=True, group="model", exit_on_error=False, name="load model")
    def _load_model(self) -> None:
        try:
            from textual.widgets import Markdown  # noqa: F401 - warm the import the first reply needs

            backend = self._backend_factory()
        except BaseException as exc:  # noqa: BLE001 - shown in the app, never raised
            log.exception("model %s failed to load", self.model_name)
            self.model_error = str(exc) or type(exc).__name__
            self._model_event.set()
            self._ui(self._model_failed)
            return
        if self._quitting:
            backend.close()
            return
        self._warm_knowledge()
        self.backend = backend
        self._model_event.set()
        self._ui(self._model_loaded, time.perf_counter() - self._load_started)

    def _warm_knowledge(self) -> None:
        """Open (on a first run: build) the knowledge-base index before the first
        question needs it, here in the loading thread rather than in a reply."""
        if not self.answer_kwargs.get("grounded", True) or self.answer_kwargs.get("knowledge") is not None:
            return
        try:
            from ..knowledge import KnowledgeBase

            KnowledgeBase.default()
        except Exception:  # noqa: BLE001 - the answer reports it if it matters
            log.warning("the knowledge base could not be opened in advance", exc_info=True)

    def _model_loaded(self, seconds: float) -> None:
        self._stop_load_timer()
        backend = self.backend
        name = backend.model_name or self.model_name
        self.query_one(StatusLine).model = f"{name} · {backend.name}"
        if self.job is None:
            self.query_one(StatusLine).set_state("ready")
        log.info("model %s loaded in %.2f s", name, seconds)

    def _model_failed(self) -> None:
        self._stop_load_timer()
        self.query_one(StatusLine).set_state("model failed to load", "error")
        self.notify(f"The model could not be loaded: {self.model_error}", title="Model error",
                    severity="error", timeout=15)

    def _stop_load_timer(self) -> None:
        if self._load_timer is not None:
            self._load_timer.stop()
            self._load_timer = None

    @property
    def model_ready(self) -> bool:
        return self.backend is not None

    # --- errors -------------------------------------------------------------------

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = False) -> None:
        """Notifications carry file paths, questions and error text, where a "[/" is data: read
        as markup it closed the app with a MarkupError (and an escape sequence, which is made
        visible)."""
        super().notify(visible(message), title=visible_line(title), severity=severity, timeout=timeout,
                       markup=markup)

    def report_error(self, what: str, exc: BaseException | str) -> None:
        detail = exc if isinstance(exc, str) else (str(exc) or type(exc).__name__)
        if isinstance(exc, BaseException):
            log.error("%s: %s", what, detail, exc_info=exc)
        else:
            log.error("%s: %s", what, detail)
        try:
            self.notify(str(detail), title=what, severity="error", timeout=10)
        except Exception:  # noqa: BLE001 - nothing left to show it on
            pass

    def _db(self, what: str, fn: Callable, *args, **kwargs):
        """Call the store; a database error is shown and logged, and None returned."""
        if self.store is None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            self.report_error(f"Database error while {what}", exc)
            return None

    def _db_do(self, what: str, fn: Callable, *args, **kwargs) -> bool:
        """Like `_db` for calls that return nothing: True when it worked."""
        if self.store is None:
            return False
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            self.report_error(f"Database error while {what}", exc)
            return False
        return True

    def _ui(self, fn: Callable, *args) -> Any:
        """From a worker thread: run `fn` on the event loop (and wait for it)."""
        if self._quitting:
            return None
        try:
            return self.call_from_thread(fn, *args)
        except RuntimeError:  # the app is shutting down
            return None

    # --- chrome -------------------------------------------------------------------

    def _refresh_chrome(self) -> None:
        for task in TASK_LABELS:
            self.query_one(f"#mode-{task}").set_class(task == self.task_mode, "-active")
        title = visible_line(self.session_title or "New session")
        self.query_one("#session-title", Label).update(Text(title, no_wrap=True, overflow="ellipsis"))
        prompt = self.query_one("#prompt", TextArea)
        if self.task_mode == ASK:
            prompt.border_title = "Your question"
            prompt.placeholder = "Type a health question…"
        else:
            prompt.border_title = "Transcript"
            prompt.placeholder = "Paste a conversation, or ctrl+o to open a file…"
        prompt.border_subtitle = "ctrl+s send"

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return True if self.job is not None else None
        if action == "regenerate":
            return True if self.job is None and self.turns else None
        return True

    @property
    def chat(self) -> VerticalScroll:
        return self.query_one("#chat", VerticalScroll)

    # --- sessions -----------------------------------------------------------------

    @guarded("Cannot show the sessions")
    async def refresh_sessions(self) -> None:
        query = self.query_one("#search", Input).value.strip()
        rows: list[SessionRow] = []
        if query:
            titled = self._db("searching", self.store.sessions_titled, query, limit=100,
                              mode=self._store_mode) if self.store else None
            hits = self._db("searching", self.store.search, query, limit=100, mark=MARK, mode=self._store_mode,
                            per_session=True) if self.store else None
            # Sessions named by the query first: the user gave them that title.
            for t in titled or []:
                rows.append(SessionRow(t["id"], t["title"] or "Untitled"))
            listed = {r.id for r in rows}
            for h in hits or []:
                if h["session_id"] not in listed:
                    rows.append(SessionRow(h["session_id"], h.get("title") or "Untitled", h.get("snippet")))
        else:
            sessions = self._db("listing sessions", self.store.list_sessions, limit=200,
                                mode=self._store_mode) if self.store else None
            for s in sessions or []:
                rows.append(SessionRow(s["id"], s.get("title") or s.get("preview") or "Untitled"))
        await self.query_one(SessionList).show(rows, current=self.session_id)
        empty = self.query_one("#sessions-empty", Label)
        empty.update("No matches" if query else "No sessions yet" if self.store else "Not saving sessions")
        empty.display = not rows

    async def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "search":
            await self.refresh_sessions()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "search":
            self.action_focus_sessions()
            sessions = self.query_one(SessionList)
            if event.value.strip() and sessions.children:
                sessions.index = 0  # Enter on a search means its best hit, not the session already open

    async def on_list_view_selected(self, event: ListView.Selected) -> None:
        row = getattr(event.item, "row", None)
        if row is not None:
            await self.open_session(row.id)

    @guarded("Cannot open the session")
    async def open_session(self, session_id: str) -> None:
        if self.job is not None:
            self.notify("A reply is still being written: press Esc to stop it first.", severity="warning")
            return
        data = self._db("opening the session", self.store.get_session, session_id) if self.store else None
        if data is None:
            return
        turns = turns_from_messages(data.get("messages", []))
        self.session_id = data["id"]
        self.session_title = data.get("title")
        self.task_mode = turns[0].task if turns else ASK
        self.turns = turns
        await self.chat.remove_children()
        widgets = [w for turn in turns for w in self._turn_widgets(turn)] or [Welcome(self.task_mode)]
        await self.chat.mount_all(widgets)
        for turn in turns:
            if turn.reply_view is not None and turn.meta.get("triage") in URGENT_LEVELS \
                    and turn.status == "complete":
                await self._show_as_banner(turn, turn.reply_view, turn.meta["triage"])
        self.chat.anchor()
        self._refresh_chrome()
        self.query_one(SessionList).select_id(self.session_id)
        self.refresh_bindings()
        self.query_one("#prompt", TextArea).focus()

    def _turn_widgets(self, turn: Turn) -> list:
        widgets: list = [ChatMessage("user", turn.question, task=turn.task, message_id=turn.user_id)]
        if turn.banner:
            widgets += banner_widgets(*turn.banner, turn.reasons)
        if turn.reply_id is not None:
            turn.reply_view = ChatMessage("assistant", turn.reply, task=turn.task, status=turn.status,
                                          note=_note_for(turn.status, turn.meta), message_id=turn.reply_id)
            widgets.append(turn.reply_view)
        return widgets

    async def _new_session(self, task: str | None = None) -> None:
        self.session_id = None
        self.session_title = None
        self.turns = []
        self._loaded_transcript = None
        if task:
            self.task_mode = task
        await self.chat.remove_children()
        await self.chat.mount(Welcome(self.task_mode))
        self.chat.anchor()
        self._refresh_chrome()
        self.query_one(SessionList).select_id(None)
        self.refresh_bindings()

    def _ensure_session(self, text: str) -> str | None:
        if self.session_id is not None or self.store is None:
            return self.session_id
        title = session_title(text, self.task_mode, self._source_of(text))
        sid = self._db("creating a session", self.store.new_session, self._store_mode, self.model_name, title)
        if sid is not None:
            self.session_id, self.session_title = sid, title
            self._refresh_chrome()
        return sid

    def _source_of(self, text: str) -> str | None:
        """The file `text` was loaded from, unless the prompt has been changed since."""
        if self._loaded_transcript and self._loaded_transcript[1].strip() == text.strip():
            return self._loaded_transcript[0]
        return None

    def _session_title_of(self, session_id: str) -> str:
        if session_id == self.session_id and self.session_title:
            return self.session_title
        for item in self.query_one(SessionList).children:
            row = getattr(item, "row", None)
            if row is not None and row.id == session_id:
                return row.title
        return "Untitled"

    # --- sending --------------------------------------------------------------------

    def _run_triage(self, text: str) -> tuple[str, str | None, dict]:
        if not self._triage_loaded:
            self._triage = _default_triage() if self._triage_arg is _AUTO else self._triage_arg
            self._triage_loaded = True
        if self._triage is None:
            return "none", None, {}
        try:
            result = self._triage(text)
        except Exception as exc:  # noqa: BLE001 - a broken rule file must not block the answer
            self.report_error("Safety check failed: this message got no safety banner", exc)
            return "none", None, {"triage_error": str(exc)}
        level = getattr(result, "level", "none") or "none"
        meta: dict = {"triage": level}
        reasons = getattr(result, "reasons", ())
        if reasons:
            meta["triage_reasons"] = [r.to_dict() if hasattr(r, "to_dict") else r for r in reasons]
        message = getattr(result, "message", None)
        if level in URGENT_LEVELS:
            meta["banner"] = message
        return level, message, meta

    @guarded("Cannot send")
    async def action_send(self) -> None:
        if self.job is not None:
            self.notify("A reply is still being written: press Esc to stop it.", severity="warning")
            return
        prompt = self.query_one("#prompt", TextArea)
        text = prompt.text.strip()
        if not text:
            self.notify("Type a question first." if self.task_mode == ASK else
                        "Paste a transcript or open a file (ctrl+o) first.", severity="warning", timeout=3)
            return
        if self.task_mode == SUMMARIZE and "\n" not in text and _looks_like_path(text):
            # Loaded into the prompt for review (ctrl+s again summarizes it); a file that cannot
            # be used is reported and its path stays in the prompt, never summarized as text.
            await self.load_transcript(text)
            return
        prompt.clear()
        await self.submit(text)

    async def submit(self, text: str) -> None:
        """Store the user's message, show it (and any safety banner), and start the reply."""
        if not self._store_event.is_set():  # only in the first moments after start-up
            self.query_one(StatusLine).set_state("opening the session database…", "busy")
            await self._store_event.wait()
        task = self.task_mode
        turn = Turn(task=task, question=text)
        user_meta: dict = {"task": task}
        if task == ASK:
            level, message, triage_meta = self._run_triage(text)
            user_meta.update(triage_meta)
            if level in URGENT_LEVELS:
                turn.banner = (level, message)
                turn.reasons = triage_meta.get("triage_reasons", [])
        elif self._source_of(text):
            user_meta["source"] = self._source_of(text)
            turn.section = self._loaded_transcript[2]
            if turn.section:
                user_meta["section"] = turn.section
        sid = self._ensure_session(text)
        if sid is not None:
            turn.user_id = self._db("saving your message", self.store.add_message, sid, "user", text,
                                    meta=user_meta)
        await self.chat.query(Welcome).remove()
        await self.chat.mount(ChatMessage("user", text, task=task, message_id=turn.user_id))
        if turn.banner:
            await self.chat.mount_all(banner_widgets(*turn.banner, turn.reasons))
        self.turns.append(turn)
        self._loaded_transcript = None
        await self._start_reply(turn)
        if sid is not None:
            await self.refresh_sessions()

    def _history(self, before: Turn) -> list[dict]:
        history: list[dict] = []
        for t in self.turns:
            if t is before:
                break
            if t.task != ASK or t.status == "error" or not t.reply.strip() or t.question_lost:
                continue
            history += [{"role": "user", "content": t.question}, {"role": "assistant", "content": t.reply}]
        return history

    async def _start_reply(self, turn: Turn, replaces: int | None = None) -> None:
        options = self.summary_options if turn.task == SUMMARIZE else self.answer_options
        note = "writing…" if self.model_ready else "waiting for the model to load…"
        view = ChatMessage("assistant", "", task=turn.task, note=note)
        turn.reply_view = view
        turn.status = "pending"
        self.chat.anchor()
        await self.chat.mount(view)
        meta: dict = {"task": turn.task}
        if replaces is not None:
            meta["regenerated"] = True
            meta["replaces"] = replaces
        writer = None
        # A reply is stored only after its question: stored alone, it would read as the reply
        # to the question before it when the session is opened again.
        if self.session_id is not None and turn.user_id is not None:
            writer = self._db("saving the reply", self.store.start_reply, self.session_id, self.model_name,
                              options.to_dict())
        job = Job(turn=turn, view=view, history=self._history(turn), options=options, writer=writer, meta=meta,
                  forwarder=PieceForwarder(asyncio.get_running_loop(), view))
        self.job = job
        self.query_one(StatusLine).set_state("writing…" if self.model_ready else "waiting for the model…", "busy")
        self.refresh_bindings()
        self._generate(job)

    # --- generation (thread worker) -------------------------------------------------

    @work(thread=True, group="generate", exit_on_error=False, name="generate")
    def _generate(self, job: Job) -> None:
        with self._generating:
            self._generate_locked(job)

    def _generate_locked(self, job: Job) -> None:
        backend = self._wait_for_model(job)
        if backend is None:
            error = None if job.cancel.cancelled else f"The model is not available: {self.model_error}"
            self._ui(self._job_finished, job, None, error)
            return
        self._ui(self._job_started, job)

        def on_text(piece: str) -> None:
            if job.writer is not None and job.store_error is None:
                try:
                    job.writer.append(piece)
                except Exception as exc:  # noqa: BLE001 - keep generating; say so once
                    job.store_error = str(exc)
                    log.exception("saving the reply failed")
            job.forwarder.put(piece)

        def on_progress(stage: str, done: int, total: int) -> None:
            self._ui(self._job_progress, job, stage, done, total)

        earlier_stats = getattr(backend, "last_stats", None)
        try:
            if job.turn.task == SUMMARIZE:
                result = tasks.summarize(backend, job.turn.question, job.turn.section or self.section, job.options,
                                         on_text=on_text, cancel=job.cancel, on_progress=on_progress,
                                         best_of=self.summary_best_of)
            else:
                result = tasks.answer(backend, job.turn.question, job.history, job.options,
                                      on_text=on_text, cancel=job.cancel, **self.answer_kwargs)
        except Exception as exc:  # noqa: BLE001 - shown in the chat, logged, never raised
            log.exception("generation failed")
            message = str(exc) or type(exc).__name__
            if not isinstance(exc, (tasks.TaskError, RuntimeError)):
                message = f"{type(exc).__name__}: {message}"
            # An error before the model ran (a question too long) leaves the last reply's figures
            # there: they are not this reply's.
            stats = getattr(backend, "last_stats", None)
            self._ui(self._job_finished, job, None, message, stats if stats is not earlier_stats else None,
                     getattr(exc, "partial", ""))
            return
        self._ui(self._job_finished, job, result, None)

    def _wait_for_model(self, job: Job) -> Backend | None:
        while not self._model_event.wait(0.05):
            if job.cancel.cancelled or self._quitting:
                return None
        return self.backend

    def _job_started(self, job: Job) -> None:
        if not job.view.text:
            job.view.set_note("writing…")
        self.query_one(StatusLine).set_state("writing…", "busy")

    def _job_progress(self, job: Job, stage: str, done: int, total: int) -> None:
        if stage == "candidate":
            job.view.set_note(f"drafting {done + 1} of {total}…" if done < total else "choosing the best draft…")
        elif stage == "section":  # a whole-visit note, written a section at a time
            job.view.set_note(f"writing section {done + 1} of {total}…" if done < total else "checking the note…")
        elif done < total:
            job.view.set_note(f"summarizing part {done + 1} of {total}…")
        else:
            job.view.set_note(f"merging {total} partial summaries…")

    @guarded("Cannot finish the reply")
    async def _job_finished(self, job: Job, result: tasks.TaskResult | None, error: str | None,
                            error_stats: Any = None, partial: str = "") -> None:
        turn, view = job.turn, job.view
        stats = result.stats if result is not None else error_stats
        status_line = self.query_one(StatusLine)
        meta = dict(job.meta)
        if result is not None:
            meta.update(result.meta or {})
            meta["parts"] = result.parts
            if self.backend is not None and result.model != self.backend.model_name:
                meta["answered_by"] = result.model  # a fixed reply: triage or "I don't know"
        try:
            if job.forwarder is not None:
                await job.forwarder.drain()
            if error is not None:
                await view.end_stream(partial or None)  # what was finished before the failure, if any
                view.set_note(f"⚠ {error}", "error")
                turn.status = "error"
                meta["error"] = error
                status_line.set_state("the reply failed", "error")
                self.notify(error, title="Generation failed", severity="error", timeout=10)
            elif result is None or result.cancelled:
                await view.end_stream(result.text if result is not None and result.text else None)
                view.set_note(NOTES["cancelled"], "cancelled")
                turn.status = "cancelled"
                status_line.set_state("cancelled", "busy")
            else:
                await view.end_stream(result.text)
                turn.status = "complete"
                view.set_note(_note_for("complete", {**meta, "finish_reason": stats.finish_reason}), "complete")
                status_line.set_state("ready")
                if meta.get("triage") in URGENT_LEVELS:
                    await self._show_as_banner(turn, view, meta["triage"])
            if stats is not None:
                status_line.show_stats(stats)
        finally:
            turn.reply = view.text
            turn.meta = meta
            if turn.status not in ("complete", "cancelled", "error"):
                turn.status = "error"
            self._finish_writer(job, turn.status, stats, meta)
            self.job = None
            self.refresh_bindings()
        if job.previous is not None:
            await self._settle_regenerated(job)

    async def _settle_regenerated(self, job: Job) -> None:
        turn = job.turn
        reply, reply_id, old_view, status, meta, shown = job.previous
        # The same rule as a reopened session (turns_from_messages): only a complete answer
        # stands against a replacement that did not finish.
        if turn.status == "complete" or status != "complete" or not reply.strip():
            if old_view is not None:
                await old_view.remove()
            return
        await job.view.remove()
        turn.reply, turn.reply_id, turn.reply_view, turn.status, turn.meta = reply, reply_id, old_view, status, meta
        if old_view is not None:
            old_view.display = shown
        self.notify("The new answer was not finished: the previous one is kept.", timeout=5)

    async def _show_as_banner(self, turn: Turn, view: ChatMessage, level: str) -> None:
        """The task layer answered an emergency or a crisis with its fixed message:
        that text belongs in the red banner, not in a chat bubble."""
        if turn.banner is None:
            turn.banner = (level, view.text)
            turn.reasons = turn.meta.get("triage_reasons") or []
            await self.chat.mount_all(banner_widgets(level, view.text, turn.reasons), before=view)
        elif (turn.banner[1] or "").strip() != view.text.strip():
            return  # a different text: keep it visible under the banner
        view.display = False

    def _finish_writer(self, job: Job, status: str, stats: Any, meta: dict) -> None:
        writer = job.writer
        if writer is None:
            return
        job.turn.reply_id = getattr(writer, "message_id", None)
        if job.store_error is not None:
            self.report_error("Database error while saving the reply", job.store_error)
        final = job.view.text
        # The view may hold text that was not streamed (a summary cancelled between parts).
        if final.strip() != writer.text.strip():
            writer.replace(final)
        stats_dict = stats.to_dict() if stats is not None else None
        self._db_do("saving the reply", writer.finish, stats_dict, status, meta)

    # --- actions ----------------------------------------------------------------------

    def action_stop(self) -> None:
        if self.job is not None and not self.job.cancel.cancelled:
            self.job.cancel.cancel()
            self.query_one(StatusLine).set_state("stopping…", "busy")

    @guarded("Cannot regenerate")
    async def action_regenerate(self) -> None:
        if self.job is not None:
            self.notify("A reply is still being written: press Esc to stop it.", severity="warning")
            return
        if not self.turns:
            self.notify("There is no answer to regenerate yet.", timeout=3)
            return
        turn = self.turns[-1]
        if turn.question_lost:
            self.notify("This answer's question was not saved, so it cannot be asked again.", timeout=5)
            return
        # The answer shown stays the answer until its replacement is complete: a regenerate
        # that is stopped or fails brings it back.
        shown = turn.reply_view is not None and turn.reply_view.display  # hidden: shown as a banner
        previous = (turn.reply, turn.reply_id, turn.reply_view, turn.status, turn.meta, shown)
        if turn.reply_view is not None:
            turn.reply_view.display = False
        turn.reply, turn.reply_id, turn.reply_view = "", None, None
        await self._start_reply(turn, replaces=previous[1])
        if self.job is not None:
            self.job.previous = previous

    @guarded("Cannot switch mode")
    async def action_set_task(self, task: str) -> None:
        if task == self.task_mode or task not in TASK_LABELS:
            return
        if self.job is not None:
            self.notify("A reply is still being written: press Esc to stop it first.", severity="warning")
            return
        if self.turns:  # a session holds one kind of conversation: start a new one
            await self._new_session(task)
        else:
            self.task_mode = task
            await self.chat.query(Welcome).remove()
            await self.chat.mount(Welcome(task))
            self._refresh_chrome()
        self.query_one("#prompt", TextArea).focus()

    async def action_toggle_mode(self) -> None:
        await self.action_set_task(SUMMARIZE if self.task_mode == ASK else ASK)

    @guarded("Cannot start a new session")
    async def action_new_session(self) -> None:
        if self.job is not None:
            self.notify("A reply is still being written: press Esc to stop it first.", severity="warning")
            return
        await self._new_session()
        self.query_one("#prompt", TextArea).focus()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_search(self) -> None:
        self.query_one("#sidebar").display = True
        self.query_one("#search", Input).focus()

    def action_focus_sessions(self) -> None:
        self.query_one("#sidebar").display = True
        sessions = self.query_one(SessionList)
        sessions.focus()
        if sessions.index is None and sessions.children:
            sessions.index = 0

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one("#sidebar")
        sidebar.display = not sidebar.display
        if not sidebar.display:
            self.query_one("#prompt", TextArea).focus()

    def action_copy_last(self) -> None:
        replies = [m for m in self.chat.query(ChatMessage) if m.role == "assistant" and m.text.strip()]
        if not replies:
            self.notify("There is no reply to copy yet.", timeout=3)
            return
        self.copy_to_clipboard(replies[-1].text)
        self.notify("Reply copied to the clipboard", timeout=2)

    def _target(self, session_id: str | None) -> str | None:
        target = session_id or self.session_id
        if target is None:
            self.notify("This session has not been saved yet.", timeout=3)
        return target

    @guarded("Cannot rename the session")
    def action_rename(self, session_id: str | None = None) -> None:
        target = self._target(session_id)
        if target is None:
            return

        async def done(title: str | None) -> None:
            if title is None or not title.strip():
                return
            title = title.strip()
            if not self._db_do("renaming the session", self.store.rename_session, target, title):
                return
            if target == self.session_id:
                self.session_title = title
                self._refresh_chrome()
            await self.refresh_sessions()

        self.push_screen(PromptScreen("Rename session", self._session_title_of(target)), done)

    @guarded("Cannot export the session")
    def action_export(self, session_id: str | None = None) -> None:
        target = self._target(session_id)
        if target is None or self.store is None:
            return
        default = Path.cwd() / f"{_slug(self._session_title_of(target))}.md"

        def write(dest: Path) -> None:
            from ..store import StoreError, write_export

            fmt = "json" if dest.suffix.lower() == ".json" else "markdown"
            content = self._db("exporting the session", self.store.export, [target], fmt)
            if content is None:
                return
            try:
                write_export(dest, content)
            except StoreError as exc:
                self.report_error("Cannot write the export", exc)
                return
            self.notify(f"Exported to {dest}", timeout=5)

        def done(path: str | None) -> None:
            if not path or not path.strip():
                return
            try:
                dest = Path(path.strip()).expanduser()
                is_dir, exists = dest.is_dir(), dest.exists()
            except (OSError, RuntimeError) as exc:  # RuntimeError: "~name" of no such user
                self.report_error("Cannot export there", exc)
                return
            if is_dir:
                self.notify(f"{dest} is a folder: give a file name", severity="error", timeout=5)
            elif exists:
                self.push_screen(ConfirmScreen(f"{dest} exists. Replace it?"),
                                 lambda yes: write(dest) if yes else None)
            else:
                write(dest)

        self.push_screen(PromptScreen("Export session to (.md or .json)", str(default)), done)

    @guarded("Cannot delete the session")
    def action_delete(self, session_id: str | None = None) -> None:
        target = self._target(session_id)
        if target is None or self.store is None:
            return
        if target == self.session_id and self.job is not None:
            self.notify("A reply is still being written: press Esc to stop it first.", severity="warning")
            return

        async def done(yes: bool | None) -> None:
            if not yes:
                return
            if not self._db_do("deleting the session", self.store.delete_session, target):
                return
            if target == self.session_id:
                await self._new_session()
            await self.refresh_sessions()
            self.notify("Session deleted", timeout=3)

        title = self._session_title_of(target)
        self.push_screen(ConfirmScreen(f"Delete the session “{title}”? This cannot be undone."), done)

    def action_open_file(self) -> None:
        async def done(path: str | None) -> None:
            if path and path.strip():
                await self.load_transcript(path.strip())

        self.push_screen(PromptScreen("Open a transcript file", "", "path/to/transcript.txt"), done)

    @guarded("Cannot open the file")
    async def load_transcript(self, path: str) -> bool:
        """Put a transcript file's text into the prompt (switching to Summarize)."""
        p = _file_named(path) or Path(_unquoted_path(path))
        try:
            p = p.expanduser()
            if not p.is_file():
                self.notify(f"No such file: {p}", severity="error", timeout=5)
                return False
            if p.stat().st_size > MAX_TRANSCRIPT_BYTES:
                self.notify(f"{p} is too large for a transcript", severity="error", timeout=5)
                return False
            record, more = _read_transcript(p)
        except (OSError, RuntimeError) as exc:  # RuntimeError: "~name" of no such user
            self.report_error(f"Cannot read {p}", exc)
            return False
        except ValueError as exc:  # the batch reader's own words: file, line and problem
            self.notify(str(exc), title="Cannot use the file", severity="error", timeout=10, markup=False)
            return False
        await self.action_set_task(SUMMARIZE)
        if self.task_mode != SUMMARIZE:
            return False
        text = record.text
        self._loaded_transcript = (p.name, text, record.section)
        prompt = self.query_one("#prompt", TextArea)
        prompt.load_text(text)
        prompt.focus()
        lines = len(text.splitlines())
        section = f", section {record.section}" if record.section else ""
        if more:
            self.notify(f"Loaded the first of {more + 1} transcripts in {p.name} ({record.id}: {lines} lines"
                        f"{section}): press ctrl+s to summarize it. `assistant summarize {p.name}` does them all.",
                        timeout=10, markup=False)
        else:
            self.notify(f"Loaded {lines} lines from {p.name}{section}: press ctrl+s to summarize.", timeout=5,
                        markup=False)
        return True

    async def action_quit(self) -> None:
        self._begin_shutdown()
        self.exit(0)

    def _begin_shutdown(self) -> None:
        if self._quitting:
            return
        self._quitting = True
        job, self.job = self.job, None
        if job is not None:  # quitting mid-reply: keep what was written, marked cancelled
            job.cancel.cancel()
            if job.writer is not None and not getattr(job.writer, "closed", False):
                self._db_do("saving the reply", job.writer.finish, None, "cancelled",
                            {**job.meta, "finish_reason": "cancelled"})

    async def on_unmount(self) -> None:
        self._begin_shutdown()
        backend, self.backend = self.backend, None
        # The cancel reaches a generating thread at its next token, which may be a long
        # prompt away; until it has stopped, the model must stay allocated.
        stopped = await asyncio.to_thread(self._generating.acquire, timeout=CLOSE_WAIT_S)
        if not stopped:
            log.warning("a reply was still being generated after %.0f s; the model is left to the exit", CLOSE_WAIT_S)
            backend = None
        if backend is not None:
            try:
                backend.close()
            except Exception:  # noqa: BLE001
                log.exception("closing the model failed")
        if self._owns_store and self.store is not None:
            try:
                self.store.close()
            except Exception:  # noqa: BLE001
                log.exception("closing the database failed")


# --- helpers ----------------------------------------------------------------------


def _note_for(status: str, meta: dict | None) -> str:
    meta = meta or {}
    if status == "error":
        return f"⚠ {meta.get('error') or 'the reply failed'}"
    if status in ("cancelled", "partial"):
        return NOTES[status]
    notes = []
    if meta.get("finish_reason") == "length":
        notes.append(NOTES["length"])
    sources = [s for s in meta.get("sources") or [] if isinstance(s, dict) and s.get("title")]
    if sources:
        notes.append("Sources: " + "; ".join(
            f"{s['title']} ({s['url']})" if s.get("url") else s["title"] for s in sources))
    return "\n".join(notes)


UNSAVED_QUESTION = "(this question was not saved)"


def turns_from_messages(messages: list[dict]) -> list[Turn]:
    """A stored session as turns; a regenerated reply replaces the one before it once it is complete."""
    turns: list[Turn] = []
    for m in messages:
        meta = m.get("meta") or {}
        if m["role"] == "user":
            task = meta.get("task") if meta.get("task") in TASK_LABELS else ASK
            banner = None
            if meta.get("triage") in URGENT_LEVELS:
                banner = (meta["triage"], meta.get("banner"))
            turns.append(Turn(task=task, question=m["content"], user_id=m["id"], banner=banner,
                              reasons=meta.get("triage_reasons") or [] if banner else [],
                              status="none", section=meta.get("section")))
        elif m["role"] == "assistant":
            if not turns or (turns[-1].reply_id is not None and not meta.get("regenerated")):
                # A reply with no question of its own before it: the question was never stored
                # (an older version kept such replies). Shown apart, not in place of an answer.
                task = meta.get("task") if meta.get("task") in TASK_LABELS else ASK
                turns.append(Turn(task=task, question=UNSAVED_QUESTION, status="none", question_lost=True))
            turn = turns[-1]
            status = m.get("status") or "complete"
            if meta.get("regenerated") and status != "complete" and turn.status == "complete" and turn.reply.strip():
                continue  # a regeneration that did not finish: the answer before it stands
            turn.reply, turn.reply_id, turn.status = m["content"] or "", m["id"], status
            turn.meta = meta
    return turns


def _unquoted_path(text: str) -> str:
    """A path as a terminal pastes a dropped file: in quotes ('/a b/visit.txt', as GNOME's
    does), with escaped spaces (/a\\ b/visit.txt, as macOS's does) or as a file:// URI."""
    text = text.strip()
    if text.startswith("file://"):
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        return url2pathname(urlparse(text).path)  # "/C:/x" on Windows becomes "C:\\x"
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if "\\" in text:
        import shlex

        try:
            words = shlex.split(text)
        except ValueError:
            return text
        if len(words) == 1:
            return words[0]
    return text


def _file_named(text: str) -> Path | None:
    """The file `text` names, as typed or as a terminal pastes a dropped one; None if none."""
    if len(text) > 4096:
        return None
    for candidate in dict.fromkeys((text.strip(), _unquoted_path(text))):  # as typed first (a\\b on Windows)
        try:
            path = Path(candidate).expanduser()
            if path.is_file():
                return path
        except (OSError, ValueError, RuntimeError):  # RuntimeError: "~name" of no such user
            continue
    return None


def _looks_like_path(text: str) -> bool:
    return _file_named(text) is not None


def _read_transcript(path: Path):
    """(the first transcript of the file, how many more it holds), read as `assistant
    summarize` reads it: a .txt whole, a .jsonl / .json / .csv record by record (with its
    section, if it names one). ValueError names the file and what is wrong with it (not
    UTF-8 or UTF-16 text, no records, an unsupported type such as .pdf)."""
    from ..batch_io import Record, read_records

    first, more = None, 0
    for record in read_records(path, "summarize"):
        if not isinstance(record, Record):
            if first is None:
                raise ValueError(str(record))
            continue
        if first is None:
            first = record
        else:
            more += 1
    return first, more


def _setup_logging() -> Path | None:
    """Log to a file in the user data directory (a TUI cannot print to the terminal)."""
    from ..paths import data_home

    try:
        path = data_home() / "tui.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("assistant")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return path


def run_tui(model: str | None = None, adapter: str | Path | None = None, backend: str | None = None,
            db: str | Path | None = None, *, mode: str = "full", max_tokens: int | None = None,
            temperature: float = 0.0, seed: int = 0) -> int:
    """Run the terminal app (the CLI's `assistant tui`). Returns the exit code."""
    _setup_logging()

    def factory() -> Backend:
        from ..backends import load_backend

        return load_backend(model, backend=backend, adapter=adapter)

    name = model or DEFAULT_MODEL
    if "/" in name or name.endswith(".gguf"):
        name = Path(name).name or name
    opts = {}
    if max_tokens is not None or temperature or seed:
        opts["answer_options"] = GenerationOptions(max_tokens=max_tokens or tasks.ANSWER_MAX_TOKENS,
                                                   temperature=temperature, seed=seed)
        opts["summary_options"] = tasks.summary_options(max_tokens=max_tokens, temperature=temperature, seed=seed)
    app = HealthAssistantApp(backend_factory=factory, store=db, model_name=name, mode=mode, **opts)
    try:
        app.run()
    except Exception:  # noqa: BLE001 - last resort: a line, not a traceback
        log.exception("the app crashed")
        import sys

        print("health assistant: the app stopped after an unexpected error (see tui.log)", file=sys.stderr)
        return 1
    return app.return_code or 0
