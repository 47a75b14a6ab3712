"""The analysis pass on long chains (2k-16k tokens): time and peak memory against a plain SDPA forward.

Runs on the embedded default model (SmolLM2-135M: 30 layers, 9 heads) with random token sequences
of each length (64 prompt tokens, the rest in 32-token steps, so 16k tokens is 510 steps). Variants,
each in a fresh process that loads the model, pages the weights in with a tiny forward, then runs
ONE cold forward of the full length:
  traced     trace.analyse_ids: SDPA for the prompt queries, chunked attention probabilities and
             streamed statistics for the completion queries, chunked logits statistics
  sdpa       the same forward with plain SDPA and the same chunked logits statistics, no attention
             statistics (what the model costs anyway; a full [T, vocab] logits tensor would be 3 GiB
             at 16k and is not what we compare against)
  reference  model(ids, output_attentions=True), eager: all layers' [H, T, T] maps; run only where
             its maps fit in --reference-max-gib, else its size is printed as an estimate
Peak memory: the resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs just
before the forward) minus the resident set before it. The bound printed next to it is one layer's
query chunk of attention probabilities, scores and probabilities: 2 x heads x chunk x T x 4 bytes,
which grows with T, not T^2.
Storage: the traced worker also writes its arrays, and the size of one stored trace (store.save_trace
into a fresh SQLite file, with 4 short samples) is printed next to the size the old format (every
array float32, segment_attention [L, S, S+1]) would have had.

    python bench/long_trace.py [--lengths 2048 4096 8192 16384] [--dtype float32]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT_TOKENS = 64
STEP_TOKENS = 32
QUERY_CHUNK = 128
VARIANTS = ("sdpa", "traced", "reference")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(variant: str, length: int, dtype: str, arrays_out: str | None) -> dict:
    from pivottrace import trace  # first: importing pivottrace sets OMP_WAIT_POLICY before torch loads

    import numpy as np
    import torch

    model, _ = trace.load_model("default", dtype=dtype)
    if variant == "sdpa":
        model.set_attn_implementation("sdpa")
    elif variant == "reference":
        model.set_attn_implementation("eager")
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, length).tolist()

    def run(n_tokens: int):
        tokens = ids[:n_tokens]
        token_step = np.arange(n_tokens - PROMPT_TOKENS) // STEP_TOKENS  # [Tc]
        with torch.inference_mode():
            if variant == "traced":
                return trace.analyse_ids(model, tokens[:PROMPT_TOKENS], tokens[PROMPT_TOKENS:], token_step,
                                         n_steps=int(token_step[-1]) + 1, query_chunk=QUERY_CHUNK)
            tensor = torch.tensor([tokens])  # [1, T]
            if variant == "reference":
                return model.base_model(input_ids=tensor, output_attentions=True, use_cache=False).attentions
            hidden = model.base_model(input_ids=tensor, use_cache=False).last_hidden_state[0]  # [T, hidden]
            return trace._token_stats(model, hidden[PROMPT_TOKENS - 1:-1], tensor[0, PROMPT_TOKENS:],
                                      query_chunk=QUERY_CHUNK)

    run(PROMPT_TOKENS + STEP_TOKENS)  # pages the memory-mapped weights in
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current RSS
    before = _rss_kib("VmRSS")
    started = time.perf_counter()
    out = run(length)
    seconds = time.perf_counter() - started
    peak_mib = (_rss_kib("VmHWM") - before) / 1024
    if variant == "traced" and arrays_out:
        np.savez(arrays_out, **out)
    return {"seconds": seconds, "peak_mib": peak_mib, "heads": model.config.num_attention_heads,
            "layers": model.config.num_hidden_layers}


def stored_sizes(arrays_path: str) -> dict:
    """Bytes of one stored trace of these arrays: the store's format now, and the old float32 format."""
    import numpy as np

    from pivottrace import store
    from pivottrace.records import ProblemTrace, TraceResult

    with np.load(arrays_path) as data:
        arrays = {k: data[k] for k in data.files}
    n_steps = arrays["entropy"].shape[1]
    arrays["cue"] = np.zeros(n_steps)
    old = io.BytesIO()
    np.savez_compressed(old, **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})
    n_tokens = len(arrays["token_entropy"])
    trace_result = TraceResult(prompt="p" * 300, completion="x" * (4 * n_tokens),
                               steps=[{"text": "x", "char_start": 0, "char_end": 1, "tok_start": 0, "tok_end": 1}] * n_steps,
                               tokens=["x"] * n_tokens, n_prompt_tokens=PROMPT_TOKENS, n_completion_tokens=n_tokens,
                               arrays=arrays, mean_logprob=-1.0, min_logprob=-5.0, answer_prob=0.5, answer="1")
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "one.db"
        db = store.open_db(db_path)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        empty = db_path.stat().st_size
        store.save_trace(db, "p1", "m", ProblemTrace(trace=trace_result, samples=["Answer: 1"] * 4,
                                                     sample_answers=["1"] * 4, generated_tokens=n_tokens, seconds=1.0))
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.conn.close()
        db_bytes = db_path.stat().st_size - empty
    summary = store.summarise_segments(arrays["segment_attention"])
    kept = summary["segment_top_mass"].astype(np.float64).sum(-1)  # [S] layer-mean mass in the top K
    return {"arrays_now": len(store.encode_arrays(arrays)), "arrays_old_float32": len(old.getvalue()),
            "db_per_problem": db_bytes, "steps": n_steps, "top_k_mass_mean": float(kept.mean()),
            "top_k_mass_min": float(kept.min())}


