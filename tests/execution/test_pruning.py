"""`report` and pruning against a real sqlite store: decisions a test can predict, what a pruned leaf records, how
its parents and the summary count it, and a resume that prunes as the uninterrupted run does.

That `report` reaches the pruner from every executor is in the executor contract (test_executors.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runtree_pipeline import Pruned, build_plan, report, run_plan
from runtree_pipeline.errors import Interrupted
from runtree_pipeline.reports.views import render_tree
from runtree_pipeline.tracking.index import RunIndex
from runtree_pipeline.tracking.mlflow_store import TrackingReader
from tests.conftest import all_runs
from tests.targets import count_or_stop

MEDIAN = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2}


def config(store: str, experiment: str, *, pruner=MEDIAN, log_file: Path | None = None, stop_at: int = -1) -> dict:
    """Six grid points in order: 0, 1 and 2 improve, 3, 4 and 5 diverge from epoch 2 (tests.targets.diverging)."""
    params: dict = {"log_file": str(log_file), "stop_at": stop_at} if log_file else {}
    subvariants: dict = {"params": {"x": "range(0, 6)"}}
    if pruner is not None:
        subvariants["pruner"] = pruner
    return {
        "tracking_uri": store,
        "experiment": experiment,
        "objective": {"metric": "val_loss"},
        "stages": {"fit": {"_target_": "tests.targets.diverging", "params": params, "subvariants": subvariants}},
    }


def leaves(client, experiment: str) -> dict:
    """By x, read from the run's name: a run cut off by Ctrl-C has no params yet."""
    runs = all_runs(client, experiment)
    return {r.info.run_name.rpartition("=")[2]: r for r in runs if r.data.tags["runtree.level"] != "stage"}


def stage_run(client, experiment: str):
    (stage,) = [r for r in all_runs(client, experiment) if r.data.tags["runtree.level"] == "stage"]
    return stage


def pruning(client, experiment: str) -> dict:
    return {
        x: (r.info.status, r.data.tags.get("runtree.pruned_at_step")) for x, r in leaves(client, experiment).items()
    }


EXPECTED = {
    **{x: ("FINISHED", None) for x in "012"},
    **{x: ("KILLED", "2") for x in "345"},
}


def test_a_median_pruner_stops_the_diverging_points_at_the_step_they_diverge(store, client):
    """After two startup trials, a point whose val_loss at a step is worse than the finished points' median at that
    step is stopped there: the diverging points at epoch 2, the improving ones never."""
    result = run_plan(build_plan(config(store, "median")), plots=False)

    assert pruning(client, "median") == EXPECTED
    fit = result.stages["fit"]
    assert result.ok and fit.best.params["x"] == 2
    assert fit.counts == {"executed": 6, "reused": 0, "redone": 0, "failed": 0, "pruned": 3}
    pruned = leaves(client, "median")["4"]
    assert pruned.data.tags["runtree.pruned"] == "true"
    assert "runtree.error" not in pruned.data.tags
    assert [m.step for m in client.get_metric_history(pruned.info.run_id, "val_loss")] == [0, 1, 2]
    assert [m.step for m in client.get_metric_history(pruned.info.run_id, "train_loss")] == [0, 1, 2]
    stage = stage_run(client, "median")
    assert stage.info.status == "FINISHED"
    assert stage.data.tags["runtree.pruned_children"] == "3"
    assert stage.data.tags["runtree.failed_leaves"] == "0"
    assert stage.data.tags["runtree.best_run_id"] == leaves(client, "median")["2"].info.run_id


def test_without_a_pruner_report_logs_every_step_and_never_stops_a_leaf(store, client):
    result = run_plan(build_plan(config(store, "plain", pruner=None)), plots=False)

    assert {status for status, _ in pruning(client, "plain").values()} == {"FINISHED"}
    assert result.stages["fit"].counts["pruned"] == 0
    for run in leaves(client, "plain").values():
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.step for m in history] == [0, 1, 2, 3, 4]
        assert history[-1].value == run.data.metrics["val_loss"]
        assert "runtree.reported" not in run.data.tags


def test_report_outside_a_leaf_says_so():
    with pytest.raises(RuntimeError, match=r"report\(\) was called outside a leaf"):
        report(0, val_loss=1.0)


def stubborn(*, x: float) -> dict:
    """Catches `Pruned` and returns what it has, as a target that saves a checkpoint first might."""
    loss = 0.0
    for epoch in range(5):
        loss = 1 / (epoch + 1) - 0.01 * x + (x * epoch if x >= 3 and epoch >= 2 else 0.0)
        try:
            report(epoch, val_loss=loss)
        except Pruned as e:
            return {"val_loss": loss, "stopped_at": e.step}
    return {"val_loss": loss}


def test_a_target_that_catches_pruned_and_returns_finishes_with_what_it_returned(store, client):
    config_ = config(store, "stubborn")
    config_["stages"]["fit"]["_target_"] = "tests.execution.test_pruning.stubborn"
    result = run_plan(build_plan(config_), plots=False)

    assert {status for status, _ in pruning(client, "stubborn").values()} == {"FINISHED"}
    assert result.stages["fit"].counts["pruned"] == 0
    assert {x: r.data.metrics.get("stopped_at") for x, r in leaves(client, "stubborn").items()} == {
        **dict.fromkeys("012"),
        **dict.fromkeys("345", 2.0),
    }


def test_pruned_leaves_show_in_the_tree_view(store, client):
    run_plan(build_plan(config(store, "shown")), plots=False)
    reader = TrackingReader(uri=store, experiment="shown")
    text = render_tree(RunIndex(reader.pipeline_runs(reader.latest_pipeline_id())))
    assert text.count("✂ PRUNED at step 2") == 3


