"""--device / --dtype: 'auto' picks the GPU only when there is one, a missing device is one clean
error, and the dtype reaches the model while the statistics stay float32 sums."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pivottrace import trace
from pivottrace.cli import app

NO_GPU = not torch.cuda.is_available() and not torch.backends.mps.is_available()


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU: auto picks it")
def test_auto_is_the_cpu_without_a_gpu_and_a_missing_gpu_is_a_clean_error(tiny_model_dir):
    assert trace.resolve_device("auto") == "cpu"
    for device in ("cuda", "cuda:1", "mps"):
        with pytest.raises(ValueError, match="not available|no CUDA GPU"):
            trace.resolve_device(device)
    result = CliRunner().invoke(app, ["trace", "--model", str(tiny_model_dir), "--device", "cuda:0",
                                      "--db", ":memory:"])
    assert result.exit_code == 1 and "no CUDA GPU" in result.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_picks_cuda_when_present(tiny_model_dir):
    tracer = trace.Tracer(str(tiny_model_dir), device="auto")
    assert tracer.device == "cuda" and next(tracer.model.parameters()).is_cuda
    result = tracer.analyse("What is 2 + 2?", "2 + 2 = 4.\nAnswer: 4")
    assert np.allclose(result.arrays["segment_attention"].sum(-1), 1.0, atol=1e-3)


def test_unknown_device_and_dtype_are_refused():
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        trace.resolve_device("gpu")
    with pytest.raises(ValueError, match="unknown dtype"):
        trace.resolve_dtype("int8", "cpu")
    assert trace.resolve_dtype("auto", "cuda") == torch.bfloat16
    assert trace.resolve_dtype("float16", "cpu") == torch.float16


def test_dtype_reaches_the_model_and_statistics_stay_normalised(tiny_model_dir):
    completion = "First, 3 + 4 = 7.\nThen 7 * 2 = 14.\nWait, let me check: 14.\nAnswer: 14"
    results = {}
    for dtype in ("float32", "bfloat16"):
        tracer = trace.Tracer(str(tiny_model_dir), config=trace.TraceConfig(dtype=dtype), device="cpu")
        assert next(tracer.model.parameters()).dtype == getattr(torch, dtype)
        results[dtype] = tracer.analyse("Tom has 3 + 4 marbles, doubled. How many?", completion).arrays
    for arrays in results.values():
        assert np.allclose(arrays["segment_attention"].sum(-1), 1.0, atol=1e-4)  # float32 sums either way
    np.testing.assert_allclose(results["bfloat16"]["entropy"], results["float32"]["entropy"], atol=0.05)


def test_background_trace_job_takes_a_device_and_fails_cleanly_without_it(tmp_path, tiny_model_dir):
    from pivottrace import jobs, store

    db = store.open_db(tmp_path / "jobs.db")
    with pytest.raises(jobs.JobError, match="Unknown device 'tpu'"):
        jobs.start_trace(db, model=str(tiny_model_dir), limit=1, device="tpu")
    if not NO_GPU:
        return
    job_id = store.create_job(db, "trace", {"model": str(tiny_model_dir), "limit": 1, "samples": 1,
                                            "max_new_tokens": 8, "batch_size": 1, "source": None,
                                            "route_after": False, "device": "cuda", "dtype": "auto"}, total=1)
    with pytest.raises(ValueError):  # in this process: the worker's own code path, which re-raises
        jobs.run(job_id, db)
    job = store.get_job(db, job_id)
    assert job["status"] == "failed" and "no CUDA GPU" in job["message"]
