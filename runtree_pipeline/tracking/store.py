"""The store interface the scheduler writes through; `MlflowStore` implements it, tests also use an in-memory one.

Writes may complete in the background (against a server they overlap with the next run's work): `flush` waits
for them and raises what failed, and `end_open_runs` guarantees nothing is left RUNNING after an interruption.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import Any, Protocol

from runtree_pipeline.tracking.records import RunRecord, RunRef, Write


class RunStore(Protocol):
    uri: str
    experiment: str
    experiment_id: str
    created_runs: bool
    prefetch: int

    def create(self, *, name: str, tags: Mapping[str, Any], parent_id: str | None = None) -> RunRef:
        """A RUNNING run with all its tags, in one call."""

    def create_later(self, *, name: str, tags: Mapping[str, Any], parent_id: str | None = None) -> Future[RunRef]:
        """`create`, on an I/O thread where a round trip can overlap other work."""

    def finish(self, run: RunRef, write: Write) -> None:
        """Everything a run learned, then its end; may complete in the background."""

    def annotate(self, run: RunRef, tags: Mapping[str, Any]) -> None:
        """Tags on a run that is otherwise done."""

    def reopen(self, run: RunRef, clear_tags: Iterable[str] = ()) -> None:
        """RUNNING again, before a resume redoes or extends it, without the tags the redo contradicts (a pruning)."""

    def discard(self, run: RunRef) -> None:
        """A run created ahead of need that never ran: removed, so it never shows up as a run."""

    def attach(self, run: RunRef, files: Mapping[str, str | bytes]) -> None:
        """Artifacts for a run that may already have ended."""

    def pipeline_runs(self, pipeline_id: str) -> list[RunRecord]: ...

    def stage_history(self, stage: str) -> list[RunRecord]:
        """Every run any execution of this experiment recorded under stage `stage`: what the cache looks in."""

    def latest_pipeline_id(self) -> str | None: ...

    def outputs_of(self, run: RunRecord) -> dict[str, Any]: ...

    def flush(self) -> None: ...

    def end_open_runs(self, status: str) -> int:
        """End whatever is still RUNNING; returns how many."""

    def close(self) -> None: ...
