"""Every executor passes the same contract: the same tree as the local executor, a target's own logging lands on
its leaf, tpe asks and tells with leaves in flight, a dead worker is one FAILED leaf, an interrupt leaves no run
RUNNING, and a killed pipeline resumes without redoing finished leaves. Real worker processes, one real local Ray
runtime for the module, real sqlite stores.

`ExecutorContract` holds the whole contract (as Hydra's `LauncherTestSuite` does for launchers); `TestLocal`,
`TestProcesses` and `TestRay` only say how to build their executor, so a new executor gets every test from a class
of a few lines. Behaviour that is not every executor's (many workers on one store, overlapping stages, Ray's refusal
of a local store, Hydra's parallel jobs) is tested by the plain functions after the contract.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from mlflow import MlflowClient

from runtree_pipeline import ConfigErrors, Interrupted, PipelineResult, build_plan, run_pipeline, run_plan
from runtree_pipeline.execution.executors import Executor, LocalExecutor, ProcessExecutor, RayExecutor, processes
from runtree_pipeline.execution.executors.ray import _stop_autoscaler
from runtree_pipeline.execution.leaf import LeafTask
from runtree_pipeline.plan.targets import FunctionTarget
from runtree_pipeline.tracking.records import RunRef
from tests.conftest import REPO, all_runs, cli_env, copy_of

# --- stores, Ray ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_runtime():
    """One local Ray runtime for the whole module: starting one costs seconds.

    `RayExecutor(address="local")` uses a runtime that is already initialised and leaves it running when it closes;
    a driver process started from here (the kill test's) joins it through RAY_ADDRESS. Ray's workers import targets
    by name, so they start with this repository on their path.
    """
    import ray

    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        sigterm = signal.getsignal(signal.SIGTERM)
        # "local": a runtime of its own, never the one another test process started and Ray noted in /tmp/ray
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
        signal.signal(signal.SIGTERM, sigterm)  # ray.init installs its own, which would outlive this module
        env.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
        try:
            yield
        finally:
            _stop_autoscaler()  # else shutting down waits a second for it, in every module that uses this fixture
            ray.shutdown()
            signal.signal(signal.SIGTERM, sigterm)


@pytest.fixture
def ctrl_c():
    """Ctrl-C handled as in a terminal, also when the tests themselves run as a background job (`cmd &` in a
    script, nohup): those start with SIGINT ignored, and a pipeline leaves ignored what its parent ignored."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run(config: dict, executor: Executor) -> PipelineResult:
    """Run a pipeline as the API does, without the pictures: drawing them is the driver's work, whatever the
    executor, and costs more than a small pipeline."""
    return run_plan(build_plan(config), executor=executor, plots=False)


# --- the pipelines the contract runs -------------------------------------------------------------------------------


def contract_config(store: str, experiment: str, *, fit: tuple[int, int] = (5, 40)) -> dict:
    """`fit`: the fit stage's draws per variant and their seed, chosen so that each variant's study draws x=3 (which
    fails) and x=2 (the best) once."""
    draws, seed = fit
    return {
        "tracking_uri": store,
        "experiment": experiment,
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.contract",
                "params": {"fail_on": [3]},
                "variants": {"points": {"a": {"y": 0.0}, "b": {"y": 1.0}}},
                "subvariants": {
                    "sampler": "random",
                    "n": draws,
                    "seed": seed,
                    "params": {"x": "choice(0, 1, 2, 3, 4, 5)"},
                },
            },
            "refine": {
                "_target_": "tests.targets.quad",
                "depends_on": ["fit"],
                "params": {"x": "${best:fit.params.x}"},
                "variants": {"params": {"y": "choice(-2, 0)"}},
            },
            "side": {"_target_": "tests.targets.quad", "params": {"x": 3}},
            "tune": {
                "_target_": "tests.targets.quad",
                "subvariants": {
                    "sampler": "tpe",
                    "n": 12,
                    "seed": 0,
                    "params": {"x": "interval(-4, 4)", "y": "choice(-2, 0, 2)"},
                },
            },
        },
    }


