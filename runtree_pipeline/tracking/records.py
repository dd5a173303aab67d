"""What crosses the tracking boundary: plain, picklable values instead of MLflow entities.

A worker gets a `RunRef` (enough to log to its run from any process or machine); readers get `RunRecord`s, so
resume, the views and the export never depend on MLflow's `Run` classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RunRef:
    """A run to log to: its id, where it lives, what the UI calls it, and what a target sees of it as active."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    name: str
    artifact_uri: str | None = None
    start_time: int | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunRecord:
    """A run as it was read back from the store."""

    run_id: str
    experiment_id: str
    name: str
    status: str
    start_time: int | None = None
    end_time: int | None = None
    artifact_uri: str | None = None
    parent_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)

    def ref(self, tracking_uri: str) -> RunRef:
        return RunRef(
            self.run_id, self.experiment_id, tracking_uri, self.name, self.artifact_uri, self.start_time, self.tags
        )
