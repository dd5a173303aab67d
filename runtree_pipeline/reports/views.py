"""Text views of recorded run trees for the `runtree` command: pure functions of MLflow `Run` objects."""

from __future__ import annotations

import math
import re
import shlex
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from runtree_pipeline.tracking import tags as schema
from runtree_pipeline.tracking.provenance import COMMAND, CWD
from runtree_pipeline.tracking.redact import REDACTED
from runtree_pipeline.tracking.mlflow_store import PARENT_TAG

BEST = "★"
FAILED = "✗"


class RunTree:
    """One pipeline execution's runs, linked parent → children, superseded stage runs left out."""

    def __init__(self, runs: Iterable[Any]) -> None:
        self.runs = [r for r in runs if schema.SUPERSEDED_BY not in r.data.tags]
        self.by_id = {r.info.run_id: r for r in self.runs}
        self.children: dict[str | None, list[Any]] = defaultdict(list)
        for run in self.runs:
            if run.data.tags.get(schema.LEVEL) != "stage":
                self.children[run.data.tags.get(PARENT_TAG)].append(run)
        self.stages = sorted(
            (r for r in self.runs if r.data.tags.get(schema.LEVEL) == "stage"), key=lambda r: r.info.start_time or 0
        )

    def stage(self, name: str) -> Any:
        for run in self.stages:
            if run.data.tags.get(schema.STAGE) == name:
                return run
        have = ", ".join(r.data.tags.get(schema.STAGE, "?") for r in self.stages)
        raise LookupError(f"no stage '{name}' in pipeline {self.pipeline_id} (it has: {have})")

    @property
    def pipeline_id(self) -> str | None:
        return self.stages[0].data.tags.get(schema.PIPELINE_ID) if self.stages else None


def objective_of(stage_run: Any) -> tuple[str | None, str]:
    tags = stage_run.data.tags
    return tags.get(schema.OBJECTIVE_METRIC), tags.get(schema.OBJECTIVE_MODE, "min")


def render_tree(tree: RunTree, *, limit: int = 8, experiment: str | None = None) -> str:
    if not tree.stages:
        return "(no runs)"
    first = tree.stages[0]
    lines = [f"{_which(first, experiment)}  ({_when(first.info.start_time)})"]
    for stage in tree.stages:
        metric, mode = objective_of(stage)
        lines.append(_line(stage, metric, is_best=False))
        _children(tree, stage, metric, mode, prefix="", limit=limit, lines=lines)
    return "\n".join(lines)


def _children(tree: RunTree, parent: Any, metric: str | None, mode: str, *, prefix: str, limit: int, lines: list) -> None:
    kids = _ranked(tree.children.get(parent.info.run_id, []), metric, mode)
    if not kids:
        return
    best_id = parent.data.tags.get(schema.BEST_RUN_ID)
    varying = _varying_params(kids)
    shown, hidden = kids[:limit], kids[limit:]
    for i, kid in enumerate(shown):
        last = i == len(shown) - 1 and not hidden
        is_best = best_id is not None and best_id in (kid.info.run_id, kid.data.tags.get(schema.BEST_RUN_ID))
        lines.append(
            prefix + ("└── " if last else "├── ") + _line(kid, metric, is_best=is_best, params=varying, parent=parent)
        )
        _children(tree, kid, metric, mode, prefix=prefix + ("    " if last else "│   "), limit=limit, lines=lines)
    if hidden:
        failed = sum(r.info.status != "FINISHED" for r in hidden)
        lines.append(prefix + f"└── … {len(hidden)} more" + (f" ({failed} not finished)" if failed else ""))


def _ranked(runs: Sequence[Any], metric: str | None, mode: str) -> list[Any]:
    """Best first, then the rest by value; runs without a value (failed, unfinished) last."""

    def key(run: Any) -> tuple:
        value = _objective_value(run, metric)
        if value is None:
            return (1, 0.0, run.info.run_name or "")
        return (0, value if mode == "min" else -value, run.info.run_name or "")

    return sorted(runs, key=key)


def _objective_value(run: Any, metric: str | None) -> float | None:
    if metric is None:
        return None
    metrics = run.data.metrics
    value = metrics.get(metric, metrics.get(schema.BEST_METRIC + metric))
    return value if value is not None and math.isfinite(value) else None


def _varying_params(runs: Sequence[Any]) -> list[str]:
    keys = sorted({k for r in runs for k in r.data.params})
    return [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]


def _line(run: Any, metric: str | None, *, is_best: bool, params: Sequence[str] = (), parent: Any = None) -> str:
    tags = run.data.tags
    name = run.info.run_name or run.info.run_id
    if parent is not None and name.startswith(f"{parent.info.run_name}/"):
        name = name[len(parent.info.run_name) + 1 :]
    parts = [f"{BEST} {name}" if is_best else name]
    if run.info.status == "FINISHED":
        parts.append("FINISHED")
    else:
        parts.append(f"{FAILED} {run.info.status}")
    value = _objective_value(run, metric)
    if value is not None:
        label = metric if metric in run.data.metrics else f"best_{metric}"
        parts.append(f"{label}={_fmt(value)}")
    shown = [f"{k}={_short(run.data.params[k])}" for k in params if k in run.data.params and f"{k}=" not in name]
    if shown:
        parts.append(" ".join(shown))
    if schema.ERROR in tags and run.info.status != "FINISHED":
        parts.append(f"— {_clip(tags[schema.ERROR], 80)}")
    return "  ".join(parts)


