"""Time and peak memory of the traced analysis forward against a plain SDPA forward and the eager reference.

Runs on the embedded default model with random token sequences of 512 and 2048 tokens (64 prompt
tokens, the rest in 32-token steps). Each variant runs in its own subprocess: it loads the model,
runs one cold forward to measure memory, then `--repeats` warm forwards, of which the best time is
kept (the CPU may be shared: the minimum is the least disturbed run; warm is what trace_batch sees,
since it analyses problem after problem in one process). Peak memory is the cold forward's
resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs just before it) minus the
resident set before it, so it sees torch's allocations, which tracemalloc cannot.
Variants:
  traced       analyse_ids: SDPA forward + streamed attention statistics + chunked logits statistics
  sdpa         model(ids) with SDPA attention (full [T, vocab] logits), what a plain forward costs
  sdpa_chunked the traced path with the statistics collector off (SDPA forward + chunked logits)
  reference    model(ids, output_attentions=True) with eager attention (all layers' [H, T, T] maps)
It does not measure generation (see the trace_batch figures in the report).

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
VARIANTS = ("traced", "sdpa", "sdpa_chunked", "reference")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(variant: str, length: int, repeats: int, dtype: str) -> dict:
    """Load the model, run `variant` once cold (memory), then `repeats` times warm (time)."""
    from pivottrace import trace  # first: importing pivottrace sets OMP_WAIT_POLICY before torch loads

    import numpy as np
    import torch

    model, _ = trace.load_model("default", dtype=dtype)
    if variant in ("sdpa", "reference"):
        model.set_attn_implementation("sdpa" if variant == "sdpa" else "eager")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.config.vocab_size, length).tolist()
    n_completion = length - PROMPT_TOKENS
    token_step = np.arange(n_completion) // STEP_TOKENS  # [Tc]
    n_steps = int(token_step[-1]) + 1

    def run(ids=ids, token_step=token_step, n_steps=n_steps):
        with torch.inference_mode():
            if variant == "traced":
                return trace.analyse_ids(model, ids[:PROMPT_TOKENS], ids[PROMPT_TOKENS:], token_step,
                                         n_steps=n_steps, query_chunk=128)
            if variant == "sdpa_chunked":  # analyse_ids without the collector
                tensor = torch.tensor([ids])  # [1, T]
                hidden = model.base_model(input_ids=tensor, use_cache=False).last_hidden_state[0]  # [T, hidden]
                return trace._token_stats(model, hidden[PROMPT_TOKENS - 1:-1], tensor[0, PROMPT_TOKENS:],
                                          query_chunk=128)
            out = model(torch.tensor([ids]), output_attentions=variant == "reference", use_cache=False)
            return out.attentions if variant == "reference" else out.logits

    run(ids[:PROMPT_TOKENS + STEP_TOKENS], token_step[:STEP_TOKENS], 1)  # pages the mmapped weights in
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current RSS
    before = _rss_kib("VmRSS")
    run()
    peak_mib = (_rss_kib("VmHWM") - before) / 1024
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return {"seconds": seconds, "peak_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.repeats, args.dtype)))
        return
    with open("/proc/loadavg") as load:
        print(f"dtype={args.dtype} repeats={args.repeats} load average at start: {load.read().split()[0]}")
    print(f"{'tokens':>6} {'variant':<13} {'best s':>8} {'median s':>9} {'peak +MiB':>10}")
    for length in args.lengths:
        rows = {}
        for variant in args.variants:
            proc = subprocess.run([sys.executable, __file__, "--worker", variant, str(length), "--repeats",
                                   str(args.repeats), "--dtype", args.dtype],
                                  capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"worker {variant} {length} failed")
            measured = json.loads(proc.stdout.strip().splitlines()[-1])
            rows[variant] = {"seconds": min(measured["seconds"]), "peak_mib": measured["peak_mib"]}
            print(f"{length:>6} {variant:<13} {min(measured['seconds']):>8.2f} "
                  f"{statistics.median(measured['seconds']):>9.2f} {measured['peak_mib']:>10.0f}")
        if "sdpa" in rows:
            base = rows["sdpa"]
            for variant in ("traced", "sdpa_chunked", "reference"):
                if variant in rows:
                    print(f"{length:>6} {variant}/sdpa: time x{rows[variant]['seconds'] / base['seconds']:.2f}, "
                          f"peak {rows[variant]['peak_mib'] - base['peak_mib']:+.0f} MiB")
        if "sdpa_chunked" in rows and "traced" in rows:
            print(f"{length:>6} traced/sdpa_chunked (cost of the statistics alone): time "
                  f"x{rows['traced']['seconds'] / rows['sdpa_chunked']['seconds']:.2f}, "
                  f"peak {rows['traced']['peak_mib'] - rows['sdpa_chunked']['peak_mib']:+.0f} MiB")


if __name__ == "__main__":
    main()
