"""Hydra callbacks: work that must happen once in the launching process, before Hydra creates directories or
parallel jobs start."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: a launch sharing the directory is not seen
    fcntl = None  # type: ignore[assignment]

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
"""The run's (or multirun's) output directory and those of its parents that this launch created, deepest first;
empty when the output directory itself was there already."""
_in_use: int | None = None
"""A descriptor of this launch's output directory, holding a shared lock on it while the process lives."""


class NoteNewOutputDir(Callback):
    """Create the output directory (`outputs/DATE/TIME`, `multirun/DATE/TIME`) before Hydra does, which accepts it
    existing, so as to know whether it is this launch's own: a job that records nothing (an invalid config, a dry
    run) takes away what this launch created, never a directory that was there before.

    Two launches started in the same second share that path; only the one that created it owns it, and it still
    leaves it alone while the other uses it (each holds a shared lock on it; removing takes the exclusive one)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _note_new(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _note_new(config, "hydra.sweep.dir")


def forget_new_dirs() -> None:
    """Start of a launch: nothing is known to be this launch's own yet."""
    global _in_use
    _created.clear()
    if _in_use is not None:
        os.close(_in_use)
        _in_use = None


def _note_new(config: DictConfig, key: str) -> None:
    forget_new_dirs()
    try:
        target = Path(os.path.abspath(str(OmegaConf.select(config, key))))
    except Exception:  # noqa: BLE001 - a path that does not resolve here is left alone
        return
    missing = []
    path = target
    while not path.exists() and path.parent != path:
        missing.append(path)
        path = path.parent
    made: list[Path] = []
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:  # another launch made it a moment ago
            continue
        except OSError:  # Hydra meets the same error and reports it
            break
        made.insert(0, path)
    if made and made[0] == target:
        _created.extend(made)
    _use(target)


def _use(path: Path) -> None:
    global _in_use
    if fcntl is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # removed again by the launch that made it: Hydra makes it anew, for this launch alone
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:  # the launch that made it is removing it
        os.close(fd)
        return
    _in_use = fd


@contextlib.contextmanager
def _alone() -> Iterator[bool]:
    """Whether no other launch uses this launch's output directory (holds its shared lock); while so, none can
    start to."""
    if fcntl is None or _in_use is None:
        yield True
        return
    try:
        fcntl.flock(_in_use, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(_in_use, fcntl.LOCK_SH | fcntl.LOCK_NB)


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
    with _alone() as alone:
        return alone and _remove(job, launch_dir)


def _remove(job: Path, launch_dir: str) -> bool:
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
    if not _created:
        return
    with _alone() as alone:
        for path in _created if alone else ():
            try:
                if path.is_dir() and {p.name for p in path.iterdir()} <= {"multirun.yaml"}:
                    (path / "multirun.yaml").unlink(missing_ok=True)
                    path.rmdir()
            except OSError:
                return