def _which(stage: Any, experiment: str | None) -> str:
    """Names what is shown, so output read later (or with several experiments in one store) is unambiguous."""
    text = f"pipeline {stage.data.tags.get(schema.PIPELINE_ID)}"
    return text + (f" of experiment '{experiment}'" if experiment else "")


def render_best(stage: Any, leaf: Any, *, experiment: str | None = None) -> str:
    metric, mode = objective_of(stage)
    lines = [
        f"stage {stage.data.tags.get(schema.STAGE)} of {_which(stage, experiment)}: "
        f"best by {metric or 'its only run'}{f' ({mode})' if metric else ''}",
        f"run      {leaf.info.run_id}  {leaf.info.run_name}",
    ]
    lines.append("params   " + (", ".join(f"{k}={v}" for k, v in sorted(leaf.data.params.items())) or "none"))
    lines.append("metrics  " + (", ".join(f"{k}={_fmt(v)}" for k, v in sorted(leaf.data.metrics.items())) or "none"))
    command = reproduce_command(stage, leaf)
    if command:
        lines.append("reproduce the whole pipeline (same seeds, same best):")
        lines.append(f"  {_from_launch_dir(stage, stage.data.tags[COMMAND])}")
        lines.append("reproduce this run only:")
        lines.append(f"  {command}")
        if any(v == REDACTED for v in leaf.data.params.values()):
            lines.append("  (secret values were redacted: supply them yourself)")
    return "\n".join(lines)


def reproduce_command(stage: Any, leaf: Any) -> str | None:
    """The invocation that started the pipeline, with this stage pinned to the leaf's params (no sweep)."""
    command = stage.data.tags.get(COMMAND)
    if not command:
        return None
    name = stage.data.tags.get(schema.STAGE)
    pins = [f"~stages.{name}.{level}s" for level in filter(None, stage.data.tags.get(schema.LEVELS, "").split(","))]
    pins += [f"++stages.{name}.params.{k}={_hydra_value(v)}" for k, v in sorted(leaf.data.params.items())]
    return _from_launch_dir(stage, command + " " + " ".join(shlex.quote(p) for p in pins))


def _from_launch_dir(stage: Any, command: str) -> str:
    """Relative paths in the command (`--config-dir conf`, `sqlite:///mlflow.db`) and a target module beside them
    only resolve where the pipeline was started, so the printed line goes there first and works from anywhere."""
    cwd = stage.data.tags.get(CWD)
    return f"cd {shlex.quote(cwd)} && {command}" if cwd else command


def _hydra_value(text: str) -> str:
    """A logged param (always text in MLflow) back in Hydra's override grammar: as is when Hydra's parser reads
    it back to the same text, quoted otherwise (spaces that matter, commas that would make a sweep, quotes)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_override(f"k={text}")
    except HydraException:
        parsed = None
    if parsed is not None and not parsed.is_sweep_override() and str(parsed.value()) == text:
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def render_list(stage_runs: Iterable[Any], experiments: dict[str, str]) -> str:
    pipelines: dict[str, list[Any]] = defaultdict(list)
    for run in stage_runs:
        if schema.SUPERSEDED_BY not in run.data.tags:
            pipelines[run.data.tags.get(schema.PIPELINE_ID, "?")].append(run)
    if not pipelines:
        return "(no pipeline executions)"
    rows = []
    for pipeline_id, stages in pipelines.items():
        stages.sort(key=lambda r: r.info.start_time or 0)
        statuses = {r.info.status for r in stages}
        status = "FINISHED" if statuses == {"FINISHED"} else next(
            s for s in ("RUNNING", "KILLED", "FAILED", "SCHEDULED", "FINISHED") if s in statuses
        )
        bests = []
        for stage in stages:
            value = _objective_value(stage, objective_of(stage)[0])
            bests.append(f"{stage.data.tags.get(schema.STAGE)}={_fmt(value) if value is not None else '-'}")
        start = min(r.info.start_time or 0 for r in stages)
        experiment = experiments.get(stages[0].info.experiment_id, stages[0].info.experiment_id)
        rows.append((start, pipeline_id, experiment, status, " ".join(bests)))
    rows.sort(reverse=True)
    out = [f"{'pipeline':<14}{'started':<21}{'experiment':<16}{'status':<10}best per stage"]
    for start, pipeline_id, experiment, status, bests in rows:
        out.append(f"{pipeline_id:<14}{_when(start):<21}{_clip(experiment, 15):<16}{status:<10}{bests}")
    return "\n".join(out)


def _short(text: str) -> str:
    try:
        return _fmt(float(text)) if re.fullmatch(r"-?\d+\.\d{5,}(e-?\d+)?", text) else _clip(text, 24)
    except ValueError:
        return _clip(text, 24)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _clip(text: str, width: int) -> str:
    text = str(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(ms: int | None) -> str:
    if not ms:
        return "?"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
