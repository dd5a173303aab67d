"""A Ray runtime the executor starts itself (`address: local`, no runtime in the process yet) starts while the driver
opens the store, and is gone, every process of it by pid, once the pipeline ends: after a success, after an error
while it was still starting, and after SIGTERM, which must end the pipeline (143), not abort it. The drivers have no
RAY_ADDRESS, so the runtime is their own and not the contract module's. One driver runs the store-fails pipeline and
then the successful one, each starting its own runtime, which must be gone before the next pipeline starts: that saves
a driver's start-up and imports, and shows too that a driver can start a runtime again after one ended."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import cli_env, copy_of

pytest.importorskip("ray")

DRIVER = """
import json, sys, threading, time
import psutil
from runtree_pipeline import build_plan, run_plan
from runtree_pipeline.errors import Interrupted
from runtree_pipeline.execution.executors import RayExecutor

seen = {}

def watch():
    me = psutil.Process()
    while True:
        for p in me.children(recursive=True):
            try:
                seen[p.pid] = p.name()  # the latest: caught between fork and exec, a child is still "python"
            except psutil.Error:
                pass
        time.sleep(0.02)

threading.Thread(target=watch, daemon=True).start()

def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False

reports = []
for config in json.loads(sys.argv[1]):
    seen.clear()
    try:
        run_plan(build_plan(config), executor=RayExecutor(workers=2, num_cpus=0.5), plots=False)
        outcome = "ok"
    except Interrupted:
        outcome = "interrupted"
    except Exception as e:
        outcome = type(e).__name__
    ray_seen = dict(seen)
    reports.append({"outcome": outcome, "seen": ray_seen, "alive": [pid for pid in ray_seen if alive(pid)]})
print(json.dumps(reports))
"""


def start_driver(configs: list[dict], tmp_path: Path) -> subprocess.Popen:
    """One driver running `configs` in turn, each pipeline with a Ray runtime of its own."""
    return own_runtime([sys.executable, "-c", DRIVER, json.dumps(configs)], tmp_path)


def own_runtime(command: list[str], cwd: Path) -> subprocess.Popen:
    """`command` in a session of its own, with no RAY_ADDRESS to join."""
    env = cli_env()
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def reports(driver: subprocess.Popen) -> list[dict]:
    stdout, stderr = driver.communicate(timeout=180)
    assert driver.returncode == 0 and stdout.strip(), stderr
    seen = json.loads(stdout.strip().splitlines()[-1])
    for one in seen:
        assert {"raylet", "gcs_server"} <= set(one["seen"].values()), (one, stderr)
    return seen


def config(store: str, log_file: Path, sleep: float) -> dict:
    stage = {
        "_target_": "tests.targets.counted",
        "params": {"log_file": str(log_file), "sleep": sleep},
        "subvariants": {"params": {"x": "range(0, 4)"}},
    }
    return {"tracking_uri": store, "experiment": "own", "objective": {"metric": "loss"}, "stages": {"fit": stage}}


@pytest.fixture(scope="module")
def store_fails_then_succeeds(tmp_path_factory, empty_store) -> tuple[Path, dict, dict]:
    """The store-fails pipeline first, so its runtime starts in a driver that never had one, as a user's would."""
    tmp_path = tmp_path_factory.mktemp("own-runtime")
    (tmp_path / "a_file").write_text("")
    unopenable = f"sqlite:///{tmp_path / 'a_file' / 'store.db'}"
    store = copy_of(empty_store, tmp_path)
    configs = [config(unopenable, tmp_path / "failed-calls", sleep=0), config(store, tmp_path / "calls", sleep=0)]
    failed, succeeded = reports(start_driver(configs, tmp_path))
    return tmp_path, failed, succeeded


def test_the_runtime_it_started_is_gone_once_the_pipeline_ends(store_fails_then_succeeds):
    tmp_path, _, seen = store_fails_then_succeeds

    assert seen["outcome"] == "ok", seen
    assert len((tmp_path / "calls").read_text().splitlines()) == 4
    assert seen["alive"] == [], {pid: seen["seen"][pid] for pid in map(str, seen["alive"])}


