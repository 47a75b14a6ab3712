"""The exports through the trainers' own code: verl 0.9, OpenRLHF 0.11 and TRL 1.16, each in its own
cached venv (tests/trainers/venvs.py). `make test-trainers` builds the venvs and runs this file;
plain `pytest` skips it (the venvs take minutes to build the first time).

Each trainer loads the export with its own loader and scores a right and a wrong response through
its own reward path (tests/trainers/check_<trainer>.py prints what it saw; the assertions are here).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pivottrace import pipeline, store
from pivottrace.datasets import demo_problems
from pivottrace.export import VERL_DEFAULT_DATA_SOURCE, ExportOptions, export
from pivottrace.synthetic import synthetic_trace

needs_venvs = pytest.mark.skipif(os.environ.get("PIVOTTRACE_TRAINER_TESTS") != "1",
                                reason="needs the trainer venvs: run `make test-trainers`")

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ROOT / "tests" / "trainers"
CHECK_TIMEOUT_S = 600  # a cold import of torch + a trainer on a busy 2-core machine takes a minute or two
WRONG = "-99999"
# the right response, in the form each trainer's path must read: verl's default scorer reads only
# \boxed{}; OpenRLHF's query holds the prompt's empty \boxed{} before an "Answer:" line
RESPONSES = {
    "verl": "First add, then check.\nSo the answer is \\boxed{{{answer}}}.",
    "openrlhf": "First add, then check.\nAnswer: {answer}",
    "trl": "So the answer is \\boxed{{{answer}}}.",
}
FILES = {"verl": "train.parquet", "openrlhf": "train.jsonl", "trl": "train.jsonl"}


def _venvs():
    spec = importlib.util.spec_from_file_location("trainer_venvs", CHECKS / "venvs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A routed pool of 40 with human labels (2 wrong with gold, 1 correct) and self_train
    pseudo-labels, exported for each trainer into a folder of its own."""
    folder = tmp_path_factory.mktemp("exports")
    db = store.open_db(folder / "t.db")
    problems = demo_problems(40, seed=11)
    store.insert_problems(db, problems)
    rng = np.random.default_rng(11)
    for p in problems:
        store.save_trace(db, p.id, "synth", synthetic_trace(p, rng))
    pipeline.route(db)
    version = db.execute("select max(id) from router_versions").fetchone()[0]
    store.save_routes(db, [  # fixed routes: 8 annotate, the rest self_train
        {"problem_id": row["problem_id"], "model_id": "synth", "route": "annotate" if i < 8 else "self_train",
         "uncertainty": 0.5, "value": 1.0 - i / 100}
        for i, row in enumerate(store.load_features(db, "synth"))], version)
    store.add_user(db, "ann", "annotator", by=store.LocalOperator("tests"))  # labels come from known users
    for verdict, gold in (("wrong", "17"), ("correct", None), ("wrong", "3/4")):
        item = store.next_item(db, "ann")
        store.save_label(db, problem_id=item["problem_id"], annotator="ann", verdict=verdict, gold_answer=gold,
                         shown_answer=item["features"]["majority_answer"])
    results = {fmt: export(db, fmt=fmt, out=folder / fmt / FILES[fmt]) for fmt in FILES}
    return folder, results


def run_check(trainer: str, export_dir: Path, model_dir: Path) -> dict:
    python = _venvs().venv_python(trainer)
    if not python.exists():
        pytest.fail(f"no {trainer} venv at {python.parent.parent}: run `make test-trainers`")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", RAY_DISABLE_IMPORT_WARNING="1", WANDB_DISABLED="true")
    done = subprocess.run([str(python), str(CHECKS / f"check_{trainer}.py"), str(export_dir), str(model_dir),
                           RESPONSES[trainer], WRONG], capture_output=True, text=True, env=env,
                          timeout=CHECK_TIMEOUT_S, cwd=export_dir)
    assert done.returncode == 0, f"{trainer} check failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(trainer, json.dumps(report))  # shown with -s; the note quotes it
    return report


@needs_venvs
def test_verl_rlhfdataset_and_both_reward_paths(exports, tiny_model_dir):
    folder, results = exports
    report = run_check("verl", folder / "verl", tiny_model_dir)
    assert report["verl"].startswith("0.9.")
    assert report["rows"] == results["verl"].rows["train"]
    assert report["data_sources"] == [VERL_DEFAULT_DATA_SOURCE] and report["prompt_roles"] == ["user"]
    assert report["label_sources"] == ["human", "majority_vote"]
    n = len(report["default_right"])
    assert n == 6
    # verl's own dispatch (no custom reward) scores the default export correctly ...
    assert report["default_fn"] == "default_compute_score"
    assert report["default_right"] == [1.0] * n and report["default_wrong"] == [0.0] * n
    # ... and so does PivotTrace's scorer through the card's custom_reward_function lines
    assert report["custom_fn"] == "verl_compute_score"
    assert report["overrides"][1] == "reward.custom_reward_function.name=verl_compute_score"
    assert report["custom_right"] == [1.0] * n and report["custom_wrong"] == [0.0] * n
    # what the warning on --data-source openai/gsm8k is about: verl's GSM8K scorer gives a right
    # \boxed{} answer 0
    assert report["gsm8k_right"] == [0.0] * n


@needs_venvs
def test_openrlhf_promptdataset_and_reward_func(exports, tiny_model_dir):
    folder, results = exports
    report = run_check("openrlhf", folder / "openrlhf", tiny_model_dir)
    assert report["openrlhf"].startswith("0.11.")
    assert report["unknown_flags"] == []  # every option of the card is one of train_ppo_ray's
    assert report["rows"] == results["openrlhf"].rows["train"]
    assert report["datasources"] == ["demo"]  # not OpenRLHF's 'default'
    assert report["chat_template_applied"] and report["prompt_has_empty_boxed"]
    assert report["reward_func"] == "reward_func"
    assert report["label_sources"] == ["human", "majority_vote"]
    n = len(report["right"])
    assert n == 6
    assert report["right"] == [1.0] * n and report["wrong"] == [0.0] * n
    assert report["reward_shapes"] == [[1]] * n  # OpenRLHF's Experience.rewards shape
    # the queries hold the prompt (with its empty \boxed{}): read whole, a right response scores 0
    assert report["queries_start_with_prompt"] and report["whole_query_right"] == [0.0] * n


@needs_venvs
def test_trl_grpotrainer_rewards_and_one_step(exports, tiny_model_dir):
    folder, results = exports
    report = run_check("trl", folder / "trl", tiny_model_dir)
    assert report["trl"] == "1.16.0"
    assert report["rows"] == results["trl"].rows["train"]
    assert report["columns"] == ["prompt", "solution", "label_source", "vote_share", "problem_id"]
    assert report["label_sources"] == ["human", "majority_vote"]
    n = len(report["right"])
    assert n == 6
    assert report["right"] == [1.0] * n and report["wrong"] == [0.0] * n
    assert report["steps"] == 1 and np.isfinite(report["train_loss"])
    assert report["logged_reward"] and all(0.0 <= r <= 1.0 for r in report["logged_reward"])


def test_venv_cache_key_follows_the_pins():
    venvs = _venvs()
    first = venvs.venv_path("verl")
    assert first == venvs.venv_path("verl") and first != venvs.venv_path("trl")
    changed = venvs.TrainerEnv("verl", venvs.TRAINERS["verl"].requirements, ("verl==0.9.0",))
    assert venvs.cache_key(changed) != venvs.cache_key(venvs.TRAINERS["verl"])