def test_a_resume_without_the_pruner_runs_the_pruned_leaves_to_their_end_in_their_own_runs(store, client):
    """A pruner is not in the content key, so the resume is of the same tree: what the pruner stopped is finished in
    the same runs, and what finished is not run again."""
    run_plan(build_plan(config(store, "unpruned")), plots=False)
    ids = {x: r.info.run_id for x, r in leaves(client, "unpruned").items()}

    again = run_plan(build_plan({**config(store, "unpruned", pruner=None), "resume": "last"}), plots=False)

    assert again.stages["fit"].counts == {"executed": 0, "reused": 3, "redone": 3, "failed": 0, "pruned": 0}
    assert pruning(client, "unpruned") == {x: ("FINISHED", None) for x in "012345"}
    assert {x: r.info.run_id for x, r in leaves(client, "unpruned").items()} == ids
    finished = leaves(client, "unpruned")["4"]
    assert not {"runtree.pruned", "runtree.pruned_at_step", "runtree.reported"} & set(finished.data.tags)
    assert max(m.step for m in client.get_metric_history(finished.info.run_id, "val_loss")) == 4
    assert stage_run(client, "unpruned").data.tags["runtree.pruned_children"] == "0"


def test_a_resume_keeps_pruned_leaves_and_prunes_the_rest_as_the_uninterrupted_run(store, client, tmp_path):
    """Ctrl-C at the fifth point: the resume runs only the last two, does not run the pruned one again, and still
    prunes them at epoch 2. That needs the finished points' reported curves: the median pruner compares with them,
    and the resumed study only has them because each leaf kept its reported values."""
    calls = tmp_path / "calls.txt"
    with pytest.raises(Interrupted):
        run_plan(build_plan(config(store, "cut", log_file=calls, stop_at=4)), plots=False)
    assert pruning(client, "cut") == {
        **{x: EXPECTED[x] for x in "0123"},
        "4": ("KILLED", None),
    }

    result = run_plan(build_plan({**config(store, "cut", log_file=calls, stop_at=4), "resume": "last"}), plots=False)

    assert pruning(client, "cut") == EXPECTED
    assert calls.read_text().splitlines() == ["0", "1", "2", "3", "4", "5"]
    assert result.stages["fit"].counts == {"executed": 1, "reused": 4, "redone": 1, "failed": 0, "pruned": 3}
    assert stage_run(client, "cut").data.tags["runtree.pruned_children"] == "3"


def bowl_with_curve(*, x: float, epochs: int = 4) -> dict:
    """A tpe-friendly bowl around x=1 whose far points diverge from epoch 1."""
    loss = 0.0
    for epoch in range(epochs):
        loss = (x - 1) ** 2 + 1 / (epoch + 1) + (epoch * abs(x) if abs(x - 1) > 2 else 0.0)
        report(epoch, val_loss=loss)
    return {"val_loss": loss}


def stops_once(*, x: float, log_file: str, stop_at: int) -> dict:
    count_or_stop(log_file, stop_at, f"{x!r}")
    return bowl_with_curve(x=x)


def test_an_interrupted_tpe_sweep_with_a_pruner_resumes_as_the_uninterrupted_one(store, client, tmp_path):
    """tpe learns from pruned trials too, so a resume must tell it which points were pruned, at which step and with
    which curve, in the original order: then it draws the same points as the uninterrupted sweep."""

    def tpe(experiment: str, stop_at: int) -> dict:
        return {
            "tracking_uri": store,
            "experiment": experiment,
            "objective": {"metric": "val_loss"},
            "stages": {
                "fit": {
                    "_target_": "tests.execution.test_pruning.stops_once",
                    "params": {"log_file": str(tmp_path / f"{experiment}.txt"), "stop_at": stop_at},
                    "subvariants": {
                        "sampler": "tpe",
                        "n": 16,
                        "seed": 5,
                        "params": {"x": "interval(-6, 6)"},
                        "pruner": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 3},
                    },
                }
            },
        }

    def outcome(experiment: str) -> dict:
        return {
            r.info.run_name: (r.data.params["x"], r.info.status, r.data.tags.get("runtree.pruned_at_step"))
            for r in all_runs(client, experiment)
            if r.data.tags["runtree.level"] != "stage"
        }

    with pytest.raises(Interrupted):
        run_plan(build_plan(tpe("stopped", 11)), plots=False)
    run_plan(build_plan({**tpe("stopped", 11), "resume": "last"}), plots=False)
    run_plan(build_plan(tpe("uninterrupted", -1)), plots=False)

    uninterrupted = outcome("uninterrupted")
    assert sum(status == "KILLED" for _, status, _ in uninterrupted.values()) >= 2
    assert outcome("stopped") == uninterrupted
    calls = (tmp_path / "stopped.txt").read_text().splitlines()
    assert len(calls) == len(set(calls)) == 16


def test_report_from_a_thread_the_target_started_lands_on_its_leaf(store, client):
    config = {
        "tracking_uri": store,
        "experiment": "threaded",
        "objective": {"metric": "loss"},
        "stages": {"fit": {"_target_": "tests.targets.reports_from_a_thread", "subvariants": {"params": {"x": "0,1"}}}},
    }
    run_plan(build_plan(config), plots=False)
    for x, run in leaves(client, "threaded").items():
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [(m.step, m.value) for m in history][:3] == [(0, float(x)), (1, float(x) + 1), (2, float(x) + 2)]
