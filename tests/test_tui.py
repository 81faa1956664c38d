"""The Textual app, driven with Pilot against a FakeBackend and a store in tmp_path."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from assistant.store import Store
from assistant.tui.app import HealthAssistantApp, Turn, session_title, turns_from_messages
from assistant.tui.keys import APP_KEYS
from assistant.tui.screens import ConfirmScreen, HelpScreen, PromptScreen, help_table
from assistant.tui.widgets import Banner, ChatMessage, SessionItem, SessionList, StatusLine, Welcome
from textual.widgets import Input, Markdown, TextArea

from fakes import DEFAULT_REPLY, FakeBackend, failing_factory, pieces

SIZE = (80, 24)
TRANSCRIPT = (
    "Doctor: What brings you in today?\n"
    "Patient: I've had a cough for two weeks.\n"
    "Doctor: Any fever?\n"
    "Patient: A little, at night.\n"
    "Doctor: Any shortness of breath?\n"
    "Patient: No.\n"
    "Doctor: Let's get a chest X-ray.\n"
    "Patient: Okay."
)
SUMMARY = "Two-week cough with low-grade night fevers, no dyspnea. Plan: chest X-ray."
# The whole-visit note of TRANSCRIPT when every section's draft is SUMMARY: the later sections
# only repeat it, and its opening is the whole visit, so the history alone says it.
NOTE = "HISTORY OF PRESENT ILLNESS\n\n" + SUMMARY


def make_app(tmp_path: Path, backend: FakeBackend | None = None, **kwargs) -> HealthAssistantApp:
    backend = backend or FakeBackend()
    kwargs.setdefault("store", Store(tmp_path / "logs.db"))
    kwargs.setdefault("triage", None)
    # the fake model's text as it is: no knowledge-base grounding, no scope-guard lines
    kwargs.setdefault("answer_kwargs", {"grounded": False, "safety": False})
    return HealthAssistantApp(backend_factory=lambda: backend, model_name="fake-model", **kwargs)


async def wait_until(pilot, condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


async def ready(pilot) -> None:
    app = pilot.app
    await wait_until(pilot, lambda: app.model_ready or app.model_error is not None, what="the model")
    await pilot.pause()


def idle(app: HealthAssistantApp) -> bool:
    return app.job is None and bool(app.turns) and app.turns[-1].status != "pending"


async def send(pilot, text: str, wait: bool = True) -> None:
    app = pilot.app
    app.query_one("#prompt", TextArea).load_text(text)
    await pilot.press("ctrl+s")
    if wait:
        await wait_until(pilot, lambda: idle(app), what="the reply")
        await pilot.pause()


def messages(store: Store, session_id: str) -> list[dict]:
    return store.get_session(session_id)["messages"]


def replies(app) -> list[ChatMessage]:
    return [m for m in app.query(ChatMessage) if m.role == "assistant"]


def notifications(app) -> list[str]:
    return [n.message for n in app._notifications]


# --- asking -----------------------------------------------------------------------------


async def test_question_streams_markdown_and_is_stored(tmp_path, monkeypatch):
    appended: list[str] = []
    original = Markdown.append

    def spy(self, markdown):
        appended.append(markdown)
        return original(self, markdown)

    monkeypatch.setattr(Markdown, "append", spy)
    app = make_app(tmp_path, FakeBackend(delay=0.02))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert "fake-model" in app.query_one(StatusLine).model
        await send(pilot, "I have a fever, what should I do?")

        reply = replies(app)[-1]
        assert reply.text.strip() == DEFAULT_REPLY
        # streamed: appended in fragments, not rendered whole at the end
        assert len(appended) >= 2 and "".join(appended).strip() == DEFAULT_REPLY
        # rendered as Markdown (the list became list items)
        assert reply.body.query("MarkdownBulletList")
        assert app.query_one(Input).value == ""
        assert app.query_one("#prompt", TextArea).text == ""
        assert not app.query(Welcome)

        stored = messages(app.store, app.session_id)
        assert [(m["role"], m["status"]) for m in stored] == [("user", "complete"), ("assistant", "complete")]
        assert stored[0]["content"] == "I have a fever, what should I do?"
        assert stored[1]["content"].strip() == DEFAULT_REPLY
        assert stored[1]["completion_tokens"] == len(pieces(DEFAULT_REPLY))
        assert stored[1]["meta"]["task"] == "ask"

        status = app.query_one(StatusLine)
        assert status.rate == "50.0" and status.ttft == "0.25 s" and status.state == "ready"
        session = app.store.list_sessions()[0]
        assert session["title"] == "I have a fever, what should I do?"
        items = list(app.query(SessionItem))
        assert [i.row.id for i in items] == [app.session_id]


async def test_user_message_stored_before_generation(tmp_path):
    gate = threading.Event()
    app = make_app(tmp_path, FakeBackend(gate=gate))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "Is ibuprofen safe with a cold?", wait=False)
        await wait_until(pilot, lambda: app.job is not None, what="the job")
        stored = messages(app.store, app.session_id)
        assert [(m["role"], m["status"]) for m in stored] == [("user", "complete"), ("assistant", "partial")]
        gate.set()
        await wait_until(pilot, lambda: idle(app))
        assert messages(app.store, app.session_id)[1]["status"] == "complete"


async def test_conversation_continues_with_history(tmp_path):
    backend = FakeBackend(replies=["First answer.", "Second answer."])
    app = make_app(tmp_path, backend)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "What is a fever?")
        await send(pilot, "And when should I worry?")
        last = backend.calls[-1]
        contents = [m["content"] for m in last]
        assert "What is a fever?" in contents and "First answer." in contents
        assert len(messages(app.store, app.session_id)) == 4
        assert len(app.store.list_sessions()) == 1


async def test_escape_cancels_and_keeps_partial_text(tmp_path):
    long_reply = " ".join(f"word{i}" for i in range(400))
    app = make_app(tmp_path, FakeBackend(long_reply, delay=0.01))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "Tell me everything about colds", wait=False)
        await wait_until(pilot, lambda: app.job is not None and len(app.job.view.text) > 20, what="some text")
        await pilot.press("escape")
        await wait_until(pilot, lambda: idle(app), what="the cancel")
        reply = replies(app)[-1]
        assert reply.status == "cancelled" and reply.has_class("-cancelled")
        assert "cancelled" in str(reply.query_one(".message-note").render())
        assert 0 < len(reply.text) < len(long_reply)
        stored = messages(app.store, app.session_id)[-1]
        assert stored["status"] == "cancelled"
        assert stored["content"] and long_reply.startswith(stored["content"].strip())
        assert app.query_one(StatusLine).state == "cancelled"


async def test_quit_during_a_reply_keeps_it_as_cancelled(tmp_path):
    long_reply = " ".join(f"word{i}" for i in range(2000))
    store = Store(tmp_path / "logs.db")
    app = make_app(tmp_path, FakeBackend(long_reply, delay=0.01), store=store)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "Explain everything", wait=False)
        await wait_until(pilot, lambda: app.job is not None and len(app.job.view.text) > 20)
        session_id = app.session_id
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: not app.is_running, what="the app to exit")
    assert app.return_code == 0
    reply = messages(store, session_id)[-1]
    assert reply["status"] == "cancelled" and long_reply.startswith(reply["content"].strip())
    assert reply["content"].strip()


async def answer_then_regenerate(pilot) -> int:
    """Ask one question, wait for its answer, press ctrl+r; the first answer's stored id."""
    await ready(pilot)
    await send(pilot, "How much water should I drink?")
    first_id = pilot.app.turns[-1].reply_id
    await pilot.press("ctrl+r")
    return first_id


