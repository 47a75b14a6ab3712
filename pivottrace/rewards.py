"""Verifiable rewards for the exported training sets: 1.0 when a completion's final answer equals
the label, else 0.0.

`math_reward` is a TRL GRPOTrainer reward function, `(completions, solution, **kwargs) ->
list[float]`; `solution` is the exported column of that name, and the other columns
(`label_source`, `vote_share`, ...) arrive in `kwargs`. `verl_compute_score` has the signature of
verl's `custom_reward_function`. Both read the final answer with answers.extract_answer and compare
with answers.answers_match (math-verify with its signal-based timeouts off), so they work in
worker threads as well as on the main thread. They give no format or length reward and do not
weight pseudo-labels by vote share: that is the trainer's choice.
"""

from __future__ import annotations

# absolute, not relative: verl loads custom reward functions from a file path, outside the package
from pivottrace.answers import answers_match, extract_answer

CORRECT_REWARD = 1.0
WRONG_REWARD = 0.0  # also for a completion with no final answer: "no answer" is never right


def completion_text(completion) -> str:
    """The text of one TRL completion: a string (standard format) or a list of messages
    (conversational format: the assistant messages' contents, joined)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        parts = []
        for message in completion:
            if not isinstance(message, dict):
                raise TypeError(f"a conversational completion holds messages (dicts), not {type(message).__name__}")
            if message.get("role", "assistant") != "assistant":
                continue
            content = message.get("content")
            if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
                content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            if content:
                parts.append(str(content))
        return "\n".join(parts)
    raise TypeError(f"a completion is a string or a list of messages, not {type(completion).__name__}")


def score_completion(text: str, solution) -> float:
    """CORRECT_REWARD when the final answer in `text` equals `solution`, else WRONG_REWARD."""
    if solution is None or not str(solution).strip():
        return WRONG_REWARD
    return CORRECT_REWARD if answers_match(extract_answer(text), str(solution)) else WRONG_REWARD


def math_reward(completions: list, solution: list, **kwargs) -> list[float]:
    """TRL GRPOTrainer reward: one float per completion, against the `solution` column."""
    if len(completions) != len(solution):
        raise ValueError(f"{len(completions)} completions but {len(solution)} solutions")
    return [score_completion(completion_text(c), s) for c, s in zip(completions, solution)]


def verl_compute_score(data_source, solution_str: str, ground_truth, extra_info=None, **kwargs) -> float:
    """verl custom reward function (`custom_reward_function.path=<this file>`,
    `custom_reward_function.name=verl_compute_score`): the reward of one response."""
    return score_completion(solution_str or "", ground_truth)
