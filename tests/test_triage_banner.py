"""A flag's catalogue entry and source reach the log and the app's banner details."""
from __future__ import annotations

from assistant.tui.app import HealthAssistantApp, turns_from_messages
from assistant.tui.widgets import Banner, BannerDetails
from tests.fakes import FakeBackend
from tests.test_tui import SIZE, make_app, messages, ready, send


async def test_banner_details_name_the_entry_and_its_source(tmp_path):
    app = make_app(tmp_path, FakeBackend("MODEL TEXT"), triage=HealthAssistantApp.__init__.__kwdefaults__["triage"],
                   answer_kwargs={"grounded": False})
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "my dad's face is drooping on one side and his speech is slurred")
        (details,) = app.query(BannerDetails)
        shown = str(details.render())
        assert "Stroke or TIA" in shown and "NICE NG128" in shown and "nice.org.uk/guidance/ng128" in shown
        chat = list(app.query_one("#chat").children)
        assert chat.index(details) == chat.index(app.query_one(Banner)) + 1
        stored = messages(app.store, app.session_id)
        for message in stored:  # the question and the fixed reply both keep the flags
            flags = message["meta"]["triage_reasons"]
            assert {f["entry"] for f in flags} == {"stroke-tia"}
            assert all(f["source"].startswith("NICE NG128") and f["rule"] and f["url"] for f in flags)
        # reopened from the log, the details come back with the banner
        turns = turns_from_messages(stored)
        assert turns[0].reasons == stored[0]["meta"]["triage_reasons"]
        await pilot.press("ctrl+n")
        await app.open_session(stored[0]["session_id"])
        await pilot.pause()
        assert "NICE NG128" in str(app.query_one(BannerDetails).render())