def deterministic(facts: dict) -> dict:
    """The part of the tree every execution shares: tpe's later points depend on the order results come back."""
    return {name: fact for name, fact in facts.items() if name.split("/")[0] != "tune"}


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
def reference(tmp_path_factory, empty_store):
    """The contract pipeline's tree as the local executor records it."""
    store = copy_of(empty_store, tmp_path_factory.mktemp("reference"))
    run(contract_config(store, "contract"), LocalExecutor())
    return tree_facts(MlflowClient(store), "contract")


def stopping_config(store: str, log_file: Path, *, driver: int = 0) -> dict:
    """2 variants x 4 points; the first leaf at x=2 stops the pipeline once 2 leaves are FINISHED (see the target)."""
    return {
        "tracking_uri": store,
        "experiment": "stopped",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.stops_pipeline",
                "params": {"log_file": str(log_file), "at": 2, "after": 2, "driver": driver},
                "variants": {"points": {"a": {"y": 0.0}, "b": {"y": 1.0}}},
                "subvariants": {"params": {"x": "range(0, 4)"}},
            }
        },
    }


POINTS = {f"{x},{y}" for x in range(4) for y in (0.0, 1.0)}


def point(run) -> str:
    return f"{run.data.params['x']},{float(run.data.params['y'])}"


def leaves_of(runs) -> list:
    return [r for r in runs if r.data.tags["runtree.level"] == "subvariant"]


def calls(log_file: Path) -> collections.Counter:
    return collections.Counter(log_file.read_text().splitlines() if log_file.exists() else [])


def stopper(log_file: Path) -> str:
    """The name of the leaf that stopped the pipeline."""
    return log_file.with_suffix(".claimed").read_text()


def assert_resumed_without_redoing(client: MlflowClient, log_file: Path, finished_before: dict[str, str]) -> None:
    """The whole tree FINISHED, one leaf per point, and each leaf that had finished kept its run and ran once."""
    runs = all_runs(client, "stopped")
    assert {r.info.status for r in runs} == {"FINISHED"}
    levels = collections.Counter(r.data.tags["runtree.level"] for r in runs)
    assert levels == {"stage": 1, "variant": 2, "subvariant": 8}
    leaves = {point(r): r for r in leaves_of(runs)}
    assert set(leaves) == POINTS
    assert {p: leaves[p].info.run_id for p in finished_before} == finished_before
    counted = calls(log_file)
    assert set(counted) == POINTS
    assert {p: counted[p] for p in finished_before} == dict.fromkeys(finished_before, 1)
    stage = next(r for r in runs if r.data.tags["runtree.level"] == "stage")
    assert stage.data.metrics["best_loss"] == min(r.data.metrics["loss"] for r in leaves.values()) == 0.0


class ContractRun(NamedTuple):
    result: PipelineResult
    client: MlflowClient
    stranger: str  # a run id the pipeline found in MLFLOW_RUN_ID


def leaf(x: int, store: str) -> LeafTask:
    """A leaf task on its own, as the scheduler submits one: `quad` logs nothing, so its run need not exist."""
    run = RunRef(f"run{x}", "0", store, f"x={x}")
    return LeafTask(FunctionTarget("tests.targets.quad"), {"x": x}, run, objectives=("loss",))


def losses(futures) -> list[float]:
    return [f.result(timeout=120).metrics["loss"] for f in futures]


def descendants(pid: int) -> set[int]:
    """Every live process under `pid` (Linux): forkserver workers are the server's children, not the driver's."""
    found: set[int] = set()
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in map(int, listing.read_text().split()):
                found |= {child, *descendants(child)}
    return found


