"""Time and peak memory of the traced analysis forward against a plain SDPA forward and the eager reference.

Runs on the embedded default model with random token sequences of 512 and 2048 tokens (64 prompt
tokens, the rest in 32-token steps). Variants:
  traced       analyse_ids: SDPA for the prompt queries, chunked attention + streamed statistics for
               the completion queries, chunked logits statistics
  sdpa         model(ids) with SDPA attention (full [T, vocab] logits): what a plain forward costs
  sdpa_chunked analyse_ids without the attention statistics (SDPA forward + chunked logits statistics)
  reference    model(ids, output_attentions=True) with eager attention (all layers' [H, T, T] maps)
Time: one process per length loads the model once and runs the variants in turn, `--repeats`
rounds after a warm-up round, so a busy shared CPU slows every variant alike; the best and median
are printed (warm is what trace_batch sees: it analyses problem after problem in one process).
Memory: one fresh process per variant runs a single cold forward; its peak is the resident-set
high-water mark (VmHWM, reset through /proc/self/clear_refs just before the forward) minus the
resident set before it, so it sees torch's allocations, which tracemalloc cannot.
It does not measure generation.

    python bench/trace_overhead.py [--lengths 512 2048] [--repeats 3] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PROMPT_TOKENS = 64
STEP_TOKENS = 32
QUERY_CHUNK = 128
VARIANTS = ("traced", "sdpa", "sdpa_chunked", "reference")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _setup(length: int, dtype: str):
    """Model and a `run(variant, n_tokens)` closure over one random sequence of `length` tokens."""
    from pivottrace import trace  # first: importing pivottrace sets OMP_WAIT_POLICY before torch loads

    import numpy as np
    import torch

    model, _ = trace.load_model("default", dtype=dtype)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, length).tolist()
    implementation = {"traced": trace.ATTN_IMPL, "sdpa_chunked": trace.ATTN_IMPL, "sdpa": "sdpa",
                      "reference": "eager"}

    def run(variant: str, n_tokens: int = length):
        if model.config._attn_implementation != implementation[variant]:
            model.set_attn_implementation(implementation[variant])
        tokens = ids[:n_tokens]
        token_step = np.arange(n_tokens - PROMPT_TOKENS) // STEP_TOKENS  # [Tc]
        with torch.inference_mode():
            if variant == "traced":
                return trace.analyse_ids(model, tokens[:PROMPT_TOKENS], tokens[PROMPT_TOKENS:], token_step,
                                         n_steps=int(token_step[-1]) + 1, query_chunk=QUERY_CHUNK)
            tensor = torch.tensor([tokens])  # [1, T]
            if variant == "sdpa_chunked":
                hidden = model.base_model(input_ids=tensor, use_cache=False).last_hidden_state[0]  # [T, hidden]
                return trace._token_stats(model, hidden[PROMPT_TOKENS - 1:-1], tensor[0, PROMPT_TOKENS:],
                                          query_chunk=QUERY_CHUNK)
            out = model(tensor, output_attentions=variant == "reference", use_cache=False)
            return out.attentions if variant == "reference" else out.logits

    return run


def memory_worker(variant: str, length: int, dtype: str) -> dict:
    run = _setup(length, dtype)
    run(variant, PROMPT_TOKENS + STEP_TOKENS)  # pages the memory-mapped weights in
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current RSS
    before = _rss_kib("VmRSS")
    run(variant)
    return {"peak_mib": (_rss_kib("VmHWM") - before) / 1024}


def timing_worker(variants: list[str], length: int, repeats: int, dtype: str) -> dict:
    run = _setup(length, dtype)
    seconds = {variant: [] for variant in variants}
    for round_ in range(repeats + 1):  # round 0 warms up
        for variant in variants:
            started = time.perf_counter()
            run(variant)
            if round_:
                seconds[variant].append(time.perf_counter() - started)
    return seconds


def _worker(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    if proc.returncode:
        print(proc.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"worker {' '.join(args)} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--memory-worker", nargs=2, metavar=("VARIANT", "LENGTH"), help=argparse.SUPPRESS)
    parser.add_argument("--timing-worker", type=int, metavar="LENGTH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker[0], int(args.memory_worker[1]), args.dtype)))
        return
    if args.timing_worker:
        print(json.dumps(timing_worker(args.variants, args.timing_worker, args.repeats, args.dtype)))
        return
    with open("/proc/loadavg") as load:
        print(f"dtype={args.dtype} repeats={args.repeats} load average at start: {load.read().split()[0]}")
    print(f"{'tokens':>6} {'variant':<13} {'best s':>8} {'median s':>9} {'peak +MiB':>10}")
    for length in args.lengths:
        times = _worker("--timing-worker", str(length), "--repeats", str(args.repeats), "--dtype", args.dtype,
                        "--variants", *args.variants)
        rows = {}
        for variant in args.variants:
            peak = _worker("--memory-worker", variant, str(length), "--dtype", args.dtype)["peak_mib"]
            rows[variant] = {"seconds": min(times[variant]), "peak_mib": peak}
            print(f"{length:>6} {variant:<13} {min(times[variant]):>8.2f} {statistics.median(times[variant]):>9.2f} "
                  f"{peak:>10.0f}")
        for variant, base in (("traced", "sdpa"), ("reference", "sdpa"), ("traced", "sdpa_chunked")):
            if variant in rows and base in rows:
                print(f"{length:>6} {variant}/{base}: time x{rows[variant]['seconds'] / rows[base]['seconds']:.2f}, "
                      f"peak {rows[variant]['peak_mib'] - rows[base]['peak_mib']:+.0f} MiB")


if __name__ == "__main__":
    main()
