"""runtree_pipeline: Hydra-declared DAGs of sweep stages, recorded as an MLflow run tree.

Importing the package stays cheap (no mlflow, optuna or torch) so that `dry_run=true` and `--help` are instant.
"""

from __future__ import annotations

from .api import run_pipeline, run_plan
from .errors import ConfigError, ConfigErrors, Interrupted
from .plan import Plan, StageSpec, build_plan
from .results import LeafResult, NodeResult, PipelineResult, StageResult

__all__ = [
    "ConfigError",
    "ConfigErrors",
    "Interrupted",
    "LeafResult",
    "NodeResult",
    "PipelineResult",
    "Plan",
    "StageResult",
    "StageSpec",
    "build_plan",
    "run_pipeline",
    "run_plan",
]
