"""An in-memory `RunStore`: the walk's unit tests run against it in milliseconds; real-store tests stay beside them.

It keeps what the scheduler relies on from a store (statuses, tags, params, metrics, parents, deletion) and counts
writes, so a test can tell a resume that wrote nothing from one that rewrote the tree.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import Any

from runtree_pipeline.futures import run_now
from runtree_pipeline.tracking import tags as schema
from runtree_pipeline.tracking.records import RunRecord, RunRef, Write


class MemoryStore:
    uri = "memory://"
    experiment = "memory"
    experiment_id = "0"

    def __init__(self, *, prefetch: int = 0) -> None:
        self.prefetch = prefetch
        self.runs: dict[str, dict[str, Any]] = {}
        self.writes: Counter[str] = Counter()
        self.created_runs = False
        self._ids = itertools.count(1)
        self._clock = itertools.count(1)
        self._lock = threading.Lock()

    # ---- writes ----

    def create(self, *, name: str, tags: Mapping[str, Any], parent_id: str | None = None) -> RunRef:
        with self._lock:
            run_id = f"r{next(self._ids)}"
            self.runs[run_id] = {
                "name": name,
                "status": "RUNNING",
                "start": next(self._clock),
                "parent": parent_id,
                "tags": {k: str(v) for k, v in tags.items()},
                "params": {},
                "metrics": {},
                "artifacts": {},
                "deleted": False,
            }
            self.writes["create"] += 1
            self.created_runs = True
        return RunRef(run_id, self.experiment_id, self.uri, name, f"memory://{run_id}")

    def create_later(self, *, name: str, tags: Mapping[str, Any], parent_id: str | None = None) -> Future[RunRef]:
        return run_now(self.create, name=name, tags=tags, parent_id=parent_id)

    def finish(self, run: RunRef, write: Write) -> None:
        with self._lock:
            stored = self.runs[run.run_id]
            stored["params"].update({k: str(v) for k, v in write.params.items()})
            stored["metrics"].update({k: float(v) for k, v in write.metrics.items()})
            stored["tags"].update({k: str(v) for k, v in write.tags.items()})
            stored["artifacts"].update(write.artifacts or {})
            for key in write.clear_tags:
                stored["tags"].pop(key, None)
            stored["status"] = str(write.status)
            self.writes["finish"] += 1

    def annotate(self, run: RunRef, tags: Mapping[str, Any]) -> None:
        with self._lock:
            self.runs[run.run_id]["tags"].update({k: str(v) for k, v in tags.items()})
            self.writes["annotate"] += 1

    def reopen(self, run: RunRef, clear_tags: Iterable[str] = ()) -> None:
        with self._lock:
            self.runs[run.run_id]["status"] = "RUNNING"
            for key in clear_tags:
                self.runs[run.run_id]["tags"].pop(key, None)
            self.writes["reopen"] += 1

    def discard(self, run: RunRef) -> None:
        with self._lock:
            self.runs[run.run_id].update(status="KILLED", deleted=True)
            self.writes["discard"] += 1

    def attach(self, run: RunRef, files: Mapping[str, str | bytes]) -> None:
        with self._lock:
            self.runs[run.run_id]["artifacts"].update(files)

    def flush(self) -> None:
        """Every write here lands at once."""

    def end_open_runs(self, status: str) -> int:
        with self._lock:
            still_open = [r for r in self.runs.values() if r["status"] == "RUNNING"]
            for stored in still_open:
                stored["status"] = str(status)
        return len(still_open)

    def close(self) -> None:
        """Nothing to release."""

    # ---- reads ----

    def records(self, *, deleted: bool = False) -> list[RunRecord]:
        return [self._record(run_id) for run_id, r in self.runs.items() if deleted or not r["deleted"]]

    def pipeline_runs(self, pipeline_id: str) -> list[RunRecord]:
        return [r for r in self.records() if r.tags.get(schema.PIPELINE_ID) == pipeline_id]

    def stage_history(self, stage: str) -> list[RunRecord]:
        return [r for r in self.records() if r.tags.get(schema.STAGE) == stage]

    def latest_pipeline_id(self) -> str | None:
        stages = [r for r in self.records() if schema.is_stage(r.tags)]
        return max(stages, key=lambda r: r.start_time or 0).tags[schema.PIPELINE_ID] if stages else None

    def outputs_of(self, run: RunRecord) -> dict[str, Any]:
        return schema.outputs_of(run.tags) or {}

    def _record(self, run_id: str) -> RunRecord:
        r = self.runs[run_id]
        return RunRecord(
            run_id=run_id,
            experiment_id=self.experiment_id,
            name=r["name"],
            status=r["status"],
            start_time=r["start"],
            artifact_uri=f"memory://{run_id}",
            parent_id=r["parent"],
            tags=dict(r["tags"]),
            params=dict(r["params"]),
            metrics=dict(r["metrics"]),
        )