def no_process_left_by(action: Callable[[], object]) -> set[int]:
    """The processes `action` started that are still alive after it: the interpreter's resource tracker is
    started first, as every process pool keeps it for the life of the interpreter."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    before = descendants(os.getpid())
    action()
    return descendants(os.getpid()) - before


def wait_for(path: str) -> None:
    """A worker initializer that holds its worker cold until the test creates `path`."""
    while not os.path.exists(path):
        time.sleep(0.01)


DRIVER = """
import pickle, sys
from runtree_pipeline import build_plan, run_plan
config, executor = pickle.loads(bytes.fromhex(sys.argv[1]))
run_plan(build_plan(config), executor=executor, plots=False)
"""


# --- the contract --------------------------------------------------------------------------------------------------


class ExecutorContract:
    """Every behaviour an executor must have. A subclass provides `make_executor`, a class-scoped fixture returning
    a function that builds a fresh, unstarted executor (each pipeline starts and closes its own)."""

    #: An executor that runs leaves in the driver process cannot survive a target that kills its process.
    runs_leaves_in_driver = False
    #: Workers that belong to a runtime the executor joined (Ray's, here the module's) outlive the executor.
    workers_outlive_close = False
    #: The pruner test's points: x < 3 improve, x >= 3 diverge and are pruned (a cluster of slow jobs takes fewer).
    pruned_points = range(0, 6)
    #: The contract pipeline's fit draws per variant and their seed (see `contract_config`).
    fit = (5, 40)

    @pytest.fixture(scope="class")
    @classmethod
    def make_executor(cls) -> Callable[[], Executor]:
        raise NotImplementedError("an executor's test class says how to build it")

    @pytest.fixture(scope="class")
    @classmethod
    def contract_run(cls, make_executor, tmp_path_factory, empty_store) -> ContractRun:
        """The contract pipeline, run once per executor; several tests read what it recorded.

        It runs with another run's id in MLFLOW_RUN_ID, as a shell that ran an MLflow project can leave it
        (mlflow#15713): the driver, and workers that inherit the environment, must not adopt it.
        """
        store = copy_of(empty_store, tmp_path_factory.mktemp("contract"))
        client = MlflowClient(store)
        stranger = client.create_run(client.create_experiment("elsewhere")).info.run_id
        client.set_terminated(stranger)
        with pytest.MonkeyPatch.context() as env:
            env.setenv("MLFLOW_RUN_ID", stranger)
            result = run(contract_config(store, "contract", fit=cls.fit), make_executor())
        return ContractRun(result, client, stranger)

    def test_builds_the_same_tree_as_the_local_executor(self, contract_run, reference):
        result, client, _ = contract_run
        assert result.ok
        assert deterministic(tree_facts(client, "contract")) == deterministic(reference)

    def test_a_failing_target_fails_its_own_leaf_and_the_tree_goes_on(self, contract_run):
        result, client, _ = contract_run
        runs = all_runs(client, "contract")
        failed = [r for r in runs if r.info.status == "FAILED"]
        assert sorted(r.info.run_name for r in failed) == ["fit/a/x=3", "fit/b/x=3"]
        assert {r.data.tags["runtree.error"] for r in failed} == {"ValueError: bad point x=3"}
        assert {r.info.status for r in runs} == {"FINISHED", "FAILED"}
        assert result.stages["fit"].best.params["x"] == 2 and result.stages["refine"].best.params["x"] == 2

    def test_fluent_logging_in_a_target_lands_on_its_leaf_with_steps(self, contract_run):
        _, client, _ = contract_run
        leaves = [r for r in leaves_of(all_runs(client, "contract")) if r.info.run_name.startswith("fit/")]
        assert len(leaves) == 2 * self.fit[0]
        for leaf in leaves:
            x = float(leaf.data.params["x"])
            history = client.get_metric_history(leaf.info.run_id, "curve")
            assert sorted((m.step, m.value) for m in history) == [(i, x + i) for i in range(3)], leaf.info.run_name
        parents = [r for r in all_runs(client, "contract") if r.data.tags["runtree.level"] != "subvariant"]
        assert all(client.get_metric_history(r.info.run_id, "curve") == [] for r in parents)

    def test_an_inherited_mlflow_run_id_does_not_hijack_the_tree(self, contract_run):
        _, client, stranger = contract_run
        runs = all_runs(client, "contract")
        ids = {r.info.run_id for r in runs}
        stages = [r for r in runs if r.data.tags["runtree.level"] == "stage"]
        assert len(stages) == 4 and all("mlflow.parentRunId" not in r.data.tags for r in stages)
        assert all(r.data.tags["mlflow.parentRunId"] in ids for r in runs if r not in stages)
        assert client.get_run(stranger).info.status == "FINISHED"
        assert client.get_run(stranger).data.metrics == {}
        assert client.get_metric_history(stranger, "curve") == []

    def test_tpe_asks_and_is_told_with_leaves_in_flight(self, contract_run):
        """A learning sampler under this executor (asks while earlier leaves run, tells as they end): n leaves,
        all recorded, and the stage's best is the best of them."""
        result, client, _ = contract_run
        runs = all_runs(client, "contract")
        names = {r.info.run_id: r.info.run_name for r in runs}
        leaves = [r for r in leaves_of(runs) if names[r.data.tags["mlflow.parentRunId"]] == "tune"]
        assert len(leaves) == 12 and {r.info.status for r in leaves} == {"FINISHED"}
        assert len({r.info.run_name for r in leaves}) == 12
        assert all(-4 <= float(r.data.params["x"]) <= 4 and r.data.params["y"] in ("-2", "0", "2") for r in leaves)
        best = min(r.data.metrics["loss"] for r in leaves)
        assert result.stages["tune"].best.metrics["loss"] == best
        assert next(r for r in runs if r.info.run_name == "tune").data.metrics["best_loss"] == best

    def test_a_pruner_stops_a_leaf_from_its_reports_wherever_it_runs(self, make_executor, store, client):
        """`report` reaches the driver's pruner from a thread, a worker process or a Ray task alike. A threshold
        pruner decides on a leaf's own values only, so its decisions do not depend on which leaf finished first."""
        config = {
            "tracking_uri": store,
            "experiment": "pruned",
            "objective": {"metric": "val_loss"},
            "stages": {
                "fit": {
                    "_target_": "tests.targets.diverging",
                    "subvariants": {
                        "params": {"x": f"range({self.pruned_points.start}, {self.pruned_points.stop})"},
                        "pruner": {"_target_": "optuna.pruners.ThresholdPruner", "upper": 5.0},
                    },
                }
            },
        }
        kept = [str(x) for x in self.pruned_points if x < 3]
        pruned = [str(x) for x in self.pruned_points if x >= 3]
        executor = make_executor()
        result = run(config, executor)
        assert result.ok and result.stages["fit"].best.params["x"] == 2
        assert result.stages["fit"].counts["pruned"] == len(pruned) and result.stages["fit"].counts["failed"] == 0
        leaves = {r.data.params["x"]: r for r in all_runs(client, "pruned") if r.data.tags["runtree.level"] != "stage"}
        assert {x: r.info.status for x, r in leaves.items()} == {
            **dict.fromkeys(kept, "FINISHED"),
            **dict.fromkeys(pruned, "KILLED"),
        }
        (stage,) = (r for r in all_runs(client, "pruned") if r.data.tags["runtree.level"] == "stage")
        raced = stage.data.tags.get("runtree.order_dependent")
        assert raced == ("pruner" if executor.workers > 1 else None), "a rerun may prune other leaves"
        for x in pruned:
            assert leaves[x].data.tags["runtree.pruned"] == "true"
            assert leaves[x].data.tags["runtree.pruned_at_step"] == "2"
            history = client.get_metric_history(leaves[x].info.run_id, "val_loss")
            assert [m.step for m in history] == [0, 1, 2]

    def test_a_leaf_past_its_timeout_fails_alone_where_it_can_be_stopped(self, make_executor, store, client):
        """An executor that can stop a leaf stops a hung one at `limits.timeout_s` and goes on; one that cannot
        (leaves in the driver's own process) refuses the limit before anything is recorded."""
        config = {
            "tracking_uri": store,
            "experiment": "hung",
            "objective": {"metric": "loss"},
            "stages": {
                "fit": {
                    "_target_": "tests.targets.naps",
                    "params": {"nap_on": [2], "seconds": 120},
                    "limits": {"timeout_s": 3},
                    "subvariants": {"params": {"x": "range(0, 4)"}},
                }
            },
        }
        executor = make_executor()
        if not executor.stops_leaves:
            with pytest.raises(ConfigErrors, match="key 'limits.timeout_s': executor=local runs leaves inside"):
                run(config, executor)
            return
        started = time.monotonic()
        result = run(config, executor)
        assert time.monotonic() - started < 60
        statuses = {r.info.run_name: r.info.status for r in all_runs(client, "hung")}
        assert statuses == {"fit": "FINISHED", **{f"fit/x={x}": "FINISHED" for x in (0, 1, 3)}, "fit/x=2": "FAILED"}
        errors = {leaf.name: leaf.error for leaf in result.stages["fit"].node.leaves}
        assert errors["fit/x=2"].startswith("Timeout: the leaf ran longer than limits.timeout_s=3 s")

    def test_a_worker_that_dies_is_a_failed_leaf_not_a_hung_pipeline(self, make_executor, store, client):
        if self.runs_leaves_in_driver:
            pytest.skip("leaves run in the driver process: a target that kills its process ends the pipeline")
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
        result = run(config, make_executor())
        assert result.ok
        runs = all_runs(client, "crash")
        failed = [r for r in runs if r.info.status == "FAILED"]
        assert [r.info.run_name for r in failed] == ["fit/x=1"]
        assert failed[0].data.tags["runtree.error"]
        assert len([r for r in runs if r.info.status == "FINISHED"]) == 1 + 4
        assert result.stages["fit"].best.params["x"] == 0

    def test_an_interrupt_ends_every_open_run_killed(self, make_executor, store, client, tmp_path, ctrl_c):
        """Ctrl-C while leaves are in flight: nothing is left RUNNING, and the leaf it cut off is KILLED (not
        FAILED), so a resume redoes it. (Resuming is the kill test's; it treats KILLED and RUNNING runs alike.)"""
        log_file = tmp_path / "calls.txt"
        with pytest.raises(Interrupted) as interrupted:
            run(stopping_config(store, log_file, driver=os.getpid()), make_executor())
        assert interrupted.value.exit_code == 130
        runs = all_runs(client, "stopped")
        assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}
        assert {r.info.run_name: r.info.status for r in runs}[stopper(log_file)] == "KILLED"
        assert len([r for r in leaves_of(runs) if r.info.status == "FINISHED"]) >= 2

    def test_a_killed_pipeline_resumes_without_redoing_finished_leaves(self, make_executor, store, client, tmp_path):
        log_file = tmp_path / "calls.txt"
        config = stopping_config(store, log_file)
        payload = pickle.dumps((config, make_executor())).hex()
        with open(tmp_path / "driver.err", "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", DRIVER, payload],
                cwd=tmp_path,
                env=cli_env(),
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        try:
            deadline = time.monotonic() + 120
            while not log_file.with_suffix(".stopping").exists():
                assert proc.poll() is None, (tmp_path / "driver.err").read_text()
                assert time.monotonic() < deadline, "the pipeline never reached the leaf that stops it"
                time.sleep(0.02)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the driver and any worker processes of its own
            proc.wait()

        before = all_runs(client, "stopped")
        assert {r.info.run_name: r.info.status for r in before}[stopper(log_file)] == "RUNNING"
        finished_before = {point(r): r.info.run_id for r in leaves_of(before) if r.info.status == "FINISHED"}
        assert len(finished_before) >= 2

        run({**config, "resume": "last"}, make_executor())
        assert_resumed_without_redoing(client, log_file, finished_before)

    def test_a_second_start_changes_nothing_and_leaves_then_run(self, make_executor, store):
        """`run_plan` starts the executor before opening the store and the runner starts it again: the second
        call must not start a second set of workers or forget what the first one will have to restore."""
        executor = make_executor()
        executor.start(tracking_uri=store)
        try:
            first = dict(vars(executor))
            executor.start(tracking_uri=store)
            assert [name for name, value in vars(executor).items() if first.get(name) is not value] == []
            assert losses([executor.submit(leaf(x, store)) for x in range(3)]) == [5.0, 4.0, 5.0]
        finally:
            executor.close()

    def test_close_leaves_no_process_behind_and_a_closed_executor_starts_again(self, make_executor, store):
        executor = make_executor()

        def pipeline() -> None:
            executor.start(tracking_uri=store)
            try:
                assert losses([executor.submit(leaf(2, store))]) == [5.0]
            finally:
                executor.close()

        left = no_process_left_by(pipeline) | no_process_left_by(pipeline)
        assert left == set() or self.workers_outlive_close


