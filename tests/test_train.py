"""The LoRA trainer on a tiny random llama (real tokenizer and chat template)."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from finetune import train as T

REPO = Path(__file__).resolve().parent.parent
SYSTEM = {"role": "system", "content": "You are a careful health assistant."}


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from assistant.backends.hf import dequantized_cache_dir
    from assistant.models import resolve

    spec = resolve("smollm2-135m-instruct")
    cached = dequantized_cache_dir(spec)
    if (cached / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(cached)
    return AutoTokenizer.from_pretrained(spec.path.parent, gguf_file=spec.path.name)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    directory = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _example(i: int, source: str, words: int) -> dict:
    rng = random.Random(i)
    vocab = ["pain", "fever", "cough", "blood", "pressure", "daily", "doctor", "patient", "since", "week"]
    text = " ".join(rng.choice(vocab) for _ in range(words))
    return {"id": f"{source}/{i}", "task": "t", "source": source, "licence": "CC BY 4.0", "split": "train",
            "messages": [SYSTEM, {"role": "user", "content": f"Summarize: {text}"},
                         {"role": "assistant", "content": f"Answer {i}: {text[: words * 2]}"}],
            "reference": "", "meta": {}}


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    train = [_example(i, "alpha" if i % 3 else "beta", 5 + 7 * (i % 9)) for i in range(40)]
    train.append(_example(99, "alpha", 400))  # longer than max_seq_len: dropped and counted
    valid = [_example(100 + i, "alpha", 10 + i) for i in range(8)]
    for name, rows in (("train", train), ("valid", valid)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def _config(tiny_model_dir, data_dir, **train) -> dict:
    over = {"name": "tiny", "seed": 7, "model": {"name": str(tiny_model_dir)},
            "data": {"train": str(data_dir / "train.jsonl"), "valid": str(data_dir / "valid.jsonl"),
                     "max_seq_len": 200},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.1},  # dropout > 0: resume must restore the RNG
            "train": {"lr": 1e-2, "warmup_steps": 2, "max_steps": 6, "batch_size": 3, "grad_accum": 2,
                      "eval_every": 3, "eval_batches": 2, "ckpt_every": 2, "keep_ckpts": 2, **train}}
    return T.load_config(REPO / "finetune/configs/smoke.toml", over)


def test_configs_parse():
    for path in sorted((REPO / "finetune/configs").glob("*.toml")):
        cfg = T.load_config(path)
        assert cfg["lora"]["r"] > 0 and cfg["train"]["batch_size"] > 0, path
    with pytest.raises(ValueError, match="unknown config key train.lerning_rate"):
        T._merge(T.DEFAULTS, {"train": {"lerning_rate": 1.0}})


@pytest.mark.parametrize("toml, problem", [
    ('[train]\nmax_steps = "100"', "train.max_steps must be int, not '100'"),
    ('[train]\nlr = "2e-4"', "train.lr must be float, not '2e-4'"),
    ('model = "smollm2"', "model must be a table"),
    ('[train]\nckpt_every = 0', "train.ckpt_every must be at least 1, not 0"),
    ('[data.mix]\nalpha = { cap = 10, repaet = 3.0 }', "unknown config key data.mix.alpha.repaet"),
    ('[data.mix]\nalpha = { cap = 2.5 }', "data.mix.alpha.cap must be a whole number >= 0"),
    ('[data.mix]\nalpha = 3', "data.mix.alpha must be a table"),
    ('[data\nmix = 1', "not valid TOML"),
    ('[train]\ngrad_clip = 0.0', "train.grad_clip must be above 0, not 0.0"),
    ('[train]\nweight_decay = -0.5', "train.weight_decay must not be negative"),
    ('[train]\nbetas = [0.9]', "train.betas must be two numbers in"),
])
def test_recipe_mistakes_are_named_before_anything_loads(tmp_path, toml, problem):
    path = tmp_path / "bad.toml"
    path.write_text(toml + "\n")
    with pytest.raises(SystemExit, match=problem.replace("(", r"\(").replace(")", r"\)")):
        T.main(["--config", str(path), "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_a_default_mix_entry_may_cap_and_a_misspelt_source_is_an_error(tmp_path):
    path = tmp_path / "mix.toml"
    path.write_text("[data.mix]\ndefault = { cap = 10 }\n")
    assert T.load_config(path)["data"]["mix"]["default"] == {"cap": 10}
    rows = [{"source": "mts-dialog"}, {"source": "meqsum"}]
    with pytest.raises(SystemExit, match=r"sources the data does not have: \['mts_dialog'\]"):
        T.mix_sources(rows, {"mts_dialog": {"cap": 1}, "default": {"repeat": 0.0}}, seed=1)
    # leaving out a known source this data does not have is fine; a misspelt one is still an error
    assert len(T.mix_sources(rows, {"aci-bench": {"cap": 0, "repeat": 0.0}}, seed=1)) == 2
    with pytest.raises(SystemExit, match="dialogsun"):
        T.mix_sources(rows, {"dialogsun": {"cap": 0}}, seed=1)
    path.write_text('[train]\nmin_lr_ratio = -0.5\n')
    with pytest.raises(ValueError, match="min_lr_ratio must be between 0 and 1"):
        T.load_config(path)
    path.write_text('[data]\ntrain = []\n')
    with pytest.raises(ValueError, match="data.train must name at least one file"):
        T.load_config(path)


def test_bad_training_data_names_file_and_line(tmp_path):
    good = {"source": "a", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(good) + "\n{broken\n")
    with pytest.raises(SystemExit, match=f"{path}:2: malformed JSON"):
        T.read_jsonl(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "messages": good["messages"][:1]}) + "\n")
    with pytest.raises(SystemExit, match=f"{path}:2: field 'messages' must be a chat of a prompt and the assistant"):
        T.read_jsonl(path)
    no_content = [{"role": "user"}, good["messages"][1]]
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "messages": no_content}) + "\n")
    with pytest.raises(SystemExit, match=rf"{path}:2: field messages\[0\] must have a string 'role' and 'content'"):
        T.read_jsonl(path)
    path.write_bytes(json.dumps(good).encode() + b"\n" + b'{"source": "\xff"}\n')
    with pytest.raises(SystemExit, match=f"{path}:2: not valid UTF-8"):
        T.read_jsonl(path)
    with pytest.raises(SystemExit, match="missing.jsonl: cannot read the data"):
        T.read_jsonl(tmp_path / "missing.jsonl")


def test_labels_cover_exactly_the_answer_and_its_end_token(tokenizer):
    messages = [SYSTEM, {"role": "user", "content": "Is a fever of 38.5 C dangerous?"},
                {"role": "assistant", "content": "Usually not, in adults. Drink fluids and rest."}]
    ids, labels = T.encode(tokenizer, messages)
    assert len(ids) == len(labels)
    supervised = [t for t, lab in zip(ids, labels) if lab != T.IGNORE]
    assert supervised == [lab for lab in labels if lab != T.IGNORE]
    assert tokenizer.decode(supervised) == "Usually not, in adults. Drink fluids and rest.<|im_end|>"
    first = labels.index(next(lab for lab in labels if lab != T.IGNORE))
    assert tokenizer.decode(ids[:first]).endswith("<|im_start|>assistant\n")
    assert all(lab == T.IGNORE for lab in labels[:first])
    assert ids[-1] == T.end_of_turn_id(tokenizer)  # nothing after the stop token


def test_loss_at_labelled_positions_equals_full_head_loss(tiny_model_dir, tokenizer, data_dir):
    model, tok = T.load_base(str(tiny_model_dir))
    model = T.add_lora(model, {**T.DEFAULTS["lora"], "dropout": 0.0})
    rows = T.read_jsonl(data_dir / "train.jsonl")[:4]
    batch = T.collate([T.encode(tok, r["messages"]) for r in rows], tok.pad_token_id)
    n = int((batch["labels"][:, 1:] != T.IGNORE).sum())
    ours = T.SupervisedLoss(model)(**batch) / n
    reference = model(**batch).loss  # transformers: full LM head, mean over labelled tokens
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_batches_are_bucketed_seeded_and_complete():
    lengths = [random.Random(i).randint(5, 300) for i in range(200)]
    b0 = T.make_batches(lengths, 4, seed=1, epoch=0, bucket=8)
    assert b0 == T.make_batches(lengths, 4, seed=1, epoch=0, bucket=8)
    assert b0 != T.make_batches(lengths, 4, seed=1, epoch=1, bucket=8)
    assert sorted(i for b in b0 for i in b) == list(range(200))

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    unsorted = [list(range(k, min(k + 4, 200))) for k in range(0, 200, 4)]
    assert padding(b0) < padding(unsorted) / 3

    lengths[5] = 900  # longer than the token budget: a batch of its own
    capped = T.make_batches(lengths, 8, seed=1, epoch=0, bucket=8, batch_tokens=600)
    assert sorted(i for b in capped for i in b) == list(range(200))
    assert [5] in capped
    assert all(len(b) <= 8 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 600) for b in capped)
    stream = T.BatchStream([([0] * n, [0] * n) for n in lengths], 8, seed=1, bucket=8, batch_tokens=600)
    epochs = [T.make_batches(lengths, 8, 1, e, 8, 600) for e in range(3)]
    flat = [b for e in epochs for b in e]
    assert all(len(stream[g]) == len(flat[g]) for g in range(0, len(flat), 7))


def test_mix_caps_and_repeats():
    rows = [{"source": "a", "i": i} for i in range(10)] + [{"source": "b", "i": i} for i in range(10)]
    mixed = T.mix_sources(rows, {"a": {"repeat": 2.0, "cap": 4}, "default": {"repeat": 0.5}}, seed=3)
    a = [r["i"] for r in mixed if r["source"] == "a"]
    b = [r["i"] for r in mixed if r["source"] == "b"]
    assert len(a) == 8 and len(set(a)) == 4 and all(a.count(i) == 2 for i in set(a))
    assert len(b) == 5 and len(set(b)) == 5
    assert mixed == T.mix_sources(rows, {"a": {"repeat": 2.0, "cap": 4}, "default": {"repeat": 0.5}}, seed=3)


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "final" / "adapter_model.safetensors"))


def _losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [e["loss"] for e in lines if "loss" in e]


def test_resume_continues_exactly(tiny_model_dir, data_dir, tmp_path):
    cfg = _config(tiny_model_dir, data_dir)
    straight = T.train(cfg, tmp_path / "straight", progress=False)
    assert straight["step"] == 6 and straight["dropped_too_long"] == {"alpha": 1}

    split = tmp_path / "split"
    first = T.train(cfg, split, stop_after=3, progress=False)
    assert first["step"] == 3 and not (split / "final").exists()
    assert [p.name for p in sorted((split / "checkpoints").glob("step-*"))] == ["step-000002", "step-000003"]
    (split / "checkpoints" / ".tmp-step-000005").mkdir()  # a write cut short by a kill: never resumed from
    with pytest.raises(SystemExit, match="--resume"):
        T.train(cfg, split, progress=False)
    second = T.train(cfg, split, resume=True, progress=False)
    assert second["step"] == 6

    a, b = _adapter(tmp_path / "straight"), _adapter(split)
    assert a.keys() == b.keys() and len(a) == 2 * 7 * 2  # A and B, 7 modules, 2 layers
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert _losses(split) == pytest.approx(_losses(tmp_path / "straight"), rel=1e-5)
    assert len(_losses(split)) == 6  # the resumed run rewrote what came after its checkpoint
    assert [p.name for p in sorted((split / "checkpoints").glob("step-*"))] == ["step-000004", "step-000006"]
    finished = (split / "final" / "recipe.json").read_text()
    assert T.train(cfg, split, resume=True, progress=False)["step"] == 6  # a finished run stays as it is
    assert (split / "final" / "recipe.json").read_text() == finished and len(_losses(split)) == 6
    recipe = json.loads((split / "final" / "recipe.json").read_text())
    assert recipe["steps"] == 6 and recipe["base_model"] == str(tiny_model_dir)
    # killed between the last checkpoint and final/: resuming writes final/ from that checkpoint
    shutil.rmtree(split / "final")
    resumed = T.train(cfg, split, resume=True, progress=False)
    assert resumed["final"] == str(split / "final")
    assert json.loads((split / "final" / "recipe.json").read_text())["final_eval_loss"] == recipe["final_eval_loss"]
    for key, tensor in _adapter(split).items():
        torch.testing.assert_close(tensor, a[key], rtol=1e-5, atol=1e-6)
    # a changed recipe does not continue another's checkpoint, and says what changed
    changed = _config(tiny_model_dir, data_dir, lr=5e-3)
    with pytest.raises(SystemExit, match=r"the run changed \(recipe.train.lr: 0.01 -> 0.005\)"):
        T.train(changed, split, resume=True, progress=False)
    assert {"adapter_config.json", "adapter_model.safetensors", "recipe.json"} <= {
        p.name for p in (split / "final").iterdir()}


def test_a_run_restarted_before_its_first_checkpoint_keeps_the_old_log_aside(tiny_model_dir, data_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 9.0, "tokens": 10 ** 9}) + "\n")
    T.train(_config(tiny_model_dir, data_dir, max_steps=2), run, progress=False)
    recipe = json.loads((run / "final" / "recipe.json").read_text())
    assert recipe["tokens"] < 10 ** 9 and 9.0 not in _losses(run)
    assert "1000000000" in (run / "metrics.stopped.jsonl").read_text()


def test_continued_run_starts_from_the_given_adapter(tiny_model_dir, data_dir, tmp_path):
    first = tmp_path / "first"
    T.train(_config(tiny_model_dir, data_dir), first, progress=False)
    cfg = _config(tiny_model_dir, data_dir, lr=0.0, max_steps=1)  # lr 0: the weights stay as loaded
    cfg["model"]["init_adapter"] = str(first / "final")
    T.train(cfg, tmp_path / "second", progress=False)
    a, b = _adapter(first), _adapter(tmp_path / "second")
    assert any(t.abs().sum() > 0 for k, t in a.items() if "lora_B" in k)  # a fresh adapter's B is zero
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    recipe = json.loads((tmp_path / "second" / "final" / "recipe.json").read_text())
    assert recipe["continued_from"]["adapter"] == str(first / "final")
    assert recipe["continued_from"]["steps"] == 6 and recipe["continued_from"]["tokens"] > 0
    assert recipe["continued_from"]["sources"] == ["alpha", "beta"]  # for ship's licence check
    assert recipe["continued_from"]["continued_from"] is None

    # A third stage's recipe still tells the first stage, through the second's.
    cfg["model"]["init_adapter"] = str(tmp_path / "second" / "final")
    T.train(cfg, tmp_path / "stage3", progress=False)
    recipe = json.loads((tmp_path / "stage3" / "final" / "recipe.json").read_text())
    assert recipe["continued_from"]["adapter"] == str(tmp_path / "second" / "final")
    assert recipe["continued_from"]["continued_from"]["adapter"] == str(first / "final")

    cfg["lora"] = {**cfg["lora"], "r": 8}
    with pytest.raises(SystemExit, match="r=4 on .* the recipe r=8"):
        T.train(cfg, tmp_path / "third", progress=False)
    cfg["lora"] = {**cfg["lora"], "r": 4, "alpha": cfg["lora"]["alpha"] * 2}  # same shape, another scaling
    with pytest.raises(SystemExit, match="lora_alpha=.* the recipe alpha="):
        T.train(cfg, tmp_path / "third", progress=False)
    cfg["lora"] = {**cfg["lora"], "alpha": cfg["lora"]["alpha"] // 2}
    cfg["model"]["init_adapter"] = str(tmp_path)
    with pytest.raises(SystemExit, match="not a PEFT adapter directory"):
        T.train(cfg, tmp_path / "fourth", progress=False)


def test_cli_short_run(tiny_model_dir, data_dir, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(
        f'name = "cli"\n[model]\nname = "{tiny_model_dir}"\n'
        f'[data]\ntrain = "{data_dir / "train.jsonl"}"\nvalid = "{data_dir / "valid.jsonl"}"\nmax_seq_len = 200\n'
        '[data.mix]\nalpha = { repeat = 1.0, cap = 5 }\nbeta = { repeat = 2.0 }\n'
        '[train]\nbatch_size = 2\ngrad_accum = 1\neval_every = 1\neval_batches = 1\nckpt_every = 1\n')
    summary = T.main(["--config", str(config), "--limit", "9", "--max-steps", "2", "--out", str(tmp_path / "run"),
                      "--no-progress"])
    assert summary["step"] == 2 and summary["examples"] + sum(summary["dropped_too_long"].values()) == 9
    entries = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in entries if "eval_loss" in e] == [0, 1, 2]
    assert all(e["tokens"] > e["supervised_tokens"] > 0 for e in entries if "loss" in e)


def test_two_processes_train_as_one_with_twice_the_accumulation(tiny_model_dir, data_dir, tmp_path):
    """torchrun with two CPU processes (gloo): each takes every other micro-batch, so the
    run must match one process accumulating twice as many, step for step."""
    import subprocess
    import sys

    config = tmp_path / "two.toml"
    config.write_text(
        f'name = "two"\nseed = 7\n[model]\nname = "{tiny_model_dir}"\n'
        f'[data]\ntrain = "{data_dir / "train.jsonl"}"\nvalid = "{data_dir / "valid.jsonl"}"\nmax_seq_len = 200\n'
        '[lora]\nr = 4\nalpha = 8\n'
        '[train]\nlr = 1e-2\nwarmup_steps = 1\nmax_steps = 4\nbatch_size = 3\ngrad_accum = 2\n'
        'eval_every = 2\neval_batches = 2\nckpt_every = 2\n')
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "finetune.train", "--config", str(config), "--out", str(tmp_path / "two"), "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 steps of 3x4" in done.stderr  # two processes x two micro-batches per step
    assert done.stderr.count('"final"') == 1  # one summary: only the first process reports
    assert (done.stdout + done.stderr).count("step 4: eval loss") == 1

    one = T.load_config(config, {"train": {"grad_accum": 4}})
    T.train(one, tmp_path / "one", progress=False)
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), rel=1e-5)
    assert len(_losses(tmp_path / "two")) == 4  # one line per step, not one per process
    a, b = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
