"""The closed vocabularies: the five routes and the three verdicts, each a `Literal` type whose one
tuple every module uses (store SQL, router, views, pages), and how routes read on screen and in a
one-line summary. Names and wording only: no logic, no I/O, no imports from the package.
"""

from __future__ import annotations

from typing import Literal, get_args

Route = Literal["annotate", "self_train", "self_train_pending", "low_priority", "deferred"]
ROUTES: tuple[Route, ...] = get_args(Route)  # the order every route count and list uses

Verdict = Literal["correct", "wrong", "flawed"]  # a verdict spends budget; "skip" and "undo" rows do not
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)
SKIP = "skip"  # a label row that passes an item on: no verdict, no budget
UNDO = "undo"  # a label row that undoes an earlier row (its `undoes` column says which)

ROUTE_NAMES: dict[Route, str] = {route: route.replace("_", " ") for route in ROUTES}  # on screen


ROUTE_MEANINGS: dict[Route, str] = {  # what each route means, in one line (the Budget page's route table)
    "annotate": "sent to annotators, most valuable first: the budget covers them",
    "self_train": "the model's majority answer is a pseudo-label: probe labels certify the band's precision",
    "self_train_pending": "would be self-trained, but waits until probe labels certify the band's precision",
    "low_priority": "every sample agrees and the error is low: nothing to learn here now",
    "deferred": "annotators would be worth it, but the budget does not cover them yet",
}


def route_name(route: str) -> str:
    """A route as it reads on screen ("self train"); an unknown name passes through."""
    return ROUTE_NAMES.get(route, route)


def route_summary(counts: dict[str, int], *, readable: bool = False) -> str:
    """The one-line route mix, in ROUTES order: "annotate 3, self_train 5, ..." (`readable`: screen
    names, "self train 5"). Routes missing from `counts` are left out, unknown ones come last."""
    order = [r for r in ROUTES if r in counts] + [r for r in counts if r not in ROUTES]
    return ", ".join(f"{route_name(r) if readable else r} {counts[r]}" for r in order)
