"""A leaf in a fresh interpreter (a Slurm job, a Ray worker) imports MLflow only when its target does: a target that
never touches MLflow is called without the second-long import, and one that imports it itself still logs onto its
leaf run, whichever thread imported it. Each leaf runs in a real `python` process on a pickled task, against a real
sqlite store; the test process has imported MLflow long before, so the lazy path is only seen from outside."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from runtree_pipeline.execution.leaf import LeafTask
from runtree_pipeline.plan.targets import FunctionTarget
from runtree_pipeline.tracking.records import RunRef
from tests.conftest import all_runs, cli_env

TARGETS = """
import sys
import threading


def untouched() -> dict:
    return {"mlflow_loaded": "mlflow" in sys.modules}


def fails() -> dict:
    raise ValueError("no")


def logs(value: float) -> dict:
    import mlflow

    mlflow.log_metric("own", value)
    return {"active": mlflow.active_run().info.run_id}


def logs_after_another_thread_imports(value: float) -> dict:
    thread = threading.Thread(target=__import__, args=("mlflow",))
    thread.start()
    thread.join()
    import mlflow

    mlflow.log_metric("own", value)
    return {"active": mlflow.active_run().info.run_id}


def reports_then_logs(value: float) -> dict:
    from runtree_pipeline import report

    report(1, reported=value)
    import mlflow

    mlflow.log_metric("own", value, step=1)
    return {"active": mlflow.active_run().info.run_id}
"""

WORKER = """
import json, pickle, sys
from runtree_pipeline.execution.leaf import execute
rows = []
for task in pickle.load(open(sys.argv[1], "rb")):
    before = list(sys.meta_path)
    outcome = execute(task)
    active = None
    if "mlflow" in sys.modules:
        import mlflow
        active = mlflow.active_run() and mlflow.active_run().info.run_id
    ours = [f for f in sys.meta_path if type(f).__module__.startswith("runtree_pipeline")]  # MLflow adds its own
    hooked = bool(ours) or any(f not in sys.meta_path for f in before)
    rows.append({"error": outcome.error, "outputs": dict(outcome.outputs), "hooked": hooked, "active_after": active})
print(json.dumps(rows))
"""


@pytest.fixture
def worker(tmp_path: Path, client, store):
    """Runs leaves one after another in one fresh interpreter, as a worker does; `leaf(target, **kwargs)` is a task
    on a new run of the store."""
    (tmp_path / "lazy_targets.py").write_text(TARGETS)
    experiment = client.create_experiment("lazy")

    def leaf(target: str, **kwargs: object) -> LeafTask:
        run = client.create_run(experiment)
        ref = RunRef(run.info.run_id, experiment, store, target, run.info.artifact_uri, run.info.start_time, {})
        return LeafTask(FunctionTarget(f"lazy_targets.{target}"), kwargs, ref)

    def run(*tasks: LeafTask) -> list[dict]:
        (tmp_path / "tasks.pkl").write_bytes(pickle.dumps(list(tasks)))
        env = cli_env()
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
        done = subprocess.run(
            [sys.executable, "-c", WORKER, str(tmp_path / "tasks.pkl")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])

    run.leaf = leaf
    return run


def test_a_target_that_never_imports_mlflow_is_called_without_it(worker):
    [row] = worker(worker.leaf("untouched"))
    assert row == {"error": None, "outputs": {"mlflow_loaded": False}, "hooked": False, "active_after": None}


@pytest.mark.parametrize("target", ["logs", "logs_after_another_thread_imports", "reports_then_logs"])
def test_a_target_that_imports_mlflow_itself_logs_onto_its_leaf_run(worker, client, target):
    task = worker.leaf(target, value=2.5)
    [row] = worker(task)
    assert row == {"error": None, "outputs": {"active": task.run.run_id}, "hooked": False, "active_after": None}
    assert client.get_run(task.run.run_id).data.metrics["own"] == 2.5
    assert len(all_runs(client, "lazy")) == 1, "MLflow started a run of its own"


def test_leaves_of_one_worker_each_get_their_own_run_whether_or_not_mlflow_is_imported(worker, client):
    tasks = [
        worker.leaf("untouched"),
        worker.leaf("fails"),
        worker.leaf("logs", value=1.0),
        worker.leaf("untouched"),
        worker.leaf("logs", value=2.0),
    ]
    rows = worker(*tasks)
    assert [row["error"] for row in rows] == [None, "ValueError: no", None, None, None]
    assert [row["outputs"] for row in rows] == [
        {"mlflow_loaded": False},
        {},
        {"active": tasks[2].run.run_id},
        {"mlflow_loaded": True},
        {"active": tasks[4].run.run_id},
    ]
    assert not any(row["hooked"] or row["active_after"] for row in rows)
    assert client.get_run(tasks[2].run.run_id).data.metrics == {"own": 1.0}
    assert client.get_run(tasks[4].run.run_id).data.metrics == {"own": 2.0}
    assert len(all_runs(client, "lazy")) == len(tasks)
