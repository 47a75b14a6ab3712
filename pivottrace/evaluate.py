"""The oracle evaluation: plays the labelling loop from gold answers and saves the results (report.py renders them).

Input: a database with traced problems that carry gold answers (`problems.gold`). For each label
budget (a share of the pool) and each strategy (PivotTrace, the baselines and the ablations) it
routes with the cold-start prior, lets an oracle label the `annotate` picks in rounds, recalibrates,
re-routes, and stops when the budget is spent. It also records each round's picks and the
hindsight catch (the first round, picked before any label, followed by the estimator fitted to
every gold answer), which tells a shortfall the cold start decided from one learning could close.
Output: the selection-quality numbers and a report
folder (results.json, figures.json, and the Markdown/HTML/PNG that report.py renders);
`load_report` reads them back for the app. It renders nothing itself (report.py does).

This is the only module that reads gold answers. It never writes to the database it reads: the
loop runs in memory with the same estimator and router code as `pipeline.route`, so the user's
labels and routes stay untouched. It does not trace.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import store
from .answers import answers_match, extract_answer
from .features import NUMERIC_FEATURES, build_features
from .posterior import BAYES_FACTOR_TO_SWITCH, estimator_for
from .route import DEFAULT_TARGET_PRECISION, FIXED_THRESHOLDS, RouterConfig, route_pool
from .uncertainty import ATTENTION_FEATURES, EstimatorConfig, FeatureTable
from .metrics import calibration_metrics, reliability_bins
from .report import MAIN, build_figures, render_html, render_markdown, write_pngs

BUDGET_SHARES = (0.05, 0.10, 0.20, 0.30, 0.50)  # label budgets as shares of the pool (the sweep)
ROUNDS = 5  # labels arrive in this many rounds per budget; the router recalibrates after each
CROSS_FIT_FOLDS = 5  # labelled problems get out-of-fold uncertainty, so every problem is scored unseen
MIN_POOL = 10  # fewer traced problems with gold than this cannot say anything about selection
PIVOT_LIFT = 0.25  # the pivot_lift ablation's value weight (the router's default before this was measured)
HEADROOM_SHARES = (0.3, 1.0)  # learning_headroom: random labels worth 30 % of the pool, and every label
HEADROOM_REPEATS = 5  # fresh fold splits per share (the spread says how much a difference can mean)
RANDOM_SEEDS = 10  # random selection is run with this many seeds; the report gives mean and range
DEFAULT_REPORT_DIR = "out/eval"  # `pivottrace eval` writes here unless told otherwise (out/ is git-ignored)
REPORT_FILES = ("report.md", "report.html", "results.json", "figures.json")
SIGNAL_GROUPS = {**{name: "attention / pivots" for name in ATTENTION_FEATURES},
                 "mean_logprob": "confidence", "min_logprob": "confidence", "answer_prob": "confidence",
                 "vote_share": "consistency", "n_distinct": "consistency", "vote_entropy": "consistency",
                 "answer_found": "verification", "greedy_agrees": "verification", "length": "verification"}


class EvaluationError(ValueError):
    """The pool cannot be evaluated (no gold answers, too few traces) or a report is missing."""


# --------------------------------------------------------------------------- pool

@dataclass
class EvalPool:
    """Feature rows of the traced problems that have gold, and the truth the oracle knows."""

    rows: list[dict]  # one feature row per problem (features.feature_row)
    wrong: np.ndarray  # [N] 1 = the majority answer is wrong by the gold answer
    model_id: str
    n_without_gold: int = 0  # traced problems left out: no gold answer

    @property
    def size(self) -> int:
        return len(self.rows)


def pool_from_rows(rows: list[dict], gold: dict[str, str], *, model_id: str) -> EvalPool:
    """Keep the rows whose problem has gold; the truth is answers_match(majority, gold)."""
    kept = [r for r in rows if gold.get(r["problem_id"]) not in (None, "")]
    wrong = np.array([int(not answers_match(r.get("majority_answer"), gold[r["problem_id"]]))
                      for r in kept], dtype=int)  # [N]
    return EvalPool(kept, wrong, model_id, len(rows) - len(kept))


def load_pool(db, *, model_id: str | None = None) -> EvalPool:
    """Features recomputed in memory from the stored traces and their completions' answers
    (nothing is written), plus gold."""
    model_id = model_id or store.latest_model_id(db)
    if model_id is None:
        raise EvaluationError("Nothing is traced yet: run `pivottrace trace` first.")
    traces = list(store.iter_trace_arrays(db, model_id))
    if not traces:
        raise EvaluationError(f"No traces for model {model_id!r}.")
    # answers re-read from the completions, so a pool stored by an older extraction is judged right
    for trace in traces:
        trace["answer"] = extract_answer(trace["completion"])
    texts = store.all_sample_answers(db, model_id, column="completion")
    answers = {key: [extract_answer(text) for text in values] for key, values in texts.items()}
    rows, _ = build_features(traces, answers)
    gold = store.gold_answers(db)
    pool = pool_from_rows(rows, gold, model_id=model_id)
    if pool.size < MIN_POOL:
        raise EvaluationError(f"Only {pool.size} traced problems have a gold answer; the evaluation "
                              f"needs at least {MIN_POOL}.")
    return pool


# --------------------------------------------------------------------------- strategies

@dataclass
class Strategy:
    name: str
    description: str
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    select: str = "value"  # "value": the router's annotate picks; "random": uniform among the unlabelled
    learn: bool = True  # False: the estimator ignores the labels (they still certify the bands)


def strategies(*, target_precision: float = DEFAULT_TARGET_PRECISION) -> list[Strategy]:
    """PivotTrace, the three baselines and the seed's three ablations, on the same traces."""
    router = RouterConfig(target_precision=target_precision)
    flat = RouterConfig(target_precision=target_precision, pivot_tiebreak=False)  # one signal: no pivot tiebreak
    return [
        Strategy(MAIN, "all signals, Bayesian update of the cold-start prior from the first label (the "
                 "confidence-only or vote-share-only model instead when the labels favour it by a Bayes factor "
                 f"above {BAYES_FACTOR_TO_SWITCH:g}), certified self-train band", router=router),
        Strategy("random", "random annotate picks; the rest routed like PivotTrace", router=router,
                 select="random"),
        Strategy("confidence_only", "mean token log-prob only (rank prior, then its Bayesian update)",
                 EstimatorConfig.confidence_only(), flat),
        Strategy("vote_share_only", "vote share only (1 - share prior, then its Bayesian update)",
                 EstimatorConfig.vote_share_only(), flat),
        Strategy("no_attention", "ablation: no attention or pivot signals",
                 EstimatorConfig.without(ATTENTION_FEATURES), flat),
        Strategy("pivot_lift", f"ablation: annotate value lifted by pivot richness, u x (1 + {PIVOT_LIFT} x "
                 f"pivot-density percentile)", router=RouterConfig(target_precision=target_precision,
                                                                   pivot_value_weight=PIVOT_LIFT)),
        Strategy("no_model_choice", "ablation: the all-signal posterior throughout (never the confidence-only "
                 "or vote-share-only model, whatever the labels favour)", EstimatorConfig().single(), router),
        Strategy("labels_ignored", "ablation: the cold-start prior throughout (labels never update it)",
                 select="value", learn=False, router=router),
        Strategy("uncertified", "ablation: self-train on the estimated band alone (no probe labels, no bound)",
                 router=RouterConfig(target_precision=target_precision, certify=False)),
        Strategy("two_way", "ablation: annotate vs everything else (no low_priority, no precision band)",
                 router=RouterConfig(target_precision=target_precision, three_way=False)),
        Strategy("fixed_thresholds", f"ablation: fixed thresholds (low <= {FIXED_THRESHOLDS[0]}, "
                 f"self-train <= {FIXED_THRESHOLDS[1]})",
                 router=RouterConfig(target_precision=target_precision, fixed_thresholds=FIXED_THRESHOLDS)),
    ]


