"""What crosses the tracking boundary: plain, picklable values instead of MLflow entities.

A worker gets a `RunRef` (enough to log to its run from any process or machine); readers get `RunRecord`s, so
resume, the views and the export never depend on MLflow's `Run` classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


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


@dataclass(frozen=True)
class Write:
    """Everything one run records when it ends, handed to `RunStore.finish` as one value so that each store reads
    the same fields instead of repeating them as parameters."""

    status: str
    params: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, Any] = field(default_factory=dict)
    artifacts: Mapping[str, str | bytes] | None = None
    clear_tags: tuple[str, ...] = ()
    """Tags the end contradicts (an error a redo no longer has), removed from the run."""
    ended_at: float | None = None
    """The recorded end and the metrics' timestamp (seconds since the epoch; now if None), whenever the write goes
    out."""
    step: int = 0
    """The metrics' step: for a leaf that reported steps its last, so what it returned is the run's latest value."""
