"""Copy a trained adapter into data/adapters/<name>, where the runtime finds it.

    python -m finetune.ship runs/health-v3 --name health-135m

The adapter is stored in float16 (half the size; the runtime merges it in
float32, and the merged weights are re-quantized to 8 bits anyway) together
with the run's recipe.json, so the shipped delta says how it was made.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from safetensors.numpy import load_file, save_file

from assistant.paths import DATA_DIR

FILES = ("adapter_config.json", "recipe.json")


def ship(run: Path, name: str, dest_root: Path = DATA_DIR / "adapters") -> Path:
    final = run / "final"
    if not (final / "adapter_model.safetensors").is_file():
        raise SystemExit(f"{final} holds no trained adapter (did the run finish?)")
    dest = dest_root / name
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {k: v.astype("float16") for k, v in load_file(str(final / "adapter_model.safetensors")).items()}
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    for f in FILES:
        shutil.copy2(final / f, tmp / f)
    recipe = json.loads((tmp / "recipe.json").read_text())
    # PEFT records where the base was loaded from (a local cache path); name it instead.
    config = json.loads((tmp / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = recipe.get("base_model", config.get("base_model_name_or_path"))
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    stages = _stages(recipe)
    (tmp / "README.md").write_text(
        f"# {name}\n\nA LoRA adapter for SmolLM2-135M-Instruct (Apache-2.0), trained by `finetune/train.py` "
        f"in {len(stages)} stage(s), each continuing the one before ({_describe(stages)}), on MTS-Dialog, "
        "MedQuAD and MeQSum (CC BY 4.0) and PubMedQA (MIT). `recipe.json` holds the last stage's full "
        "config and data, and `continued_from` the earlier ones; `finetune/RESULTS.md` has the evaluation. "
        "Stored in float16.\n"
    )
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def _stages(recipe: dict) -> list[dict]:
    """The training stages behind an adapter, first to last."""
    stages = []
    while recipe:
        stages.append(recipe)
        recipe = recipe.get("continued_from")
    return stages[::-1]


def _describe(stages: list[dict]) -> str:
    return "; ".join(f"{s.get('steps')} steps, {s.get('tokens', 0):,} tokens" for s in stages)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--name", default="health-135m")
    args = ap.parse_args(argv)
    dest = ship(args.run, args.name)
    size = sum(p.stat().st_size for p in dest.iterdir())
    print(f"shipped {dest} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
