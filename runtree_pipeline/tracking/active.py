"""What a leaf does with MLflow, wherever it runs: its run made active for the target's own calls (MLflow's fluent
state is touched only here), its reported steps, and the artifacts it returns or consumes."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from runtree_pipeline.errors import first_line
from runtree_pipeline.tracking.records import RunRef


@contextlib.contextmanager
def active_run(ref: RunRef) -> Iterator[None]:
    """Make the leaf's run this thread's active run without a round trip, so `mlflow.log_metric` lands on it.

    `mlflow.start_run(run_id=...)` would fetch the run first and mark it FINISHED on exit, while the driver ends
    runs itself; so the run is pushed onto MLflow's private fluent stack as an entity built from the reference.
    """
    from runtree_pipeline.tracking.mlflow_store import quiet_mlflow_env

    quiet_mlflow_env()
    import mlflow
    from mlflow.entities import Run, RunData, RunInfo, RunTag
    from mlflow.tracking import fluent

    if mlflow.get_tracking_uri() != ref.tracking_uri:
        mlflow.set_tracking_uri(ref.tracking_uri)
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
    stack = fluent._active_run_stack.get()
    data = RunData(tags=[RunTag(k, v) for k, v in ref.tags.items()])
    stack.append(fluent.ActiveRun(Run(info, data)))
    try:
        yield
    finally:
        if ref.run_id in [r.info.run_id for r in stack]:
            while stack and stack.pop().info.run_id != ref.run_id:
                pass


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
    import sys

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
