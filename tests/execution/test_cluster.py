"""A pipeline on a two-node Ray cluster behind an `mlflow server` that proxies artifacts: the case where a path on
the driver's disk would mean nothing to a leaf. Both nodes run on this machine (loopback), but a leaf only shares
the tracking server with the driver: its working directory and artifact cache are its node's.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow import MlflowClient

from runtree_pipeline import build_plan, run_plan
from runtree_pipeline.execution.executors import LocalExecutor, RayExecutor
from tests.conftest import REPO, all_runs
from tests.targets import reads_files


def reads_on_a_node(**kwargs) -> dict:
    """`reads_files`, saying which Ray node it ran on and where it was."""
    import ray

    out = reads_files(**kwargs)
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "driver"
    return {**out, "node": node, "cwd": os.getcwd()}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a worker node, one CPU each, whose workers import this repository and cache fetched artifacts in
    a directory of their own."""
    from ray.cluster_utils import Cluster

    cache = tmp_path_factory.mktemp("node-cache")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        env.setenv("RUNTREE_ARTIFACT_CACHE", str(cache))
        env.delenv("RAY_ADDRESS", raising=False)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
    try:
        yield cluster, cache
    finally:
        cluster.shutdown()


def pipeline(server: str, experiment: str, workdir: Path) -> dict:
    return {
        "tracking_uri": server,
        "experiment": experiment,
        "objective": {"metric": "loss"},
        "stages": {
            "prep": {
                "_target_": "tests.targets.makes_files",
                "params": {"workdir": str(workdir)},
                "variants": {"params": {"rows": "choice(5, 3)"}},
            },
            "train": {
                "_target_": "tests.execution.test_cluster.reads_on_a_node",
                "depends_on": ["prep"],
                "params": {"data": "${best:prep.artifacts.data}", "model": "${best:prep.artifacts.model}"},
                "variants": {"params": {"x": "range(0, 6)"}},
            },
        },
    }


def shape(client: MlflowClient, experiment: str) -> dict:
    """The tree as a user compares it: names, statuses, metrics that do not depend on where a leaf ran, bests."""
    runs = all_runs(client, experiment)
    names = {r.info.run_id: r.info.run_name for r in runs}
    return {
        r.info.run_name: (
            r.info.status,
            {k: v for k, v in r.data.metrics.items()},
            names.get(r.data.tags.get("runtree.best_run_id")),
        )
        for r in runs
    }


def test_leaves_on_two_nodes_consume_an_upstream_artifact_through_the_server(
    cluster, mlflow_server, tmp_path, monkeypatch
):
    ray_cluster, node_cache = cluster
    driver = tmp_path / "driver"
    driver.mkdir()
    monkeypatch.chdir(driver)
    monkeypatch.setenv("RUNTREE_ARTIFACT_CACHE", str(tmp_path / "driver-cache"))  # for the local run

    on_ray = run_plan(
        build_plan(pipeline(mlflow_server, "on-cluster", tmp_path / "made-on-cluster")),
        executor=RayExecutor(address=ray_cluster.address, workers=2),
        plots=False,
    )
    on_local = run_plan(
        build_plan(pipeline(mlflow_server, "on-local", tmp_path / "made-locally")),
        executor=LocalExecutor(),
        plots=False,
    )

    assert on_ray.ok and on_local.ok
    client = MlflowClient(mlflow_server)
    assert shape(client, "on-cluster") == shape(client, "on-local")
    assert on_ray.stages["train"].best.params["x"] == on_local.stages["train"].best.params["x"] == 3

    data_uri = on_ray.stages["prep"].best.outputs["data"]
    assert data_uri.startswith("runs:/") and data_uri.endswith("/outputs/data")
    leaves = [r for r in all_runs(client, "on-cluster") if r.data.tags.get("runtree.stage") == "train"]
    leaves = [r for r in leaves if r.data.tags["runtree.level"] == "variant"]
    outputs = [on_ray.stages["train"].node.leaves[i].outputs for i in range(6)]
    assert {r.data.params["data"] for r in leaves} == {data_uri}
    assert len({o["node"] for o in outputs}) == 2, "both nodes ran leaves"
    assert {o["cwd"] for o in outputs}.isdisjoint({str(driver)})
    assert all(o["seen_at"].startswith(str(node_cache)) for o in outputs)
    assert not (driver / ".runtree").exists()
