"""runtree_pipeline: Hydra-declared DAGs of sweep stages, recorded as an MLflow run tree.

Names are resolved on first use (PEP 562), so `python -m runtree_pipeline` imports nothing of its own before its
entry point has installed signal handling, and importing the package never pulls in mlflow, optuna or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtree_pipeline.api import run_pipeline, run_plan
    from runtree_pipeline.errors import ConfigError, ConfigErrors, Interrupted, Preempted, Pruned
    from runtree_pipeline.execution.checkpoints import Checkpoint, last_checkpoint, save_checkpoint
    from runtree_pipeline.execution.reporting import report
    from runtree_pipeline.plan.stages import Plan, StageSpec, build_plan
    from runtree_pipeline.results import LeafResult, NodeResult, PipelineResult, StageResult

_EXPORTS = {
    "run_pipeline": "api",
    "run_plan": "api",
    "ConfigError": "errors",
    "ConfigErrors": "errors",
    "Interrupted": "errors",
    "Preempted": "errors",
    "Pruned": "errors",
    "report": "execution.reporting",
    "Checkpoint": "execution.checkpoints",
    "last_checkpoint": "execution.checkpoints",
    "save_checkpoint": "execution.checkpoints",
    "Plan": "plan.stages",
    "StageSpec": "plan.stages",
    "build_plan": "plan.stages",
    "LeafResult": "results",
    "NodeResult": "results",
    "PipelineResult": "results",
    "StageResult": "results",
}

__all__ = [
    "Checkpoint",
    "ConfigError",
    "ConfigErrors",
    "Interrupted",
    "LeafResult",
    "NodeResult",
    "PipelineResult",
    "Plan",
    "Preempted",
    "Pruned",
    "StageResult",
    "StageSpec",
    "build_plan",
    "last_checkpoint",
    "report",
    "run_pipeline",
    "run_plan",
    "save_checkpoint",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runtree_pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
