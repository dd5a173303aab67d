"""What a pipeline produced: frozen records of leaves, parents and stages, and how "best" is chosen."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .redact import redact


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


@dataclass(frozen=True)
class NodeResult:
    """A stage or variant run: its best leaf and how its leaves went."""

    run_id: str
    name: str
    level: str
    leaves: tuple[LeafResult, ...]
    best: LeafResult | None
    children: tuple[NodeResult, ...] = ()
    changed: bool = True
    artifact_uri: str | None = None

    @property
    def failed(self) -> int:
        return sum(leaf.status != "FINISHED" for leaf in self.leaves)


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


@dataclass(frozen=True)
class PipelineResult:
    pipeline_id: str
    experiment: str
    experiment_id: str
    tracking_uri: str
    stages: Mapping[str, StageResult]

    @property
    def ok(self) -> bool:
        return all(s.status == "FINISHED" for s in self.stages.values())

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
                "best": None
                if best is None
                else {
                    "run_id": best.run_id,
                    "name": best.name,
                    "objective": best.objective,
                    "params": redact(dict(best.params)),
                    "metrics": dict(best.metrics),
                    "outputs": redact(dict(best.outputs)),
                },
            }
        return out


def _count_parents(node: NodeResult) -> int:
    if not node.children and len(node.leaves) == 1 and node.leaves[0].run_id == node.run_id:
        return 0
    return 1 + sum(_count_parents(c) for c in node.children)


def select_best(leaves: Iterable[LeafResult], *, mode: str) -> LeafResult | None:
    """Best finished leaf by objective; NaN/inf never win. First seen wins ties, so the choice is stable."""
    best = None
    for leaf in leaves:
        value = leaf.objective
        if leaf.status != "FINISHED" or value is None or not math.isfinite(value):
            continue
        if best is None or (value < best.objective if mode == "min" else value > best.objective):
            best = leaf
    return best
