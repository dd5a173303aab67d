"""Calling a target at a leaf: pure compute plus the target's own logging; the driver records the outcome.

Kept free of driver state (a task in, an outcome out, both picklable) so any executor can run it anywhere.
"""

from __future__ import annotations

import importlib
import json
import numbers
import os
import time
import traceback
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import singledispatch
from pathlib import Path
from typing import Any

from runtree_pipeline.errors import Pruned
from runtree_pipeline.execution.commands import KILL_GRACE_S, ProgramFailed, run_program
from runtree_pipeline.execution.reporting import Desk, in_leaf
from runtree_pipeline.plan.params import lookup, merge
from runtree_pipeline.plan.targets import CommandTarget, FunctionTarget, Target
from runtree_pipeline.tracking.records import RunRef


@dataclass(frozen=True)
class LeafTask:
    """What a worker needs: the target, its arguments, and the run it logs to."""

    target: Target
    kwargs: Mapping[str, Any]
    run: RunRef
    objectives: tuple[str, ...] = ()
    """The metrics the leaf must return, one per goal: a leaf without one has failed."""
    desk: Desk | None = None
    """Where `report` asks whether to stop: set when the leaf's level has a pruner."""
    timeout_s: float | None = None
    """The stage's `limits.timeout_s`: the executor stops the leaf's worker past it."""
    fetch: tuple[str, ...] = ()
    """Dotted keys of `kwargs` holding an upstream artifact's `runs:/` URI: the target gets a local copy's path."""
    leaf_dir: str | None = None
    """A program's own directory (its working directory with `workdir: leaf`, its Hydra output directory, its logs
    before upload), kept after the pipeline."""
    groups: str | None = None
    """The pipeline's control directory, set by the executor: where a program's process group is listed for the
    pipeline to stop it, and where a SIGTERM of the pipeline is noted for `report` and `save_checkpoint`."""
    keep_checkpoints: int = 2
    system_metrics_s: float | None = None
    """`system_metrics_interval_s` when the config sets `system_metrics: true`: MLflow's monitor samples the machine
    onto the leaf's run at this interval while the leaf's work runs."""


    @property
    def worker_timeout_s(self) -> float | None:
        """When the executor stops the worker: at the timeout itself, unless the target stops its own process."""
        if self.timeout_s is None or not self.target.runs_as_process:
            return self.timeout_s
        return self.timeout_s + KILL_GRACE_S + _WORKER_TIMEOUT_MARGIN_S


@dataclass(frozen=True)
class LeafOutcome:
    metrics: Mapping[str, float] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    ended_at: float | None = None
    """When the target returned or raised (seconds since the epoch, on the worker's clock): the run's recorded end,
    however much later the driver gets to write it."""
    pruned_at: int | None = None
    """The step at which the target let `Pruned` propagate: stopped by its pruner, neither failed nor finished."""
    logged: tuple[str, ...] = ()
    """Returned metrics whose value `report` logged last already: the run's latest value, not to be logged again."""
    artifacts: tuple[str, ...] = ()
    """Outputs that were paths: logged as artifacts of the run, their value is now the artifact's URI."""
    last_step: int | None = None
    """The highest step the target reported: its returned metrics are logged at it, so they are the run's latest
    values (MLflow takes a run's latest metric by step first), whatever the curve did before."""

    @property
    def ok(self) -> bool:
        return self.error is None and self.pruned_at is None


#: A program stops itself at its timeout; the executor's own stop, later, is only for a worker that hangs.
_WORKER_TIMEOUT_MARGIN_S = 30.0


def execute(task: LeafTask) -> LeafOutcome:
    """Run the target with its leaf run active; an exception becomes a failed outcome, not a crash."""
    from runtree_pipeline.tracking.active import active_run, system_metrics

    try:
        kwargs = _with_local_copies(task)
        with (
            active_run(task.run),
            in_leaf(task.run, task.desk, keep_checkpoints=task.keep_checkpoints, control=task.groups) as leaf,
            system_metrics(task.run, task.system_metrics_s),
        ):
            returned = run(task.target, kwargs, task)
    except Pruned as e:
        return LeafOutcome(pruned_at=e.step, ended_at=time.time())
    except ProgramFailed as e:
        return LeafOutcome(error=str(e), ended_at=time.time())
    except Exception as e:  # noqa: BLE001 - a failing target fails its own run only
        return LeafOutcome(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(), ended_at=time.time())
    ended_at = time.time()
    try:
        returned, artifacts = _upload_paths(returned, task)
    except Exception as e:  # noqa: BLE001 - a path that cannot be logged fails this run only
        return LeafOutcome(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(), ended_at=ended_at)
    outcome = split_returned(returned, objectives=task.objectives)
    logged = tuple(k for k, v in outcome.metrics.items() if k in leaf.last and leaf.last[k][1] == v)
    return replace(
        outcome,
        ended_at=ended_at,
        logged=logged,
        artifacts=artifacts if outcome.ok else (),
        last_step=leaf.step,
    )