class TestLocal(ExecutorContract):
    runs_leaves_in_driver = True

    @pytest.fixture(scope="class")
    @classmethod
    def make_executor(cls):
        return LocalExecutor


class TestProcesses(ExecutorContract):
    @pytest.fixture(scope="class")
    @classmethod
    def make_executor(cls):
        return lambda: ProcessExecutor(workers=2)


class TestRay(ExecutorContract):
    workers_outlive_close = True

    @pytest.fixture(scope="class")
    @classmethod
    def make_executor(cls, ray_runtime):
        return lambda: RayExecutor(address="local", workers=2)


# --- not every executor's ------------------------------------------------------------------------------------------


def test_reference_tree_is_what_the_config_declares(reference):
    levels = [f[0] for f in reference.values()]
    assert levels.count("stage") == 4 and levels.count("variant") == 2 + 2 and levels.count("subvariant") == 10 + 12
    assert reference["refine"][5] == "refine/y=-2"
    assert reference["refine/y=-2"][3]["x"] == "2"


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
    result = run(config, ProcessExecutor(workers=4))
    assert result.ok
    runs = all_runs(client, "busy")
    assert len(runs) == 1 + 4 + 16 and {r.info.status for r in runs} == {"FINISHED"}
    for leaf in leaves_of(runs):
        assert len(client.get_metric_history(leaf.info.run_id, "curve")) == 25


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_processes_start_returns_before_any_worker_is_warm(start_method, store, tmp_path, monkeypatch):
    """Leaves submitted while no worker is ready wait in the pool's queue and all complete; nothing is left
    running after close. Every worker's initializer waits for a file that only appears once `start` returned."""
    gate = tmp_path / "gate"
    monkeypatch.setattr(processes, "_warm_worker", functools.partial(wait_for, str(gate)))
    executor = ProcessExecutor(workers=2, start_method=start_method)

    def pipeline() -> None:
        executor.start(tracking_uri=store)
        try:
            futures = [executor.submit(leaf(x, store)) for x in range(5)]
            assert not any(f.done() for f in futures)
            gate.touch()
            assert losses(futures) == [5.0, 4.0, 5.0, 8.0, 13.0]
        finally:
            executor.close()

    assert no_process_left_by(pipeline) == set()


