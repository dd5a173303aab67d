"""The in-process executor: no workers to start, so the one to reach for while writing a target or debugging one."""

from __future__ import annotations

import logging
from concurrent.futures import Future

from runtree_pipeline.execution.executors.base import Executor
from runtree_pipeline.execution.leaf import LeafOutcome, LeafTask, execute
from runtree_pipeline.futures import run_now
from runtree_pipeline.interrupts import preemptible

log = logging.getLogger(__name__)


class LocalExecutor(Executor):
    """In-process, one leaf at a time: the simplest thing, and the fastest for quick trials.

    Targets log through MLflow's process-wide tracking URI; it points at the pipeline's store while the pipeline
    runs and is put back afterwards, so the calling process (a notebook, a test) keeps its own setting.
    """

    stops_leaves = False

    def __init__(self, workers: int | None = None) -> None:
        """`workers` is accepted so that `executor=local` works with a sweep that sets it for another executor."""
        if workers not in (None, 1):
            log.warning("executor=local runs one leaf at a time: executor.workers=%s has no effect", workers)

    def _start(self, *, tracking_uri: str) -> None:
        from runtree_pipeline.tracking.active import use_tracking_uri

        self._restore = use_tracking_uri(tracking_uri)

    def _submit(self, task: LeafTask) -> Future[LeafOutcome]:
        with preemptible(self.preempt, self.preempt_grace_s):
            return run_now(execute, task)

    def _shutdown(self) -> None:
        restore, self._restore = getattr(self, "_restore", None), None
        if restore is not None:
            restore()