async def test_regenerate_replaces_the_last_answer(tmp_path):
    backend = FakeBackend(replies=["The first answer.", "A better answer."])
    app = make_app(tmp_path, backend)
    async with app.run_test(size=SIZE) as pilot:
        first_id = await answer_then_regenerate(pilot)
        await wait_until(pilot, lambda: idle(app) and app.turns[-1].reply == "A better answer.")
        await pilot.pause()
        assert [r.text for r in replies(app)] == ["A better answer."]
        assert len(backend.calls) == 2
        assert backend.calls[0] == backend.calls[1]  # same prompt: same question, same history
        stored = messages(app.store, app.session_id)
        assert [m["role"] for m in stored] == ["user", "assistant", "assistant"]
        assert stored[2]["meta"]["regenerated"] is True and stored[2]["meta"]["replaces"] == first_id
        # reopened, the session shows the regenerated answer only
        turns = turns_from_messages(stored)
        assert len(turns) == 1 and turns[0].reply == "A better answer."


async def test_copy_reply(tmp_path):
    app = make_app(tmp_path, FakeBackend("Rest and fluids."))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "Cold remedies?")
        await pilot.press("f4")
        assert app.clipboard == "Rest and fluids."
        user_message = next(m for m in app.query(ChatMessage) if m.role == "user")
        user_message.focus()
        await pilot.press("c")
        assert app.clipboard == "Cold remedies?"


async def test_auto_scroll_only_at_bottom(tmp_path):
    long_reply = "\n\n".join(f"Paragraph {i} about hydration." for i in range(25))
    app = make_app(tmp_path, FakeBackend(long_reply))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "Tell me about hydration")
        chat = app.query_one("#chat")
        await pilot.pause(0.1)
        assert chat.max_scroll_y > 0 and chat.scroll_y == chat.max_scroll_y  # followed the stream
        app.backend.reply = long_reply
        chat.scroll_to(y=0, animate=False)  # the user scrolls up (releases the anchor)
        await pilot.pause()
        await send(pilot, "More please")
        # the new question re-anchors the view (the user acted), so it is followed to the end ...
        assert chat.scroll_y == chat.max_scroll_y
        gate = threading.Event()
        app.backend.gate = gate
        app.backend.delay = 0.002
        await send(pilot, "And again", wait=False)
        await wait_until(pilot, lambda: app.job is not None)
        chat.scroll_to(y=0, animate=False)  # ... but scrolling up during a reply stops following
        gate.set()
        await wait_until(pilot, lambda: idle(app))
        await pilot.pause(0.1)
        assert chat.scroll_y == 0 < chat.max_scroll_y


