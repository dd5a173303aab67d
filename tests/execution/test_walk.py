"""The scheduler's walk against an in-memory store: tree shape, ordering, stop, resume and interrupts in milliseconds.

The same behaviours are checked against real sqlite and server stores in test_scheduler.py, test_resume.py and the
tracking tests; here the store is the project's own interface, so each case isolates the walk.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import pytest

from runtree_pipeline import build_plan
from runtree_pipeline.errors import Interrupted
from runtree_pipeline.execution.executors import Executor
from runtree_pipeline.execution.leaf import LeafOutcome, LeafTask, split_returned
from runtree_pipeline.execution.leaf import run as run_target
from runtree_pipeline.execution.scheduler import Runner
from runtree_pipeline.futures import run_now
from tests.memory_store import MemoryStore

BROKEN: set[float] = set()
INTERRUPT_AT: set[float] = set()
_active = 0
_most_active = 0
_counting = threading.Lock()


def bowl(*, x: float, y: float = 0.0) -> dict:
    if x in INTERRUPT_AT:
        raise KeyboardInterrupt
    if x in BROKEN:
        raise RuntimeError(f"broken at x={x}")
    return {"loss": (x - 1.0) ** 2 + y}


def busy(*, x: float, y: float = 0.0) -> dict:
    global _active, _most_active
    with _counting:
        _active += 1
        _most_active = max(_most_active, _active)
    time.sleep(random.uniform(0.001, 0.02))
    with _counting:
        _active -= 1
    return {"loss": (x - 1.0) ** 2 + y}


def _call(task: LeafTask) -> LeafOutcome:
    """The target called directly, without making a run active: these tests never touch MLflow."""
    try:
        returned = run_target(task.target, task.kwargs)
    except Exception as e:  # noqa: BLE001 - a failing target fails its leaf, as in `execute`
        return LeafOutcome(error=f"{type(e).__name__}: {e}", ended_at=time.time())
    return replace(split_returned(returned, objectives=task.objectives), ended_at=time.time())


class Direct(Executor):
    def _submit(self, task: LeafTask) -> Future[LeafOutcome]:
        return run_now(_call, task)


class Threads(Executor):
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers)

    def _submit(self, task: LeafTask) -> Future[LeafOutcome]:
        return self._pool.submit(_call, task)

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True)


@pytest.fixture(autouse=True)
def _reset():
    BROKEN.clear()
    INTERRUPT_AT.clear()
    yield
    BROKEN.clear()
    INTERRUPT_AT.clear()


def config(target: str = "bowl", *, extra_stages: dict | None = None, **stage) -> dict:
    fit = {
        "_target_": f"tests.execution.test_walk.{target}",
        "variants": {"points": {"flat": {"y": 0.0}, "deep": {"y": -2.0}}},
        "subvariants": {"params": {"x": "range(0, 4)"}},
        **stage,
    }
    return {"experiment": "memory", "objective": {"metric": "loss"}, "stages": {"fit": fit, **(extra_stages or {})}}


def run(cfg: dict, store: MemoryStore | None = None, executor: Executor | None = None, resume: str | None = None):
    store = store or MemoryStore()
    plan = build_plan({**cfg, "resume": resume} if resume else cfg)
    return Runner(plan, store=store, executor=executor or Direct(), plots=False).run(), store


def by_name(store: MemoryStore, *, deleted: bool = False) -> dict:
    return {r.name: r for r in store.records(deleted=deleted)}


def test_a_three_level_tree_with_the_best_on_every_parent():
    result, store = run(config())
    runs = by_name(store)
    assert len(runs) == 1 + 2 + 8
    assert {r.status for r in runs.values()} == {"FINISHED"}
    stage, flat, deep = runs["fit"], runs["fit/flat"], runs["fit/deep"]
    assert flat.parent_id == deep.parent_id == stage.run_id
    assert {r.parent_id for n, r in runs.items() if n.startswith("fit/deep/")} == {deep.run_id}
    assert stage.tags["runtree.best_run_id"] == runs["fit/deep/x=1"].run_id == result.stages["fit"].best.run_id
    assert flat.tags["runtree.best_run_id"] == runs["fit/flat/x=1"].run_id
    assert stage.metrics["best_loss"] == -2.0
    assert stage.tags["runtree.children"] == "2" and flat.tags["runtree.children"] == "4"
    assert {r.tags["runtree.root_run_id"] for r in runs.values()} == {stage.run_id}
    assert result.stages["fit"].counts == {"executed": 8, "reused": 0, "redone": 0, "failed": 0, "pruned": 0}


def test_children_ending_out_of_order_close_each_parent_once_within_the_worker_bound():
    global _most_active
    _most_active = 0
    cfg = config("busy", subvariants={"params": {"x": "range(0, 12)"}})
    result, store = run(cfg, executor=Threads(3))
    assert result.ok
    assert _most_active == 3
    assert store.writes["finish"] == 1 + 2 + 24
    assert {r.status for r in store.records()} == {"FINISHED"}


def test_on_failure_stop_removes_the_runs_created_ahead_instead_of_killing_them():
    BROKEN.add(1.0)
    cfg = config(subvariants={"params": {"x": "range(0, 8)"}}, on_failure="stop")
    result, store = run(cfg, store=MemoryStore(prefetch=4))
    fit = result.stages["fit"]
    assert fit.status == "FAILED"
    assert fit.reason.startswith("on_failure=stop: stopped after fit/flat/x=1 failed (RuntimeError: broken at x=1)")
    visible = store.records()
    assert "RUNNING" not in {r.status for r in visible}
    assert [r.name for r in visible if r.status == "KILLED"] == []
    assert store.writes["discard"] == 4
    assert all(r.params for r in visible if r.name.count("/") == 2), "every leaf shown has run"
    assert by_name(store)["fit"].tags["runtree.error"] == "stopped after fit/flat/x=1 failed (on_failure=stop)"


def slow_bowl(*, x: float, y: float = 0.0) -> dict:
    time.sleep(0.12)
    return bowl(x=x, y=y)


def test_leaves_too_long_to_hide_a_round_trip_get_no_runs_created_ahead():
    """A run's recorded start is its creation: a leaf of 0.12 s must not start its run while another works."""
    BROKEN.add(1.0)
    cfg = config("slow_bowl", subvariants={"params": {"x": "range(0, 8)"}}, on_failure="stop")
    result, store = run(cfg, store=MemoryStore(prefetch=4))
    assert result.stages["fit"].status == "FAILED"
    assert store.writes["discard"] == 0
    assert sorted(r.name for r in store.records() if r.name.count("/") == 2) == ["fit/flat/x=0", "fit/flat/x=1"]


