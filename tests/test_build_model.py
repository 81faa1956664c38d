"""Base GGUF + LoRA adapter -> GGUF: llama.cpp must compute what transformers + PEFT compute."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from assistant import build_model as bm
from assistant import models
from assistant.models import embedded_gguf_path

LAYERS = [3, 4]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _llama_logits(path, ids: list[int]) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=128, logits_all=True, n_threads=2, verbose=False)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random adapter on the real embedded model, and the logits transformers + PEFT give with it."""
    from peft import LoraConfig, get_peft_model

    from finetune.train import load_base

    work = tmp_path_factory.mktemp("build")
    torch.manual_seed(0)
    model, tokenizer = load_base("smollm2-135m-instruct")
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "down_proj"],
                        layers_to_transform=LAYERS)
    peft = get_peft_model(model, config).eval()
    with torch.no_grad():  # big enough to move the logits well beyond llama.cpp's own Q4/Q8 noise
        for name, p in peft.named_parameters():
            if "lora_A" in name:
                p.normal_(0, p.shape[1] ** -0.5)
            elif "lora_B" in name:
                p.normal_(0, 0.3)
    adapter = work / "tiny-adapter"
    peft.save_pretrained(adapter)
    (adapter / "recipe.json").write_text(json.dumps({"base_model": "smollm2-135m-instruct"}))
    messages = [{"role": "system", "content": "You are a careful health assistant."},
                {"role": "user", "content": "What are the common symptoms of iron deficiency anaemia?"}]
    ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))
    with torch.no_grad():
        hf_tuned = peft(input_ids=torch.tensor([ids])).logits[0].numpy()
        with peft.disable_adapter():
            hf_base = peft(input_ids=torch.tensor([ids])).logits[0].numpy()
    cache = work / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache))
        built = bm.ensure_built(adapter)
    return {"work": work, "adapter": adapter, "ids": ids, "hf_tuned": hf_tuned, "hf_base": hf_base,
            "built": built, "cache": cache, "llama_base": _llama_logits(embedded_gguf_path(), ids)}


def test_permutation_inverts_what_transformers_undoes():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = np.random.default_rng(0).normal(size=(576, 16)).astype(np.float32)
    undo = LlamaTensorProcessor()._reverse_permute_weights
    np.testing.assert_array_equal(undo(bm._permute(w, 9), 9, 9), w)
    np.testing.assert_array_equal(undo(bm._permute(w[:192], 3), 9, 3), w[:192])


def test_adapter_tensors_map_to_gguf_names(setup):
    deltas = bm.lora_deltas(setup["adapter"], 9, 3)
    assert sorted(deltas) == sorted(f"blk.{i}.{n}.weight" for i in LAYERS for n in ("attn_q", "attn_k", "ffn_down"))
    assert deltas["blk.3.attn_k.weight"].shape == (192, 576) and deltas["blk.3.ffn_down.weight"].shape == (576, 1536)


def test_llama_cpp_agrees_with_transformers_peft(setup):
    hf_tuned, hf_base = setup["hf_tuned"], setup["hf_base"]
    tuned = _llama_logits(setup["built"], setup["ids"])
    # what the adapter changes, seen by each runtime; the raw logits are dominated by the base
    agreement = _corr(tuned - setup["llama_base"], hf_tuned - hf_base)
    assert np.sqrt(((hf_tuned - hf_base) ** 2).mean()) > 0.5  # the adapter really moves the logits
    assert agreement > 0.9
    assert (tuned.argmax(-1) == hf_tuned.argmax(-1)).mean() >= 0.9

    # the same build without the q/k row permutation: clearly worse, so the check above can fail
    wrong = bm.build_gguf(embedded_gguf_path(), setup["adapter"], setup["work"] / "unpermuted.gguf",
                          permute_qk=False)
    wrong_agreement = _corr(_llama_logits(wrong, setup["ids"]) - setup["llama_base"], hf_tuned - hf_base)
    assert wrong_agreement < 0.75 and agreement - wrong_agreement > 0.25, (agreement, wrong_agreement)


