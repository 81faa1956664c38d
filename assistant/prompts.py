"""Prompt templates live as files under data/prompts, shared by the runtime and
the fine-tuning data builder so that training and inference see the same text."""
from __future__ import annotations

import json
import string
from functools import lru_cache

from .paths import PROMPTS_DIR


@lru_cache(maxsize=None)
def template(name: str) -> str:
    path = PROMPTS_DIR / f"{name}.txt"
    try:
        return path.read_text(encoding="utf-8").strip("\n")
    except FileNotFoundError:
        raise FileNotFoundError(f"prompt template missing: {path}") from None


def render(name: str, **fields: str) -> str:
    """A template with its fields filled; every field must be given and every value used,
    so a template edited without its caller (or the reverse) fails loudly, not silently."""
    text = template(name)
    wanted = {f for _, f, _, _ in string.Formatter().parse(text) if f}
    if wanted != set(fields):
        raise ValueError(f"prompt template {name!r} takes {sorted(wanted)}, was given {sorted(fields)}")
    return text.format(**fields)


@lru_cache(maxsize=None)
def section_names() -> dict[str, str]:
    return json.loads((PROMPTS_DIR / "sections.json").read_text(encoding="utf-8"))


def section_title(section: str | None) -> str | None:
    """MTS-Dialog section codes (GENHX) become readable titles; free text passes through."""
    if not section:
        return None
    code = section_code(section)  # "allergies" is the trained title "Allergies"
    return section_names()[code] if code else section.strip()


def section_code(section: str | None) -> str | None:
    """'GENHX' or its title 'History of Present Illness' -> 'GENHX'; anything else -> None."""
    if not section:
        return None
    key = section.strip().upper()
    names = section_names()
    if key in names:
        return key
    for code, title in names.items():
        if title.upper() == key:
            return code
    return None