def test_process_executors_side_by_side_share_the_forkserver_until_the_last_one_closes(store):
    first, second = ProcessExecutor(workers=1), ProcessExecutor(workers=1, start_method="forkserver")

    def side_by_side() -> None:
        first.start(tracking_uri=store)
        second.start(tracking_uri=store)
        try:
            assert losses([first.submit(leaf(0, store)), second.submit(leaf(1, store))]) == [5.0, 4.0]
            first.close()
            assert losses([second.submit(leaf(2, store))]) == [5.0]
        finally:
            first.close()
            second.close()

    assert no_process_left_by(side_by_side) == set()


def test_processes_default_to_a_forkserver_on_linux():
    expected = "forkserver" if sys.platform.startswith("linux") else "spawn"
    assert ProcessExecutor(workers=1).start_method == expected
    assert ProcessExecutor(workers=1, start_method="spawn").start_method == "spawn"


def test_independent_stages_overlap(store, client):
    config = {
        "tracking_uri": store,
        "experiment": "branches",
        "stages": {
            "left": {"_target_": "tests.targets.sleepy", "params": {"sleep": 1.0}},
            "right": {"_target_": "tests.targets.sleepy", "params": {"sleep": 1.0}},
            "join": {"_target_": "tests.targets.sleepy", "depends_on": ["left", "right"], "params": {"sleep": 0}},
        },
    }
    assert run(config, ProcessExecutor(workers=2)).ok
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


