"""Text views of recorded run trees for the `runtree` command: pure functions of the recorded runs."""

from __future__ import annotations

import json
import math
import re
import shlex
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from runtree_pipeline.plan.objective import AGGREGATES, Objective
from runtree_pipeline.plan.params import hydra_quoted
from runtree_pipeline.states import Status
from runtree_pipeline.tracking import tags as schema
from runtree_pipeline.tracking.heartbeat import alive
from runtree_pipeline.tracking.index import RunIndex, is_kept
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
        lines.append(_line(stage, objective.metric, is_best=False, also=_others(objective)))
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
            + _line(kid, objective.metric, is_best=is_best, params=varying, parent=parent, also=_others(objective))
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
    score = _score(run, metric)
    return score[1] if score is not None else None


def _score(run: RunRecord, metric: str | None) -> tuple[str, float, str] | None:
    """What a run is judged by, as (label, value, spread): a leaf's metric, a parent's best leaf's (`best_m`), or an
    aggregate of replicates (`mean_m`, with its std and count) on the parent or, as its best, above it."""
    if metric is None:
        return None
    metrics = run.metrics
    aggregate = schema.aggregate_of(run.tags)
    candidates = [(metric, ""), (schema.BEST_METRIC + metric, "")]
    if aggregate is not None:
        how, n = aggregate
        candidates.insert(0, (f"{how}_{metric}", _spread(metrics.get(f"std_{metric}"), n)))
    spread = metrics.get(f"{schema.BEST_METRIC}std_{metric}")
    for how in AGGREGATES if spread is not None else ():  # a best over replicates: shown as their aggregate
        candidates.insert(0, (f"{schema.BEST_METRIC}{how}_{metric}", _spread(spread, None)))
    for label, spread in candidates:
        value = metrics.get(label)
        if value is not None:
            return (label, value, spread) if math.isfinite(value) else None
    return None


def _spread(std: float | None, n: int | None) -> str:
    text = f" ± {_fmt(std)}" if std is not None and math.isfinite(std) else ""
    return text + (f" ({n})" if n is not None else "")


def _varying_params(runs: Sequence[RunRecord]) -> list[str]:
    keys = sorted({k for r in runs for k in r.params})
    return [k for k in keys if len({r.params.get(k) for r in runs}) > 1]


def _others(objective: Objective) -> list[str]:
    """The objectives besides the selected one, shown beside it."""
    return [m for m in objective.metrics if m != objective.metric]


