"""Where leaves run. An executor only runs leaf tasks; scheduling, ask/tell and tracking stay in the scheduler.

The interface is small (start, submit a task and get a future of its outcome, close) so that a process pool or a
Ray cluster is one short class each, and every executor passes the same tests. Workers only compute: the driver
creates and ends every run, and a worker writes only what the target itself logs to its already-created leaf run.
A worker that dies takes down its own leaf only, which becomes a FAILED run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

from runtree_pipeline.errors import ConfigError, ConfigErrors
from runtree_pipeline.execution.commands import ProgramGroups
from runtree_pipeline.execution.leaf import LeafOutcome, LeafTask, execute
from runtree_pipeline.futures import run_now, settle
from runtree_pipeline.interrupts import preemptible, shielded, sigint_blocked
from runtree_pipeline.plan.stages import Plan

log = logging.getLogger(__name__)

STOPPED = "Cancelled: the pipeline was stopped before this leaf finished"


class Executor:
    """Strategy for running leaf tasks. The scheduler keeps at most `workers` of them in flight, so a submitted task
    starts at once and no leaf run sits RUNNING in a queue."""

    workers: int = 1
    stops_leaves = True
    """Whether a leaf that overruns `limits.timeout_s` can be stopped without harm to the pipeline."""
    report_host = "127.0.0.1"
    preempt_grace_s = 30.0
    """After SIGTERM, how long a leaf running in the pipeline's own thread gets to save a checkpoint (the runner sets
    the plan's `preempt_grace_s`)."""
    """The address a leaf's `report` reaches the driver on: loopback, unless workers run on other machines."""
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


