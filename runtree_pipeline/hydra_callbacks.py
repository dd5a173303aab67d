"""Hydra callbacks: work that must happen once in the launching process, before parallel jobs start."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class PrepareStore(Callback):
    """Create the embedded sqlite store before a parallel multirun: jobs opening a brand-new file at once race
    on MLflow's schema migrations and crash (`duplicate column name`)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("dry_run"):
            return
        from .tracking import prepare_store

        prepare_store(config.get("tracking_uri"))
