"""`cache: true`: a leaf whose content key matches a finished leaf of an earlier execution of the experiment is
taken from it, not run; on a real sqlite store, with targets that count their calls."""

from __future__ import annotations

import collections
import textwrap

import pytest

from runtree_pipeline import build_plan, run_plan
from tests.conftest import all_runs


def pipeline(store: str, tmp_path, *, xs: str = "range(0, 4)", cache=True, fail_on=(), module="tests.targets") -> dict:
    log = str(tmp_path / "calls.txt")
    return {
        "tracking_uri": store,
        "experiment": "cached",
        "objective": {"metric": "loss"},
        "cache": cache,
        "stages": {
            "prep": {"_target_": f"{module}.counted", "params": {"x": 10.0, "log_file": log}},
            "fit": {
                "_target_": f"{module}.counted",
                "depends_on": ["prep"],
                "params": {"log_file": log, "y": "${best:prep.metrics.loss}"},
                "variants": {"points": {"a": {}, "b": {"sleep": 0.0}}},
                "subvariants": {"params": {"x": xs}},
            },
        },
    }


def calls(tmp_path) -> collections.Counter:
    path = tmp_path / "calls.txt"
    return collections.Counter(path.read_text().splitlines() if path.exists() else [])


def test_a_second_execution_takes_finished_leaves_from_the_first_and_runs_only_what_is_new(store, client, tmp_path):
    first = run_plan(build_plan(pipeline(store, tmp_path)), plots=False)
    assert sum(calls(tmp_path).values()) == 1 + 8

    second = run_plan(build_plan(pipeline(store, tmp_path, xs="range(0, 6)")), plots=False)

    assert sum(calls(tmp_path).values()) == 1 + 8 + 4, "only the 4 new points ran"
    assert second.pipeline_id != first.pipeline_id
    assert second.stages["prep"].counts == {"executed": 0, "reused": 1, "redone": 0, "failed": 0, "pruned": 0}
    assert second.stages["fit"].counts["reused"] == 8 and second.stages["fit"].counts["executed"] == 4
    runs = [r for r in all_runs(client, "cached") if r.data.tags["runtree.pipeline_id"] == second.pipeline_id]
    origin = {
        r.info.run_name: r
        for r in all_runs(client, "cached")
        if r.data.tags["runtree.pipeline_id"] == first.pipeline_id
    }
    copies = [r for r in runs if "runtree.cached_from" in r.data.tags]
    assert len(copies) == 9
    for copy in copies:
        source = origin[copy.info.run_name]
        assert copy.data.tags["runtree.cached_from"] == source.info.run_id
        assert copy.data.params == source.data.params and copy.data.metrics == source.data.metrics
        assert copy.info.status == "FINISHED" and copy.info.run_id != source.info.run_id
    assert second.stages["fit"].best.run_id in {r.info.run_id for r in runs}, "the best is this execution's run"


def test_without_cache_everything_runs_again(store, tmp_path):
    run_plan(build_plan(pipeline(store, tmp_path, cache=False)), plots=False)
    run_plan(build_plan(pipeline(store, tmp_path, cache=False)), plots=False)
    assert sum(calls(tmp_path).values()) == 2 * 9


def test_a_leaf_that_failed_before_runs_again(store, tmp_path):
    config = pipeline(store, tmp_path)
    config["stages"]["fit"]["_target_"] = "tests.targets.flaky"
    config["stages"]["fit"]["params"] = {"fail_on": [2.0]}
    config["stages"]["fit"]["variants"] = {"points": {"a": {"y": 0.0}, "b": {"y": 1.0}}}
    first = run_plan(build_plan(config), plots=False)
    assert first.stages["fit"].counts["failed"] == 2
    second = run_plan(build_plan(config), plots=False)
    assert second.stages["fit"].counts["reused"] == 6 and second.stages["fit"].counts["executed"] == 2


@pytest.mark.parametrize(("cache", "runs_again"), [(True, 9), ({"code": False}, 0)])
def test_editing_the_targets_file_invalidates_its_leaves_unless_code_is_left_out(
    store, tmp_path, monkeypatch, cache, runs_again
):
    module = tmp_path / "mine_targets.py"
    source = textwrap.dedent(
        """
        def counted(*, x, log_file, y=0.0, sleep=0.0):
            with open(log_file, "a") as fh:
                fh.write(f"{x},{y}\\n")
            return {"loss": (x - 1) ** 2 + y}
        """
    )
    module.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_plan(build_plan(pipeline(store, tmp_path, cache=cache, module="mine_targets")), plots=False)
    module.write_text(source + "\n# edited\n")
    run_plan(build_plan(pipeline(store, tmp_path, cache=cache, module="mine_targets")), plots=False)
    assert sum(calls(tmp_path).values()) == 9 + runs_again


