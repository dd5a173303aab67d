"""Where leaves run. An executor only runs leaf tasks; scheduling, ask/tell and tracking stay in the runner.

The interface is deliberately tiny (submit a task, get a future; close) so that a process pool or a Ray cluster
is one small class each and every executor passes the same tests.
"""

from __future__ import annotations

from concurrent.futures import Future

from .leaf import LeafOutcome, LeafTask, execute


class Executor:
    """Strategy for running leaf tasks. `workers` is how many tasks the runner keeps in flight."""

    workers: int = 1

    def submit(self, task: LeafTask) -> Future[LeafOutcome]:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers; called once when the pipeline ends, also after an error."""


class LocalExecutor(Executor):
    """In-process, one leaf at a time: the simplest thing that is also the fastest for quick trials."""

    def submit(self, task: LeafTask) -> Future[LeafOutcome]:
        future: Future[LeafOutcome] = Future()
        future.set_result(execute(task))
        return future
