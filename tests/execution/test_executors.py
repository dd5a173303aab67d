"""Every executor passes the same contract: same tree, same bests, worker logging lands, a dead worker is one
FAILED leaf. Real worker processes, a real local Ray runtime, a real sqlite store."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from runtree_pipeline import ConfigErrors, run_pipeline
from runtree_pipeline.execution.executors import LocalExecutor, ProcessExecutor, RayExecutor
from tests.conftest import REPO, all_runs

EXECUTORS = {
    "local": lambda: LocalExecutor(),
    "processes": lambda: ProcessExecutor(workers=3),
    "ray": lambda: RayExecutor(address="local", workers=2),
}


@pytest.fixture
def importable_tests(monkeypatch):
    """Ray's workers import targets by name: they need this repository on their path."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def contract_config(store: str, experiment: str) -> dict:
    return {
        "tracking_uri": store,
        "experiment": experiment,
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.contract",
                "params": {"fail_on": [3]},
                "variants": {"points": {"a": {"y": 0.0}, "b": {"y": 1.0}}},
                "subvariants": {"sampler": "random", "n": 5, "seed": 3, "params": {"x": "choice(0, 1, 2, 3, 4, 5)"}},
            },
            "refine": {
                "_target_": "tests.targets.quad",
                "depends_on": ["fit"],
                "params": {"x": "${best:fit.params.x}"},
                "variants": {"params": {"y": "choice(-2, 0)"}},
            },
            "side": {"_target_": "tests.targets.quad", "params": {"x": 3}},
        },
    }


def tree_facts(client: MlflowClient, experiment: str) -> dict:
    """The tree without ids: what a user compares between two executions."""
    runs = all_runs(client, experiment)
    names = {r.info.run_id: r.info.run_name for r in runs}
    facts = {}
    for r in runs:
        facts[r.info.run_name] = (
            r.data.tags["runtree.level"],
            names.get(r.data.tags.get("mlflow.parentRunId")),
            r.info.status,
            r.data.params,
            r.data.metrics,
            names.get(r.data.tags.get("runtree.best_run_id")),
            r.data.tags.get("runtree.error"),
        )
    return facts


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    store = f"sqlite:///{tmp_path_factory.mktemp('ref') / 'ref.db'}"
    run_pipeline(contract_config(store, "contract"), executor=LocalExecutor())
    return tree_facts(MlflowClient(store), "contract")


@pytest.mark.parametrize("name", ["processes", "ray"])
def test_every_executor_builds_the_same_tree(name, reference, store, client, importable_tests):
    result = run_pipeline(contract_config(store, "contract"), executor=EXECUTORS[name]())
    assert result.ok
    facts = tree_facts(client, "contract")
    assert facts == reference
    failed = [n for n, f in facts.items() if f[2] == "FAILED"]
    assert failed and all(facts[n][6] == "ValueError: bad point x=3" for n in failed)
    for leaf in (r for r in all_runs(client, "contract") if r.data.tags["runtree.level"] == "subvariant"):
        x = float(leaf.data.params["x"])
        assert [(m.step, m.value) for m in client.get_metric_history(leaf.info.run_id, "curve")] == [
            (i, x + i) for i in range(3)
        ]


def test_reference_tree_is_what_the_config_declares(reference):
    levels = [f[0] for f in reference.values()]
    assert levels.count("stage") == 3 and levels.count("variant") == 2 + 2 and levels.count("subvariant") == 10
    assert reference["refine"][5] == "refine/y=-2"
    assert reference["refine/y=-2"][3]["x"] == "2"


@pytest.mark.parametrize("name", ["processes", "ray"])
def test_a_worker_that_dies_is_a_failed_leaf_not_a_hung_pipeline(name, store, client, importable_tests):
    config = {
        "tracking_uri": store,
        "experiment": "crash",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.crash_at",
                "params": {"crash_on": [1]},
                "subvariants": {"params": {"x": "range(0, 5)"}},
            }
        },
    }
    result = run_pipeline(config, executor=EXECUTORS[name]())
    assert result.ok
    runs = all_runs(client, "crash")
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert [r.info.run_name for r in failed] == ["fit/x=1"]
    assert failed[0].data.tags["runtree.error"]
    assert len([r for r in runs if r.info.status == "FINISHED"]) == 1 + 4
    assert result.stages["fit"].best.params["x"] == 0


def test_tpe_in_parallel_asks_and_tells(store, client):
    config = {
        "tracking_uri": store,
        "experiment": "tpe",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.quad",
                "subvariants": {"sampler": "tpe", "n": 12, "seed": 0, "params": {"x": "interval(-4, 4)", "y": "choice(-2, 0, 2)"}},
            }
        },
    }
    result = run_pipeline(config, executor=ProcessExecutor(workers=3))
    leaves = [r for r in all_runs(client, "tpe") if r.data.tags["runtree.level"] == "subvariant"]
    assert len(leaves) == 12 and {r.info.status for r in leaves} == {"FINISHED"}
    assert result.stages["fit"].best.metrics["loss"] == min(r.data.metrics["loss"] for r in leaves)