# --- sessions ---------------------------------------------------------------------------


async def test_switch_sessions_and_continue(tmp_path):
    backend = FakeBackend(replies=["Answer about sleep.", "Answer about diet.", "More about sleep."])
    app = make_app(tmp_path, backend)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "How much sleep do I need?")
        first = app.session_id
        await pilot.press("ctrl+n")
        assert app.session_id is None and app.query(Welcome)
        await send(pilot, "Is a vegetarian diet healthy?")
        second = app.session_id
        assert second != first
        items = list(app.query(SessionItem))
        assert [i.row.id for i in items] == [second, first]  # newest first

        session_list = app.query_one(SessionList)
        session_list.focus()
        session_list.index = 1
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.session_id == first, what="the first session")
        texts = [m.text for m in app.query(ChatMessage)]
        assert texts == ["How much sleep do I need?", "Answer about sleep."]
        assert app.query_one("#session-title").render().plain == "How much sleep do I need?"

        await send(pilot, "Is napping good?")
        assert app.session_id == first
        contents = [m["content"] for m in backend.calls[-1]]
        assert "How much sleep do I need?" in contents and "Answer about sleep." in contents
        assert len(messages(app.store, first)) == 4
        assert [i.row.id for i in app.query(SessionItem)][0] == first  # updated: newest again


async def test_search_sessions(tmp_path):
    backend = FakeBackend(replies=["Take paracetamol.", "Stretch every day."])
    app = make_app(tmp_path, backend)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "What helps a headache?")
        headache = app.session_id
        await pilot.press("ctrl+n")
        await send(pilot, "How do I fix back pain?")
        await pilot.press("ctrl+f")
        assert app.focused is app.query_one("#search", Input)
        await pilot.press(*"paracetamol")
        await pilot.pause()
        items = list(app.query(SessionItem))
        assert [i.row.id for i in items] == [headache]
        assert "paracetamol" in items[0].row.snippet.lower()
        await pilot.press("enter")  # to the list
        await pilot.press("enter")  # open it
        await wait_until(pilot, lambda: app.session_id == headache)
        app.query_one("#search", Input).value = ""
        await pilot.pause()
        assert len(list(app.query(SessionItem))) == 2


async def test_rename_export_delete(tmp_path):
    app = make_app(tmp_path, FakeBackend("Rest."))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "Flu or cold?")
        sid = app.session_id
        await pilot.press("f2")
        await wait_until(pilot, lambda: isinstance(app.screen, PromptScreen))
        app.screen.query_one(Input).value = "Flu questions"
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.store.get_session(sid)["title"] == "Flu questions")
        await pilot.pause()
        assert app.query_one(SessionItem).row.title == "Flu questions"

        out = tmp_path / "export" / "flu.md"
        await pilot.press("f3")
        await wait_until(pilot, lambda: isinstance(app.screen, PromptScreen))
        app.screen.query_one(Input).value = str(out)
        await pilot.press("enter")
        await wait_until(pilot, out.exists)
        text = out.read_text()
        assert "Flu questions" in text and "Flu or cold?" in text and "Rest." in text

        await pilot.press("f8")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_until(pilot, lambda: app.session_id is None)
        await pilot.pause()
        assert app.store.list_sessions() == []
        assert not list(app.query(SessionItem))


# --- summarize --------------------------------------------------------------------------


async def test_summarize_mode_stores_transcript_and_summary(tmp_path):
    backend = FakeBackend(SUMMARY)
    app = make_app(tmp_path, backend)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+t")
        assert app.task_mode == "summarize"
        assert app.query_one("#prompt", TextArea).border_title == "Transcript"
        await send(pilot, TRANSCRIPT)
        assert replies(app)[-1].text == NOTE
        assert "Summarize the" in backend.calls[0][-1]["content"] or TRANSCRIPT.splitlines()[1] in \
            backend.calls[0][-1]["content"]
        stored = messages(app.store, app.session_id)
        assert stored[0]["role"] == "user" and stored[0]["content"] == TRANSCRIPT
        assert stored[0]["meta"]["task"] == "summarize"
        assert stored[1]["content"] == NOTE and stored[1]["meta"]["task"] == "summarize"
        assert app.store.get_session(app.session_id)["title"].startswith("Summary: Doctor: What brings")

        # reopening the session brings the app back in Summarize mode
        await pilot.press("ctrl+t")
        assert app.task_mode == "ask" and app.session_id is None
        app.query_one(SessionList).focus()
        app.query_one(SessionList).index = 0
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.session_id is not None)
        assert app.task_mode == "summarize"

        # a one-line transcript that starts like a home-folder path ("~user") is still sent
        await send(pilot, "~2 weeks of cough; patient reports night fever")
        assert stored != messages(app.store, app.session_id)
        assert messages(app.store, app.session_id)[-2]["content"] == "~2 weeks of cough; patient reports night fever"


