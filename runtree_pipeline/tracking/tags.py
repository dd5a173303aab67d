"""runtree's tags: their names (the run tree's contract with the UI and `search_runs` users) and their one codec.

Everything that writes or reads a `runtree.*` tag goes through here, so the format lives in one place.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from runtree_pipeline.plan.objective import Constraint, Goal, Objective
from runtree_pipeline.states import Level
from runtree_pipeline.tracking.redact import redact

PIPELINE_ID = "runtree.pipeline_id"
STAGE = "runtree.stage"
LEVEL = "runtree.level"
ROOT_RUN_ID = "runtree.root_run_id"
BEST_RUN_ID = "runtree.best_run_id"
UPSTREAM = "runtree.upstream."
ERROR = "runtree.error"
FAILED_CHILDREN = "runtree.failed_children"
FAILED_LEAVES = "runtree.failed_leaves"
CHILDREN = "runtree.children"
OBJECTIVE_METRIC = "runtree.objective_metric"
OBJECTIVE_MODE = "runtree.objective_mode"
OBJECTIVES = "runtree.objectives"
CONSTRAINTS = "runtree.constraints"
FEASIBLE = "runtree.feasible"
AGGREGATE = "runtree.aggregate"
REPLICATES = "runtree.replicates"
PARETO = "runtree.pareto_run_ids"
LEVELS = "runtree.levels"
KEY = "runtree.key"
POINT = "runtree.point"
ASKED = "runtree.asked"
TOLD = "runtree.told"
RETURNED = "runtree.metrics"
OUTPUTS = "runtree.outputs"
OUTPUTS_IN_ARTIFACT = "runtree.outputs_in_artifact"
ARTIFACTS = "runtree.artifacts"
REGISTERED = "runtree.registered"
CACHED_FROM = "runtree.cached_from"
CODE = "runtree.code"
REGISTERED_MODEL = "runtree.registered_model"
REGISTERED_VERSION = "runtree.registered_version"
RUN_ID = "runtree.run_id"
OBJECTIVE_VALUE = "runtree.objective_value"
SUPERSEDED_BY = "runtree.superseded_by"
CHECKPOINT_STEP = "runtree.checkpoint_step"
"""The step of the leaf's newest complete checkpoint: set once its files are in the store, so a checkpoint cut off
mid-upload is never the one restored."""
CHECKPOINT_AT = "runtree.checkpoint_at"
"""When it was saved (ms): a step saved again by a later attempt is another checkpoint, not the cached copy."""
PRUNED = "runtree.pruned"
PRUNED_AT = "runtree.pruned_at_step"
PRUNED_CHILDREN = "runtree.pruned_children"
REPORTED = "runtree.reported"
ATTEMPTS = "runtree.attempts"
BUDGET_EXHAUSTED = "runtree.budget_exhausted"
POINTS_DRAWN = "runtree.points_drawn"
SEED = "runtree.seed"
ORDER_DEPENDENT = "runtree.order_dependent"
BEST_PARAM = "best."
BEST_METRIC = "best_"

CONFIG_ARTIFACT = "config.yaml"
OUTPUTS_ARTIFACT = "outputs.json"
TRACEBACK_ARTIFACT = "traceback.txt"
PARETO_ARTIFACT = "pareto_front.json"

PARENT = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
# A tag holds at most 8000 characters; larger outputs live only in the artifact.
_MAX_TAG = 7000


# ---- encoding: what each kind of run carries -----------------------------------------------------------------


def stage_tags(
    *,
    pipeline_id: str,
    stage: str,
    upstream: Mapping[str, str],
    levels: Sequence[str],
    objective: Objective,
    order_dependent: Sequence[str] = (),
) -> tuple[dict[str, str], dict[str, str]]:
    """The tags a stage run shares with its descendants, and those only the stage run carries.

    `order_dependent`: what in the stage decided by timing (`StageSpec.order_dependent`), so that a rerun with the
    same seeds may decide differently.
    """
    shared = {
        PIPELINE_ID: pipeline_id,
        STAGE: stage,
        LEVEL: Level.STAGE,
        **{UPSTREAM + d: r for d, r in upstream.items()},
    }
    own = {LEVELS: ",".join(levels), OBJECTIVE_MODE: objective.mode}
    if order_dependent:
        own[ORDER_DEPENDENT] = ",".join(order_dependent)
    if objective.metric:
        own[OBJECTIVE_METRIC] = objective.metric
    if objective.multi:
        own[OBJECTIVES] = json.dumps([[g.metric, g.mode] for g in objective.goals])
    if objective.constraints:
        own[CONSTRAINTS] = json.dumps([str(c) for c in objective.constraints])
    return shared, own


def point_tag(point: Mapping[str, Any], *, index: int | None = None, asked_after: int | None = None) -> dict[str, str]:
    """The params a sampler chose, kept so a learning sampler can replay them on resume.

    A seeded sampler draws the same points again only if it is asked and told in the same order, so a child of a
    learning sampler also carries its place among the asks and how many tells came before it.
    """
    tags = {POINT: json.dumps(dict(point), sort_keys=True, default=str)}
    if index is not None and asked_after is not None:
        tags[ASKED] = json.dumps({"index": index, "after": asked_after})
    return tags


def told_tag(
    position: int, values: Sequence[float] | None, violations: Sequence[float] | None = None
) -> dict[str, str]:
    """Where a child's values came in its parent's sampler's tells, and the values themselves (None: told as a
    failure); one objective's value is written as a number, as before there could be several.

    The values are kept rather than read back from the run's metrics: a failed child redone on resume keeps the
    failure its sampler was told, and a replay must tell that again.
    """
    told: Any = None
    if values is not None and all(math.isfinite(v) for v in values):
        told = values[0] if len(values) == 1 else list(values)
    record = {"position": position, "value": told}
    if violations:
        record["violations"] = list(violations)
    return {TOLD: json.dumps(record)}


def leaf_tags(*, returned: Iterable[str], outputs: Mapping[str, Any], artifacts: Iterable[str] = ()) -> dict[str, str]:
    """Which metrics the target returned (the rest it logged itself), its outputs when small enough, and which of
    them are artifacts (paths it returned, whose output value is the artifact's URI)."""
    tags = {RETURNED: json.dumps(sorted(returned))}
    if artifacts:
        tags[ARTIFACTS] = json.dumps(sorted(artifacts))
    if outputs:
        text = json.dumps(redact(dict(outputs)), sort_keys=True)
        tags.update({OUTPUTS: text} if len(text) <= _MAX_TAG else {OUTPUTS_IN_ARTIFACT: "true"})
    return tags


PRUNING_TAGS = (PRUNED, PRUNED_AT, REPORTED)
"""What a pruned leaf recorded about its pruning: dropped when a resume without the pruner runs it to its end."""


def pruned_tags(step: int) -> dict[str, str]:
    return {PRUNED: "true", PRUNED_AT: str(step)}


def reported_tag(values: Mapping[int, float]) -> dict[str, str]:
    """The objective's intermediate values a leaf reported, `[[step, value], ...]`, kept so that a resume can tell
    its parent's pruner the same history (reading every leaf's metric history back would be a call per leaf).

    Past the tag's size, the earliest steps are dropped: a resumed pruner then sees a shorter history for that leaf.
    """
    pairs = [[step, value if math.isfinite(value) else None] for step, value in sorted(values.items())]
    text = json.dumps(pairs, separators=(",", ":"))
    while len(text) > _MAX_TAG and pairs:
        pairs = pairs[len(pairs) // 8 + 1 :]
        text = json.dumps(pairs, separators=(",", ":"))
    return {REPORTED: text}


def budget_tags(*, drawn: int) -> dict[str, str]:
    """A parent whose time budget ran out, and how many points it had drawn: a resume draws those again, no more."""
    return {BUDGET_EXHAUSTED: "true", POINTS_DRAWN: str(drawn)}


def seed_tag(seed: int) -> dict[str, str]:
    """The seed a parent's random or tpe study drew its points with, derived from its level's `seed`.

    A parent recorded before seeds were derived per parent lacks it: its study had the level's seed itself.
    """
    return {SEED: str(seed)}


def recorded_seed(tags: Mapping[str, str]) -> int | None:
    return int(tags[SEED]) if SEED in tags else None


def parent_tags(
    *,
    children: int,
    failed_children: int,
    failed_leaves: int,
    best_run_id: str | None,
    best_params: Mapping[str, Any],
    pruned_leaves: int = 0,
) -> dict[str, Any]:
    tags: dict[str, Any] = {CHILDREN: children, FAILED_CHILDREN: failed_children, FAILED_LEAVES: failed_leaves}
    if pruned_leaves:
        tags[PRUNED_CHILDREN] = pruned_leaves
    if best_run_id is not None:
        tags[BEST_RUN_ID] = best_run_id
        tags.update({BEST_PARAM + k: v for k, v in best_params.items()})
    return tags


def aggregate_tags(how: str, replicates: int) -> dict[str, str]:
    return {AGGREGATE: how, REPLICATES: str(replicates)}


def pareto_tag(run_ids: Sequence[str]) -> dict[str, str]:
    """The front's runs, comma-separated; past the tag's size, as many as fit (`pareto_front.json` has them all)."""
    kept: list[str] = []
    for run_id in run_ids:
        if sum(map(len, kept)) + len(kept) + len(run_id) > _MAX_TAG:
            break
        kept.append(run_id)
    return {PARETO: ",".join(kept)}


def best_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    return {BEST_METRIC + k: v for k, v in metrics.items()}


# ---- decoding ----------------------------------------------------------------------------------------------------


def is_stage(tags: Mapping[str, str]) -> bool:
    return tags.get(LEVEL) == Level.STAGE


def objective_of(tags: Mapping[str, str]) -> Objective:
    """A stage run's objective, as recorded when it ran; damaged list tags read as its selected goal alone."""
    metric, mode = tags.get(OBJECTIVE_METRIC), tags.get(OBJECTIVE_MODE, "min")
    single = Objective.of(metric, mode)
    try:
        goals = tuple(Goal(str(m), str(d)) for m, d in json.loads(tags.get(OBJECTIVES, "[]")))
        constraints = tuple(Constraint.parse(c) for c in json.loads(tags.get(CONSTRAINTS, "[]")))
    except (ValueError, TypeError):
        return single
    return Objective(goals or single.goals, constraints, metric if goals else None)


def aggregate_of(tags: Mapping[str, str]) -> tuple[str, int] | None:
    """An aggregated parent's (aggregate, replicates); None for any other run."""
    how, n = tags.get(AGGREGATE), tags.get(REPLICATES, "")
    return (how, int(n)) if how and n.isdigit() else None


def point_of(tags: Mapping[str, str]) -> dict[str, Any] | None:
    text = tags.get(POINT)
    return json.loads(text) if text is not None else None


def asked_of(tags: Mapping[str, str]) -> tuple[int, int] | None:
    """A child's (ask index, tells before that ask); None when written before asks were recorded."""
    record = _record(tags, ASKED)
    if record is None or not _are_positions(record.get("index"), record.get("after")):
        return None
    return record["index"], record["after"]


def told_of(tags: Mapping[str, str]) -> tuple[int, tuple[float, ...] | None, tuple[float, ...] | None] | None:
    """A child's (place among the tells, values told, constraint violations told); None while it was never told."""
    record = _record(tags, TOLD)
    if record is None or not _are_positions(record.get("position")):
        return None
    value = record.get("value")
    values = _numbers(value if isinstance(value, list) else [value])
    return record["position"], values, _numbers(record.get("violations"))


def _numbers(items: Any) -> tuple[float, ...] | None:
    if not isinstance(items, list) or not items:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        return None
    return tuple(float(v) for v in items)


def pruned_at(tags: Mapping[str, str]) -> int | None:
    """The step a pruner stopped this leaf at; None for a leaf that was not pruned."""
    if tags.get(PRUNED) != "true":
        return None
    try:
        return int(tags.get(PRUNED_AT, "0"))
    except ValueError:
        return 0


def points_drawn(tags: Mapping[str, str]) -> int | None:
    """How many points a parent had drawn when its time budget ran out; None while it had not."""
    if tags.get(BUDGET_EXHAUSTED) != "true":
        return None
    try:
        return int(tags.get(POINTS_DRAWN, ""))
    except ValueError:
        return None


def reported_of(tags: Mapping[str, str]) -> dict[int, float]:
    """A leaf's reported objective history, {step: value}; empty when none was kept or the tag is damaged."""
    try:
        pairs = json.loads(tags.get(REPORTED, "[]"))
        return {int(step): float("nan") if value is None else float(value) for step, value in pairs}
    except (ValueError, TypeError):
        return {}


def computed_by(tags: Mapping[str, str], run_id: str) -> str:
    """The run that really computed a leaf's result: a cached copy names it, any other run is it."""
    return tags.get(CACHED_FROM, run_id)


def artifacts_of(tags: Mapping[str, str]) -> tuple[str, ...]:
    try:
        keys = json.loads(tags.get(ARTIFACTS, "[]"))
    except ValueError:
        return ()
    return tuple(str(k) for k in keys) if isinstance(keys, list) else ()


def returned_of(tags: Mapping[str, str]) -> list[str]:
    return json.loads(tags.get(RETURNED, "[]"))


def outputs_of(tags: Mapping[str, str]) -> dict[str, Any] | None:
    """A leaf's outputs from its tag; None when they live only in the `outputs.json` artifact."""
    if tags.get(OUTPUTS_IN_ARTIFACT):
        return None
    text = tags.get(OUTPUTS)
    return json.loads(text) if text is not None else {}


def _record(tags: Mapping[str, str], name: str) -> dict[str, Any] | None:
    """A JSON object tag; anything else reads as missing, so a damaged tag costs a resume its replay, not its run."""
    text = tags.get(name)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _are_positions(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


def upstream_of(tags: Mapping[str, str]) -> dict[str, str]:
    return {k[len(UPSTREAM) :]: v for k, v in tags.items() if k.startswith(UPSTREAM)}
