"""Pictures on every parent and the DAG on every stage run, as valid PNG artifacts read back from the store."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image

from runtree_pipeline import run_pipeline
from runtree_pipeline.plan.objective import Objective
from runtree_pipeline.reports.plots import _CANVASES, parent_plots
from runtree_pipeline.results import LeafResult
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


def test_parents_that_wait_for_the_painter_still_get_their_pictures(store, client, monkeypatch):
    """With room for one picture at a time, nearly every parent closes while the painter is busy and waits."""
    from runtree_pipeline.execution import painter

    monkeypatch.setattr(painter, "WINDOW", 1)
    config = {
        "tracking_uri": store,
        "experiment": "waiting",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.quad",
                "variants": {"params": {"y": "range(0, 12)"}},
                "subvariants": {"params": {"x": "range(0, 3)"}},
            }
        },
    }
    assert run_pipeline(config).ok
    parents = [r for r in all_runs(client, "waiting") if r.data.tags["runtree.level"] in ("stage", "variant")]
    assert len(parents) == 13
    for parent in parents:
        files = {f.path for f in client.list_artifacts(parent.info.run_id, "plots")}
        assert files == {"plots/objective_vs_params.png", "plots/parallel_coordinates.png"}, parent.info.run_name


def _leaves(params: list[dict], values: list[float]) -> list[LeafResult]:
    return [
        LeafResult(f"r{i}", f"leaf{i}", p, {"loss": v}, {}, "FINISHED", None, v)
        for i, (p, v) in enumerate(zip(params, values, strict=True))
    ]


def test_a_picture_drawn_after_others_is_the_one_drawn_on_its_own():
    """The painter redraws one figure per layout with each parent's data; nothing of one parent may show in the
    next: categories after numbers and back, a best star, a subplot the previous picture used."""
    loss = Objective("loss", "min")
    cases = {
        "categories, best": (_leaves([{"a": c, "b": i} for i, c in enumerate("xyzxy")], [5, 3, 9, 1, 2]), "r3"),
        "numbers, no best": (_leaves([{"a": i * 1e-4, "b": c} for i, c in enumerate("pqpq")], [9e5, 1, 2, 3]), None),
        "five params": (_leaves([{f"k{k}": i * k for k in range(5)} for i in range(3)], [1, 2, 3]), "r0"),
        "six params": (_leaves([{f"k{k}": f"{i}{k}" for k in range(6)} for i in range(3)], [3, 1, 2]), "r1"),
    }

    def draw(name: str) -> dict[str, bytes]:
        leaves, best = cases[name]
        return parent_plots(leaves, objective=loss, best_run_id=best)

    alone = {}
    for name in cases:
        _CANVASES.clear()
        alone[name] = draw(name)
    _CANVASES.clear()
    for name in [*cases, *reversed(cases)]:
        assert draw(name) == alone[name], name


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
