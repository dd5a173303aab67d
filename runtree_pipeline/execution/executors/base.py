"""The executor interface, and what every executor shares: the stopped outcome, and turning a worker's future into
one that always holds an outcome. Kept apart from the executors so that adding one means reading only this."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace

from runtree_pipeline.errors import ConfigError
from runtree_pipeline.execution.commands import ProgramGroups
from runtree_pipeline.execution.leaf import LeafOutcome, LeafTask
from runtree_pipeline.futures import run_now, settle
from runtree_pipeline.plan.stages import Plan

STOPPED = "Cancelled: the pipeline was stopped before this leaf finished"


class Executor:
    """Strategy for running leaf tasks. The scheduler keeps at most `workers` of them in flight, so a submitted task
    starts at once and no leaf run sits RUNNING in a queue."""

    workers: int = 1
    stops_leaves = True
    """Whether a leaf that overruns `limits.timeout_s` can be stopped without harm to the pipeline."""
    report_host = "127.0.0.1"
    """The address a leaf's `report` reaches the driver on: loopback, unless workers run on other machines."""
    preempt_grace_s = 30.0
    """After SIGTERM, how long a leaf running in the pipeline's own thread gets to save a checkpoint (the runner sets
    the plan's `preempt_grace_s`)."""
    _started = False

    def check(self, *, tracking_uri: str, plan: Plan | None = None) -> list[ConfigError]:
        """Why this executor cannot work with this tracking store or plan, asked before the store is opened: a
        refused combination must leave no store file or experiment behind, and must not wait for workers to start."""
        if plan is None or self.stops_leaves:
            return []
        return [
            ConfigError(
                f"executor={self.name} runs leaves inside the pipeline's own process, where one that overruns cannot "
                "be stopped safely: use executor=processes (or ray)",
                stage=stage.name,
                key="limits.timeout_s",
            )
            for stage in plan.stages.values()
            if stage.limits.timeout_s is not None and not stage.target.runs_as_process
        ]

    @property
    def name(self) -> str:
        return type(self).__name__.removesuffix("Executor").lower()

    def start(self, *, tracking_uri: str) -> None:
        """Acquire workers; raise ConfigErrors if this executor cannot work with this tracking store.

        A second call before `close` does nothing: `run_plan` starts the executor before it opens the store, so
        workers start while the driver imports MLflow, and the runner's own call then finds it started.
        """
        if self._started:
            return
        self._gate = threading.Lock()
        self._inflight: set[Future[LeafOutcome]] = set()
        self._closed = False
        self._groups = ProgramGroups()
        self._start(tracking_uri=tracking_uri)
        self._started = True

    def _start(self, *, tracking_uri: str) -> None:
        """Acquire this executor's workers."""

    def ready(self) -> None:
        """Wait until the workers can be used; raise what kept them from starting. `run_plan` asks before it creates
        anything in the store, so an executor that cannot start leaves nothing behind."""

    def submit(self, task: LeafTask) -> Future[LeafOutcome]:
        """A task submitted while the executor closes gets a stopped outcome instead of a future nobody completes."""
        task = replace(task, groups=self._groups.path)
        with self._gate:
            future = run_now(LeafOutcome, error=STOPPED) if self._closed else self._submit(task)
            self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        return future

    def _submit(self, task: LeafTask) -> Future[LeafOutcome]:
        raise NotImplementedError

    def preempt(self) -> None:
        """The pipeline got SIGTERM: every running leaf is told (see `Preempted`), and every program gets SIGTERM."""
        groups = getattr(self, "_groups", None)
        if groups is not None:
            groups.preempt()

    def close(self) -> None:
        """Release workers; called when the pipeline ends, also after an error or an interrupt, maybe twice.

        Every future handed out is done afterwards: a pool stopped while a task was being queued loses that task,
        and a driver thread waiting for it would keep the pipeline from ever exiting.
        """
        gate = getattr(self, "_gate", None)
        if gate is not None:
            with gate:
                self._closed = True
        groups = getattr(self, "_groups", None)
        if groups is not None:
            groups.close()  # programs first: a worker stopped before its program would leave the program running
        self._shutdown()
        for future in list(getattr(self, "_inflight", ())):
            settle(future, LeafOutcome(error=STOPPED))
        self._started = False

    def _shutdown(self) -> None:
        """Stop the workers."""


def _outcome_of(future: Future, describe: Callable[[BaseException], str]) -> Future[LeafOutcome]:
    """A future that always holds an outcome: a worker lost mid-task is a failed leaf, not a hung pipeline."""
    out: Future[LeafOutcome] = Future()

    def done(f: Future) -> None:
        if f.cancelled():
            settle(out, LeafOutcome(error=STOPPED))
            return
        error = f.exception()
        settle(out, f.result() if error is None else LeafOutcome(error=describe(error)))

    future.add_done_callback(done)
    return out


def _timeout(task: LeafTask) -> str:
    return f"Timeout: the leaf ran longer than limits.timeout_s={task.timeout_s:g} s and its worker was stopped"
