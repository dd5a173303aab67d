"""Config → validated plan: the stage DAG, each stage's target, params and sweeps, checked before any run exists.

Every problem is collected and raised once (sorted), so a user fixes a config in one pass; nothing here touches a
tracking store, which is what lets a bad config leave the store untouched.
"""

from __future__ import annotations

import difflib
import heapq
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from runtree_pipeline.errors import ConfigError, ConfigErrors, UnknownKey, first_line
from runtree_pipeline.plan import references, targets
from runtree_pipeline.plan.objective import MODES, Constraint, Goal, Objective
from runtree_pipeline.plan.params import flatten, merge
from runtree_pipeline.plan.sweeps import (
    Point,
    SweepSpec,
    format_seconds,
    parse_sweep,
    positive_number,
)

if TYPE_CHECKING:
    import networkx as nx

STAGE_KEYS = (
    *targets.KEYS,
    "params",
    "depends_on",
    "variants",
    "subvariants",
    "objective",
    "constraints",
    "select",
    "tags",
    "on_failure",
    "limits",
    "register",
)
ON_FAILURE = ("continue", "stop")
LIMIT_KEYS = ("timeout_s", "retries", "keep_checkpoints")
CACHE_KEYS = ("enabled", "code")
REGISTER_KEYS = ("name", "alias", "only_if_better", "model")


