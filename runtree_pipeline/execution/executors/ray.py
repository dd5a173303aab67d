"""The Ray executor: leaves as Ray tasks, on a local runtime or a cluster.

This module shares its name with Ray's package; the absolute `import ray` below still finds Ray itself, and it is
imported only when the executor starts, so importing the executors never imports Ray.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from concurrent.futures import Future
from typing import Any

from runtree_pipeline.errors import ConfigError, ConfigErrors
from runtree_pipeline.execution.executors.base import Executor, _outcome_of, _timeout
from runtree_pipeline.execution.leaf import LeafOutcome, LeafTask, execute
from runtree_pipeline.plan.stages import Plan


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


def _describe_ray_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else 'the Ray task failed'}"
