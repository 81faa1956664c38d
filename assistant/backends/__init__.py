"""Model backends. `load_backend` picks the right one for a model name."""
from __future__ import annotations

from .base import Backend, BackendError, CancelToken, GenerationOptions, GenerationStats
from ..models import ModelSpec, resolve

BACKENDS = ("llama.cpp", "transformers")


def load_backend(
    model: str | ModelSpec | None = None,
    backend: str | None = None,
    adapter: str | None = None,
    **kwargs,
) -> Backend:
    """Load a model: llama.cpp for GGUF files, transformers for everything else."""
    spec = model if isinstance(model, ModelSpec) else resolve(model, adapter=adapter)
    if backend is None:
        backend = "llama.cpp" if spec.kind == "gguf" and spec.adapter is None else "transformers"
    if backend == "llama.cpp":
        from .llamacpp import LlamaCppBackend

        return LlamaCppBackend(spec, **kwargs)
    if backend == "transformers":
        from .hf import TransformersBackend

        return TransformersBackend(spec, **kwargs)
    raise BackendError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")


__all__ = [
    "Backend", "BackendError", "CancelToken", "GenerationOptions", "GenerationStats",
    "BACKENDS", "load_backend",
]
