"""transformers backend (torch): any Hugging Face model, a dequantized GGUF,
and optionally a PEFT adapter on top. Slower than llama.cpp on a CPU, but it
is the path training and evaluation of adapters share.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path
from typing import Iterator, Sequence

from .base import (Backend, BackendError, CancelToken, GenerationOptions, Message, _StreamClock, render_chat,
                   without_control_text)
from .streamtext import StopMatcher
from ..models import ModelSpec
from ..paths import cache_home, file_key, prune_cache


def dequantized_cache_dir(spec: ModelSpec) -> Path:
    """Where a GGUF's dequantized weights are kept: named by the file (its name and a hash of
    its path) and keyed by its state, so a changed file gets a fresh entry."""
    assert spec.path is not None
    where = hashlib.sha256(str(spec.path.resolve()).encode()).hexdigest()[:8]
    return cache_home() / "dequantized" / f"{spec.path.stem}-{where}-{file_key(spec.path)}"


def _prune_dequantized(current: Path) -> None:
    """Each entry is ~0.5 GB: drop the older ones of the same file (another version, or the
    naming before the path hash) and folders a killed save left behind."""
    stem = re.escape(current.name.rsplit("-", 2)[0])
    where = re.escape(current.name.rsplit("-", 2)[1])
    prune_cache(current.parent, {current.name}, stale=re.compile(rf"^{stem}-(?:{where}-)?[0-9a-f]{{16}}$"),
                left_behind=re.compile(rf"^{stem}-(?:{where}-)?[0-9a-f]{{16}}\.tmp(\d+)$"))


def load_model_and_tokenizer(spec: ModelSpec, dtype: str = "float32", merge_adapter: bool = False):
    """Load (model, tokenizer) for training, evaluation or inference.

    A GGUF is dequantized once (about 3 s) and cached as safetensors, so later
    loads are plain safetensors reads.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch_dtype = getattr(torch, dtype)
    try:
        if spec.kind == "gguf":
            assert spec.path is not None
            cached = dequantized_cache_dir(spec)
            if (cached / "config.json").is_file():
                model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch_dtype)
                tokenizer = AutoTokenizer.from_pretrained(cached)
            else:
                model = AutoModelForCausalLM.from_pretrained(
                    spec.path.parent, gguf_file=spec.path.name, dtype=torch_dtype
                )
                tokenizer = AutoTokenizer.from_pretrained(spec.path.parent, gguf_file=spec.path.name)
                drop_gguf_quantizer(model)
                _save_atomically(model, tokenizer, cached)
                _prune_dequantized(cached)
        elif spec.path is not None:
            model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=torch_dtype)
            tokenizer = AutoTokenizer.from_pretrained(spec.path)
        else:
            model, tokenizer = _from_hub(spec.hub_id, torch_dtype)
    except NotDownloaded:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers and safetensors raise many kinds for a bad model
        hint = " (a hub id needs an internet connection)" if spec.hub_id else ""
        raise BackendError(f"could not load model {spec.source}{hint}: {exc}") from exc
    if spec.adapter is not None:
        from peft import PeftModel
        from safetensors import SafetensorError

        try:
            model = PeftModel.from_pretrained(model, str(spec.adapter))
        except SafetensorError as exc:
            raise BackendError(f"the adapter {spec.adapter}: its weights file is unreadable ({exc}); "
                               "copy the adapter again") from exc
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise BackendError(f"the adapter {spec.adapter} does not fit {spec.source}: "
                               f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        if merge_adapter:
            model = model.merge_and_unload()
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


ALLOW_DOWNLOAD_ENV = "HEALTH_ASSISTANT_ALLOW_DOWNLOAD"


class NotDownloaded(BackendError):
    """A hub id that is not in the local Hugging Face cache, with downloads not allowed."""


def _from_hub(hub_id: str, torch_dtype):
    """A hub model already in the local Hugging Face cache loads from its snapshot folder
    without a network call (given the id, transformers first asks the hub for the newest
    revision and for an adapter config, and with no connection waits through its retries
    before using the cache). One not downloaded yet is fetched only when the user has said
    so ($HEALTH_ASSISTANT_ALLOW_DOWNLOAD=1): the assistant never goes online by itself, and a
    mistyped local path ("outputs/final") is not looked up on the internet."""
    from huggingface_hub import snapshot_download
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        local = snapshot_download(hub_id, local_files_only=True)
    except OSError:  # not downloaded (LocalEntryNotFoundError is one), or only in part
        if os.environ.get(ALLOW_DOWNLOAD_ENV) != "1":
            raise NotDownloaded(
                f"{hub_id}: no such local folder, and not a model in the local Hugging Face cache; the "
                f"assistant does not go online by itself. Download it once (`hf download {hub_id}`, or run "
                f"with {ALLOW_DOWNLOAD_ENV}=1), or check the path") from None
        return (AutoModelForCausalLM.from_pretrained(hub_id, dtype=torch_dtype),
                AutoTokenizer.from_pretrained(hub_id))
    return (AutoModelForCausalLM.from_pretrained(local, dtype=torch_dtype),
            AutoTokenizer.from_pretrained(local))


def drop_gguf_quantizer(model) -> None:
    """The weights are plain floats once dequantized; the leftover "quantized"
    flag only makes save_pretrained refuse and PEFT take the wrong paths."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    for module in model.modules():
        if hasattr(module, "config") and getattr(module.config, "_is_quantized", False):
            module.config._is_quantized = False


def _save_atomically(model, tokenizer, target: Path) -> None:
    import shutil
    import warnings

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if not target.exists():
            tmp.rename(target)
    except Exception as exc:  # a cache is an optimisation: failing to write it must not fail the load
        warnings.warn(f"could not cache the dequantized model in {target}: {exc}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _CountingStreamer:
    """transformers' TextIteratorStreamer that also counts tokens and stops on request."""

    def __new__(cls, tokenizer, clock: _StreamClock):
        from transformers import TextIteratorStreamer

        eos = _eos_ids(tokenizer)

        class Streamer(TextIteratorStreamer):
            def put(self, value):
                if self.next_tokens_are_prompt:  # the first call carries the prompt
                    return super().put(value)
                for token in value.reshape(-1).tolist():
                    if token not in eos:  # the end of the reply is not one of its tokens (nor in llama.cpp)
                        clock.token()
                return super().put(value)

        return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)