@dataclass(frozen=True)
class Limits:
    """How long one leaf call may take and how often a failed one is tried again, so one hung or flaky trial
    costs a bounded share of a search."""

    timeout_s: float | None = None
    retries: int = 0
    keep_checkpoints: int = 2
    """How many of a leaf's newest checkpoints its run keeps: the one being written never replaces the last good
    one until it is complete, so 2 survives a kill during a save."""

    def describe(self) -> str:
        parts = [f"timeout {format_seconds(self.timeout_s)} s"] if self.timeout_s is not None else []
        if self.retries:
            parts.append(f"{self.retries} {'retry' if self.retries == 1 else 'retries'}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Register:
    """Which registered model the stage's best leaf's logged model becomes a version of, so a deployment can load
    `models:/NAME@ALIAS` without knowing which trial won; `model` picks among several logged models by name."""

    name: str
    alias: str = "champion"
    only_if_better: bool = False
    model: str | None = None


@dataclass(frozen=True)
class StageSpec:
    name: str
    target: targets.Target
    params: Mapping[str, Any]
    depends_on: tuple[str, ...] = ()
    variants: SweepSpec | None = None
    subvariants: SweepSpec | None = None
    objective: Objective = Objective()
    tags: Mapping[str, str] = field(default_factory=dict)
    on_failure: str = "continue"
    references: tuple[references.Reference, ...] = ()
    limits: Limits = Limits()
    register: Register | None = None
    sweep_config: Mapping[str, Any] = field(default_factory=dict)
    """`variants` and `subvariants` as the config wrote them (resolved), for the stage run's recorded config."""

    @property
    def levels(self) -> tuple[SweepSpec, ...]:
        return tuple(s for s in (self.variants, self.subvariants) if s is not None)

    @property
    def sweeps(self) -> bool:
        return bool(self.levels)

    def below(self, point: Point) -> tuple[SweepSpec, ...]:
        """The levels under one point of the stage's first level: its own space, or the stage's remaining ones."""
        return self.levels[1:] if point.below is None else point.below

    def run_counts(self) -> tuple[int, int]:
        """(variant runs, sub-variant runs) this stage creates, each variant counted with its own space."""
        if self.variants is None:
            return 0, self.subvariants.size() if self.subvariants else 0
        v = self.variants.size()
        if not self.variants.points:  # random/tpe: every variant gets the stage's subvariants
            return v, self.subvariants.size() * v if self.subvariants else 0
        return v, sum(below[0].size() for below in map(self.below, self.variants.points) if below)

    def leaf_count(self) -> int:
        v, s = self.run_counts()
        if self.variants is None or not self.variants.points:
            return s or v or 1
        return sum(below[0].size() if below else 1 for below in map(self.below, self.variants.points))

    def param_keys(self) -> set[str]:
        keys = set(flatten(dict(self.params)))
        for level in self.all_levels:
            keys.update(level.keys)
            for point in level.points:
                keys.update(flatten(merge({}, point.params)))
        return keys

    @property
    def all_levels(self) -> tuple[SweepSpec, ...]:
        """The stage's levels and every variant's own space: what a question about any level of it must look at."""
        own = tuple(level for p in (self.variants.points if self.variants else ()) for level in p.below or ())
        return self.levels + own

    @property
    def aggregates(self) -> bool:
        """Some level's replicates are judged by their aggregate: no single leaf is ever the stage's best."""
        return any(level.aggregate for level in self.all_levels)

    def replicate_keys(self) -> set[str]:
        """Params that differ between the replicates of an aggregated level: the stage's best is their parent, which
        has no single value of them."""
        if self.variants is not None and self.variants.aggregate:
            return self.param_keys() - set(flatten(dict(self.params)))
        keys: set[str] = set()
        for level in self.all_levels:
            if level.aggregate:
                keys.update(level.keys)
                for point in level.points:
                    keys.update(flatten(merge({}, point.params)))
        return keys

    @property
    def prunes(self) -> bool:
        """A pruner is not in the content key: a pruned leaf from an earlier run only stands where one still decides."""
        return any(level.pruner is not None for level in self.all_levels)

    def order_dependent(self, *, workers: int) -> tuple[str, ...]:
        """What in this stage decides by timing, so a rerun with the same seeds may prune, draw or stop differently
        and pick another best: a time budget always; with several workers, what decides from the leaves finished
        so far (a pruner, a learning sampler, `on_failure: stop`), since which ones those are depends on which
        finished first."""
        levels = self.all_levels
        found = ["time_budget_s"] if any(level.time_budget_s is not None for level in levels) else []
        if workers > 1:
            found += ["pruner"] if self.prunes else []
            found += sorted({level.sampler_name for level in levels if level.learns})
            found += ["on_failure=stop"] if self.on_failure == "stop" else []
        return tuple(found)


@dataclass(frozen=True)
class Cache:
    """`cache:` whether a leaf whose content key matches a finished leaf of any earlier execution of the experiment
    is taken from it instead of run, and whether the key holds a fingerprint of the target's source file."""

    enabled: bool = False
    code: bool = True


@dataclass(frozen=True)
class Plan:
    experiment: str
    tracking_uri: str | None
    tags: Mapping[str, str]
    stages: Mapping[str, StageSpec]
    order: tuple[str, ...]
    config: Mapping[str, Any]
    resume: str | None = None
    cache: Cache = Cache()
    system_metrics_s: float | None = None
    """`system_metrics_interval_s` when `system_metrics: true`: every leaf samples the machine at this interval."""
    preempt_grace_s: float = 30.0
    """After SIGTERM, how long running leaves get to save a checkpoint before the pipeline ends."""
    stale_after_s: float = 60.0
    """How old another host's driver's heartbeat must be before `resume=` may take its execution over."""

    @property
    def graph(self) -> nx.DiGraph:
        """The DAG as networkx holds it, for whoever wants to draw or query it (imported here, not at start-up)."""
        import networkx as nx

        g = nx.DiGraph()
        g.add_nodes_from(self.order)
        g.add_edges_from((dep, s.name) for s in self.stages.values() for dep in s.depends_on)
        return nx.freeze(g)

    def upstream(self, stage: str) -> set[str]:
        return _ancestors({name: s.depends_on for name, s in self.stages.items()}, stage)

    def describe(self) -> str:
        """The dry-run view: stages in execution order with the runs each would create."""
        lines = [f"pipeline '{self.experiment}': {len(self.order)} stage(s) in execution order"]
        total = 0
        for name in self.order:
            stage = self.stages[name]
            v, s = stage.run_counts()
            total += 1 + v + s
            after = f" after {', '.join(stage.depends_on)}" if stage.depends_on else ""
            sweep = [_describe_level(level) for level in stage.levels]
            for point in stage.variants.points if stage.variants else ():
                if point.below is not None:
                    own = _describe_level(point.below[0]) if point.below else "no subvariants"
                    sweep.append(f"variant '{point.name}': {own}")
            detail = "; ".join(sweep) if sweep else "single run"
            if stage.limits != Limits():
                detail += f"; limits {stage.limits.describe()}"
            runs = f"{v} variant run(s), {s} sub-variant run(s)"
            lines.append(f"  {name}{after}: {stage.target.describe()} — {detail} → {runs}")
        lines.append(f"total: {total} MLflow run(s); dry run, nothing was recorded")
        return "\n".join(lines)


def _describe_level(level: SweepSpec) -> str:
    how = level.sampler_name if level.dimensions else "points"
    size = f"{level.size()} ({how})"
    if level.time_budget_s is not None:
        size = f"up to {size} or {format_seconds(level.time_budget_s)} s"
    pruner = level.pruner if isinstance(level.pruner, str) or level.pruner is None else level.pruner["_target_"]
    return f"{level.level}s: {size}" + (f", pruner {pruner}" if pruner else "")


def build_plan(cfg: DictConfig | Mapping[str, Any], *, default_experiment: str = "runtree") -> Plan:
    """Validate a whole config and return its plan, or raise ConfigErrors listing every problem."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    errors: list[ConfigError] = []
    top = _resolve_top(cfg, errors)
    objective = _objective(top, None, errors)
    tags = _tags(top.get("tags"), None, "tags", errors)
    stages_cfg = cfg.get("stages")
    if stages_cfg is not None and not OmegaConf.is_dict(stages_cfg):
        got = "a list" if OmegaConf.is_list(stages_cfg) else repr(stages_cfg)
        errors.append(ConfigError(f"must map each stage's name to its config, got {got}", key="stages"))
        raise ConfigErrors(errors)
    if not stages_cfg:
        errors.append(ConfigError("no stages declared: choose a pipeline with +sweep=NAME", key="stages"))
        raise ConfigErrors(errors)

    stages: dict[str, StageSpec] = {}
    broken: set[str] = set()
    meant: dict[str, list[str]] = {}
    for name in map(str, stages_cfg):
        before = len(errors)
        try:
            stages[name] = _stage(name, stages_cfg[name], objective, errors)
        except ConfigError as e:
            errors.append(e)
            broken.add(name)
        else:
            meant[name] = _misspelt_depends_on(stages_cfg[name])
        if any((e.key or "").split(".")[0] in ("variants", "subvariants") for e in errors[before:]):
            broken.add(name)  # its swept params are unknown: a reference to them is not an error of its own

    deps: dict[str, list[str]] = {name: [] for name in stages}
    for stage in stages.values():
        for dep in stage.depends_on:
            if dep in stages:
                deps[stage.name].append(dep)
            elif dep not in broken:
                errors.append(
                    ConfigError(f"unknown stage '{dep}'{_hint(dep, stages)}", stage=stage.name, key="depends_on")
                )
    try:
        order = _order(deps)
    except CycleError as e:
        cycle = _cycle_path(e.args[1], first=list(stages))
        path = " -> ".join(cycle)
        errors.append(ConfigError(f"stages form a cycle: {path}", stage=cycle[0], key="depends_on"))
        order = ()
    else:
        for stage in stages.values():
            # upstream as the user meant it: the unknown-key error already names a misspelt depends_on
            would_be = {**deps, stage.name: deps[stage.name] + [d for d in meant[stage.name] if d in stages]}
            _check_references(stage, stages, _ancestors(would_be, stage.name), broken, errors)
    if errors:
        raise ConfigErrors(errors)

    resume = top.get("resume")
    if resume is not None and not (resume == "last" or re.fullmatch(r"[0-9a-f]{12}", str(resume))):
        errors.append(ConfigError(f"must be 'last' or a pipeline id (12 hex digits), got {resume!r}", key="resume"))
    cache = _cache(top.get("cache"), errors)
    system_metrics_s = _system_metrics(top, errors)
    stale_after_s = _seconds(top, "stale_after_s", 60, errors)
    preempt_grace_s = _seconds(top, "preempt_grace_s", 30, errors, zero=True)
    if errors:
        raise ConfigErrors(errors)
    experiment = top.get("experiment") or default_experiment
    config = {k: v for k, v in top.items() if k not in ("resume", "dry_run")}
    config["stages"] = {name: _stage_config(stages[name]) for name in order}
    return Plan(
        experiment=str(experiment),
        tracking_uri=top.get("tracking_uri") or None,
        tags=tags,
        stages={name: stages[name] for name in order},
        order=order,
        config=config,
        resume=str(resume) if resume is not None else None,
        cache=cache,
        system_metrics_s=system_metrics_s,
        stale_after_s=stale_after_s,
        preempt_grace_s=preempt_grace_s,
    )


def _resolve_top(cfg: DictConfig, errors: list[ConfigError]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in cfg:
        if key in ("stages", "hydra"):
            continue
        try:
            with references.recording():
                value = cfg[key]
            out[str(key)], _ = references.resolve_recording(value)
        except Exception as e:  # noqa: BLE001 - OmegaConf wraps the user's interpolation error in many types
            errors.append(ConfigError(first_line(e), key=str(key)))
    return out


def _stage(name: str, node: Any, default: Objective, errors: list[ConfigError]) -> StageSpec:
    if not OmegaConf.is_dict(node):
        raise ConfigError("must be a mapping with a `_target_` or a `command`", stage=name)
    errors.extend(_unknown_keys(node, STAGE_KEYS, stage=name))
    try:
        raw, refs = references.resolve_recording(node)
    except Exception as e:  # noqa: BLE001 - OmegaConf wraps the user's interpolation error in many types
        raise ConfigError(first_line(e), stage=name) from None

    target, missing = targets.parse(raw, stage=name)
    if missing is not None:
        errors.append(missing)
    params = raw.get("params") or {}
    params_ok = isinstance(params, dict)
    if not params_ok:
        errors.append(ConfigError("must be a mapping", stage=name, key="params"))
        params = {}
    depends_on = raw.get("depends_on") or []
    if isinstance(depends_on, str):
        depends_on = [depends_on]
    if not isinstance(depends_on, list) or not all(isinstance(d, str) for d in depends_on):
        errors.append(ConfigError(f"must be a list of stage names, got {depends_on!r}", stage=name, key="depends_on"))
        depends_on = []
    before = len(errors)
    objective = _objective(raw, default, errors, stage=name)
    objective_ok = not any((e.key or "").startswith("objective") for e in errors[before:])

    levels = {}
    sweeps_ok = True
    for level in ("variant", "subvariant"):
        if raw.get(level + "s") is not None:
            try:
                levels[level] = parse_sweep(raw[level + "s"], stage=name, level=level)
            except ConfigError as e:
                errors.append(e)
                sweeps_ok = False
    on_failure = raw.get("on_failure") or "continue"
    if on_failure not in ON_FAILURE:
        errors.append(
            ConfigError(f"must be one of {', '.join(ON_FAILURE)}, got {on_failure!r}", stage=name, key="on_failure")
        )
    limits = _limits(raw.get("limits"), name, errors)
    register = _register(raw.get("register"), objective, name, errors)
    spec = StageSpec(
        name=name,
        target=target,
        params=params,
        depends_on=tuple(str(d) for d in depends_on),
        variants=levels.get("variant"),
        subvariants=levels.get("subvariant"),
        objective=objective,
        tags=_tags(raw.get("tags"), name, "tags", errors),
        on_failure=on_failure,
        references=tuple(refs),
        limits=limits,
        register=register,
        sweep_config={k: raw[k] for k in ("variants", "subvariants") if raw.get(k) is not None},
    )
    if spec.variants and spec.variants.pruner is not None and spec.subvariants:
        errors.append(
            ConfigError(
                "the pruner goes on the leaf level, subvariants: a variant here is a parent, not a trial it can stop",
                stage=name,
                key="variants.pruner",
            )
        )
    if spec.sweeps and not objective.metric and objective_ok:  # a broken objective is reported once
        errors.append(
            ConfigError(
                "a stage that sweeps needs objective.metric to pick its best run", stage=name, key="objective.metric"
            )
        )
    errors.extend(_objective_fits_levels(spec))
    if missing is None:
        errors.extend(target.validate(name, _calls(spec) if sweeps_ok and params_ok else None))
    return spec


def _misspelt_depends_on(node: Any) -> list[str]:
    """The stage names under a key whose unknown-key error asks "did you mean 'depends_on'?": a reference to one of
    them follows from that one misspelling, and the user is told of it once, not again for each reference."""
    names: list[str] = []
    for key in sorted(set(map(str, node)) - set(STAGE_KEYS)):
        if _closest(key, STAGE_KEYS) != "depends_on":
            continue
        try:
            value, _ = references.resolve_recording(node[key])
        except Exception:  # noqa: BLE001 - a value that cannot be read names no stage
            continue
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            names.extend(d for d in value if isinstance(d, str))
    return names


def _calls(spec: StageSpec) -> Iterator[targets.Call]:
    """Every combination of params the stage will pass its target; a variant with its own space passes that space's
    params, not the stage's subvariants'."""
    for variant, combo in _combos(spec):
        where = f" in variant '{variant.name}'" if variant is not None and variant.below is not None else ""
        yield merge(dict(spec.params), *combo), where


def _combos(spec: StageSpec) -> Iterator[tuple[Point | None, tuple[dict[str, Any], ...]]]:
    """Each variant point with every choice of params under it; a sampled level stands for all its draws."""

    def options(level: SweepSpec) -> list[dict[str, Any]]:
        if level.points:
            return [merge({}, p.params) for p in level.points]
        return [merge({}, {k: None for k in level.keys})]

    if spec.variants is None or not spec.variants.points:
        for combo in itertools.product(*map(options, spec.levels)):
            yield None, combo
        return
    for point in spec.variants.points:
        for combo in itertools.product(*map(options, spec.below(point))):
            yield point, (merge({}, point.params), *combo)


def _order(deps: Mapping[str, Iterable[str]]) -> tuple[str, ...]:
    """Dependencies first and, among stages ready at the same time, by name: the same order on every machine.

    The standard library's sorter rather than networkx, whose import alone costs a quarter of a second of every
    start-up.
    """
    sorter = TopologicalSorter(deps)
    sorter.prepare()
    ready = list(sorter.get_ready())
    heapq.heapify(ready)
    order = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        sorter.done(name)
        for now_ready in sorter.get_ready():
            heapq.heappush(ready, now_ready)
    return tuple(order)


def _cycle_path(cycle: list[str], *, first: list[str]) -> list[str]:
    """The sorter's cycle (each stage followed by one that depends on it), started from the stage declared first,
    and closed: a -> b -> a."""
    ring = cycle[:-1]
    start = min(range(len(ring)), key=lambda i: first.index(ring[i]))
    ring = ring[start:] + ring[:start]
    return [*ring, ring[0]]


def _ancestors(deps: Mapping[str, Iterable[str]], stage: str) -> set[str]:
    seen: set[str] = set()
    todo = list(deps.get(stage, ()))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(deps.get(name, ()))
    return seen


def _check_references(
    spec: StageSpec, stages: Mapping[str, StageSpec], upstream: set[str], broken: set[str], errors: list[ConfigError]
) -> None:
    for ref in spec.references:
        if ref.stage in broken:
            continue
        if ref.stage not in stages:
            errors.append(
                ConfigError(
                    f"{ref.text} refers to unknown stage '{ref.stage}'{_hint(ref.stage, stages)}",
                    stage=spec.name,
                    key="params",
                )
            )
        elif ref.stage not in upstream:
            errors.append(
                ConfigError(
                    f"{ref.text} refers to stage '{ref.stage}', which is not upstream (add it to depends_on)",
                    stage=spec.name,
                    key="depends_on",
                )
            )
        elif ref.kind == "params":
            keys = stages[ref.stage].param_keys()
            replicated = stages[ref.stage].replicate_keys()
            if ref.key in replicated or any(k.startswith(ref.key + ".") for k in replicated):
                errors.append(
                    ConfigError(
                        f"{ref.text}: '{ref.key}' differs between the replicates stage '{ref.stage}' aggregates, "
                        "and its best is their parent, which has no one value of it",
                        stage=spec.name,
                        key="params",
                    )
                )
            elif ref.key not in keys and not any(k.startswith(ref.key + ".") for k in keys):
                errors.append(
                    ConfigError(
                        f"{ref.text}: stage '{ref.stage}' has no param '{ref.key}'{_hint(ref.key, keys)}",
                        stage=spec.name,
                        key="params",
                    )
                )


def _objective(
    raw: Mapping[str, Any], default: Objective | None, errors: list[ConfigError], stage: str | None = None
) -> Objective:
    """`objective` (one `{metric, mode}` or a list of them), `constraints` and `select`, from a stage or the top
    level; what a stage leaves out it takes from the top level."""
    base = default or Objective()
    goals = _goals(raw.get("objective"), base, errors, stage)
    constraints = base.constraints
    if raw.get("constraints") is not None:
        constraints = _constraints(raw["constraints"], errors, stage)
    select = raw.get("select", base.select)
    if isinstance(select, Mapping):
        errors.extend(_unknown_keys(select, ("metric",), stage=stage, under="select."))
        select = select.get("metric")
    if select is not None and select not in [g.metric for g in goals]:
        if "select" in raw:
            have = ", ".join(g.metric for g in goals) or "none"
            errors.append(
                ConfigError(f"{select!r} is not an objective (objectives: {have})", stage=stage, key="select")
            )
        select = None
    return Objective(goals, constraints, select)


def _goals(raw: Any, base: Objective, errors: list[ConfigError], stage: str | None) -> tuple[Goal, ...]:
    if raw is None:
        return base.goals
    if isinstance(raw, Mapping):
        start = len(errors)
        mode = raw.get("mode") or base.mode
        if mode not in MODES:
            errors.append(ConfigError(f"must be min or max, got {mode!r}", stage=stage, key="objective.mode"))
            mode = base.mode
        metric = raw.get("metric", base.metric)
        errors.extend(_unknown_keys(raw, ("metric", "mode"), stage=stage, under="objective."))
        return (Goal(str(metric), mode),) if metric and len(errors) == start else ()
    if not isinstance(raw, list) or not raw:
        errors.append(
            ConfigError(
                "must be a mapping like {metric: val_loss, mode: min}, or a list of them", stage=stage, key="objective"
            )
        )
        return base.goals
    goals: list[Goal] = []
    for i, item in enumerate(raw):
        key = f"objective[{i}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("metric"), str) or not item["metric"]:
            errors.append(
                ConfigError(
                    f"must be a mapping like {{metric: val_loss, mode: min}}, got {item!r}", stage=stage, key=key
                )
            )
            continue
        errors.extend(_unknown_keys(item, ("metric", "mode"), stage=stage, under=key + "."))
        mode = item.get("mode") or "min"
        if mode not in MODES:
            errors.append(ConfigError(f"must be min or max, got {mode!r}", stage=stage, key=key + ".mode"))
        elif item["metric"] in [g.metric for g in goals]:
            errors.append(ConfigError(f"'{item['metric']}' is listed twice", stage=stage, key=key + ".metric"))
        else:
            goals.append(Goal(item["metric"], mode))
    return tuple(goals)


def _constraints(raw: Any, errors: list[ConfigError], stage: str | None) -> tuple[Constraint, ...]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        errors.append(
            ConfigError(f"must be a list like ['params_m <= 2.0'], got {raw!r}", stage=stage, key="constraints")
        )
        return ()
    out = []
    for i, text in enumerate(items):
        try:
            out.append(Constraint.parse(text))
        except ValueError as e:
            errors.append(ConfigError(str(e), stage=stage, key=f"constraints[{i}]"))
    return tuple(out)


def _objective_fits_levels(spec: StageSpec) -> list[ConfigError]:
    """What several objectives rule out, found now rather than by Optuna in the middle of a sweep."""
    if not spec.objective.multi:
        return []
    errors = []
    names = ", ".join(spec.objective.metrics)
    for level in spec.all_levels:
        where = f"{level.level}s"
        if level.pruner is not None:
            errors.append(
                ConfigError(
                    f"cannot prune with {len(spec.objective.goals)} objectives ({names}): Optuna prunes on one value",
                    stage=spec.name,
                    key=f"{where}.pruner",
                )
            )
        if level.sampler_name in ("cmaes", "optuna.samplers.CmaEsSampler"):
            errors.append(
                ConfigError(
                    f"cmaes optimises one objective, this stage has {len(spec.objective.goals)} ({names}): "
                    "use nsga2, tpe, random or grid",
                    stage=spec.name,
                    key=f"{where}.sampler",
                )
            )
    return errors


def _limits(raw: Any, stage: str, errors: list[ConfigError]) -> Limits:
    if raw is None:
        return Limits()
    if not isinstance(raw, Mapping):
        errors.append(ConfigError("must be a mapping like {timeout_s: 600, retries: 1}", stage=stage, key="limits"))
        return Limits()
    errors.extend(_unknown_keys(raw, LIMIT_KEYS, stage=stage, under="limits."))
    timeout, retries = raw.get("timeout_s"), raw.get("retries")
    if timeout is not None and not positive_number(timeout):
        errors.append(
            ConfigError(f"must be a positive number of seconds, got {timeout!r}", stage=stage, key="limits.timeout_s")
        )
        timeout = None
    if retries is not None and not (isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0):
        errors.append(
            ConfigError(f"must be a non-negative integer, got {retries!r}", stage=stage, key="limits.retries")
        )
        retries = None
    keep = raw.get("keep_checkpoints", 2)
    if not (isinstance(keep, int) and not isinstance(keep, bool) and keep >= 1):
        errors.append(
            ConfigError(f"must be a positive integer, got {keep!r}", stage=stage, key="limits.keep_checkpoints")
        )
        keep = 2
    return Limits(
        timeout_s=float(timeout) if timeout is not None else None, retries=retries or 0, keep_checkpoints=keep
    )


def _register(raw: Any, objective: Objective, stage: str, errors: list[ConfigError]) -> Register | None:
    """Checked as MLflow's registry would check it, so a bad name fails the config, not the stage after training."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        errors.append(
            ConfigError("must be a mapping like {name: my-model, alias: champion}", stage=stage, key="register")
        )
        return None
    before = len(errors)
    errors.extend(_unknown_keys(raw, REGISTER_KEYS, stage=stage, under="register."))
    name, alias, model = raw.get("name"), raw.get("alias"), raw.get("model")
    alias = "champion" if alias is None else alias
    only_if_better = False if raw.get("only_if_better") is None else raw["only_if_better"]
    if not isinstance(name, str) or not name.strip():
        errors.append(ConfigError(f"must be a registered model's name, got {name!r}", stage=stage, key="register.name"))
    elif "/" in name or ":" in name:
        errors.append(ConfigError(f"cannot contain '/' or ':', got {name!r}", stage=stage, key="register.name"))
    if not isinstance(alias, str) or not re.fullmatch(r"[\w-]{1,255}", alias):
        errors.append(
            ConfigError(
                f"must be a non-empty alias of letters, digits, '_' and '-', got {alias!r}",
                stage=stage,
                key="register.alias",
            )
        )
    elif re.fullmatch(r"[vV]\d+", alias) or alias.lower() == "latest":
        errors.append(
            ConfigError(
                f"{alias!r} is reserved by MLflow's registry, choose another", stage=stage, key="register.alias"
            )
        )
    if not isinstance(only_if_better, bool):
        errors.append(
            ConfigError(f"must be true or false, got {only_if_better!r}", stage=stage, key="register.only_if_better")
        )
    elif only_if_better and not objective.metric:
        errors.append(
            ConfigError(
                "needs objective.metric to compare the new best with the registered one",
                stage=stage,
                key="register.only_if_better",
            )
        )
    if model is not None and (not isinstance(model, str) or not model):
        errors.append(
            ConfigError(f"must be the name of a logged model, got {model!r}", stage=stage, key="register.model")
        )
    if len(errors) > before:
        return None
    return Register(name=name, alias=alias, only_if_better=only_if_better, model=model)


