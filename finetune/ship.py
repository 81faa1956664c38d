"""Copy a trained adapter into data/adapters/<name>, where the runtime finds it.

    python -m finetune.ship runs/health-v3 --name health-135m

The adapter is stored in float16 (half the size; the runtime merges it in
float32, and the merged weights are re-quantized to 8 bits anyway) together
with the run's recipe.json, so the shipped delta says how it was made.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from safetensors.numpy import load_file, save_file

from assistant.paths import DATA_DIR

from .sources import LICENCES

FILES = ("adapter_config.json", "recipe.json")
# One folder under data/adapters: "", "." or "a/b" would put the adapter in place of the
# adapters folder itself (deleting every other one) or outside it.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _check(final: Path) -> dict:
    """The run's recipe, once the adapter is known to be complete and buildable into the GGUF
    the runtime loads: a broken default model would stop the app at every start."""
    from assistant.build_model import base_for, lora_deltas
    from assistant.models import ModelError

    missing = [f for f in ("adapter_model.safetensors", *FILES) if not (final / f).is_file()]
    if missing:
        raise SystemExit(f"{final} is not a finished run's adapter (missing {', '.join(missing)}; did the run finish?)")
    try:
        recipe = json.loads((final / "recipe.json").read_text())
        base_for(final)
        lora_deltas(final, n_head=1, n_head_kv=1, permute_qk=False)
    except (ModelError, ValueError, KeyError) as exc:
        raise SystemExit(f"{final}: cannot be built into a runnable model: {exc}") from None
    return recipe


def _sources(recipe: dict) -> tuple[list[str], int]:
    """Every training source of the adapter over all its stages, and how many stages did not
    record theirs (adapters trained before the trainer kept them)."""
    found: set[str] = set()
    unrecorded = 0
    for stage in _stages(recipe):
        names = set((stage.get("data") or {}).get("mix_rows_per_source") or stage.get("sources") or [])
        earlier = Path(stage.get("adapter") or "") / "recipe.json"
        if not names and stage.get("adapter") and earlier.is_file():  # the stage's run is still here
            names = set((json.loads(earlier.read_text()).get("data") or {}).get("mix_rows_per_source") or [])
        found |= names
        unrecorded += not names
    return sorted(found), unrecorded


def ship(run: Path, name: str, dest_root: Path = DATA_DIR / "adapters", allow_non_commercial: bool = False) -> Path:
    if not _NAME.fullmatch(name) or ".." in name:
        raise SystemExit(f"--name {name!r}: an adapter's name is one folder name (letters, digits, '.', '_', '-'), "
                         "such as health-135m")
    final = run / "final"
    recipe = _check(final)
    sources, unrecorded = _sources(recipe)
    if unrecorded:
        print(f"warning: {unrecorded} earlier stage(s) of {final} did not record their training sources; "
              "their licences are not checked", file=sys.stderr)
    licences = {src: LICENCES.get(src, "unknown licence") for src in sources}
    restricted = [src for src, lic in licences.items() if "NC" in lic or lic == "unknown licence"]
    if restricted and not allow_non_commercial:
        raise SystemExit(f"{final} was trained on {', '.join(f'{s} ({licences[s]})' for s in restricted)}: "
                         "not for a shipped model (pass --allow-non-commercial for a private build)")
    dest = dest_root / name
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {k: v.astype("float16") for k, v in load_file(str(final / "adapter_model.safetensors")).items()}
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    for f in FILES:
        shutil.copy2(final / f, tmp / f)
    # PEFT records where the base was loaded from (a local cache path); name it instead.
    config = json.loads((tmp / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = recipe.get("base_model", config.get("base_model_name_or_path"))
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    stages = _stages(recipe)
    (tmp / "README.md").write_text(
        f"# {name}\n\nA LoRA adapter for SmolLM2-135M-Instruct (Apache-2.0), trained by `finetune/train.py` "
        f"in {len(stages)} stage(s), each continuing the one before ({_describe(stages)}), on "
        f"{'; '.join(f'{src} ({lic})' for src, lic in licences.items())}. `recipe.json` holds the last stage's full "
        "config and data, and `continued_from` the earlier ones; `finetune/RESULTS.md` has the evaluation. "
        "Stored in float16.\n"
    )
    # The shipped adapter is replaced only once the new one is complete, and comes back if
    # the swap fails.
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    try:
        tmp.rename(dest)
    except OSError:
        if old.exists():
            old.rename(dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
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
    ap.add_argument("--allow-non-commercial", action="store_true",
                    help="ship an adapter trained on non-commercial data (DialogSum), for a private build")
    args = ap.parse_args(argv)
    dest = ship(args.run, args.name, allow_non_commercial=args.allow_non_commercial)
    size = sum(p.stat().st_size for p in dest.iterdir())
    print(f"shipped {dest} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