# --------------------------------------------------------------------------- the loop

@dataclass
class BudgetResult:
    """What one strategy achieved with one budget. Uncertainty metrics cover the whole pool."""

    strategy: str
    budget_share: float
    budget: int  # labels allowed
    labels: int  # labels spent (less than budget when nothing was left to annotate)
    rounds: int
    estimator: str  # cold_start or bayes (the posterior), at the end
    n_scored: int  # problems the uncertainty metrics cover: the whole pool, for every strategy
    auroc: float | None
    ece: float | None
    brier: float | None
    human_share: float  # labels / pool
    self_train: int
    self_train_precision: float | None  # share of self_train majorities that are right
    estimated_self_train_precision: float | None  # what the router believed
    low_priority: int
    low_priority_precision: float | None
    deferred: int
    train_size: int  # human labels + self_train pseudo-labels
    train_precision: float | None
    wrong_total: int
    caught: int  # wrong majorities labelled by the oracle (corrected)
    leaked: int  # wrong majorities in self_train (trained on as if right)
    missed: int  # wrong majorities left in low_priority, deferred or self_train_pending
    pending: int = 0  # problems waiting in self_train_pending
    self_train_open: bool | None = None  # the certificate held (None: the strategy does not certify)
    self_train_lower_bound: float | None = None  # the certificate's lower bound on self-train precision
    below_target: bool = False  # self_train non-empty and its realised precision < target
    seeds: int = 1  # runs averaged into this row (random selection)
    caught_range: list | None = None  # [min, max] over the seeds
    auroc_range: list | None = None
    reliability: list = field(default_factory=list)
    # the learning test, paired: on the problems still unlabelled (no model saw their labels), the
    # AUROC of the strategy's final estimator and of the cold-start prior on the very same problems
    n_unlabelled: int = 0
    auroc_unlabelled: float | None = None
    auroc_unlabelled_cold: float | None = None
    caught_ids: list | None = None  # the problem ids of the wrong majorities caught (None: averaged over seeds)
    picked_rounds: list | None = None  # [rounds][picks] the problem ids labelled, round by round, in pick order
    first_round_caught: int | None = None  # wrong majorities among the first round's picks (made before any label)
    hindsight_caught: int | None = None  # the first round, then the rest ranked by the strategy's estimator
    # fitted to every gold answer in the pool: what learning taken to its limit would have caught


