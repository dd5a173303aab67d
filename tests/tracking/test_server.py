"""The same tree through a real `mlflow server` on loopback: nothing in the package may assume a local store."""

from __future__ import annotations

import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time

import pytest
from mlflow import MlflowClient

from runtree_pipeline import build_plan, run_pipeline, run_plan
from runtree_pipeline.execution.executors import ProcessExecutor
from runtree_pipeline.tracking.localserver import free_port
from tests.conftest import all_runs, cli_env


def test_pipeline_against_tracking_server(run_cli, mlflow_server):
    proc = run_cli(
        "+sweep=tutorial", f"tracking_uri={mlflow_server}", "experiment=over_http", "stages.tuning.subvariants.n=4"
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{mlflow_server}" in proc.stdout

    client = MlflowClient(mlflow_server)
    runs = all_runs(client, "over_http")
    assert len(runs) == 1 + 5 + 20
    assert {r.info.status for r in runs} == {"FINISHED"}
    (stage,) = [r for r in runs if r.data.tags["runtree.level"] == "stage"]
    leaves = [r for r in runs if r.data.tags["runtree.level"] == "subvariant"]
    best = min(leaves, key=lambda r: r.data.metrics["metric1"])
    assert stage.data.metrics["best_metric1"] == best.data.metrics["metric1"]
    assert stage.data.tags["runtree.best_run_id"] == best.info.run_id
    assert "config.yaml" in {f.path for f in client.list_artifacts(stage.info.run_id)}


def test_worker_processes_against_a_server_store_every_artifact_and_a_stop_leaves_no_run_ahead(mlflow_server):
    """Artifact URIs from a server resolve against the store's URI, also in a driver that never set MLflow's global
    one; the runs created ahead of a stopped stage are deleted, not left KILLED."""
    config = {
        "tracking_uri": mlflow_server,
        "experiment": "processes_over_http",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.flaky",
                "params": {"fail_on": [2]},
                "on_failure": "stop",
                "subvariants": {"params": {"x": "range(0, 12)"}},
            },
        },
    }
    result = run_pipeline(config, executor=ProcessExecutor(workers=2))
    assert result.stages["fit"].status == "FAILED"
    assert result.stages["fit"].reason.startswith("on_failure=stop: stopped after fit/x=2 failed")
    client = MlflowClient(mlflow_server)
    runs = all_runs(client, "processes_over_http")
    (stage,) = [r for r in runs if r.data.tags["runtree.level"] == "stage"]
    assert {"config.yaml", "traceback.txt"} <= {f.path for r in runs for f in client.list_artifacts(r.info.run_id)}
    assert "RUNNING" not in {r.info.status for r in runs}
    assert [r.info.run_name for r in runs if r.info.status == "KILLED"] == []
    assert all(r.data.params for r in runs), "every run shown has run"


def test_unreachable_store_is_one_clear_error_before_any_work(run_cli):
    started = time.monotonic()
    proc = run_cli("+sweep=tutorial", "tracking_uri=http://127.0.0.1:9", timeout=600)
    assert time.monotonic() - started < 60
    assert proc.returncode == 3
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("runtree: error: tracking store http://127.0.0.1:9 is not usable")
    )


OUTAGE_SWEEP = """
# @package _global_
objective: {metric: loss}
stages:
  fit:
    _target_: tests.targets.counted
    params: {log_file: CALLS, sleep: 0.4}
    subvariants:
      params: {x: "range(0, 8)"}
"""


def _start(tmp_path, url, experiment, *args, **env):
    conf = tmp_path / "conf" / "sweep"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "fit.yaml").write_text(OUTAGE_SWEEP.replace("CALLS", str(tmp_path / "calls.txt")))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtree_pipeline",
            "--config-dir",
            str(conf.parent),
            "+sweep=fit",
            f"tracking_uri={url}",
            f"experiment={experiment}",
            *args,
        ],
        cwd=tmp_path,
        env=cli_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Outage:
    """A loopback port in front of the worker's `mlflow server` that goes down and comes back up as a server that
    stops does: new connections are refused; a request already received gets its answer, and an open connection
    is then closed without passing on the next one (a write the server never saw, not one whose answer was lost).
    Restarting the server itself would cost 7-9 s of a test where nothing depends on which process answers."""

    def __init__(self, server_url: str) -> None:
        self.upstream = ("127.0.0.1", int(server_url.rsplit(":", 1)[1]))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.listener: socket.socket | None = None

    def start(self) -> Outage:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        listener, self.listener = self.listener, None
        _shut(listener)
        listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._pipe, args=(client, upstream, listener), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, up_while: socket.socket | None) -> None:
        """Bytes from `src` to `dst`; towards the server only while the listener it came through is up."""
        try:
            while (data := src.recv(65536)) and (up_while is None or self.listener is up_while):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _shut(src)
            _shut(dst)
            src.close()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


@pytest.fixture
def outage(mlflow_server):
    front = Outage(mlflow_server).start()
    yield front
    if front.listener is not None:
        front.stop()


def _wait_calls(tmp_path, n):
    deadline = time.time() + 120
    path = tmp_path / "calls.txt"
    while not path.exists() or len(path.read_text().splitlines()) < n:
        assert time.time() < deadline
        time.sleep(0.05)


def _assert_complete(url, experiment):
    runs = all_runs(MlflowClient(url), experiment)
    assert len(runs) == 1 + 8
    assert {r.info.status for r in runs} == {"FINISHED"}
    leaves = [r for r in runs if r.data.tags["runtree.level"] == "subvariant"]
    (stage,) = [r for r in runs if r.data.tags["runtree.level"] == "stage"]
    assert stage.data.metrics["best_loss"] == min(r.data.metrics["loss"] for r in leaves) == 0.0


