"""The Python API: what `run_plan` refuses before it opens the tracking store, on a real sqlite store."""

from __future__ import annotations

import sys

import pytest
from mlflow import MlflowClient

from runtree_pipeline import ConfigErrors, build_plan, run_plan
from runtree_pipeline.execution.executors import RayExecutor

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
