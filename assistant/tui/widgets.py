"""Widgets of the chat screen: messages (streamed as Markdown), the safety
banner, the session list and the status line."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widgets import Label, ListItem, ListView, Static

from ..visible import visible, visible_line

if TYPE_CHECKING:
    from textual.widgets import Markdown
    from textual.widgets.markdown import MarkdownStream

TRANSCRIPT_PREVIEW_LINES = 6

# Shown above the answer when triage flags a message and its result carries no text.
FALLBACK_BANNERS = {
    "emergency": "This may be a medical emergency. Call your local emergency number now "
                 "(for example 112, 911 or 999) or go to the nearest emergency department.",
    "crisis": "If you are thinking about harming yourself or are in crisis, please contact a "
              "crisis line or your local emergency number now. You are not alone.",
}


class ChatMessage(Vertical, can_focus=True):
    """One message. Assistant messages render Markdown and can be streamed into
    piece by piece (`write`), which appends to the Markdown document instead of
    re-rendering it whole."""

    BINDINGS = [Binding("c", "copy", "Copy message")]

    def __init__(self, role: str, text: str = "", *, task: str = "ask", note: str = "",
                 status: str = "complete", title: str | None = None, message_id: int | None = None) -> None:
        super().__init__(classes=f"message -{role}")
        self.role = role
        self.kind = task
        self.text = text
        self.status = status
        self.message_id = message_id
        self._note = note
        self._title = title
        self._stream: MarkdownStream | None = None
        if status in ("cancelled", "error"):
            self.add_class(f"-{status}")

    # Shown text goes through visible(): a stored message or title (an imported export, a
    # pasted transcript) may hold escape sequences that Textual would pass to the terminal.
    # `self.text` keeps the text as it is, for copying and regenerating.
    def compose(self):
        yield Label(visible_line(self._title or self._default_title()), classes="message-title", markup=False)
        if self.role == "assistant":
            from textual.widgets import Markdown  # imported on first use: keeps start-up light

            yield Markdown(visible(self.text), classes="message-body")
        else:
            yield Static(visible(self._user_body()), markup=False, classes="message-body")
        yield Label(visible(self._note), classes="message-note", markup=False)

    def on_mount(self) -> None:
        self._show_note()

    def _default_title(self) -> str:
        if self.role == "user":
            return "Transcript" if self.kind == "summarize" else "You"
        if self.role == "assistant":
            return "Summary" if self.kind == "summarize" else "Assistant"
        return self.role.capitalize()

    def _user_body(self) -> str:
        if self.kind != "summarize":
            return self.text
        lines = self.text.strip().splitlines()
        if len(lines) <= TRANSCRIPT_PREVIEW_LINES:
            return "\n".join(lines)
        more = len(lines) - TRANSCRIPT_PREVIEW_LINES
        return "\n".join(lines[:TRANSCRIPT_PREVIEW_LINES] + [f"… {more} more line{'s' if more > 1 else ''}"])

    @property
    def body(self) -> Markdown:
        from textual.widgets import Markdown

        return self.query_one(Markdown)

    # --- streaming (assistant messages) -------------------------------------
    async def write(self, piece: str) -> None:
        if self._stream is None:
            body = self.body
            self._stream = type(body).get_stream(body)
        self.text += piece
        await self._stream.write(visible(piece))

    async def end_stream(self, final_text: str | None = None) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        if final_text is not None and final_text.strip() != self.text.strip():
            self.text = final_text
            await self.body.update(visible(final_text))

    async def set_text(self, text: str) -> None:
        self.text = text
        await self.body.update(visible(text))

    # --- status ---------------------------------------------------------------
    def set_note(self, note: str, status: str | None = None) -> None:
        self._note = note
        if status is not None:
            self.status = status
            self.set_class(status == "cancelled", "-cancelled")
            self.set_class(status == "error", "-error")
        if self.is_mounted:
            self._show_note()

    def _show_note(self) -> None:
        label = self.query_one(".message-note", Label)
        label.update(visible(self._note))
        label.display = bool(self._note)

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.text)
        self.app.notify("Message copied to the clipboard", timeout=2)


class Banner(Static):
    """The fixed safety message shown above an answer (never model text)."""

    def __init__(self, level: str, message: str | None) -> None:
        text = (message or FALLBACK_BANNERS.get(level) or "").strip()
        super().__init__(text, markup=False, classes=f"banner -{level}")
        self.level = level


class BannerDetails(Static):
    """Under a safety banner: which red flags fired and the published list each comes from."""

    def __init__(self, reasons) -> None:
        super().__init__("\n".join(reason_lines(reasons)), markup=False, classes="banner-details")


def reason_lines(reasons) -> list[str]:
    """One line per flag; a log written before flags named their source stores bare rule ids."""
    lines = []
    for r in reasons or ():
        if isinstance(r, dict):
            source = f"{r.get('source', '')}, {r['url']}" if r.get("url") else r.get("source", "")
            lines.append(f"Flagged: {r.get('title') or r.get('entry') or r.get('rule')} ({source})")
        else:
            lines.append(f"Flagged: {r}")
    return lines


def banner_widgets(level: str, message: str | None, reasons=()) -> list[Static]:
    return [Banner(level, message)] + ([BannerDetails(reasons)] if reason_lines(reasons) else [])


class Welcome(Static):
    TEXT = {
        "ask": "Ask a health question below and press ctrl+s to send.\n\n"
               "This assistant runs a small model on your computer. It can be wrong and is "
               "not a doctor: for anything serious or urgent, contact a health professional "
               "or your local emergency number.",
        "summarize": "Paste a clinical conversation below (or press ctrl+o to open a file) "
                     "and press ctrl+s to summarize it.\n\n"
                     "The transcript and its summary are saved together in this session.",
    }

    def __init__(self, task: str) -> None:
        super().__init__(self.TEXT[task], classes="welcome")


# --- session list ---------------------------------------------------------------


@dataclass
class SessionRow:
    id: str
    title: str
    snippet: str | None = None  # search hit, with \x01 … \x02 around the matches


MARK = ("\x01", "\x02")


def snippet_text(snippet: str) -> Text:
    """A search snippet with the matched words in bold (no markup parsing of user text)."""
    out = Text(no_wrap=True, overflow="ellipsis")
    rest = snippet.replace("\n", " ")
    while rest:
        start = rest.find(MARK[0])
        if start < 0:
            out.append(visible_line(rest))
            break
        out.append(visible_line(rest[:start]))
        end = rest.find(MARK[1], start)
        if end < 0:
            out.append(visible_line(rest[start + 1:]), style="bold")
            break
        out.append(visible_line(rest[start + 1:end]), style="bold reverse")
        rest = rest[end + 1:]
    return out


class SessionItem(ListItem):
    def __init__(self, row: SessionRow) -> None:
        super().__init__(classes="session-item")
        self.row = row

    def compose(self):
        yield Label(Text(visible_line(self.row.title or "Untitled"), no_wrap=True, overflow="ellipsis"),
                    classes="session-title")
        if self.row.snippet:
            yield Label(snippet_text(self.row.snippet), classes="session-snippet")


class SessionList(ListView):
    """Sessions, newest first. Enter opens; delete / r / e act on the highlighted one."""

    BINDINGS = [
        Binding("delete", "delete_session", "Delete", show=False),
        Binding("r", "rename_session", "Rename", show=False),
        Binding("e", "export_session", "Export", show=False),
    ]

    @property
    def highlighted_id(self) -> str | None:
        item = self.highlighted_child
        return item.row.id if isinstance(item, SessionItem) else None

    async def show(self, rows: list[SessionRow], current: str | None = None) -> None:
        await self.clear()
        await self.extend([SessionItem(r) for r in rows])
        self.select_id(current, rows)

    def select_id(self, session_id: str | None, rows: list[SessionRow] | None = None) -> None:
        ids = [r.id for r in rows] if rows is not None else [
            c.row.id for c in self.children if isinstance(c, SessionItem)]
        if session_id in ids:
            self.index = ids.index(session_id)
        else:
            self.index = None

    def action_delete_session(self) -> None:
        if self.highlighted_id:
            self.app.action_delete(self.highlighted_id)

    def action_rename_session(self) -> None:
        if self.highlighted_id:
            self.app.action_rename(self.highlighted_id)

    def action_export_session(self) -> None:
        if self.highlighted_id:
            self.app.action_export(self.highlighted_id)


# --- status line ------------------------------------------------------------------


class StatusLine(Static):
    """model │ tokens/s │ time to first token │ state — of the last reply."""

    model: reactive[str] = reactive("")
    rate: reactive[str] = reactive("–")
    ttft: reactive[str] = reactive("–")
    state: reactive[str] = reactive("")
    level: reactive[str] = reactive("ok")  # ok | busy | error

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f" {self.model}", style="bold")
        text.append(f" │ {self.rate} tok/s │ first token {self.ttft} │ ")
        style = {"error": "bold red", "busy": "yellow"}.get(self.level, "")
        text.append(self.state, style=style)
        return text

    def show_stats(self, stats) -> None:
        rate = getattr(stats, "tokens_per_s", None)
        ttft = getattr(stats, "ttft_s", None)
        self.rate = f"{rate:.1f}" if rate else "–"
        self.ttft = f"{ttft:.2f} s" if ttft is not None else "–"

    def set_state(self, state: str, level: str = "ok") -> None:
        self.state = state
        self.level = level
