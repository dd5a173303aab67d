"""`register:` the model a stage's best leaf logged becomes a version of a registered model, through the pipeline
on a real sqlite store (the registry logic itself, servers included, is in tests/tracking/test_registry.py)."""

from __future__ import annotations

import mlflow.sklearn
import pytest
from mlflow import MlflowClient

from runtree_pipeline import build_plan, run_plan
from runtree_pipeline.tracking.active import use_tracking_uri
from tests.conftest import all_runs


def pipeline(store: str, slopes: str, *, only_if_better: bool = True, log_model: bool = True) -> dict:
    return {
        "tracking_uri": store,
        "experiment": "lines",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.fits_line",
                "params": {"log_model": log_model},
                "variants": {"params": {"slope": slopes}},
                "register": {"name": "line", "only_if_better": only_if_better},
            }
        },
    }


def stage_tags(client: MlflowClient, pipeline_id: str) -> dict:
    (stage,) = [
        r
        for r in all_runs(client, "lines")
        if r.data.tags["runtree.level"] == "stage" and r.data.tags["runtree.pipeline_id"] == pipeline_id
    ]
    return {k: v for k, v in stage.data.tags.items() if k.startswith("runtree.registered")}


def test_the_best_leafs_model_is_registered_and_the_alias_moves_only_for_a_better_one(store, client):
    first = run_plan(build_plan(pipeline(store, "1.0,2.5,4.0")), plots=False)
    assert first.ok
    version = client.get_model_version_by_alias("line", "champion")
    assert str(version.version) == "1" and version.run_id == first.stages["fit"].best.run_id
    assert version.tags["runtree.stage"] == "fit" and float(version.tags["runtree.objective_value"]) == 0.5
    assert stage_tags(client, first.pipeline_id) == {
        "runtree.registered_model": "line",
        "runtree.registered_version": "1",
    }
    restore = use_tracking_uri(store)
    try:
        assert mlflow.sklearn.load_model("models:/line@champion").coef_[0] == pytest.approx(2.5)
    finally:
        restore()

    worse = run_plan(build_plan(pipeline(store, "0.5,4.0")), plots=False)
    assert worse.ok
    assert stage_tags(client, worse.pipeline_id) == {"runtree.registered": "not better than version 1"}
    assert str(client.get_model_version_by_alias("line", "champion").version) == "1"

    better = run_plan(build_plan(pipeline(store, "1.9,3.0")), plots=False)
    assert stage_tags(client, better.pipeline_id)["runtree.registered_version"] == "2"
    assert client.get_model_version_by_alias("line", "champion").run_id == better.stages["fit"].best.run_id


def test_a_best_leaf_without_a_model_fails_its_stage_naming_it(store, client):
    result = run_plan(build_plan(pipeline(store, "1.0,2.5", log_model=False)), plots=False)
    stage = result.stages["fit"]
    assert not result.ok and stage.status == "FAILED"
    assert stage.reason.startswith(f"stage 'fit': its best run {stage.best.run_id} logged no model to register")
    assert {r.info.status for r in all_runs(client, "lines")} == {"FINISHED"}
    assert stage_tags(client, result.pipeline_id)["runtree.registered"] == stage.reason
    assert client.search_registered_models() == []


def test_a_best_taken_from_the_cache_registers_the_model_of_the_run_that_computed_it(store, client):
    """The model lives on the run that logged it: the cached copy points there, and a second execution that
    computed nothing finds that version already under the alias rather than failing or registering it again."""
    config = {**pipeline(store, "1.0,2.5"), "cache": True}
    first = run_plan(build_plan(config), plots=False)
    second = run_plan(build_plan(config), plots=False)

    assert second.ok and second.stages["fit"].counts["reused"] == 2
    assert second.stages["fit"].best.cached_from == first.stages["fit"].best.run_id
    assert stage_tags(client, second.pipeline_id) == {
        "runtree.registered_model": "line",
        "runtree.registered_version": "1",
    }
    assert [str(v.version) for v in client.search_model_versions("name = 'line'")] == ["1"]


def test_over_aggregated_replicates_the_replicate_closest_to_the_aggregate_is_registered(store, client):
    """The best is a variant, which logged no model; its replicates did: the one nearest the mean is registered,
    with the mean as its objective value."""
    config = pipeline(store, "1.0")
    config["stages"]["fit"]["variants"] = {"points": {"line": {"log_model": True}}}
    config["stages"]["fit"]["subvariants"] = {"aggregate": "mean", "params": {"slope": "choice(1.0, 2.5, 4.0)"}}
    result = run_plan(build_plan(config), plots=False)
    assert result.ok, result.stages["fit"].reason

    leaves = {
        r.data.params["slope"]: r for r in all_runs(client, "lines") if r.data.tags["runtree.level"] == "subvariant"
    }
    version = client.get_model_version_by_alias("line", "champion")
    assert version.run_id == leaves["1.0"].info.run_id  # losses 1.0, 0.5, 2.0: mean 1.17, nearest 1.0
    assert float(version.tags["runtree.objective_value"]) == pytest.approx((1.0 + 0.5 + 2.0) / 3)
    assert result.stages["fit"].best.run_id != version.run_id  # the stage's best is the variant
