"""The card of an export: what went into the training set and how to train on it, written beside
its files as card.json (for programs) and README.md (for people).

It records the rows by split and by label source, the router version and its pseudo-label
precision target, the precision of the model's majority answers as measured by the human verdicts
(with a Clopper-Pearson interval), the warnings, and the exact lines that train each trainer on
the files. It reads the store through store.py only, never the hidden gold, and holds no
timestamp, so a re-export writes the same card. It does not write files (export.py does).
"""

from __future__ import annotations

import json
from pathlib import Path

from scipy.stats import beta

from . import store, trainers

CARD_JSON = "card.json"
CARD_README = "README.md"
README_TITLE = "# PivotTrace training set"
CARD_MARKERS = {CARD_JSON: '{\n  "card": "pivottrace-export"', CARD_README: README_TITLE}  # how a file starts
INTERVAL_LEVEL = 0.95  # two-sided confidence level of the measured precision's interval
PRECISION_SAMPLE = ("human verdicts on the model's majority answer (correct = right, wrong = not); "
                    "the router sends its least certain problems to annotators, so this sample is "
                    "harder than the self_train band and its precision a conservative estimate")


def clopper_pearson(successes: int, trials: int, *, level: float = INTERVAL_LEVEL) -> tuple[float, float]:
    """Exact two-sided binomial interval for successes / trials (Clopper and Pearson, 1934),
    from beta quantiles; (0.0, 1.0) when there are no trials."""
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, trials], not {successes} of {trials}")
    alpha = 1.0 - level
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return low, high


def measured_precision(db) -> dict:
    """The share of human verdicts that found the majority answer right, with its interval."""
    verdicts = [row["verdict"] for row in store.effective_labels(db) if row["verdict"] in ("correct", "wrong")]
    right, n = verdicts.count("correct"), len(verdicts)
    low, high = clopper_pearson(right, n)
    return {"value": right / n if n else None, "right": right, "labelled": n, "interval": [low, high],
            "level": INTERVAL_LEVEL, "method": "Clopper-Pearson (scipy.stats.beta)", "sample": PRECISION_SAMPLE}


def target_precision(db, router_version: int | None) -> float | None:
    """The pseudo-label precision target of that router version (None: no version or no target)."""
    if router_version is None:
        return None
    for version in store.router_versions(db):
        if version["id"] == router_version:
            value = version["thresholds"].get("target_precision")
            return None if value is None else float(value)
    return None


def commands(result, options) -> dict[str, list[str]]:
    """Shell lines (TRL: Python lines) that train the exported format; export lines for the others."""
    train = result.files["train"].resolve()
    test = result.files.get("test")
    lines = {
        "verl": lambda: [trainers.pythonpath_line(),
                         trainers.shell_line(trainers.verl_command(train, test.resolve() if test else None))],
        "openrlhf": lambda: [trainers.pythonpath_line(), trainers.shell_line(trainers.openrlhf_command(
            train, input_key=options.input_key, label_key=options.label_key))],
        "trl": lambda: trainers.trl_script(train).splitlines(),
    }
    # another format goes to a folder of its own (one card per folder): out/<format>/ beside
    # out/verl/, else a subfolder
    folder = train.parent.parent if train.parent.name == result.format else train.parent
    suffix = {"verl": "parquet", "openrlhf": "jsonl", "trl": "jsonl"}
    same = [flag for flag, on in (("--include-low-priority", options.include_low_priority),
                                  ("--include-deferred", options.include_deferred)) if on]
    if options.test_fraction:
        same += [f"--test-fraction {options.test_fraction:g}", f"--seed {options.seed}"]
    return {fmt: lines[fmt]() if fmt == result.format else
            [" ".join([f"pivottrace export --format {fmt} --out {folder / fmt / ('train.' + suffix[fmt])}", *same])]
            for fmt in ("verl", "openrlhf", "trl")}


def build_card(db, result, *, options) -> dict:
    """card.json's content for an ExportResult (before the card itself is written)."""
    return {
        "card": "pivottrace-export",
        "format": result.format,
        "files": {split: path.name for split, path in result.files.items()},
        "rows": result.rows,
        "label_sources": dict(sorted(result.label_sources.items())),
        "left_out": dict(sorted(result.skipped.items())),
        "router_version": result.router_version,
        "target_precision": target_precision(db, result.router_version),
        "measured_precision": measured_precision(db),
        "instruction": options.instruction,
        "data_source": options.data_source,
        "warnings": result.warnings,
        "commands": commands(result, options),
    }


def card_json(card: dict) -> str:
    return json.dumps(card, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def card_readme(card: dict) -> str:
    """README.md: the same facts as card.json, for a person."""
    precision = card["measured_precision"]
    low, high = precision["interval"]
    fence = {"trl": "python"}
    lines = [
        f"{README_TITLE} ({card['format']})", "",
        "| split | file | rows |", "| --- | --- | --- |",
        *[f"| {split} | `{name}` | {card['rows'][split]} |" for split, name in card["files"].items()], "",
        "Labels: " + ", ".join(f"{source} {count}" for source, count in card["label_sources"].items()) + ".",
        *([("Left out: " + ", ".join(f"{reason} ({count})" for reason, count in card["left_out"].items()) + ".")]
          if card["left_out"] else []), "",
        f"- Router version: {card['router_version']}",
        f"- Pseudo-label precision target: {_share(card['target_precision'])}",
        f"- Measured precision of the majority answers: {_share(precision['value'])} "
        f"({precision['right']} of {precision['labelled']} human verdicts; "
        f"{precision['level']:.0%} {precision['method']} interval {low:.3f}-{high:.3f}). "
        f"Sample: {precision['sample']}.",
        f"- Instruction after each question: `{card['instruction']}`",
    ]
    if card["warnings"]:
        lines += ["", "## Warnings", "", *[f"- {warning}" for warning in card["warnings"]]]
    lines += ["", "## Train on it", ""]
    for fmt, command in card["commands"].items():
        lines += [f"{fmt}:", "", f"```{fence.get(fmt, 'bash') if fmt == card['format'] else 'bash'}",
                  *command, "```", ""]
    return "\n".join(lines)


def card_paths(folder: Path) -> tuple[Path, Path]:
    return folder / CARD_JSON, folder / CARD_README


def is_card(path: Path) -> bool:
    """Whether an existing card.json / README.md was written by an export (and may be replaced)."""
    try:
        with open(path, encoding="utf-8") as handle:
            head = handle.read(len(CARD_MARKERS[path.name]))
    except (OSError, UnicodeDecodeError):
        return False
    return head == CARD_MARKERS[path.name]
