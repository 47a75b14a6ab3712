"""Run inside the OpenRLHF venv (tests/trainers/venvs.py): load an OpenRLHF export as
`train_ppo_ray` does (blending_datasets, then PromptDataset, with the `--data.*` options of the
export card's command), and score a right and a wrong response through OpenRLHF's own reward path:
SingleTurnAgentExecutor loads `--reward.remote_url` (our rewards.py) and calls its reward_func with
the decoded prompt + response. Only the vLLM engine is replaced (it returns the given response's
tokens). Prints one JSON line; asserts nothing (tests/test_trainers.py does).

    python check_openrlhf.py EXPORT_DIR MODEL_DIR RIGHT_FORMAT WRONG_ANSWER
"""

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoTokenizer

from openrlhf.datasets import PromptDataset
from openrlhf.datasets.utils import blending_datasets
from openrlhf.utils.agent import SingleTurnAgentExecutor
from openrlhf.utils.config import hierarchize

ROWS_PER_SOURCE = 3  # rows scored per label source (human, majority_vote)
# train_ppo_ray's own definitions of the options the card uses (its parser is built under
# `if __name__ == "__main__"`, next to imports of deepspeed and vLLM): name -> add_argument kwargs.
# check_flags() confirms each name is defined in the installed train_ppo_ray.py.
OPTIONS = {
    "--actor.model_name_or_path": {"type": str, "default": None},
    "--data.prompt_dataset": {"type": str, "default": None},
    "--data.prompt_probs": {"type": str, "default": None},
    "--data.prompt_split": {"type": str, "default": "train"},
    "--data.input_key": {"type": str, "default": "input"},
    "--data.label_key": {"type": str, "default": None},
    "--data.input_template": {"type": str, "default": None},
    "--data.apply_chat_template": {"action": "store_true", "default": False},
    "--data.image_key": {"type": str, "default": "images"},
    "--reward.remote_url": {"type": str, "default": None},
    "--algo.advantage.estimator": {"type": str, "default": "gae"},
    "--rollout.n_samples_per_prompt": {"type": int, "default": 1},
}


def check_flags(argv: list[str]) -> list[str]:
    """The card's options that the installed train_ppo_ray.py does not define."""
    source = Path(importlib.util.find_spec("openrlhf.cli.train_ppo_ray").origin).read_text()
    return [arg for arg in argv if arg.startswith("--") and f'"{arg}"' not in source]


def parse(argv: list[str]):
    parser = argparse.ArgumentParser()
    for name, kwargs in OPTIONS.items():
        parser.add_argument(name, **kwargs)
    args = parser.parse_args(argv)
    args = hierarchize(args)
    args.reward.remote_url = args.reward.remote_url.split(",")  # as train_ppo_ray does
    return args


class ReplayEngine:
    """Stands in for the vLLM engine: 'generates' the given response's tokens."""

    def __init__(self, response_ids):
        self.response_ids = response_ids

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        output = SimpleNamespace(token_ids=list(self.response_ids), finish_reason="stop", logprobs=None)
        return SimpleNamespace(outputs=[output])


def reward(executor, tokenizer, prompt: str, label: str, response: str) -> tuple[float, list[int]]:
    ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    params = SimpleNamespace(max_tokens=256, logprobs=None)
    out = asyncio.run(executor.execute(prompt, label, params, 2048, tokenizer, ReplayEngine(ids)))
    value = torch.tensor([out["reward"]])  # as SamplesGenerator turns it into Experience.rewards
    return float(value.flatten()[0]), list(value.shape)


def main() -> None:
    export_dir, model_dir, right_format, wrong_answer = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    card = json.loads((export_dir / "card.json").read_text())
    argv = shlex.split(card["commands"]["openrlhf"][-1].replace("$MODEL", model_dir))[3:]  # after `python3 -m X`
    args = parse(argv)
    strategy = SimpleNamespace(args=args, is_rank_0=lambda: True, print=lambda *a, **k: None)
    tokenizer = AutoTokenizer.from_pretrained(args.actor.model_name_or_path)
    data = blending_datasets(args.data.prompt_dataset, args.data.prompt_probs, strategy, 42,
                             dataset_split=args.data.prompt_split)
    dataset = PromptDataset(data, tokenizer, strategy, input_template=args.data.input_template)
    executor = SingleTurnAgentExecutor(remote_rm_url=args.reward.remote_url)
    loaded, seen = executor.reward_func, []

    def recording(queries, prompts, labels):  # what OpenRLHF hands the reward, passed on unchanged
        seen.append((queries[0], prompts[0], labels[0]))
        return loaded(queries, prompts, labels)

    executor.reward_func = recording
    items = [dataset[i] for i in range(len(dataset))]  # (datasource, prompt, label, images)
    sources = [row["label_source"] for row in data]
    chosen = [i for source in ("human", "majority_vote")
              for i in [j for j, s in enumerate(sources) if s == source][:ROWS_PER_SOURCE]]
    results = {"openrlhf": importlib.metadata.version("openrlhf"), "rows": len(items),
               "unknown_flags": check_flags(argv), "datasources": sorted({item[0] for item in items}),
               "chat_template_applied": all(item[1] != row[args.data.input_key] for item, row in zip(items, data)),
               "prompt_has_empty_boxed": all("\\boxed{}" in item[1] for item in items),
               "reward_func": loaded.__name__ if loaded else None,
               "right": [], "wrong": [], "reward_shapes": [],
               "label_sources": sorted({sources[i] for i in chosen})}
    for i in chosen:
        _, prompt, label, _ = items[i]
        right, shape = reward(executor, tokenizer, prompt, label, right_format.format(answer=label))
        wrong, _ = reward(executor, tokenizer, prompt, label, right_format.format(answer=wrong_answer))
        results["right"].append(right)
        results["wrong"].append(wrong)
        results["reward_shapes"].append(shape)
    from pivottrace.rewards import score_completion
    rights = seen[::2]  # (query, prompt, label) of each right response
    results["queries_start_with_prompt"] = all(query.startswith(prompt) for query, prompt, _ in seen)
    # scored over the whole query (prompt + response), the way the issue found it: the prompt's
    # empty \boxed{} is taken for the answer
    results["whole_query_right"] = [score_completion(query, label) for query, _, label in rights]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
