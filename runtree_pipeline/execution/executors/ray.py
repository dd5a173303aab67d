"""The Ray executor: leaves as Ray tasks, on a local runtime or a cluster.

This module shares its name with Ray's package; the absolute `import ray` below still finds Ray itself, and it is
imported only when the executor starts, so importing the executors never imports Ray.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
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
        """A runtime of our own starts on a thread of its own, so its seconds of start-up overlap the driver's imports
        and store opening, as the process pool's workers do; the first leaf waits for it. That thread stays alive
        until `close`: Ray ties its head processes to the thread that started them (PR_SET_PDEATHSIG fires when that
        thread ends), so a thread that returned after `ray.init` would take the runtime down with it."""
        problems = self.check(tracking_uri=tracking_uri)
        if problems:
            raise ConfigErrors(problems)
        import ray

        self._ready = threading.Event()
        self._release = threading.Event()
        self._start_error: BaseException | None = None
        self._keeper: threading.Thread | None = None
        if self.address == "local" and not ray.is_initialized():
            self._started_ray = True
            self._keeper = threading.Thread(target=self._keep_runtime, name="runtree-ray", daemon=True)
            self._keeper.start()
            return
        if not ray.is_initialized():
            self._started_ray = True  # before init: an interrupted init still has a runtime to shut down
            _init(self.address, "executor.address")
        if self.address != "local":
            self.report_host = ray.util.get_node_ip_address()
        self._connected()

    def _keep_runtime(self) -> None:
        """Start a local runtime, hold it until `close` releases it, then shut it down from this same thread."""
        import ray
        from ray._private import ray_constants

        # Ray says it sets no SIGTERM handler off the main thread; the pipeline has its own.
        quiet = _Without("SIGTERM handler is not set")
        logging.getLogger("ray._private.worker").addFilter(quiet)
        # Once connected, Ray's driver hands SIGTERM to a crash handler that aborts the process 3 s later. On the main
        # thread, before the pipeline set its own handler, that one replaced it; from here Ray may connect after, so
        # its crash handler stays out of this process (its workers keep theirs).
        crash_handler = getattr(ray_constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER", False)
        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
        try:
            # "local" itself would ignore RAY_ADDRESS; None would also join whatever cluster Ray last noted in
            # /tmp/ray/ray_current_cluster, another user's or one long gone.
            address = os.environ.get("RAY_ADDRESS") or "local"
            _init(address, "RAY_ADDRESS" if address != "local" else "executor.address")
            self._connected()
        except BaseException as e:  # noqa: BLE001 - raised in the driver, by the first leaf (or `workers`)
            self._start_error = e
        finally:
            ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = crash_handler
            logging.getLogger("ray._private.worker").removeFilter(quiet)
            self._ready.set()
        self._release.wait()
        _stop_autoscaler()
        ray.shutdown()

    def _connected(self) -> None:
        import ray

        resources = ray.cluster_resources()
        fit = resources.get("CPU", 1) // max(self.num_cpus, 1e-9)
        if self.num_gpus:
            fit = min(fit, resources.get("GPU", 0) // self.num_gpus)
        # No more in flight than can start at once: a leaf's timeout clock starts when it is submitted.
        self._workers = int(self.requested_workers or max(1, fit))
        self._remote = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0)(execute)
        self._ready.set()

    def _wait_ready(self) -> None:
        self._ready.wait()
        if self._start_error is not None:
            raise self._start_error

    def ready(self) -> None:
        if getattr(self, "_ready", None) is not None:
            self._wait_ready()

    @property
    def workers(self) -> int:
        """As many as were asked for; otherwise as many as the runtime's resources fit, known once it is up."""
        if self.requested_workers:
            return int(self.requested_workers)
        ready = getattr(self, "_ready", None)
        if ready is None:
            return 1
        self._wait_ready()
        return self._workers

    def _submit(self, task: LeafTask) -> Future[LeafOutcome]:
        self._wait_ready()
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
            self._started_ray = False
            keeper = getattr(self, "_keeper", None)
            if keeper is None:
                ray.shutdown()
                return
            self._release.set()
            # A runtime still starting is not waited for (an interrupt during Ray's start must end the driver now):
            # its head processes die with the keeper thread, when this process ends.
            keeper.join(_SHUTDOWN_WAIT_S if self._ready.wait(5) else 0)


_SHUTDOWN_WAIT_S = 120.0
"""How long `close` waits for a runtime still starting to come up and be shut down. Past it the driver goes on; its
head processes die with it, as Ray ties them to the starting thread."""


def _stop_autoscaler() -> None:
    """Ray's autoscaler answers SIGTERM only after a second, and `ray.shutdown` waits that second before killing it,
    at the end of every pipeline. On a runtime of our own it holds nothing to save, so it is killed first."""
    with contextlib.suppress(Exception):  # Ray's internals: if they change, shutting down only takes longer
        from ray._private import worker

        for info in worker._global_node.all_processes.get("monitor", ()):
            info.process.kill()
            info.process.wait(1)


class _Without(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _describe_ray_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else 'the Ray task failed'}"


def _init(address: str, key: str) -> None:
    """`ray.init` as runtree calls it; what it raises for an address it cannot parse or reach becomes the user's one
    line to fix, naming `key`, where the address came from."""
    import ray

    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=True, configure_logging=False)
    except (ValueError, ConnectionError) as e:
        runtime = "start a local runtime" if address == "local" else f"join the runtime at {address!r}"
        first = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise ConfigError(f"Ray could not {runtime}: {first}", key=key) from None
