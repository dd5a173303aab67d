"""All MLflow I/O: the one place that decides how runs are created, batched, ended and where writes happen.

It uses `MlflowClient` with explicit run ids and `mlflow.parentRunId` tags rather than the fluent active-run stack,
which is per thread and cannot express grandchildren; the only fluent state it touches is the leaf run it makes
active around a target, so that the target's own `mlflow.log_metric` calls land on that leaf.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

PARENT_TAG = "mlflow.parentRunId"


def _quiet_mlflow_env() -> None:
    """Set before mlflow is imported: telemetry and printed run URLs cost time on every run and tell us nothing.

    An inherited MLFLOW_RUN_ID would silently become the parent of our first run (mlflow#15713).
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")
    os.environ.pop("MLFLOW_RUN_ID", None)


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached or used; raised before any work starts."""


class TrackingWriter:
    """Creates and ends runs in one experiment with the fewest round trips: create, one batch, end."""

    def __init__(self, *, uri: str | None, experiment: str) -> None:
        _quiet_mlflow_env()
        import mlflow
        from mlflow import MlflowClient

        self.uri = uri or mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        self.experiment = experiment
        try:
            self.experiment_id = self._experiment_id(experiment)
        except Exception as e:  # noqa: BLE001 - any failure here means the store is not usable
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TrackingUnavailable(f"tracking store {self.uri} is not usable: {reason}") from e
        self._context_tags = _context_tags()
        self._open: dict[str, Any] = {}

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        for _ in range(3):
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                if found.lifecycle_stage == "deleted":
                    self.client.restore_experiment(found.experiment_id)
                return found.experiment_id
            try:
                return self.client.create_experiment(name)
            except MlflowException as e:
                if "already exists" not in str(e).lower():
                    raise
        raise TrackingUnavailable(f"experiment '{name}' could not be created or found")

    @property
    def experiment_url(self) -> str:
        if self.uri.startswith(("http://", "https://")):
            return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}"
        return f"mlflow ui --backend-store-uri {self.uri}  (then open experiment '{self.experiment}')"

    def start(self, *, name: str, tags: Mapping[str, str], parent_id: str | None = None) -> Any:
        """Create a RUNNING run with all its tags in one call; returns the MLflow `Run`."""
        all_tags = {**self._context_tags, "mlflow.runName": name, **tags}
        if parent_id is not None:
            all_tags[PARENT_TAG] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        self._open[run.info.run_id] = run
        return run

    def finish(
        self,
        run: Any,
        *,
        status: str,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        artifacts: Mapping[str, str] | None = None,
    ) -> None:
        """One batch for everything the run learned, its artifacts, then the end: nothing is left RUNNING."""
        self.log(run, params=params, metrics=metrics, tags=tags, artifacts=artifacts)
        self.client.set_terminated(run.info.run_id, status=status)
        self._open.pop(run.info.run_id, None)

    def end_open_runs(self, status: str = "FAILED") -> None:
        """After an interruption or a bug: end whatever is still RUNNING, best effort, so nothing is left open."""
        for run_id in list(self._open):
            with contextlib.suppress(Exception):
                self.client.set_terminated(run_id, status=status)
            self._open.pop(run_id, None)

    def log(
        self,
        run: Any,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        artifacts: Mapping[str, str] | None = None,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        batch_params = [Param(k, _text(v)) for k, v in (params or {}).items()]
        batch_metrics = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
        batch_tags = [RunTag(k, _text(v)) for k, v in (tags or {}).items()]
        if batch_params or batch_metrics or batch_tags:
            self.client.log_batch(run.info.run_id, metrics=batch_metrics, params=batch_params, tags=batch_tags)
        if artifacts:
            self._log_artifacts(run, artifacts)

    def _log_artifacts(self, run: Any, files: Mapping[str, str]) -> None:
        """Write straight to the run's artifact repository: `MlflowClient.log_text` would fetch the run first."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        with tempfile.TemporaryDirectory(prefix="runtree-") as tmp:
            for name, text in files.items():
                Path(tmp, name).write_text(text, encoding="utf-8")
            get_artifact_repository(run.info.artifact_uri).log_artifacts(tmp)


def _text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _context_tags() -> dict[str, str]:
    """The user/source tags MLflow's fluent API would add, computed once per process instead of per run."""
    from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

    try:
        import getpass

        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = "unknown"
    import sys

    argv0 = Path(sys.argv[0])
    source = argv0.parent.name if argv0.name == "__main__.py" else argv0.name
    return {MLFLOW_USER: user, MLFLOW_SOURCE_NAME: source or "python", MLFLOW_SOURCE_TYPE: "LOCAL"}


@contextlib.contextmanager
def active_run(run: Any, *, tracking_uri: str) -> Iterator[None]:
    """Make `run` the fluent active run of this thread without a round trip, so a target can log to it.

    `mlflow.start_run(run_id=...)` would fetch the run and mark it FINISHED on exit; the writer ends runs itself.
    """
    _quiet_mlflow_env()
    import mlflow
    from mlflow.tracking import fluent

    if mlflow.get_tracking_uri() != tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    stack = fluent._active_run_stack.get()
    stack.append(fluent.ActiveRun(run))
    try:
        yield
    finally:
        if run.info.run_id in [r.info.run_id for r in stack]:
            while stack and stack.pop().info.run_id != run.info.run_id:
                pass