def play(pool: EvalPool, strategy: Strategy, budget: int, *, rounds: int = ROUNDS,
         seed: int = 0) -> BudgetResult:
    """Route, let the oracle label the picks in `rounds` rounds, recalibrate, re-route; then score."""
    rows, wrong = pool.rows, pool.wrong
    table = FeatureTable.from_rows(rows)  # converted once; it caches the prior across rounds
    ids = table.ids
    index = {pid: i for i, pid in enumerate(ids)}
    rng = np.random.default_rng(seed)
    outcomes: dict[str, int] = {}
    picked_rounds: list[list[str]] = []
    round_size = max(math.ceil(budget / max(rounds, 1)), 1)
    n_rounds = 0
    last = None  # the previous round's routing: its thresholds and routes (hysteresis, as in pipeline.route)
    while len(outcomes) < budget:
        left = budget - len(outcomes)
        if strategy.select == "random":
            open_ = [pid for pid in ids if pid not in outcomes]
            picks = list(rng.choice(open_, size=min(round_size, left, len(open_)), replace=False)) if open_ else []
        else:
            routing = last = _route(rows, table, outcomes, strategy, left, last)[1]
            ranked = sorted((d for d in routing.decisions
                             if d["route"] == "annotate" and d["problem_id"] not in outcomes),
                            key=lambda d: -d["value"])
            picks = [d["problem_id"] for d in ranked[:min(round_size, left)]]
        if not picks:
            break
        for pid in picks:  # the oracle: "wrong" with the gold answer, or "correct"
            outcomes[str(pid)] = int(wrong[index[str(pid)]])
        picked_rounds.append([str(pid) for pid in picks])
        n_rounds += 1

    estimator, routing = _route(rows, table, outcomes, strategy, budget - len(outcomes), last)
    u, fold_auroc = _out_of_sample(table, outcomes, strategy, wrong)  # [N]
    certificate = routing.thresholds.get("self_train_certificate") if routing.thresholds.get("certified") else None
    route = np.array([d["route"] for d in routing.decisions], dtype=object)  # [N]
    labelled = np.array([pid in outcomes for pid in ids], bool)  # [N]
    self_train = (route == "self_train") & ~labelled
    low = (route == "low_priority") & ~labelled
    deferred = ((route == "deferred") | (route == "annotate")) & ~labelled  # unspent picks wait too
    pending = (route == "self_train_pending") & ~labelled
    right = 1 - wrong
    train_size = int(labelled.sum() + self_train.sum())
    metrics = calibration_metrics(u, wrong)
    rest = ~labelled
    learned = calibration_metrics(np.asarray(estimator.predict(table), float)[rest], wrong[rest])["auroc"]
    cold = calibration_metrics(strategy.estimator.prior().predict(table)[rest], wrong[rest])["auroc"]
    return BudgetResult(
        strategy=strategy.name, budget_share=budget / pool.size, budget=int(budget),
        labels=int(labelled.sum()), rounds=n_rounds, estimator=estimator.kind,
        n_scored=metrics["n"], auroc=fold_auroc, ece=metrics["ece"], brier=metrics["brier"],
        human_share=float(labelled.mean()),
        self_train=int(self_train.sum()), self_train_precision=_share(right, self_train),
        estimated_self_train_precision=_share(1.0 - u, self_train),
        low_priority=int(low.sum()), low_priority_precision=_share(right, low), deferred=int(deferred.sum()),
        train_size=train_size,
        train_precision=(float(labelled.sum() + right[self_train].sum()) / train_size) if train_size else None,
        wrong_total=int(wrong.sum()), caught=int((wrong & labelled).sum()),
        leaked=int((wrong.astype(bool) & self_train).sum()),
        missed=int((wrong.astype(bool) & (low | deferred | pending)).sum()),
        pending=int(pending.sum()),
        self_train_open=None if certificate is None else bool(certificate["open"]),
        self_train_lower_bound=None if certificate is None else certificate["lower_bound"],
        below_target=bool(self_train.any() and right[self_train].mean() < strategy.router.target_precision),
        reliability=reliability_bins(u, wrong),
        n_unlabelled=int(rest.sum()), auroc_unlabelled=learned, auroc_unlabelled_cold=cold,
        caught_ids=[pid for pid, hit in zip(ids, wrong.astype(bool) & labelled) if hit],
        picked_rounds=picked_rounds,
        first_round_caught=sum(outcomes[pid] for pid in picked_rounds[0]) if picked_rounds else None,
        hindsight_caught=hindsight_caught(table, wrong, strategy, picked_rounds),
    )


