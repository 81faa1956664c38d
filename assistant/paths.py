"""Where things live: shipped assets in the repo, user state in XDG directories."""
from __future__ import annotations

import os
from pathlib import Path

APP = "health-assistant"
REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
PROMPTS_DIR = DATA_DIR / "prompts"


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    # The XDG spec says relative values are invalid and must be ignored.
    base = Path(value) if value and os.path.isabs(value) else Path.home() / fallback
    return base / APP


def data_home() -> Path:
    return _xdg("XDG_DATA_HOME", ".local/share")


def cache_home() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache")


def config_home() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config")
