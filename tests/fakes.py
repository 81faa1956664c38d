"""Test doubles for the model layer.

`FakeBackend` is a real `Backend` subclass, so the task layer (and everything
above it) runs unchanged: one word is one token; it streams canned text (or a
function of the prompt) word by word with a small delay, records every prompt,
refuses a prompt that overflows its context as a real model would, honours
`CancelToken`, sets `last_stats` with fixed, reproducible figures (snapshots
must not depend on the clock), and can be told to raise.
"""
from __future__ import annotations

import re
import threading
import time
from typing import Callable, Iterator, Sequence

from assistant.backends.base import (
    Backend,
    BackendError,
    CancelToken,
    GenerationOptions,
    GenerationStats,
    Message,
)

DEFAULT_REPLY = (
    "Drink plenty of **water** and rest.\n\n"
    "- Take paracetamol for the fever if needed.\n"
    "- See a doctor if it lasts more than three days."
)

_PIECES = re.compile(r"\S+\s*|\s+")


def pieces(text: str) -> list[str]:
    """Split text the way the fake streams it: one word plus its trailing space per piece."""
    return _PIECES.findall(text)


class FakeBackend(Backend):
    """Streams `reply` (or `replies` in turn) piece by piece; `reply` may be a
    function of the prompt's messages.

    - `delay`: seconds slept before each piece (also how long a cancel takes to land).
    - `fail_after`: raise `error` after this many pieces (0: before the first one).
    - `gate`: a `threading.Event` the stream waits on before its first piece, so a
      test can act (cancel, snapshot) while a reply is in flight.
    - `ttft_s`/`tokens_per_s`: the figures reported in `last_stats`, fixed on purpose.
    """

    name = "fake"

    def __init__(
        self,
        reply: str | Callable[[list[Message]], str] = DEFAULT_REPLY,
        *,
        replies: Sequence[str] | None = None,
        delay: float = 0.001,
        fail_after: int | None = None,
        error: Exception | None = None,
        gate: threading.Event | None = None,
        model_name: str = "fake-model",
        context_length: int = 4096,
        ttft_s: float = 0.25,
        tokens_per_s: float = 50.0,
    ) -> None:
        self.reply = reply
        self.replies = list(replies) if replies else None
        self.delay = delay
        self.fail_after = fail_after
        self.error = error or BackendError("the fake model failed on purpose")
        self.gate = gate
        self.model_name = model_name
        self._context_length = context_length
        self.fixed_ttft = ttft_s
        self.fixed_rate = tokens_per_s
        self.calls: list[list[Message]] = []
        self.options: list[GenerationOptions | None] = []
        self.last_stats = None
        self.closed = False

    # --- Backend --------------------------------------------------------
    @property
    def context_length(self) -> int:
        return self._context_length

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        return sum(self.count_tokens(m["content"]) + 4 for m in messages)

    @property
    def prompts(self) -> list[list[Message]]:
        return self.calls

    def next_reply(self, messages: Sequence[Message]) -> str:
        if self.replies:
            return self.replies[min(len(self.calls) - 1, len(self.replies) - 1)]
        return self.reply(list(messages)) if callable(self.reply) else self.reply

    def stream(
        self,
        messages: Sequence[Message],
        options: GenerationOptions | None = None,
        cancel: CancelToken | None = None,
    ) -> Iterator[str]:
        n = self.prompt_tokens(messages)
        if n >= self._context_length:
            raise BackendError(f"prompt of {n} tokens does not fit the {self._context_length}-token context")
        self.calls.append([dict(m) for m in messages])
        self.options.append(options)
        opts = options or GenerationOptions()
        text = self.next_reply(messages)
        count = 0
        finish = "stop"
        try:
            if self.gate is not None:
                while not self.gate.wait(0.01):
                    if cancel is not None and cancel.cancelled:
                        break
            for i, piece in enumerate(pieces(text)):
                if self.fail_after is not None and i >= self.fail_after:
                    raise self.error
                if cancel is not None and cancel.cancelled:
                    finish = "cancelled"
                    break
                if count >= opts.max_tokens:
                    finish = "length"
                    break
                if self.delay:
                    time.sleep(self.delay)
                count += 1
                yield piece
            else:
                if self.fail_after is not None and self.fail_after >= len(pieces(text)):
                    raise self.error
            if cancel is not None and cancel.cancelled:
                finish = "cancelled"
        finally:
            self.last_stats = self._stats(messages, count, finish)

    def _stats(self, messages: Sequence[Message], count: int, finish: str) -> GenerationStats:
        ttft = self.fixed_ttft if count else None
        total = (self.fixed_ttft + (count - 1) / self.fixed_rate) if count else 0.0
        return GenerationStats(
            prompt_tokens=self.prompt_tokens(messages),
            completion_tokens=count,
            ttft_s=ttft,
            total_s=total,
            finish_reason=finish,
        )

    def close(self) -> None:
        self.closed = True


def failing_factory(message: str = "model file not found: /nowhere/model.gguf"):
    """A backend factory that fails the way a missing model does."""

    def factory() -> Backend:
        from assistant.models import ModelError

        raise ModelError(message)

    return factory
