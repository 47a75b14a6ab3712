"""Run inside the TRL venv (tests/trainers/venvs.py): build TRL's GRPOTrainer on a TRL export as
the card says (load_dataset + reward_funcs=pivottrace.rewards.math_reward) with a tiny random
model, score a right and a wrong completion through the trainer's own reward path
(GRPOTrainer._calculate_rewards, which hands the export's other columns to the reward as keyword
arguments), then train one step. Prints one JSON line; asserts nothing (tests/test_trainers.py does).

    python check_trl.py EXPORT_DIR MODEL_DIR RIGHT_FORMAT WRONG_ANSWER
"""

import json
import sys
import tempfile
from pathlib import Path

import trl
from datasets import load_dataset
from trl import GRPOConfig, GRPOTrainer

from pivottrace.rewards import math_reward

ROWS_PER_SOURCE = 3  # rows scored per label source (human, majority_vote)
GENERATIONS = 2  # the smallest GRPO group
COMPLETION_TOKENS = 8  # the tiny model's output is gibberish: a few tokens make the step


def main() -> None:
    export_dir, model_dir, right_format, wrong_answer = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    card = json.loads((export_dir / "card.json").read_text())
    train = export_dir / card["files"]["train"]
    loader = "parquet" if train.suffix == ".parquet" else "json"
    dataset = load_dataset(loader, data_files=str(train), split="train")
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(output_dir=out, max_steps=1, per_device_train_batch_size=GENERATIONS,
                          num_generations=GENERATIONS, max_completion_length=COMPLETION_TOKENS,
                          report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, bf16=False)
        trainer = GRPOTrainer(model=model_dir, reward_funcs=math_reward, train_dataset=dataset, args=args)
        chosen = [row for source in ("human", "majority_vote")
                  for row in [r for r in dataset if r["label_source"] == source][:ROWS_PER_SOURCE]]
        prompts = [row["prompt"] for row in chosen]

        def rewards(answers):
            completions = [[{"role": "assistant", "content": right_format.format(answer=a)}] for a in answers]
            values = trainer._calculate_rewards(chosen, prompts, completions, [[0]] * len(chosen))  # [N, 1]
            return [float(v) for v in values[:, 0]]

        right = rewards([row["solution"] for row in chosen])
        wrong = rewards([wrong_answer] * len(chosen))
        result = trainer.train()
    print(json.dumps({"trl": trl.__version__, "rows": len(dataset), "columns": dataset.column_names,
                      "right": right, "wrong": wrong, "label_sources": sorted({r["label_source"] for r in chosen}),
                      "steps": trainer.state.global_step, "train_loss": result.training_loss,
                      "logged_reward": [h.get("reward") for h in trainer.state.log_history if "reward" in h]}))


if __name__ == "__main__":
    main()