async def test_mode_tabs_are_clickable(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.click("#mode-summarize")
        assert app.task_mode == "summarize" and app.query_one("#mode-summarize").has_class("-active")
        await pilot.click("#mode-ask")
        assert app.task_mode == "ask"


async def test_summarize_from_a_file(tmp_path):
    path = tmp_path / "visit.txt"
    path.write_text(TRANSCRIPT)
    app = make_app(tmp_path, FakeBackend(SUMMARY))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: isinstance(app.screen, PromptScreen))
        app.screen.query_one(Input).value = str(path)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.query_one("#prompt", TextArea).text == TRANSCRIPT)
        assert app.task_mode == "summarize"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: idle(app))
        session = app.store.get_session(app.session_id)
        assert session["title"] == "Summary: visit.txt"
        assert session["messages"][0]["meta"]["source"] == "visit.txt"
        assert session["messages"][1]["content"] == NOTE
        # The file's name goes only with the file's text: replaced before sending, it is not the source.
        await pilot.press("ctrl+n")
        assert await app.load_transcript(str(path))
        await send(pilot, "Doctor: Any allergies?\nPatient: Penicillin.")
        session = app.store.get_session(app.session_id)
        assert session["title"] != "Summary: visit.txt" and "source" not in session["messages"][0]["meta"]


async def test_a_file_path_that_cannot_be_loaded_is_never_summarized_as_text(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    backend = FakeBackend(SUMMARY)
    app = make_app(tmp_path, backend)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await app.action_set_task("summarize")
        app.query_one("#prompt", TextArea).load_text(str(empty))
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert any(f"{empty}: empty transcript" in n for n in notifications(app))
        assert not app.turns and not backend.prompts and app.session_id is None
        assert app.query_one("#prompt", TextArea).text == str(empty)  # left for the user to fix


async def test_brackets_in_notifications_are_text_and_odd_paths_do_not_close_the_app(tmp_path):
    app = make_app(tmp_path, FakeBackend("Rest."))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: isinstance(app.screen, PromptScreen))
        app.screen.query_one(Input).value = str(tmp_path / "notes[/]x [b].txt")
        await pilot.press("enter")
        await pilot.pause(0.2)  # the toast is drawn: markup in it used to raise MarkupError
        assert any("notes[/]x [b].txt" in n for n in notifications(app))
        await send(pilot, "Flu or cold?")
        await pilot.press("f3")
        await wait_until(pilot, lambda: isinstance(app.screen, PromptScreen))
        app.screen.query_one(Input).value = "~no-such-user-here/flu.md"
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert app.is_running and any("Cannot export there" in str(n.title) for n in app._notifications)


# --- safety -----------------------------------------------------------------------------


@dataclass
class FakeTriage:
    level: str
    message: str | None = None
    reasons: tuple = ("fake-rule",)
    referral: str | None = None


async def test_banner_shows_before_model_output(tmp_path):
    """The UI hook: a flagged message gets its red banner before the model has written anything."""
    gate = threading.Event()
    banner = "Call 112 now."

    def triage(text):
        return FakeTriage("emergency", banner) if "chest" in text else FakeTriage("none")

    app = make_app(tmp_path, FakeBackend("Some model text.", gate=gate), triage=triage)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "Crushing chest pain spreading to my arm", wait=False)
        await wait_until(pilot, lambda: bool(app.query(Banner)))
        assert replies(app)[-1].text == ""  # the banner is there before any model output
        shown = app.query_one(Banner)
        assert shown.level == "emergency" and banner in str(shown.render())
        children = list(app.query_one("#chat").children)
        assert children.index(shown) < children.index(replies(app)[-1])
        gate.set()
        await wait_until(pilot, lambda: idle(app))
        stored = messages(app.store, app.session_id)
        assert stored[0]["meta"]["triage"] == "emergency" and stored[0]["meta"]["banner"] == banner
        # no banner for an ordinary question; the banner comes back when the session is reopened
        await send(pilot, "What is a normal heart rate?")
        assert len(app.query(Banner)) == 1
        turns = turns_from_messages(messages(app.store, app.session_id))
        assert turns[0].banner == ("emergency", banner) and turns[1].banner is None


