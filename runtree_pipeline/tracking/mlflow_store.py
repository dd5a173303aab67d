"""All MLflow I/O: the one place that decides how runs are created, batched, ended, retried and where writes happen.

It uses `MlflowClient` with explicit run ids and `mlflow.parentRunId` tags rather than the fluent active-run stack,
which is per thread and cannot express grandchildren; the only fluent state it touches is the leaf run it makes
active around a target, so that the target's own `mlflow.log_metric` calls land on that leaf.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any, TypeVar

from runtree_pipeline.tracking import tags as schema
from runtree_pipeline.errors import (
    TrackingFailed,
    TrackingUnavailable,
    UnknownExperiment,
    UnknownPipeline,
    first_line,
)
from runtree_pipeline.futures import run_now
from runtree_pipeline.interrupts import ThreadPool, shielded
from runtree_pipeline.tracking.redact import REDACTED, is_secret, redact

PARENT_TAG = "mlflow.parentRunId"
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
IO_THREADS = 8
# A tag holds at most 8000 characters; larger outputs live only in the artifact.
_MAX_TAG = 7000

log = logging.getLogger(__name__)
T = TypeVar("T")


def _quiet_mlflow_env() -> None:
    """Set before mlflow is imported: telemetry and printed run URLs cost time on every run and tell us nothing.

    An inherited MLFLOW_RUN_ID would silently become the parent of our first run (mlflow#15713).
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")
    os.environ.pop("MLFLOW_RUN_ID", None)





def filter_eq(key: str, value: str) -> str:
    """`tags.`key` = 'value'` for MLflow's search grammar, quoted so no value can break or widen the query.

    The grammar has no escape character: the value is wrapped in whichever quote it does not contain, and a value
    containing both is refused rather than guessed at. `=` never treats `%` or `_` as wildcards.
    """
    if "`" in key:
        raise ValueError(f"tag key {key!r} cannot be used in a search filter")
    if "'" not in value:
        quoted = f"'{value}'"
    elif '"' not in value:
        quoted = f'"{value}"'
    else:
        raise ValueError(f"value {value!r} holds both quote characters and cannot be searched for exactly")
    return f"tags.`{key}` = {quoted}"


def _is_transient(error: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    text = str(error).lower()
    if isinstance(error, MlflowException):
        return error.error_code in ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "RESOURCE_EXHAUSTED") or any(
            s in text for s in ("database is locked", "max retries exceeded", "connection", "timed out")
        )
    return isinstance(error, (ConnectionError, TimeoutError)) or "database is locked" in text


class TrackingReader:
    """Reads run trees back (resume's lookups, the `runtree` command) with paginated searches and retries."""

    def __init__(self, *, uri: str | None, experiment: str | None = None) -> None:
        _quiet_mlflow_env()
        import mlflow
        from mlflow import MlflowClient

        self.uri = uri or mlflow.get_tracking_uri()
        self.experiment = experiment
        self._check_exists()
        self.client = MlflowClient(self.uri)
        try:
            with _few_http_retries():
                self.experiment_ids = self._experiment_ids(experiment)
        except (TrackingUnavailable, UnknownExperiment):
            raise
        except Exception as e:  # noqa: BLE001 - any failure here means the store is not usable
            raise TrackingUnavailable(f"tracking store {self.uri} is not usable: {first_line(e)}") from e

    def _check_exists(self) -> None:
        """Reading must not create an empty sqlite file where the user mistyped a path."""
        path = _sqlite_path(self.uri)
        if path is not None and not path.exists():
            raise TrackingUnavailable(f"no tracking store at {self.uri}")

    def _experiment_ids(self, name: str | None) -> list[str]:
        if name is None:
            return [e.experiment_id for e in self.client.search_experiments()]
        found = self.client.get_experiment_by_name(name)
        if found is None:
            known = sorted(e.name for e in self.client.search_experiments())
            raise UnknownExperiment(f"no experiment '{name}' in {self.uri} (it has: {', '.join(known) or 'none'})")
        return [found.experiment_id]


    def _retrying(self, what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        for delay in (*RETRY_DELAYS, None):
            try:
                with shielded():
                    return call(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - classified just below
                if delay is None or not _is_transient(e):
                    raise TrackingFailed(f"could not {what}: {first_line(e)}") from e
                log.warning("retrying in %.1fs: could not %s (%s)", delay, what, type(e).__name__)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def pipeline_runs(self, pipeline_id: str) -> list[Any]:
        """Every run of one pipeline execution: one paginated search, never a query per run."""
        return self._search(filter_eq(schema.PIPELINE_ID, pipeline_id))

    def experiment_names(self) -> dict[str, str]:
        """Experiment id → name, for showing runs from several experiments."""
        experiments = self._retrying("list experiments", self.client.search_experiments)
        return {e.experiment_id: e.name for e in experiments}

    def stage_runs(self) -> list[Any]:
        """Every stage run: one per stage per pipeline execution, the roots of the trees."""
        return self._search(filter_eq(schema.LEVEL, "stage"))

    def run(self, run_id: str) -> Any:
        return self._retrying(f"read run {run_id}", self.client.get_run, run_id)

    def latest_pipeline_id(self) -> str | None:
        runs = self._retrying(
            "find the latest pipeline",
            self.client.search_runs,
            self.experiment_ids,
            filter_string=filter_eq(schema.LEVEL, "stage"),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].data.tags.get(schema.PIPELINE_ID) if runs else None

    def _search(self, filter_string: str) -> list[Any]:
        runs: list[Any] = []
        token = None
        while True:
            page = self._retrying(
                "search runs",
                self.client.search_runs,
                self.experiment_ids,
                filter_string=filter_string,
                max_results=50000,
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def outputs_of(self, run: Any) -> dict[str, Any]:
        """A finished leaf's outputs: from its tag when small, else from its `outputs.json` artifact."""
        text = run.data.tags.get(schema.OUTPUTS)
        if text is not None:
            return json.loads(text)
        if run.data.tags.get(schema.OUTPUTS_IN_ARTIFACT):
            path = self._retrying("read outputs", self.client.download_artifacts, run.info.run_id, schema.OUTPUTS_ARTIFACT)
            return json.loads(Path(path).read_text(encoding="utf-8"))
        return {}



class TrackingWriter(TrackingReader):
    """Creates and ends runs in one experiment with the fewest round trips: create, one batch, end."""

    def __init__(self, *, uri: str | None, experiment: str) -> None:
        super().__init__(uri=uri, experiment=experiment)
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        self.experiment_id = self.experiment_ids[0]
        self._context_tags = _context_tags()
        self._open: dict[str, Any] = {}
        self.created_runs = False
        self._inflight: set[Future[None]] = set()
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._io: ThreadPool | None = None
        if self.uri.startswith(("http://", "https://")):
            self._io = ThreadPool(IO_THREADS, thread_name_prefix="runtree-io")
        elif self.uri.startswith("sqlite:///"):
            _use_wal(self.uri)

    def _check_exists(self) -> None:
        """A writer creates the store if it is missing, all at once (see `create_sqlite_store`)."""
        create_sqlite_store(self.uri)

    def _experiment_ids(self, name: str | None) -> list[str]:
        from mlflow.exceptions import MlflowException

        for _ in range(3):
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                if found.lifecycle_stage == "deleted":
                    self.client.restore_experiment(found.experiment_id)
                return [found.experiment_id]
            try:
                return [self.client.create_experiment(name)]
            except MlflowException as e:
                if "already exists" not in str(e).lower():
                    raise
        raise TrackingUnavailable(f"experiment '{name}' could not be created or found")

    def start(self, *, name: str, tags: Mapping[str, Any], parent_id: str | None = None) -> Any:
        """Create a RUNNING run with all its tags in one call; returns the MLflow `Run`."""
        all_tags = {**self._context_tags, "mlflow.runName": name, **_texts(tags)}
        if parent_id is not None:
            all_tags[PARENT_TAG] = parent_id
        return self._retrying(f"create run {name}", self._create, name, all_tags)

    def _create(self, name: str, tags: dict[str, str]) -> Any:
        """Create and note as open in one shielded step: a signal between the two would orphan a RUNNING run."""
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self._open[run.info.run_id] = run
        self.created_runs = True
        return run

    def annotate(self, run: Any, tags: Mapping[str, Any]) -> None:
        """Tags on a run that is otherwise done (e.g. marking a stage run superseded)."""
        from mlflow.entities import RunTag

        batch = [RunTag(k, v) for k, v in _texts(tags).items()]
        self._retrying(f"tag run {run.info.run_name}", self.client.log_batch, run.info.run_id, tags=batch)

    def reopen(self, run: Any) -> None:
        """Mark an existing run RUNNING again before redoing or extending it (resume)."""
        self._retrying(f"reopen run {run.info.run_name}", self._reopen, run)

    def _reopen(self, run: Any) -> None:
        self.client.update_run(run.info.run_id, status="RUNNING")
        self._open[run.info.run_id] = run

    def finish(
        self,
        run: Any,
        *,
        status: str,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, Any] | None = None,
        artifacts: Mapping[str, str] | None = None,
        clear_tags: Iterable[str] = (),
    ) -> None:
        """One batch for everything the run learned, its artifacts, then the end: nothing is left RUNNING.

        Against a server this happens on an I/O thread, so its round trips overlap with the next run's work;
        `flush` waits for it and raises what failed.
        """
        args = (run, status, params, metrics, tags, artifacts, tuple(clear_tags))
        if self._io is None:
            self._finish(*args)
            return
        with shielded():
            future = self._io.submit(self._finish, *args)
            with self._lock:
                self._inflight.add(future)
            future.add_done_callback(self._landed)

    @property
    def prefetch(self) -> int:
        """How many runs to create ahead of need: only worth it when a round trip can overlap other work."""
        return IO_THREADS if self._io is not None else 1

    def in_background(self, call: Callable[..., T], *args: Any) -> Future[T]:
        """Run `call` on an I/O thread against a server (so round trips overlap), at once otherwise."""
        return self._io.submit(call, *args) if self._io is not None else run_now(call, *args)

    def close(self) -> None:
        """Wait for the last writes and stop the I/O threads."""
        if self._io is not None:
            self._io.shutdown(wait=True)

    def _landed(self, future: Future[None]) -> None:
        with self._lock:
            self._inflight.discard(future)
            if future.exception() is not None:
                self._errors.append(future.exception())

    def flush(self) -> None:
        """Wait for every write in flight; raise the first that failed (a parent's best waits for its children)."""
        with self._lock:
            inflight = list(self._inflight)
        wait(inflight)
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise errors[0]

    def _finish(
        self,
        run: Any,
        status: str,
        params: Mapping[str, Any] | None,
        metrics: Mapping[str, float] | None,
        tags: Mapping[str, Any] | None,
        artifacts: Mapping[str, str] | None,
        clear_tags: tuple[str, ...],
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        run_id, name = run.info.run_id, run.info.run_name
        now = int(time.time() * 1000)
        batch_params = [Param(k, REDACTED if is_secret(k) else _text(v)) for k, v in (params or {}).items()]
        batch_metrics = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
        batch_tags = [RunTag(k, v) for k, v in _texts(tags or {}).items()]
        if batch_params or batch_metrics or batch_tags:
            self._retrying(
                f"record results of run {name}",
                self.client.log_batch,
                run_id,
                metrics=batch_metrics,
                params=batch_params,
                tags=batch_tags,
            )
        for key in clear_tags:
            with contextlib.suppress(Exception):
                self.client.delete_tag(run_id, key)
        if artifacts:
            self._retrying(f"store artifacts of run {name}", _write_artifacts, run.info.artifact_uri, artifacts)
        self._retrying(f"end run {name}", self._end, run_id, status)

    def _end(self, run_id: str, status: str) -> None:
        """End and forget in one shielded step: ending a FINISHED run again as KILLED would make resume redo it."""
        self.client.set_terminated(run_id, status=status)
        self._open.pop(run_id, None)

    def end_open_runs(self, status: str = "FAILED") -> int:
        """After an interruption or a bug: end whatever is still RUNNING, best effort, so nothing is left open.

        The I/O threads are drained first: a run they are creating right now must be open before we look.
        """
        if self._io is not None:
            self._io.shutdown(wait=True)
        ended = 0
        for run_id in list(self._open):
            with contextlib.suppress(Exception):
                self.client.set_terminated(run_id, status=status)
                ended += 1
            self._open.pop(run_id, None)
        return ended

    def attach(self, artifact_uri: str, files: Mapping[str, str | bytes]) -> None:
        """Artifacts for a run that may already be ended (pictures drawn after the tree is recorded)."""
        self._retrying("store artifacts", _write_artifacts, artifact_uri, files)


def _write_artifacts(artifact_uri: str, files: Mapping[str, str | bytes]) -> None:
    """Straight to the run's artifact repository: `MlflowClient.log_text` would fetch the run first."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    with tempfile.TemporaryDirectory(prefix="runtree-") as tmp:
        for name, content in files.items():
            path = Path(tmp, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        get_artifact_repository(artifact_uri).log_artifacts(tmp)


def prepare_store(uri: str | None) -> str:
    """Create a sqlite store's schema (and switch it to WAL) from one process; a no-op for servers."""
    _quiet_mlflow_env()
    import mlflow
    from mlflow import MlflowClient

    uri = uri or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        create_sqlite_store(uri)
        MlflowClient(uri).search_experiments(max_results=1)
        _use_wal(uri)
    return uri


def _sqlite_path(uri: str) -> Path | None:
    path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
    return Path(path) if path and path != ":memory:" else None


def create_sqlite_store(uri: str) -> None:
    """Give a new sqlite store MLflow's full schema under a temporary name, then link it into place.

    MLflow migrates a new file in dozens of steps that are not one transaction; a signal between two of them left
    a file MLflow refuses to open ("table ... already exists"). Built aside with signals deferred, the store is
    either absent or complete. Linking, unlike renaming, never replaces a store another process created meanwhile.
    """
    path = _sqlite_path(uri)
    if path is None or path.exists():
        return
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    path.parent.mkdir(parents=True, exist_ok=True)
    building = path.with_name(f"{path.name}.creating-{os.getpid()}")
    with shielded():
        try:
            engine = sqlalchemy.create_engine(f"sqlite:///{building}")
            try:
                _initialize_tables(engine)
            finally:
                engine.dispose()
            try:
                os.link(building, path)
            except FileExistsError:
                pass
            except OSError:
                if not path.exists():
                    os.replace(building, path)
        finally:
            for leftover in (building, building.with_name(building.name + "-journal")):
                leftover.unlink(missing_ok=True)


def _use_wal(uri: str) -> None:
    """SQLite's WAL journal lets worker processes log while the driver writes (measured faster here, too).

    The setting is stored in the file; MLflow and `mlflow ui` work the same with it.
    """
    import sqlite3

    path = _sqlite_path(uri)
    if path is None:
        return
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(path, timeout=20)) as db:
        db.execute("PRAGMA journal_mode=WAL")


def outputs_tags(outputs: Mapping[str, Any]) -> dict[str, str]:
    """Outputs small enough ride along as a tag, so a resume reads them without downloading an artifact."""
    if not outputs:
        return {}
    text = json.dumps(redact(dict(outputs)), sort_keys=True)
    return {schema.OUTPUTS: text} if len(text) <= _MAX_TAG else {schema.OUTPUTS_IN_ARTIFACT: "true"}


def _texts(tags: Mapping[str, Any]) -> dict[str, str]:
    return {k: REDACTED if is_secret(k) else _text(v) for k, v in tags.items()}


def _text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(redact(value), sort_keys=True, default=str)
    return str(value)


@contextlib.contextmanager
def _few_http_retries() -> Iterator[None]:
    """At start-up an unreachable server should fail in seconds, not after MLflow's minutes of backoff."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _context_tags() -> dict[str, str]:
    """The user/source tags MLflow's fluent API would add, computed once per process instead of per run."""
    import getpass
    import sys

    from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = "unknown"
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