def test_a_runtime_still_starting_when_the_store_fails_to_open_is_gone_too(store_fails_then_succeeds):
    tmp_path, seen, _ = store_fails_then_succeeds

    assert seen["outcome"] not in ("ok", "interrupted"), seen
    assert not (tmp_path / "failed-calls").exists()
    assert seen["alive"] == [], {pid: seen["seen"][pid] for pid in map(str, seen["alive"])}


SWEEP = """
# @package _global_
objective: {metric: loss}
stages:
  fit:
    _target_: tests.targets.counted
    params: {log_file: LOG, sleep: 1.0}
    subvariants:
      params: {x: "range(0, 4)"}
"""


def test_sigterm_to_the_whole_group_while_ray_leaves_run_ends_the_pipeline_and_its_runtime(store, tmp_path):
    """As Slurm's scancel or a container's stop sends it: Ray's own processes get it too, and the driver takes longer
    than the 3 s after which Ray's crash handler, had it kept SIGTERM, would abort the process. Through the CLI,
    whose handlers are in place before Ray connects."""
    import psutil

    calls = tmp_path / "calls"
    (tmp_path / "conf" / "sweep").mkdir(parents=True)
    (tmp_path / "conf" / "sweep" / "own.yaml").write_text(SWEEP.replace("LOG", str(calls)))
    command = [sys.executable, "-m", "runtree_pipeline", "--config-dir", str(tmp_path / "conf"), "+sweep=own"]
    settings = [f"tracking_uri={store}", "plots=false", "executor=ray", "executor.workers=2", "executor.num_cpus=0.5"]
    driver = own_runtime([*command, *settings, f"hydra.run.dir={tmp_path / 'out'}"], tmp_path)
    seen: dict[int, tuple[psutil.Process, str]] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (calls.exists() and calls.read_text()):
        assert driver.poll() is None, driver.communicate()
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(driver.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    seen[child.pid] = (child, child.name())  # the latest: before its exec a child is "python"
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGTERM)
    _, stderr = driver.communicate(timeout=180)

    assert driver.returncode == 128 + signal.SIGTERM, stderr
    assert {"raylet", "gcs_server"} <= {name for _, name in seen.values()}, seen
    gone_by = time.monotonic() + 1  # what the driver did not stop itself dies of its own SIGTERM, at once, or never
    while (left := {pid: name for pid, (child, name) in seen.items() if _alive(child)}) and time.monotonic() < gone_by:
        time.sleep(0.05)
    assert left == {}


def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.parametrize(
    ("setting", "env", "line"),
    [
        pytest.param(
            [],
            {"RAY_ADDRESS": "headnode:port"},
            "key 'RAY_ADDRESS': Ray could not join the runtime at 'headnode:port'",
            id="RAY_ADDRESS",
        ),
        pytest.param(
            ["executor.address=headnode:port", "tracking_uri=http://127.0.0.1:9"],
            {},
            "key 'executor.address': Ray could not join the runtime at 'headnode:port'",
            id="executor.address",
        ),
    ],
)
def test_a_malformed_ray_address_is_one_line_naming_where_it_came_from_and_writes_nothing(tmp_path, setting, env, line):
    (tmp_path / "conf" / "sweep").mkdir(parents=True)
    (tmp_path / "conf" / "sweep" / "own.yaml").write_text(SWEEP.replace("LOG", str(tmp_path / "calls")))
    store = tmp_path / "mlflow.db"
    command = [sys.executable, "-m", "runtree_pipeline", "--config-dir", str(tmp_path / "conf"), "+sweep=own"]
    environment = {k: v for k, v in cli_env().items() if k != "RAY_ADDRESS"} | env
    done = subprocess.run(
        [*command, f"tracking_uri=sqlite:///{store}", "executor=ray", *setting, f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"runtree: error: {line}: Unable to parse port number from port (full address = headnode:port)"
    ]
    assert not store.exists() and not (tmp_path / "calls").exists()
