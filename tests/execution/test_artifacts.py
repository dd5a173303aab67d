"""Paths a target returns become artifacts of its run, and `${best:STAGE.artifacts.KEY}` hands a downstream
target a local copy: on a real sqlite store, in process and in worker processes.

Across machines (a two-node Ray cluster behind an `mlflow server` that proxies artifacts) is in test_cluster.py.
"""

from __future__ import annotations

import json

import pytest

from runtree_pipeline import build_plan, run_plan
from runtree_pipeline.execution.executors import LocalExecutor, ProcessExecutor
from tests.conftest import all_runs

EXECUTORS = [
    pytest.param(LocalExecutor, id="local"),
    pytest.param(lambda: ProcessExecutor(workers=2), id="processes"),
]


def pipeline(store: str, tmp_path, *, key: str = "data") -> dict:
    return {
        "tracking_uri": store,
        "experiment": "artifacts",
        "objective": {"metric": "loss"},
        "stages": {
            "prep": {
                "_target_": "tests.targets.makes_files",
                "params": {"workdir": str(tmp_path / "made")},
                "variants": {"params": {"rows": "choice(5, 3)"}},
            },
            "train": {
                "_target_": "tests.targets.reads_files",
                "depends_on": ["prep"],
                "params": {"data": f"${{best:prep.artifacts.{key}}}", "model": "${best:prep.artifacts.model}"},
                "variants": {"params": {"x": "range(0, 6)"}},
            },
        },
    }


@pytest.mark.parametrize("make", EXECUTORS)
def test_returned_paths_are_artifacts_and_downstream_leaves_get_local_copies(
    store, client, tmp_path, monkeypatch, make
):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RUNTREE_ARTIFACT_CACHE", str(cache))
    result = run_plan(build_plan(pipeline(store, tmp_path)), executor=make(), plots=False)
    assert result.ok, result.stages

    best = result.stages["prep"].best
    assert best.params["rows"] == 3 and set(best.artifacts) == {"data", "model"}
    data_uri = f"runs:/{best.run_id}/outputs/data"
    model_uri = f"runs:/{best.run_id}/outputs/model/model.bin"
    assert best.outputs == {"data": data_uri, "model": model_uri, "note": "paths above"}
    listed = {a.path for a in client.list_artifacts(best.run_id, "outputs/data")}
    assert listed == {"outputs/data/rows.txt", "outputs/data/part"}
    assert [a.path for a in client.list_artifacts(best.run_id, "outputs/model")] == ["outputs/model/model.bin"]
    prep_leaf = client.get_run(best.run_id)
    assert prep_leaf.data.tags["runtree.artifacts"] == '["data", "model"]'

    leaves = [r for r in all_runs(client, "artifacts") if r.data.tags.get("runtree.stage") == "train"]
    leaves = [r for r in leaves if r.data.tags["runtree.level"] == "variant"]
    assert len(leaves) == 6
    for leaf in leaves:
        assert leaf.data.params["data"] == data_uri and leaf.data.params["model"] == model_uri
        assert leaf.data.metrics["rows"] == 3 and leaf.data.metrics["model_bytes"] == 3
        assert json.loads(leaf.data.tags["runtree.outputs"])["seen_at"].startswith(str(cache))
    # Fetched once for all six leaves (per machine, per artifact), into the cache, not once per leaf.
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2
    assert result.stages["train"].best.params["x"] == 3


def test_an_artifact_the_best_run_does_not_have_fails_the_stage_naming_those_it_has(store, client, tmp_path):
    result = run_plan(build_plan(pipeline(store, tmp_path, key="dataset")), plots=False)
    assert result.stages["prep"].status == "FINISHED"
    assert result.stages["train"].status == "FAILED"
    assert result.stages["train"].reason == (
        "${best:prep.artifacts.dataset}: the best run of stage 'prep' has no artifact 'dataset' (it has: data, model)"
    )


def test_a_returned_path_that_does_not_exist_fails_its_leaf(store, client):
    config = {
        "tracking_uri": store,
        "experiment": "missing",
        "stages": {"make": {"_target_": "tests.targets.returns_missing_path"}},
    }
    result = run_plan(build_plan(config), plots=False)
    assert result.stages["make"].status == "FAILED"
    (run,) = all_runs(client, "missing")
    assert run.info.status == "FAILED"
    assert run.data.tags["runtree.error"] == (
        "FileNotFoundError: result 'data' is a path that does not exist: no/such/place"
    )


def test_a_resume_reuses_consumers_whose_upstream_artifact_is_the_same(store, client, tmp_path, monkeypatch):
    monkeypatch.setenv("RUNTREE_ARTIFACT_CACHE", str(tmp_path / "cache"))
    run_plan(build_plan(pipeline(store, tmp_path)), plots=False)
    again = run_plan(build_plan({**pipeline(store, tmp_path), "resume": "last"}), plots=False)
    assert again.stages["train"].counts["reused"] == 6 and again.stages["train"].counts["executed"] == 0
