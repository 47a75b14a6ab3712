"""Rewards: math-verify equivalence, TRL's completion formats, worker threads, verl's file loading."""

import importlib.util
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pivottrace import rewards
from pivottrace.rewards import completion_text, math_reward, verl_compute_score

# (completion, solution, reward)
CASES = [
    ("So the answer is \\boxed{\\frac{1}{2}}.", "0.5", 1.0),
    ("So the answer is \\boxed{0.5}.", "\\frac{1}{2}", 1.0),
    ("So the answer is \\boxed{\\frac{1}{3}}.", "0.5", 0.0),
    ("First 3 + 4 = 7.\nAnswer: 7", "7", 1.0),
    ("First 3 + 4 = 7.\nAnswer: 8", "7", 0.0),
    ("She has 1,200 apples.\n#### 1,200", "1200", 1.0),
    ("I am not sure what the total is.", "7", 0.0),  # no final answer is never right
    ("\\boxed{7}", None, 0.0),  # no label, no reward
]


def conversational(text):
    return [{"role": "assistant", "content": text}]


def test_standard_completions():
    completions, solutions, expected = zip(*CASES)
    assert math_reward(list(completions), list(solutions)) == list(expected)


def test_conversational_completions_and_extra_columns():
    completions = [conversational(c) for c, _, _ in CASES]
    solutions = [s for _, s, _ in CASES]
    rewards_ = math_reward(completions, solutions, label_source=["human"] * len(CASES),
                           vote_share=[None] * len(CASES), prompts=[[]] * len(CASES))
    assert rewards_ == [r for _, _, r in CASES]


def test_completion_text_formats():
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "\\boxed{"}, {"type": "text", "text": "3}"}]}]
    assert completion_text(parts) == "\\boxed{3}"
    assert completion_text([{"role": "user", "content": "ignored"}, {"role": "assistant", "content": "x"}]) == "x"
    with pytest.raises(TypeError):
        completion_text(42)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 completions but 1 solutions"):
        math_reward(["\\boxed{1}", "\\boxed{2}"], ["1"])


def test_works_from_worker_threads():
    """math-verify's default timeouts use signals, which only work on the main thread."""
    completions, solutions, expected = zip(*CASES)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: math_reward(list(completions), list(solutions)), range(8)))
    assert results == [list(expected)] * 8

    seen = {}

    def worker():
        seen["reward"] = math_reward([conversational("\\boxed{\\frac{1}{2}}")], ["0.5"])

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["reward"] == [1.0]


def test_verl_loads_the_file_by_path():
    """verl imports `custom_reward_function.path` as a standalone module, outside the package."""
    spec = importlib.util.spec_from_file_location("custom_module", Path(rewards.__file__))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.verl_compute_score("demo", "\\boxed{\\frac{1}{2}}", "0.5", extra_info={}) == 1.0
    assert verl_compute_score("demo", "Answer: 9", "0.5") == 0.0


def test_fraction_on_an_answer_line():
    assert math_reward(["Answer: \\frac{1}{2}", "Answer: 1/2"], ["0.5", "0.5"]) == [1.0, 1.0]


# --------------------------------------------------------------------------- OpenRLHF

CHAT_PROMPT = ("<|im_start|>user\nTom has 3 apples and buys 5. How many now? Let's think step by step and "
               "put the final answer within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n")


def test_openrlhf_reward_func_scores_the_response_only():
    """OpenRLHF passes prompt + response as the query; the prompt's empty \\boxed{} is not the answer."""
    responses = ["3 + 5 = 8.\nAnswer: 8<|im_end|>", "3 + 5 = 9.\nAnswer: 9<|im_end|>",
                 "So it is \\boxed{8}.<|im_end|>", "I do not know.<|im_end|>"]
    queries = [CHAT_PROMPT + response for response in responses]
    out = rewards.reward_func(queries, [CHAT_PROMPT] * 4, ["8"] * 4)
    assert list(out["rewards"]) == [1.0, 0.0, 1.0, 0.0]
    assert list(out["scores"]) == list(out["rewards"])
    assert set(out["extra_logs"]) == {"answer_correct"}


def test_openrlhf_response_part_when_decoding_changes_the_prompt():
    """A decoded prompt may differ from the prompt string (spaces, normalised characters)."""
    decoded = CHAT_PROMPT.replace("Tom has", "Tom  has")
    assert rewards.response_part(decoded + "Answer: 8", CHAT_PROMPT) == "Answer: 8"
    assert list(rewards.reward_func([decoded + "Answer: 8"], [CHAT_PROMPT], ["8"])["rewards"]) == [1.0]
    with pytest.raises(ValueError, match="2 queries, 1 prompts"):
        rewards.reward_func(["a", "b"], ["p"], ["1"])


def test_openrlhf_loads_the_file_by_path():
    """OpenRLHF imports --reward.remote_url *.py with spec_from_file_location and takes `reward_func`."""
    spec = importlib.util.spec_from_file_location("reward_func", Path(rewards.__file__))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert list(module.reward_func([CHAT_PROMPT + "Answer: 8"], [CHAT_PROMPT], ["8"])["rewards"]) == [1.0]