def hindsight_caught(table: FeatureTable, wrong: np.ndarray, strategy: Strategy, picked_rounds: list) -> int | None:
    """Wrong majorities caught by the first round's picks followed, up to the same number of labels,
    by the unlabelled problems most likely wrong under the strategy's estimator fitted to every gold
    answer in the pool: learning taken to its limit, since the first round is picked before any label
    returns. When even this falls short of a baseline, the cold start decided the gap (a luckier
    ranking than the fitted one can still do a little better). None for random selection and for
    strategies that ignore labels."""
    if strategy.select == "random" or not strategy.learn or not picked_rounds:
        return None
    every = dict(zip(table.ids, (int(w) for w in wrong)))
    hindsight = estimator_for(table, every, config=strategy.estimator, with_metrics=False)
    first = set(picked_rounds[0])
    later = sum(len(r) for r in picked_rounds[1:])
    order = np.argsort(-np.asarray(hindsight.predict(table), float), kind="stable")  # [N] most likely wrong first
    rest = [i for i in order if table.ids[i] not in first][:later]
    return int(sum(every[pid] for pid in first) + wrong[rest].sum())


def _estimator(table, outcomes, strategy: Strategy):
    return estimator_for(table, outcomes if strategy.learn else {}, config=strategy.estimator, with_metrics=False)


def _route(rows, table, outcomes, strategy: Strategy, budget_left: int, last=None):
    """(estimator, routing) after the labels in `outcomes`; `last` is the previous round's routing."""
    estimator = _estimator(table, outcomes, strategy)
    routing = route_pool(rows, estimator.predict(table), budget_remaining=max(budget_left, 0),
                         config=strategy.router, exclude=set(outcomes), outcomes=outcomes,
                         previous=last.thresholds if last else None,
                         previous_routes=dict(zip(last.problem_ids, last.routes.tolist())) if last else None)
    return estimator, routing


