"""`system_metrics: true`: MLflow's own system metrics land on every leaf run while its work runs, on every executor,
with at least one sample for a leaf shorter than the interval and no wait for the interval when the leaf ends; off
(the default), no monitor runs. Real sqlite stores, real worker processes, one real local Ray runtime."""

from __future__ import annotations

import threading
import time

import pytest
from mlflow import MlflowClient

from runtree_pipeline import ConfigErrors, build_plan, run_plan
from runtree_pipeline.execution.executors import Executor, LocalExecutor, ProcessExecutor, RayExecutor
from runtree_pipeline.tracking.active import system_metrics
from runtree_pipeline.tracking.records import RunRef
from tests.conftest import REPO, all_runs

CPU = "system/cpu_utilization_percentage"
MEMORY = "system/system_memory_usage_megabytes"
EXECUTORS = [
    pytest.param(LocalExecutor, id="local"),
    pytest.param(lambda: ProcessExecutor(workers=2), id="processes"),
]


def config(store: str, *, sleep: float, **top) -> dict:
    """Two leaves under one stage run: one returns, one raises."""
    return {
        "tracking_uri": store,
        "experiment": "sm",
        "objective": {"metric": "loss"},
        **top,
        "stages": {
            "fit": {
                "_target_": "tests.targets.counts_monitors",
                "params": {"sleep": sleep},
                "variants": {"points": {"ok": {"x": 1.0}, "bad": {"x": 2.0, "fail": True}}},
            }
        },
    }


def runs_by_name(store: str) -> dict:
    return {r.info.run_name.rsplit("/", 1)[-1]: r for r in all_runs(MlflowClient(store), "sm")}


def system_keys(run) -> set[str]:
    return {key for key in run.data.metrics if key.startswith("system/")}


def monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]


@pytest.mark.parametrize("make_executor", EXECUTORS)
def test_every_leaf_run_gets_system_metrics_while_it_runs(store, make_executor, capfd):
    run_plan(
        build_plan(config(store, sleep=1.0, system_metrics=True, system_metrics_interval_s=0.3)),
        executor=make_executor(),
        plots=False,
    )
    runs = runs_by_name(store)
    ok, bad, stage = runs["ok"], runs["bad"], runs["fit"]
    assert ok.info.status == "FINISHED" and bad.info.status == "FAILED"
    for leaf in (ok, bad):
        assert {CPU, MEMORY, "system/system_memory_usage_percentage"} <= system_keys(leaf), leaf.info.run_name
        assert 0 <= leaf.data.metrics[CPU] <= 100
        assert leaf.data.metrics[MEMORY] > 0
    assert ok.data.metrics["monitors"] == 1
    assert "with 1 monitor(s)" in bad.data.tags["runtree.error"]
    assert system_keys(stage) == set()  # a parent runs no work of its own
    assert monitor_threads() == []
    assert "system metrics" not in capfd.readouterr().err  # MLflow's start/stop lines, four per leaf, stay quiet


@pytest.mark.parametrize("make_executor", EXECUTORS)
def test_a_program_run_as_a_leaf_gets_system_metrics_while_it_runs(store, make_executor, tmp_path, monkeypatch):
    """The monitor runs in the worker around the whole leaf, so it samples while the program runs; the program's
    result is what it reports, never the system metrics."""
    monkeypatch.chdir(tmp_path)  # the program's relative result file is the launch directory's
    program = "import json, time; time.sleep(1.0); open('result.json', 'w').write(json.dumps({'loss': 0.5}))"
    stage = {"command": ["python", "-c", program], "command_args": "none", "result_file": "result.json"}
    cfg = {"tracking_uri": store, "experiment": "sm", "system_metrics": True, "system_metrics_interval_s": 0.3}
    result = run_plan(
        build_plan({**cfg, "stages": {"fit": stage}}),
        executor=make_executor(),
        plots=False,
        output_dir=str(tmp_path / "out"),
    )
    leaf = result.stages["fit"].best
    assert leaf.metrics == {"loss": 0.5}
    run = MlflowClient(store).get_run(leaf.run_id)
    assert run.info.status == "FINISHED"
    assert {CPU, MEMORY} <= system_keys(run)


