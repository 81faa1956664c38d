"""The Textual terminal app (`assistant tui`)."""
from __future__ import annotations


def run_tui(*args, **kwargs) -> int:
    """Run the terminal app; see `assistant.tui.app.run_tui`."""
    from .app import run_tui as _run

    return _run(*args, **kwargs)


def __getattr__(name: str):
    if name == "HealthAssistantApp":
        from .app import HealthAssistantApp

        return HealthAssistantApp
    raise AttributeError(name)


__all__ = ["HealthAssistantApp", "run_tui"]