async def test_emergency_with_the_real_safety_layer(tmp_path):
    """With the shipped triage, an emergency never reaches the model: the fixed
    message is shown as the red banner (once) and stored as the reply."""
    backend = FakeBackend("MODEL TEXT")
    app = make_app(tmp_path, backend, triage=HealthAssistantApp.__init__.__kwdefaults__["triage"],
                   answer_kwargs={"grounded": False})
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "I have crushing chest pain and I'm sweating")
        assert backend.calls == []
        (banner,) = app.query(Banner)
        assert banner.level == "emergency" and "emergency" in str(banner.render()).lower()
        assert not replies(app)[-1].display  # the same text is not shown twice
        stored = messages(app.store, app.session_id)
        assert stored[0]["meta"]["triage"] == "emergency"
        assert stored[1]["status"] == "complete" and stored[1]["meta"]["triage"] == "emergency"
        assert stored[1]["content"].strip() == str(banner.render()).strip()
        # reopened: one banner, no duplicate bubble
        await pilot.press("ctrl+n")
        await app.open_session(stored[0]["session_id"])
        await pilot.pause()
        assert len(app.query(Banner)) == 1 and not replies(app)[-1].display
        # an ordinary question still goes to the model
        await send(pilot, "What is a normal resting heart rate?")
        assert replies(app)[-1].text.startswith("MODEL TEXT") and len(backend.calls) == 1


async def test_grounded_answer_lists_sources(tmp_path):
    @dataclass
    class P:
        doc_id: str
        title: str
        url: str
        text: str

    class KB:
        def search(self, query, k=3):
            return [P("d1", "Fever", "https://example.org/fever", "A fever is a temporary rise in body temperature.")]

        def is_relevant(self, hits):
            return bool(hits)

        def section_of(self, hit, section):  # one passage a page here: no sections
            return None

    backend = FakeBackend("A fever is a raised temperature [1].")
    app = make_app(tmp_path, backend, answer_kwargs={"knowledge": KB(), "safety": False})
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "What is a fever exactly?")
        note = str(replies(app)[-1].query_one(".message-note").render())
        assert "Sources: Fever (https://example.org/fever)" in note
        assert "temporary rise in body temperature" in backend.calls[0][-1]["content"]
        stored = messages(app.store, app.session_id)[-1]
        assert stored["meta"]["sources"] == [{"title": "Fever", "url": "https://example.org/fever"}]


# --- errors -----------------------------------------------------------------------------


async def test_generation_error_is_shown_and_stored(tmp_path):
    app = make_app(tmp_path, FakeBackend(fail_after=3))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "What is a migraine?")
        reply = replies(app)[-1]
        assert reply.status == "error" and reply.has_class("-error")
        assert "failed on purpose" in str(reply.query_one(".message-note").render())
        assert reply.text  # the partial text is kept
        assert any("failed on purpose" in n for n in notifications(app))
        stored = messages(app.store, app.session_id)[-1]
        assert stored["status"] == "error" and "failed on purpose" in stored["meta"]["error"]
        assert app.query_one(StatusLine).level == "error"
        # the app carries on
        app.backend.fail_after = None
        await send(pilot, "And a cluster headache?")
        assert replies(app)[-1].status == "complete"


async def test_model_load_failure_is_shown(tmp_path):
    app = HealthAssistantApp(backend_factory=failing_factory(), store=Store(tmp_path / "logs.db"),
                             model_name="missing-model", triage=None)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.model_error and "not found" in app.model_error
        assert app.query_one(StatusLine).level == "error"
        assert any("could not be loaded" in n for n in notifications(app))
        await send(pilot, "Can I still ask?")
        reply = replies(app)[-1]
        assert reply.status == "error" and "not available" in str(reply.query_one(".message-note").render())
        stored = messages(app.store, app.session_id)
        assert stored[0]["content"] == "Can I still ask?" and stored[1]["status"] == "error"


async def test_database_error_is_shown_and_app_still_answers(tmp_path):
    bad = tmp_path / "not-a-db.db"
    bad.write_bytes(b"this is not sqlite at all" * 10)
    app = HealthAssistantApp(backend_factory=lambda: FakeBackend("Still here."), store=bad,
                             model_name="fake-model", triage=None,
                             answer_kwargs={"grounded": False, "safety": False})
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.store is None
        assert any("SQLite" in n for n in notifications(app))
        await send(pilot, "Does it still work?")
        assert replies(app)[-1].text == "Still here."
    assert bad.read_bytes() == b"this is not sqlite at all" * 10


async def test_database_path_opens_in_the_background(tmp_path):
    db = tmp_path / "sub" / "logs.db"
    app = HealthAssistantApp(backend_factory=lambda: FakeBackend("Saved."), store=db, model_name="fake-model",
                             triage=None, answer_kwargs={"grounded": False, "safety": False})
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "Asked at once")  # waits for the store rather than losing the message
        assert app.store is not None and app.store.path == db
        assert [m["content"] for m in messages(app.store, app.session_id)] == ["Asked at once", "Saved."]
    reopened = Store(db)
    assert [s["title"] for s in reopened.list_sessions()] == ["Asked at once"]


async def test_database_failure_during_a_reply(tmp_path):
    store = Store(tmp_path / "logs.db")
    app = make_app(tmp_path, FakeBackend("Answer."), store=store)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "First question")
        store.close()  # every later database call fails
        await send(pilot, "Second question")
        assert replies(app)[-1].text == "Answer."
        assert any("Database error" in str(n.title) for n in app._notifications)