def test_four_workers_on_sqlite_lose_nothing(store, client):
    config = {
        "tracking_uri": store,
        "experiment": "busy",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.logs_steps_grouped",
                "params": {"steps": 25},
                "variants": {"params": {"group": "range(0, 4)"}},
                "subvariants": {"params": {"x": "range(0, 4)"}},
            }
        },
    }
    result = run_pipeline(config, executor=ProcessExecutor(workers=4))
    assert result.ok
    runs = all_runs(client, "busy")
    assert len(runs) == 1 + 4 + 16 and {r.info.status for r in runs} == {"FINISHED"}
    for leaf in (r for r in runs if r.data.tags["runtree.level"] == "subvariant"):
        assert len(client.get_metric_history(leaf.info.run_id, "curve")) == 25


def test_independent_stages_overlap(store, client):
    config = {
        "tracking_uri": store,
        "experiment": "branches",
        "stages": {
            "left": {"_target_": "tests.targets.sleepy", "params": {"sleep": 1.5}},
            "right": {"_target_": "tests.targets.sleepy", "params": {"sleep": 1.5}},
            "join": {"_target_": "tests.targets.sleepy", "depends_on": ["left", "right"], "params": {"sleep": 0}},
        },
    }
    assert run_pipeline(config, executor=ProcessExecutor(workers=2)).ok
    runs = {r.info.run_name: r.info for r in all_runs(client, "branches")}
    left, right, join = runs["left"], runs["right"], runs["join"]
    assert left.start_time < right.end_time and right.start_time < left.end_time
    assert join.start_time >= max(left.end_time, right.end_time)


def test_ray_on_a_cluster_refuses_a_local_store(store, client, run_cli):
    config = contract_config(store, "refused")
    with pytest.raises(ConfigErrors, match="key 'executor.address': Ray workers on other machines cannot write"):
        run_pipeline(config, executor=RayExecutor(address="auto"))
    proc = run_cli("+sweep=tutorial", f"tracking_uri={store}", "executor=ray", "executor.address=auto")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"runtree: error: key 'executor.address': Ray workers on other machines cannot write to {store}: "
        "use a tracking server (tracking_uri=http://HOST:PORT) or executor.address=local"
    ]
    assert all_runs(client) == []


def test_parallel_hydra_jobs_share_a_new_sqlite_store(run_cli, store, client):
    proc = run_cli(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        "+sweep=tutorial", f"tracking_uri={store}", "stages.tuning.subvariants.n=1,2",
    )
    assert proc.returncode == 0, proc.stderr
    runs = all_runs(client, "tutorial")
    stages = [r for r in runs if r.data.tags["runtree.level"] == "stage"]
    assert len(stages) == 2 and len({r.data.tags["runtree.pipeline_id"] for r in stages}) == 2
    assert len(runs) == 2 + 10 + 5 * (1 + 2)
    assert {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.parametrize("args", [["-c", "import runtree_pipeline, runtree_pipeline.cli.main"], ["-m", "runtree_pipeline", "+sweep=tutorial", "dry_run=true"]])
def test_import_and_dry_run_do_not_import_mlflow(args, tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "runtree_pipeline" in imported
    assert not {m for m in imported if m.split(".")[0] in ("mlflow", "optuna", "torch", "ray")}


def test_an_inherited_mlflow_run_id_does_not_hijack_the_tree(store, client, monkeypatch):
    """mlflow#15713: MLFLOW_RUN_ID in the environment would silently become the parent of the first run,
    in the driver or in a worker that inherits the environment."""
    stranger = client.create_run(client.create_experiment("elsewhere")).info.run_id
    client.set_terminated(stranger)
    monkeypatch.setenv("MLFLOW_RUN_ID", stranger)
    config = {
        "tracking_uri": store,
        "experiment": "inherited",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.logs_steps_grouped",
                "variants": {"params": {"group": "choice(0, 1)"}},
                "subvariants": {"params": {"x": "range(0, 2)"}},
            }
        },
    }
    assert run_pipeline(config, executor=ProcessExecutor(workers=2)).ok
    runs = all_runs(client, "inherited")
    assert len(runs) == 1 + 2 + 4
    (stage,) = [r for r in runs if r.data.tags["runtree.level"] == "stage"]
    assert "mlflow.parentRunId" not in stage.data.tags
    ids = {r.info.run_id for r in runs}
    assert all(r.data.tags["mlflow.parentRunId"] in ids for r in runs if r is not stage)
    assert client.get_run(stranger).info.status == "FINISHED"
    assert client.get_metric_history(stranger, "curve") == []
