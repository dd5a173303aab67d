"""Where leaves run. An executor only runs leaf tasks; scheduling, ask/tell and tracking stay in the scheduler.

The interface is small (start, submit a task and get a future of its outcome, close) so that a process pool or a
Ray cluster is one short class each, and every executor passes the same tests. Workers only compute: the driver
creates and ends every run, and a worker writes only what the target itself logs to its already-created leaf run.
A worker that dies takes down its own leaf only, which becomes a FAILED run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from typing import Any

from runtree_pipeline.errors import ConfigError, ConfigErrors
from runtree_pipeline.execution.leaf import LeafOutcome, LeafTask, execute
from runtree_pipeline.futures import run_now
from runtree_pipeline.interrupts import shielded

STOPPED = "Cancelled: the pipeline was stopped before this leaf finished"


class Executor:
    """Strategy for running leaf tasks. The scheduler keeps at most `workers` of them in flight, so a submitted task
    starts at once and no leaf run sits RUNNING in a queue."""

    workers: int = 1

    def check(self, *, tracking_uri: str) -> list[ConfigError]:
        """Why this executor cannot work with this tracking store, asked before the store is opened: a refused
        combination must leave no store file or experiment behind, and must not wait for workers to start."""
        return []

    def start(self, *, tracking_uri: str) -> None:
        """Acquire workers; raise ConfigErrors if this executor cannot work with this tracking store."""
        self._gate = threading.Lock()
        self._inflight: set[Future[LeafOutcome]] = set()
        self._closed = False

    def submit(self, task: LeafTask) -> Future[LeafOutcome]:
        """A task submitted while the executor closes gets a stopped outcome instead of a future nobody completes."""
        with self._gate:
            future = run_now(LeafOutcome, error=STOPPED) if self._closed else self._submit(task)
            self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        return future

    def _submit(self, task: LeafTask) -> Future[LeafOutcome]:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers; called when the pipeline ends, also after an error or an interrupt, maybe twice.

        Every future handed out is done afterwards: a pool stopped while a task was being queued loses that task,
        and a driver thread waiting for it would keep the pipeline from ever exiting.
        """
        gate = getattr(self, "_gate", None)
        if gate is not None:
            with gate:
                self._closed = True
        self._shutdown()
        for future in list(getattr(self, "_inflight", ())):
            _settle(future, LeafOutcome(error=STOPPED))

    def _shutdown(self) -> None:
        """Stop the workers."""


class LocalExecutor(Executor):
    """In-process, one leaf at a time: the simplest thing, and the fastest for quick trials.

    Targets log through MLflow's process-wide tracking URI; it points at the pipeline's store while the pipeline
    runs and is put back afterwards, so the calling process (a notebook, a test) keeps its own setting.
    """

    def start(self, *, tracking_uri: str) -> None:
        from runtree_pipeline.tracking.active import use_tracking_uri

        super().start(tracking_uri=tracking_uri)
        self._restore = use_tracking_uri(tracking_uri)

    def _submit(self, task: LeafTask) -> Future[LeafOutcome]:
        return run_now(execute, task)

    def _shutdown(self) -> None:
        restore, self._restore = getattr(self, "_restore", None), None
        if restore is not None:
            restore()


class ProcessExecutor(Executor):
    """A pool of worker processes on this machine (pebble: a worker that dies fails only its own task)."""

    def __init__(self, workers: int | None = None, start_method: str = "spawn") -> None:
        self.workers = int(workers or os.cpu_count() or 1)
        self.start_method = start_method
        self._pool: Any = None

    def start(self, *, tracking_uri: str) -> None:
        from pebble import ProcessPool

        super().start(tracking_uri=tracking_uri)
        with shielded(), _sigint_blocked():
            self._pool = ProcessPool(
                max_workers=self.workers,
                context=multiprocessing.get_context(self.start_method),
                initializer=_warm_worker,
            )
            warming = [self._pool.schedule(_worker_pid) for _ in range(self.workers)]
        seen: set[int] = set()
        for _ in range(10):
            seen.update(f.result(timeout=300) for f in warming)
            if len(seen) >= self.workers:
                break
            warming = [self._pool.schedule(_worker_pid) for _ in range(self.workers)]

    def _submit(self, task: LeafTask) -> Future[LeafOutcome]:
        return _outcome_of(self._pool.schedule(execute, args=(task,)), _describe_pebble_error)

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool.join()
            self._pool = None