async def test_waits_for_a_slow_model(tmp_path):
    loaded = threading.Event()
    backend = FakeBackend("Loaded now.")

    def slow_factory():
        loaded.wait(5)
        return backend

    app = HealthAssistantApp(backend_factory=slow_factory, store=Store(tmp_path / "logs.db"),
                             model_name="slow-model", triage=None,
                             answer_kwargs={"grounded": False, "safety": False})
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.3)
        status = app.query_one(StatusLine)
        assert status.level == "busy" and "loading model slow-model" in status.state
        await send(pilot, "Asked while loading", wait=False)  # interactive at once
        await wait_until(pilot, lambda: app.job is not None)
        assert "waiting for the model" in str(replies(app)[-1].query_one(".message-note").render())
        loaded.set()
        await wait_until(pilot, lambda: idle(app))
        assert replies(app)[-1].text == "Loaded now."


# --- help, helpers, start-up ------------------------------------------------------------


async def test_help_screen_lists_every_binding(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        table = help_table()
        rows = {str(c) for col in table.columns for c in col._cells}
        for key in APP_KEYS:
            assert key.help in rows
        bound = {b.action for b in app._bindings.key_to_bindings.get("ctrl+s", [])}
        assert "send" in bound
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


def test_session_titles():
    assert session_title("  How do I\n treat a burn? ", "ask") == "How do I"
    assert session_title("x" * 100, "ask").endswith("…") and len(session_title("x" * 100, "ask")) == 60
    assert session_title("Doctor: hi\nPatient: hello", "summarize") == "Summary: Doctor: hi"
    assert session_title("...", "summarize", "visit.txt") == "Summary: visit.txt"


def test_turns_from_messages_marks_interrupted_replies():
    msgs = [
        {"id": 1, "role": "user", "content": "q", "status": "complete", "meta": {"task": "ask"}},
        {"id": 2, "role": "assistant", "content": "half", "status": "partial", "meta": None},
    ]
    (turn,) = turns_from_messages(msgs)
    assert isinstance(turn, Turn) and turn.reply == "half" and turn.status == "partial"


def test_tui_startup_imports_no_heavy_modules():
    code = ("import sys, assistant.tui.app; "
            "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'llama_cpp') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert json.loads(out.stdout) == []


# --- snapshots (80x24) ------------------------------------------------------------------


def _snap_app(tmp_path, reply=DEFAULT_REPLY):
    return make_app(tmp_path, FakeBackend(reply, delay=0))


def test_snapshot_empty_chat(snap_compare, tmp_path):
    async def run_before(pilot):
        await ready(pilot)

    assert snap_compare(_snap_app(tmp_path), terminal_size=SIZE, run_before=run_before)


def test_snapshot_chat_with_answer(snap_compare, tmp_path):
    async def run_before(pilot):
        await ready(pilot)
        await send(pilot, "I have a fever, what should I do?")
        await pilot.pause(0.1)

    assert snap_compare(_snap_app(tmp_path), terminal_size=SIZE, run_before=run_before)


def test_snapshot_summarize_mode(snap_compare, tmp_path):
    async def run_before(pilot):
        await ready(pilot)
        await pilot.press("ctrl+t")
        await send(pilot, TRANSCRIPT)
        await pilot.pause(0.1)

    assert snap_compare(_snap_app(tmp_path, SUMMARY), terminal_size=SIZE, run_before=run_before)


def test_snapshot_help_screen(snap_compare, tmp_path):
    async def run_before(pilot):
        await ready(pilot)
        await pilot.press("f1")
        await pilot.pause()

    assert snap_compare(_snap_app(tmp_path), terminal_size=SIZE, run_before=run_before)


# --- the real model ---------------------------------------------------------------------


@pytest.mark.e2e
async def test_e2e_real_model_answers(tmp_path):
    from assistant.backends import GenerationOptions, load_backend

    app = HealthAssistantApp(
        backend_factory=lambda: load_backend("smollm2-135m-instruct"),
        store=Store(tmp_path / "logs.db"),
        model_name="smollm2-135m-instruct",
        answer_options=GenerationOptions(max_tokens=24),
    )
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.model_ready or app.model_error is not None, timeout=60)
        assert app.model_error is None
        await send(pilot, "What is a fever?", wait=False)
        await wait_until(pilot, lambda: idle(app), timeout=240)
        reply = replies(app)[-1]
        assert reply.status == "complete" and reply.text.strip()
        stored = messages(app.store, app.session_id)
        assert stored[1]["role"] == "assistant" and stored[1]["content"].strip()
        assert stored[1]["status"] == "complete" and stored[1]["completion_tokens"] > 0
        assert app.query_one(StatusLine).rate != "–"


async def test_a_stopped_regenerate_keeps_the_previous_answer(tmp_path):
    long_reply = " ".join(f"word{i}" for i in range(400))
    backend = FakeBackend(replies=["The first answer.", long_reply, "A follow-up answer."], delay=0.01)
    app = make_app(tmp_path, backend)
    async with app.run_test(size=SIZE) as pilot:
        first_id = await answer_then_regenerate(pilot)
        await wait_until(pilot, lambda: app.job is not None and len(app.job.view.text) > 20, what="some text")
        await pilot.press("escape")
        await wait_until(pilot, lambda: idle(app), what="the cancel")
        await pilot.pause()
        assert [r.text for r in replies(app) if r.display] == ["The first answer."]
        assert app.turns[-1].reply == "The first answer." and app.turns[-1].reply_id == first_id
        assert any("previous one is kept" in n for n in notifications(app))
        await send(pilot, "And for children?")
        assert backend.calls[-1][-3:-1] == [{"role": "user", "content": "How much water should I drink?"},
                                            {"role": "assistant", "content": "The first answer."}]
        stored = messages(app.store, app.session_id)
        assert [m["status"] for m in stored if m["role"] == "assistant"] == ["complete", "cancelled", "complete"]
        turns = turns_from_messages(stored)
        assert [t.reply for t in turns] == ["The first answer.", "A follow-up answer."]


async def test_export_is_private_and_asks_before_replacing_a_file(tmp_path):
    app = make_app(tmp_path, FakeBackend("Rest."))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "Flu or cold?")
        out = tmp_path / "flu.md"
        out.write_text("my own notes")
        await pilot.press("f3")
        await wait_until(pilot, lambda: isinstance(app.screen, PromptScreen))
        app.screen.query_one(Input).value = str(out)
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the overwrite question")
        await pilot.press("n")
        await pilot.pause()
        assert out.read_text() == "my own notes"
        await pilot.press("f3")  # the log itself: refused, even if the user would say yes
        await wait_until(pilot, lambda: isinstance(app.screen, PromptScreen))
        app.screen.query_one(Input).value = str(app.store.path)
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the overwrite question")
        await pilot.press("y")
        await pilot.pause()
        assert any("is a SQLite database; refusing" in n for n in notifications(app))
        assert app.store.list_sessions()  # the log is intact
        fresh = tmp_path / "new.md"
        await pilot.press("f3")
        await wait_until(pilot, lambda: isinstance(app.screen, PromptScreen))
        app.screen.query_one(Input).value = str(fresh)
        await pilot.press("enter")
        await wait_until(pilot, fresh.exists)
        assert "Flu or cold?" in fresh.read_text() and oct(fresh.stat().st_mode & 0o777) == "0o600"


