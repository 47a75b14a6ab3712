"""Stored trace arrays grow with the steps, not steps^2: segment attention [L, S, S+1] is kept as
per-layer buckets [L, S, 4] plus the layer mean's top-K segments, and old traces still read."""

import io

import numpy as np

from pivottrace import store
from pivottrace.synthetic import synthetic_trace
from pivottrace.datasets import demo_problems


def random_mass(rng, n_layers: int, n_steps: int) -> np.ndarray:
    """m [L, S, S+1]: each step's row a distribution over the prompt and steps 0..s."""
    mass = np.zeros((n_layers, n_steps, n_steps + 1))
    for s in range(n_steps):
        weights = rng.gamma(0.3, size=(n_layers, s + 2))
        mass[:, s, :s + 2] = weights / weights.sum(-1, keepdims=True)
    return mass


def test_buckets_and_top_segments_summarise_the_mass():
    rng = np.random.default_rng(0)
    mass = random_mass(rng, 3, 40)
    summary = store.summarise_segments(mass)
    buckets = summary["segment_buckets"].astype(np.float64)  # [L, S, 4]
    assert buckets.shape == (3, 40, 4)
    np.testing.assert_allclose(buckets.sum(-1), 1.0, atol=2e-3)
    s = 10
    np.testing.assert_allclose(buckets[:, s], np.stack([mass[:, s, 0], mass[:, s, 1:s].sum(-1),
                                                        mass[:, s, s], mass[:, s, s + 1]], -1), atol=1e-3)
    assert buckets[:, 0, 1:3].max() == 0.0  # step 0 has no earlier or previous step
    dense = store.expand_segments(summary["segment_top_index"], summary["segment_top_mass"])[0]  # [S, S+1]
    mean = mass.mean(0)
    for step in range(40):
        top = np.argsort(-mean[step])[:store.SEGMENT_TOP_K]
        np.testing.assert_allclose(dense[step, top], mean[step, top], atol=1e-3)
        assert dense[step].sum() <= 1.0 + 1e-3
    assert np.allclose(dense[:store.SEGMENT_TOP_K - 1], mean[:store.SEGMENT_TOP_K - 1], atol=1e-3)  # short rows: all kept


def test_stored_size_grows_with_steps_not_steps_squared():
    rng = np.random.default_rng(1)
    sizes = {}
    for n_steps in (100, 200, 400):
        arrays = {"entropy": rng.random((30, n_steps)), "segment_attention": random_mass(rng, 30, n_steps)}
        sizes[n_steps] = len(store.encode_arrays(arrays))
    assert sizes[400] / sizes[200] < 2.3 and sizes[200] / sizes[100] < 2.3  # ~linear (steps^2 would be ~4)


def test_traces_stored_in_the_old_format_still_read(tmp_path):
    problem = demo_problems(1, seed=2)[0]
    result = synthetic_trace(problem, np.random.default_rng(3))
    full = result.trace.arrays["segment_attention"]  # [L, S, S+1]
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v, np.float32) for k, v in result.trace.arrays.items()})
    old = store.decode_arrays(buffer.getvalue())
    np.testing.assert_allclose(old["segment_attention"], full, atol=1e-6)  # kept as it was
    new = store.decode_arrays(store.encode_arrays(result.trace.arrays))
    assert new["segment_attention"].shape == (1,) + full.shape[1:]
    np.testing.assert_allclose(new["entropy"], result.trace.arrays["entropy"], atol=1e-6)  # the rest: float32
    assert "segment_attention" not in store.decode_arrays(store.encode_arrays(result.trace.arrays),
                                                          dense_segments=False)