def store_top_k() -> int:
    from pivottrace import store

    return store.SEGMENT_TOP_K


def _worker(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    if proc.returncode:
        print(proc.stderr[-2000:], file=sys.stderr)
        return {"failed": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--reference-max-gib", type=float, default=6.0,
                        help="run the eager reference only where its [L, H, T, T] maps fit in this")
    parser.add_argument("--arrays-dir", default=None, help="keep the traced arrays here (default: a temp folder)")
    parser.add_argument("--sizes-only", action="store_true", help="only the storage sizes, from --arrays-dir")
    parser.add_argument("--worker", nargs=3, metavar=("VARIANT", "LENGTH", "ARRAYS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        variant, length, arrays_out = args.worker
        print(json.dumps(worker(variant, int(length), args.dtype, arrays_out if arrays_out != "-" else None)))
        return
    arrays_dir = Path(args.arrays_dir or tempfile.mkdtemp(prefix="long-trace-"))
    arrays_dir.mkdir(parents=True, exist_ok=True)
    if not args.sizes_only:
        with open("/proc/loadavg") as load:
            print(f"dtype={args.dtype} query_chunk={QUERY_CHUNK} load average at start: {load.read().split()[0]}",
                  flush=True)
        print(f"{'tokens':>6} {'variant':<10} {'seconds':>8} {'peak +MiB':>10}", flush=True)
    for length in args.lengths:
        arrays_path = str(arrays_dir / f"arrays_{length}.npz")
        if not args.sizes_only:
            rows = {}
            for variant in VARIANTS:
                if variant == "reference":
                    maps_gib = 30 * 9 * length * length * 4 / 2**30  # L x H x T x T float32
                    if maps_gib > args.reference_max_gib:
                        print(f"{length:>6} {'reference':<10} {'-':>8} {'-':>10}  not run: its maps alone "
                              f"need {maps_gib:.0f} GiB", flush=True)
                        continue
                rows[variant] = _worker("--worker", variant, str(length), arrays_path if variant == "traced" else "-",
                                        "--dtype", args.dtype)
                row = rows[variant]
                if "failed" in row:
                    print(f"{length:>6} {variant:<10} failed: {row['failed']}", flush=True)
                    continue
                print(f"{length:>6} {variant:<10} {row['seconds']:>8.1f} {row['peak_mib']:>10.0f}", flush=True)
            if all(v in rows and "failed" not in rows[v] for v in ("traced", "sdpa")):
                traced, sdpa = rows["traced"], rows["sdpa"]
                chunk_mib = 2 * traced["heads"] * QUERY_CHUNK * length * 4 / 2**20
                print(f"{length:>6} traced/sdpa: time x{traced['seconds'] / sdpa['seconds']:.2f}, "
                      f"peak x{traced['peak_mib'] / max(sdpa['peak_mib'], 1):.2f} "
                      f"({traced['peak_mib'] - sdpa['peak_mib']:+.0f} MiB; one layer's chunk: {chunk_mib:.0f} MiB)",
                      flush=True)
        if Path(arrays_path).is_file():
            sizes = stored_sizes(arrays_path)
            print(f"{length:>6} stored: {sizes['steps']} steps, arrays {sizes['arrays_now'] / 1024:.0f} KiB "
                  f"(old float32 format {sizes['arrays_old_float32'] / 1024:.0f} KiB), "
                  f"database per problem {sizes['db_per_problem'] / 1024:.0f} KiB; the {store_top_k()} largest "
                  f"segments hold {sizes['top_k_mass_mean']:.1%} of a step's layer-mean attention "
                  f"(min {sizes['top_k_mass_min']:.1%})", flush=True)


if __name__ == "__main__":
    main()