async def test_quit_waits_for_the_generating_thread_before_freeing_the_model(tmp_path):
    events: list[str] = []

    class SlowPrefill(FakeBackend):
        """Like llama.cpp on a long prompt: no cancel can land until the prompt is read."""

        def stream(self, messages, options=None, cancel=None):
            events.append("prefill")
            time.sleep(0.8)
            events.append("prefill done, model " + ("freed" if self.closed else "alive"))
            yield from super().stream(messages, options, cancel)

        def close(self):
            events.append("close")
            super().close()

    app = make_app(tmp_path, SlowPrefill("Rest."))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "Flu or cold?", wait=False)
        await wait_until(pilot, lambda: "prefill" in events, what="the prompt to be read")
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: not app.is_running, what="the app to exit")
    assert events == ["prefill", "prefill done, model alive", "close"]


async def test_a_reply_whose_question_was_not_stored_is_not_stored_either(tmp_path, monkeypatch):
    app = make_app(tmp_path, FakeBackend(replies=["Answer ONE.", "Answer TWO."]))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "Question one?")
        real_add = app.store.add_message

        def locked_once(*args, **kwargs):  # as a write lock held past the busy timeout would
            monkeypatch.setattr(app.store, "add_message", real_add)
            raise __import__("assistant.store", fromlist=["StoreError"]).StoreError("database is locked")

        monkeypatch.setattr(app.store, "add_message", locked_once)
        await send(pilot, "Question two?")
        assert replies(app)[-1].text == "Answer TWO."  # shown, as the app goes on
        stored = messages(app.store, app.session_id)
        assert [(m["role"], m["content"]) for m in stored] == [("user", "Question one?"), ("assistant", "Answer ONE.")]
        sid = app.session_id
        await pilot.press("ctrl+n")
        await app.open_session(sid)
        assert [(t.question, t.reply) for t in app.turns] == [("Question one?", "Answer ONE.")]


def test_a_stored_reply_without_its_question_never_replaces_another_answer():
    msgs = [  # as an older version stored a reply whose question could not be saved
        {"id": 1, "role": "user", "content": "Question one?", "status": "complete", "meta": {"task": "ask"}},
        {"id": 2, "role": "assistant", "content": "Answer ONE.", "status": "complete", "meta": {"task": "ask"}},
        {"id": 3, "role": "assistant", "content": "Answer TWO.", "status": "complete", "meta": {"task": "ask"}},
        {"id": 4, "role": "assistant", "content": "Answer ONE again.", "status": "complete",
         "meta": {"task": "ask", "regenerated": True, "replaces": 3}},
    ]
    first, second = turns_from_messages(msgs)
    assert (first.question, first.reply) == ("Question one?", "Answer ONE.")
    assert second.user_id is None and second.reply == "Answer ONE again." and "not saved" in second.question
    assert second.question_lost and not first.question_lost
    (alone,) = turns_from_messages(msgs[2:3])  # also as the first message of a session
    assert alone.question_lost and alone.reply == "Answer TWO."