def _tags(raw: Any, stage: str | None, key: str, errors: list[ConfigError]) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        errors.append(ConfigError("must be a mapping of tag names to values", stage=stage, key=key))
        return {}
    return {str(k): str(v) for k, v in raw.items()}


def _stage_config(spec: StageSpec) -> dict[str, Any]:
    """What the stage run stores as its resolved config artifact."""
    config = {
        **spec.target.config(),
        "depends_on": list(spec.depends_on),
        "params": spec.params,
        **_objective_config(spec.objective),
        "tags": dict(spec.tags),
        "on_failure": spec.on_failure,
        **spec.sweep_config,
    }
    if spec.limits != Limits():
        config["limits"] = {
            "timeout_s": spec.limits.timeout_s,
            "retries": spec.limits.retries,
            "keep_checkpoints": spec.limits.keep_checkpoints,
        }
    if spec.register is not None:
        r = spec.register
        config["register"] = {"name": r.name, "alias": r.alias, "only_if_better": r.only_if_better, "model": r.model}
    return config


def _objective_config(objective: Objective) -> dict[str, Any]:
    """As written: one goal as a mapping (the form every earlier stage run recorded), several as a list."""
    goals = [{"metric": g.metric, "mode": g.mode} for g in objective.goals]
    one = goals[0] if goals else {"metric": None, "mode": objective.mode}
    config: dict[str, Any] = {"objective": goals if objective.multi else one}
    if objective.constraints:
        config["constraints"] = [str(c) for c in objective.constraints]
    if objective.multi:
        config["select"] = {"metric": objective.metric}
    return config