@singledispatch
def run(target: Target, params: Mapping[str, Any], task: LeafTask | None = None) -> Any:
    """The leaf's work for one kind of target, in a worker with the leaf's run active: what it returns is the
    leaf's result (numbers become metrics, other values outputs, paths artifacts)."""
    raise TypeError(f"no way to run a {type(target).__name__}")


@run.register
def _(target: FunctionTarget, params: Mapping[str, Any], task: LeafTask | None = None) -> Any:
    return _locate(target.path)(**params)


def _locate(path: str) -> Any:
    """The object at a dotted path as Hydra's `get_object` finds it (a module, then attributes, a submodule where an
    attribute is missing), with its errors, without importing Hydra: a tenth of a fresh worker's way to the call."""
    if not path:
        raise ImportError("Empty path")
    parts = path.split(".")
    if not all(parts):
        raise ValueError(f"Error loading '{path}': invalid dotstring.\nRelative imports are not supported.")
    try:
        obj = importlib.import_module(parts[0])
    except Exception as e:
        raise ImportError(f"Error loading '{path}':\n{e!r}\nAre you sure that module '{parts[0]}' is installed?") from e
    for m in range(1, len(parts)):
        part, parent = parts[m], ".".join(parts[:m])
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            if not isinstance(obj, types.ModuleType):
                raise ImportError(
                    f"Error loading '{path}':\n{e!r}\nAre you sure that '{part}' is an attribute of '{parent}'?"
                ) from e
            try:
                obj = importlib.import_module(".".join(parts[: m + 1]))
            except ModuleNotFoundError as missing:
                raise ImportError(
                    f"Error loading '{path}':\n{missing!r}\nAre you sure that '{part}' is importable from module "
                    f"'{parent}'?"
                ) from missing
            except Exception as failed:
                raise ImportError(f"Error loading '{path}':\n{failed!r}") from failed
    return obj


@run.register
def _(target: CommandTarget, params: Mapping[str, Any], task: LeafTask | None = None) -> Any:
    if task is None:
        raise TypeError("a command runs as a leaf of a pipeline, with its run")
    return run_program(target, params, task)


def _with_local_copies(task: LeafTask) -> Mapping[str, Any]:
    """The target's kwargs with each upstream artifact's URI replaced by the path of a local copy."""
    if not task.fetch:
        return task.kwargs
    from runtree_pipeline.tracking.active import fetch

    copies = {dotted: fetch(lookup(task.kwargs, dotted), task.run.tracking_uri) for dotted in task.fetch}
    return merge(task.kwargs, copies)


def _upload_paths(returned: Any, task: LeafTask) -> tuple[Any, tuple[str, ...]]:
    """Paths a target returned become artifacts of its run, and outputs whose value is their URI."""
    if not isinstance(returned, Mapping) or not any(isinstance(v, os.PathLike) for v in returned.values()):
        return returned, ()
    from runtree_pipeline.tracking.active import upload

    out, artifacts = dict(returned), []
    for key, value in returned.items():
        if not isinstance(value, os.PathLike):
            continue
        path = Path(value)
        if not path.exists():
            raise FileNotFoundError(f"result '{key}' is a path that does not exist: {path}")
        out[key] = upload(task.run, str(key), path)
        artifacts.append(str(key))
    return out, tuple(artifacts)


def split_returned(returned: Any, *, objectives: tuple[str, ...] = ()) -> LeafOutcome:
    """Numbers become metrics, other JSON values become outputs; a missing objective fails the run."""
    if returned is None:
        returned = {}
    if not isinstance(returned, Mapping):
        return LeafOutcome(error=f"TypeError: target returned {type(returned).__name__}, expected a mapping of results")
    metrics, outputs = {}, {}
    for key, value in returned.items():
        key = str(key)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            metrics[key] = float(value)
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            return LeafOutcome(
                metrics=metrics,
                error=f"TypeError: result '{key}' is a {type(value).__name__}, neither a number nor JSON-serialisable",
            )
        outputs[key] = value
    missing = [metric for metric in objectives if metric not in metrics]
    if missing:
        returned_keys = ", ".join(sorted(map(str, returned))) or "nothing"
        return LeafOutcome(
            metrics=metrics,
            outputs=outputs,
            error=f"MissingObjective: target returned no '{missing[0]}' (it returned: {returned_keys})",
        )
    return LeafOutcome(metrics=metrics, outputs=outputs)
