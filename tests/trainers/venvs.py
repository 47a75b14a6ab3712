"""One small virtualenv per trainer (TRL, verl, OpenRLHF), built once and cached, for
`make test-trainers`.

Each trainer's environment conflicts with this project's (verl wants transformers < 5.11,
OpenRLHF pins transformers 5.15 and, like verl, pulls CUDA-only packages such as deepspeed and
flash-attn), so each gets its own venv with pinned versions:
- torch, the CPU wheel, installed first: an unpinned torch would pull a multi-GB CUDA build;
- the trainer itself, with its dependencies (TRL) or `--no-deps` plus the few packages its
  dataset and reward modules import (verl, OpenRLHF);
- math-verify, which PivotTrace's reward functions use (pivottrace itself comes from the checkout
  on PYTHONPATH, as a user's reward workers would have it).

A venv lives under `$PIVOTTRACE_TRAINER_VENVS` (default: trainer-venvs in PivotTrace's cache,
~/.cache/pivottrace unless $PIVOTTRACE_CACHE or $XDG_CACHE_HOME say otherwise) in a folder named
after the trainer and a hash of its pins and the Python version, so changing a pin builds a new
one and an unchanged one is reused. A `.complete` stamp is written last: a build that died
half-way is removed and redone. Builds are serialised with a lock file. It uses the standard
library and pivottrace.models (for the cache folder) only, and runs no check
(tests/test_trainers.py does).

    python tests/trainers/venvs.py            # build what is missing, print the folders
    python tests/trainers/venvs.py --path trl # print one folder (built or not)
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TORCH = "torch==2.13.0"  # the CPU wheel (on PyPI's default index for Linux x86_64 it is the CUDA one)
MATH_VERIFY = "math-verify==0.9.0"  # what pivottrace.rewards needs in the trainer's process
STAMP = ".complete"


@dataclass(frozen=True)
class TrainerEnv:
    name: str
    requirements: tuple[str, ...]  # installed with their dependencies, after torch
    no_deps: tuple[str, ...] = ()  # installed last with --no-deps


TRAINERS = {
    "trl": TrainerEnv("trl", (
        "trl==1.16.0", "transformers==5.15.0", "accelerate==1.15.0", "datasets==4.8.5", MATH_VERIFY)),
    # verl 0.9.1 asks for transformers>=5.5.3,<5.11 (and ray[default], wandb, vllm-era extras that
    # its dataset and reward modules never import)
    "verl": TrainerEnv("verl", (
        "transformers==5.10.4", "datasets==4.8.5", "omegaconf==2.3.0", "ray==2.55.0",
        "tensordict==0.10.0", "codetiming==1.4.0", "pylatexenc==2.10", "pillow", MATH_VERIFY,
    ), no_deps=("verl==0.9.1",)),
    # OpenRLHF 0.11.2 pins deepspeed and flash-attn (CUDA builds); PromptDataset and the
    # function-reward executor need only these
    "openrlhf": TrainerEnv("openrlhf", (
        "transformers==5.15.0", "datasets==4.8.5", "aiohttp==3.14.5", "sympy==1.14.0",
        "pylatexenc==2.10", "tqdm", MATH_VERIFY,
    ), no_deps=("openrlhf==0.11.2",)),
}


def venv_root() -> Path:
    """$PIVOTTRACE_TRAINER_VENVS, else trainer-venvs in PivotTrace's cache (models.cache_root)."""
    if os.environ.get("PIVOTTRACE_TRAINER_VENVS"):
        return Path(os.environ["PIVOTTRACE_TRAINER_VENVS"]).expanduser()
    from pivottrace.models import cache_root  # no torch: resolving a model spec only

    return cache_root() / "trainer-venvs"


def cache_key(env: TrainerEnv) -> str:
    """A hash of everything that decides what lands in the venv."""
    facts = {"torch": TORCH, "requirements": env.requirements, "no_deps": env.no_deps,
             "python": platform.python_version(), "machine": platform.machine()}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]


def venv_path(name: str, root: Path | None = None) -> Path:
    env = TRAINERS[name]
    return (root or venv_root()) / f"{env.name}-{cache_key(env)}"


def venv_python(name: str, root: Path | None = None) -> Path:
    return venv_path(name, root) / "bin" / "python"


def _run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def build(name: str, root: Path | None = None) -> tuple[Path, float]:
    """The venv folder of trainer `name`, built if missing; and the seconds the build took (0 when cached)."""
    env, folder = TRAINERS[name], venv_path(name, root)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another checkout may be building the same venv
        if (folder / STAMP).exists():
            return folder, 0.0
        started = time.monotonic()
        shutil.rmtree(folder, ignore_errors=True)  # a build that died half-way
        _run([sys.executable, "-m", "venv", str(folder)])
        # --no-compile: byte-compiling torch's and ray's thousands of modules at install time was
        # most of the build; Python compiles what the checks import, on first import
        pip = [str(folder / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
               "--no-compile"]
        _run(pip + [TORCH])
        _run(pip + list(env.requirements))
        if env.no_deps:
            _run(pip + ["--no-deps"] + list(env.no_deps))
        (folder / STAMP).write_text(json.dumps({"torch": TORCH, "requirements": env.requirements,
                                                "no_deps": env.no_deps}, indent=1) + "\n")
        return folder, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trainers", nargs="*", help=f"any of {', '.join(TRAINERS)} (default: all)")
    parser.add_argument("--path", action="store_true", help="print the folders, build nothing")
    args = parser.parse_args()
    unknown = [name for name in args.trainers if name not in TRAINERS]
    if unknown:  # argparse's `choices` rejects an empty nargs="*" list on Python 3.11
        parser.error(f"unknown trainer {unknown[0]!r}; choose from {', '.join(TRAINERS)}")
    for name in args.trainers or list(TRAINERS):
        if args.path:
            print(venv_path(name))
            continue
        folder, seconds = build(name)
        print(f"{name}: {folder} ({'built in %.0f s' % seconds if seconds else 'cached'})", flush=True)


if __name__ == "__main__":
    main()
