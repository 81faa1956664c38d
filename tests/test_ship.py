"""Shipping a trained adapter into data/adapters."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from finetune.ship import ship


def _run(tmp_path, recipe):
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    save_file({"base_model.model.layers.0.q_proj.lora_A.weight": np.full((4, 8), 0.1, dtype=np.float32)},
              str(final / "adapter_model.safetensors"))
    (final / "adapter_config.json").write_text(json.dumps({"r": 4, "base_model_name_or_path": "/some/cache/dir"}))
    (final / "recipe.json").write_text(json.dumps(recipe))
    return final.parent


def test_ship_stores_float16_names_the_base_and_lists_every_stage(tmp_path):
    first = {"name": "x", "steps": 10, "tokens": 1000, "continued_from": None}
    second = {"name": "x", "steps": 20, "tokens": 2000, "adapter": "runs/a/final", "continued_from": first}
    recipe = {"name": "x", "base_model": "smollm2-135m-instruct", "steps": 30, "tokens": 3000,
              "continued_from": second}
    dest = ship(_run(tmp_path, recipe), "tuned", dest_root=tmp_path / "adapters")

    tensors = load_file(str(dest / "adapter_model.safetensors"))
    assert [t.dtype for t in tensors.values()] == [np.float16]
    assert json.loads((dest / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2-135m-instruct"
    readme = (dest / "README.md").read_text()
    assert "in 3 stage(s)" in readme and "10 steps, 1,000 tokens; 20 steps, 2,000 tokens; 30 steps, 3,000 tokens" in readme
    assert not (tmp_path / "adapters" / "tuned.tmp").exists()


def test_ship_refuses_an_unfinished_run(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(SystemExit, match="holds no trained adapter"):
        ship(tmp_path / "run", "tuned", dest_root=tmp_path / "adapters")
