"""The MLflow side of the store interface: how runs are created, batched, ended and read back, with few round trips.

It uses `MlflowClient` with explicit run ids and `mlflow.parentRunId` tags rather than the fluent active-run stack,
which is per thread and cannot express grandchildren. Nothing here changes process-global state: no tracking URI
is set and no environment variable is changed after start-up.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

from runtree_pipeline.errors import TrackingUnavailable, UnknownExperiment, first_line
from runtree_pipeline.futures import run_now
from runtree_pipeline.interrupts import ThreadPool, shielded
from runtree_pipeline.states import Level, Status
from runtree_pipeline.tracking import tags as schema
from runtree_pipeline.tracking.records import RunRecord, RunRef, Write
from runtree_pipeline.tracking.redact import REDACTED, is_secret, redact
from runtree_pipeline.tracking.retry import answered, retrying
from runtree_pipeline.tracking.sqlite import create_sqlite_store, sqlite_path, use_wal
from runtree_pipeline.tracking.sqlite_read import SqliteRunReader

IO_THREADS = 8


def quiet_mlflow_env() -> None:
    """Set before mlflow is imported: telemetry and printed run URLs cost time on every run and tell us nothing.

    An inherited MLFLOW_RUN_ID would silently become the parent of our first run (mlflow#15713).
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.pop("MLFLOW_RUN_ID", None)


def load_mlflow() -> None:
    """Import MLflow now, while the executor's workers start, before anything is written."""
    import mlflow  # noqa: F401


def default_uri() -> str:
    quiet_mlflow_env()
    import mlflow

    return mlflow.get_tracking_uri()


def prepare_store(uri: str | None) -> str:
    """Create a sqlite store's schema (and switch it to WAL) from one process; a no-op for servers.

    Hydra's parallel jobs call this once before they start, so they do not race to create the same file.
    """
    quiet_mlflow_env()
    uri = uri or default_uri()
    if sqlite_path(uri) is not None:
        create_sqlite_store(uri)
        use_wal(uri)
    return uri


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


def record_of(run: Any) -> RunRecord:
    info, data = run.info, run.data
    return RunRecord(
        run_id=info.run_id,
        experiment_id=info.experiment_id,
        name=info.run_name or "",
        status=info.status,
        start_time=info.start_time,
        end_time=info.end_time,
        artifact_uri=info.artifact_uri,
        parent_id=data.tags.get(schema.PARENT),
        tags=dict(data.tags),
        params=dict(data.params),
        metrics=dict(data.metrics),
    )


def _check_reachable(uri: str) -> None:
    """At start-up an unreachable server should fail in seconds, not after MLflow's minutes of HTTP backoff."""
    if not uri.startswith(("http://", "https://")):
        return
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        http_request(get_default_host_creds(uri), "/health", "GET", max_retries=0, timeout=10)
    except Exception as e:  # noqa: BLE001 - any failure to reach it means the store is not usable
        raise TrackingUnavailable(f"tracking store {uri} is not usable: {first_line(e)}") from e


class TrackingReader:
    """Reads run trees back (resume's lookups, the `runtree` command) with paginated searches and retries.

    Whole trees from a sqlite store are read with plain SQL instead (`sqlite_read`): MLflow's ORM made reading
    a 20,000-leaf tree take seconds and hundreds of MB. Servers, other stores and any surprise use `search_runs`.
    """

    def __init__(self, *, uri: str | None, experiment: str | None = None, create: bool = False) -> None:
        quiet_mlflow_env()
        self.uri = uri or default_uri()
        self.experiment = experiment
        path = sqlite_path(self.uri)
        self._sql = SqliteRunReader(path) if path is not None else None
        if create:
            create_sqlite_store(self.uri)
        elif path is not None and not path.exists():
            raise TrackingUnavailable(f"no tracking store at {self.uri}")
        from mlflow import MlflowClient

        _check_reachable(self.uri)
        self.client = MlflowClient(self.uri)
        try:
            self.experiment_ids = self._find_experiments(experiment, create=create)
        except (TrackingUnavailable, UnknownExperiment):
            raise
        except Exception as e:  # noqa: BLE001 - any failure here means the store is not usable
            raise TrackingUnavailable(f"tracking store {self.uri} is not usable: {first_line(e)}") from e

    def _find_experiments(self, name: str | None, *, create: bool) -> list[str]:
        if name is None:
            return [e.experiment_id for e in self.client.search_experiments()]
        for _ in range(3):
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                if found.lifecycle_stage == "deleted" and create:
                    self.client.restore_experiment(found.experiment_id)
                return [found.experiment_id]
            if not create:
                known = sorted(e.name for e in self.client.search_experiments())
                raise UnknownExperiment(f"no experiment '{name}' in {self.uri} (it has: {', '.join(known) or 'none'})")
            created = answered({"RESOURCE_ALREADY_EXISTS"}, self.client.create_experiment, name)
            if created is not None:
                return [created]
        raise TrackingUnavailable(f"experiment '{name}' could not be created or found")

    def pipeline_runs(self, pipeline_id: str) -> list[RunRecord]:
        """Every run of one pipeline execution: a few queries in all, never one per run."""
        return self._tagged(schema.PIPELINE_ID, pipeline_id)

    def stage_history(self, stage: str) -> list[RunRecord]:
        """Every run recorded under a stage, by any execution: one search (a few queries on sqlite) per stage."""
        return self._tagged(schema.STAGE, stage)

    def run(self, run_id: str) -> RunRecord | None:
        """One run by id; None when no experiment read here holds it, or only deleted (a run created ahead and
        discarded is in no tree), so a wrong id reads as 'not recorded' rather than as a broken store."""
        found = retrying(
            "read run", answered, {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}, self.client.get_run, run_id
        )
        if (
            found is None
            or found.info.lifecycle_stage != "active"
            or found.info.experiment_id not in self.experiment_ids
        ):
            return None
        return record_of(found)

    def stage_runs(self) -> list[RunRecord]:
        """Every stage run: one per stage per pipeline execution, the roots of the trees."""
        return self._tagged(schema.LEVEL, Level.STAGE)

    def experiment_names(self) -> dict[str, str]:
        """Experiment id → name, for showing runs from several experiments."""
        experiments = retrying("list experiments", self.client.search_experiments)
        return {e.experiment_id: e.name for e in experiments}

    def latest_pipeline_id(self) -> str | None:
        runs = retrying(
            "find the latest pipeline",
            self.client.search_runs,
            self.experiment_ids,
            filter_string=filter_eq(schema.LEVEL, Level.STAGE),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].data.tags.get(schema.PIPELINE_ID) if runs else None

    def _tagged(self, key: str, value: str) -> list[RunRecord]:
        """The runs whose tag `key` is exactly `value`, as `search_runs` finds them."""
        filter_string = filter_eq(key, value)
        if self._sql is not None:
            runs = self._sql.runs_tagged(self.experiment_ids, key, value)
            if runs is not None:
                return runs
        return self._search(filter_string)

    def _search(self, filter_string: str) -> list[RunRecord]:
        runs: list[RunRecord] = []
        token = None
        while True:
            page = retrying(
                "search runs",
                self.client.search_runs,
                self.experiment_ids,
                filter_string=filter_string,
                max_results=50000,
                page_token=token,
            )
            runs.extend(record_of(run) for run in page)
            token = page.token
            if not token:
                return runs

    def outputs_of(self, run: RunRecord) -> dict[str, Any]:
        """A finished leaf's outputs: from its tag when small, else from its `outputs.json` artifact."""
        outputs = schema.outputs_of(run.tags)
        if outputs is not None:
            return outputs
        path = retrying("read outputs", self.client.download_artifacts, run.run_id, schema.OUTPUTS_ARTIFACT)
        return json.loads(Path(path).read_text(encoding="utf-8"))

    def config_of(self, run: RunRecord) -> dict[str, Any] | None:
        """A stage run's resolved config (its `config.yaml` artifact, one download); None when it has none, e.g. a
        run the scheduler never got to write it for, so a diff can say so instead of failing."""
        import yaml

        def download() -> str | None:
            try:
                return answered(
                    {"RESOURCE_DOES_NOT_EXIST"}, self.client.download_artifacts, run.run_id, schema.CONFIG_ARTIFACT
                )
            except OSError:  # a local artifact store reports a missing file as a missing path
                return None

        path = retrying("read the stage config", download)
        if path is None:
            return None
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        return config if isinstance(config, dict) else None


class MlflowStore:
    """Creates and ends runs in one experiment with the fewest round trips: create, one batch, end."""

    def __init__(self, *, uri: str | None, experiment: str) -> None:
        self.reader = TrackingReader(uri=uri, experiment=experiment, create=True)
        self.uri = self.reader.uri
        self.experiment = experiment
        self.experiment_id = self.reader.experiment_ids[0]
        self.client = self.reader.client
        self._context_tags = _context_tags()
        self._open: dict[str, RunRef] = {}
        self.created_runs = False
        self._inflight: set[Future[None]] = set()
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._io: ThreadPool | None = None
        if self.uri.startswith(("http://", "https://")):
            self._io = ThreadPool(IO_THREADS, thread_name_prefix="runtree-io")
        else:
            use_wal(self.uri)

    @property
    def prefetch(self) -> int:
        """How many runs to create ahead of need: only worth it when a round trip can overlap other work."""
        return IO_THREADS if self._io is not None else 0

    def pipeline_runs(self, pipeline_id: str) -> list[RunRecord]:
        return self.reader.pipeline_runs(pipeline_id)

    def stage_history(self, stage: str) -> list[RunRecord]:
        return self.reader.stage_history(stage)

    def latest_pipeline_id(self) -> str | None:
        return self.reader.latest_pipeline_id()

    def outputs_of(self, run: RunRecord) -> dict[str, Any]:
        return self.reader.outputs_of(run)

    def create(self, *, name: str, tags: Mapping[str, Any], parent_id: str | None = None) -> RunRef:
        all_tags = {**self._context_tags, schema.RUN_NAME: name, **_texts(tags)}
        if parent_id is not None:
            all_tags[schema.PARENT] = parent_id
        return retrying(f"create run {name}", self._create, name, all_tags)

    def create_later(self, *, name: str, tags: Mapping[str, Any], parent_id: str | None = None) -> Future[RunRef]:
        if self._io is None:
            return run_now(self.create, name=name, tags=tags, parent_id=parent_id)
        return self._io.submit(self.create, name=name, tags=tags, parent_id=parent_id)

    def _create(self, name: str, tags: dict[str, str]) -> RunRef:
        """Create and note as open in one shielded step: a signal between the two would orphan a RUNNING run."""
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        info = run.info
        ref = RunRef(info.run_id, self.experiment_id, self.uri, name, info.artifact_uri, info.start_time, tags)
        with self._lock:
            self._open[ref.run_id] = ref
            self.created_runs = True
        return ref

    def annotate(self, run: RunRef, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, v) for k, v in _texts(tags).items()]
        retrying(f"tag run {run.name}", self.client.log_batch, run.run_id, tags=batch)

    def reopen(self, run: RunRef, clear_tags: Iterable[str] = ()) -> None:
        for key in clear_tags:
            retrying(f"clear tag {key} of run {run.name}", self._delete_tag, run.run_id, key)
        retrying(f"reopen run {run.name}", self._reopen, run)

    def _reopen(self, run: RunRef) -> None:
        self.client.update_run(run.run_id, status=Status.RUNNING)
        with self._lock:
            self._open[run.run_id] = run

    def discard(self, run: RunRef) -> None:
        """Ended and deleted: a run created ahead that never ran is not part of the tree."""
        retrying(f"end run {run.name}", self._end, run.run_id, Status.KILLED)
        retrying(f"delete run {run.name}", self.client.delete_run, run.run_id)

    def finish(self, run: RunRef, write: Write) -> None:
        """One batch for everything the run learned, its artifacts, then the end: nothing is left RUNNING.

        Against a server this happens on an I/O thread, so its round trips overlap with the next run's work;
        `flush` waits for it and raises what failed. The end time is fixed here, not when the call goes out.
        """
        end_ms = int((write.ended_at if write.ended_at is not None else time.time()) * 1000)
        if self._io is None:
            self._finish(run, write, end_ms)
            return
        with shielded():
            future = self._io.submit(self._finish, run, write, end_ms)
            with self._lock:
                self._inflight.add(future)
            future.add_done_callback(self._landed)

    def _finish(self, run: RunRef, write: Write, end_ms: int) -> None:
        from mlflow.entities import Metric, Param, RunTag

        batch_params = [Param(k, REDACTED if is_secret(k) else _text(v)) for k, v in write.params.items()]
        batch_metrics = [Metric(k, float(v), end_ms, write.step) for k, v in write.metrics.items()]
        batch_tags = [RunTag(k, v) for k, v in _texts(write.tags).items()]
        if batch_params or batch_metrics or batch_tags:
            retrying(
                f"record results of run {run.name}",
                self.client.log_batch,
                run.run_id,
                metrics=batch_metrics,
                params=batch_params,
                tags=batch_tags,
            )
        for key in write.clear_tags:
            retrying(f"clear tag {key} of run {run.name}", self._delete_tag, run.run_id, key)
        if write.artifacts:
            retrying(
                f"store artifacts of run {run.name}", _write_artifacts, run.artifact_uri, write.artifacts, self.uri
            )
        retrying(f"end run {run.name}", self._end, run.run_id, write.status, end_ms)

    def _delete_tag(self, run_id: str, key: str) -> None:
        """Deleting a tag the run does not have is what we wanted, not a failure."""
        answered({"RESOURCE_DOES_NOT_EXIST"}, self.client.delete_tag, run_id, key)

    def _end(self, run_id: str, status: str, end_ms: int | None = None) -> None:
        """End and forget in one shielded step: ending a FINISHED run again as KILLED would make resume redo it."""
        self.client.set_terminated(run_id, status=status, end_time=end_ms)
        with self._lock:
            self._open.pop(run_id, None)

    def attach(self, run: RunRef, files: Mapping[str, str | bytes]) -> None:
        retrying(f"store artifacts of run {run.name}", _write_artifacts, run.artifact_uri, files, self.uri)

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

    def end_open_runs(self, status: str = Status.FAILED) -> int:
        """After an interruption or a bug: end whatever is still RUNNING, best effort, so nothing is left open.

        The I/O threads are drained first: a run they are creating right now must be open before we look.
        """
        if self._io is not None:
            self._io.shutdown(wait=True)
        with self._lock:
            still_open = list(self._open)
        ended = 0
        for run_id in still_open:
            with contextlib.suppress(Exception):
                self.client.set_terminated(run_id, status=status)
                ended += 1
            with self._lock:
                self._open.pop(run_id, None)
        return ended

    def close(self) -> None:
        """Wait for the last writes and stop the I/O threads."""
        if self._io is not None:
            self._io.shutdown(wait=True)


def _write_artifacts(artifact_uri: str | None, files: Mapping[str, str | bytes], tracking_uri: str) -> None:
    """Straight to the run's artifact repository: `MlflowClient.log_text` would fetch the run first.

    `mlflow-artifacts:` URIs (a server's artifact proxy) resolve against the tracking URI given here, never the
    process-global one.
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    with tempfile.TemporaryDirectory(prefix="runtree-") as tmp:
        for name, content in files.items():
            path = Path(tmp, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        get_artifact_repository(artifact_uri, tracking_uri=tracking_uri).log_artifacts(tmp)


def _texts(tags: Mapping[str, Any]) -> dict[str, str]:
    return {k: REDACTED if is_secret(k) else _text(v) for k, v in tags.items()}


def _text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(redact(value), sort_keys=True, default=str)
    return str(value)


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
    return {MLFLOW_SOURCE_NAME: source or "python", MLFLOW_SOURCE_TYPE: "LOCAL", MLFLOW_USER: user}
