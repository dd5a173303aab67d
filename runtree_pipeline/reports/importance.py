"""Which params mattered among a parent's children: Optuna's fANOVA over them, for `importance.json` and its chart.

A plain function of plain data, like the pictures, so that the painter can compute it off the critical path.

fANOVA, not PED-ANOVA (Optuna 5's default): PED-ANOVA looks only at the best 10% of the runs, one or two of a
parent's 10-25 children, and in 60 random sweeps where a categorical param decided the objective it ranked that
param first in 0 (10 children) and 38 (60 children), fANOVA in 55 and 60. A forest of 16 trees at most 6 deep found
the deciding param as often as the default 64 trees 64 deep, in 20-80 ms for 10-200 children and 2-4 params instead
of 75-1,250 ms; its seed makes it repeat in any process. The first call also imports scikit-learn (about a second),
which `optuna.importance` imports whichever evaluator is used.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

MIN_ROWS = 10
MAX_ROWS = 1_000
"""Children beyond this are ranked on a fixed random sample of this many: 20,000 children took 1.4 s, most of it
building Optuna's trials, at the end of a pipeline where the stage's pictures are waited for."""
N_TREES = 16
MAX_DEPTH = 6
# A numeric param with at most this many distinct values is a set of choices (a `choice(32, 64)`, a short grid).
FEW = 4
# A positive param spanning more than this factor is weighed by its logarithm (see `_space`).
WIDE = 100.0


def param_importances(
    rows: Sequence[Mapping[str, Any]], values: Sequence[float], *, mode: str, seed: int = 0
) -> dict[str, float] | None:
    """Each param that varies among `rows`, with its share of the variance of `values` (summing to 1), most
    important first, judged on at most `MAX_ROWS` rows; None with fewer than `MIN_ROWS` rows of finite value, fewer
    than two such params or a constant objective, where there is nothing to rank.

    `rows` are the children's flattened params, `values` their objective in the same order, `mode` "min" or
    "max". A param some rows lack counts as a choice, its absence one of the values.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
    if len(rows) != len(values):
        raise ValueError(f"{len(rows)} rows but {len(values)} values")
    kept = [(row, float(v)) for row, v in zip(rows, values, strict=True) if math.isfinite(v)]
    if len(kept) > MAX_ROWS:
        kept = random.Random(seed).sample(kept, MAX_ROWS)
    if len(kept) < MIN_ROWS or len({v for _, v in kept}) < 2:
        return None
    keys = sorted({k for row, _ in kept for k in row})
    keys = [k for k in keys if len({repr(row.get(k, None)) for row, _ in kept}) > 1]
    if len(keys) < 2:
        return None
    spaces = {k: _space([row.get(k, None) for row, _ in kept], all(k in row for row, _ in kept)) for k in keys}
    return _evaluate(kept, spaces, mode=mode, seed=seed)


def _space(column: list[Any], present: bool) -> tuple[Any, Any]:
    """The param's Optuna distribution, and how a value becomes one of its points.

    fANOVA ignores a distribution's `log` flag and weighs every stretch of a range by its width, so a learning rate
    drawn log-uniformly from 1e-4 to 1e-1 would be judged almost only on its top decade. Given as its logarithm,
    it came first in 26 of 30 sweeps of 60 children whose objective followed log(lr), instead of 13-16."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    numeric = present and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in column
    )
    if numeric and len(set(column)) > FEW:
        lo, hi = float(min(column)), float(max(column))
        if lo > 0 and hi > WIDE * lo:
            return FloatDistribution(math.log10(lo), math.log10(hi)), math.log10
        return FloatDistribution(lo, hi), float
    return CategoricalDistribution(sorted({str(v) for v in column})), str


def _evaluate(
    kept: list[tuple[Mapping[str, Any], float]], spaces: dict[str, tuple[Any, Any]], *, mode: str, seed: int
) -> dict[str, float]:
    import warnings

    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {k: dist for k, (dist, _) in spaces.items()}
    # Warnings would repeat for every parent, and the user can do nothing about them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
        study.add_trials(
            optuna.trial.create_trial(
                params={k: point(row.get(k, None)) for k, (_, point) in spaces.items()},
                distributions=distributions,
                value=value,
            )
            for row, value in kept
        )
        evaluator = FanovaImportanceEvaluator(n_trees=N_TREES, max_depth=MAX_DEPTH, seed=seed)
        found = get_param_importances(study, evaluator=evaluator, params=list(spaces))
    return dict(sorted(((k, float(v)) for k, v in found.items()), key=lambda kv: (-kv[1], kv[0])))
