"""Shared fixtures: isolated user directories, a fake backend for the task
layer, and a tiny randomly initialised llama model on disk."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, Sequence

import pytest

from assistant.backends.base import Backend, CancelToken, GenerationOptions, Message, _StreamClock


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Tests never touch the real user's data, config or cache directories,
    except the model cache, which is shared so the dequantized model is built once."""
    base = tmp_path_factory.mktemp("xdg")
    monkeypatch.setenv("XDG_DATA_HOME", str(base / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(base / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(_shared_cache(tmp_path_factory)))
    monkeypatch.delenv("ASSISTANT_DB", raising=False)


_CACHE: list[Path] = []


def _shared_cache(factory) -> Path:
    if not _CACHE:
        _CACHE.append(factory.mktemp("cache"))
    return _CACHE[0]


class WordBackend(Backend):
    """A deterministic stand-in model: one word is one token, and the reply
    is a fixed script (or a function of the prompt). It records every prompt."""

    name = "fake"

    def __init__(self, reply="a short reply from the fake model", context_length: int = 4096,
                 delay: float = 0.0, fail_after: int | None = None):
        self.model_name = "fake-model"
        self.reply = reply
        self._ctx = context_length
        self.delay = delay
        self.fail_after = fail_after
        self.prompts: list[list[Message]] = []

    @property
    def context_length(self) -> int:
        return self._ctx

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        return sum(self.count_tokens(m["content"]) + 4 for m in messages)

    def stream(self, messages, options: GenerationOptions | None = None,
               cancel: CancelToken | None = None) -> Iterator[str]:
        opts = options or GenerationOptions()
        n = self.prompt_tokens(messages)
        if n >= self._ctx:
            from assistant.backends.base import BackendError
            raise BackendError(f"prompt of {n} tokens does not fit the {self._ctx}-token context")
        self.prompts.append(list(messages))
        text = self.reply(messages) if callable(self.reply) else self.reply
        clock = _StreamClock(prompt_tokens=n)
        finish = "stop"
        try:
            for i, word in enumerate(text.split()):
                if cancel is not None and cancel.cancelled:
                    finish = "cancelled"
                    break
                if i >= opts.max_tokens:
                    finish = "length"
                    break
                if self.fail_after is not None and i >= self.fail_after:
                    from assistant.backends.base import BackendError
                    raise BackendError("the fake model failed")
                if self.delay:
                    time.sleep(self.delay)
                clock.token()
                yield (" " if i else "") + word
        finally:
            self.last_stats = clock.stats(finish)


@pytest.fixture
def word_backend():
    return WordBackend()


@pytest.fixture(scope="session")
def embedded_gguf() -> Path:
    from assistant.models import embedded_gguf_path

    return embedded_gguf_path()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, embedded_gguf) -> Path:
    """A 2-layer randomly initialised llama with SmolLM2's real tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(embedded_gguf.parent, gguf_file=embedded_gguf.name)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
