"""Run inside the verl venv (tests/trainers/venvs.py): load a verl export through verl's own
RLHFDataset, apply the chat template as verl's rollout does, and score a right and a wrong response
through verl's own reward path (load_reward_manager -> the `naive` reward manager -> compute_score):
once with verl's default_compute_score (dispatch on data_source), once with the
custom_reward_function overrides taken from the export's card. Prints one JSON line; asserts
nothing (tests/test_trainers.py does).

    python check_verl.py EXPORT_DIR MODEL_DIR RIGHT_FORMAT WRONG_ANSWER
"""

import json
import shlex
import sys
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer

import verl
from verl import DataProto
from verl.trainer.ppo.reward import load_reward_manager
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.utils.reward_score import default_compute_score

ROWS_PER_SOURCE = 3  # rows scored per label source (human, majority_vote)


def reward_config(overrides: list[str]):
    """verl 0.9's `reward` config section (defaults of trainer/config/reward), plus the card's overrides."""
    base = OmegaConf.create({"reward": {
        "custom_reward_function": {"path": None, "name": "compute_score"},
        "reward_manager": {"source": "register", "name": "naive",
                           "module": {"path": None, "name": "custom_reward_manager"}},
        "sandbox_fusion": None}})
    return OmegaConf.merge(base, OmegaConf.from_dotlist(overrides))


def data_item(tokenizer, row: dict, response: str) -> DataProto:
    """One rollout as verl's agent loop hands it to the reward manager: prompt ids (chat template
    applied), response ids, attention mask, and the row's non-tensor fields."""
    prompt_ids = tokenizer.apply_chat_template(row["raw_prompt"], add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prompts = torch.tensor([prompt_ids])  # [1, P]
    responses = torch.tensor([response_ids])  # [1, R]
    ones = torch.ones(1, prompts.shape[1] + responses.shape[1], dtype=torch.long)  # [1, P+R]
    return DataProto.from_dict(
        tensors={"prompts": prompts, "responses": responses, "input_ids": torch.cat([prompts, responses], 1),
                 "attention_mask": ones},
        non_tensors={key: [row[key]] for key in ("data_source", "reward_model", "extra_info")})


def score(manager, item: DataProto) -> float:
    return float(manager.loop.run_until_complete(manager.run_single(item))["reward_score"])


def main() -> None:
    export_dir, model_dir, right_format, wrong_answer = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    card = json.loads((export_dir / "card.json").read_text())
    train = export_dir / card["files"]["train"]
    overrides = [arg for arg in shlex.split(card["commands"]["verl"][-1]) if arg.startswith("reward.")]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory() as cache:
        config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 1024, "truncation": "error",
                                   "filter_overlong_prompts": True, "cache_dir": cache})
        dataset = RLHFDataset(data_files=[str(train)], tokenizer=tokenizer, config=config)
        rows = [dataset[i] for i in range(len(dataset))]
    default = load_reward_manager(reward_config([]), tokenizer)
    custom = load_reward_manager(reward_config(overrides), tokenizer)
    results = {"verl": verl.__version__, "rows": len(rows), "overrides": overrides,
               "data_sources": sorted({row["data_source"] for row in rows}),
               "prompt_roles": sorted({m["role"] for row in rows for m in row["raw_prompt"]}),
               "default_manager": type(default).__name__,
               "default_fn": getattr(default.compute_score, "__name__", None),
               "custom_fn": custom.compute_score.args[0].__name__,  # verl wraps it in a partial
               "default_right": [], "default_wrong": [], "custom_right": [], "custom_wrong": [],
               "gsm8k_right": []}
    chosen = [row for source in ("human", "majority_vote")
              for row in [r for r in rows if r["extra_info"]["label_source"] == source][:ROWS_PER_SOURCE]]
    for row in chosen:
        truth = row["reward_model"]["ground_truth"]
        right, wrong = right_format.format(answer=truth), right_format.format(answer=wrong_answer)
        results["default_right"].append(score(default, data_item(tokenizer, row, right)))
        results["default_wrong"].append(score(default, data_item(tokenizer, row, wrong)))
        results["custom_right"].append(score(custom, data_item(tokenizer, row, right)))
        results["custom_wrong"].append(score(custom, data_item(tokenizer, row, wrong)))
        # what `--data-source openai/gsm8k` would have done with the same right response
        results["gsm8k_right"].append(default_compute_score("openai/gsm8k", right, truth))
    results["label_sources"] = sorted({row["extra_info"]["label_source"] for row in chosen})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
