"""How each trainer (verl 0.9, OpenRLHF 0.11, TRL 1.16) is pointed at an export: the exact command
lines and reward settings, in one place for the export card, `pivottrace export --help` and the
README.

It only builds text. It imports nothing heavy (no torch, no pyarrow, no math-verify), writes no
file and runs no trainer; tests/test_trainers.py runs these lines' settings through each trainer's
own code.
"""

from __future__ import annotations

import shlex
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REWARDS_FILE = PACKAGE_DIR / "rewards.py"  # loaded by file path by verl and OpenRLHF
SOURCE_ROOT = PACKAGE_DIR.parent  # the folder to put on PYTHONPATH so that the reward file imports pivottrace
VERL_REWARD_NAME = "verl_compute_score"  # verl: custom_reward_function.name
OPENRLHF_REWARD_NAME = "reward_func"  # the name OpenRLHF 0.11 looks up in a --reward.remote_url *.py file
TRL_REWARD_NAME = "math_reward"  # TRL: reward_funcs=
MODEL = "$MODEL"  # placeholder: the policy checkpoint (HF id or folder) is the user's choice
GRPO_SAMPLES = 8  # completions per prompt in the example lines: GRPO needs a group (>1)


def verl_reward_overrides(rewards_file: Path = REWARDS_FILE) -> list[str]:
    """verl 0.9 overrides that make PivotTrace's math-verify scorer the reward (the legacy
    top-level `custom_reward_function.path/name` keys are migrated to these by verl)."""
    return [f"reward.custom_reward_function.path={rewards_file}",
            f"reward.custom_reward_function.name={VERL_REWARD_NAME}"]


def verl_command(train: Path, val: Path | None = None, *, custom_reward: bool = True) -> list[str]:
    """`python3 -m verl.trainer.main_ppo ...` (GRPO) on a verl export, as argv."""
    command = ["python3", "-m", "verl.trainer.main_ppo", "algorithm.adv_estimator=grpo",
               f"data.train_files={train}", f"data.val_files={val or train}", "data.prompt_key=prompt",
               f"actor_rollout_ref.model.path={MODEL}", f"actor_rollout_ref.rollout.n={GRPO_SAMPLES}"]
    return command + (verl_reward_overrides() if custom_reward else [])


def openrlhf_command(train: Path, *, input_key: str = "input", label_key: str = "label") -> list[str]:
    """`python3 -m openrlhf.cli.train_ppo_ray ...` (GRPO) on an OpenRLHF export, as argv: the
    `--data.*` options of OpenRLHF 0.11 and PivotTrace's reward_func as the function reward."""
    return ["python3", "-m", "openrlhf.cli.train_ppo_ray", "--actor.model_name_or_path", MODEL,
            "--data.prompt_dataset", str(train), "--data.input_key", input_key,
            "--data.label_key", label_key, "--data.apply_chat_template",
            "--reward.remote_url", str(REWARDS_FILE),
            "--algo.advantage.estimator", "group_norm", "--rollout.n_samples_per_prompt", str(GRPO_SAMPLES)]


def trl_script(train: Path) -> str:
    """The Python lines that train TRL's GRPOTrainer on a TRL export."""
    loader = "parquet" if str(train).endswith(".parquet") else "json"
    return "\n".join([
        "import os",
        "",
        "from datasets import load_dataset",
        "from trl import GRPOConfig, GRPOTrainer",
        f"from pivottrace.rewards import {TRL_REWARD_NAME}",
        "",
        f"dataset = load_dataset({loader!r}, data_files={str(train)!r}, split='train')",
        f"trainer = GRPOTrainer(model=os.environ['MODEL'], reward_funcs={TRL_REWARD_NAME}, train_dataset=dataset,",
        f"                      args=GRPOConfig(output_dir='grpo-out', num_generations={GRPO_SAMPLES}))",
        "trainer.train()",
    ])


def shell_line(argv: list[str]) -> str:
    """One copyable shell line: each argument quoted, with $MODEL left for the shell to fill in."""
    return " ".join(f'"{MODEL}"'.join(shlex.quote(part) if part else "" for part in arg.split(MODEL))
                    for arg in argv)


def pythonpath_line() -> str:
    """The reward file imports `pivottrace`: its workers need the package (this line, or
    `pip install --no-deps <this checkout> math-verify` in the trainer's environment)."""
    return f"export PYTHONPATH={shlex.quote(str(SOURCE_ROOT))}:$PYTHONPATH"
