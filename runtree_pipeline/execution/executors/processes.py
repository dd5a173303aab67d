"""The process-pool executor: leaves in worker processes on this machine, optionally one per GPU.

The pool's worker side (the initializers and how a lost worker reads as an outcome) lives here too: the forkserver
preloads this module, so a worker forked from it finds them already imported.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from runtree_pipeline.errors import ConfigError, ConfigErrors
from runtree_pipeline.execution.executors.base import STOPPED, Executor, _outcome_of, _timeout
from runtree_pipeline.execution.executors.forkserver import _forkserver, default_start_method
from runtree_pipeline.execution.leaf import LeafOutcome, LeafTask, execute
from runtree_pipeline.futures import settle
from runtree_pipeline.interrupts import shielded, sigint_blocked
from runtree_pipeline.plan.stages import Plan


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


def _describe_pebble_error(error: BaseException, task: LeafTask) -> str:
    from pebble import ProcessExpired

    if isinstance(error, concurrent.futures.TimeoutError):  # the builtin one only from Python 3.11
        return _timeout(task)
    if isinstance(error, ProcessExpired):
        return f"WorkerDied: the worker process exited with code {error.exitcode} while running this leaf"
    return f"{type(error).__name__}: {error}"


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
