"""Verifiable rewards for the exported training sets: 1.0 when a completion's final answer equals
the label, else 0.0.

`math_reward` is a TRL GRPOTrainer reward function, `(completions, solution, **kwargs) ->
list[float]`; `solution` is the exported column of that name, and the other columns
(`label_source`, `vote_share`, ...) arrive in `kwargs`. `verl_compute_score` has the signature of
verl's `custom_reward_function`. `reward_func(queries, prompts, labels)` is OpenRLHF 0.11's function
reward (`--reward.remote_url <this file>`): OpenRLHF passes prompt + response as one query, so it
scores only the text after the prompt (the prompt's own `\\boxed{}` is never the answer). All
read the final answer with answers.extract_answer and compare with answers.answers_match
(math-verify with its signal-based timeouts off), so they work in worker threads as well as on
the main thread. They give no format or length reward and do not
weight pseudo-labels by vote share: that is the trainer's choice.
"""

from __future__ import annotations

import sys

# absolute, not relative: verl loads custom reward functions from a file path, outside the package
from pivottrace.answers import answers_match, extract_answer

PROMPT_TAIL_CHARS = 64  # enough of the prompt's end (the instruction and the chat template's
# assistant header) to find where the response starts when the decoded prompt differs from the original
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


def response_part(query: str, prompt: str) -> str:
    """The response in an OpenRLHF query (the decoded prompt + response tokens): the text after
    the prompt. When decoding did not reproduce the prompt exactly, after the first occurrence of
    the prompt's last PROMPT_TAIL_CHARS characters; failing that, after the prompt's length."""
    if query.startswith(prompt):
        return query[len(prompt):]
    tail = prompt[-PROMPT_TAIL_CHARS:]
    at = query.find(tail) if tail else -1
    return query[at + len(tail):] if at >= 0 else query[len(prompt):]


def reward_func(queries: list[str], prompts: list[str], labels: list, **kwargs) -> dict:
    """OpenRLHF function reward: {"rewards", "scores", "extra_logs"}, one value per query.

    `rewards` and `scores` are a float tensor of shape [len(queries)] (OpenRLHF's shape) when torch is
    already loaded in the process, as it always is in OpenRLHF; a list of floats otherwise (this
    module never imports torch itself)."""
    if not len(queries) == len(prompts) == len(labels):
        raise ValueError(f"{len(queries)} queries, {len(prompts)} prompts and {len(labels)} labels")
    scores = [score_completion(response_part(query, prompt), label)
              for query, prompt, label in zip(queries, prompts, labels)]
    torch = sys.modules.get("torch")
    values = torch.tensor(scores, dtype=torch.float32) if torch is not None else scores
    return {"rewards": values, "scores": values, "extra_logs": {"answer_correct": values}}


def verl_compute_score(data_source, solution_str: str, ground_truth, extra_info=None, **kwargs) -> float:
    """verl custom reward function (`custom_reward_function.path=<this file>`,
    `custom_reward_function.name=verl_compute_score`): the reward of one response."""
    return score_completion(solution_str or "", ground_truth)
