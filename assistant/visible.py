"""Stored text shown in a terminal with its control characters made visible.

A title or message can come from an imported export or a summarized transcript, so it may
hold escape sequences (clear the screen, set the window title, an OSC-8 link that shows
one address and opens another). Each control character is replaced on its own, not each
sequence, so a reply streamed in pieces is made safe piece by piece with no state between
them, and what was there stays readable (`ESC[2J` shows as `␛[2J`).
"""
from __future__ import annotations

# C0 controls (but newline and tab, which lay text out) as their Unicode control pictures
# (U+2400 + code), DEL as U+2421. C1 controls (U+0080-U+009F, among them the one-character
# CSI and OSC a terminal may honour) have no pictures, so they are written as \x escapes.
_TABLE = {c: 0x2400 + c for c in range(0x20) if c not in (0x09, 0x0A)}
_TABLE[0x7F] = 0x2421
_TABLE.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})


def visible(text: str | None) -> str:
    """`text` with every terminal control character but newline and tab made visible."""
    return "" if text is None else str(text).translate(_TABLE)


def visible_line(text: str | None) -> str:
    """As `visible`, on one line: for a title, an id or a list cell."""
    return visible(text).replace("\n", " ").replace("\t", " ")
