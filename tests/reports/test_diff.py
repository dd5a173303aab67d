"""`render_diff` on executions the real pipeline recorded in a sqlite store, read back through the tracking layer."""

from __future__ import annotations

import pytest

from runtree_pipeline import build_plan, run_plan
from runtree_pipeline.reports.views import render_diff
from runtree_pipeline.tracking.index import RunIndex
from runtree_pipeline.tracking.mlflow_store import TrackingReader


def _config(store: str, y: float) -> dict:
    return {
        "experiment": "diff",
        "tracking_uri": store,
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.quad",
                "params": {"y": y},
                "subvariants": {"params": {"x": "range(0, 3)"}},
            },
            "after": {"_target_": "tests.targets.quad", "depends_on": ["fit"], "params": {"x": "${best:fit.params.x}"}},
        },
    }


@pytest.fixture(scope="module")
def executions(tmp_path_factory):
    store = f"sqlite:///{tmp_path_factory.mktemp('diff') / 'store.db'}"
    ids = [run_plan(build_plan(_config(store, y)), plots=False).pipeline_id for y in (-2.0, -2.0, 0.0)]
    return store, ids


def _diff(store: str, old: str, new: str) -> list[str]:
    reader = TrackingReader(uri=store)
    indexes = [RunIndex(reader.pipeline_runs(p)) for p in (old, new)]
    configs = {s.run_id: reader.config_of(s) for index in indexes for s in index.stages}
    return render_diff(*indexes, configs, experiments=reader.experiment_names()).splitlines()


def test_a_changed_param_and_its_effect_on_the_best(executions):
    store, (_, same, changed) = executions
    lines = _diff(store, same, changed)
    assert lines[0].startswith(f"diff {same} (") and f"→ {changed} (" in lines[0]
    assert lines[0].endswith(", experiment 'diff'")
    assert lines[1:] == [
        "stage fit",
        "  config   params.y: -2 → 0",
        "  code     same",
        "  best     loss 0 → 4   (y=-2.0 → y=0.0)",
        "  leaves   executed 3 → 3, reused 0 → 0, failed 0 → 0",
        "stage after  — nothing differs",  # fit's best x is 1 either way, so `after` got the same input
    ]


def test_identical_configs_say_nothing_differs(executions):
    store, (first, same, _) = executions
    assert _diff(store, first, same)[1:] == ["stage fit  — nothing differs", "stage after  — nothing differs"]


def test_a_stage_only_in_one_execution_says_so(executions, tmp_path):
    store, (first, _, _) = executions
    config = _config(store, -2.0)
    del config["stages"]["after"]
    alone = run_plan(build_plan(config), plots=False).pipeline_id
    lines = _diff(store, first, alone)
    assert lines[1:] == ["stage fit  — nothing differs", f"stage after  — only in {first}"]


def test_a_changed_sweep_is_a_config_line(tmp_path):
    store = f"sqlite:///{tmp_path / 'store.db'}"
    ids = []
    for points in ("range(0, 3)", "range(0, 4)"):
        config = _config(store, -2.0)
        config["stages"]["fit"]["subvariants"]["params"]["x"] = points
        ids.append(run_plan(build_plan(config), plots=False).pipeline_id)
    lines = _diff(store, *ids)
    assert "  config   subvariants.params.x: range(0, 3) → range(0, 4)" in lines
    assert "  leaves   executed 3 → 4, reused 0 → 0, failed 0 → 0" in lines
