"""What a pipeline produced: frozen records of leaves, parents and stages, and how "best" is chosen."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtree_pipeline.plan.objective import Aggregate, Objective
from runtree_pipeline.states import Origin, Status
from runtree_pipeline.tracking.redact import redact

if TYPE_CHECKING:
    import pandas


LEAF_COUNTS: tuple[str, ...] = (*(origin.value for origin in Origin), "failed", "pruned")
"""The keys of `NodeResult.counts`, in the order reports show them: each `Origin`, then "failed" and "pruned"."""


@dataclass(frozen=True)
class LeafResult:
    run_id: str
    name: str
    params: Mapping[str, Any]
    metrics: Mapping[str, float]
    outputs: Mapping[str, Any]
    status: str
    error: str | None = None
    objective: float | None = None
    """The selected goal's value (`Objective.metric`): what progress, views and plots show."""
    values: tuple[float, ...] | None = None
    """One value per goal of the stage's objective; None when any is missing: then it is never a best."""
    feasible: bool = True
    """Whether its metrics meet the stage's constraints."""
    origin: str = Origin.EXECUTED
    """How this execution got the result: "executed" (a new run), "redone" (an earlier run that had failed or
    been cut off, run again in place) or "reused" (an earlier FINISHED run with the same content key, not run)."""
    pruned_at: int | None = None
    """The step at which its level's pruner stopped it (the run is then KILLED): neither a failure nor a best."""
    artifacts: tuple[str, ...] = ()
    """The outputs that are artifacts of its run (`${best:STAGE.artifacts.KEY}`): their values are `runs:/` URIs."""
    cached_from: str | None = None
    """`cache: true` took this result from an earlier execution's run, which computed it (and holds what the target
    logged itself, e.g. its model)."""
    aggregate: Aggregate | None = None
    """Set on a parent's result standing for its replicates (a level with `aggregate:`): then `run_id` is the
    parent's run, `metrics` the aggregates, and `outputs`/`artifacts` those of the replicate closest to them."""
    closest: str | None = None
    """With `aggregate`: the run of the replicate closest to the aggregate, whose model `register:` takes."""

    @property
    def finished(self) -> bool:
        return self.status == Status.FINISHED

    @property
    def pruned(self) -> bool:
        return self.pruned_at is not None

    @property
    def failed(self) -> bool:
        return self.status != Status.FINISHED and not self.pruned


@dataclass(frozen=True)
class NodeResult:
    """A stage or variant run: its best result and how its leaves went.

    `candidates` are what the best was chosen among: its leaves, except that the replicates of an aggregated level
    stand there as one result, their parent's.
    """

    run_id: str
    name: str
    level: str
    leaves: tuple[LeafResult, ...]
    best: LeafResult | None
    children: tuple[NodeResult, ...] = ()
    changed: bool = True
    artifact_uri: str | None = None
    candidates: tuple[LeafResult, ...] = ()
    front: tuple[LeafResult, ...] = ()
    """With several goals, the candidates on the Pareto front."""

    @property
    def failed(self) -> int:
        return sum(leaf.failed for leaf in self.leaves)

    @property
    def pruned(self) -> int:
        return sum(leaf.pruned for leaf in self.leaves)

    def counts(self) -> dict[str, int]:
        """What this execution did with the leaves, so a resume can be told apart from a fresh run.

        `executed`, `reused` and `redone` partition the leaves; `failed` counts those that did not finish and
        overlaps the first and third (a redo that fails again is both redone and failed; reused leaves never fail);
        `pruned` counts those a pruner stopped, in this execution or (reused) an earlier one.
        """
        counts = dict.fromkeys(LEAF_COUNTS, 0)
        for leaf in self.leaves:
            counts[leaf.origin] += 1
        counts["failed"] = self.failed
        counts["pruned"] = self.pruned
        return counts


@dataclass(frozen=True)
class StageResult:
    name: str
    status: str
    node: NodeResult | None = None
    reason: str | None = None
    upstream: Mapping[str, str] = field(default_factory=dict)

    @property
    def run_id(self) -> str | None:
        return self.node.run_id if self.node else None

    @property
    def best(self) -> LeafResult | None:
        return self.node.best if self.node else None

    @property
    def counts(self) -> dict[str, int]:
        """Leaves executed, reused, redone and failed in this execution (all zero for a skipped stage)."""
        return self.node.counts() if self.node else dict.fromkeys(LEAF_COUNTS, 0)


@dataclass(frozen=True)
class PipelineResult:
    pipeline_id: str
    experiment: str
    experiment_id: str
    tracking_uri: str
    stages: Mapping[str, StageResult]

    @property
    def ok(self) -> bool:
        return all(s.status == Status.FINISHED for s in self.stages.values())

    def to_frame(self) -> pandas.DataFrame:
        """Every run of this execution, one row each, read back from the store: the table `runtree export` writes,
        for analysis in pandas without writing `search_runs` filters (needs pandas, which MLflow brings)."""
        from runtree_pipeline.reports.export import pipeline_frame
        from runtree_pipeline.tracking.mlflow_store import TrackingReader

        return pipeline_frame(TrackingReader(uri=self.tracking_uri, experiment=self.experiment), self.pipeline_id)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pipeline_id": self.pipeline_id,
            "experiment": self.experiment,
            "experiment_id": self.experiment_id,
            "tracking_uri": self.tracking_uri,
            "ok": self.ok,
            "stages": {},
        }
        for name, stage in self.stages.items():
            best = stage.best
            out["stages"][name] = {
                "status": stage.status,
                "reason": stage.reason,
                "run_id": stage.run_id,
                "upstream": dict(stage.upstream),
                "runs": len(stage.node.leaves) + _count_parents(stage.node) if stage.node else 0,
                "leaves": len(stage.node.leaves) if stage.node else 0,
                "failed_leaves": stage.node.failed if stage.node else 0,
                **stage.counts,
                "best": None
                if best is None
                else {
                    "run_id": best.run_id,
                    "name": best.name,
                    "objective": best.objective,
                    "params": redact(dict(best.params)),
                    "metrics": dict(best.metrics),
                    "outputs": redact(dict(best.outputs)),
                    "aggregate": None
                    if best.aggregate is None
                    else {"how": best.aggregate.how, "replicates": best.aggregate.replicates, "closest": best.closest},
                    "front": [member.run_id for member in stage.node.front] if stage.node else [],
                },
            }
        return out


def _count_parents(node: NodeResult) -> int:
    if not node.children and len(node.leaves) == 1 and node.leaves[0].run_id == node.run_id:
        return 0
    return 1 + sum(_count_parents(c) for c in node.children)


def judged(objective: Objective, metrics: Mapping[str, float]) -> dict[str, Any]:
    """A result's `values`, `objective` and `feasible`, as `objective` judges `metrics`."""
    values = objective.values(metrics)
    selected = metrics.get(objective.metric) if objective.metric else None
    if selected is not None and not math.isfinite(selected):
        selected = None
    return {"values": values, "objective": selected, "feasible": objective.feasible(metrics)}
