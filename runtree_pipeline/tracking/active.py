"""What a leaf does with MLflow, wherever it runs: its run made active for the target's own calls (MLflow's fluent
state is touched only here), its reported steps, and the artifacts it returns or consumes."""

from __future__ import annotations

import contextlib
import importlib.abc
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtree_pipeline.errors import first_line
from runtree_pipeline.tracking.records import RunRef


@contextlib.contextmanager
def active_run(ref: RunRef) -> Iterator[None]:
    """Make the leaf's run this thread's active run without a round trip, so `mlflow.log_metric` lands on it.

    `mlflow.start_run(run_id=...)` would fetch the run first and mark it FINISHED on exit, while the driver ends
    runs itself; so the run is pushed onto MLflow's private fluent stack as an entity built from the reference.

    Importing MLflow takes over a second, most of a fresh worker's way to its target (a Slurm job, a Ray worker):
    a target that never touches MLflow should not pay it. So unless MLflow is imported already, the run is made
    active the moment MLflow is first imported in this process while the leaf runs, from whatever the target
    calls. The leaf's thread gets it even when another thread imported MLflow: that is where the target's own
    calls run, and a thread the target starts has no active run either way, MLflow's stack being per thread.
    """
    from runtree_pipeline.tracking.mlflow_store import quiet_mlflow_env

    quiet_mlflow_env()  # before MLflow is imported, now or by the target
    if "mlflow" in sys.modules:
        stack = _push(ref)
        try:
            yield
        finally:
            _pop(ref, stack)
        return
    leaf = _Waiting(ref, threading.get_ident(), os.getpid())
    _when_mlflow_imported.wait(leaf)
    try:
        yield
    finally:
        _when_mlflow_imported.leave(leaf)


def _push(ref: RunRef) -> list[Any]:
    """The run pushed onto this thread's fluent stack, which is returned. MLflow may be in `sys.modules` while
    another thread is still importing it: `import mlflow` waits for that import to finish, where importing one of
    its modules straight away would meet it half made."""
    import mlflow  # noqa: F401
    from mlflow.tracking import fluent

    _use_store(ref)
    stack = fluent._active_run_stack.get()
    stack.append(_active(ref))
    return stack


def _pop(ref: RunRef, stack: list[Any]) -> None:
    if ref.run_id in [r.info.run_id for r in stack]:
        while stack and stack.pop().info.run_id != ref.run_id:
            pass


def _use_store(ref: RunRef) -> None:
    import mlflow

    if mlflow.get_tracking_uri() != ref.tracking_uri:
        mlflow.set_tracking_uri(ref.tracking_uri)


def _active(ref: RunRef) -> Any:
    """The run as the `ActiveRun` MLflow's fluent calls take their run id from."""
    from mlflow.entities import Run, RunData, RunInfo, RunTag
    from mlflow.tracking import fluent

    info = RunInfo(
        run_id=ref.run_id,
        experiment_id=ref.experiment_id,
        user_id=ref.tags.get("mlflow.user", ""),
        status="RUNNING",
        start_time=ref.start_time or 0,
        end_time=None,
        lifecycle_stage="active",
        artifact_uri=ref.artifact_uri,
        run_name=ref.name,
    )
    data = RunData(tags=[RunTag(k, v) for k, v in ref.tags.items()])
    return fluent.ActiveRun(Run(info, data))


@dataclass(eq=False)
class _Waiting:
    """A leaf running while MLflow is not imported: its run, and the thread (of this process) that runs it."""

    ref: RunRef
    thread: int
    pid: int
    stack: list[Any] | None = None
    """The fluent stack its run was pushed onto, once MLflow was imported on the leaf's own thread."""
    deferred: bool = False
    """MLflow was imported on another thread: the run waits in `_Activations._first_stack` for the leaf's thread."""


