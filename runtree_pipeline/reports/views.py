"""Text views of recorded run trees for the `runtree` command: pure functions of the recorded runs."""

from __future__ import annotations

import math
import re
import shlex
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone

from runtree_pipeline.plan.objective import Objective
from runtree_pipeline.states import Status
from runtree_pipeline.tracking import tags as schema
from runtree_pipeline.tracking.index import RunIndex
from runtree_pipeline.tracking.provenance import COMMAND, CWD
from runtree_pipeline.tracking.records import RunRecord
from runtree_pipeline.tracking.redact import REDACTED

BEST = "★"
FAILED = "✗"
PRUNED = "✂"


def render_tree(tree: RunIndex, *, limit: int = 8, experiment: str | None = None) -> str:
    if not tree.stages:
        return "(no runs)"
    first = tree.stages[0]
    lines = [f"{_which(first, experiment)}  ({_when(first.start_time)})"]
    for stage in tree.stages:
        objective = schema.objective_of(stage.tags)
        lines.append(_line(stage, objective.metric, is_best=False))
        _children(tree, stage, objective, prefix="", limit=limit, lines=lines)
    return "\n".join(lines)


def _children(
    tree: RunIndex, parent: RunRecord, objective: Objective, *, prefix: str, limit: int, lines: list[str]
) -> None:
    kids = _ranked(tree.children(parent.run_id), objective)
    if not kids:
        return
    best_id = parent.tags.get(schema.BEST_RUN_ID)
    varying = _varying_params(kids)
    shown, hidden = kids[:limit], kids[limit:]
    for i, kid in enumerate(shown):
        last = i == len(shown) - 1 and not hidden
        is_best = best_id is not None and best_id in (kid.run_id, kid.tags.get(schema.BEST_RUN_ID))
        lines.append(
            prefix
            + ("└── " if last else "├── ")
            + _line(kid, objective.metric, is_best=is_best, params=varying, parent=parent)
        )
        _children(tree, kid, objective, prefix=prefix + ("    " if last else "│   "), limit=limit, lines=lines)
    if hidden:
        pruned = sum(schema.pruned_at(r.tags) is not None for r in hidden)
        failed = sum(r.status != Status.FINISHED for r in hidden) - pruned
        said = [f"{n} {word}" for n, word in ((failed, "not finished"), (pruned, "pruned")) if n]
        lines.append(prefix + f"└── … {len(hidden)} more" + (f" ({', '.join(said)})" if said else ""))


def _ranked(runs: Sequence[RunRecord], objective: Objective) -> list[RunRecord]:
    """Best first, then the rest by value; runs without a value (failed, unfinished) last."""
    return sorted(runs, key=lambda run: (*objective.rank(_objective_value(run, objective.metric)), run.name))


def _objective_value(run: RunRecord, metric: str | None) -> float | None:
    if metric is None:
        return None
    metrics = run.metrics
    value = metrics.get(metric, metrics.get(schema.BEST_METRIC + metric))
    return value if value is not None and math.isfinite(value) else None


def _varying_params(runs: Sequence[RunRecord]) -> list[str]:
    keys = sorted({k for r in runs for k in r.params})
    return [k for k in keys if len({r.params.get(k) for r in runs}) > 1]


def _line(
    run: RunRecord, metric: str | None, *, is_best: bool, params: Sequence[str] = (), parent: RunRecord = None
) -> str:
    tags = run.tags
    name = run.name or run.run_id
    if parent is not None and name.startswith(f"{parent.name}/"):
        name = name[len(parent.name) + 1 :]
    parts = [f"{BEST} {name}" if is_best else name]
    pruned_at = schema.pruned_at(tags)
    if run.status == "FINISHED":
        parts.append("FINISHED")
    elif pruned_at is not None:
        parts.append(f"{PRUNED} PRUNED at step {pruned_at}")
    else:
        parts.append(f"{FAILED} {run.status}")
    value = _objective_value(run, metric)
    if value is not None:
        label = metric if metric in run.metrics else f"best_{metric}"
        parts.append(f"{label}={_fmt(value)}")
    shown = [f"{k}={_short(run.params[k])}" for k in params if k in run.params and f"{k}=" not in name]
    if shown:
        parts.append(" ".join(shown))
    if schema.ERROR in tags and run.status != "FINISHED":
        parts.append(f"— {_clip(tags[schema.ERROR], 80)}")
    return "  ".join(parts)