class RayExecutor(Executor):
    """Leaves as Ray tasks, on a local Ray runtime (`address: local`) or a cluster (`auto`, `ray://...`)."""

    def __init__(
        self,
        address: str = "local",
        workers: int | None = None,
        num_cpus: float = 1,
        num_gpus: float = 0,
    ) -> None:
        self.address = address
        self.requested_workers = workers
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self._remote: Any = None
        self._started_ray = False
        self._tasks: set[Any] = set()

    def check(self, *, tracking_uri: str) -> list[ConfigError]:
        problems: list[ConfigError] = []
        if self.address != "local" and not tracking_uri.startswith(("http://", "https://")):
            problems.append(
                ConfigError(
                    f"Ray workers on other machines cannot write to {tracking_uri}: "
                    "use a tracking server (tracking_uri=http://HOST:PORT) or executor.address=local",
                    key="executor.address",
                )
            )
        if importlib.util.find_spec("ray") is None:
            problems.append(
                ConfigError("the ray executor needs Ray: pip install 'runtree-pipeline[ray]'", key="executor")
            )
        return problems

    def start(self, *, tracking_uri: str) -> None:
        problems = self.check(tracking_uri=tracking_uri)
        if problems:
            raise ConfigErrors(problems)
        import ray

        if not ray.is_initialized():
            self._started_ray = True  # before init: an interrupted init still has a runtime to shut down
            ray.init(
                address=None if self.address == "local" else self.address,
                include_dashboard=False,
                log_to_driver=True,
                configure_logging=False,
            )
        cpus = ray.cluster_resources().get("CPU", 1)
        self.workers = int(self.requested_workers or max(1, cpus // max(self.num_cpus, 1e-9)))
        self._remote = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0)(execute)
        super().start(tracking_uri=tracking_uri)

    def _submit(self, task: LeafTask) -> Future[LeafOutcome]:
        ref = self._remote.remote(task)
        self._tasks.add(ref)
        future = ref.future()
        future.add_done_callback(lambda _: self._tasks.discard(ref))
        return _outcome_of(future, _describe_ray_error)

    def _shutdown(self) -> None:
        """Leaves still running are cancelled: on a runtime we did not start, shutting down would not stop them,
        and they would go on logging to runs already ended KILLED."""
        if not self._tasks and not self._started_ray:
            return
        import ray

        for ref in list(self._tasks):
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        self._tasks.clear()
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False


def _outcome_of(future: Future, describe: Callable[[BaseException], str]) -> Future[LeafOutcome]:
    """A future that always holds an outcome: a worker lost mid-task is a failed leaf, not a hung pipeline."""
    out: Future[LeafOutcome] = Future()

    def done(f: Future) -> None:
        if f.cancelled():
            _settle(out, LeafOutcome(error=STOPPED))
            return
        error = f.exception()
        _settle(out, f.result() if error is None else LeafOutcome(error=describe(error)))

    future.add_done_callback(done)
    return out


def _settle(future: Future[LeafOutcome], outcome: LeafOutcome) -> None:
    """Complete a future unless the worker or `close` got there first."""
    with contextlib.suppress(InvalidStateError):
        future.set_result(outcome)


def _describe_pebble_error(error: BaseException) -> str:
    from pebble import ProcessExpired

    if isinstance(error, ProcessExpired):
        return f"WorkerDied: the worker process exited with code {error.exitcode} while running this leaf"
    return f"{type(error).__name__}: {error}"


def _describe_ray_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else 'the Ray task failed'}"


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Workers (and pebble's threads, which spawn replacements) start with Ctrl-C blocked, as the pool wants it
    ignored: a terminal's Ctrl-C reaches the whole process group, and would otherwise print a KeyboardInterrupt
    traceback from every worker still importing. The driver gets its own Ctrl-C as soon as the pool has started."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # starting it unblocks SIGINT again, so it starts first
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _worker_pid() -> int:
    """A short task: once every worker has answered one, the pool is warm and leaves will not queue behind imports."""
    import time

    time.sleep(0.05)
    return os.getpid()


def _warm_worker() -> None:
    """Import mlflow while the pool starts, in parallel, rather than inside the first leaf of each worker."""
    from runtree_pipeline.tracking.active import preload

    preload()