def _out_of_sample(table: FeatureTable, outcomes, strategy: Strategy,
                   wrong: np.ndarray) -> tuple[np.ndarray, float | None]:
    """([N] uncertainty of every problem from an estimator that did not see its label, mean AUROC over the folds).

    The pool is split into CROSS_FIT_FOLDS folds (stratified by the truth, the same split for every
    strategy and budget). Each fold is scored by the strategy's estimator fitted on the labels
    outside it, so no problem is scored by a model that saw its label, labelled or not. The AUROC
    is taken within each fold and averaged: pooling the scores of models fitted on different label
    sets into one AUROC mixes their scales, which alone cost up to 0.02 of AUROC on the demo pools
    (random labels, every other label: pooled 0.712 against 0.730 per fold on demo-200).
    """
    folds = pool_folds(wrong)
    u = np.zeros(len(table))  # [N]
    aurocs = []
    for fold in folds:
        held = set(table.ids[i] for i in fold)
        estimator = _estimator(table, {pid: y for pid, y in outcomes.items() if pid not in held}, strategy)
        u[fold] = np.asarray(estimator.predict(table), dtype=float)[fold]  # the ranks need the whole pool
        aurocs.append(calibration_metrics(u[fold], wrong[fold])["auroc"])
    aurocs = [a for a in aurocs if a is not None]
    return u, (float(np.mean(aurocs)) if aurocs else None)


def pool_folds(wrong: np.ndarray, *, folds: int = CROSS_FIT_FOLDS, seed: int = 0) -> list[np.ndarray]:
    """The pool split into `folds` index arrays, stratified by the truth when both outcomes allow it."""
    from sklearn.model_selection import KFold, StratifiedKFold

    y = np.asarray(wrong, dtype=int)  # [N]
    n = int(min(folds, y.size))
    if n < 2:
        return [np.arange(y.size)]
    if np.bincount(y, minlength=2).min() >= n:
        split = StratifiedKFold(n, shuffle=True, random_state=seed).split(np.zeros(y.size), y)
    else:  # too few of one outcome to stratify (e.g. GSM8K: 2 right of 200)
        split = KFold(n, shuffle=True, random_state=seed).split(y)
    return [test for _, test in split]


def _share(values: np.ndarray, mask: np.ndarray) -> float | None:
    return float(np.asarray(values, float)[mask].mean()) if mask.any() else None


def signal_aurocs(pool: EvalPool) -> list[dict]:
    """AUROC of each raw signal, and of the cold-start prior, for "majority wrong" on the pool;
    of what is left of it once the chain's length is regressed out (long chains are often wrong,
    and a signal that only measures length adds nothing to `length`); and among the unanimous
    problems only (where the vote says nothing and the other signals must do the work).

    As measured: above 0.5 means higher values go with wrong answers, below 0.5 the reverse
    (|AUROC - 0.5| is the strength); None where one outcome is missing. This is where a failing
    signal shows up.
    """
    from sklearn.metrics import roc_auc_score

    def auroc(y: np.ndarray, score: np.ndarray) -> float | None:
        return float(roc_auc_score(y, score)) if len(set(y.tolist())) == 2 else None

    if len(set(pool.wrong.tolist())) < 2:
        return []
    table = FeatureTable.from_rows(pool.rows)
    unanimous = (table.matrix(("vote_share",))[:, 0] >= 1.0) & np.array(
        [r.get("majority_answer") is not None for r in pool.rows])  # [N]
    columns = [("cold-start prior", "prior", EstimatorConfig().prior().predict(table))]
    columns += [(name, SIGNAL_GROUPS.get(name, "other"), table.matrix((name,))[:, 0]) for name in NUMERIC_FEATURES]
    log_length = np.log1p(np.maximum(table.matrix(("length",))[:, 0], 0.0))  # [N]
    design = np.column_stack([np.ones_like(log_length), log_length])  # [N, 2]

    def beyond_length(score: np.ndarray) -> np.ndarray:
        """[N] what is left of a signal after a least-squares fit on log(length)."""
        beta, *_ = np.linalg.lstsq(design, score, rcond=None)
        return score - design @ beta

    return [{"signal": name, "group": group, "auroc": auroc(pool.wrong, score),
             "auroc_beyond_length": None if name == "length" else auroc(pool.wrong, beyond_length(score)),
             "auroc_unanimous": auroc(pool.wrong[unanimous], score[unanimous]),
             "n_unanimous": int(unanimous.sum())} for name, group, score in columns]


