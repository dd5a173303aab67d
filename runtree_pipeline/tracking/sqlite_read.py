"""Whole run trees read straight from a sqlite store's tables, for the readers that load a tree at once.

`MlflowClient.search_runs` builds an ORM object per run, tag, param and metric, then an MLflow entity from each,
then we copy those into `RunRecord`s: for a tree of 22,001 runs that was ~10 s and ~550 MB, nearly all of it in
SQLAlchemy. Four plain queries in one read transaction give the same facts in a fraction of both. The connection
is read-only (`mode=ro`), so a reader never writes, migrates or creates a store.

The SQL mirrors what `SqlAlchemyStore` does for `search_runs(ids, "tags.`k` = 'v'")` with the default view and
order: active runs of those experiments carrying that exact tag, newest first then by id; the run name from its
column, else from its `mlflow.runName` tag; metrics are `latest_metrics` with `is_nan` read as NaN. Any surprise,
such as a missing column or a store too busy to read, makes the caller fall back to `search_runs`, never fail.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from runtree_pipeline.tracking import tags as schema
from runtree_pipeline.tracking.records import RunRecord

log = logging.getLogger(__name__)

_COLUMNS = {
    "runs": {
        "run_uuid",
        "experiment_id",
        "name",
        "status",
        "start_time",
        "end_time",
        "artifact_uri",
        "lifecycle_stage",
    },
    "tags": {"run_uuid", "key", "value"},
    "params": {"run_uuid", "key", "value"},
    "latest_metrics": {"run_uuid", "key", "value", "is_nan"},
}

_RUNS = """
SELECT r.run_uuid, r.experiment_id, r.name, r.status, r.start_time, r.end_time, r.artifact_uri
FROM tags AS f JOIN runs AS r ON r.run_uuid = f.run_uuid
WHERE f.key = ? AND f.value = ? AND r.lifecycle_stage = 'active' AND r.experiment_id IN ({ids})
ORDER BY r.start_time DESC, r.run_uuid
"""

# Rows of runs outside the selection (deleted, other experiments) are dropped while reading: cheaper than joining
# `runs` again in each query. Within a run, rows come in the order they were written, as MLflow returns them.
_RELATED = """
SELECT t.run_uuid, t.key, {columns} FROM tags AS f JOIN {table} AS t ON t.run_uuid = f.run_uuid
WHERE f.key = ? AND f.value = ?
"""


class SqliteRunReader:
    """Reads runs by one exact tag from a sqlite MLflow store, or says (None) that `search_runs` must."""

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        self._schema_ok: bool | None = None

    def runs_tagged(self, experiment_ids: Iterable[str], key: str, value: str) -> list[RunRecord] | None:
        """None, with the reason logged, when this store cannot be read here: the caller asks MLflow instead."""
        if self._schema_ok is False:
            return None
        try:
            ids = sorted({int(i) for i in experiment_ids})
        except (TypeError, ValueError):
            return None
        try:
            with self._connect() as db:
                if self._schema_ok is None:
                    missing = _missing_columns(db)
                    self._schema_ok = not missing
                    if missing:
                        log.info("reading %s through MLflow: its tables lack %s", self.path, ", ".join(missing))
                        return None
                return _read(db, ids, str(key), str(value))
        except sqlite3.Error as e:
            log.info("reading %s through MLflow: %s", self.path, e)
            return None

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: tags, params and metrics belong to the same snapshot as the runs."""
        uri = f"file:{quote(str(self.path))}?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=20, isolation_level=None, check_same_thread=False)
        try:
            db.execute("BEGIN")
            yield db
        finally:
            db.close()


def _missing_columns(db: sqlite3.Connection) -> list[str]:
    missing = []
    for table, needed in _COLUMNS.items():
        found = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        missing += [f"{table}.{column}" for column in sorted(needed - found)]
    return missing


def _read(db: sqlite3.Connection, ids: list[int], key: str, value: str) -> list[RunRecord]:
    if not ids:
        return []
    shared = _Shared()
    heads = db.execute(_RUNS.format(ids=",".join(map(str, ids))), (key, value)).fetchall()
    tags: dict[str, dict[str, Any]] = {row[0]: {} for row in heads}
    params: dict[str, dict[str, Any]] = {run_id: {} for run_id in tags}
    metrics: dict[str, dict[str, float]] = {run_id: {} for run_id in tags}
    for run_id, k, v in db.execute(_RELATED.format(table="tags", columns="t.value"), (key, value)):
        found = tags.get(run_id)
        if found is not None:
            found[sys.intern(k)] = shared(v)
    for run_id, k, v in db.execute(_RELATED.format(table="params", columns="t.value"), (key, value)):
        found = params.get(run_id)
        if found is not None:
            found[sys.intern(k)] = shared(v)
    for run_id, k, v, is_nan in db.execute(
        _RELATED.format(table="latest_metrics", columns="t.value, t.is_nan"), (key, value)
    ):
        found = metrics.get(run_id)
        if found is not None:
            found[sys.intern(k)] = float("nan") if is_nan else v
    records = []
    for run_id, experiment_id, name, status, start, end, artifact_uri in heads:
        run_tags = tags[run_id]
        records.append(
            RunRecord(
                run_id=run_id,
                experiment_id=shared(str(experiment_id)),
                name=name or run_tags.get(schema.RUN_NAME) or "",
                status=shared(status),
                start_time=start,
                end_time=end,
                artifact_uri=artifact_uri,
                parent_id=run_tags.get(schema.PARENT),
                tags=run_tags,
                params=params[run_id],
                metrics=metrics[run_id],
            )
        )
    return records


class _Shared:
    """One string object per distinct value: 22k runs repeat the same pipeline id, stage, user and parents."""

    def __init__(self) -> None:
        self._seen: dict[Any, Any] = {}

    def __call__(self, value: Any) -> Any:
        return self._seen.setdefault(value, value)
