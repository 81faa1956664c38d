"""llama.cpp backend (llama-cpp-python): the default for GGUF models.

Generation runs the token loop itself rather than `create_completion`, so the
figures it reports (prompt and completion tokens, time to first token) are
exact and cancellation is checked between every two tokens.
"""
from __future__ import annotations

import os
from typing import Iterator, Sequence

from .base import (Backend, BackendError, CancelToken, GenerationOptions, Message, _StreamClock, render_chat,
                   without_control_text)
from .streamtext import StopMatcher, Utf8Decoder
from ..models import ModelSpec, check_gguf


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class LlamaCppBackend(Backend):
    name = "llama.cpp"

    def __init__(self, spec: ModelSpec, n_ctx: int = 8192, n_threads: int | None = None):
        if spec.kind != "gguf" or spec.path is None:
            raise BackendError(f"llama.cpp needs a local GGUF file, got {spec.source}")
        if spec.adapter is not None:
            raise BackendError(
                "llama.cpp runs GGUF files only; merge the adapter first or use --backend transformers"
            )
        check_gguf(spec.path)
        try:
            from llama_cpp import Llama
        except ImportError as exc:  # pragma: no cover - dependency of the package
            raise BackendError("llama-cpp-python is not installed") from exc
        self.spec = spec
        self.model_name = spec.name
        try:
            self.llm = Llama(
                model_path=str(spec.path),
                n_ctx=n_ctx,
                n_threads=n_threads or default_threads(),
                n_batch=512,
                verbose=False,
            )
        except Exception as exc:  # llama.cpp reports failures as ValueError/RuntimeError
            raise BackendError(f"llama.cpp could not load {spec.path}: {exc}") from exc
        self._n_ctx = min(self.llm.n_ctx(), self.llm._model.n_ctx_train() or n_ctx)
        try:
            self._formatter = self._chat_formatter()
        except BaseException:
            self.close()  # the model's native memory is not left to the garbage collector
            raise
        self._control = self._control_texts()
        self._pieces: dict[int, bytes] = {}  # token id -> its bytes, filled as tokens appear

    def _control_texts(self) -> list[str]:
        """The text of every control token (<|im_start|>, <|im_end|>, ...), longest first."""
        import llama_cpp

        vocab = self.llm._model.vocab
        texts = set()
        for token in range(self.llm.n_vocab()):
            if llama_cpp.llama_vocab_get_attr(vocab, token) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL:
                text = self.llm.detokenize([token], special=True).decode("utf-8", "replace")
                if len(text) > 1:
                    texts.add(text)
        return sorted(texts, key=len, reverse=True)

    def _is_eog_text(self, text: str) -> bool:
        import llama_cpp

        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        return len(ids) == 1 and bool(llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, ids[0]))

    def _chat_formatter(self):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise BackendError(f"{self.spec.path} has no chat template in its metadata")
        vocab = self.llm._model
        eos = self.llm.detokenize([vocab.token_eos()], special=True).decode("utf-8", "replace")
        bos_id = vocab.token_bos()
        bos = self.llm.detokenize([bos_id], special=True).decode("utf-8", "replace") if bos_id >= 0 else ""
        return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, add_generation_prompt=True)

    @property
    def context_length(self) -> int:
        return self._n_ctx

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def render_prompt(self, messages: Sequence[Message]) -> tuple[str, list[str]]:
        result = render_chat(lambda m: self._formatter(messages=m), without_control_text(messages, self._control),
                             self.model_name)
        stops = result.stop if isinstance(result.stop, list) else ([result.stop] if result.stop else [])
        return result.prompt, stops

    def tokenize_prompt(self, messages: Sequence[Message]) -> list[int]:
        prompt, _ = self.render_prompt(messages)
        # The template already writes any BOS it wants; special=True keeps <|im_start|> one token.
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        return len(self.tokenize_prompt(messages))

    def stream(
        self,
        messages: Sequence[Message],
        options: GenerationOptions | None = None,
        cancel: CancelToken | None = None,
    ) -> Iterator[str]:
        opts = options or GenerationOptions()
        prompt, template_stops = self.render_prompt(messages)
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        room = self._n_ctx - len(tokens)
        if room <= 1:
            raise BackendError(
                f"prompt of {len(tokens)} tokens does not fit the {self._n_ctx}-token context"
            )
        max_tokens = min(opts.max_tokens, room - 1)
        clock = _StreamClock(prompt_tokens=len(tokens))
        # A template stop that is an end-of-generation token is already caught by
        # is_eog below; leaving it out keeps the per-token path free of string scans.
        stop = StopMatcher(list(opts.stop) + [s for s in template_stops if not self._is_eog_text(s)])
        decoder = Utf8Decoder()
        finish = "length"
        import llama_cpp

        model = self.llm._model
        vocab = model.vocab
        is_eog = llama_cpp.llama_vocab_is_eog
        pieces = self._pieces
        # llama.cpp takes a uint32 and reads 0xFFFFFFFF as "a random seed": every seed maps
        # below it, so the same seed always gives the same text (-1 and 2**32 wrapped before).
        self.llm.set_seed(opts.seed % 0xFFFFFFFF)
        try:
            for token in self.llm.generate(
                tokens,
                temp=opts.temperature,
                top_p=opts.top_p,
                top_k=0 if opts.temperature > 0 else 40,
                min_p=0.0,
                repeat_penalty=opts.repeat_penalty,
                reset=True,
            ):
                if cancel is not None and cancel.cancelled:
                    finish = "cancelled"
                    break
                if is_eog(vocab, token):
                    finish = "stop"
                    break
                clock.token()
                raw = pieces.get(token)
                if raw is None:
                    raw = pieces[token] = model.detokenize([token])
                piece = stop.feed(decoder.feed(raw))
                if piece:
                    yield piece
                if stop.stopped:
                    finish = "stop"
                    break
                if clock.count >= max_tokens:
                    break
            else:
                finish = "stop"
            tail = stop.feed(decoder.flush()) + stop.flush()
            if tail:
                yield tail
        except GeneratorExit:
            finish = "cancelled"
            raise
        except (RuntimeError, ValueError) as exc:  # llama.cpp's own failures (a decode that fails)
            finish = "error"
            raise BackendError(f"llama.cpp failed while generating: {exc}") from exc
        finally:
            self.last_stats = clock.stats(finish)

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None