class ProcessExecutor(Executor):
    """A pool of worker processes on this machine (pebble: a worker that dies fails only its own task).

    Start-up is most of a short pipeline's wall on a small machine, so nothing waits for it: `start` returns once the
    workers are asked for, they import while the driver opens the store and creates runs, and a leaf submitted
    before any worker is ready waits in the pool's queue for the first free one. With `forkserver` (the default on
    Linux) one server process imports MLflow once and every worker forks from it warm, rather than each worker
    importing it on its own core.

    With `gpus`, every listed device is a slot with a pool of one worker whose CUDA_VISIBLE_DEVICES names that device
    alone, set before any target code runs: CUDA picks its device once, when it initialises, so a worker keeps its
    device for life, and the one pebble starts after a death or a timeout gets the same device. A leaf goes to a free
    slot, so no two share a device unless it is listed twice; command targets inherit the worker's environment.
    """

    def __init__(
        self,
        workers: int | None = None,
        start_method: str | None = None,
        gpus: Sequence[int | str] | None = None,
    ) -> None:
        self.gpus: Any = list(gpus) if isinstance(gpus, Sequence) and not isinstance(gpus, (str, bytes)) else gpus
        self.requested_workers = workers
        slots = len(self.gpus) if isinstance(self.gpus, list) and self.gpus else None
        self.workers = int(workers or slots or os.cpu_count() or 1)
        self.start_method = start_method or default_start_method()
        self._pools: list[Any] = []
        self._launcher: threading.Thread | None = None
        self._launch_error: BaseException | None = None
        self._forkserver = False

    def check(self, *, tracking_uri: str, plan: Plan | None = None) -> list[ConfigError]:
        return super().check(tracking_uri=tracking_uri, plan=plan) + self._device_problems()

    def _device_problems(self) -> list[ConfigError]:
        if self.gpus is None:
            return []
        if not isinstance(self.gpus, list) or not self.gpus or not all(map(_is_device, self.gpus)):
            return [
                ConfigError(
                    f"must be a non-empty list of device indices or ids, e.g. [0,1], not {self.gpus!r}",
                    key="executor.gpus",
                )
            ]
        if self.requested_workers and self.workers > len(self.gpus):
            return [
                ConfigError(
                    f"{self.workers} workers for {len(self.gpus)} device slots in executor.gpus={self.gpus}: at most "
                    "one leaf runs per listed device (list a device twice for two leaves on it), so leave workers "
                    "unset or lower it",
                    key="executor.workers",
                )
            ]
        return []

    def _start(self, *, tracking_uri: str) -> None:
        from pebble import ProcessPool

        problems = self._device_problems()
        if problems:
            raise ConfigErrors(problems)
        context = multiprocessing.get_context(self.start_method)
        self._launch_error = None
        with shielded(), sigint_blocked():
            if self.start_method == "forkserver":
                _forkserver.acquire(context)
                self._forkserver = True
            if self.gpus is None:
                self._pools = [ProcessPool(max_workers=self.workers, context=context, initializer=_warm_worker)]
            else:
                self._pools = [
                    ProcessPool(max_workers=1, context=context, initializer=_on_device, initargs=(device, _warm_worker))
                    for device in self.gpus
                ]
                self._slot_lock = threading.Lock()
                self._free_slots = deque(range(len(self._pools)))
                self._waiting: deque[tuple[LeafTask, Future[LeafOutcome]]] = deque()
            # Launching a worker waits for the forkserver to finish its imports; the pool's own threads, started
            # from this one, inherit its blocked Ctrl-C, as the workers they start as replacements must.
            self._launcher = threading.Thread(target=self._launch, args=tuple(self._pools), name="runtree-workers")
            self._launcher.daemon = True
            self._launcher.start()

    def _launch(self, *pools: Any) -> None:
        """Asking a pool whether it is active starts it (unless it was stopped first), and with it every worker."""
        try:
            for pool in pools:
                pool.active  # noqa: B018 - the question is the call
        except BaseException as e:  # noqa: BLE001 - raised in the driver, by the next submit
            self._launch_error = e

    def _submit(self, task: LeafTask) -> Future[LeafOutcome]:
        if self._launcher is not None:
            self._launcher.join()  # workers are asked for, not warm: the task then waits for the first free one
        if self._launch_error is not None:
            raise self._launch_error
        if self.gpus is None:
            return self._schedule(0, task)
        with self._slot_lock:
            if not self._free_slots:  # only when more than `workers` are submitted: it waits for a slot, as it would
                waiting: Future[LeafOutcome] = Future()  # in the pool's queue without gpus
                self._waiting.append((task, waiting))
                return waiting
            slot = self._free_slots.popleft()
        return self._schedule(slot, task)

    def _schedule(self, slot: int, task: LeafTask) -> Future[LeafOutcome]:
        future = self._pools[slot].schedule(execute, args=(task,), timeout=task.worker_timeout_s)
        if self.gpus is not None:
            # Before the outcome's callback: once the scheduler sees the leaf done, its slot is free for the next.
            future.add_done_callback(lambda _: self._free(slot))
        return _outcome_of(future, lambda error: _describe_pebble_error(error, task))

    def _free(self, slot: int) -> None:
        """A leaf left its slot: the longest-waiting task takes it, or it joins the free ones (the longest free is
        taken first, so every device gets work)."""
        while True:
            with self._slot_lock:
                if not self._waiting or self._closed:
                    self._free_slots.append(slot)
                    return
                task, waiting = self._waiting.popleft()
            if waiting.done():  # settled by `close`
                continue
            try:
                outcome = self._schedule(slot, task)
            except RuntimeError:  # the pool was stopped meanwhile
                settle(waiting, LeafOutcome(error=STOPPED))
                continue
            outcome.add_done_callback(lambda f, waiting=waiting: settle(waiting, f.result()))
            return

    def _shutdown(self) -> None:
        pools, self._pools = self._pools, []
        for pool in pools:
            pool.stop()
        for pool in pools:
            pool.join()
        if self._launcher is not None:
            self._launcher.join()
            self._launcher = None
        if self._forkserver:
            self._forkserver = False
            _forkserver.release()


def default_start_method() -> str:
    """forkserver on Linux, where forking workers from one process that imported MLflow is well trodden; spawn
    elsewhere (macOS system frameworks are not safe to fork, Windows cannot)."""
    return "forkserver" if sys.platform.startswith("linux") else "spawn"


#: What a worker runs, imported once by the forkserver before it forks any worker: the leaf, the initializer's
#: module and what `tracking.active.preload` imports (MLflow). None of them starts a Python thread at import; the
#: native ones numpy's OpenBLAS and pyarrow's jemalloc start are fork-aware (a worker starts its own as needed).
WORKER_MODULES = [
    "runtree_pipeline.execution.executors",
    "runtree_pipeline.execution.leaf",
    "runtree_pipeline.tracking.active",
    "runtree_pipeline.tracking.mlflow_store",
    "hydra.utils",
    "mlflow.entities",
    "mlflow.tracking.fluent",
    "mlflow.store.tracking.sqlalchemy_store",
]


