"""Shipping a trained adapter into data/adapters."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from finetune.ship import ship

PREFIX = "base_model.model.model.layers.0.self_attn.q_proj"


def _run(tmp_path, recipe, tensors=None, config=None):
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    tensors = tensors if tensors is not None else {
        f"{PREFIX}.lora_A.weight": np.full((4, 8), 0.1, dtype=np.float32),
        f"{PREFIX}.lora_B.weight": np.full((8, 4), 0.1, dtype=np.float32)}
    save_file(tensors, str(final / "adapter_model.safetensors"))
    (final / "adapter_config.json").write_text(json.dumps(config or {
        "r": 4, "lora_alpha": 8, "base_model_name_or_path": "/some/cache/dir"}))
    (final / "recipe.json").write_text(json.dumps(recipe))
    return final.parent


def test_ship_stores_float16_names_the_base_lists_every_stage_and_its_licences(tmp_path):
    first = {"name": "x", "steps": 10, "tokens": 1000, "continued_from": None,
             "data": {"mix_rows_per_source": {"mts-dialog": 5, "pubmedqa": 1}}}
    second = {"name": "x", "steps": 20, "tokens": 2000, "adapter": "runs/a/final", "continued_from": first}
    recipe = {"name": "x", "base_model": "smollm2-135m-instruct", "steps": 30, "tokens": 3000,
              "continued_from": second, "data": {"mix_rows_per_source": {"meqsum": 3}}}
    adapters = tmp_path / "adapters"
    (adapters / "tuned").mkdir(parents=True)
    (adapters / "tuned" / "adapter_model.safetensors").write_text("the adapter shipped before")
    dest = ship(_run(tmp_path, recipe), "tuned", dest_root=adapters)

    tensors = load_file(str(dest / "adapter_model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {np.dtype(np.float16)}
    assert json.loads((dest / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2-135m-instruct"
    readme = (dest / "README.md").read_text()
    assert "in 3 stage(s)" in readme and "10 steps, 1,000 tokens; 20 steps, 2,000 tokens; 30 steps, 3,000 tokens" in readme
    assert "meqsum (CC BY 4.0); mts-dialog (CC BY 4.0); pubmedqa (MIT)" in readme
    assert sorted(p.name for p in adapters.iterdir()) == ["tuned"]  # no .tmp or .old left behind


def test_ship_refuses_an_unfinished_or_unbuildable_run_and_keeps_what_was_shipped(tmp_path):
    adapters = tmp_path / "adapters"
    (adapters / "tuned").mkdir(parents=True)
    (adapters / "tuned" / "kept").write_text("the adapter shipped before")
    (tmp_path / "run").mkdir()
    with pytest.raises(SystemExit, match=r"not a finished run's adapter \(missing adapter_model.safetensors"):
        ship(tmp_path / "run", "tuned", dest_root=adapters)
    half = {f"{PREFIX}.lora_A.weight": np.zeros((4, 8), dtype=np.float32)}
    with pytest.raises(SystemExit, match="cannot be built into a runnable model: .*lora_A without its pair"):
        ship(_run(tmp_path / "half", {"base_model": "smollm2-135m-instruct"}, tensors=half), "tuned", dest_root=adapters)
    dora = {"r": 4, "lora_alpha": 8, "use_dora": True}
    with pytest.raises(SystemExit, match="not supported here: \\['use_dora'\\]"):
        ship(_run(tmp_path / "dora", {"base_model": "smollm2-135m-instruct"}, config=dora), "tuned", dest_root=adapters)
    assert (adapters / "tuned" / "kept").read_text() == "the adapter shipped before"


def test_an_earlier_stage_on_non_commercial_data_is_caught_too(tmp_path, capsys):
    first = {"name": "x", "steps": 5, "tokens": 10, "sources": ["dialogsum", "mts-dialog"], "continued_from": None}
    recipe = {"base_model": "smollm2-135m-instruct", "continued_from": first,
              "data": {"mix_rows_per_source": {"mts-dialog": 9}}}
    with pytest.raises(SystemExit, match="dialogsum"):
        ship(_run(tmp_path, recipe), "tuned", dest_root=tmp_path / "adapters")
    earlier = tmp_path / "earlier-run"
    earlier.mkdir()
    (earlier / "recipe.json").write_text(json.dumps({"data": {"mix_rows_per_source": {"dialogsum": 3}}}))
    from_run = {"base_model": "smollm2-135m-instruct", "data": {"mix_rows_per_source": {"mts-dialog": 9}},
                "continued_from": {"name": "old", "adapter": str(earlier), "continued_from": None}}
    with pytest.raises(SystemExit, match="dialogsum"):  # the earlier stage's own recipe is read
        ship(_run(tmp_path / "from-run", from_run), "tuned", dest_root=tmp_path / "adapters")
    unknown = {"base_model": "smollm2-135m-instruct", "continued_from": {"name": "old", "continued_from": None},
               "data": {"mix_rows_per_source": {"mts-dialog": 9}}}
    ship(_run(tmp_path / "old", unknown), "tuned", dest_root=tmp_path / "adapters")
    assert "1 earlier stage(s)" in capsys.readouterr().err


def test_an_adapter_trained_on_non_commercial_data_is_not_shipped_by_default(tmp_path):
    recipe = {"base_model": "smollm2-135m-instruct", "data": {"mix_rows_per_source": {"dialogsum": 9}}}
    run = _run(tmp_path, recipe)
    with pytest.raises(SystemExit, match=r"dialogsum \(CC BY-NC-SA 4.0\): not for a shipped model"):
        ship(run, "tuned", dest_root=tmp_path / "adapters")
    dest = ship(run, "private", dest_root=tmp_path / "adapters", allow_non_commercial=True)
    assert "dialogsum (CC BY-NC-SA 4.0)" in (dest / "README.md").read_text()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../up", "-x"])
def test_a_name_that_is_not_one_folder_is_refused_before_anything_moves(tmp_path, name):
    adapters = tmp_path / "adapters"
    (adapters / "other").mkdir(parents=True)
    (adapters / "other" / "kept").write_text("another shipped adapter")
    run = _run(tmp_path, {"base_model": "smollm2-135m-instruct"})
    with pytest.raises(SystemExit, match="one folder name"):
        ship(run, name, dest_root=adapters)
    assert sorted(p.name for p in adapters.iterdir()) == ["other"]
    assert (adapters / "other" / "kept").read_text() == "another shipped adapter"