def test_resume_redoes_a_failed_leaf_in_its_own_run_and_reuses_the_rest():
    BROKEN.add(2.0)
    first, store = run(config())
    assert first.stages["fit"].counts == {"executed": 8, "reused": 0, "redone": 0, "failed": 2, "pruned": 0}
    failed_id = by_name(store)["fit/deep/x=2"].run_id
    BROKEN.clear()
    second, store = run(config(), store=store, resume="last")
    assert second.pipeline_id == first.pipeline_id
    assert second.stages["fit"].counts == {"executed": 0, "reused": 6, "redone": 2, "failed": 0, "pruned": 0}
    runs = by_name(store)
    assert len(runs) == 1 + 2 + 8
    assert runs["fit/deep/x=2"].run_id == failed_id
    assert runs["fit/deep/x=2"].status == "FINISHED" and "runtree.error" not in runs["fit/deep/x=2"].tags
    assert {r.status for r in runs.values()} == {"FINISHED"}


def test_a_resume_with_nothing_left_to_do_writes_nothing():
    first, store = run(config())
    before = dict(store.writes)
    second, store = run(config(), store=store, resume=first.pipeline_id)
    assert dict(store.writes) == before
    assert second.stages["fit"].counts == {"executed": 0, "reused": 8, "redone": 0, "failed": 0, "pruned": 0}
    assert second.stages["fit"].best.run_id == first.stages["fit"].best.run_id


@pytest.mark.parametrize("missing", ["${best:fit.outputs.nope}", "x${best:fit.outputs.nope}"], ids=["whole", "inside"])
def test_a_downstream_stage_gets_the_upstream_best_and_a_missing_key_fails_only_what_needs_it(missing):
    refit = {
        "_target_": "tests.execution.test_walk.bowl",
        "depends_on": ["fit"],
        "params": {"x": "${best:fit.params.x}"},
    }
    stages = {
        "refit": refit,
        "broken": {"_target_": "tests.execution.test_walk.bowl", "depends_on": ["fit"], "params": {"x": missing}},
        "after": {"_target_": "tests.execution.test_walk.bowl", "depends_on": ["broken"], "params": {"x": 0}},
    }
    result, store = run(config(extra_stages=stages))
    assert result.stages["refit"].status == "FINISHED"
    assert by_name(store)["refit"].params["x"] == "1"
    broken = result.stages["broken"]
    assert broken.status == "FAILED"
    assert (
        broken.reason
        == "${best:fit.outputs.nope}: the best run of stage 'fit' has no outputs key 'nope' (it has: nothing)"
    )
    assert by_name(store)["broken"].status == "FAILED"
    assert result.stages["after"].status == "SKIPPED"
    assert result.stages["after"].reason == "skipped: upstream stage(s) broken produced no result"


def test_an_interrupt_ends_every_open_run_and_removes_the_runs_created_ahead():
    INTERRUPT_AT.add(2.0)
    store = MemoryStore(prefetch=3)
    with pytest.raises(Interrupted) as caught:
        run(config(subvariants={"params": {"x": "range(0, 6)"}}), store=store)
    statuses = {r.name: r.status for r in store.records()}
    assert "RUNNING" not in statuses.values()
    assert statuses["fit/flat/x=0"] == statuses["fit/flat/x=1"] == "FINISHED"
    assert statuses["fit/flat/x=2"] == statuses["fit/flat"] == statuses["fit"] == "KILLED"
    assert caught.value.killed == 3
    assert store.writes["discard"] == 3
    assert caught.value.stage == "fit"