async def test_an_error_before_the_model_runs_is_stored_without_the_last_replys_figures(tmp_path):
    app = make_app(tmp_path, FakeBackend("Short answer.", context_length=200))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "What is gout?")
        await send(pilot, "my knee " * 150 + "what is it?")  # too long for the model: refused before it runs
        error = messages(app.store, app.session_id)[-1]
        assert error["status"] == "error" and "too long" in error["meta"]["error"]
        assert not error.get("completion_tokens") and not error.get("ttft_s")


async def test_transcript_files_are_read_as_the_batch_command_reads_them(tmp_path):
    app = make_app(tmp_path, FakeBackend(SUMMARY))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        utf16 = tmp_path / "notepad.txt"
        utf16.write_bytes(TRANSCRIPT.encode("utf-16"))
        pdf = tmp_path / "visit.pdf"
        pdf.write_bytes(b"%PDF-1.4 binary")
        for path, problem in ((utf16, "is UTF-16 text; save it as UTF-8"), (pdf, "unsupported input type '.pdf'")):
            assert not await app.load_transcript(str(path))
            await pilot.pause()
            assert any(f"{path}: {problem}" in n for n in notifications(app))
        assert app.query_one("#prompt", TextArea).text == ""
        # a batch file: its first transcript, with the section it names, and word of the others
        visits = tmp_path / "visits.jsonl"
        visits.write_text("".join(json.dumps(r) + "\n" for r in (
            {"id": "v1", "dialogue": TRANSCRIPT, "section": "PLAN"}, {"id": "v2", "dialogue": "Doctor: Hi."})))
        # as a terminal pastes a dropped file: quoted
        app.query_one("#prompt", TextArea).load_text(f"'{visits}' ")
        await app.action_set_task("summarize")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.query_one("#prompt", TextArea).text == TRANSCRIPT)
        await pilot.pause()
        assert any("the first of 2 transcripts in visits.jsonl (v1" in n and "section PLAN" in n
                   for n in notifications(app))
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: idle(app))
        assert "'Plan' section" in app.backend.prompts[-1][-1]["content"]
        assert messages(app.store, app.session_id)[0]["meta"]["section"] == "PLAN"


async def test_search_finds_titles_and_enter_opens_the_best_hit(tmp_path):
    app = make_app(tmp_path, FakeBackend("Rest and fluids."))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "What helps a fever?")
        named = app.session_id
        app.store.rename_session(named, "Fever in grandma")
        await pilot.press("ctrl+n")
        await send(pilot, "Is a fever at night normal?")
        current = app.session_id
        app.store.rename_session(current, "Night questions")
        await pilot.press("ctrl+f")
        await pilot.press(*"grandma")
        await pilot.pause()
        assert [i.row.id for i in app.query(SessionItem)] == [named]  # a word only its title holds
        app.query_one("#search", Input).value = "fever"
        await pilot.pause()
        assert [i.row.id for i in app.query(SessionItem)] == [named, current]  # named by it first
        await pilot.press("enter")  # to the list, on the best hit (not on the session already open)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.session_id == named)


async def test_a_model_error_late_in_a_long_summary_keeps_the_finished_parts(tmp_path):
    calls = []

    def reply(msgs):
        calls.append(1)
        if "Part 1:" in msgs[-1]["content"]:  # the merge
            raise __import__("assistant.backends.base", fromlist=["BackendError"]).BackendError("the model crashed")
        return f"Part summary {len(calls)}."

    from assistant.backends import GenerationOptions

    app = make_app(tmp_path, FakeBackend(reply, context_length=400),
                   summary_options=GenerationOptions(max_tokens=40), summary_best_of=1)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await app.action_set_task("summarize")
        await send(pilot, "\n".join(f"Doctor: Question {i} about the cough?\nPatient: Answer {i}." for i in range(40)))
        reply_view = replies(app)[-1]
        assert reply_view.status == "error" and "Part summary 1." in reply_view.text
        stored = messages(app.store, app.session_id)[-1]
        assert stored["status"] == "error" and "Part summary 1." in stored["content"]
        assert "the part summaries are what is left" in stored["meta"]["error"]


async def test_an_answer_whose_question_was_lost_is_not_asked_again(tmp_path):
    backend = FakeBackend("New answer.")
    app = make_app(tmp_path, backend)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        sid = app.store.new_session("chat", "fake-model", title="Old session")
        app.store.add_message(sid, "user", "Question one?")
        app.store.add_message(sid, "assistant", "Answer ONE.")
        app.store.add_message(sid, "assistant", "Answer TWO.")  # as an older version stored it
        await app.open_session(sid)
        assert app.turns[-1].question_lost
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert not backend.prompts and any("question was not saved" in n for n in notifications(app))
