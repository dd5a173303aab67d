"""`save_checkpoint` and `last_checkpoint` inside a leaf: a long trial's state kept on its own run, where a retry, a
resume or a worker on another machine finds it.

A checkpoint is state of a run, not an input: it never enters a content key, and the cache, which only takes
finished runs, never hands one to another execution. Every way a leaf runs again (a retry, `resume=`, a command's
program started anew) runs in the same run, so its newest checkpoint is there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from runtree_pipeline.execution.reporting import current_leaf, stop_if_preempted, tell_restored


@dataclass(frozen=True)
class Checkpoint:
    """The newest checkpoint of the calling leaf's run: a local copy of what was saved, and its step."""

    path: Path
    """A local directory holding the saved file, or the saved directory's contents."""
    step: int


def save_checkpoint(path: str | os.PathLike[str], step: int) -> None:
    """Store a file or a directory as the leaf's checkpoint at `step`: when this returns it is in the store, and
    a kill a moment later loses nothing. Older checkpoints beyond the stage's `limits.keep_checkpoints` go."""
    from runtree_pipeline.tracking.active import store_checkpoint

    leaf = _leaf("save_checkpoint")
    stop_if_preempted(leaf)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise TypeError(f"save_checkpoint(): step must be a non-negative int, got {step!r}")
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"save_checkpoint(): {source} does not exist")
    store_checkpoint(leaf.run, source, step, leaf.keep_checkpoints)


def last_checkpoint() -> Checkpoint | None:
    """The leaf run's newest checkpoint, fetched once per machine, or None when it has none (a first attempt).

    After a restore, steps the run already recorded are not logged again by `report`."""
    from runtree_pipeline.tracking.active import fetch_checkpoint, newest_checkpoint

    leaf = _leaf("last_checkpoint")
    found = newest_checkpoint(leaf.run)
    if found is None:
        return None
    step, saved_at, recorded = found
    leaf.recorded.update(recorded)
    tell_restored(leaf, max(recorded.values(), default=step))
    return Checkpoint(fetch_checkpoint(leaf.run, step, saved_at), step)


def _leaf(name: str):  # noqa: ANN202 - reporting's private leaf record
    leaf = current_leaf()
    if leaf is None:
        raise RuntimeError(
            f"runtree_pipeline.{name}() was called outside a leaf: call it from a target or a program that a "
            "pipeline runs"
        )
    return leaf
