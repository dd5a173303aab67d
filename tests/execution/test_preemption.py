"""SIGTERM while leaves run (how Slurm, Kubernetes and spot instances say "you have seconds"): each running target
sees `Preempted` from its next `report`, saves a checkpoint, and the pipeline ends 143 with its runs KILLED; the
resume continues from that checkpoint, each step once in the history. Against a real sqlite store and a real
driver process on the process executor."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from runtree_pipeline import build_plan, run_plan
from runtree_pipeline.execution.executors import ProcessExecutor
from tests.conftest import REPO, all_runs, cli_env


def config(store: str, marker: str) -> dict:
    stage = {"_target_": "tests.targets.preemptible", "params": {"epochs": 40, "marker": marker}}
    return {"tracking_uri": store, "experiment": "preempted", "objective": {"metric": "loss"}, "stages": {"fit": stage}}


@pytest.mark.parametrize("executor", ["LocalExecutor()", "ProcessExecutor(workers=1)"], ids=["local", "processes"])
def test_sigterm_lets_a_target_save_a_checkpoint_and_the_resume_continues_from_it(store, client, tmp_path, executor):
    marker = tmp_path / "marker"
    script = (
        "import sys\n"
        "from runtree_pipeline import build_plan, run_plan\n"
        "from runtree_pipeline.errors import Interrupted\n"
        "from runtree_pipeline.execution.executors import LocalExecutor, ProcessExecutor\n"
        "try:\n"
        f"    run_plan(build_plan({config(store, str(marker))!r}), executor={executor}, plots=False)\n"
        "except Interrupted as e:\n"
        "    sys.exit(e.exit_code)\n"
    )
    driver = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=cli_env(), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "step 2" not in (marker.read_text() if marker.exists() else ""):
        time.sleep(0.05)
    driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=120)

    assert driver.returncode == 143, stderr.decode()
    noted = marker.read_text().split("\n")
    saved = [int(line.split()[1]) for line in noted if line.startswith("saved")]
    assert len(saved) == 1 and saved[0] >= 3, noted
    (run,) = all_runs(client, "preempted")
    assert run.info.status == "KILLED"
    assert run.data.tags["runtree.checkpoint_step"] == str(saved[0])

    resumed = {**config(store, str(marker)), "resume": "last"}
    result = run_plan(build_plan(resumed), executor=ProcessExecutor(workers=1), plots=False)

    assert result.stages["fit"].status == "FINISHED"
    assert [line for line in marker.read_text().split("\n") if line.startswith("start")] == [
        "start 0",
        f"start {saved[0] + 1}",
    ]
    history = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert history == list(range(40)), "each step once: the one reported before the save, and after the resume"


def test_a_local_leaf_that_never_reports_is_stopped_when_the_grace_is_over(store, client, tmp_path):
    stage = {
        "_target_": "tests.execution.test_driver_guard.waits",
        "params": {"x": 1, "go_on": str(tmp_path / "never")},
    }
    cfg = {"tracking_uri": store, "experiment": "deaf", "preempt_grace_s": 2, "stages": {"fit": stage}}
    script = (
        "import sys\n"
        "from runtree_pipeline import build_plan, run_plan\n"
        "from runtree_pipeline.errors import Interrupted\n"
        "try:\n"
        f"    run_plan(build_plan({cfg!r}), plots=False)\n"
        "except Interrupted as e:\n"
        "    sys.exit(e.exit_code)\n"
    )
    driver = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=cli_env(), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(r.info.status == "RUNNING" for r in all_runs(client, "deaf")):
        time.sleep(0.1)
    time.sleep(0.5)
    driver.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, stderr = driver.communicate(timeout=60)

    assert driver.returncode == 143, stderr.decode()
    assert 2 <= time.monotonic() - sent < 20, "it waited for the grace, and no longer"
    assert {r.info.status for r in all_runs(client, "deaf")} == {"KILLED"}


def test_ctrl_c_during_the_grace_stops_at_once_on_the_process_executor(store, client, tmp_path):
    stage = {"_target_": "tests.execution.test_driver_guard.waits", "params": {"x": 1, "go_on": str(tmp_path / "no")}}
    cfg = {"tracking_uri": store, "experiment": "impatient", "preempt_grace_s": 60, "stages": {"fit": stage}}
    script = (
        "import sys\n"
        "from runtree_pipeline import build_plan, run_plan\n"
        "from runtree_pipeline.errors import Interrupted\n"
        "from runtree_pipeline.execution.executors import ProcessExecutor\n"
        "try:\n"
        f"    run_plan(build_plan({cfg!r}), executor=ProcessExecutor(workers=1), plots=False)\n"
        "except Interrupted as e:\n"
        "    sys.exit(e.exit_code)\n"
    )
    driver = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=cli_env(), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(r.info.status == "RUNNING" for r in all_runs(client, "impatient")):
        time.sleep(0.1)
    time.sleep(1)
    driver.send_signal(signal.SIGTERM)
    time.sleep(1)
    driver.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, stderr = driver.communicate(timeout=60)

    assert driver.returncode == 143, stderr.decode()
    assert time.monotonic() - sent < 20, "the Ctrl-C cut the 60 s grace short"
    assert {r.info.status for r in all_runs(client, "impatient")} == {"KILLED"}
