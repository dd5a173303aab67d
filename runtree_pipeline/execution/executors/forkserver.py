"""The forkserver the process executor forks its workers from: which start method to use, what the server imports
before it forks, and the one server the interpreter shares. Apart from the pool because its lifetime is the
interpreter's, not one executor's."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any


def default_start_method() -> str:
    """forkserver on Linux, where forking workers from one process that imported MLflow is well trodden; spawn
    elsewhere (macOS system frameworks are not safe to fork, Windows cannot)."""
    return "forkserver" if sys.platform.startswith("linux") else "spawn"


#: What a worker runs, imported once by the forkserver before it forks any worker: the leaf, the initializer's
#: module and what `tracking.active.preload` imports (MLflow). None of them starts a Python thread at import; the
#: native ones numpy's OpenBLAS and pyarrow's jemalloc start are fork-aware (a worker starts its own as needed).
WORKER_MODULES = [
    "runtree_pipeline.execution.executors.processes",
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
