"""Turn a shipped LoRA adapter into a GGUF that llama.cpp runs, once, cached.

The repository ships only a small adapter per tuned model,
``data/adapters/<name>/{adapter_model.safetensors, adapter_config.json, recipe.json}``;
the runnable file is base GGUF + LoRA delta, built on first use:

    python -m assistant.build_model data/adapters/<name> [--base smollm2-135m-instruct] [--qtype Q8_0]

prints the path of the cached GGUF (``<cache>/models/<name>-<folder hash>-<type>-<hash>.gguf``;
older builds of the same adapter folder and type are removed).

How: every metadata pair and tensor of the base GGUF is copied; each tensor the
adapter touches is dequantized, gets ``scale * B @ A`` added, and is quantized
again. Modified tensors default to Q8_0 even on a Q4_1 base: the dequantized
base sits exactly on its Q4 grid, so re-quantizing base + delta to Q4 rounds a
LoRA delta smaller than half a Q4 step (most of them) straight back to the base.
Q8_0's finer grid keeps it; the cost is a slower model (llama-bench here: Q4_1
~114 tok/s, Q8_0 ~93 tok/s).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from .models import ModelError, embedded_gguf_path, resolve
from .paths import cache_home, file_key, prune_cache

BUILD_VERSION = 2  # bump when the output of build_gguf changes: old cache entries are not reused

HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_LORA_KEY = re.compile(r"layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.lora_([AB])\.weight$")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Types the modified tensors can be written in (what gguf-py can quantize to).
QTYPES = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "F16", "BF16", "F32")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's convert_hf_to_gguf.py reorders q/k rows for its RoPE layout and
    # transformers reverses it on load, so a delta computed on the HF side must be
    # reordered the same way before it is added to the GGUF tensor.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def lora_deltas(adapter_dir: Path, n_head: int, n_head_kv: int, permute_qk: bool = True) -> dict[str, np.ndarray]:
    """GGUF tensor name -> the float32 delta the adapter adds to it."""
    config = _read_json(adapter_dir / "adapter_config.json")
    unsupported = [k for k in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save", "fan_in_fan_out")
                   if config.get(k)]
    if unsupported or config.get("bias", "none") != "none":
        raise ModelError(f"{adapter_dir}: adapter options not supported here: {unsupported or ['bias']}")
    try:
        r, alpha = int(config["r"]), float(config["lora_alpha"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{adapter_dir / 'adapter_config.json'}: no usable r and lora_alpha ({exc})") from None
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r

    pairs: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, value in _read_tensors(adapter_dir / "adapter_model.safetensors").items():
        m = _LORA_KEY.search(key)
        if m is None:
            raise ModelError(f"{adapter_dir}: cannot place adapter tensor {key} in a llama GGUF")
        pairs.setdefault((int(m[1]), m[2]), {})[m[3]] = value.astype(np.float32)
    deltas = {}
    for (layer, module), ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ModelError(f"{adapter_dir}: layer {layer} {module} has lora_{''.join(ab)} without its pair")
        delta = scale * (ab["B"] @ ab["A"])
        if permute_qk and module == "self_attn.q_proj":
            delta = _permute(delta, n_head)
        elif permute_qk and module == "self_attn.k_proj":
            delta = _permute(delta, n_head_kv)
        deltas[f"blk.{layer}.{HF_TO_GGUF[module]}.weight"] = delta
    return deltas


def build_gguf(base_gguf: Path, adapter_dir: Path, out: Path, qtype: str | None = "Q8_0",
               permute_qk: bool = True) -> Path:
    """Write base + adapter to `out` (atomically). qtype: type of modified tensors; None keeps each one's own."""
    import gguf
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize, quantize

    reader = GGUFReader(base_gguf)

    def field(key: str):
        return reader.fields[key].contents() if key in reader.fields else None

    arch = field("general.architecture")
    if arch != "llama":  # the q/k permutation and the tensor names are llama's
        raise ModelError(f"{base_gguf}: only llama GGUFs are supported, not {arch}")
    deltas = lora_deltas(Path(adapter_dir), field("llama.attention.head_count"),
                         field("llama.attention.head_count_kv"), permute_qk)
    target = GGMLQuantizationType[qtype] if qtype else None

    tensors = {}  # name -> (data, type): the base's own bytes unless modified
    for t in reader.tensors:
        data, ttype = t.data, t.tensor_type
        if t.name in deltas:
            weight = dequantize(t.data, t.tensor_type)
            if weight.shape != deltas[t.name].shape:
                raise ModelError(f"adapter shape {deltas[t.name].shape} does not fit {t.name} {weight.shape}")
            ttype = target or t.tensor_type
            data = quantize(weight + deltas.pop(t.name), ttype)
        tensors[t.name] = (data, ttype)
    if deltas:
        raise ModelError(f"{adapter_dir}: tensors missing from {base_gguf.name}: {sorted(deltas)[:3]}")

    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot write the built model to {out.parent}: {exc.strerror} "
                         "(set XDG_CACHE_HOME to a writable folder)") from exc
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        writer = GGUFWriter(tmp, arch, endianess=reader.endianess)
        for f in reader.fields.values():
            if f.name == gguf.Keys.General.ARCHITECTURE or f.name.startswith("GGUF."):
                continue  # written by GGUFWriter itself
            sub_type = f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None
            value = f.contents()
            if f.name == gguf.Keys.General.FILE_TYPE and target is not None:
                value = _file_type(target, value)  # what `assistant models` reports as the quantization
            writer.add_key_value(f.name, value, f.types[0], sub_type=sub_type)
        for name, (data, ttype) in tensors.items():
            writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, ttype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for data, _ in tensors.values():
            writer.write_tensor_data(data)
        writer.close()
        with tmp.open("rb") as f:  # on disk before it takes the final name: a crash leaves no torn model
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        raise ModelError(f"cannot write the built model to {out}: {exc.strerror}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _file_type(qtype, base_value: int) -> int:
    """The GGUF file type of a model whose modified (linear) tensors are `qtype`: the base's
    was copied, so a Q4_1 base built with Q8_0 weights still called itself Q4_1."""
    import gguf

    name = "ALL_F32" if qtype.name == "F32" else f"MOSTLY_{qtype.name}"
    return int(gguf.LlamaFileType[name]) if name in gguf.LlamaFileType.__members__ else base_value


def _read_json(path: Path) -> dict:
    """An adapter's JSON file, or a ModelError naming it: a damaged adapter (a download or
    a copy cut short) is the user's file to fix, not a traceback."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable ({exc})") from None
    if not isinstance(value, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return value


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({exc}); copy the adapter again") from None


def base_for(adapter_dir: Path) -> Path:
    """The base GGUF an adapter was trained on (recipe.json's base_model), else the embedded one."""
    recipe = adapter_dir / "recipe.json"
    name = _read_json(recipe).get("base_model") if recipe.is_file() else None
    if not name:
        return embedded_gguf_path()
    spec = resolve(name)
    if spec.kind != "gguf" or spec.path is None:
        raise ModelError(f"{adapter_dir} was trained on {name}, not a GGUF model: nothing to build on")
    return spec.path


def _base_path(base: str | Path) -> Path:
    spec = resolve(str(base))  # a model name or a .gguf path
    if spec.kind != "gguf" or spec.path is None:
        raise ModelError(f"{base} is not a GGUF model")
    return spec.path


def built_path(adapter_dir: Path, base: Path, qtype: str | None = "Q8_0") -> Path:
    h = hashlib.sha256()
    for name in ADAPTER_FILES:
        h.update(name.encode())
        h.update((adapter_dir / name).read_bytes())
    # the base by path, size and time (file_key): hashing 100 MB on every start would cost more than it saves
    h.update(f"{file_key(base)}:{qtype}:{BUILD_VERSION}".encode())
    # The stem names one adapter folder and type; _prune keeps one build per stem.
    where = hashlib.sha256(str(adapter_dir.resolve()).encode()).hexdigest()[:8]
    return cache_home() / "models" / f"{adapter_dir.resolve().name}-{where}-{qtype or 'same'}-{h.hexdigest()[:16]}.gguf"


def ensure_built(adapter_dir: str | Path, base: str | Path | None = None, qtype: str | None = "Q8_0") -> Path:
    """Path of the GGUF for this adapter, building it on the first call (a few seconds)."""
    adapter_dir = Path(adapter_dir)
    missing = [n for n in ADAPTER_FILES if not (adapter_dir / n).is_file()]
    if missing:
        raise ModelError(f"{adapter_dir} is not an adapter directory (missing {', '.join(missing)})")
    base_path = _base_path(base) if base else base_for(adapter_dir)
    out = built_path(adapter_dir, base_path, qtype)
    done = out.with_name(out.name + ".size")  # written last: a file without it, or of another size, is rebuilt
    if not (out.is_file() and done.is_file() and done.read_text().strip() == str(out.stat().st_size)):
        build_gguf(base_path, adapter_dir, out, qtype)
        try:
            done.write_text(str(out.stat().st_size))
        except OSError as exc:
            raise ModelError(f"cannot write to the model cache {out.parent}: {exc.strerror}") from exc
        _prune(out)
    return out


def _prune(current: Path) -> None:
    """Earlier builds of the same adapter (another base or version), and files left by killed
    builds; with each earlier build, its dequantized copy (~0.5 GB, made when the transformers
    backend loaded it), which is named after that build and so never pruned as its own."""
    stem = re.escape(current.name.rsplit("-", 1)[0])  # adapter name, its folder's hash and the type
    name = re.escape(current.name.rsplit("-", 3)[0])  # the adapter name alone: the naming before stems
    stale = re.compile(rf"^(?:{stem}|{name})-[0-9a-f]{{16}}\.gguf(?:\.size)?$")
    earlier = [p.name.removesuffix(".gguf") for p in current.parent.iterdir()
               if p.name != current.name and p.suffix == ".gguf" and stale.match(p.name)]
    prune_cache(current.parent, {current.name, current.name + ".size"}, stale=stale,
                left_behind=re.compile(rf"^\.(?:{stem}|{name})-[0-9a-f]{{16}}\.gguf\.(\d+)\.tmp$"))
    dequantized = cache_home() / "dequantized"
    if earlier and dequantized.is_dir():
        names = "|".join(map(re.escape, earlier))
        prune_cache(dequantized, set(), stale=re.compile(rf"^(?:{names})-[0-9a-f]{{8}}-[0-9a-f]{{16}}$"),
                    left_behind=re.compile(rf"^(?:{names})-[0-9a-f]{{8}}-[0-9a-f]{{16}}\.tmp(\d+)$"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m assistant.build_model", description=__doc__.split("\n")[0])
    parser.add_argument("adapter", help="adapter directory (adapter_model.safetensors + adapter_config.json)")
    parser.add_argument("--base", help="base GGUF file (default: recipe.json's base model, else the embedded one)")
    parser.add_argument("--qtype", default="Q8_0", type=str.upper, choices=QTYPES + ("SAME",),
                        help="type of the modified tensors; 'same' keeps the base's (default Q8_0: smaller "
                             "types round most of a LoRA delta away)")
    parser.add_argument("--out", help="write here instead of the cache")
    args = parser.parse_args(argv)
    qtype = None if args.qtype == "SAME" else args.qtype
    adapter = Path(args.adapter)
    try:
        if args.out:
            print(build_gguf(_base_path(args.base) if args.base else base_for(adapter), adapter, Path(args.out), qtype))
        else:
            print(ensure_built(adapter, args.base, qtype))
    except ModelError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
