"""Per-leaf limits (`limits.timeout_s`, `limits.retries`), per-parent time budgets and per-variant search spaces,
against a real sqlite store on the local and process executors.

A hung leaf stopped at its timeout on every executor, Ray's included, and refused on the local one, is in the
executor contract (test_executors.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runtree_pipeline import ConfigErrors, build_plan, run_plan
from runtree_pipeline.execution.executors import LocalExecutor, ProcessExecutor
from runtree_pipeline.tracking.sqlite import sqlite_path
from tests.conftest import all_runs

EXECUTORS = [
    pytest.param(LocalExecutor, id="local"),
    pytest.param(lambda: ProcessExecutor(workers=2), id="processes"),
]


def pipeline(store: str, experiment: str, stage: dict) -> dict:
    return {"tracking_uri": store, "experiment": experiment, "objective": {"metric": "loss"}, "stages": {"fit": stage}}


def leaves(client, experiment: str) -> dict:
    runs = all_runs(client, experiment)
    return {r.info.run_name: r for r in runs if r.data.tags["runtree.level"] != "stage"}


def artifacts(client, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


# ---- retries ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", EXECUTORS)
def test_a_flaky_leaf_passes_on_its_second_attempt_in_the_same_run(store, client, tmp_path, make):
    stage = {
        "_target_": "tests.targets.fails_once",
        "params": {"marker_dir": str(tmp_path / "markers"), "fail_on": [2]},
        "limits": {"retries": 1},
        "subvariants": {"params": {"x": "range(0, 4)"}},
    }
    result = run_plan(build_plan(pipeline(store, "flaky", stage)), executor=make(), plots=False)

    runs = leaves(client, "flaky")
    assert sorted(runs) == ["fit/x=0", "fit/x=1", "fit/x=2", "fit/x=3"]
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert {name: r.data.tags["runtree.attempts"] for name, r in runs.items()} == {
        "fit/x=0": "1",
        "fit/x=1": "1",
        "fit/x=2": "2",
        "fit/x=3": "1",
    }
    flaky = runs["fit/x=2"]
    assert "runtree.error" not in flaky.data.tags
    assert artifacts(client, flaky.info.run_id) == {"attempts/1/traceback.txt"}
    text = Path(client.download_artifacts(flaky.info.run_id, "attempts/1/traceback.txt")).read_text()
    assert "RuntimeError: transient failure at x=2" in text
    assert result.ok and result.stages["fit"].counts["failed"] == 0


def test_a_leaf_that_keeps_failing_ends_failed_after_every_attempt(store, client):
    stage = {
        "_target_": "tests.targets.flaky",
        "params": {"fail_on": [2]},
        "limits": {"retries": 2},
        "subvariants": {"params": {"x": "range(0, 4)"}},
    }
    result = run_plan(build_plan(pipeline(store, "hopeless", stage)), plots=False)

    failed = leaves(client, "hopeless")["fit/x=2"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["runtree.attempts"] == "3"
    assert failed.data.tags["runtree.error"] == "RuntimeError: boom at x=2"
    assert artifacts(client, failed.info.run_id) == {
        "attempts/1/traceback.txt",
        "attempts/2/traceback.txt",
        "traceback.txt",
    }
    assert result.stages["fit"].counts["failed"] == 1 and result.stages["fit"].best.params["x"] == 1


def test_without_retries_no_attempts_are_counted(store, client):
    stage = {"_target_": "tests.targets.flaky", "params": {"fail_on": [2]}, "subvariants": {"params": {"x": "0,2"}}}
    run_plan(build_plan(pipeline(store, "plain", stage)), plots=False)
    assert not any("runtree.attempts" in r.data.tags for r in leaves(client, "plain").values())


# ---- timeouts -----------------------------------------------------------------------------------------------------


def test_a_leaf_that_timed_out_is_retried_in_the_same_run(store, client, tmp_path):
    stage = {
        "_target_": "tests.targets.naps",
        "params": {"nap_on": [1], "seconds": 120},
        "limits": {"timeout_s": 2, "retries": 1},
        "subvariants": {"params": {"x": "0,1"}},
    }
    run_plan(build_plan(pipeline(store, "again", stage)), executor=ProcessExecutor(workers=2), plots=False)
    hung = leaves(client, "again")["fit/x=1"]
    assert hung.info.status == "FAILED" and hung.data.tags["runtree.attempts"] == "2"
    text = Path(client.download_artifacts(hung.info.run_id, "attempts/1/traceback.txt")).read_text()
    assert text.startswith("Timeout:")


def test_a_timeout_on_the_local_executor_is_refused_before_anything_is_recorded(tmp_path):
    store = f"sqlite:///{tmp_path / 'untouched.db'}"
    stage = {"_target_": "tests.targets.naps", "limits": {"timeout_s": 5}, "subvariants": {"params": {"x": "0,1"}}}
    with pytest.raises(ConfigErrors) as raised:
        run_plan(build_plan(pipeline(store, "local", stage)), executor=LocalExecutor(), plots=False)
    assert str(raised.value) == (
        "stage 'fit', key 'limits.timeout_s': executor=local runs leaves inside the pipeline's own process, where one "
        "that overruns cannot be stopped safely: use executor=processes (or ray)"
    )
    assert not sqlite_path(store).exists()


# ---- time budgets -------------------------------------------------------------------------------------------------


def budgeted(store: str, experiment: str, budget: float = 1.0) -> dict:
    return pipeline(
        store,
        experiment,
        {
            "_target_": "tests.targets.naps",
            "params": {"sleep": 0.05},
            "subvariants": {
                "sampler": "random",
                "n": 500,
                "seed": 0,
                "time_budget_s": budget,
                "params": {"x": "interval(-3, 3)"},
            },
        },
    )


@pytest.mark.parametrize(
    ("make", "budget"),
    [
        pytest.param(LocalExecutor, 1.0, id="local"),
        # The clock starts at the first point, which waits for the workers to start: seconds on 2 cores.
        pytest.param(lambda: ProcessExecutor(workers=2), 4.0, id="processes"),
    ],
)
def test_a_time_budget_stops_drawing_points_and_the_best_is_among_those_drawn(store, client, make, budget):
    result = run_plan(build_plan(budgeted(store, "budget", budget)), executor=make(), plots=False)

    runs = leaves(client, "budget")
    assert 5 <= len(runs) < 500  # n is 500: the budget stopped the drawing
    (stage,) = [r for r in all_runs(client, "budget") if r.data.tags["runtree.level"] == "stage"]
    assert stage.data.tags["runtree.budget_exhausted"] == "true"
    assert stage.data.tags["runtree.points_drawn"] == str(len(runs)) == stage.data.tags["runtree.children"]
    best = min(runs.values(), key=lambda r: r.data.metrics["loss"])
    assert stage.data.tags["runtree.best_run_id"] == best.info.run_id == result.stages["fit"].best.run_id
    assert {r.info.status for r in runs.values()} == {"FINISHED"}


def test_a_resume_draws_the_points_drawn_before_the_budget_ran_out_and_no_more(store, client):
    run_plan(build_plan(budgeted(store, "again")), plots=False)
    drawn = set(leaves(client, "again"))

    result = run_plan(build_plan({**budgeted(store, "again"), "resume": "last"}), plots=False)

    assert set(leaves(client, "again")) == drawn
    assert result.stages["fit"].counts["executed"] == 0 and result.stages["fit"].counts["reused"] == len(drawn)


# ---- per-variant spaces -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", EXECUTORS)
def test_each_variant_searches_its_own_space_and_one_is_a_leaf(store, client, make):
    stage = {
        "_target_": "tests.targets.quad",
        "variants": {
            "points": {
                "wide": {
                    "y": -2.0,
                    "_subvariants_": {"sampler": "random", "n": 4, "seed": 1, "params": {"x": "interval(-5, 5)"}},
                },
                "narrow": {"y": -2.0, "_subvariants_": {"params": {"x": "choice(0.5, 1.0)"}}},
                "fixed": {"x": 3.0, "_subvariants_": None},
            }
        },
        "subvariants": {"params": {"x": "choice(0, 2)"}},
    }
    plan = build_plan(pipeline(store, "spaces", stage))
    assert plan.stages["fit"].leaf_count() == 4 + 2 + 1
    result = run_plan(plan, executor=make(), plots=False)

    runs = {r.info.run_name: r for r in all_runs(client, "spaces")}
    names = {name for name in runs if name.count("/") == 2}
    assert {name.split("/")[1] for name in names} == {"wide", "narrow"}
    assert sorted(n for n in names if "/narrow/" in n) == ["fit/narrow/x=0.5", "fit/narrow/x=1"]
    assert sum("/wide/" in n for n in names) == 4
    fixed = runs["fit/fixed"]
    assert fixed.data.tags["runtree.level"] == "variant" and fixed.data.params == {"x": "3.0"}
    assert "_subvariants_" not in str({k for r in runs.values() for k in r.data.params})
    stage_run = runs["fit"]
    assert stage_run.data.tags["runtree.children"] == "3"
    assert result.stages["fit"].best.name == "fit/narrow/x=1" and result.stages["fit"].best.objective == 0.0
    assert len(result.stages["fit"].node.leaves) == 7