class _Activations:
    """Activates the waiting leaves' runs once MLflow is imported: a post-import hook (PEP 369, as `wrapt.importer`
    has it) on `sys.meta_path` only while a leaf waits, so an import of anything else never meets it.

    MLflow's fluent stack is per thread and can only be set by its own thread; a leaf whose thread did not import
    MLflow gets its run in the stack its thread creates on its first fluent call (MLflow's `default_factory`),
    which cannot have happened before MLflow existed.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._waiting: list[_Waiting] = []
        self._deferred: dict[tuple[int, int], _Waiting] = {}
        self._finder = _AfterImport("mlflow", self._imported)
        self._factory: Callable[[], list[Any]] | None = None

    def wait(self, leaf: _Waiting) -> None:
        """Called on the leaf's thread as it starts."""
        with self._lock:
            if "mlflow" not in sys.modules:
                self._waiting.append(leaf)
                if self._finder not in sys.meta_path:
                    sys.meta_path.insert(0, self._finder)
                return
        leaf.stack = _push(leaf.ref)  # imported meanwhile by another thread; outside the lock, as its hook takes it

    def leave(self, leaf: _Waiting) -> None:
        """Called on the leaf's thread as it ends, whether MLflow was imported or not."""
        with self._lock:
            if leaf in self._waiting:
                self._waiting.remove(leaf)
                if not self._waiting:
                    self._unhook()
                return
            if leaf.deferred:
                from mlflow.tracking import fluent

                leaf.stack = fluent._active_run_stack.get()  # its first if the target never used MLflow
                del self._deferred[(leaf.pid, leaf.thread)]
                if not self._deferred and self._factory is not None:
                    fluent._active_run_stack.default_factory = self._factory
                    self._factory = None
            if leaf.stack is not None:
                _pop(leaf.ref, leaf.stack)

    def _imported(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, []
            self._unhook()
            for leaf in waiting:
                try:
                    self._activate(leaf)
                except Exception as e:  # noqa: BLE001 - the target's import must not fail for it
                    logging.getLogger(__name__).warning(
                        "run %s is not the active run of its target: %s", leaf.ref.name, first_line(e)
                    )

    def _activate(self, leaf: _Waiting) -> None:
        if leaf.thread == threading.get_ident() and leaf.pid == os.getpid():
            leaf.stack = _push(leaf.ref)
            return
        from mlflow.tracking import fluent

        _use_store(leaf.ref)
        self._deferred[(leaf.pid, leaf.thread)] = leaf
        leaf.deferred = True
        if self._factory is None:
            self._factory = fluent._active_run_stack.default_factory
            fluent._active_run_stack.default_factory = self._first_stack

    def _first_stack(self) -> list[Any]:
        """A thread's fluent stack as MLflow creates it on the thread's first use: with its leaf's run, if any."""
        leaf = self._deferred.get((os.getpid(), threading.get_ident()))
        factory = self._factory or list
        return [_active(leaf.ref)] if leaf is not None else factory()

    def _unhook(self) -> None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self._finder)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: hands back the spec the finders after it find for one module, with a loader that
    calls `then` once that module has run (and put the real loader back in the module before it runs)."""

    def __init__(self, name: str, then: Callable[[], None]) -> None:
        self.name = name
        self.then = then

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        finders = list(sys.meta_path)
        later = finders[finders.index(self) + 1 :] if self in finders else []
        for finder in later:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _ThenLoader(spec.loader, self.then)
        return spec


class _ThenLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, then: Callable[[], None]) -> None:
        self.loader = loader
        self.then = then

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = self.loader
        if getattr(module, "__spec__", None) is not None and module.__spec__.loader is self:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.then()


_when_mlflow_imported = _Activations()


@contextlib.contextmanager
def system_metrics(ref: RunRef, interval_s: float | None) -> Iterator[None]:
    """MLflow's own system metrics monitor on the leaf's run while its work runs; nothing when `interval_s` is None.

    MLflow's monitor publishes a sample only once a whole interval has passed, and drops what it holds when stopped:
    a leaf shorter than the interval would get no system metric at all. Such a leaf gets one sample at its end,
    taken with the monitor's own collectors, its CPU share measured over the whole leaf (psutil counts CPU time per
    calling thread, hence the first call here). Stopping wakes the monitor at once: it adds no interval to a leaf.
    """
    if interval_s is None:
        yield
        return
    import psutil
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    with _monitor_quiet():
        psutil.cpu_percent()
        monitor = SystemMetricsMonitor(
            ref.run_id, sampling_interval=interval_s, samples_before_logging=1, tracking_uri=ref.tracking_uri
        )
        monitor.start()
        try:
            yield
        except Exception:
            _stop(monitor, ref)
            raise
        except BaseException:
            monitor.finish()  # interrupted: stop sampling, log nothing more
            raise
        else:
            _stop(monitor, ref)


def _stop(monitor: Any, ref: RunRef) -> None:
    monitor.finish()
    if monitor._logging_step:  # samples it published; nothing public says so
        return
    try:
        for collector in monitor.monitors:
            collector.clear_metrics()  # the monitor's first sample, whose CPU share psutil cannot know yet
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
    except Exception as e:  # noqa: BLE001 - like MLflow's monitor: a lost sample never fails the leaf
        logging.getLogger(__name__).warning("no system metrics for run %s: %s", ref.name, first_line(e))


_quiet_lock = threading.Lock()
_quiet_users = 0
_quiet_level = logging.NOTSET


@contextlib.contextmanager
def _monitor_quiet() -> Iterator[None]:
    """The monitor's INFO lines (started, no GPU, stopping, stopped) would be four console lines per leaf; its
    warnings stay. Counted, as leaves may overlap in one process."""
    global _quiet_users, _quiet_level
    logger = logging.getLogger("mlflow.system_metrics.system_metrics_monitor")
    with _quiet_lock:
        if _quiet_users == 0:
            _quiet_level = logger.level
            logger.setLevel(logging.WARNING)
        _quiet_users += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_users -= 1
            if _quiet_users == 0:
                logger.setLevel(_quiet_level)


def program_env(ref: RunRef, launch_dir: str) -> dict[str, str]:
    """What a program needs in its environment for MLflow's own `start_run()` to continue its leaf run rather than
    start one of its own: the store (a relative sqlite path made the launch directory's, wherever the program runs),
    the experiment and the run."""
    from runtree_pipeline.tracking.sqlite import sqlite_path

    uri = ref.tracking_uri
    path = sqlite_path(uri)
    if path is not None and not path.is_absolute():
        uri = f"sqlite:///{Path(launch_dir, path)}"
    return {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_ID": ref.experiment_id, "MLFLOW_RUN_ID": ref.run_id}


def log_params(ref: RunRef, params: Mapping[str, object]) -> None:
    """A program's params on its run before it starts: its own `log_params` of the same values is then a no-op
    (MLflow refuses a param logged twice with different values, so the two must agree)."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    batch = [Param(str(k), str(v)) for k, v in params.items()]
    if batch:
        MlflowClient(ref.tracking_uri).log_batch(ref.run_id, params=batch, synchronous=True)


def logged_metrics(ref: RunRef) -> dict[str, tuple[int, float]]:
    """The run's latest value of each metric and its step, as a program left them: MLflow keeps a metric's latest
    value by step first, so a curve logged over epochs reads as its last epoch. MLflow's own system metrics are not
    the program's results."""
    from mlflow.tracking import MlflowClient

    latest = _latest_metrics(MlflowClient(ref.tracking_uri).get_run(ref.run_id))
    return {key: latest[key] for key in latest if not key.startswith("system/")}


def _latest_metrics(run: Any) -> dict[str, tuple[int, float]]:
    """Each metric's latest value and its step, from an MLflow `Run` (`run.data.metrics` has no steps)."""
    return {m.key: (int(m.step), float(m.value)) for m in run.data.to_proto().metrics}


def local_artifact_dir(ref: RunRef) -> Path | None:
    """Where the run's artifacts live when that is a directory of this machine: a program's logs are then written
    there as they come, and a live run shows them; None for a store that takes artifacts only by upload."""
    uri = ref.artifact_uri or ""
    if uri.startswith("file:"):
        from mlflow.utils.file_utils import local_file_uri_to_path

        return Path(local_file_uri_to_path(uri))
    if uri.startswith("/"):
        return Path(uri)
    return None


def upload_file(ref: RunRef, path: Path, artifact_path: str) -> None:
    """One file into `artifact_path/` of the run, replacing an earlier upload of the same name."""
    from mlflow.tracking import MlflowClient

    MlflowClient(ref.tracking_uri).log_artifact(ref.run_id, str(path), artifact_path=artifact_path)


def preload() -> None:
    """What a worker needs before its first leaf, imported while the pool warms up rather than inside that leaf."""
    from runtree_pipeline.tracking.mlflow_store import quiet_mlflow_env

    quiet_mlflow_env()
    import mlflow.entities  # noqa: F401
    import mlflow.tracking.fluent  # noqa: F401


def use_tracking_uri(uri: str) -> Callable[[], None]:
    """Point this process's fluent MLflow calls at `uri`; the returned call puts back what was there before.

    `mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI, and nothing public tells an explicit setting from
    one read from the environment, hence the one read of MLflow's private module state.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils

    saved, saved_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)

    def restore() -> None:
        mlflow.set_tracking_uri(saved)
        if saved_env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env

    return restore


def log_step(ref: RunRef, step: int, metrics: Mapping[str, float]) -> None:
    """Metrics at one step of a leaf, in one call: what `report` logs, so the UI charts each epoch."""
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
    MlflowClient(ref.tracking_uri).log_batch(ref.run_id, metrics=batch, synchronous=True)


def log_to_active_run(step: int, metrics: Mapping[str, float]) -> bool:
    """`report` in a script run by hand: its metrics go to the script's own MLflow run, if it started one."""
    if "mlflow" not in sys.modules:
        return False
    import mlflow

    if mlflow.active_run() is None:
        return False
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
    return True


def upload(ref: RunRef, key: str, path: Path) -> str:
    """Log a file or a directory a target returned under `outputs/<key>/` of its run, from where it was written
    (streamed by MLflow's artifact repository, never read into memory here), and return its `runs:/` URI."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(ref.tracking_uri)
    where = f"outputs/{key}"
    if path.is_dir():
        client.log_artifacts(ref.run_id, str(path), artifact_path=where)
        return f"runs:/{ref.run_id}/{where}"
    client.log_artifact(ref.run_id, str(path), artifact_path=where)
    return f"runs:/{ref.run_id}/{where}/{path.name}"


CHECKPOINTS = "checkpoints"


def store_checkpoint(ref: RunRef, path: Path, step: int, keep: int) -> None:
    """Files first, then the tags that name them complete (one write), then the older checkpoints beyond `keep` are
    deleted: a kill at any moment leaves the run's newest complete checkpoint as `last_checkpoint` finds it. Straight
    through the run's artifact repository, listed once: the client's calls each read the run again."""
    import time

    from mlflow.entities import RunTag
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.tracking import MlflowClient

    from runtree_pipeline.tracking import tags as schema

    client = MlflowClient(ref.tracking_uri)
    artifact_uri = ref.artifact_uri or client.get_run(ref.run_id).info.artifact_uri
    repository = get_artifact_repository(artifact_uri, tracking_uri=ref.tracking_uri)
    saved = {}
    for item in repository.list_artifacts(CHECKPOINTS):
        name = item.path.rsplit("/", 1)[-1]
        if item.is_dir and name.startswith("step-") and name[5:].isdigit():
            saved[int(name[5:])] = item.path
    where = f"{CHECKPOINTS}/step-{step}"
    if step in saved:  # an earlier attempt's, cut off before its tags were set
        repository.delete_artifacts(where)
    if path.is_dir():
        repository.log_artifacts(str(path), where)
    else:
        repository.log_artifact(str(path), where)
    now = str(int(time.time() * 1000))
    tags = [RunTag(schema.CHECKPOINT_STEP, str(step)), RunTag(schema.CHECKPOINT_AT, now)]
    client.log_batch(ref.run_id, tags=tags, synchronous=True)
    older = [saved[s] for s in sorted(saved) if s < step]
    for old in older[: max(0, len(older) - (keep - 1))]:
        with contextlib.suppress(Exception):
            repository.delete_artifacts(old)


def newest_checkpoint(ref: RunRef) -> tuple[int, str, dict[str, int]] | None:
    """The run's newest complete checkpoint (its step and when it was saved) and the highest step of each metric
    the run has already recorded; None when it has no checkpoint."""
    from mlflow.tracking import MlflowClient

    from runtree_pipeline.tracking import tags as schema

    run = MlflowClient(ref.tracking_uri).get_run(ref.run_id)
    step = run.data.tags.get(schema.CHECKPOINT_STEP)
    if step is None:
        return None
    recorded = {key: step for key, (step, _) in _latest_metrics(run).items()}
    return int(step), run.data.tags.get(schema.CHECKPOINT_AT, ""), recorded


def metric_history(ref: RunRef, key: str) -> list[tuple[int, float]]:
    """One metric's recorded values by step, the latest value of a step that was logged more than once."""
    from mlflow.tracking import MlflowClient

    history = MlflowClient(ref.tracking_uri).get_metric_history(ref.run_id, key)
    by_step = {int(m.step): float(m.value) for m in sorted(history, key=lambda m: (m.step, m.timestamp))}
    return sorted(by_step.items())


def fetch_checkpoint(ref: RunRef, step: int, version: str) -> Path:
    """A local copy of the run's checkpoint at `step`, through the per-machine artifact cache."""
    return fetch(f"runs:/{ref.run_id}/{CHECKPOINTS}/step-{step}", ref.tracking_uri, version=version)


def fetch(uri: str, tracking_uri: str, *, version: str = "") -> Path:
    """A local copy of an artifact, downloaded once per machine (per cache directory) and kept: leaves that consume
    the same upstream artifact share it. Downloaded aside and renamed into place, so concurrent workers never see
    half a copy; the first rename wins and the others discard theirs.
    """
    import hashlib
    import shutil
    import tempfile

    from mlflow.artifacts import download_artifacts

    root = Path(os.environ.get("RUNTREE_ARTIFACT_CACHE") or Path.cwd() / ".runtree" / "artifacts")
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    identity = "\n".join([tracking_uri, uri, *([version] if version else [])])  # the same key as ever without one
    home = root / hashlib.sha256(identity.encode()).hexdigest()[:20]
    if not home.exists():
        root.mkdir(parents=True, exist_ok=True)
        aside = Path(tempfile.mkdtemp(prefix=".fetching-", dir=root))
        try:
            download_artifacts(artifact_uri=uri, dst_path=str(aside), tracking_uri=tracking_uri)
            with contextlib.suppress(OSError):
                os.rename(aside, home)  # fails when another worker got there first: theirs is as good
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    return home / name
