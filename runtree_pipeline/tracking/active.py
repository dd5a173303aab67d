"""What a leaf does with MLflow, wherever it runs: its run made active for the target's own calls (MLflow's fluent
state is touched only here), its reported steps, and the artifacts it returns or consumes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

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


def fetch(uri: str, tracking_uri: str) -> Path:
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
    home = root / hashlib.sha256(f"{tracking_uri}\n{uri}".encode()).hexdigest()[:20]
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
