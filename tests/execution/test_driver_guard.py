"""One driver per execution, against a real sqlite store and a real second process: a `resume=` of an execution
whose driver still runs is refused before it writes anything; once that driver is killed, the same resume is
accepted at once (same host, its pid gone) and completes the tree. `runtree list` tells the two states apart."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtree_pipeline import build_plan, run_plan
from runtree_pipeline.cli import console
from runtree_pipeline.errors import ExecutionTaken
from runtree_pipeline.execution.executors import LocalExecutor
from runtree_pipeline.tracking.heartbeat import DRIVER
from tests.conftest import REPO, all_runs, cli_env


def waits(*, x: float, go_on: str) -> dict:
    """Hangs until `go_on` exists: a leaf still running when the test wants it to."""
    deadline = time.monotonic() + 120
    while not os.path.exists(go_on) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"loss": x}


def config(store: str, go_on: Path) -> dict:
    stage = {
        "_target_": "tests.execution.test_driver_guard.waits",
        "params": {"go_on": str(go_on)},
        "subvariants": {"params": {"x": "choice(1, 2)"}},
    }
    return {"tracking_uri": store, "experiment": "guarded", "objective": {"metric": "loss"}, "stages": {"fit": stage}}


def listed(store: str) -> str:
    """`runtree list`, in this process: a driver's state is read from the store and its pid, not from who asks, and a
    subprocess would only add seconds of importing MLflow."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert console.main(["list", "--tracking-uri", store]) == 0
    return out.getvalue()


def test_a_second_driver_is_refused_then_takes_over_once_the_first_is_killed(store, client, tmp_path):
    go_on = tmp_path / "go-on"
    script = f"from runtree_pipeline import build_plan, run_plan\nrun_plan(build_plan({config(store, go_on)!r}))\n"
    first = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=cli_env(), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            runs = all_runs(client, "guarded")
            if any(r.info.status == "RUNNING" and r.data.tags.get("runtree.level") != "stage" for r in runs):
                break
            time.sleep(0.2)
        (stage,) = [r for r in all_runs(client, "guarded") if r.data.tags.get("runtree.level") == "stage"]
        pipeline_id = stage.data.tags["runtree.pipeline_id"]
        running = listed(store)
        assert f"{pipeline_id}  " in running and "RUNNING" in running

        before = {(r.info.run_id, r.info.status, tuple(sorted(r.data.tags.items()))) for r in all_runs(client)}
        resumed = {**config(store, go_on), "resume": pipeline_id}
        with pytest.raises(
            ExecutionTaken,
            match=rf"execution {pipeline_id} is being run by another driver \(pid "
            rf"{first.pid} on ",
        ):
            run_plan(build_plan(resumed), executor=LocalExecutor(), plots=False)
        after = {(r.info.run_id, r.info.status, tuple(sorted(r.data.tags.items()))) for r in all_runs(client)}
        assert after == before, "refused before writing anything"

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        assert "INTERRUPTED" in listed(store)

        go_on.touch()
        result = run_plan(build_plan(resumed), executor=LocalExecutor(), plots=False)
    finally:
        go_on.touch()
        if first.poll() is None:
            first.kill()
            first.wait()

    assert result.pipeline_id == pipeline_id
    assert result.stages["fit"].status == "FINISHED"
    (stage,) = [r for r in all_runs(client, "guarded") if r.data.tags.get("runtree.level") == "stage"]
    assert f'"pid": {os.getpid()}' in stage.data.tags[DRIVER], "the stage run names the driver that took it over"
    assert stage.data.tags["runtree.heartbeat"] == "ended"
    assert "FINISHED" in listed(store)
