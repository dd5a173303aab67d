"""Which params mattered among a parent's children: the ranking a user reads off `importance.json`."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys

import pytest

from runtree_pipeline.reports.importance import param_importances
from tests.conftest import REPO, cli_env


def _sweep(n: int = 20, seed: int = 0) -> tuple[list[dict], list[float]]:
    """`lr` decides the loss; `batch` is drawn at random and plays no part in it."""
    rng = random.Random(seed)
    rows = [{"lr": rng.uniform(0.0, 0.1), "batch": rng.choice([16, 32, 64, 128])} for _ in range(n)]
    values = [(r["lr"] - 0.05) ** 2 * 100 + rng.random() * 1e-6 for r in rows]
    return rows, values


def test_the_param_that_decides_the_objective_ranks_first():
    rows, values = _sweep()
    importances = param_importances(rows, values, mode="min")
    assert list(importances) == ["lr", "batch"]
    assert importances["lr"] > 0.75
    assert sum(importances.values()) == pytest.approx(1.0)


def test_a_deciding_choice_ranks_first_and_the_direction_does_not_change_the_ranking():
    rng = random.Random(1)
    rows = [{"lr": rng.uniform(0.0, 0.1), "optimizer": rng.choice(["adam", "sgd"])} for _ in range(20)]
    values = [(0.2 if r["optimizer"] == "adam" else 1.0) + rng.random() * 1e-3 for r in rows]
    assert list(param_importances(rows, values, mode="min")) == ["optimizer", "lr"]
    assert list(param_importances(rows, values, mode="max")) == ["optimizer", "lr"]


def test_a_param_some_children_lack_is_ranked_with_its_absence_as_one_of_its_values():
    """A conditional param (momentum only with sgd) keeps every child in the ranking."""
    rng = random.Random(2)
    rows = []
    for _ in range(20):
        sgd = rng.random() < 0.5
        rows.append(
            {"lr": rng.uniform(0.0, 0.1), "optimizer": "sgd" if sgd else "adam"} | ({"momentum": 0.9} if sgd else {})
        )
    values = [r["lr"] * 10 + rng.random() * 1e-3 for r in rows]
    importances = param_importances(rows, values, mode="min")
    assert set(importances) == {"lr", "optimizer", "momentum"}
    assert next(iter(importances)) == "lr"


def test_nothing_to_rank_gives_none():
    rows, values = _sweep(10)
    assert param_importances(rows, values, mode="min") is not None
    assert param_importances(rows[:9], values[:9], mode="min") is None
    # Only lr varies; a param that is the same in every child is no second one.
    assert param_importances([{**r, "batch": 64} for r in rows], values, mode="min") is None
    assert param_importances(rows, [1.0] * 10, mode="min") is None
    # A child without a finite objective does not count towards the ten.
    assert param_importances(rows, [*values[:9], float("nan")], mode="min") is None


def test_bad_arguments_are_refused():
    rows, values = _sweep(10)
    with pytest.raises(ValueError, match="mode"):
        param_importances(rows, values, mode="minimize")
    with pytest.raises(ValueError, match="10 rows but 9 values"):
        param_importances(rows, values[:9], mode="min")


def test_the_same_children_give_the_same_importances_in_any_process():
    """The painter is a process of its own, and a resumed pipeline draws the parent again: the chart must not
    change from one drawing to the next. A different hash seed shuffles any set the computation iterates over."""
    rows, values = _sweep(25, seed=3)
    here = param_importances(rows, values, mode="min")
    assert param_importances(rows, values, mode="min") == here
    code = (
        "import json, sys; from runtree_pipeline.reports.importance import param_importances; "
        "rows, values = json.load(sys.stdin); print(json.dumps(param_importances(rows, values, mode='min')))"
    )
    for hash_seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps([rows, values]),
            capture_output=True,
            text=True,
            cwd=REPO,
            env=cli_env(PYTHONHASHSEED=hash_seed),
            check=True,
        )
        there = json.loads(done.stdout)
        assert list(there) == list(here)
        assert there == here


def test_a_large_parent_is_ranked_on_a_fixed_sample_and_says_so():
    """Ranking 20,000 children took 1.4 s at the end of a pipeline, where the stage's pictures are waited for; a
    fixed sample of 1,000 still finds the param that matters, the same every time, and `importance.json` says how
    many were ranked."""
    from runtree_pipeline.plan.objective import Objective
    from runtree_pipeline.reports.plots import IMPORTANCE_ARTIFACT, parent_plots
    from runtree_pipeline.results import LeafResult

    rows, values = _sweep(n=1_500, seed=3)
    leaves = [
        LeafResult(f"r{i}", f"r{i}", row, {"loss": v}, {}, "FINISHED", objective=v)
        for i, (row, v) in enumerate(zip(rows, values, strict=True))
    ]
    first = json.loads(parent_plots(leaves, objective=Objective.of("loss"), best_run_id=None)[IMPORTANCE_ARTIFACT])
    again = json.loads(parent_plots(leaves, objective=Objective.of("loss"), best_run_id=None)[IMPORTANCE_ARTIFACT])
    assert (first["children"], first["ranked_on"]) == (1_500, 1_000)
    assert list(first["importances"]) == ["lr", "batch"]
    assert again == first


def test_a_large_parent_whose_sample_has_one_value_keeps_its_other_pictures():
    """Ranked on a sample that missed the one child that differs, there is nothing to rank: no importance, and the
    parent's other pictures are still drawn."""
    from runtree_pipeline.plan.objective import Objective
    from runtree_pipeline.reports.plots import IMPORTANCE_ARTIFACT, OBJECTIVE_PLOT, parent_plots
    from runtree_pipeline.results import LeafResult

    rng = random.Random(5)
    leaves = [
        LeafResult(f"r{i}", f"r{i}", {"a": rng.random(), "b": rng.choice("xyz")}, {}, {}, "FINISHED", objective=1.0)
        for i in range(2_000)
    ]
    missed = 0
    for odd in range(10):  # the fixed sample holds about half of them; the rest make it constant
        one_differs = [*leaves[:odd], dataclasses.replace(leaves[odd], objective=0.5), *leaves[odd + 1 :]]
        files = parent_plots(one_differs, objective=Objective.of("loss"), best_run_id=f"r{odd}")
        assert OBJECTIVE_PLOT in files
        missed += IMPORTANCE_ARTIFACT not in files
    assert missed