def learning_headroom(pool: EvalPool, *, shares: tuple = HEADROOM_SHARES, repeats: int = HEADROOM_REPEATS,
                      seed: int = 0) -> dict:
    """How much the estimator *could* learn on this pool: its AUROC when fitted on random labels
    (no router bias), paired with the cold-start prior's on the same problems.

    For each share s: the pool is split into folds (pool_folds); each fold is scored by the
    posterior fitted on s x the pool's size labels drawn at random from the other folds (all of them
    when s = 1), and the AUROC of the fold is compared with the prior's on that fold. Repeated over
    `repeats` fresh splits; returns the mean AUROCs, the mean paired difference and its standard
    error. Where even random labels move the AUROC by less than a standard error or two, no
    labelling strategy can show learning at that budget on this pool: the signals hold little more
    for this model class to find. {} when a fold lacks an outcome.
    """
    y = pool.wrong.astype(int)  # [N]
    if np.bincount(y, minlength=2).min() < CROSS_FIT_FOLDS:
        return {}
    table = FeatureTable.from_rows(pool.rows)
    config = EstimatorConfig()
    cold = config.prior().predict(table)  # [N]
    out = {"repeats": repeats, "folds": CROSS_FIT_FOLDS, "shares": {}}
    for share in shares:
        learned, prior, sizes = [], [], []
        for repeat in range(repeats):
            rng = np.random.default_rng(seed + repeat)
            folds = pool_folds(y, seed=seed + repeat)
            for fold in folds:
                others = np.setdiff1d(np.arange(y.size), fold)
                picked = rng.choice(others, size=min(others.size, max(int(round(share * y.size)), 1)), replace=False)
                sizes.append(picked.size)
                model = estimator_for(table, {table.ids[i]: int(y[i]) for i in picked}, config=config,
                                      with_metrics=False)
                learned.append(calibration_metrics(model.predict(table)[fold], y[fold])["auroc"])
                prior.append(calibration_metrics(cold[fold], y[fold])["auroc"])
        gain = np.array(learned) - np.array(prior)  # [repeats * folds]
        out["shares"][f"{share:g}"] = {
            "labels": int(max(sizes)),
            "auroc": float(np.mean(learned)), "auroc_cold": float(np.mean(prior)),
            "gain": float(gain.mean()), "gain_se": float(gain.std(ddof=1) / np.sqrt(gain.size))}
    return out


# --------------------------------------------------------------------------- run and report

@dataclass
class EvalConfig:
    budgets: tuple = BUDGET_SHARES  # shares of the pool in (0, 1]; 0 (cold start) is always added
    rounds: int = ROUNDS
    target_precision: float = DEFAULT_TARGET_PRECISION
    seed: int = 0
    strategies: tuple | None = None  # names to run; None = all
    random_seeds: int = RANDOM_SEEDS  # seeds of random selection (mean and range reported)
    png: bool = True  # also export PNGs through kaleido (needs a Chrome/Chromium)

    def __post_init__(self):
        budgets = tuple(float(b) for b in self.budgets)
        if not budgets or any(not 0.0 < b <= 1.0 for b in budgets):
            raise ValueError(f"Budgets are shares of the pool in (0, 1], got {self.budgets}.")
        if self.rounds < 1:
            raise ValueError("rounds must be at least 1.")
        self.budgets = tuple(sorted(set(budgets)))


@dataclass
class EvalReport:
    folder: Path
    pool: dict  # {model_id, size, wrong, n_without_gold}
    results: list[dict]  # BudgetResult as dicts
    markdown: str
    figures: dict = field(default_factory=dict)  # name -> plotly Figure
    pngs: dict = field(default_factory=dict)  # name -> path
    png_error: str | None = None
    config: dict = field(default_factory=dict)


