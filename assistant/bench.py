"""`assistant bench`: the runtime's decode speed against its two references,
measured in one run on the same prompts so the ratios survive a noisy machine.

(a) the project's llama.cpp backend, (b) raw llama-cpp-python
(`create_completion` streaming) on the same GGUF and the same templated
prompt, (c) transformers fp32 on the same weights (dequantized).
Goals: a/b >= 0.95 and a/c >= 3.5 on decode tokens/s.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

from .backends import BackendError, GenerationOptions
from .backends.hf import TransformersBackend
from .backends.llamacpp import LlamaCppBackend, default_threads
from .models import resolve
from .tasks import answer_messages

PROMPTS = [
    "Explain in detail how high blood pressure damages the body over many years.",
    "Describe the common symptoms of type 2 diabetes and how it is usually managed.",
    "What should a person know about asthma inhalers and how to use them correctly?",
]


def _measure(stream: Callable[[list[dict]], tuple[int, float | None, float]], repeats: int) -> dict:
    rates, ttfts = [], []
    for _ in range(repeats):
        for prompt in PROMPTS:
            n, ttft, total = stream(answer_messages(prompt))
            if n >= 2 and ttft is not None and total > ttft:
                rates.append((n - 1) / (total - ttft))
                ttfts.append(ttft)
    if not rates:
        raise BackendError("no usable sample: every reply stopped after fewer than 2 tokens (try --tokens higher, "
                           "or another model)")
    return {
        "decode_tokens_per_s": round(statistics.median(rates), 2),
        "ttft_s": round(statistics.median(ttfts), 4),
        "samples": len(rates),
    }


def run_bench(model: str | None, tokens: int, repeats: int, include_transformers: bool = True,
              log: Callable[[str], None] = print) -> dict:
    spec = resolve(model)
    opts = GenerationOptions(max_tokens=tokens, temperature=0.0)
    results: dict = {"model": spec.name, "new_tokens": tokens, "repeats": repeats,
                     "threads": default_threads()}

    project = LlamaCppBackend(spec)

    def project_stream(messages):
        for _ in project.stream(messages, opts):
            pass
        s = project.last_stats
        return s.completion_tokens, s.ttft_s, s.total_s

    raw = _raw_llama(spec.path, project)

    def raw_stream(messages):
        prompt, _ = project.render_prompt(messages)
        start = time.perf_counter()
        n, first = count_raw_tokens(raw.create_completion(prompt, max_tokens=tokens, temperature=0.0, stream=True),
                                    start)
        return n, first, time.perf_counter() - start

    # Warm both once so neither pays first-call costs inside the measurement.
    project_stream(answer_messages("Hello"))
    raw_stream(answer_messages("Hello"))
    # Interleave the two llama.cpp paths so drift on a noisy machine hits both alike.
    a_runs, b_runs = [], []
    for r in range(repeats):
        log(f"llama.cpp round {r + 1}/{repeats}")
        a_runs.append(_measure(project_stream, 1))
        b_runs.append(_measure(raw_stream, 1))
    results["project_llama_cpp"] = _combine(a_runs)
    results["raw_llama_cpp_python"] = _combine(b_runs)
    project.close()
    raw.close()
    a = results["project_llama_cpp"]["decode_tokens_per_s"]
    results["ratio_project_vs_raw"] = round(a / results["raw_llama_cpp_python"]["decode_tokens_per_s"], 3)

    if include_transformers:
        log("transformers fp32 (dequantized GGUF)")
        hf = TransformersBackend(spec)

        def hf_stream(messages):
            for _ in hf.stream(messages, opts):
                pass
            s = hf.last_stats
            return s.completion_tokens, s.ttft_s, s.total_s

        hf_stream(answer_messages("Hello"))
        results["transformers_fp32"] = _measure(hf_stream, max(1, repeats // 2))
        results["ratio_project_vs_transformers"] = round(
            a / results["transformers_fp32"]["decode_tokens_per_s"], 3)
    results["goals"] = {"project_vs_raw": ">= 0.95", "project_vs_transformers": ">= 3.5"}
    return results


def _combine(runs: list[dict]) -> dict:
    return {
        "decode_tokens_per_s": round(statistics.median(r["decode_tokens_per_s"] for r in runs), 2),
        "ttft_s": round(statistics.median(r["ttft_s"] for r in runs), 4),
        "samples": sum(r["samples"] for r in runs),
    }


def count_raw_tokens(chunks, start: float) -> tuple[int, float | None]:
    """(tokens, seconds to the first) of a llama-cpp-python completion stream. Its closing
    chunk, empty, only says why it stopped: counted, it overstated the raw rate."""
    first, n = None, 0
    for chunk in chunks:
        choice = chunk["choices"][0]
        if choice["finish_reason"] is not None and not choice["text"]:
            continue
        if first is None:
            first = time.perf_counter() - start
        n += 1
    return n, first


def _raw_llama(path, like: LlamaCppBackend):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=like.llm.n_ctx(), n_threads=default_threads(),
                 n_batch=512, verbose=False)
