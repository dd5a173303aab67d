"""The run tree as the scheduler grows it: its open nodes, and what each run records when it ends.

Kept apart from the loop in `scheduler.py`, which decides what runs when: here is what a finished leaf, a reused
leaf and a finished parent write to the store (the tag format itself lives in `tracking/tags.py`).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

from runtree_pipeline.execution.leaf import LeafOutcome, objective_value
from runtree_pipeline.execution.samplers import Sampler
from runtree_pipeline.plan.params import flatten
from runtree_pipeline.plan.stages import StageSpec
from runtree_pipeline.plan.sweeps import Point, SweepSpec
from runtree_pipeline.results import LeafResult, NodeResult
from runtree_pipeline.states import Origin, Status
from runtree_pipeline.tracking import tags as schema
from runtree_pipeline.tracking.records import RunRecord, RunRef, Write
from runtree_pipeline.tracking.redact import redact


@dataclass(frozen=True)
class Slot:
    """A run being filled: new (executed), redone in place, or reused as it was (then `record` holds it)."""

    ref: RunRef
    key: str
    origin: Origin
    record: RunRecord | None = None
    cached: bool = False
    """A new run of this execution taking an earlier execution's finished leaf (`record`) instead of running."""

    @property
    def created(self) -> bool:
        """Created by this execution: removed, not ended, if it never gets to run."""
        return self.origin is Origin.EXECUTED or self.cached


@dataclass(eq=False)
class StageRun:
    spec: StageSpec
    slot: Slot
    upstream: dict[str, str]
    own_tags: dict[str, Any]
    artifacts: dict[str, str]
    stopped_by: LeafResult | None = None
    leaf_seconds: float | None = None
    """How long the latest leaf took from submit to its end: runs are created ahead only for short leaves."""
    last_submit: float | None = None
    submit_interval: float | None = None
    """Time between the stage's latest two submits: a run created k leaves ahead starts about k of these early."""
    artifact_uris: frozenset[str] = frozenset()
    """Upstream artifacts its params refer to: a leaf gets a local copy of each instead of the URI."""


@dataclass(eq=False)
class LeafJob:
    stage: StageRun
    parent: OpenParent | None
    point: Point | None
    name: str
    params: dict[str, Any]
    slot: Future[Slot]
    submitted_at: float | None = None
    attempts: int = 0


@dataclass(eq=False)
class OpenParent:
    """An open parent: asks its sampler for children, and is recorded once the last of them has ended."""

    stage: StageRun
    up: OpenParent | None
    point: Point | None
    slot: Slot
    name: str
    level: str
    params: dict[str, Any]
    levels: tuple[SweepSpec, ...]
    child_tags: dict[str, Any]
    sampler: Sampler
    changed: bool
    ahead: deque[LeafJob] = field(default_factory=deque)
    open_children: int = 0
    leaves: list[LeafResult] = field(default_factory=list)
    children: list[NodeResult] = field(default_factory=list)
    drawn: int = 0
    first_asked: float | None = None
    budget_spent: bool = False
    draw_limit: int | None = None
    """On resume, the points drawn before a time budget ran out: as many are drawn again, and no more."""
    own_tags: dict[str, str] = field(default_factory=dict)
    """What the parent records about itself when it is created and again when it ends: its study's seed."""

    @property
    def drawing_over(self) -> bool:
        limited = self.draw_limit is not None and self.drawn >= self.draw_limit
        return self.sampler.exhausted or self.budget_spent or limited

    @property
    def done(self) -> bool:
        return (self.drawing_over or self.stage.stopped_by is not None) and self.open_children == 0


def leaf_write(leaf: LeafJob, slot: Slot, outcome: LeafOutcome) -> Write:
    """A leaf's params, the metrics its target returned, its outputs and its error; a stage without sweeps also
    carries the stage's own tags and config. A pruned leaf ends KILLED, its reported metrics left as they are."""
    stage = leaf.stage
    tags: dict[str, Any] = schema.leaf_tags(
        returned=outcome.metrics, outputs=outcome.outputs, artifacts=outcome.artifacts
    )
    files: dict[str, str] = {}
    if leaf.parent is None:
        tags.update(stage.own_tags)
        files.update(stage.artifacts)
    else:
        tags.update(told(leaf.parent, leaf.point, objective_value(outcome, stage.spec.objective.metric)))
        if leaf.parent.sampler.prunes and leaf.point is not None:
            tags.update(schema.reported_tag(leaf.parent.sampler.reported(leaf.point)))
    if outcome.outputs:
        files[schema.OUTPUTS_ARTIFACT] = json.dumps(redact(dict(outcome.outputs)), indent=2, sort_keys=True)
    if outcome.pruned_at is not None:
        tags.update(schema.pruned_tags(outcome.pruned_at))
    if stage.spec.limits.retries:
        tags[schema.ATTEMPTS] = max(leaf.attempts, 1)
    if outcome.error:
        tags[schema.ERROR] = outcome.error
        if outcome.traceback:
            files[schema.TRACEBACK_ARTIFACT] = outcome.traceback
    return Write(
        status=_status(outcome),
        params=flatten(dict(leaf.params)),
        metrics={k: v for k, v in outcome.metrics.items() if k not in outcome.logged},
        tags=tags,
        artifacts=files,
        clear_tags=(schema.ERROR,) if outcome.error is None and slot.origin is Origin.REDONE else (),
        ended_at=_on_driver_clock(outcome.ended_at, slot.ref.start_time),
        step=outcome.last_step or 0,
    )


def _status(outcome: LeafOutcome) -> Status:
    if outcome.pruned_at is not None:
        return Status.KILLED
    return Status.FINISHED if outcome.ok else Status.FAILED