def _cache(raw: Any, errors: list[ConfigError]) -> Cache:
    """`cache: true`, or a mapping that turns it on with options (`{code: false}`); false or absent: off."""
    if raw is None or raw is False:
        return Cache()
    if raw is True:
        return Cache(enabled=True)
    if not isinstance(raw, Mapping):
        errors.append(ConfigError(f"must be true, false or a mapping like {{code: false}}, got {raw!r}", key="cache"))
        return Cache()
    errors.extend(_unknown_keys(raw, CACHE_KEYS, stage=None, under="cache."))
    enabled, code = raw.get("enabled", True), raw.get("code", True)
    for key, value in (("enabled", enabled), ("code", code)):
        if not isinstance(value, bool):
            errors.append(ConfigError(f"must be true or false, got {value!r}", key=f"cache.{key}"))
    return Cache(enabled=enabled is True, code=code is not False)


def _seconds(
    top: Mapping[str, Any], key: str, default: float, errors: list[ConfigError], *, zero: bool = False
) -> float:
    """A top-level duration; unset or null is `default`, and `zero` allows 0 (as in "no grace")."""
    value = top.get(key)
    if value is None:
        return float(default)
    if positive_number(value) or (zero and value == 0 and not isinstance(value, bool)):
        return float(value)
    what = "a number of seconds, 0 or more" if zero else "a positive number of seconds"
    errors.append(ConfigError(f"must be {what}, got {value!r}", key=key))
    return float(default)


