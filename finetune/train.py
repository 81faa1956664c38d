"""LoRA fine-tuning of the assistant's model: one loop you can read in one sitting.

    python -m finetune.train --config finetune/configs/default.toml \
        [--limit N] [--max-steps N] [--resume] [--stop-after N] [--out runs/NAME]

Data: JSONL lines with a `messages` list (system, user, assistant) and a `source`;
the last message is the target. Sources are mixed per `[data.mix]` in the config.
Only the answer tokens and the `<|im_end|>` that closes them are supervised, so
the model learns to answer and to stop.

Speed: the LM head (49,152 x 576) is the largest matmul of this model. The loss
runs the decoder, keeps the hidden states whose next token is supervised, and
applies the head there only: ~1.4x the tokens/s of a plain HF Trainer on 2 CPU
cores (`python -m finetune.bench_trainer` measures it). LoRA dropout costs ~15 %
of a CPU step (its random masks), hence 0 in the recipes.

Resume: a checkpoint (every `ckpt_every` steps, written to a temporary directory
and renamed, last `keep_ckpts` kept) holds the adapter, optimizer, scheduler and
RNG states. The data order is a pure function of (seed, epoch), so the step
number is the data position; `--resume` continues with the same next batch and
the same loss trajectory as an uninterrupted run (tested on one process).
`--stop-after N` saves a checkpoint at step N and exits, to split a long run
into sessions.

GPU: the same command runs on a GPU (picked automatically; bf16 autocast there).
Several GPUs: launch the same module through accelerate or torchrun,

    accelerate launch --num_processes 4 -m finetune.train --config ...
    torchrun --nproc_per_node 4 -m finetune.train --config ...

Each process takes every world_size-th micro-batch, so one optimizer step sees
batch_size * grad_accum * world_size examples; the loss is the mean over all
supervised tokens of the step, across processes. Two processes therefore train
exactly as one with twice the grad_accum (tested with torchrun on CPU, gloo).
`accelerate launch` starts one process unless it finds several GPUs; torchrun also
runs several CPU processes.

Outputs in --out (default runs/<config name>): metrics.jsonl (one line per step
and per evaluation), checkpoints/step-NNNNNN/, and final/ with
adapter_model.safetensors + adapter_config.json + recipe.json: what ships under
data/adapters/<name>/ (assistant/build_model.py turns it into a GGUF).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
import tomllib
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from assistant.paths import file_sha256

from .jsonl import iter_jsonl
from .sources import LICENCES

IGNORE = -100

DEFAULTS = {
    "name": "run",
    "seed": 1234,
    # init_adapter: a PEFT adapter directory to start from (a continued run), or "".
    "model": {"name": "smollm2-135m-instruct", "init_adapter": ""},
    "data": {
        "train": "build/data/v1/train.jsonl",
        "valid": "build/data/v1/valid.jsonl",
        "max_seq_len": 512,
        # per source: cap = most distinct examples used, repeat = times each is
        # seen per epoch (0.5: a random half). "default" covers unlisted sources.
        "mix": {"default": {"repeat": 1.0}},
    },
    "lora": {
        "r": 16,
        "alpha": 32,
        "dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "use_rslora": False,
    },
    "train": {
        "lr": 2e-4,
        "min_lr_ratio": 0.1,
        "warmup_steps": 20,
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "epochs": 1.0,
        "max_steps": 0,  # > 0 overrides epochs
        "batch_size": 4,  # examples per micro-batch, at most
        "batch_tokens": 0,  # > 0: also at most this many tokens per micro-batch, padding included
        "grad_accum": 4,
        "grad_clip": 1.0,
        "bucket_batches": 64,  # length-sort within chunks of this many batches
        "eval_every": 50,
        "eval_batches": 16,
        "ckpt_every": 50,
        "keep_ckpts": 2,
    },
}


# --------------------------------------------------------------------- config

def _merge(base: dict, over: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        name = f"{where}.{key}".lstrip(".")
        if where == "data.mix":  # source names are the data's; each entry is checked on its own
            out[key] = _mix_entry(value, name)
            continue
        if key not in base:  # typos must not pass silently
            raise ValueError(f"unknown config key {name}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"config key {name} must be a table, not {value!r}")
            out[key] = _merge(base[key], value, name)
        else:
            out[key] = _checked(value, base[key], name)
    return out


def _checked(value, default, name: str):
    """`value` if it has the type of the key's default (an int where a float is expected too)."""
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
    elif name in ("data.train", "data.valid"):  # one file or a list of them
        ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ValueError(f"config key {name} must be {type(default).__name__}, not {value!r}")
    return value


