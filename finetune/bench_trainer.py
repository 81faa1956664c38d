"""Our LoRA trainer vs a plain Hugging Face Trainer + PEFT, measured in one run.

    python -m finetune.bench_trainer [--steps 8] [--warmup 2] [--batch-size 4] [--seq-len 256]

Both train the same LoRA (from the recipe, default r=16 on all linear layers) on
the same examples, chosen 80-100 % as long as --seq-len so that batches are
batch-size x ~seq-len tokens whichever order either trainer picks. The baseline
is what most scripts do: `Trainer` with `DataCollatorForSeq2Seq` padding and the
model's own loss (LM head over every position). Prints JSON: tokens/s of each
(real tokens, prompt included, padding excluded; warm-up steps not timed),
supervised tokens/s, tokens per CPU-second, and the ratios. On a machine shared
with other jobs wall-clock figures swing with their load (the load average is
printed); run with OMP_NUM_THREADS=1 there and read the CPU-time ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from finetune import train as T


def pick_examples(tokenizer, rows: list[dict], n: int, seq_len: int) -> list[dict]:
    picked = []
    for row in rows:
        ids, _ = T.encode(tokenizer, row["messages"])
        if 0.8 * seq_len <= len(ids) <= seq_len:
            picked.append(row)
            if len(picked) == n:
                return picked
    raise SystemExit(f"only {len(picked)} examples of {int(0.8 * seq_len)}-{seq_len} tokens, {n} needed")


def bench_ours(cfg: dict, steps: int, warmup: int, work: Path) -> dict:
    T.train(cfg, work / "ours", max_steps=steps + warmup, progress=False)
    entries = [json.loads(line) for line in (work / "ours" / "metrics.jsonl").read_text().splitlines()]
    timed = [e for e in entries if "loss" in e][warmup:]
    return _rates([(e["tokens"], e["supervised_tokens"], e["seconds"], e["cpu_seconds"]) for e in timed])


def _rates(steps: list[tuple[int, int, float, float]]) -> dict:
    tokens, supervised, seconds, cpu = (sum(column) for column in zip(*steps))
    return {"tokens_per_s": round(tokens / seconds, 1), "supervised_tokens_per_s": round(supervised / seconds, 1),
            "tokens_per_cpu_s": round(tokens / cpu, 1), "seconds_per_step": round(seconds / len(steps), 3),
            "timed_tokens": tokens}


def bench_hf_trainer(cfg: dict, rows: list[dict], steps: int, warmup: int, work: Path) -> dict:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    torch.manual_seed(cfg["seed"])
    model, tokenizer = T.load_base(cfg["model"]["name"])
    model = T.add_lora(model, cfg["lora"])
    features = []
    for row in rows:
        ids, labels = T.encode(tokenizer, row["messages"])
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=T.IGNORE)
    counts: list[tuple[int, int]] = []  # (tokens, supervised) per batch, in step order (no workers)

    def collate(batch):
        out = pad(batch)
        counts.append((int(out["attention_mask"].sum()), int((out["labels"][:, 1:] != T.IGNORE).sum())))
        return out

    times: list[tuple[float, float]] = []  # (wall, cpu) seconds per step

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            times.append((time.perf_counter() - self.started[0], time.process_time() - self.started[1]))

    tc = cfg["train"]
    args = TrainingArguments(
        output_dir=str(work / "hf"), per_device_train_batch_size=tc["batch_size"], gradient_accumulation_steps=1,
        max_steps=steps + warmup, learning_rate=tc["lr"], warmup_steps=tc["warmup_steps"],
        lr_scheduler_type="cosine", max_grad_norm=tc["grad_clip"], optim="adamw_torch",
        save_strategy="no", eval_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
        dataloader_num_workers=0, remove_unused_columns=False, seed=cfg["seed"],
    )
    Trainer(model=model, args=args, train_dataset=features, data_collator=collate, callbacks=[Clock()]).train()
    return _rates([(*c, *t) for c, t in zip(counts[warmup:], times[warmup:])])


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m finetune.bench_trainer", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="finetune/configs/default.toml", help="recipe for model and LoRA")
    parser.add_argument("--data", help="JSONL (default: the recipe's training file)")
    parser.add_argument("--steps", type=_positive, default=8, help="timed optimizer steps per trainer")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-size", type=_positive, default=4)
    parser.add_argument("--seq-len", type=_positive, default=256)
    args = parser.parse_args(argv)

    cfg = T.load_config(args.config)
    cfg["data"].update(train=args.data or cfg["data"]["train"], valid=None, max_seq_len=args.seq_len,
                       mix={"default": {"repeat": 1.0}})
    # batch_tokens=0: both trainers get exactly --batch-size examples a step, whatever the recipe caps
    cfg["train"].update(batch_size=args.batch_size, batch_tokens=0, grad_accum=1, eval_every=0, eval_batches=0,
                        ckpt_every=10**9, warmup_steps=1)
    _, tokenizer = T.load_base(cfg["model"]["name"])
    n = (args.steps + args.warmup) * args.batch_size
    rows = pick_examples(tokenizer, T.read_jsonl(cfg["data"]["train"]), n, args.seq_len)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg["data"]["train"] = str(work / "data.jsonl")
        ours = bench_ours(cfg, args.steps, args.warmup, work)
        hf = bench_hf_trainer(cfg, rows, args.steps, args.warmup, work)
    result = {
        "batch": f"{args.batch_size}x{int(0.8 * args.seq_len)}-{args.seq_len} tokens",
        "lora": {k: cfg["lora"][k] for k in ("r", "alpha", "target_modules")},
        "timed_steps": args.steps, "threads": torch.get_num_threads(),
        "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
        "ours": ours, "hf_trainer": hf,
        "ratio_tokens_per_s": round(ours["tokens_per_s"] / hf["tokens_per_s"], 3),
        # CPU time per token: less sensitive to other jobs on a shared machine (with 1 thread, the fairest figure)
        "ratio_tokens_per_cpu_s": round(ours["tokens_per_cpu_s"] / hf["tokens_per_cpu_s"], 3),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
