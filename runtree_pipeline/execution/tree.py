"""The run tree as the scheduler grows it: its open nodes, and what each run records when it ends.

Kept apart from the loop in `scheduler.py`, which decides what runs when: here is what a finished leaf, a reused
leaf and a finished parent write to the store (the tag format itself lives in `tracking/tags.py`).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

from runtree_pipeline.execution.leaf import LeafOutcome
from runtree_pipeline.execution.samplers import Sampler, Told
from runtree_pipeline.plan.objective import Objective
from runtree_pipeline.plan.params import flatten
from runtree_pipeline.plan.stages import StageSpec
from runtree_pipeline.plan.sweeps import Point, SweepSpec
from runtree_pipeline.results import LeafResult, NodeResult, judged
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
    candidates: list[LeafResult] = field(default_factory=list)
    """What its best is chosen among: the leaves under it, an aggregated level's replicates standing as one."""
    replicates: list[LeafResult] = field(default_factory=list)
    """With `aggregate:` on its children's level, one result per child: what is aggregated."""
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
        result = _judgement(stage.spec.objective, outcome)
        how = telling(stage.spec.objective, result["values"], outcome.metrics, pruned=outcome.pruned_at is not None)
        tags.update(told(leaf.parent, leaf.point, how))
        if outcome.ok and not result["feasible"]:
            tags[schema.FEASIBLE] = "false"
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


def told(parent: OpenParent | None, point: Point | None, how: Told) -> dict[str, str]:
    """Where a child's values come among its parent's tells, written in the child's end write just before the
    scheduler tells it (nothing tells in between), so a resume can replay the tells in their order; nothing when
    the parent's sampler does not learn, or a replay already told this child."""
    if parent is None or point is None:
        return {}
    position = parent.sampler.tell_position(point)
    return schema.told_tag(position, how.values, how.violations) if position is not None else {}


def telling(
    objective: Objective,
    values: tuple[float, ...] | None,
    metrics: Mapping[str, float],
    *,
    pruned: bool = False,
    reported: Mapping[int, float] | None = None,
) -> Told:
    """How a child ended, as its parent's sampler is told it."""
    violations = tuple(objective.violations(metrics)) if objective.constraints else None
    return Told(values, pruned=pruned, reported=reported, violations=violations)


def _judgement(objective: Objective, outcome: LeafOutcome) -> dict[str, Any]:
    """A leaf's `values`, `objective` and `feasible`; one that failed or was pruned has none, whatever it returned."""
    if not outcome.ok:
        return {"values": None, "objective": None, "feasible": True}
    return judged(objective, outcome.metrics)


def leaf_result(leaf: LeafJob, slot: Slot, outcome: LeafOutcome) -> LeafResult:
    return LeafResult(
        run_id=slot.ref.run_id,
        name=leaf.name,
        params=leaf.params,
        metrics=outcome.metrics,
        outputs=outcome.outputs,
        status=_status(outcome),
        error=outcome.error,
        **_judgement(leaf.stage.spec.objective, outcome),
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
        **_judgement(leaf.stage.spec.objective, outcome),
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


def parent_write(parent: OpenParent, result: LeafResult | None, up: Told, front: Sequence[LeafResult] = ()) -> Write:
    """How a parent's children went, and what it is judged by: its best leaf's params and metrics (`best.*`,
    `best_*`), or over an aggregated level the aggregate of its replicates (`mean_*`, `std_*`); with several
    objectives, its Pareto front."""
    stage = parent.stage
    failed_leaves = sum(leaf.failed for leaf in parent.leaves)
    # Children are parents (each with its leaves) or leaves: with per-variant spaces, both under one stage.
    direct = len(parent.leaves) - sum(len(node.leaves) for node in parent.children)
    direct_failed = failed_leaves - sum(node.failed for node in parent.children)
    is_root = parent.up is None
    aggregate = result.aggregate if result is not None and result.run_id == parent.slot.ref.run_id else None
    best = result if aggregate is None else None
    tags: dict[str, Any] = {
        **(stage.own_tags if is_root else told(parent.up, parent.point, up)),
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
    files: dict[str, str] = dict(stage.artifacts) if is_root else {}
    clear: tuple[str, ...] = ()
    if best is not None:
        metrics = schema.best_metrics(best.metrics)
    if aggregate is not None:
        metrics = aggregate.recorded()
        tags.update(schema.aggregate_tags(aggregate.how, aggregate.replicates))
        if not result.feasible:
            tags[schema.FEASIBLE] = "false"
        elif is_root:  # the stage judged by its own replicates is its best
            tags[schema.BEST_RUN_ID] = parent.slot.ref.run_id
    if front:
        tags.update(schema.pareto_tag([member.run_id for member in front]))
        files[schema.PARETO_ARTIFACT] = json.dumps(_front_members(stage.spec.objective, front), indent=2)
    if result is not None:
        clear = (schema.ERROR,) if parent.slot.origin is not Origin.EXECUTED else ()
    else:
        tags[schema.ERROR] = no_result(stage.spec.objective, parent.candidates or parent.replicates)
    failed = result is None or (is_root and aggregate is not None and not result.feasible)
    if result is not None and failed:
        tags[schema.ERROR] = no_result(stage.spec.objective, [result])
        clear = ()
    if stage.stopped_by is not None and is_root:
        tags[schema.ERROR] = f"stopped after {stage.stopped_by.name} failed (on_failure=stop)"
        clear = ()
    return Write(
        status=Status.FAILED if failed else Status.FINISHED,
        params=flatten(dict(parent.params)),
        metrics=metrics,
        tags=tags,
        artifacts=files or None,
        clear_tags=clear,
        ended_at=time.time(),
    )


def no_result(objective: Objective, results: Sequence[LeafResult]) -> str:
    """Why a parent has no best: nothing finished with its objective's values, or nothing met the constraints."""
    scored = [r for r in results if r.finished and r.values is not None]
    if scored:
        return f"none of {len(scored)} finished meets the constraints ({', '.join(map(str, objective.constraints))})"
    return f"no successful leaf among {len(results)}"


def _front_members(objective: Objective, front: Sequence[LeafResult]) -> list[dict[str, Any]]:
    return [
        {
            "run_id": member.run_id,
            "name": member.name,
            "values": dict(zip(objective.metrics, member.values or (), strict=True)),
            "params": redact(flatten(dict(member.params))),
        }
        for member in front
    ]


def aggregated(objective: Objective, parent: OpenParent, how: str) -> LeafResult | None:
    """The parent standing for its replicates: judged by their aggregate, with the params they share, and the
    outputs of the one closest to it (whose model `register:` takes). None when no replicate finished."""
    done = [r for r in parent.replicates if r.finished and r.values is not None]
    if not done:
        return None
    agg = objective.aggregate(how, [(r.metrics, r.values) for r in done])
    closest = done[agg.closest]
    return LeafResult(
        run_id=parent.slot.ref.run_id,
        name=parent.name,
        params=parent.params,
        metrics=agg.metrics,
        outputs=closest.outputs,
        status=Status.FINISHED,
        **judged(objective, agg.metrics),
        artifacts=closest.artifacts,
        aggregate=agg,
        closest=closest.cached_from or closest.closest or closest.run_id,
    )


def _on_driver_clock(ended_at: float | None, start_ms: int | None) -> float | None:
    """A worker's end time, kept between the run's start and now: a worker on another machine has its own clock."""
    if ended_at is None:
        return None
    ended_at = min(ended_at, time.time())
    return max(ended_at, start_ms / 1000) if start_ms is not None else ended_at
