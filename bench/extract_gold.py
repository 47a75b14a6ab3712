"""Benchmark: gold-answer extraction (`answers.extract_gold`) on hostile and long answers.

Issue 13 found `\\boxed{}` extraction quadratic in the number of boxes: 7,000 characters of
unclosed `\\boxed{` took 0.39 s, 28,000 took 7.8 s, and a 1.2 MB answer hung ingest for hours.
The target is a 1 MB answer under 50 ms. The baseline is the previous implementation (a scan
forward from every box, copied below), measured in the same run on the sizes it can finish.

Each figure is the best of --repeats runs of this process's CPU time (the machine is shared;
wall time would measure the neighbours), with the load average printed.
Run: .venv/bin/python bench/extract_gold.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pivottrace.answers import _boxed_contents, extract_gold  # noqa: E402

TARGET_MS = 50.0  # the budget for a 1 MB answer
MEGABYTE = 1_000_000


def quadratic_boxed_contents(text: str) -> list[str]:
    """The previous implementation: from each box, scan forward for its closing brace."""
    found = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    found.append(text[start:i].strip())
                    break
    return found


def best_cpu_ms(func, text: str, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        func(text)
        best = min(best, time.process_time() - start)
    return best * 1000.0


def sized(unit: str, chars: int) -> str:
    return unit * max(chars // len(unit), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; best of {args.repeats}, CPU ms")

    unclosed = "\\boxed{"  # the hostile answer: boxes that never close
    print("\nunclosed \\boxed{ repeated    chars      before ms    now ms    ratio")
    for chars in (7_000, 14_000, 28_000):
        text = sized(unclosed, chars)
        assert quadratic_boxed_contents(text) == _boxed_contents(text)
        before = best_cpu_ms(quadratic_boxed_contents, text, 1)  # seconds each: once is enough
        now = best_cpu_ms(_boxed_contents, text, args.repeats)
        print(f"{'':28s} {len(text):>7,} {before:>12.1f} {now:>9.2f} {before / max(now, 1e-3):>8.0f}x")

    print("\n1 MB answers                      chars    extract_gold ms   target")
    cases = {
        "unclosed \\boxed{ (the hang)": sized(unclosed, MEGABYTE),
        "closed \\boxed{1}": sized("\\boxed{1} ", MEGABYTE),
        "nested braces, one box": "\\boxed{" + sized("{a}", MEGABYTE - 9) + "}",
        "worked solution, box at end": sized("Step: 3 + 4 = 7, so 7 apples. ", MEGABYTE) + "\\boxed{7}",
        "GSM8K style (#### at end)": sized("She has {3} + {4} = 7. ", MEGABYTE) + "#### 7",
    }
    worst = 0.0
    for name, text in cases.items():
        ms = best_cpu_ms(extract_gold, text, args.repeats)
        worst = max(worst, ms)
        print(f"{name:30s} {len(text):>9,} {ms:>14.1f}   {'ok' if ms < TARGET_MS else 'OVER'} (< {TARGET_MS:.0f})")
    print(f"\nworst 1 MB case {worst:.1f} ms: {'under' if worst < TARGET_MS else 'OVER'} the {TARGET_MS:.0f} ms target")


if __name__ == "__main__":
    main()