def told(parent: OpenParent | None, point: Point | None, value: float | None) -> dict[str, str]:
    """Where a child's value comes among its parent's tells, written in the child's end write just before the
    scheduler tells it (nothing tells in between), so a resume can replay the tells in their order; nothing when
    the parent's sampler does not learn, or a replay already told this child."""
    if parent is None or point is None:
        return {}
    position = parent.sampler.tell_position(point)
    return schema.told_tag(position, value) if position is not None else {}


def leaf_result(leaf: LeafJob, slot: Slot, outcome: LeafOutcome) -> LeafResult:
    return LeafResult(
        run_id=slot.ref.run_id,
        name=leaf.name,
        params=leaf.params,
        metrics=outcome.metrics,
        outputs=outcome.outputs,
        status=_status(outcome),
        error=outcome.error,
        objective=objective_value(outcome, leaf.stage.spec.objective.metric),
        origin=slot.origin,
        pruned_at=outcome.pruned_at,
        artifacts=outcome.artifacts,
    )


def reused_result(leaf: LeafJob, record: RunRecord, outputs: Mapping[str, Any]) -> LeafResult:
    """A leaf FINISHED (or pruned) by an earlier execution with the same content key: its returned metrics, not run
    again."""
    metrics = {k: record.metrics[k] for k in schema.returned_of(record.tags) if k in record.metrics}
    outcome = LeafOutcome(metrics=metrics, outputs=outputs, pruned_at=schema.pruned_at(record.tags))
    return LeafResult(
        run_id=record.run_id,
        name=leaf.name,
        params=leaf.params,
        metrics=metrics,
        outputs=outcome.outputs,
        status=_status(outcome),
        objective=objective_value(outcome, leaf.stage.spec.objective.metric),
        origin=Origin.REUSED,
        pruned_at=outcome.pruned_at,
        artifacts=schema.artifacts_of(record.tags),
        cached_from=record.tags.get(schema.CACHED_FROM),
    )


def cached_write(leaf: LeafJob, slot: Slot, result: LeafResult) -> Write:
    """A leaf taken from an earlier execution's run with the same content key (`result`, read from it): what that
    run's end write held, on this execution's run, naming the run that computed it. Artifact URIs still point at
    that run: nothing is copied. A pruned one stays pruned, at the same step, with the curve it reported."""
    assert slot.record is not None and result.cached_from is not None
    outcome = LeafOutcome(
        metrics=result.metrics,
        outputs=result.outputs,
        pruned_at=result.pruned_at,
        artifacts=result.artifacts,
        ended_at=time.time(),
    )
    write = leaf_write(leaf, slot, outcome)
    tags = {**write.tags, schema.CACHED_FROM: result.cached_from}
    tags.pop(schema.ATTEMPTS, None)  # it was not run here
    if schema.REPORTED in tags:  # this execution's sampler has heard no report from it: the original's curve
        tags[schema.REPORTED] = slot.record.tags.get(schema.REPORTED, "[]")
    return replace(write, tags=tags)


def parent_write(parent: OpenParent, best: LeafResult | None) -> Write:
    """How a parent's children went, and its best leaf's params and metrics (`best.*`, `best_*`)."""
    stage = parent.stage
    failed_leaves = sum(leaf.failed for leaf in parent.leaves)
    # Children are parents (each with its leaves) or leaves: with per-variant spaces, both under one stage.
    direct = len(parent.leaves) - sum(len(node.leaves) for node in parent.children)
    direct_failed = failed_leaves - sum(node.failed for node in parent.children)
    is_root = parent.up is None
    tags: dict[str, Any] = {
        **(stage.own_tags if is_root else told(parent.up, parent.point, best.objective if best else None)),
        **parent.own_tags,
        **schema.parent_tags(
            children=len(parent.children) + direct,
            failed_children=sum(node.best is None for node in parent.children) + direct_failed,
            failed_leaves=failed_leaves,
            best_run_id=best.run_id if best else None,
            best_params=flatten(dict(best.params)) if best else {},
            pruned_leaves=sum(leaf.pruned for leaf in parent.leaves),
        ),
    }
    if parent.budget_spent or parent.draw_limit is not None:
        tags.update(schema.budget_tags(drawn=parent.drawn))
    earlier = parent.slot.record.tags if parent.slot.record is not None else {}
    if schema.PRUNED_CHILDREN not in tags and schema.PRUNED_CHILDREN in earlier:
        tags[schema.PRUNED_CHILDREN] = 0  # its pruned leaves were run to their end by a resume without the pruner
    metrics: dict[str, float] = {}
    clear: tuple[str, ...] = ()
    if best is not None:
        metrics = schema.best_metrics(best.metrics)
        clear = (schema.ERROR,) if parent.slot.origin is not Origin.EXECUTED else ()
    else:
        tags[schema.ERROR] = f"no successful leaf among {len(parent.leaves)}"
    if stage.stopped_by is not None and is_root:
        tags[schema.ERROR] = f"stopped after {stage.stopped_by.name} failed (on_failure=stop)"
        clear = ()
    return Write(
        status=Status.FINISHED if best is not None else Status.FAILED,
        params=flatten(dict(parent.params)),
        metrics=metrics,
        tags=tags,
        artifacts=stage.artifacts if is_root else None,
        clear_tags=clear,
        ended_at=time.time(),
    )


def _on_driver_clock(ended_at: float | None, start_ms: int | None) -> float | None:
    """A worker's end time, kept between the run's start and now: a worker on another machine has its own clock."""
    if ended_at is None:
        return None
    ended_at = min(ended_at, time.time())
    return max(ended_at, start_ms / 1000) if start_ms is not None else ended_at
