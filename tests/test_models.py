"""Model resolution and description."""
from __future__ import annotations

import pytest

from assistant import models
from assistant.models import ModelError, resolve


def test_embedded_model_resolves_to_the_packaged_gguf():
    spec = resolve("smollm2-135m-instruct")
    assert spec.kind == "gguf" and spec.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_default_is_the_tuned_model_when_its_adapter_ships():
    shipped = (models.tuned_adapter_dir() / "adapter_config.json").is_file()
    assert models.DEFAULT_MODEL == (models.TUNED_NAME if shipped else models.EMBEDDED_NAME)
    assert [n for n, _ in models.available()][-1] == models.EMBEDDED_NAME


def test_tuned_model_without_its_adapter_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "tuned_adapter_dir", lambda: tmp_path / "missing")
    with pytest.raises(ModelError, match="not shipped"):
        resolve(models.TUNED_NAME)


def test_embedded_model_info():
    info = models.info(resolve("smollm2-135m-instruct"))
    assert info.quantization == "Q4_1"
    assert info.architecture == "llama" and info.layers == 30
    assert 134e6 < info.parameters < 135e6
    assert 90e6 < info.size_bytes < 110e6
    assert models.info(resolve("smollm2-135m-instruct")) == info  # served from the cache


def test_local_gguf_file(embedded_gguf):
    spec = resolve(str(embedded_gguf))
    assert spec.kind == "gguf" and spec.path == embedded_gguf


def test_local_hf_directory(tiny_llama_dir):
    spec = resolve(str(tiny_llama_dir))
    assert spec.kind == "hf"
    info = models.info(spec)
    assert info.layers == 2 and info.parameters > 1e6


def test_hub_id_is_recognised_without_network():
    spec = resolve("HuggingFaceTB/SmolLM2-360M-Instruct")
    assert spec.kind == "hf" and spec.hub_id == "HuggingFaceTB/SmolLM2-360M-Instruct" and spec.path is None


def test_unknown_name_lists_known_ones():
    with pytest.raises(ModelError, match="unknown model 'no-such-model'.*smollm2-135m-instruct"):
        resolve("no-such-model")


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        resolve(str(tmp_path / "missing.gguf"))


def test_corrupt_gguf_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="not a GGUF file"):
        resolve(str(bad))


def test_truncated_gguf_is_reported(tmp_path, embedded_gguf):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(embedded_gguf.read_bytes()[:4096])
    with pytest.raises(ModelError, match="not a readable GGUF"):
        models.info(resolve(str(cut)))


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve(str(tmp_path))


def test_adapter_must_be_a_peft_directory(tmp_path):
    with pytest.raises(ModelError, match="not a PEFT adapter"):
        resolve("smollm2-135m-instruct", adapter=tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelError, match="holds no adapter weights"):  # else PEFT would look on the hub
        resolve("smollm2-135m-instruct", adapter=tmp_path)


def test_a_mistyped_local_path_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ModelError, match="runs/my-checkpoint: no such file or directory"):
        resolve("runs/my-checkpoint")


def test_a_folder_of_ggufs_resolves_to_its_one_file_and_names_several(tmp_path):
    import shutil

    from assistant.models import embedded_gguf_path

    upper = tmp_path / "upper"
    upper.mkdir()
    shutil.copy(embedded_gguf_path(), upper / "SmolLM2.Q4_1.GGUF")  # as some tools name them
    spec = resolve(str(upper))
    assert spec.kind == "gguf" and spec.path == (upper / "SmolLM2.Q4_1.GGUF").resolve()
    (upper / "second.gguf").write_bytes(b"")
    with pytest.raises(ModelError, match=r"holds 2 GGUF files \(SmolLM2\.Q4_1\.GGUF, second\.gguf\): name the one"):
        resolve(str(upper))
    with pytest.raises(ModelError, match="no config.json. and holds no .gguf file"):
        resolve(str(tmp_path / "upper" / ".."))  # tmp_path: a folder with neither
