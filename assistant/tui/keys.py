"""Every key binding of the app in one place: the bindings are built from this
table and the help screen prints it, so the two cannot drift apart.

Keys were picked to work in ordinary terminals (no kitty protocol needed):
ctrl+enter is listed for terminals that report it, ctrl+s / ctrl+j always work.
Keys the prompt's TextArea already uses (ctrl+a/e/d/k/u/w/x/c/v/z/y) are avoided.
"""
from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Key:
    keys: str  # Textual key list, comma separated
    action: str
    description: str
    footer: bool = False  # shown in the footer (space is short at 80 columns)
    help: str = ""  # longer text for the help screen
    priority: bool = False


APP_KEYS: tuple[Key, ...] = (
    Key("ctrl+s,ctrl+j,ctrl+enter", "send", "Send", True,
        "Send the question (Ask) or summarize the transcript (Summarize)"),
    Key("escape", "stop", "Stop", True, "Stop the reply being generated; the partial text is kept, marked cancelled"),
    Key("ctrl+r", "regenerate", "Regenerate", True, "Generate the last answer again"),
    Key("ctrl+t", "toggle_mode", "Ask/Summarize", True, "Switch between Ask and Summarize mode"),
    Key("ctrl+n", "new_session", "New", True, "Start a new session"),
    Key("ctrl+o", "open_file", "Open file", False, "Summarize: load a transcript from a file path"),
    Key("ctrl+f", "search", "Search", False, "Search all sessions (full text)"),
    Key("ctrl+l", "focus_sessions", "Sessions", False, "Move to the session list"),
    Key("ctrl+b", "toggle_sidebar", "Sidebar", False, "Show or hide the session list"),
    Key("f2", "rename", "Rename", False, "Rename the current session"),
    Key("f3", "export", "Export", False, "Export the current session to a Markdown (or .json) file"),
    Key("f4", "copy_last", "Copy reply", False, "Copy the last reply to the clipboard"),
    Key("f8", "delete", "Delete", False, "Delete the current session (asks first)"),
    Key("f1,ctrl+g", "help", "Help", True, "Show this help"),
    Key("ctrl+q", "quit", "Quit", True, "Quit", priority=True),
)

# Keys that only work where the focus is; listed in the help screen.
CONTEXT_KEYS: tuple[tuple[str, str], ...] = (
    ("enter", "Prompt: new line. Session list: open the session"),
    ("c", "On a message (click it or Tab to it): copy that message"),
    ("delete / r / e", "Session list: delete / rename / export the highlighted session"),
    ("tab / shift+tab", "Move between the prompt, the messages and the session list"),
    ("pageup / pagedown", "Conversation (Tab to it) or mouse wheel: scroll; following resumes at the bottom"),
    ("ctrl+c", "Prompt: copy the selected text"),
)


def app_bindings() -> list[Binding]:
    return [
        Binding(k.keys, k.action, k.description, show=k.footer, priority=k.priority,
                tooltip=k.help or k.description)
        for k in APP_KEYS
    ]


def display_keys(keys: str) -> str:
    return " / ".join(keys.split(","))