def _mix_entry(value, name: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"config key {name} must be a table such as {{ cap = 100, repeat = 1.0 }}, not {value!r}")
    for key, number in value.items():
        if key not in ("cap", "repeat"):
            raise ValueError(f"unknown config key {name}.{key} (a mix entry takes cap and repeat)")
        if isinstance(number, bool) or not isinstance(number, (int, float)) or number < 0 or (
                key == "cap" and not isinstance(number, int)):
            raise ValueError(f"config key {name}.{key} must be a {'whole ' if key == 'cap' else ''}number >= 0, "
                             f"not {number!r}")
    return dict(value)


# Settings that must be positive for a run to make sense (0 is allowed where it means "off").
_POSITIVE = ("train.batch_size", "train.grad_accum", "train.ckpt_every", "train.keep_ckpts", "data.max_seq_len",
             "lora.r", "train.bucket_batches")


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    cfg = _merge(_merge(DEFAULTS, raw), overrides or {})
    for name in _POSITIVE:
        section, key = name.split(".")
        if cfg[section][key] < 1:
            raise ValueError(f"config key {name} must be at least 1, not {cfg[section][key]}")
    if not cfg["train"]["max_steps"] and cfg["train"]["epochs"] <= 0:
        raise ValueError("config key train.epochs must be above 0 (or set train.max_steps)")
    if cfg["train"]["lr"] < 0:
        raise ValueError(f"config key train.lr must not be negative, not {cfg['train']['lr']}")
    if not _as_list(cfg["data"]["train"]) or not all(_as_list(cfg["data"]["train"])):
        raise ValueError("config key data.train must name at least one file")
    if not 0 <= cfg["train"]["min_lr_ratio"] <= 1:
        raise ValueError(f"config key train.min_lr_ratio must be between 0 and 1, not {cfg['train']['min_lr_ratio']}")
    if cfg["train"]["warmup_steps"] < 0:
        raise ValueError(f"config key train.warmup_steps must not be negative, not {cfg['train']['warmup_steps']}")
    # clip_grad_norm_ to 0 zeroes every gradient: training would run and learn nothing.
    if not cfg["train"]["grad_clip"] > 0:
        raise ValueError(f"config key train.grad_clip must be above 0, not {cfg['train']['grad_clip']}")
    for key in ("weight_decay", "batch_tokens"):
        if cfg["train"][key] < 0:
            raise ValueError(f"config key train.{key} must not be negative, not {cfg['train'][key]}")
    betas = cfg["train"]["betas"]
    if not (isinstance(betas, list) and len(betas) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        raise ValueError(f"config key train.betas must be two numbers in [0, 1), not {betas!r}")
    return cfg


# ---------------------------------------------------------------------- model

def load_base(name: str):
    """(model, tokenizer) for a model name, .gguf file or HF directory, fp32."""
    from assistant.backends.hf import load_model_and_tokenizer
    from assistant.models import resolve

    return load_model_and_tokenizer(resolve(name))


def add_lora(model, lora: dict, init_adapter: str | Path = ""):
    """Wrap the base in LoRA; with `init_adapter`, start from that adapter's weights.

    The adapter must have this recipe's shape (rank and target modules), otherwise
    its weights would not be the ones being continued.
    """
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    config = LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
        target_modules=list(lora["target_modules"]), use_rslora=lora["use_rslora"],
        bias="none", task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    if init_adapter:
        src = Path(init_adapter)
        if not (src / "adapter_config.json").is_file():
            raise SystemExit(f"model.init_adapter: {src} is not a PEFT adapter directory (no adapter_config.json)")
        theirs = json.loads((src / "adapter_config.json").read_text())
        if theirs.get("r") != lora["r"] or set(theirs.get("target_modules") or []) != set(lora["target_modules"]):
            raise SystemExit(f"model.init_adapter: {src} has r={theirs.get('r')} on {theirs.get('target_modules')}, "
                             f"the recipe r={lora['r']} on {list(lora['target_modules'])}")
        # The weights only mean what they were trained to with the same scaling (alpha / r, or
        # alpha / sqrt(r) with rsLoRA): another alpha would silently continue a different model.
        if theirs.get("lora_alpha") != lora["alpha"] or bool(theirs.get("use_rslora")) != bool(lora["use_rslora"]):
            raise SystemExit(f"model.init_adapter: {src} has lora_alpha={theirs.get('lora_alpha')}, "
                             f"use_rslora={bool(theirs.get('use_rslora'))}; the recipe alpha={lora['alpha']}, "
                             f"use_rslora={bool(lora['use_rslora'])}")
        result = set_peft_model_state_dict(model, load_file(str(src / "adapter_model.safetensors")))
        if result.unexpected_keys:
            raise SystemExit(f"model.init_adapter: {src} holds weights this model lacks: {result.unexpected_keys[:3]}")
    return model


class SupervisedLoss(torch.nn.Module):
    """Summed cross-entropy over supervised tokens, LM head applied only there.

    A module (not a function) so that DDP sees the forward pass it must hook.
    """

    def __init__(self, peft_model):
        super().__init__()
        self.peft_model = peft_model

    def forward(self, input_ids, attention_mask, labels):
        causal_lm = self.peft_model.get_base_model()
        hidden = causal_lm.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE  # position t predicts token t+1
        logits = causal_lm.get_output_embeddings()(hidden[:, :-1][keep])
        return F.cross_entropy(logits.float(), targets[keep], reduction="sum")


# ----------------------------------------------------------------------- data

def read_jsonl(path: str | Path | list) -> list[dict]:
    """One JSONL file, or a list of them read in order (e.g. the split plus grounded examples).
    Every row must be a chat whose last message is the assistant's answer."""
    if isinstance(path, (list, tuple)):
        return [row for p in path for row in read_jsonl(p)]
    rows = []
    try:
        for n, row in iter_jsonl(path):
            messages = row.get("messages")
            if not isinstance(messages, list) or len(messages) < 2 or not isinstance(messages[-1], dict) \
                    or messages[-1].get("role") != "assistant":
                raise SystemExit(f"{path}:{n}: field 'messages' must be a chat of a prompt and the assistant's answer")
            for i, m in enumerate(messages):
                if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                    raise SystemExit(f"{path}:{n}: field messages[{i}] must have a string 'role' and 'content'")
            rows.append(row)
    except OSError as exc:
        raise SystemExit(f"{path}: cannot read the data: {exc.strerror}") from None
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    return rows


def mix_sources(rows: list[dict], mix: dict, seed: int) -> list[dict]:
    """Apply the per-source caps and repeats; deterministic for a seed."""
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(row.get("source", "unknown"), []).append(row)
    # an entry that only leaves out a known source (cap 0 or repeat 0) may name one this data lacks
    unknown = {s for s, spec in mix.items() if (spec.get("cap", 1) and spec.get("repeat", 1)) or s not in LICENCES}
    unknown -= set(by_source) | {"default"}
    if unknown:  # most likely a misspelt name, whose rows would silently fall under "default"
        raise SystemExit(f"data.mix names sources the data does not have: {sorted(unknown)}; "
                         f"the data's sources are {sorted(by_source)}")
    out = []
    for source in sorted(by_source):
        spec = {"repeat": 1.0, **mix.get(source, mix.get("default", {}))}
        rng = random.Random(f"{seed}:{source}")
        items = by_source[source]
        if spec.get("cap") is not None and spec["cap"] < len(items):
            items = rng.sample(items, spec["cap"])
        whole, frac = divmod(float(spec["repeat"]), 1.0)
        out += items * int(whole) + rng.sample(items, round(frac * len(items)))
    return out


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def end_of_turn_id(tokenizer) -> int:
    tid = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return tid if isinstance(tid, int) and tid != tokenizer.unk_token_id else tokenizer.eos_token_id


def encode(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(input_ids, labels): labels are IGNORE except the answer and its end-of-turn token."""
    if messages[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's answer")
    full = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
    prompt = list(tokenizer.apply_chat_template(messages[:-1], tokenize=True, return_dict=False,
                                                add_generation_prompt=True))
    if full[: len(prompt)] != prompt:
        raise ValueError("the chat template does not render the prompt as a prefix of the full chat")
    eot = end_of_turn_id(tokenizer)
    answer = full[len(prompt):]
    end = len(prompt) + len(answer) - answer[::-1].index(eot)  # just after the last end-of-turn
    # whatever the template writes after <|im_end|> (a newline) is neither trained nor needed
    return full[:end], [IGNORE] * len(prompt) + full[len(prompt):end]


def encode_all(tokenizer, rows: list[dict], max_seq_len: int) -> tuple[list[tuple[list[int], list[int]]], dict]:
    examples, too_long = [], {}
    for row in rows:
        ids, labels = encode(tokenizer, row["messages"])
        if len(ids) > max_seq_len:  # truncating would cut the answer or its stop token
            source = row.get("source", "unknown")
            too_long[source] = too_long.get(source, 0) + 1
            continue
        examples.append((ids, labels))
    return examples, too_long


def make_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, bucket: int = 64,
                 batch_tokens: int = 0) -> list[list[int]]:
    """Shuffle, sort by length within chunks (little padding), group, shuffle the batches.

    A batch holds at most `batch_size` examples and, when `batch_tokens` > 0, at
    most that many tokens counting padding (an example longer than that goes alone).
    """
    rng = random.Random(f"{seed}:epoch:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * bucket
    batches = []
    for i in range(0, len(order), chunk):
        batch: list[int] = []
        for j in sorted(order[i:i + chunk], key=lambda j: lengths[j]):
            full = len(batch) == batch_size or (batch_tokens and (len(batch) + 1) * lengths[j] > batch_tokens)
            if batch and full:
                batches.append(batch)
                batch = []
            batch.append(j)
        if batch:
            batches.append(batch)
    rng.shuffle(batches)
    return batches


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class BatchStream:
    """Micro-batch number g -> a batch; epochs follow each other with fresh orders."""

    def __init__(self, examples, batch_size: int, seed: int, bucket: int, batch_tokens: int = 0):
        self.examples, self.lengths = examples, [len(ids) for ids, _ in examples]
        self._make = lambda epoch: make_batches(self.lengths, batch_size, seed, epoch, bucket, batch_tokens)
        self._sizes: dict[int, int] = {}  # batches per epoch: with a token budget it varies a little
        self._epoch, self._batches = None, []
        self.per_epoch = self._size(0)

    def _size(self, epoch: int) -> int:
        if epoch not in self._sizes:
            self._sizes[epoch] = len(self._make(epoch))
        return self._sizes[epoch]

    def __getitem__(self, g: int) -> list[tuple[list[int], list[int]]]:
        epoch = 0
        while g >= self._size(epoch):
            g, epoch = g - self._size(epoch), epoch + 1
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self._make(epoch)
        return [self.examples[j] for j in self._batches[g]]


def cosine_with_warmup(warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


# ---------------------------------------------------------------- checkpoints

def _write_atomically(target: Path, fill) -> None:
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fill(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, peft_model, optimizer, scheduler, fingerprint: dict, keep: int) -> Path:
    ckpts = run_dir / "checkpoints"

    def fill(tmp: Path):
        peft_model.save_pretrained(tmp / "adapter")
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(), "fingerprint": fingerprint}, tmp / "state.pt")

    target = ckpts / f"step-{step:06d}"
    _write_atomically(target, fill)
    for old in sorted(ckpts.glob("step-*"))[:-keep]:
        shutil.rmtree(old)
    return target


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "checkpoints").glob("step-*"))  # .tmp-* (interrupted writes) never match
    return found[-1] if found else None


# --------------------------------------------------------------------- train

def evaluate(loss_fn, batches, pad_id: int, device) -> float | None:
    if not batches:
        return None
    loss_fn.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for examples in batches:
            batch = {k: v.to(device) for k, v in collate(examples, pad_id).items()}
            total += float(loss_fn(**batch))
            count += int((batch["labels"][:, 1:] != IGNORE).sum())
    loss_fn.train()
    return total / count


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def train(cfg: dict, out: Path, limit: int | None = None, max_steps: int | None = None,
          resume: bool = False, stop_after: int | None = None, progress: bool = True) -> dict:
    from accelerate import Accelerator
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from tqdm import tqdm

    tc, dc = cfg["train"], cfg["data"]
    out = Path(out)
    # cpu=True when there is no GPU: without it accelerate ignores torchrun's process group on
    # CPU, and each process would train alone on its share of the data, writing the same --out
    gpu = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    accelerator = Accelerator(cpu=not (gpu or mps), mixed_precision="bf16" if gpu else "no")
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    ckpt = latest_checkpoint(out)
    if ckpt is not None and not resume:
        raise SystemExit(f"{out} already holds checkpoints: pass --resume, or a new --out")

    # data first: a mistake in it should stop the run before minutes of model loading
    rows = mix_sources(read_jsonl(dc["train"]), dc["mix"], cfg["seed"])
    if limit:
        rows = random.Random(f"{cfg['seed']}:limit").sample(rows, min(limit, len(rows)))
    valid_rows = read_jsonl(dc["valid"]) if dc.get("valid") and tc["eval_batches"] > 0 else []

    random.seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    model, tokenizer = load_base(cfg["model"]["name"])
    model = add_lora(model, cfg["lora"], cfg["model"]["init_adapter"])

    # encode, drop over-long examples
    train_set, too_long = encode_all(tokenizer, rows, dc["max_seq_len"])
    if not train_set:
        raise SystemExit(f"no training example fits max_seq_len={dc['max_seq_len']}")
    stream = BatchStream(train_set, tc["batch_size"], cfg["seed"], tc["bucket_batches"], tc["batch_tokens"])
    per_step = tc["grad_accum"] * world  # micro-batches per optimizer step, all processes
    total_steps = max_steps or tc["max_steps"] or math.ceil(tc["epochs"] * stream.per_epoch / per_step)
    eval_batches = []
    if valid_rows:
        want = tc["eval_batches"] * tc["batch_size"]
        valid_rows = random.Random(f"{cfg['seed']}:valid").sample(valid_rows, min(want, len(valid_rows)))
        valid_set, _ = encode_all(tokenizer, valid_rows, dc["max_seq_len"])
        lengths = [len(ids) for ids, _ in valid_set]
        grouped = make_batches(lengths, tc["batch_size"], cfg["seed"], 0, batch_tokens=tc["batch_tokens"])
        eval_batches = [[valid_set[j] for j in b] for b in grouped[: tc["eval_batches"]]]

    # A checkpoint is only continued by the same run: the same recipe (how often it logs or
    # saves aside), the same data files, the same data order and step size.
    recipe = copy.deepcopy(cfg)
    for key in ("eval_every", "eval_batches", "ckpt_every", "keep_ckpts"):
        recipe["train"].pop(key)
    data_files = [str(p) for p in _as_list(dc["train"])]
    fingerprint = {"recipe": recipe, "train_sha256": [file_sha256(Path(p)) for p in data_files],
                   "limit": limit, "examples": len(train_set), "batches_per_epoch": stream.per_epoch,
                   "world_size": world, "total_steps": total_steps}
    state = None
    if ckpt is not None:
        state = torch.load(ckpt / "state.pt", weights_only=False)
        if state["fingerprint"] != fingerprint:
            changes = ("it was written by an older trainer" if "recipe" not in state["fingerprint"]
                       else "; ".join(_changes(state["fingerprint"], fingerprint)))
            raise SystemExit(f"cannot resume from {ckpt}: the run changed ({changes}); "
                             "use a new --out for a new run")
        set_peft_model_state_dict(model, load_file(str(ckpt / "adapter" / "adapter_model.safetensors")))

    loss_fn = accelerator.prepare(SupervisedLoss(model))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc["lr"], betas=tuple(tc["betas"]), weight_decay=tc["weight_decay"])
    # stepped by hand: accelerate's scheduler wrapper would step it once per process
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(tc["warmup_steps"], total_steps, tc["min_lr_ratio"]))
    step = 0
    metrics_path = out / "metrics.jsonl"
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        step = state["step"]
        if main and metrics_path.exists():  # forget what was logged after the checkpoint
            kept = [line for line in metrics_path.read_text().splitlines() if json.loads(line)["step"] <= step]
            metrics_path.write_text("".join(line + "\n" for line in kept))
    elif main and metrics_path.exists():
        # A run stopped before its first checkpoint starts again from step 0; its log is kept
        # aside rather than summed into this run's totals.
        os.replace(metrics_path, metrics_path.with_name("metrics.stopped.jsonl"))

    trainable = sum(p.numel() for p in params)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg, indent=2))
        print(f"{len(train_set)} examples ({sum(stream.lengths):,} tokens, {stream.per_epoch} batches/epoch), "
              f"dropped over {dc['max_seq_len']} tokens: {too_long or 0}; {trainable:,} trainable parameters; "
              f"{total_steps} steps of {tc['batch_size']}x{per_step}; device {accelerator.device}"
              + (f"; resuming at step {step}" if step else ""), file=sys.stderr)
    log = open(metrics_path, "a") if main else None

    def record(entry: dict) -> None:
        if log:
            log.write(json.dumps(entry) + "\n")
            log.flush()

    pad_id = tokenizer.pad_token_id
    device = accelerator.device
    bar = tqdm(total=total_steps, initial=step, disable=not (main and progress), dynamic_ncols=True)
    tokens_seen = supervised_seen = 0
    timed_tokens = timed_supervised = timed_seconds = 0.0
    eval_loss, session_steps = None, 0
    if step == 0 and eval_batches and tc["eval_every"] > 0:
        eval_loss = evaluate(loss_fn, eval_batches, pad_id, device)
        record({"step": 0, "eval_loss": eval_loss})
    loss_fn.train()
    while step < total_steps:
        started, cpu_started = time.perf_counter(), time.process_time()
        first = step * per_step + rank
        micro = [collate(stream[first + i * world], pad_id) for i in range(tc["grad_accum"])]
        # normalise by the step's supervised tokens over all processes: a token mean, not a batch mean
        counts = torch.tensor([sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro),
                               sum(int(b["attention_mask"].sum()) for b in micro)], device=device)
        n_supervised, n_tokens = (int(x) for x in accelerator.reduce(counts, "sum"))
        loss_sum = 0.0
        for i, batch in enumerate(micro):
            batch = {k: v.to(device) for k, v in batch.items()}
            last = i == len(micro) - 1
            with nullcontext() if last else accelerator.no_sync(loss_fn):
                loss = loss_fn(**batch)
                accelerator.backward(loss * world / n_supervised)  # DDP averages over processes
            loss_sum += float(loss.detach())
        grad_norm = float(accelerator.clip_grad_norm_(params, tc["grad_clip"]))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        train_loss = float(accelerator.reduce(torch.tensor(loss_sum, device=device), "sum")) / n_supervised
        tokens_seen += n_tokens
        supervised_seen += n_supervised
        session_steps += 1
        if session_steps > 1:  # the first step of a session pays for warm-up
            timed_tokens, timed_supervised, timed_seconds = (
                timed_tokens + n_tokens, timed_supervised + n_supervised, timed_seconds + seconds)
        record({"step": step, "loss": train_loss, "lr": lr, "grad_norm": grad_norm, "tokens": n_tokens,
                "supervised_tokens": n_supervised, "seconds": round(seconds, 4),
                "cpu_seconds": round(cpu_seconds, 4),
                "epoch": round(step * per_step / stream.per_epoch, 4)})
        rate = timed_tokens / timed_seconds if timed_seconds else n_tokens / seconds
        sup_rate = timed_supervised / timed_seconds if timed_seconds else n_supervised / seconds
        bar.set_postfix_str(f"loss {train_loss:.3f} | {rate:,.0f} tok/s ({sup_rate:,.0f} supervised)")
        bar.update(1)

        if eval_batches and tc["eval_every"] > 0 and (step % tc["eval_every"] == 0 or step == total_steps):
            eval_loss = evaluate(loss_fn, eval_batches, pad_id, device)
            record({"step": step, "eval_loss": eval_loss})
            if main:
                bar.write(f"step {step}: eval loss {eval_loss:.4f}")
        stopping = stop_after is not None and step >= stop_after and step < total_steps
        # the last step is checkpointed too, so that --resume on a finished run changes nothing
        if main and (step % tc["ckpt_every"] == 0 or stopping or step == total_steps):
            save_checkpoint(out, step, accelerator.unwrap_model(loss_fn).peft_model, optimizer, scheduler,
                            fingerprint, tc["keep_ckpts"])
        if stopping:
            break
    bar.close()
    if log:
        log.close()
    accelerator.wait_for_everyone()

    summary = {"step": step, "total_steps": total_steps, "eval_loss": eval_loss,
               "tokens_per_s": timed_tokens / timed_seconds if timed_seconds else None,
               "supervised_tokens_per_s": timed_supervised / timed_seconds if timed_seconds else None,
               "tokens_this_session": tokens_seen, "supervised_tokens_this_session": supervised_seen,
               "examples": len(train_set), "dropped_too_long": too_long}
    # Also when a finished run is resumed without final/: the process died between the last
    # checkpoint and writing it, and the checkpoint holds the same weights.
    if step >= total_steps and main and (session_steps or not (out / "final").is_dir()):
        if eval_loss is None and metrics_path.exists():  # no step this session: the last one logged
            evals = [e["eval_loss"] for e in map(json.loads, metrics_path.read_text().splitlines()) if "eval_loss" in e]
            eval_loss = evals[-1] if evals else None
            summary["eval_loss"] = eval_loss
        _save_final(out, accelerator.unwrap_model(loss_fn).peft_model, cfg, rows, train_set, too_long,
                    total_steps, eval_loss, metrics_path)
    if step >= total_steps and (out / "final").is_dir():
        summary["final"] = str(out / "final")
    if main:
        print(json.dumps(summary), file=sys.stderr)
    return summary


def _changes(old, new, where: str = "") -> list[str]:
    """The fields that differ between two nested dicts, as 'a.b: old -> new'."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for key in sorted(set(old) | set(new), key=str)
                for c in _changes(old.get(key), new.get(key), f"{where}.{key}".lstrip("."))]
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def _init_adapter_summary(init_adapter: str) -> dict | None:
    """What a continued run started from, so its recipe can tell the whole training."""
    if not init_adapter:
        return None
    src = Path(init_adapter)
    earlier = json.loads((src / "recipe.json").read_text()) if (src / "recipe.json").is_file() else {}
    return {"adapter": str(src), "adapter_sha256": file_sha256(src / "adapter_model.safetensors"),
            **{k: earlier.get(k) for k in ("name", "steps", "tokens", "supervised_tokens", "train_seconds",
                                            "continued_from")},
            # what the stage was trained on, so a shipped adapter can state every stage's licences
            "sources": sorted((earlier.get("data") or {}).get("mix_rows_per_source") or []) or earlier.get("sources")}


def _save_final(out: Path, peft_model, cfg, rows, train_set, too_long, steps, eval_loss, metrics_path) -> None:
    entries = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    per_source: dict[str, int] = {}
    for row in rows:
        per_source[row.get("source", "unknown")] = per_source.get(row.get("source", "unknown"), 0) + 1
    train_paths = [Path(p) for p in _as_list(cfg["data"]["train"])]
    recipe = {
        "name": cfg["name"],
        "base_model": cfg["model"]["name"],
        "config": cfg,
        "data": {"train": [str(p) for p in train_paths], "train_sha256": [file_sha256(p) for p in train_paths],
                 "examples_per_epoch": len(train_set), "mix_rows_per_source": per_source,
                 "dropped_too_long": too_long},
        "steps": steps,
        "tokens": sum(e.get("tokens", 0) for e in entries),
        "supervised_tokens": sum(e.get("supervised_tokens", 0) for e in entries),
        "train_seconds": round(sum(e.get("seconds", 0) for e in entries), 1),
        "final_eval_loss": eval_loss,
        "continued_from": _init_adapter_summary(cfg["model"]["init_adapter"]),
        "git_commit": _git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    def fill(tmp: Path):
        peft_model.save_pretrained(tmp)
        (tmp / "README.md").unlink(missing_ok=True)  # PEFT's empty model card
        (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")

    _write_atomically(out / "final", fill)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m finetune.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="a TOML recipe, e.g. finetune/configs/default.toml")
    parser.add_argument("--limit", type=int, help="use only N training examples (a seeded sample of the mix)")
    parser.add_argument("--max-steps", type=int, help="train N optimizer steps (overrides the recipe's length)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument("--stop-after", type=int, help="save a checkpoint at step N and exit (resume later)")
    parser.add_argument("--out", help="run directory (default runs/<config name>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except OSError as exc:
        raise SystemExit(f"{args.config}: cannot read the recipe: {exc.strerror}") from None
    except ValueError as exc:
        raise SystemExit(f"{args.config}: {exc}") from None
    out = Path(args.out or f"runs/{cfg['name']}")
    return train(cfg, out, limit=args.limit, max_steps=args.max_steps, resume=args.resume,
                 stop_after=args.stop_after, progress=not args.no_progress)


if __name__ == "__main__":
    main()
