"""What a previous execution of a pipeline left in the store, indexed the way the runner looks things up.

Runs are identified by content (`runtree.key`: stage, target, merged params with upstream values resolved, point
name), not by name, so a resume reuses exactly the runs whose result would not change and redoes the rest in place.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from runtree_pipeline.tracking import tags as schema
from runtree_pipeline.tracking.mlflow_store import PARENT_TAG

_DONE = "FINISHED"


def content_key(**parts: Any) -> str:
    """A stable hash of what determines a run's result; JSON with sorted keys so dict order does not matter."""
    text = json.dumps(parts, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


class ExistingTree:
    """An empty tree for a fresh execution; the runs of `resume=<id>` otherwise."""

    def __init__(self, runs: Iterable[Any] = ()) -> None:
        self._stages: dict[str, list[Any]] = {}
        self._children: dict[str, list[Any]] = {}
        self._by_key: dict[tuple[str | None, str], Any] = {}
        for run in sorted(runs, key=lambda r: r.info.start_time or 0):
            tags = run.data.tags
            parent = tags.get(PARENT_TAG)
            if tags.get(schema.LEVEL) == "stage":
                self._stages.setdefault(tags.get(schema.STAGE, ""), []).append(run)
            elif parent is not None:
                self._children.setdefault(parent, []).append(run)
            key = tags.get(schema.KEY)
            if key is None:
                continue
            slot = (parent, key)
            previous = self._by_key.get(slot)
            if previous is None or (previous.info.status != _DONE and run.info.status == _DONE):
                self._by_key[slot] = run

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def stage(self, name: str, key: str) -> Any | None:
        return next((r for r in self._stages.get(name, ()) if r.data.tags.get(schema.KEY) == key), None)

    def stale_stages(self, name: str, key: str) -> list[Any]:
        """Earlier runs of a stage whose inputs have since changed (e.g. a new upstream best)."""
        return [
            r
            for r in self._stages.get(name, ())
            if r.data.tags.get(schema.KEY) != key and schema.SUPERSEDED_BY not in r.data.tags
        ]

    def child(self, parent_id: str, key: str) -> Any | None:
        return self._by_key.get((parent_id, key))

    def points_under(self, parent_id: str) -> list[dict[str, Any]]:
        """The points already tried under a parent, oldest first, for samplers that learn (tpe) to replay."""
        points = []
        for run in self._children.get(parent_id, ()):
            text = run.data.tags.get(schema.POINT)
            if text is not None:
                points.append(json.loads(text))
        return points
