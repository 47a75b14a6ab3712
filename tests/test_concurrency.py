"""Two processes label from the same queue at once: no item labelled twice, no label lost."""

import multiprocessing as mp
import sys
from collections import Counter

from conftest import build_app_db

from pivottrace import store, views

BUDGET = 16  # queue length: enough rounds for the two workers to collide often


def _annotate_until_empty(path: str, annotator: str, start, results) -> None:
    db = store.open_db(path)
    start.wait()
    labelled, errors = [], []
    while True:
        item = views.next_item(db, annotator)
        if item is None:
            break
        try:
            action = "accept" if item.majority is not None else "flawed"
            views.submit_label(db, annotator=annotator, problem_id=item.problem_id, action=action,
                               shown_answer=item.majority, seconds=0.1)
        except Exception as err:  # any refusal here would mean two workers held one item
            errors.append(f"{type(err).__name__}: {err}")
            break
        labelled.append(item.problem_id)
    results.put((annotator, labelled, errors))


def test_two_processes_label_the_same_queue(tmp_path, monkeypatch):
    # A spawned child re-runs __main__'s file; after an AppTest that is a page script. Run none.
    monkeypatch.delattr(sys.modules["__main__"], "__file__", raising=False)
    path = tmp_path / "c.db"
    build_app_db(path, budget=BUDGET)
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(2), ctx.Queue()  # both start labelling once both are loaded
    workers = [ctx.Process(target=_annotate_until_empty, args=(str(path), name, start, results))
               for name in ("ann", "bob")]
    for w in workers:
        w.start()
    reported = dict((name, (done, errors)) for name, done, errors in (results.get(timeout=240) for _ in workers))
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0

    assert reported["ann"][1] == [] and reported["bob"][1] == []
    ann, bob = reported["ann"][0], reported["bob"][0]
    assert ann and bob, "both annotators should have worked the queue"
    assert not set(ann) & set(bob)  # never the same item

    db = store.open_db(path)
    rows = list(db.query("select problem_id, annotator from labels where verdict != 'skip'"))
    per_problem = Counter(r["problem_id"] for r in rows)
    assert max(per_problem.values()) == 1  # no item labelled twice
    assert len(rows) == len(ann) + len(bob) == BUDGET  # no label lost; the budget was spent exactly
    assert Counter(r["annotator"] for r in rows) == {"ann": len(ann), "bob": len(bob)}
    assert store.budget_status(db)["remaining"] == 0