def test_built_gguf_keeps_metadata_and_untouched_tensors(setup):
    from gguf import GGUFReader

    base, built = GGUFReader(embedded_gguf_path()), GGUFReader(setup["built"])
    fields = {k: f.contents() for k, f in built.fields.items() if not k.startswith("GGUF.")}
    assert fields.pop("general.file_type") == 7  # Q8_0 weights: the base's Q4_1 (3) no longer says what it is
    assert {k: f.contents() for k, f in base.fields.items()
            if not k.startswith("GGUF.") and k != "general.file_type"} == fields
    assert models.info(models.resolve(str(setup["built"]))).quantization == "Q8_0"
    changed = {f"blk.{i}.{n}.weight" for i in LAYERS for n in ("attn_q", "attn_k", "ffn_down")}
    for a, b in zip(base.tensors, built.tensors):
        assert a.name == b.name and list(a.shape) == list(b.shape)
        if a.name in changed:
            assert b.tensor_type.name == "Q8_0"
        else:
            assert a.tensor_type == b.tensor_type and np.array_equal(a.data, b.data)


def test_cache_builds_once_per_adapter(setup, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(setup["cache"]))
    built = setup["built"]
    assert built.parent == setup["cache"] / "health-assistant" / "models"
    assert built.name.startswith("tiny-adapter-") and built.suffix == ".gguf"
    # no temporary file left behind; the size file marks the build complete
    assert sorted(p.name for p in built.parent.iterdir()) == [built.name, built.name + ".size"]

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(bm, "build_gguf", no_rebuild)
    assert bm.ensure_built(setup["adapter"]) == built

    changed = setup["work"] / "tiny-adapter-2"
    shutil.copytree(setup["adapter"], changed)
    config = json.loads((changed / "adapter_config.json").read_text())
    (changed / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 8}))
    assert bm.built_path(changed, embedded_gguf_path()) != bm.built_path(setup["adapter"], embedded_gguf_path())
    with pytest.raises(AssertionError, match="rebuilt"):
        bm.ensure_built(changed)


def test_a_torn_or_stale_build_is_rebuilt_and_old_ones_are_pruned(setup, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(setup["cache"]))
    built = bm.ensure_built(setup["adapter"])
    whole = built.read_bytes()
    models = built.parent
    stem = built.name.rsplit("-", 1)[0]
    stale = models / f"{stem}-0123456789abcdef.gguf"  # the same adapter on an earlier base
    stale.write_bytes(b"old")
    other = models / "tiny-adapter-2-0123abcd-Q8_0-0123456789abcdef.gguf"  # another adapter: kept
    other.write_bytes(b"other")
    same_name = models / "tiny-adapter-ffffffff-Q8_0-0123456789abcdef.gguf"  # a folder of that name elsewhere
    same_name.write_bytes(b"elsewhere")
    legacy = models / "tiny-adapter-fedcba9876543210.gguf"  # the naming before folder and type were in it
    legacy.write_bytes(b"legacy")
    dead = models / f".{built.name}.999999999.tmp"  # left by a killed build
    dead.write_bytes(b"partial")
    # dequantized copies, as the transformers backend makes of a build: named after it
    dequantized = setup["cache"] / "health-assistant" / "dequantized"
    copies = {p: dequantized / f"{p.stem}-0a1b2c3d-0123456789abcdef" for p in (stale, other, built)}
    for folder in copies.values():
        folder.mkdir(parents=True, exist_ok=True)
    built.write_bytes(whole[: len(whole) // 2])  # torn by a crash
    assert bm.ensure_built(setup["adapter"]) == built
    assert built.read_bytes() == whole
    assert not stale.exists() and not dead.exists() and not legacy.exists()
    assert other.exists() and same_name.exists()
    assert not copies[stale].exists()  # ~0.5 GB each: gone with its build
    assert copies[other].exists() and copies[built].exists()


def test_rejects_what_it_cannot_build(tmp_path):
    with pytest.raises(bm.ModelError, match="not an adapter directory"):
        bm.ensure_built(tmp_path)


def test_a_damaged_adapter_is_named_not_a_traceback(setup, tmp_path, capsys):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(setup["adapter"], damaged)
    weights = damaged / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    with pytest.raises(bm.ModelError, match=f"{weights}: not a readable safetensors file"):
        bm.lora_deltas(damaged, 9, 3)
    shutil.copy(setup["adapter"] / "adapter_model.safetensors", weights)
    (damaged / "adapter_config.json").write_text("{bad")
    with pytest.raises(bm.ModelError, match=r"adapter_config\.json: unreadable"):
        bm.lora_deltas(damaged, 9, 3)
    (damaged / "adapter_config.json").write_text('{"r": 8}')
    with pytest.raises(bm.ModelError, match="no usable r and lora_alpha"):
        bm.lora_deltas(damaged, 9, 3)
    with pytest.raises(SystemExit, match=f"error: {tmp_path} is not an adapter directory"):
        bm.main([str(tmp_path)])