def run(pool: EvalPool, *, config: EvalConfig = EvalConfig()) -> list[BudgetResult]:
    """Every strategy at the cold start and at every budget, on the same pool."""
    chosen = strategies(target_precision=config.target_precision)
    if config.strategies is not None:
        unknown = set(config.strategies) - {s.name for s in chosen}
        if unknown:
            raise ValueError(f"Unknown strategies: {', '.join(sorted(unknown))}.")
        chosen = [s for s in chosen if s.name in config.strategies]
    results = []
    for strategy in chosen:
        for share in (0.0,) + tuple(config.budgets):
            budget = int(round(share * pool.size))
            if strategy.select == "random" and budget > 0:
                runs = [play(pool, strategy, budget, rounds=config.rounds, seed=config.seed + k)
                        for k in range(config.random_seeds)]
                results.append(_averaged(runs))
            else:
                results.append(play(pool, strategy, budget, rounds=config.rounds, seed=config.seed))
    return results


def _averaged(runs: list[BudgetResult]) -> BudgetResult:
    """One row for several seeds: numeric fields averaged, with the range of caught and AUROC."""
    first = asdict(runs[0])
    out = dict(first)
    for key, value in first.items():
        values = [getattr(r, key) for r in runs]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("budget", "budget_share"):
            present = [v for v in values if v is not None]
            out[key] = float(np.mean(present)) if present else None
        elif value is None and key.endswith("precision"):
            present = [v for v in values if v is not None]
            out[key] = float(np.mean(present)) if present else None
    out["below_target"] = any(r.below_target for r in runs)
    out["seeds"] = len(runs)
    out["caught_ids"] = None  # each seed caught its own set: no one set stands for the mean
    out["picked_rounds"] = None
    out["hindsight_caught"] = None
    out["caught_range"] = [min(r.caught for r in runs), max(r.caught for r in runs)]
    aurocs = [r.auroc for r in runs if r.auroc is not None]
    out["auroc_range"] = [min(aurocs), max(aurocs)] if aurocs else None
    return BudgetResult(**out)


def evaluate_db(db, folder: str | Path, *, config: EvalConfig = EvalConfig(),
                model_id: str | None = None) -> EvalReport:
    """Load the pool (read-only), run every strategy and budget, write the report into `folder`."""
    pool = load_pool(db, model_id=model_id)
    return write_report(pool, run(pool, config=config), folder, config=config)


def write_report(pool: EvalPool, results: list[BudgetResult], folder: str | Path, *,
                 config: EvalConfig = EvalConfig()) -> EvalReport:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in results]
    info = {"model_id": pool.model_id, "size": pool.size, "wrong": int(pool.wrong.sum()),
            "n_without_gold": pool.n_without_gold, "signals": signal_aurocs(pool),
            "headroom": learning_headroom(pool)}
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
    figures = build_figures(rows, target_precision=config.target_precision)
    pngs, png_error = ({}, "PNG export switched off") if not config.png else write_pngs(figures, folder)
    described = [(s.name, s.description) for s in strategies(target_precision=settings["target_precision"])]
    markdown = render_markdown(info, rows, settings, strategies=described, pngs=pngs, png_error=png_error)
    (folder / "report.md").write_text(markdown, encoding="utf-8")
    (folder / "results.json").write_text(json.dumps(
        {"pool": info, "config": settings, "results": rows, "png_error": png_error}, indent=1), encoding="utf-8")
    (folder / "figures.json").write_text(json.dumps({k: json.loads(f.to_json()) for k, f in figures.items()}),
                                         encoding="utf-8")
    (folder / "report.html").write_text(render_html(info, rows, figures), encoding="utf-8")
    return EvalReport(folder, info, rows, markdown, figures, pngs, png_error, settings)


def load_report(folder: str | Path) -> EvalReport:
    """Read a written report back (for the app's Evaluation page)."""
    import plotly.io as pio

    folder = Path(folder)
    missing = [name for name in REPORT_FILES if not (folder / name).is_file()]
    if missing:
        raise EvaluationError(f"No evaluation report in {folder} (missing {', '.join(missing)}); "
                              f"run `pivottrace eval --out {folder}`.")
    data = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    figures = {name: pio.from_json(json.dumps(spec))
               for name, spec in json.loads((folder / "figures.json").read_text(encoding="utf-8")).items()}
    pngs = {name: folder / f"{name}.png" for name in figures if (folder / f"{name}.png").is_file()}
    return EvalReport(folder, data["pool"], data["results"], (folder / "report.md").read_text(encoding="utf-8"),
                      figures, pngs, data.get("png_error"), data.get("config", {}))
