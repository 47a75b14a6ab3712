"""Streamed attention statistics against the full-attention reference, memory bounds, pure helpers.

The fixtures are tiny randomly initialised Llama models fed token ids directly: no tokenizer, no
download. Tests marked real_model run the embedded SmolLM2 default.
"""

from __future__ import annotations

from pivottrace import trace  # isort: skip  (first: importing pivottrace sets OMP_WAIT_POLICY before torch loads)

import re

import numpy as np
import pytest
import torch
from torch.utils._pytree import tree_flatten
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig, LlamaForCausalLM

from pivottrace.answers import extract_answer
from pivottrace.steps import segment_steps

import reference_stats as slow

VOCAB = 101


def tiny_llama(*, heads: int = 4, kv_heads: int = 2, layers: int = 3, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=1024)
    return LlamaForCausalLM._from_config(config, attn_implementation=trace.ATTN_IMPL).eval()


def random_case(prompt_len: int, n_completion: int, n_steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, prompt_len + n_completion).tolist()
    # every step gets at least one token; the rest are spread at random, in order
    token_step = np.sort(np.concatenate([np.arange(n_steps), rng.integers(0, n_steps, n_completion - n_steps)]))
    return ids, token_step


def reference(model, ids, prompt_len, token_step, n_steps):
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            out = model(torch.tensor([ids]), output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(trace.ATTN_IMPL)
    return slow.reference_stats([a[0].numpy() for a in out.attentions], q_start=prompt_len,
                                 token_step=token_step, n_steps=n_steps, logits=out.logits[0].numpy(),
                                 token_ids=np.array(ids))


@pytest.mark.parametrize("heads,kv_heads,prompt_len,n_completion,n_steps,chunk", [
    (4, 2, 13, 57, 6, 10),  # GQA; the chunk does not divide the 57 completion queries
    (4, 4, 9, 40, 5, 64),  # plain multi-head attention; one chunk holds every query
    (4, 1, 1, 23, 23, 7),  # multi-query, a one-token prompt, one token per step
    (8, 4, 20, 33, 1, 1),  # one step, one query per chunk
])
def test_streamed_statistics_equal_the_reference(heads, kv_heads, prompt_len, n_completion, n_steps, chunk):
    model = tiny_llama(heads=heads, kv_heads=kv_heads)
    ids, token_step = random_case(prompt_len, n_completion, n_steps)
    streamed = trace.analyse_ids(model, ids[:prompt_len], ids[prompt_len:], token_step, n_steps=n_steps,
                                 query_chunk=chunk)
    expected = reference(model, ids, prompt_len, token_step, n_steps)
    assert set(streamed) == set(trace.ARRAY_KEYS) - {"cue"}
    for key, value in expected.items():
        assert streamed[key].shape == value.shape, key
        np.testing.assert_allclose(streamed[key], value, atol=1e-5, rtol=0, err_msg=key)
    mass = streamed["segment_attention"]
    np.testing.assert_allclose(mass.sum(-1), 1.0, atol=1e-5)
    for s in range(n_steps):  # a step cannot see later steps
        assert np.all(mass[:, s, s + 2:] == 0)
    assert np.all(streamed["temporal_change"][:, 0] == 0)
    assert np.all((streamed["entropy"] >= 0) & (streamed["entropy"] <= 1 + 1e-6))


def test_chunk_size_does_not_change_the_result():
    model = tiny_llama()
    ids, token_step = random_case(11, 50, 7, seed=3)
    results = [trace.analyse_ids(model, ids[:11], ids[11:], token_step, n_steps=7, query_chunk=chunk)
               for chunk in (3, 16, 128)]
    for other in results[1:]:
        for key in results[0]:  # kurtosis is a ratio of 4th and 2nd moments: float32 sums move it a little more
            np.testing.assert_allclose(other[key], results[0][key], atol=1e-6, rtol=1e-5 if key == "head_kurtosis" else 0,
                                       err_msg=key)


def test_token_level_statistics_have_one_value_per_completion_token():
    model = tiny_llama()
    ids, token_step = random_case(12, 40, 4, seed=5)
    arrays = trace.analyse_ids(model, ids[:12], ids[12:], token_step, n_steps=4, query_chunk=9)
    for key in ("token_attention_entropy", "token_shift", "token_received", "token_entropy"):
        assert arrays[key].shape == (40,), key
    assert arrays["head_kurtosis"].shape == (3, 4)  # [L, H]
    assert arrays["token_shift"][0] == 0.0 and np.all(arrays["token_shift"][1:] > 0)
    assert np.all((arrays["token_shift"] >= 0) & (arrays["token_shift"] <= 1))
    assert np.all(arrays["token_received"][-trace.RECEIVER_MIN_DISTANCE:] == 0)  # no query far enough after


def test_receiver_heads_are_the_heads_with_spiky_vertical_attention():
    rng = np.random.default_rng(0)
    n_layers, n_heads, n_tokens, seq = 4, 8, 60, 80
    vertical = rng.uniform(0.009, 0.011, (n_layers, n_heads, n_tokens))  # [L, H, Tc] flat vertical attention
    vertical[2, 5, [10, 30]] = 0.4  # one head pours attention onto two tokens
    n_far = np.maximum(seq - (seq - n_tokens + np.arange(n_tokens)) - trace.RECEIVER_MIN_DISTANCE, 0)  # [Tc]
    out = trace.vertical_attention(vertical * n_far, seq)  # the collector hands over sums over queries
    assert np.unravel_index(out["head_kurtosis"].argmax(), (n_layers, n_heads)) == (2, 5)
    # a quarter of 32 heads, 8, are averaged; the two tokens the receiver head singles out stand out
    assert set(np.argsort(-out["token_received"])[:2]) == {10, 30}
    assert np.all(out["token_received"][n_tokens - trace.RECEIVER_MIN_DISTANCE:] == 0)


class _LargestTensors(TorchDispatchMode):
    """Records the shape of every tensor any aten op produces."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.shapes += [tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        return out


def test_analysis_never_materialises_a_seq_by_seq_attention_map():
    heads, chunk, prompt_len, n_completion = 4, 16, 20, 130
    seq = prompt_len + n_completion  # 150: no other dimension of the model has this size
    model = tiny_llama(heads=heads)
    ids, token_step = random_case(prompt_len, n_completion, 9)
    with _LargestTensors() as seen:
        trace.analyse_ids(model, ids[:prompt_len], ids[prompt_len:], token_step, n_steps=9, query_chunk=chunk)
    assert seen.shapes
    assert not [s for s in seen.shapes if s.count(seq) >= 2], "a [seq, seq] tensor was built"
    assert max(int(np.prod(s)) for s in seen.shapes) < heads * seq * seq // 4
    key_axis = [int(np.prod(s)) for s in seen.shapes if s and s[-1] == seq]  # attention rows over keys
    assert max(key_axis) <= heads * chunk * seq


def test_the_collector_only_runs_inside_analyse_ids():
    model = tiny_llama()
    ids, token_step = random_case(5, 12, 3)
    with torch.inference_mode():
        plain = model(torch.tensor([ids])).logits  # no collector: a plain SDPA forward
    model.set_attn_implementation("sdpa")
    try:
        with pytest.raises(RuntimeError, match="pivottrace"):
            trace.analyse_ids(model, ids[:5], ids[5:], token_step, n_steps=3)
        with torch.inference_mode():
            np.testing.assert_allclose(model(torch.tensor([ids])).logits, plain, atol=1e-5)
    finally:
        model.set_attn_implementation(trace.ATTN_IMPL)


def test_analyse_ids_validates_its_step_map():
    model = tiny_llama()
    ids, _ = random_case(5, 6, 2)
    with pytest.raises(ValueError):
        trace.analyse_ids(model, ids[:5], ids[5:], np.array([0, 0, 2, 2, 2, 2]), n_steps=3)  # step 1 empty
    with pytest.raises(ValueError):
        trace.analyse_ids(model, ids[:5], ids[5:], np.array([1, 0, 0, 0, 0, 0]), n_steps=2)  # not ordered
    empty = trace.analyse_ids(model, ids[:5], [], np.zeros(0, dtype=int), n_steps=0)
    assert empty["entropy"].shape == (3, 0) and empty["token_logprob"].shape == (0,)


# --- pure helpers ---------------------------------------------------------------------------


def test_normalised_entropy_bounds():
    assert slow.normalised_entropy(np.full(7, 1 / 7)) == pytest.approx(1.0)
    assert slow.normalised_entropy(np.eye(5)[2]) == 0.0
    assert slow.normalised_entropy(np.array([1.0])) == 0.0


def test_js_divergence():
    p = np.array([0.2, 0.5, 0.3])
    assert slow.js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert slow.js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)  # bits: disjoint support is 1
    assert slow.js_divergence(p, [0.3, 0.3, 0.4]) == pytest.approx(slow.js_divergence([0.3, 0.3, 0.4], p))


def test_temporal_change_is_zero_when_attention_keeps_its_shape():
    mass = np.zeros((2, 3, 4))  # [L, S, S+1]
    mass[:, 0, :2] = [0.6, 0.4]  # step 0: prompt 0.6, itself 0.4
    mass[:, 1, :3] = [0.6, 0.1, 0.3]  # step 1: prompt 0.6, recent (step 0 + itself) 0.4
    mass[:, 2, :4] = [0.0, 0.0, 0.5, 0.5]  # step 2: left the prompt entirely
    change = trace.temporal_change(mass)
    assert change.shape == (2, 3)
    np.testing.assert_allclose(change[:, :2], 0.0, atol=1e-12)
    assert np.all(change[:, 2] > 0.3)


def test_layer_consistency():
    rows = np.random.default_rng(0).dirichlet(np.ones(5), size=4)  # [S, S+1]
    same = np.stack([rows] * 3)  # [L, S, S+1] identical layers
    np.testing.assert_allclose(trace.layer_consistency(same), 1.0)
    np.testing.assert_allclose(trace.layer_consistency(same[:1]), 1.0)  # one layer
    opposite = np.zeros((2, 1, 2))
    opposite[0, 0, 0] = opposite[1, 0, 1] = 1.0
    np.testing.assert_allclose(trace.layer_consistency(opposite), 0.0)


def test_token_steps_assigns_tokens_by_their_last_character():
    text = "First add 2. Then 3.\n\nAnswer: 5"
    assert segment_steps(text) == [(0, 13), (13, 22), (22, 31)]
    offsets = [(0, 5), (5, 9), (9, 11), (11, 12), (12, 17), (17, 19), (19, 20), (20, 22), (22, 28), (28, 31)]
    spans, steps = trace.token_steps(text, offsets)
    assert spans == [(0, 13), (13, 22), (22, 31)]
    assert steps.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]  # " Then" ends in step 1


def test_token_steps_merges_steps_without_tokens():
    text = "First add 2. Then 3.\n\nAnswer: 5"
    offsets = [(0, 12), (12, 28), (28, 31)]  # the middle step only has a token that ends in the last one
    spans, steps = trace.token_steps(text, offsets)
    assert spans == [(0, 13), (13, 31)]
    assert steps.tolist() == [0, 1, 1]


def test_answer_span_allows_thousands_separators():
    text = "So 1,234 apples.\nAnswer: 1,234"
    assert trace._answer_span(text, "1234") == (25, 30)
    assert trace._answer_span(text, None) is None
    assert trace._answer_span(text, "99") is None


def test_build_prompt_with_and_without_chat_template():
    class Plain:
        chat_template = None

    class Chat:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    assert trace.build_prompt(Plain(), " 2+2? ", "Q: {problem}") == "Q: 2+2?\n"
    assert trace.build_prompt(Chat(), "2+2?", "Q: {problem}") == "<user>Q: 2+2?<assistant>"
    shots = [("1+1?", "1 + 1 = 2\nAnswer: 2 "), ("3-1?", "Answer: 2")]
    assert trace.build_prompt(Chat(), "2+2?", "Q: {problem}", shots) == (
        "<user>Q: 1+1?<assistant>1 + 1 = 2\nAnswer: 2<user>Q: 3-1?<assistant>Answer: 2<user>Q: 2+2?<assistant>")
    assert trace.build_prompt(Plain(), "2+2?", "Q: {problem}", shots) == (
        "Q: 1+1?\n1 + 1 = 2\nAnswer: 2\n\nQ: 3-1?\nAnswer: 2\n\nQ: 2+2?\n")
    assert "{problem}" in trace.PROMPT_TEMPLATE and "Answer: <number>" in trace.PROMPT_TEMPLATE
    ops = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__}
    for _, solution in trace.PROMPT_EXAMPLES:  # the worked examples we ship do their sums right
        sums = re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", solution)
        assert sums and all(ops[op](int(a), int(b)) == int(c) for a, op, b, c in sums)
        assert extract_answer(solution) == sums[-1][3]


def test_next_tokens_greedy_rows_and_seeded_sampling():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(1))
    greedy = torch.tensor([True, False, False, True, False, False])

    def draw(seed):
        return trace._next_tokens(logits.clone(), greedy, temperature=0.8, top_p=0.95,
                                  generator=torch.Generator().manual_seed(seed))

    first = draw(0)
    assert torch.equal(first[greedy], logits.argmax(-1)[greedy])
    assert torch.equal(first, draw(0))  # same seed, same tokens
    tiny_nucleus = trace._next_tokens(logits.clone(), torch.zeros(6, dtype=torch.bool), temperature=1.0, top_p=1e-6,
                                      generator=torch.Generator().manual_seed(0))
    assert torch.equal(tiny_nucleus, logits.argmax(-1))  # top_p -> 0 keeps only the best token


def test_trace_config_is_validated_once():
    assert trace.TraceConfig().batch_size == 8
    with pytest.raises(ValueError, match="top_p=0"):
        trace.TraceConfig(top_p=0)
    with pytest.raises(ValueError, match="prompt_template"):
        trace.TraceConfig(prompt_template="no placeholder")
    with pytest.raises(ValueError, match="prompt_examples"):
        trace.TraceConfig(prompt_examples=(("a problem", ""),))
    with pytest.raises(ValueError, match="dtype"):
        trace.TraceConfig(dtype="int8")


# --- the real default model -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tracer():
    return trace.Tracer("default", config=trace.TraceConfig(max_new_tokens=48, n_samples=2, dtype="float32"))


@pytest.mark.real_model
def test_real_model_streamed_statistics_match_the_reference(tracer):
    _, token_step = random_case(24, 72, 5)
    ids = np.random.default_rng(0).integers(0, tracer.model.config.vocab_size, 96).tolist()
    streamed = trace.analyse_ids(tracer.model, ids[:24], ids[24:], token_step, n_steps=5, query_chunk=32)
    expected = reference(tracer.model, ids, 24, token_step, 5)
    for key, value in expected.items():  # 30 layers of SDPA vs eager rounding: looser than the tiny model
        np.testing.assert_allclose(streamed[key], value, atol=1e-4, rtol=1e-4, err_msg=key)


@pytest.mark.real_model
def test_real_model_trace_batch(tracer):
    problems = ["Ava has 3 apples. Then Ava finds 4 more apples. How many apples does Ava have now?",
                "What is 7 + 5?"]
    traces = tracer.trace_batch(problems)
    assert len(traces) == 2
    for problem_trace in traces:
        result = problem_trace.trace
        L, S = tracer.n_layers, len(result.steps)
        assert set(result.arrays) == set(trace.ARRAY_KEYS)
        assert result.arrays["entropy"].shape == (L, S)
        assert result.arrays["segment_attention"].shape == (L, S, S + 1)
        assert result.arrays["cue"].shape == (S,)
        assert result.arrays["token_logprob"].shape == (result.n_completion_tokens,)
        assert len(result.tokens) == result.n_completion_tokens
        assert result.steps[0]["tok_start"] == 0 and result.steps[-1]["tok_end"] == result.n_completion_tokens
        assert "".join(step["text"] for step in result.steps) == result.completion
        assert len(problem_trace.samples) == 2 and len(problem_trace.sample_answers) == 2
        assert 0 < problem_trace.generated_tokens <= 3 * 48
    assert tracer.sample(problems[:1], 2) == tracer.sample(problems[:1], 2)  # seeded
    greedy = tracer.generate_greedy(problems[1:])
    assert len(greedy) == 1 and isinstance(greedy[0], str)


@pytest.mark.real_model
def test_real_model_analyses_an_empty_completion(tracer):
    result = tracer.analyse("What is 2 + 2?", "")
    assert result.n_completion_tokens == 0 and result.steps == [] and result.answer is None
    assert result.arrays["entropy"].shape == (tracer.n_layers, 0)