def test_parallel_hydra_jobs_share_a_new_sqlite_store(run_cli, tmp_path):
    """Two jobs of a Hydra multirun start on a store that does not exist yet (no client opens it before: a client
    builds the store as it opens it)."""
    path = tmp_path / "store.db"
    store = f"sqlite:///{path}"
    proc = run_cli(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "+sweep=tutorial",
        f"tracking_uri={store}",
        "stages.tuning.subvariants.n=1,2",
        "plots=false",
    )
    assert proc.returncode == 0, proc.stderr
    assert not list(path.parent.glob("*.creating-*"))
    runs = all_runs(MlflowClient(store), "tutorial")
    stages = [r for r in runs if r.data.tags["runtree.level"] == "stage"]
    assert len(stages) == 2 and len({r.data.tags["runtree.pipeline_id"] for r in stages}) == 2
    assert len(runs) == 2 + 10 + 5 * (1 + 2)
    assert {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["-c", "import runtree_pipeline, runtree_pipeline.cli.main"], id="import"),
        pytest.param(["-m", "runtree_pipeline", "+sweep=tutorial", "dry_run=true"], id="dry-run"),
    ],
)
def test_import_and_dry_run_do_not_import_mlflow(args, tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "runtree_pipeline" in imported
    assert not {m for m in imported if m.split(".")[0] in ("mlflow", "optuna", "torch", "ray")}
