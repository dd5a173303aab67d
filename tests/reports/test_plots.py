"""Pictures on every parent and the DAG on every stage run, as valid PNG artifacts read back from the store."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image

from runtree_pipeline import run_pipeline
from tests.conftest import all_runs

PNG = b"\x89PNG\r\n\x1a\n"


def _png(client, run_id: str, path: str) -> Path:
    local = Path(client.download_artifacts(run_id, path))
    assert local.read_bytes()[:8] == PNG
    image = matplotlib.image.imread(local)
    assert image.shape[0] > 100 and image.shape[1] > 100
    return local


def test_every_parent_gets_plots_and_every_stage_the_dag(store, client):
    config = {
        "tracking_uri": store,
        "experiment": "pictures",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.quad",
                "variants": {"points": {"a": {"y": 0.0}, "b": {"y": -2.0}}},
                "subvariants": {
                    "sampler": "random",
                    "n": 6,
                    "seed": 0,
                    "params": {"x": "interval(-2, 3)", "offset": "choice(0, 1)"},
                },
            },
            "after": {"_target_": "tests.targets.quad", "depends_on": ["fit"], "params": {"x": "${best:fit.params.x}"}},
        },
    }
    assert run_pipeline(config).ok
    runs = all_runs(client, "pictures")
    parents = [r for r in runs if r.data.tags["runtree.level"] in ("stage", "variant") and r.info.run_name != "after"]
    assert len(parents) == 3
    for parent in parents:
        files = {f.path for f in client.list_artifacts(parent.info.run_id, "plots")}
        assert {"plots/objective_vs_params.png", "plots/parallel_coordinates.png"} <= files
        _png(client, parent.info.run_id, "plots/objective_vs_params.png")
        _png(client, parent.info.run_id, "plots/parallel_coordinates.png")
    for stage in (r for r in runs if r.data.tags["runtree.level"] == "stage"):
        _png(client, stage.info.run_id, "plots/dag.png")
    after = next(r for r in runs if r.info.run_name == "after")
    assert {f.path for f in client.list_artifacts(after.info.run_id, "plots")} == {"plots/dag.png"}


def test_plots_can_be_turned_off(store, client):
    config = {
        "tracking_uri": store,
        "experiment": "no_pictures",
        "objective": {"metric": "loss"},
        "stages": {"fit": {"_target_": "tests.targets.quad", "subvariants": {"params": {"x": "range(0, 3)"}}}},
    }
    from runtree_pipeline import build_plan, run_plan

    run_plan(build_plan(config), plots=False)
    (stage,) = [r for r in all_runs(client, "no_pictures") if r.data.tags["runtree.level"] == "stage"]
    assert [f.path for f in client.list_artifacts(stage.info.run_id)] == ["config.yaml", "environment"]
