"""Benchmark: what the decode loop costs beyond the model's own forward passes.

`Tracer._generate` decodes greedy + K sampled completions per problem in its own loop (one prefill
per prompt, finished rows leave the batch, a row stops after its "Answer: <number>" line). Every
step the loop also samples, checks each row for EOS and for a finished answer line, and moves the
chosen tokens to Python. This benchmark times a real `trace_batch`-shaped generation (1 + K rows
per problem) and, in the same run, the time spent inside the model's forward passes and the LM
head (timed by wrapping them); the rest is the loop's own cost. On a GPU the forward of a small
model is short, so a loop share that is small here can be what limits throughput there: run it
there before optimising the loop. (A tiny random model is no stand-in: its flat next-token
distribution makes the nucleus sampler sort the whole vocabulary every step, which real models at
temperature 0.8 rarely need.)

    python bench/decode_loop.py [--problems 8] [--samples 4] [--max-new-tokens 160] [--device cpu]

It does not test correctness (tests/test_trace_stats.py does) and does not analyse the chains.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def timed_forwards(tracer, *, synchronise=None) -> dict:
    """Wrap the base model's forward and the LM head so that the seconds spent in them add up
    (`synchronise`, e.g. torch.cuda.synchronize, makes an asynchronous device finish first)."""
    spent = {"seconds": 0.0, "calls": 0}

    def wrap(module):
        original = module.forward

        def forward(*args, **kwargs):
            if synchronise:
                synchronise()
            start = time.perf_counter()
            out = original(*args, **kwargs)
            if synchronise:
                synchronise()
            spent["seconds"] += time.perf_counter() - start
            spent["calls"] += 1
            return out

        module.forward = forward

    wrap(tracer.model.base_model)
    wrap(tracer.model.get_output_embeddings())
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="model spec (default: the embedded model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from pivottrace.datasets import demo_problems
    from pivottrace.trace import Tracer, tracer_config

    torch.set_num_threads(max(1, torch.get_num_threads()))
    config = tracer_config(samples=args.samples, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    tracer = Tracer(args.model, config=config, device=args.device)
    spent = timed_forwards(tracer, synchronise=torch.cuda.synchronize if tracer.device.startswith("cuda") else None)
    prompts = tracer._prompts([p.text for p in demo_problems(args.problems, seed=0)])
    tracer._generate(prompts[:2], copies=1 + args.samples, n_greedy=1)  # warm-up
    runs = []
    for _ in range(args.repeats):
        spent.update(seconds=0.0, calls=0)
        start = time.perf_counter()
        rows = tracer._generate(prompts, copies=1 + args.samples, n_greedy=1)
        total = time.perf_counter() - start
        tokens = sum(n for r in rows for _, n in r)
        runs.append((total, spent["seconds"], spent["calls"], tokens))
    total, forward, calls, tokens = min(runs)  # the least disturbed run
    loop = total - forward
    print(f"model: {tracer.model_id} on {tracer.device}, "
          f"{args.problems} problems x {1 + args.samples} rows, batch {args.batch_size} problems, "
          f"{args.max_new_tokens} new tokens at most; best of {args.repeats}")
    print(f"generation: {total:.2f} s for {tokens} tokens ({tokens / total:.0f} tokens/s)")
    print(f"  inside the model's forward passes and LM head: {forward:.2f} s ({calls} calls)")
    print(f"  the loop itself (sampling, stop checks, dropping finished rows' KV cache): {loop:.2f} s = {loop / total:.0%} of the "
          f"time, {loop / max(calls // 2, 1) * 1e3:.2f} ms per decode step; total / forward = {total / forward:.2f}x")


if __name__ == "__main__":
    main()