class _SharedForkserver:
    """The interpreter's one forkserver, started with the worker modules preloaded by the first process executor
    that needs it and stopped by the last one to close: pipelines side by side (threads) share it, and it does not
    outlive them in a process that goes on (a notebook, a test process).

    A server that was already running when the first one came is someone else's: it is used as it is (without the
    preloads) and left running.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._ours: int | None = None

    def acquire(self, context: Any) -> None:
        """Called on the thread whose Ctrl-C is blocked, so the server imports with it blocked and then ignores it
        (as it is written to): a Ctrl-C to the process group prints nothing from the server."""
        from multiprocessing import forkserver

        from runtree_pipeline.tracking.mlflow_store import quiet_mlflow_env

        with self._lock:
            quiet_mlflow_env()  # the server imports MLflow in the environment it starts with, and workers inherit it
            server = forkserver._forkserver
            before = server._forkserver_pid
            context.set_forkserver_preload(WORKER_MODULES)
            forkserver.ensure_running()
            if server._forkserver_pid != before:
                self._ours = server._forkserver_pid
            self._users += 1

    def release(self) -> None:
        """Called once the releasing executor's workers are gone."""
        from multiprocessing import forkserver

        with self._lock:
            self._users -= 1
            server = forkserver._forkserver
            if self._users or self._ours is None or server._forkserver_pid != self._ours:
                return
            self._ours = None
            with contextlib.suppress(ProcessLookupError):
                os.kill(server._forkserver_pid, signal.SIGTERM)  # a worker's orphaned children may keep it waiting
            server._stop()


_forkserver = _SharedForkserver()


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
        self._timed_out: set[Any] = set()

    def check(self, *, tracking_uri: str, plan: Plan | None = None) -> list[ConfigError]:
        problems = super().check(tracking_uri=tracking_uri, plan=plan)
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

    def _start(self, *, tracking_uri: str) -> None:
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
        if self.address != "local":
            self.report_host = ray.util.get_node_ip_address()
        resources = ray.cluster_resources()
        fit = resources.get("CPU", 1) // max(self.num_cpus, 1e-9)
        if self.num_gpus:
            fit = min(fit, resources.get("GPU", 0) // self.num_gpus)
        # No more in flight than can start at once: a leaf's timeout clock starts when it is submitted.
        self.workers = int(self.requested_workers or max(1, fit))
        self._remote = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0)(execute)

    def _submit(self, task: LeafTask) -> Future[LeafOutcome]:
        ref = self._remote.remote(task)
        self._tasks.add(ref)
        future = ref.future()
        timer = None
        if task.worker_timeout_s is not None:
            timer = threading.Timer(task.worker_timeout_s, self._time_out, args=(ref,))
            timer.daemon = True
            timer.start()

        def ended(_: Future) -> None:
            self._tasks.discard(ref)
            if timer is not None:
                timer.cancel()

        future.add_done_callback(ended)
        return _outcome_of(
            future,
            lambda error: _timeout(task) if ref in self._timed_out else _describe_ray_error(error),
        )

    def _time_out(self, ref: Any) -> None:
        """Force-cancelling kills the worker running the task: a target stuck in C code cannot ignore it."""
        import ray

        if ref in self._tasks:
            self._timed_out.add(ref)
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)

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
            settle(out, LeafOutcome(error=STOPPED))
            return
        error = f.exception()
        settle(out, f.result() if error is None else LeafOutcome(error=describe(error)))

    future.add_done_callback(done)
    return out


def _timeout(task: LeafTask) -> str:
    return f"Timeout: the leaf ran longer than limits.timeout_s={task.timeout_s:g} s and its worker was stopped"


def _describe_pebble_error(error: BaseException, task: LeafTask) -> str:
    from pebble import ProcessExpired

    if isinstance(error, concurrent.futures.TimeoutError):  # the builtin one only from Python 3.11
        return _timeout(task)
    if isinstance(error, ProcessExpired):
        return f"WorkerDied: the worker process exited with code {error.exitcode} while running this leaf"
    return f"{type(error).__name__}: {error}"


def _describe_ray_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else 'the Ray task failed'}"


def _is_device(device: Any) -> bool:
    """An index (0), or an id such as GPU-<uuid>: one device, as CUDA_VISIBLE_DEVICES names it."""
    if isinstance(device, str):
        return bool(device.strip()) and "," not in device
    return isinstance(device, int) and not isinstance(device, bool) and device >= 0


def _on_device(device: int | str, warm: Callable[[], None]) -> None:
    """A device worker's initializer: its device is set before anything in it can initialise CUDA."""
    os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
    warm()


def _warm_worker() -> None:
    """Import mlflow as the worker starts rather than inside its first leaf (a no-op for a worker forked warm)."""
    from runtree_pipeline.tracking.active import preload

    preload()
