"""Hydra callbacks: work that must happen once in the launching process, before parallel jobs start."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

SEQUENTIAL_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


class PrepareStore(Callback):
    """Create the embedded sqlite store before a parallel multirun: jobs opening a brand-new file at once race
    on MLflow's schema migrations and crash (`duplicate column name`).

    Hydra's own launcher runs jobs one after another, so there is no race, and leaving the store to the first job
    keeps a multirun whose config turns out invalid from creating an empty store.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("dry_run") or OmegaConf.select(config, "hydra.launcher._target_") == SEQUENTIAL_LAUNCHER:
            return
        from runtree_pipeline.tracking.mlflow_store import prepare_store

        prepare_store(config.get("tracking_uri"))
