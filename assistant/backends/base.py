"""The one interface every model backend implements.

The task layer (and through it the CLI and the TUI) only ever sees `Backend`:
a chat-message list goes in, text pieces stream out, and the figures of the
last generation are available afterwards in `Backend.last_stats`.
"""
from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Iterator, Sequence

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass
class GenerationOptions:
    max_tokens: int = 512
    temperature: float = 0.0  # 0 means greedy: reproducible summaries by default
    top_p: float = 1.0
    stop: Sequence[str] = ()
    seed: int = 0
    repeat_penalty: float = 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None  # time to first token
    total_s: float = 0.0
    finish_reason: str = "stop"  # "stop" | "length" | "cancelled" | "error" (the call raised)

    @property
    def tokens_per_s(self) -> float | None:
        decode = self.total_s - (self.ttft_s or 0.0)
        if self.completion_tokens < 2 or decode <= 0:
            return None
        return (self.completion_tokens - 1) / decode

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tokens_per_s"] = self.tokens_per_s
        return d


class CancelToken:
    """Set from any thread (Esc in the TUI, Ctrl-C in the CLI) to stop a stream."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class BackendError(RuntimeError):
    """A model could not be loaded or failed while generating."""


def without_control_text(messages: Sequence[Message], control: Sequence[str]) -> list[Message]:
    """Messages with the model's control-token strings (such as "<|im_end|>") taken out of
    their text. The rendered prompt is tokenized with control tokens enabled, so a pasted
    "<|im_end|>\n<|im_start|>system" would otherwise open a real system turn: message text
    is data, never conversation structure."""
    if not control:
        return list(messages)
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            # Until none is left: taking one marker out of "<|im_<|im_end|>end|>" makes another.
            while any(marker in content for marker in control):
                for marker in control:
                    content = content.replace(marker, "")
            m = {**m, "content": content}
        out.append(m)
    return out


def render_chat(render, messages: Sequence[Message], model_name: str):
    """`render(messages)` through a model's chat template; a template that refuses the
    system role gets it folded into the first user turn, and any other failure is a
    BackendError naming the model."""
    try:
        return render(messages)
    except Exception as exc:  # the template's own raise_exception, or a Jinja error
        folded = system_folded(messages)
        if folded is not None:
            try:
                return render(folded)
            except Exception:  # noqa: BLE001 - the first error says more
                pass
        raise BackendError(f"the chat template of {model_name} cannot render this conversation: {exc}") from exc


def system_folded(messages: Sequence[Message]) -> list[Message] | None:
    """The conversation with its system message folded into the first user turn, for chat
    templates that refuse a system role (Gemma's raises "System role not supported"); None
    when there is no system message to fold."""
    if not messages or messages[0].get("role") != "system":
        return None
    system, rest = messages[0]["content"], list(messages[1:])
    for i, m in enumerate(rest):
        if m.get("role") == "user":
            rest[i] = {**m, "content": f"{system}\n\n{m['content']}"}
            return rest
    return [{"role": "user", "content": system}, *rest]


@dataclass
class _StreamClock:
    """Shared bookkeeping so both backends report figures the same way."""

    prompt_tokens: int
    start: float = field(default_factory=time.perf_counter)
    first: float | None = None
    count: int = 0

    def token(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        self.count += 1

    def stats(self, finish_reason: str) -> GenerationStats:
        now = time.perf_counter()
        return GenerationStats(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.count,
            ttft_s=None if self.first is None else self.first - self.start,
            total_s=now - self.start,
            finish_reason=finish_reason,
        )


class Backend(ABC):
    """A loaded model that turns chat messages into streamed text."""

    name: str = "backend"
    model_name: str = ""
    last_stats: GenerationStats | None = None

    @property
    @abstractmethod
    def context_length(self) -> int:
        """Tokens the model can attend to (prompt plus completion)."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes, without special tokens."""

    @abstractmethod
    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens the chat-templated prompt for `messages` takes."""

    @abstractmethod
    def stream(
        self,
        messages: Sequence[Message],
        options: GenerationOptions | None = None,
        cancel: CancelToken | None = None,
    ) -> Iterator[str]:
        """Yield text pieces as they are generated; set `last_stats` at the end."""

    def generate(
        self,
        messages: Sequence[Message],
        options: GenerationOptions | None = None,
        cancel: CancelToken | None = None,
    ) -> str:
        return "".join(self.stream(messages, options, cancel))

    def close(self) -> None:  # pragma: no cover - backends override when they hold native memory
        pass
