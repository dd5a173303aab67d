"""Pictures on every parent and the DAG on every stage run, as valid PNG artifacts read back from the store."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image

from runtree_pipeline import run_pipeline
from runtree_pipeline.plan.objective import Objective
from runtree_pipeline.reports.plots import _CANVASES, importance_plot, parent_plots, pareto_plot
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
        expected = {"plots/objective_vs_params.png", "plots/parallel_coordinates.png"}
        if parent.info.run_name == "fit":  # 36 leaves over two params: which of them mattered
            expected.add("plots/param_importances.png")
        assert files == expected, parent.info.run_name


def _leaves(params: list[dict], values: list[float]) -> list[LeafResult]:
    return [
        LeafResult(f"r{i}", f"leaf{i}", p, {"loss": v}, {}, "FINISHED", None, v)
        for i, (p, v) in enumerate(zip(params, values, strict=True))
    ]


def test_a_picture_drawn_after_others_is_the_one_drawn_on_its_own():
    """The painter redraws one figure per layout with each parent's data; nothing of one parent may show in the
    next: categories after numbers and back, a best star, a subplot the previous picture used."""
    loss = Objective.of("loss", "min")
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


def _image(data: bytes):
    import io

    assert data[:8] == PNG
    return matplotlib.image.imread(io.BytesIO(data))


def test_the_importance_chart_is_a_png_for_any_number_of_params():
    for importances in ({"lr": 0.8, "batch": 0.2}, {f"model.layer{i}.a_long_param_name": 1 / 7 for i in range(7)}):
        image = _image(importance_plot(importances, "val_loss"))
        assert image.shape[0] > 100 and image.shape[1] > 100


PARETO_CASES = {
    "front, others, infeasible, chosen": (
        [(0.1, 5.0), (0.2, 3.0), (0.5, 1.0), (0.6, 4.0), (0.05, 0.5), (0.3, 2.0)],
        [True, True, True, False, False, False],
        [True, True, True, True, False, True],
        1,
    ),
    "all infeasible": ([(1.0, 2.0), (3.0, 4.0)], [False, False], [False, False], None),
    "one point": ([(1.0, 2.0)], [True], [True], 0),
    "none chosen": ([(1.0, 2.0), (2.0, 1.0), (3.0, 3.0)], [True, True, False], [True, True, True], None),
}


def test_the_pareto_chart_is_a_png_with_or_without_a_front_and_a_choice():
    for name, (values, front, feasible, chosen) in PARETO_CASES.items():
        image = _image(pareto_plot(values, front, feasible, chosen, ("loss", "latency"), ("min", "max")))
        assert image.shape[0] > 100 and image.shape[1] > 100, name


def test_an_importance_or_pareto_chart_drawn_after_others_is_the_one_drawn_on_its_own():
    """Both are redrawn on one figure per layout: a star, a front or a longer bar must not stay behind."""
    charts = {
        "two params": lambda: importance_plot({"lr": 0.7, "batch": 0.3}, "loss"),
        "two other params": lambda: importance_plot({"depth": 0.1, "width": 0.9}, "accuracy"),
        **{
            name: lambda case=case: pareto_plot(*case, ("loss", "latency"), ("min", "min"))
            for name, case in PARETO_CASES.items()
        },
    }
    alone = {}
    for name, draw in charts.items():
        _CANVASES.clear()
        alone[name] = draw()
    _CANVASES.clear()
    for name in [*charts, *reversed(charts)]:
        assert charts[name]() == alone[name], name


def test_the_warm_up_builds_the_layouts_a_plan_asks_for_and_leaves_nothing_in_the_pictures():
    """The painter warms up on throwaway parents so that the last stage's pictures, waited for at the end of a
    pipeline, are drawn on figures that exist; a real parent drawn after it must be the picture drawn alone."""
    from runtree_pipeline.plan.objective import Goal
    from runtree_pipeline.reports.plots import warm

    leaves = [
        LeafResult(
            f"r{i}",
            f"r{i}",
            {"test_no": i % 5, "opt": "abc"[i % 3], "act": "def"[i % 2], "draw": i / 30},
            {},
            {},
            "FINISHED",
            objective=(i * 7 % 30) / 30,
            values=((i * 7 % 30) / 30, float(i % 4)),
        )
        for i in range(30)
    ]
    two = Objective((Goal("loss"), Goal("size")))

    def draw() -> dict[str, bytes]:
        return parent_plots(leaves, objective=two, best_run_id="r3", front=["r3", "r4"])

    _CANVASES.clear()
    alone = draw()
    _CANVASES.clear()
    try:
        warm(widths=(2, 4), importance=True, pareto=True)
        layouts = set(_CANVASES)
        assert draw() == alone
        assert set(_CANVASES) == layouts, "the warm-up missed a layout of a four-param parent"
        assert set(alone) == {
            "plots/objective_vs_params.png",
            "plots/parallel_coordinates.png",
            "plots/param_importances.png",
            "plots/pareto_front.png",
            "importance.json",
        }
    finally:
        _CANVASES.clear()


def test_the_warm_up_builds_wide_layouts_without_importance_too():
    from runtree_pipeline.reports.plots import warm

    _CANVASES.clear()
    try:
        warm(widths=(7,))
        assert {("objective", 3, 3), ("parallel", 8)} <= set(_CANVASES)
    finally:
        _CANVASES.clear()
