"""Hydra callbacks: work that must happen once in the launching process, before Hydra creates directories or
parallel jobs start."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
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


_created: list[Path] = []
"""The run's (or multirun's) output directory and those of its parents that did not exist before Hydra made them,
deepest first."""


class NoteNewOutputDir(Callback):
    """Note which directories of the output path (`outputs/DATE/TIME`, `multirun/DATE/TIME`) are about to be
    created by this launch, before Hydra creates them with the job: a job that records nothing (an invalid config, a
    dry run) takes exactly those away again, and a directory that was there before is never touched."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _note_new(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _note_new(config, "hydra.sweep.dir")


def forget_new_dirs() -> None:
    """Start of a launch: nothing is known to be this launch's own yet."""
    _created.clear()


def _note_new(config: DictConfig, key: str) -> None:
    _created.clear()
    try:
        path = Path(os.path.abspath(str(OmegaConf.select(config, key))))
    except Exception:  # noqa: BLE001 - a path that does not resolve here is left alone
        return
    while not path.exists() and path.parent != path:
        _created.append(path)
        path = path.parent


def discard_output_dir(output_dir: str, *, launch_dir: str, job_name: str) -> bool:
    """Remove a job's output directory when this launch created it and it holds only what Hydra wrote at the start
    (`.hydra/` and the job's log), then the parents created with it that are left empty (a multirun's directory
    with only its `multirun.yaml`). Returns whether it was removed.

    In a job of a parallel multirun (another process) nothing was noted, and nothing is removed.
    """
    job = Path(output_dir)
    if not _created or not (job == _created[0] or _created[0] in job.parents):
        return False
    if not job.is_dir() or {p.name for p in job.iterdir()} - {".hydra", f"{job_name}.log"}:
        return False
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and job in Path(handler.baseFilename).parents:
            root.removeHandler(handler)
            handler.close()
    if Path.cwd() == job or job in Path.cwd().parents:
        os.chdir(launch_dir)  # hydra.job.chdir=true
    try:
        shutil.rmtree(job)
    except OSError:  # tidying up must not hide the error the user is being told about
        return False
    discard_empty_dirs()
    return True


def discard_empty_dirs() -> None:
    """Remove the directories this launch created that hold nothing of a job: empty, or a multirun's directory with
    only its `multirun.yaml` (a multirun whose later job Hydra could not compose, so none ran)."""
    for path in _created:
        try:
            if path.is_dir() and {p.name for p in path.iterdir()} <= {"multirun.yaml"}:
                (path / "multirun.yaml").unlink(missing_ok=True)
                path.rmdir()
        except OSError:
            return