def test_tpe_is_told_cached_results_and_asks_what_the_first_execution_asked(store, client, tmp_path):
    config = {
        "tracking_uri": store,
        "experiment": "tpe",
        "objective": {"metric": "loss"},
        "cache": True,
        "stages": {
            "fit": {
                "_target_": "tests.targets.counted",
                "params": {"log_file": str(tmp_path / "calls.txt")},
                "subvariants": {"sampler": "tpe", "n": 14, "seed": 2, "params": {"x": "interval(-3, 3)"}},
            }
        },
    }
    first = run_plan(build_plan(config), plots=False)
    second = run_plan(build_plan(config), plots=False)
    assert sum(calls(tmp_path).values()) == 14
    assert second.stages["fit"].counts["reused"] == 14
    assert second.stages["fit"].best.params == first.stages["fit"].best.params


def test_pruned_leaves_are_taken_from_the_cache_still_pruned(store, client, tmp_path):
    config = {
        "tracking_uri": store,
        "experiment": "pruned",
        "objective": {"metric": "val_loss"},
        "cache": True,
        "stages": {
            "fit": {
                "_target_": "tests.targets.diverging",
                "params": {"log_file": str(tmp_path / "calls.txt")},
                "subvariants": {
                    "params": {"x": "range(0, 6)"},
                    "pruner": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2},
                },
            }
        },
    }
    run_plan(build_plan(config), plots=False)
    second = run_plan(build_plan(config), plots=False)
    assert sum(calls(tmp_path).values()) == 6
    assert second.stages["fit"].counts == {"executed": 0, "reused": 6, "redone": 0, "failed": 0, "pruned": 3}
    mine = [r for r in all_runs(client, "pruned") if r.data.tags["runtree.pipeline_id"] == second.pipeline_id]
    pruned = [r for r in mine if r.data.tags.get("runtree.pruned") == "true"]
    assert len(pruned) == 3 and {r.info.status for r in pruned} == {"KILLED"}
    assert {r.data.tags["runtree.pruned_at_step"] for r in pruned} == {"2"}


def test_a_returned_objective_stays_the_runs_value_after_a_curve_ending_elsewhere(store, client):
    """The target reports 0.9, 0.5, 0.7 and returns its best, 0.5: the run's value, also when a resume or the
    cache reads it back (MLflow's latest value is the one at the highest step)."""
    config = {
        "tracking_uri": store,
        "experiment": "curve",
        "objective": {"metric": "loss"},
        "cache": True,
        "stages": {"fit": {"_target_": "tests.targets.best_of_curve", "subvariants": {"params": {"x": "0,1"}}}},
    }
    first = run_plan(build_plan(config), plots=False)
    resumed = run_plan(build_plan({**config, "resume": "last"}), plots=False)
    cached = run_plan(build_plan(config), plots=False)
    for result in (first, resumed, cached):
        assert result.stages["fit"].best.objective == 0.5
    leaf = client.get_run(first.stages["fit"].best.run_id)
    assert leaf.data.metrics["loss"] == 0.5
    assert [(m.step, m.value) for m in client.get_metric_history(leaf.info.run_id, "loss")][:3] == [
        (0, 0.9),
        (1, 0.5),
        (2, 0.7),
    ]


def test_downstream_of_a_cached_best_gets_the_run_that_computed_it(store, client, tmp_path):
    config = pipeline(store, tmp_path)
    config["stages"]["use"] = {
        "_target_": "tests.targets.with_outputs",
        "depends_on": ["fit"],
        "params": {"name": "${best:fit.run_id}"},
    }
    first = run_plan(build_plan(config), plots=False)
    second = run_plan(build_plan(config), plots=False)
    resumed = run_plan(build_plan({**config, "resume": "last"}), plots=False)
    origin = first.stages["fit"].best.run_id
    assert second.stages["fit"].best.cached_from == origin == resumed.stages["fit"].best.cached_from
    assert second.stages["use"].best.params["name"] == origin
    assert second.stages["use"].counts["reused"] == 1, "same input, so the downstream leaf is cached too"


def test_a_resume_of_an_execution_recorded_before_keys_held_the_code_reuses_its_runs(store, tmp_path):
    """Keys written without the code fingerprint (as every store before it, or `cache: {code: false}`) still
    match on resume, rather than the whole execution running again."""
    without_code = pipeline(store, tmp_path, cache={"enabled": False, "code": False})
    run_plan(build_plan(without_code), plots=False)
    resumed = run_plan(build_plan({**pipeline(store, tmp_path, cache=False), "resume": "last"}), plots=False)
    assert sum(calls(tmp_path).values()) == 9
    assert resumed.stages["fit"].counts["reused"] == 8 and resumed.stages["prep"].counts["reused"] == 1
