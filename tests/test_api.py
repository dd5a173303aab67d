"""The Python API: what `run_plan` refuses before it opens the tracking store, on a real sqlite store."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from runtree_pipeline import ConfigErrors, build_plan, run_plan
from runtree_pipeline.errors import TrackingUnavailable
from runtree_pipeline.execution.executors import LocalExecutor, ProcessExecutor, RayExecutor
from tests.execution.test_executors import no_process_left_by

REFUSED = (
    "key 'executor.address': Ray workers on other machines cannot write to {uri}: "
    "use a tracking server (tracking_uri=http://HOST:PORT) or executor.address=local"
)


def plan_for(uri: str):
    stages = {"a": {"_target_": "tests.targets.quad", "params": {"x": 1.0}}}
    return build_plan({"experiment": "refused", "tracking_uri": uri, "stages": stages})


def ray_started() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def test_a_ray_cluster_with_a_sqlite_store_is_refused_before_the_store_file_exists(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    with pytest.raises(ConfigErrors) as info:
        run_plan(plan_for(uri), executor=RayExecutor(address="auto"), plots=False)
    assert str(info.value) == REFUSED.format(uri=uri)
    assert not (tmp_path / "store.db").exists()
    assert not ray_started()


def test_a_ray_cluster_with_an_existing_sqlite_store_creates_no_experiment(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(uri)
    client.create_experiment("earlier")
    before = sorted(e.name for e in client.search_experiments())
    with pytest.raises(ConfigErrors, match=r"^key 'executor\.address': Ray workers on other machines cannot write"):
        run_plan(plan_for(uri), executor=RayExecutor(address="ray://head:10001"), plots=False)
    assert client.get_experiment_by_name("refused") is None
    assert sorted(e.name for e in client.search_experiments()) == before
    assert not ray_started()


class Recording(LocalExecutor):
    """Notes each start and stop of its workers, and whether the store file existed when they started."""

    def __init__(self, store_file: Path) -> None:
        self.store_file = store_file
        self.calls: list[str] = []

    def _start(self, *, tracking_uri: str) -> None:
        self.calls.append(f"start, store {'open' if self.store_file.exists() else 'not open yet'}")
        super()._start(tracking_uri=tracking_uri)

    def _shutdown(self) -> None:
        self.calls.append("stop")
        super()._shutdown()


def test_the_executor_starts_before_the_store_is_opened_and_only_once(tmp_path):
    """Workers start while the driver imports MLflow and opens the store; the runner's own start is a no-op."""
    path = tmp_path / "store.db"
    executor = Recording(path)
    assert run_plan(plan_for(f"sqlite:///{path}"), executor=executor, plots=False).ok
    assert executor.calls[0] == "start, store not open yet"
    assert executor.calls.count("start, store not open yet") == 1 and "start, store open" not in executor.calls
    assert executor.calls[-1] == "stop"


def test_workers_started_for_a_store_that_cannot_be_opened_are_stopped():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once the socket is closed

    def pipeline() -> None:
        with pytest.raises(TrackingUnavailable):
            run_plan(plan_for(uri), executor=ProcessExecutor(workers=2), plots=False)

    assert no_process_left_by(pipeline) == set()
