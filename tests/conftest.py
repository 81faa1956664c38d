"""Shared fixtures: isolated user directories, a fake backend for the task
layer, and a tiny randomly initialised llama model on disk."""
from __future__ import annotations

from pathlib import Path

import pytest


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


@pytest.fixture
def word_backend():
    from fakes import FakeBackend

    return FakeBackend(reply="a short reply from the fake model")


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