def _line(
    run: RunRecord,
    metric: str | None,
    *,
    is_best: bool,
    params: Sequence[str] = (),
    parent: RunRecord = None,
    also: Sequence[str] = (),
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
    score = _score(run, metric)
    if score is not None:
        label, value, spread = score
        parts.append(f"{label}={_fmt(value)}{spread}")
        for other in also:
            score = _score(run, other)
            if score is not None:
                parts[-1] += f" {score[0]}={_fmt(score[1])}"
    if tags.get(schema.FEASIBLE) == "false":
        parts.append("infeasible")
    if parent is not None and run.run_id in parent.tags.get(schema.PARETO, "").split(","):
        parts.append("(front)")
    shown = [f"{k}={_short(run.params[k])}" for k in params if k in run.params and f"{k}=" not in name]
    if shown:
        parts.append(" ".join(shown))
    if schema.ERROR in tags and run.status != "FINISHED":
        parts.append(f"— {_clip(tags[schema.ERROR], 80)}")
    if schema.CACHED_FROM in tags:
        parts.append(f"(cached from {tags[schema.CACHED_FROM][:8]})")
    return "  ".join(parts)


def _which(stage: RunRecord, experiment: str | None) -> str:
    """Names what is shown, so output read later (or with several experiments in one store) is unambiguous."""
    text = f"pipeline {stage.tags.get(schema.PIPELINE_ID)}"
    return text + (f" of experiment '{experiment}'" if experiment else "")


_RACES = {
    "time_budget_s": "a time budget",
    "pruner": "a pruner with several workers",
    "tpe": "tpe with several workers",
    "on_failure=stop": "on_failure: stop with several workers",
}
"""How `runtree best` names what decided by timing (`runtree.order_dependent`)."""


def _race(what: str) -> str:
    return _RACES.get(what, f"{what} with several workers")  # another learning sampler


def render_best(stage: RunRecord, leaf: RunRecord, *, experiment: str | None = None) -> str:
    objective = schema.objective_of(stage.tags)
    metric, mode = objective.metric, objective.mode
    lines = [
        f"stage {stage.tags.get(schema.STAGE)} of {_which(stage, experiment)}: "
        f"best by {_judged_by(leaf, metric) or 'its only run'}{f' ({mode})' if metric else ''}",
        f"run      {leaf.run_id}  {leaf.name}",
    ]
    lines.append("params   " + (", ".join(f"{k}={v}" for k, v in sorted(leaf.params.items())) or "none"))
    lines.append("metrics  " + (", ".join(f"{k}={_fmt(v)}" for k, v in sorted(leaf.metrics.items())) or "none"))
    command = reproduce_command(stage, leaf)
    if command:
        raced = stage.tags.get(schema.ORDER_DEPENDENT)
        same = (
            f"same seeds; {' or '.join(map(_race, raced.split(',')))} may decide differently"
            if raced
            else "same seeds, same best"
        )
        lines.append(f"reproduce the whole pipeline ({same}):")
        lines.append(f"  {_from_launch_dir(stage, stage.tags[COMMAND])}")
        aggregate = schema.aggregate_of(leaf.tags)
        what = f"this configuration over its {aggregate[1]} replicates" if aggregate else "this run only"
        lines.append(f"reproduce {what}:")
        lines.append(f"  {command}")
        if any(v == REDACTED for v in leaf.params.values()):
            lines.append("  (secret values were redacted: supply them yourself)")
    return "\n".join(lines)


def _judged_by(run: RunRecord, metric: str | None) -> str | None:
    aggregate = schema.aggregate_of(run.tags)
    if metric and aggregate:
        return f"the {aggregate[0]} {metric} of {aggregate[1]} replicates"
    return metric


def reproduce_command(stage: RunRecord, leaf: RunRecord) -> str | None:
    """The invocation that started the pipeline, with this stage pinned to the leaf's params (no sweep)."""
    command = stage.tags.get(COMMAND)
    if not command:
        return None
    name = stage.tags.get(schema.STAGE)
    levels = list(filter(None, stage.tags.get(schema.LEVELS, "").split(",")))
    if leaf.run_id == stage.run_id:  # the stage is judged by its own replicates: they all run again
        levels = []
    elif leaf.tags.get(schema.LEVEL) in levels:  # an aggregated best: its replicates' level stays and runs again
        levels = levels[: levels.index(leaf.tags[schema.LEVEL]) + 1]
    pins = [f"~stages.{name}.{level}s" for level in levels]
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
    return hydra_quoted(text)


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
        if status == "RUNNING" and not any(alive(r) is not False for r in stages if r.status == "RUNNING"):
            status = "INTERRUPTED"  # its driver died and left its runs open: resume= continues it
        bests = []
        for stage in stages:
            value = _objective_value(stage, schema.objective_of(stage.tags).metric)
            bests.append(f"{stage.tags.get(schema.STAGE)}={_fmt(value) if value is not None else '-'}")
        start = min(r.start_time or 0 for r in stages)
        experiment = experiments.get(stages[0].experiment_id, stages[0].experiment_id)
        rows.append((start, pipeline_id, experiment, status, " ".join(bests)))
    rows.sort(reverse=True)
    out = [f"{'pipeline':<14}{'started':<21}{'experiment':<16}{'status':<12}best per stage"]
    for start, pipeline_id, experiment, status, bests in rows:
        out.append(f"{pipeline_id:<14}{_when(start):<21}{_clip(experiment, 15):<16}{status:<12}{bests}")
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


def render_why(run: RunRecord, runs: Iterable[RunRecord]) -> str:
    """Why a run was executed rather than taken from an earlier execution, told from the recorded runs alone: what
    the cache and resume compare is the content key, so the answer is the earlier run whose key matched and why it
    was not taken, or else what differs from the newest earlier run of the same name.

    `runs` holds the runs of the run's stage from every execution, and those of the stages upstream of it.
    """
    by_id = {r.run_id: r for r in runs}
    by_id[run.run_id] = run
    stage = run.tags.get(schema.STAGE)
    mine = [r for r in by_id.values() if r.tags.get(schema.STAGE) == stage and r.experiment_id == run.experiment_id]
    origin = run.tags.get(schema.CACHED_FROM)
    if origin is not None:
        return f"reused: taken from run {origin}{_of_pipeline(by_id.get(origin))} (same content key)"
    tree = RunIndex(mine)
    is_parent = bool(tree.children(run.run_id))
    verdict, details = _why_executed(run, mine, by_id, is_parent=is_parent)
    if not is_parent:
        return "\n".join([f"executed: {verdict}", *(f"  {d}" for d in details)])
    leaves = _leaves_under(run, tree)
    taken = sum(schema.CACHED_FROM in leaf.tags for leaf in leaves)
    head = (
        f"parent of {len(leaves)} leaves: {taken} taken from earlier runs, {len(leaves) - taken} executed "
        "('runtree why' on a leaf says why)"
    )
    return "\n".join([head, f"  {verdict}", *(f"  {d}" for d in details)])


def _why_executed(
    run: RunRecord, mine: Sequence[RunRecord], by_id: dict[str, RunRecord], *, is_parent: bool
) -> tuple[str, list[str]]:
    """What the cache saw when this run's stage started: earlier runs of the same name, and their keys."""
    started = _stage_run(run, by_id).start_time or 0
    earlier = sorted(
        (r for r in mine if r.name == run.name and r.run_id != run.run_id and (r.start_time or 0) < started),
        key=lambda r: r.start_time or 0,
    )
    if not earlier:
        return f"no earlier run of {run.name} in this experiment", []
    key = run.tags.get(schema.KEY)
    same = [r for r in earlier if key is not None and r.tags.get(schema.KEY) == key]
    kept = [r for r in same if is_kept(r)]
    if kept:
        before = kept[-1]
        if is_parent:
            return f"an earlier run {before.run_id}{_of_pipeline(before)} has the same content key", []
        if before.end_time is not None and before.end_time > started:
            return f"the earlier run {before.run_id} with the same key had not finished when this stage started", []
        if before.status != Status.FINISHED:
            return (
                f"an earlier run {before.run_id} with the same key was pruned: a pruned leaf is taken only where its "
                "level still has a pruner (with cache: true, or on resume)",
                [],
            )
        return (
            f"an earlier run {before.run_id} has the same key, but this execution did not use the cache "
            "(cache: true reuses it)",
            [],
        )
    if same:
        before = same[-1]
        ended = f"ended {before.status}" if before.status in (Status.FAILED, Status.KILLED) else f"is {before.status}"
        return f"the earlier run {before.run_id} with the same key {ended}", []
    before = earlier[-1]
    verdict = (
        f"its content key differs from the newest earlier run of {run.name}, {before.run_id}{_of_pipeline(before)}"
    )
    return verdict, _key_changes(run, before, by_id)


def _key_changes(run: RunRecord, before: RunRecord, by_id: dict[str, RunRecord]) -> list[str]:
    """What went into the key differently: the target's code (on the stage runs), the run's params (some from an
    upstream stage's best), else something above the run."""
    lines = []
    now, then = _stage_run(run, by_id), _stage_run(before, by_id)
    code, old_code = now.tags.get(schema.CODE), then.tags.get(schema.CODE)
    if code and old_code and code != old_code:
        lines.append(f"code changed: the target's source file differs from the one run {before.run_id} used")
    elif code != old_code:
        lines.append(
            "code fingerprint "
            + ("now in the key" if code else "left out of the key (cache: {code: false})")
            + f": run {before.run_id} was keyed {'without' if code else 'with'} it"
        )
    changed, upstream = _param_changes(run, before, by_id)
    if changed:
        lines.append(f"inputs changed: {changed}")
    lines += upstream
    if not lines:
        lines += _above(run, before, by_id)
    return lines


def _param_changes(run: RunRecord, before: RunRecord, by_id: dict[str, RunRecord]) -> tuple[str, list[str]]:
    """The params that differ, each marked with the upstream stage it came from when that stage's best changed
    and the new value is one of the new best's; and a line per such stage."""
    changed = _changed_params(before.params, run.params)
    now, then = _stage_run(run, by_id), _stage_run(before, by_id)
    came_from: dict[str, str] = {}
    upstream = []
    for name, stage_run_id in sorted(schema.upstream_of(now.tags).items()):
        new = _best_of(by_id.get(stage_run_id), by_id)
        old = _best_of(by_id.get(schema.upstream_of(then.tags).get(name, "")), by_id)
        if new is None or old is None:
            continue
        new_id, old_id = schema.computed_by(new.tags, new.run_id), schema.computed_by(old.tags, old.run_id)
        took = [k for k in changed if k not in came_from and _came_from(run.params.get(k), new)]
        if new_id != old_id and took:
            came_from.update(dict.fromkeys(took, name))
            upstream.append(f"upstream input changed: stage '{name}' has a new best (run {new_id}, was {old_id})")
    shown = [
        _change(k, before.params, run.params) + (f" (from stage '{came_from[k]}')" if k in came_from else "")
        for k in changed
    ]
    return ", ".join(shown), upstream


def _above(run: RunRecord, before: RunRecord, by_id: dict[str, RunRecord]) -> list[str]:
    """Same code and params: the key came from higher up (a param a lower level overrides, or the target)."""
    for now, then in zip(_ancestors(run, by_id), _ancestors(before, by_id), strict=False):
        if now.tags.get(schema.KEY) == then.tags.get(schema.KEY):
            continue
        changed, upstream = _param_changes(now, then, by_id)
        if changed:
            return [f"its parent's key changed: {now.name} has {changed}", *upstream]
        if schema.is_stage(now.tags):
            break
    if any(v == REDACTED for v in run.params.values()):
        return ["a secret param may have changed (its values are stored as *** and cannot be compared)"]
    if run.parent_id is None:
        return ["same params and code: another _target_, or a key written by another runtree version"]
    return ["its parent's key changed: the stage's _target_, or a key written by another runtree version"]


def _changed_params(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _change(key: str, old: Mapping[str, str], new: Mapping[str, str]) -> str:
    return f"{key} {_clip(old.get(key, 'unset'), 60)} → {_clip(new.get(key, 'unset'), 60)}"


def _came_from(value: str | None, best: RunRecord) -> bool:
    """Whether a param's value is one of an upstream best's values, as `${best:...}` would have put it there."""
    if value is None:
        return False
    ids = {best.run_id, schema.computed_by(best.tags, best.run_id)}
    if value in ids or any(value.startswith(f"runs:/{i}/") for i in ids):
        return True
    outputs = schema.outputs_of(best.tags) or {}
    return value in {
        *best.params.values(),
        *(str(v) for v in best.metrics.values()),
        *(str(v) for v in outputs.values()),
    }


def _best_of(stage_run: RunRecord | None, by_id: dict[str, RunRecord]) -> RunRecord | None:
    """A stage run's best leaf (a stage without sweeps is its own); what `${best:...}` read from it."""
    if stage_run is None:
        return None
    best_id = stage_run.tags.get(schema.BEST_RUN_ID)
    if best_id:
        return by_id.get(best_id)
    return None if stage_run.tags.get(schema.LEVELS) else stage_run


def _ancestors(run: RunRecord, by_id: dict[str, RunRecord]) -> list[RunRecord]:
    """The runs above this one, the stage run first."""
    chain = []
    parent = by_id.get(run.parent_id) if run.parent_id else None
    while parent is not None:
        chain.append(parent)
        parent = by_id.get(parent.parent_id) if parent.parent_id else None
    return chain[::-1]


def _stage_run(run: RunRecord, by_id: dict[str, RunRecord]) -> RunRecord:
    return next(iter(_ancestors(run, by_id)), run)


def _leaves_under(run: RunRecord, tree: RunIndex) -> list[RunRecord]:
    leaves, todo = [], list(tree.children(run.run_id))
    while todo:
        kid = todo.pop()
        below = tree.children(kid.run_id)
        if below:
            todo.extend(below)
        else:
            leaves.append(kid)
    return leaves


def _of_pipeline(run: RunRecord | None) -> str:
    pipeline_id = run.tags.get(schema.PIPELINE_ID) if run is not None else None
    return f" of pipeline {pipeline_id}" if pipeline_id else ""


def render_diff(
    old: RunIndex,
    new: RunIndex,
    configs: Mapping[str, Mapping[str, Any] | None],
    *,
    experiments: Mapping[str, str] | None = None,
) -> str:
    """Two executions side by side, stage by stage, so a user sees what they changed and what it did to the result
    without reading two trees. `configs` maps a stage run's id to its resolved config (`config.yaml`), None when it
    has none; superseded stage runs are left out, as `runtree tree` leaves them out.
    """
    experiments = experiments or {}
    olds = {r.tags.get(schema.STAGE, "?"): r for r in old.stages}
    news = {r.tags.get(schema.STAGE, "?"): r for r in new.stages}
    lines = [_diff_head(old, new, experiments)]
    old_top, new_top = (_top_config(configs, index) for index in (old, new))
    if old_top is not None and new_top is not None:
        changed = _config_rows(old_top, new_top)
        if changed:
            lines += ["pipeline", *_labelled("config", changed)]
    for name in [*news, *(n for n in olds if n not in news)]:
        before, after = olds.get(name), news.get(name)
        if before is None or after is None:
            only = old if after is None else new
            lines.append(f"stage {name}  — only in {only.pipeline_id}")
            continue
        rows = _stage_rows(name, before, after, old, new, configs)
        lines += [f"stage {name}", *rows] if rows else [f"stage {name}  — nothing differs"]
    return "\n".join(lines)


def _diff_head(old: RunIndex, new: RunIndex, experiments: Mapping[str, str]) -> str:
    def side(index: RunIndex) -> str:
        start = min((r.start_time or 0 for r in index.stages), default=0)
        return f"{index.pipeline_id} ({_when(start)})"

    names = [experiments.get(i.stages[0].experiment_id, i.stages[0].experiment_id) for i in (old, new) if i.stages]
    where = f"experiment '{names[0]}'" if len(set(names)) == 1 else f"experiments '{names[0]}' → '{names[-1]}'"
    return f"diff {side(old)} → {side(new)}, {where}"


def _top_config(configs: Mapping[str, Mapping[str, Any] | None], index: RunIndex) -> dict[str, Any] | None:
    """What the execution's stage configs share (all but `stages`), so a pipeline-wide change is said once."""
    for stage in index.stages:
        config = configs.get(stage.run_id)
        if config is not None:
            return {k: v for k, v in config.items() if k != "stages"}
    return None


def _stage_rows(
    name: str,
    before: RunRecord,
    after: RunRecord,
    old: RunIndex,
    new: RunIndex,
    configs: Mapping[str, Mapping[str, Any] | None],
) -> list[str]:
    """The stage's rows, or none when nothing differs."""
    differs = False
    rows: list[str] = []
    if before.status != after.status:
        rows += _labelled("status", [f"{before.status} → {after.status}"])
        differs = True
    old_config, new_config = configs.get(before.run_id), configs.get(after.run_id)
    if old_config is None or new_config is None:
        missing = ", ".join(r.run_id for r, c in ((before, old_config), (after, new_config)) if c is None)
        rows += _labelled("config", [f"not recorded ({schema.CONFIG_ARTIFACT} missing on run {missing})"])
        differs = True
    else:
        changed = _config_rows(_stage_section(old_config, name), _stage_section(new_config, name))
        rows += _labelled("config", changed or ["same"])
        differs = differs or bool(changed)
    old_code, new_code = before.tags.get(schema.CODE), after.tags.get(schema.CODE)
    if old_code == new_code:
        rows += _labelled("code", ["same" if old_code else "not fingerprinted (cache: {code: false})"])
    else:
        rows += _labelled("code", [f"changed ({(old_code or 'none')[:12]} → {(new_code or 'none')[:12]})"])
        differs = True
    best, best_differs = _best_row(before, after)
    rows += _labelled("best", [best])
    old_counts, new_counts = _leaf_counts(before, old), _leaf_counts(after, new)
    words = ("executed", "reused", "failed")
    counts = ", ".join(f"{w} {a} → {b}" for w, a, b in zip(words, old_counts, new_counts, strict=True))
    rows += _labelled("leaves", [counts])
    return rows if differs or best_differs or old_counts != new_counts else []


def _stage_section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = (config.get("stages") or {}).get(name)
    return section if isinstance(section, Mapping) else {}


def _config_rows(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    before, after = _flat(old), _flat(new)
    unset = object()
    return [
        f"{key}: {_config_value(before.get(key, unset), unset)} → {_config_value(after.get(key, unset), unset)}"
        for key in sorted(set(before) | set(after))
        if before.get(key, unset) != after.get(key, unset)
    ]


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config as dotted keys; a list or an empty mapping is one value."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _config_value(value: Any, unset: object) -> str:
    if value is unset:
        return "unset"
    if isinstance(value, float):
        return _fmt(value)
    if isinstance(value, (list, tuple, Mapping)) or value is None:
        return _clip(json.dumps(value, default=str), 40)
    return _clip(str(value), 40)


def _labelled(label: str, rows: Sequence[str]) -> list[str]:
    return [f"  {label if i == 0 else '':<9}{row}" for i, row in enumerate(rows)]


def _best_row(before: RunRecord, after: RunRecord) -> tuple[str, bool]:
    """The best value and the best params that differ, as `runtree best` formats them; and whether either differs."""
    old_metric, new_metric = schema.objective_of(before.tags).metric, schema.objective_of(after.tags).metric
    old_value, new_value = _objective_value(before, old_metric), _objective_value(after, new_metric)
    old_params, new_params = _best_params(before), _best_params(after)
    keys = _changed_params(old_params, new_params)

    def value(number: float | None) -> str:
        return _fmt(number) if number is not None else "none"

    if old_metric == new_metric:
        text = f"{new_metric or 'value'} {value(old_value)}"
        if old_value != new_value:
            text += f" → {value(new_value)}"
    else:
        text = f"{old_metric} {value(old_value)} → {new_metric} {value(new_value)}"
    if keys:

        def shown(params: Mapping[str, str]) -> str:
            return ", ".join(f"{k}={_short(params[k])}" for k in keys if k in params) or "none"

        text += f"   ({shown(old_params)} → {shown(new_params)})"
    elif old_value == new_value and old_metric == new_metric:
        text += "   (same params)" if old_params else ""
    return text, bool(keys) or old_value != new_value or old_metric != new_metric


def _best_params(stage: RunRecord) -> dict[str, str]:
    """The best leaf's params as the stage run records them (`best.*`); a stage without sweeps is its own leaf."""
    if not stage.tags.get(schema.LEVELS):
        return dict(stage.params)
    return {k[len(schema.BEST_PARAM) :]: v for k, v in stage.tags.items() if k.startswith(schema.BEST_PARAM)}


def _leaf_counts(stage: RunRecord, tree: RunIndex) -> tuple[int, int, int]:
    """(executed, reused, failed) leaves: a leaf copied from an earlier run was reused, any other ran here, and
    failed counts those that ended without a result (pruned ones kept theirs)."""
    leaves = _leaves_under(stage, tree) or [stage]
    reused = sum(schema.CACHED_FROM in leaf.tags for leaf in leaves)
    failed = sum(not is_kept(leaf) and leaf.status != Status.RUNNING for leaf in leaves)
    return len(leaves) - reused, reused, failed