def _system_metrics(top: Mapping[str, Any], errors: list[ConfigError]) -> float | None:
    """`system_metrics: true` and its `system_metrics_interval_s` (default 10); the interval is checked even while
    off, so a typo fails now rather than on the day it is turned on."""
    on, interval = top.get("system_metrics", False), top.get("system_metrics_interval_s", 10)
    if on is not None and not isinstance(on, bool):
        errors.append(ConfigError(f"must be true or false, got {on!r}", key="system_metrics"))
    if not positive_number(interval):
        errors.append(
            ConfigError(f"must be a positive number of seconds, got {interval!r}", key="system_metrics_interval_s")
        )
        return None
    return float(interval) if on is True else None


def _unknown_keys(raw: Any, allowed: tuple[str, ...], *, stage: str | None, under: str = "") -> list[ConfigError]:
    """One error per key not in `allowed`, each with the nearest allowed key when one is close."""
    return [
        UnknownKey(f"unknown key{_hint(key, allowed)} (allowed: {', '.join(allowed)})", stage=stage, key=under + key)
        for key in sorted(set(map(str, raw)) - set(allowed))
    ]


def _closest(word: str, options: Any) -> str | None:
    match = difflib.get_close_matches(word, sorted(options), n=1)
    return match[0] if match else None


def _hint(word: str, options: Any) -> str:
    match = _closest(word, options)
    return f" (did you mean '{match}'?)" if match else ""