def test_a_short_server_outage_mid_run_is_ridden_out(outage, tmp_path):
    proc = _start(tmp_path, outage.url, "ridden_out")
    _wait_calls(tmp_path, 2)
    outage.stop()
    time.sleep(2)
    outage.start()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    _assert_complete(outage.url, "ridden_out")


def test_a_write_that_finally_fails_is_loud_and_resumable(outage, tmp_path):
    fast_fail = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
        "RUNTREE_RETRY_SECONDS": "1",
    }
    proc = _start(tmp_path, outage.url, "finally_fails", **fast_fail)
    _wait_calls(tmp_path, 2)
    outage.stop()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 4, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("runtree: error: could not "), err
    _, _, command = last.partition("; redo what is missing with: ")
    assert shlex.split(command)[1:4] == ["-m", "runtree_pipeline", "--config-dir"] and " resume=" in command, last

    outage.start()
    # The line as printed, pasted in the same directory with the PATH it was started with: it finishes the same
    # execution (one stage run in all).
    again = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=cli_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    _assert_complete(outage.url, "finally_fails")


@pytest.mark.parametrize(("sleep", "n"), [(0.02, 24), (0.3, 6)])
def test_recorded_durations_are_the_work_not_the_bookkeeping(mlflow_server, sleep, n):
    """Against a server runs are created ahead and ended on I/O threads; the UI's durations must still show how
    long each leaf worked. Its end is the target's own end, whichever thread sends it. Its start is when the run was
    created, which MLflow cannot move later: a round trip early, plus at most `AHEAD_SECONDS` for a run created
    ahead. On a loaded 2-core machine a round trip alone has taken 0.25 s, so the start is judged on the median and
    against runs created a whole batch ahead (about 0.9 s early for the 0.3 s leaves), the end on every leaf."""
    config = {
        "tracking_uri": mlflow_server,
        "experiment": f"durations_{sleep}",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.timed",
                "params": {"sleep": sleep},
                "subvariants": {"params": {"x": f"range(0, {n})"}},
            }
        },
    }
    run_pipeline(config)
    leaves = [
        r
        for r in all_runs(MlflowClient(mlflow_server), f"durations_{sleep}")
        if r.data.tags["runtree.level"] == "subvariant"
    ]
    assert len(leaves) == n
    late_ends = sorted(r.info.end_time / 1000 - r.data.metrics["ended"] for r in leaves)
    early_starts = sorted(r.data.metrics["began"] - r.info.start_time / 1000 for r in leaves)
    assert -0.002 <= late_ends[0] and late_ends[-1] < 0.25 and statistics.median(late_ends) < 0.02, late_ends
    assert early_starts[0] >= -0.002, early_starts
    assert statistics.median(early_starts) < 0.5, early_starts


def test_tree_against_a_server(mlflow_server, capsys):
    """`runtree tree` reads a server's store as it reads a file's. Here rather than in tests/cli/test_console.py, so
    that the one server of the worker that runs this module serves it: starting another costs 6-10 s."""
    from tests.cli.test_console import TUTORIAL, runtree

    config = {**TUTORIAL, "tracking_uri": mlflow_server, "experiment": "console_http"}
    config["stages"] = {
        "tuning": {
            **TUTORIAL["stages"]["tuning"],
            "subvariants": {**TUTORIAL["stages"]["tuning"]["subvariants"], "n": 2},
        }
    }
    result = run_plan(build_plan(config), plots=False)
    proc = runtree(capsys, "tree", "--tracking-uri", mlflow_server, "--experiment", "console_http")
    assert proc.code == 0, proc.err
    assert proc.lines[0].startswith(f"pipeline {result.pipeline_id} of experiment 'console_http'")
    assert len([line for line in proc.lines if "test_" in line]) == 5


def test_the_best_model_is_registered_through_a_server(mlflow_server):
    """A server resolves `models:/<id>` and links the logged model itself: the link is not written twice. Here,
    beside the other server tests, so one server serves them all (tests/tracking/test_registry.py has the rest)."""
    import json

    import mlflow.sklearn
    import numpy as np
    from mlflow import MlflowClient

    from runtree_pipeline.plan.stages import Register
    from runtree_pipeline.tracking.active import use_tracking_uri
    from runtree_pipeline.tracking.registry import register_best
    from tests.tracking.test_registry import X, champion, leaf, model_of

    client = MlflowClient(mlflow_server)
    restore = use_tracking_uri(mlflow_server)
    try:
        run_id = leaf(client, client.create_experiment("registry_over_http"), slope=6.0)
        tags = register_best(
            tracking_uri=mlflow_server,
            register=Register("digits-over-http"),
            stage="final",
            pipeline_id="p",
            stage_run_id="s",
            best_run_id=run_id,
            objective_metric="loss",
            objective_mode="min",
            objective_value=0.5,
        )
        model = model_of(client, run_id)
        version = champion(client, name="digits-over-http")
        assert tags == {"runtree.registered_model": "digits-over-http", "runtree.registered_version": "1"}
        assert (version.source, version.run_id) == (f"models:/{model.model_id}", run_id)
        linked = json.loads(client.get_logged_model(model.model_id).tags["mlflow.modelVersions"])
        assert linked == [{"name": "digits-over-http", "version": 1}]
        predicted = mlflow.sklearn.load_model("models:/digits-over-http@champion").predict(X)
        assert np.allclose(predicted, 6.0 * X.ravel())
    finally:
        restore()
