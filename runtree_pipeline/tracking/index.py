"""One pipeline execution's runs, indexed once for everything that reads a tree back: resume and the views.

Runs are identified by content (`runtree.key`: stage, target, merged params with upstream values resolved, point
name), not by name, so a resume reuses exactly the runs whose result would not change and redoes the rest in place.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runtree_pipeline.states import Status
from runtree_pipeline.tracking import tags as schema
from runtree_pipeline.tracking.records import RunRecord


@dataclass(frozen=True)
class PreviousPoint:
    """A point a previous execution asked a learning sampler for, and what it was told, so a resume can ask and tell
    the sampler again in the same order.

    `index` and `asked_after` (how many tells came before the ask) are None in stores written before asks were
    recorded; `told` (its place among the tells) is None while the point was never told, e.g. cut off by a kill.
    """

    params: Mapping[str, Any]
    index: int | None = None
    asked_after: int | None = None
    told: int | None = None
    value: tuple[float, ...] | None = None
    """The values it was told with, one per objective; None: told as a failure."""
    violations: tuple[float, ...] | None = None
    pruned: bool = False
    reported: Mapping[int, float] = field(default_factory=dict)
    """The objective's intermediate values it reported, for a pruner to be told them again."""


class RunIndex:
    """Empty for a fresh execution; the runs of one pipeline execution otherwise, oldest first."""

    def __init__(self, runs: Iterable[RunRecord] = ()) -> None:
        self.runs = sorted(runs, key=lambda r: r.start_time or 0)
        self.by_id = {r.run_id: r for r in self.runs}
        self._stage_runs: dict[str, list[RunRecord]] = defaultdict(list)
        self._children: dict[str, list[RunRecord]] = defaultdict(list)
        self._by_key: dict[tuple[str | None, str], RunRecord] = {}
        for run in self.runs:
            if schema.is_stage(run.tags):
                self._stage_runs[run.tags.get(schema.STAGE, "")].append(run)
            elif run.parent_id is not None:
                self._children[run.parent_id].append(run)
            key = run.tags.get(schema.KEY)
            if key is None:
                continue
            slot = (run.parent_id, key)
            previous = self._by_key.get(slot)
            if previous is None or (not is_kept(previous) and is_kept(run)):
                self._by_key[slot] = run

    # ---- what resume asks ----

    def stage_run(self, name: str, key: str) -> RunRecord | None:
        return next((r for r in self._stage_runs.get(name, ()) if r.tags.get(schema.KEY) == key), None)

    def stale_stages(self, name: str, key: str) -> list[RunRecord]:
        """Earlier runs of a stage whose inputs have since changed (e.g. a new upstream best)."""
        return [
            r
            for r in self._stage_runs.get(name, ())
            if r.tags.get(schema.KEY) != key and schema.SUPERSEDED_BY not in r.tags
        ]

    def child(self, parent_id: str, key: str) -> RunRecord | None:
        return self._by_key.get((parent_id, key))

    def points_under(self, parent_id: str) -> list[PreviousPoint]:
        """The points already tried under a parent, oldest first, for samplers that learn (tpe) to replay; one per
        content key, the run a resume reuses or redoes."""
        points = []
        for run in self._children.get(parent_id, ()):
            params = schema.point_of(run.tags)
            if params is None or self._by_key.get((parent_id, run.tags.get(schema.KEY, ""))) is not run:
                continue
            index, asked_after = schema.asked_of(run.tags) or (None, None)
            told, values, violations = schema.told_of(run.tags) or (None, None, None)
            points.append(
                PreviousPoint(
                    params,
                    index,
                    asked_after,
                    told=told,
                    value=values,
                    violations=violations,
                    pruned=schema.pruned_at(run.tags) is not None,
                    reported=schema.reported_of(run.tags),
                )
            )
        return points

    # ---- what the views ask: superseded stage runs left out ----

    @property
    def stages(self) -> list[RunRecord]:
        return [r for r in self.runs if schema.is_stage(r.tags) and schema.SUPERSEDED_BY not in r.tags]

    def stage(self, name: str) -> RunRecord:
        for run in self.stages:
            if run.tags.get(schema.STAGE) == name:
                return run
        have = ", ".join(r.tags.get(schema.STAGE, "?") for r in self.stages)
        raise LookupError(f"no stage '{name}' in pipeline {self.pipeline_id} (it has: {have})")

    def children(self, run_id: str) -> list[RunRecord]:
        return self._children.get(run_id, [])

    @property
    def pipeline_id(self) -> str | None:
        stages = self.stages
        return stages[0].tags.get(schema.PIPELINE_ID) if stages else None


def is_kept(run: RunRecord) -> bool:
    """A run with a result to keep: it finished, or its pruner stopped it (kept only where a pruner still decides)."""
    return run.status == Status.FINISHED or schema.pruned_at(run.tags) is not None