def _eos_ids(tokenizer) -> set[int]:
    eos = tokenizer.eos_token_id
    return set(eos) if isinstance(eos, (list, tuple)) else {eos} if eos is not None else set()


def recent_repeat_penalty(penalty: float, prompt_length: int, last_n: int = 64):
    """llama.cpp's repeat penalty as a transformers logits processor: only the last `last_n`
    tokens generated are penalised, never the prompt. transformers' own penalises every
    token of the input, so a summary penalised there for repeating the transcript's drug
    names and numbers, and the setting chosen on llama.cpp (1.1) meant something else."""
    import torch
    from transformers import LogitsProcessor

    class RecentRepeatPenalty(LogitsProcessor):
        def __call__(self, input_ids, scores):
            recent = input_ids[:, max(prompt_length, input_ids.shape[1] - last_n):]
            if recent.shape[1] == 0:
                return scores
            picked = torch.gather(scores, 1, recent)
            picked = torch.where(picked < 0, picked * penalty, picked / penalty)
            return scores.scatter(1, recent, picked)

    return RecentRepeatPenalty()


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, spec: ModelSpec, dtype: str = "float32", model=None, tokenizer=None):
        import torch

        self.spec = spec
        self.model_name = spec.name + (f"+{spec.adapter.name}" if spec.adapter else "")
        if model is None:
            model, tokenizer = load_model_and_tokenizer(spec, dtype=dtype)
        self.model, self.tokenizer = model, tokenizer
        if not getattr(self.tokenizer, "chat_template", None):
            raise BackendError(f"{spec.source} has no chat template")
        self._torch = torch
        special = {t.content for t in getattr(self.tokenizer, "added_tokens_decoder", {}).values() if t.special}
        special |= set(self.tokenizer.all_special_tokens)
        self._control = sorted((t for t in special if len(t) > 1), key=len, reverse=True)

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _encode(self, messages: Sequence[Message]):
        ids = render_chat(lambda m: self.tokenizer.apply_chat_template(m, add_generation_prompt=True,
                                                                        return_tensors="pt", return_dict=True),
                          without_control_text(messages, self._control), self.model_name)
        return ids["input_ids"], ids["attention_mask"]

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        return int(self._encode(messages)[0].shape[1])

    def stream(
        self,
        messages: Sequence[Message],
        options: GenerationOptions | None = None,
        cancel: CancelToken | None = None,
    ) -> Iterator[str]:
        from transformers import (LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TemperatureLogitsWarper,
                                  TopPLogitsWarper)

        opts = options or GenerationOptions()
        input_ids, attention_mask = self._encode(messages)
        room = self.context_length - input_ids.shape[1]
        if room <= 1:
            raise BackendError(
                f"prompt of {input_ids.shape[1]} tokens does not fit the {self.context_length}-token context"
            )
        clock = _StreamClock(prompt_tokens=int(input_ids.shape[1]))
        streamer = _CountingStreamer(self.tokenizer, clock)
        stop = StopMatcher(opts.stop)
        halt = threading.Event()  # set when the consumer stops early or a stop string is seen

        class Halt(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return halt.is_set() or (cancel is not None and cancel.cancelled)

        sampling = opts.temperature > 0
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=min(opts.max_tokens, room - 1),
            do_sample=sampling,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([Halt()]),
            pad_token_id=self.tokenizer.pad_token_id,
            repetition_penalty=1.0,  # a model's own default would penalise the prompt on top of ours
        )
        # The penalty comes before temperature and top-p, as in llama.cpp; transformers would run
        # a custom processor after its own warpers, so those are given here as well.
        processors = LogitsProcessorList()
        if opts.repeat_penalty != 1.0:
            processors.append(recent_repeat_penalty(opts.repeat_penalty, int(input_ids.shape[1])))
        if sampling:
            # llama.cpp's chain: top-p on the untempered distribution, then temperature (at 0.7
            # the other order keeps a nucleus of ~20 tokens where llama.cpp keeps ~400)
            if opts.top_p < 1.0:
                processors.append(TopPLogitsWarper(opts.top_p))
            processors.append(TemperatureLogitsWarper(opts.temperature))
            kwargs.update(temperature=1.0, top_p=1.0, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if processors:
            kwargs["logits_processor"] = processors
        errors: list[BaseException] = []

        def run():
            try:
                if sampling:
                    self._torch.manual_seed(opts.seed)
                with self._torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as exc:  # surfaced in the consumer's thread below
                errors.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        finish = "length"
        # The streamer holds back a U+FFFD until a space follows, so one can only be last, at the
        # end of a reply cut inside a character: that half character is dropped.
        held = ""
        try:
            for text in streamer:
                text, held = held + text, ""
                if text.endswith("\ufffd"):
                    text, held = text[:-1], "\ufffd"
                piece = stop.feed(text)
                if piece:
                    yield piece
                if stop.stopped:
                    halt.set()
                    finish = "stop"
                    break
            tail = stop.flush()
            if tail:
                yield tail
        except GeneratorExit:
            halt.set()
            finish = "cancelled"
            raise
        finally:
            halt.set()
            worker.join()
            if errors:
                raise BackendError(f"generation failed: {errors[0]}") from errors[0]
            if cancel is not None and cancel.cancelled:
                finish = "cancelled"
            elif finish == "length" and clock.count < kwargs["max_new_tokens"]:
                finish = "stop"
            self.last_stats = clock.stats(finish)