def _which(stage: RunRecord, experiment: str | None) -> str:
    """Names what is shown, so output read later (or with several experiments in one store) is unambiguous."""
    text = f"pipeline {stage.tags.get(schema.PIPELINE_ID)}"
    return text + (f" of experiment '{experiment}'" if experiment else "")


def render_best(stage: RunRecord, leaf: RunRecord, *, experiment: str | None = None) -> str:
    objective = schema.objective_of(stage.tags)
    metric, mode = objective.metric, objective.mode
    lines = [
        f"stage {stage.tags.get(schema.STAGE)} of {_which(stage, experiment)}: "
        f"best by {metric or 'its only run'}{f' ({mode})' if metric else ''}",
        f"run      {leaf.run_id}  {leaf.name}",
    ]
    lines.append("params   " + (", ".join(f"{k}={v}" for k, v in sorted(leaf.params.items())) or "none"))
    lines.append("metrics  " + (", ".join(f"{k}={_fmt(v)}" for k, v in sorted(leaf.metrics.items())) or "none"))
    command = reproduce_command(stage, leaf)
    if command:
        lines.append("reproduce the whole pipeline (same seeds, same best):")
        lines.append(f"  {_from_launch_dir(stage, stage.tags[COMMAND])}")
        lines.append("reproduce this run only:")
        lines.append(f"  {command}")
        if any(v == REDACTED for v in leaf.params.values()):
            lines.append("  (secret values were redacted: supply them yourself)")
    return "\n".join(lines)


def reproduce_command(stage: RunRecord, leaf: RunRecord) -> str | None:
    """The invocation that started the pipeline, with this stage pinned to the leaf's params (no sweep)."""
    command = stage.tags.get(COMMAND)
    if not command:
        return None
    name = stage.tags.get(schema.STAGE)
    pins = [f"~stages.{name}.{level}s" for level in filter(None, stage.tags.get(schema.LEVELS, "").split(","))]
    # An upstream artifact (`runs:/...`) stays the stage's own `${best:...}`: the re-run pipeline makes it again.
    pins += [
        f"++stages.{name}.params.{k}={_hydra_value(v)}"
        for k, v in sorted(leaf.params.items())
        if not v.startswith("runs:/")
    ]
    return _from_launch_dir(stage, command + " " + " ".join(shlex.quote(p) for p in pins))


def _from_launch_dir(stage: RunRecord, command: str) -> str:
    """Relative paths in the command (`--config-dir conf`, `sqlite:///mlflow.db`) and a target module beside them
    only resolve where the pipeline was started, so the printed line goes there first and works from anywhere."""
    cwd = stage.tags.get(CWD)
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


def render_list(stage_runs: Iterable[RunRecord], experiments: dict[str, str]) -> str:
    pipelines: dict[str, list[RunRecord]] = defaultdict(list)
    for run in stage_runs:
        if schema.SUPERSEDED_BY not in run.tags:
            pipelines[run.tags.get(schema.PIPELINE_ID, "?")].append(run)
    if not pipelines:
        return "(no pipeline executions)"
    rows = []
    for pipeline_id, stages in pipelines.items():
        stages.sort(key=lambda r: r.start_time or 0)
        statuses = {r.status for r in stages}
        status = (
            "FINISHED"
            if statuses == {"FINISHED"}
            else next(s for s in ("RUNNING", "KILLED", "FAILED", "SCHEDULED", "FINISHED") if s in statuses)
        )
        bests = []
        for stage in stages:
            value = _objective_value(stage, schema.objective_of(stage.tags).metric)
            bests.append(f"{stage.tags.get(schema.STAGE)}={_fmt(value) if value is not None else '-'}")
        start = min(r.start_time or 0 for r in stages)
        experiment = experiments.get(stages[0].experiment_id, stages[0].experiment_id)
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