@pytest.mark.parametrize("make_executor", EXECUTORS)
def test_off_by_default_no_monitor_and_no_system_metric(store, make_executor):
    run_plan(build_plan(config(store, sleep=0.3)), executor=make_executor(), plots=False)
    runs = runs_by_name(store)
    assert runs["ok"].data.metrics["monitors"] == 0
    assert "with 0 monitor(s)" in runs["bad"].data.tags["runtree.error"]
    assert all(system_keys(run) == set() for run in runs.values())


def test_a_leaf_shorter_than_the_interval_gets_one_sample_and_does_not_wait_for_it(store):
    began = time.monotonic()
    run_plan(
        build_plan(config(store, sleep=0.0, system_metrics=True, system_metrics_interval_s=60)),
        executor=LocalExecutor(),
        plots=False,
    )
    elapsed = time.monotonic() - began
    client = MlflowClient(store)
    for name in ("ok", "bad"):
        run = runs_by_name(store)[name]
        assert [m.step for m in client.get_metric_history(run.info.run_id, CPU)] == [0]
        assert MEMORY in run.data.metrics
    assert elapsed < 30, f"{elapsed:.1f} s: stopping the monitor waited for its 60 s interval"


def test_an_interrupted_leaf_stops_its_monitor(store):
    client = MlflowClient(store)
    experiment = client.create_experiment("interrupted")
    run = client.create_run(experiment)
    ref = RunRef(run.info.run_id, experiment, store, "leaf", run.info.artifact_uri, run.info.start_time, {})
    with pytest.raises(KeyboardInterrupt), system_metrics(ref, 0.2):
        assert len(monitor_threads()) == 1
        raise KeyboardInterrupt
    assert monitor_threads() == []


def test_ray_leaves_get_system_metrics(store, monkeypatch):
    """Ray's workers import targets by name, so they start with this repository on their path."""
    pytest.importorskip("ray")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    executor: Executor = RayExecutor(address="local", workers=2)
    run_plan(
        build_plan(config(store, sleep=1.0, system_metrics=True, system_metrics_interval_s=0.3)),
        executor=executor,
        plots=False,
    )
    runs = runs_by_name(store)
    assert runs["ok"].data.metrics["monitors"] == 1
    for leaf in (runs["ok"], runs["bad"]):
        assert {CPU, MEMORY} <= system_keys(leaf), leaf.info.run_name


INTERVAL = "system_metrics_interval_s"


@pytest.mark.parametrize(
    ("top", "key", "message"),
    [
        ({INTERVAL: 0}, INTERVAL, "must be a positive number of seconds, got 0"),
        ({INTERVAL: -1.5}, INTERVAL, "must be a positive number of seconds, got -1.5"),
        ({INTERVAL: "10s"}, INTERVAL, "must be a positive number of seconds, got '10s'"),
        ({INTERVAL: True}, INTERVAL, "must be a positive number of seconds, got True"),
        ({"system_metrics": "yes"}, "system_metrics", "must be true or false, got 'yes'"),
    ],
)
def test_a_bad_setting_is_one_config_error_naming_its_key(top, key, message):
    with pytest.raises(ConfigErrors) as caught:
        build_plan(config("sqlite:///unused.db", sleep=0.0, **{"system_metrics": True, **top}))
    assert [(e.key, e.stage, e.detail) for e in caught.value.errors] == [(key, None, message)]


def test_the_interval_is_read_only_when_on():
    assert build_plan(config("sqlite:///unused.db", sleep=0.0)).system_metrics_s is None
    assert build_plan(config("sqlite:///unused.db", sleep=0.0, system_metrics_interval_s=2)).system_metrics_s is None
    plan = build_plan(config("sqlite:///unused.db", sleep=0.0, system_metrics=True, system_metrics_interval_s=2))
    assert plan.system_metrics_s == 2.0
    assert build_plan(config("sqlite:///unused.db", sleep=0.0, system_metrics=True)).system_metrics_s == 10.0


@pytest.mark.fresh_store
def test_a_bad_interval_on_the_command_line_exits_2_and_writes_nothing(run_cli, store, tmp_path):
    proc = run_cli("+sweep=tutorial", f"tracking_uri={store}", "system_metrics=true", "system_metrics_interval_s=0")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("runtree: error:")]
    assert errors == ["runtree: error: key 'system_metrics_interval_s': must be a positive number of seconds, got 0"]
    assert not (tmp_path / "store.db").exists()
