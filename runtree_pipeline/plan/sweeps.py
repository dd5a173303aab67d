"""Sweep declarations, explicit points or Hydra's sweep grammar, validated into `SweepSpec`s; sampling is in execution.

Hydra's own override parser reads the grammar, so `choice`, `range`, `interval` and `tag(log, ...)` mean exactly
what they mean on Hydra's command line.

A named variant point may carry `_subvariants_`, its own sub-variant space (or null: that variant is a leaf), for
searches whose variants are different models with different knobs.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runtree_pipeline.errors import ConfigError, first_line
from runtree_pipeline.plan.objective import AGGREGATES
from runtree_pipeline.plan.params import flatten

SAMPLERS = ("grid", "random", "tpe", "qmc", "gp", "cmaes", "nsga2")
LEARNING = ("tpe", "qmc", "gp", "cmaes", "nsga2")
"""The named samplers whose next point depends on what was told so far, so they replay their history on resume:
all but random. Even qmc, whose points do not depend on the values: Optuna's QMCSampler takes its space from the first
trial finished or running, so when its first point fails before the next is asked, that one is drawn at random."""
SAMPLER_NEEDS = {"gp": ("torch", "scipy"), "cmaes": ("cmaes",)}
"""What a named sampler imports beyond Optuna, checked when the plan is built rather than at its first ask."""
PRUNERS = ("median", "percentile", "hyperband", "successive_halving")
SWEEP_KEYS = ("points", "params", "sampler", "n", "seed", "tags", "pruner", "time_budget_s", "aggregate")
OWN_SPACE = "_subvariants_"


@dataclass(frozen=True)
class Dimension:
    """One swept key: a Hydra override whose value is a sweep, or a fixed value that every point carries."""

    key: str
    override: Any = None
    fixed: Any = None

    @property
    def is_sweep(self) -> bool:
        return self.override is not None

    @property
    def is_continuous(self) -> bool:
        return self.is_sweep and type(self.override.value()).__name__ == "IntervalSweep"

    def values(self) -> list[Any]:
        return list(self.override.sweep_iterator()) if self.is_sweep else [self.fixed]


@dataclass(frozen=True)
class Point:
    """One child of a parent run: a name unique among its siblings and the params it adds (dotted keys).

    `below` is a variant's own sub-variant space: None keeps the stage's remaining levels, `()` makes it a leaf.
    """

    name: str
    params: Mapping[str, Any]
    index: int = 0
    below: tuple[SweepSpec, ...] | None = None


@dataclass(frozen=True)
class SweepSpec:
    """A validated `variants` or `subvariants` block."""

    level: str
    sampler: str | Mapping[str, Any]
    points: tuple[Point, ...] = ()
    dimensions: tuple[Dimension, ...] = ()
    n: int | None = None
    seed: int | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    pruner: str | Mapping[str, Any] | None = None
    time_budget_s: float | None = None
    aggregate: str | None = None
    """`mean` or `median`: the level's points are replicates (seeds, folds), and their parent is judged by the
    aggregate of their results instead of by its best one."""

    @property
    def keys(self) -> tuple[str, ...]:
        if self.dimensions:
            return tuple(d.key for d in self.dimensions)
        return tuple(sorted({k for p in self.points for k in p.params}))

    @property
    def drawn(self) -> bool:
        """The level's points are drawn, n of them, by an Optuna sampler rather than enumerated."""
        return self.sampler != "grid"

    @property
    def learns(self) -> bool:
        """Its sampler may draw from the values told so far, so a resume must replay them in order. A `_target_`
        sampler is taken to learn: replaying a sampler that does not costs a little time, not replaying one that
        does draws other points."""
        return isinstance(self.sampler, Mapping) or self.sampler in LEARNING

    @property
    def sampler_name(self) -> str:
        return self.sampler if isinstance(self.sampler, str) else str(self.sampler["_target_"])

    def size(self) -> int:
        if self.drawn:
            return int(self.n or 0)
        return len(self.points)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def point_name(params: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={format_value(v)}" for k, v in params.items())


def swept(params: Mapping[str, Any], dimensions: tuple[Dimension, ...]) -> dict[str, Any]:
    """What tells siblings apart: the swept keys (all keys when nothing is swept)."""
    swept = {d.key for d in dimensions if d.is_sweep}
    return {k: v for k, v in params.items() if k in swept} or dict(params)


class UniqueNames:
    """Makes point names unique among siblings: a repeated draw becomes `name #2`."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def unique(self, name: str) -> str:
        count = self._seen.get(name, 0) + 1
        self._seen[name] = count
        return name if count == 1 else f"{name} #{count}"


def format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def import_object(path: str, *, stage: str | None, key: str) -> Any:
    """The callable at a dotted path, imported as Hydra's instantiate will; ConfigError saying why not."""
    from hydra.utils import get_object

    try:
        target = get_object(path)
    except Exception as e:  # noqa: BLE001 - importing user code can raise anything
        raise ConfigError(f"cannot import '{path}': {_import_failure(e)}", stage=stage, key=key) from None
    if not callable(target):
        raise ConfigError(f"'{path}' is not callable", stage=stage, key=key)
    return target


def _import_failure(error: BaseException) -> str:
    """The real reason a target did not import. Hydra wraps it in an ImportError whose first line is only
    "Error loading 'PATH':", with the original exception as its cause; an error raised by the user's module while
    it imports is named by its type, since its message alone may not say it came from an import."""
    cause = error.__cause__
    if cause is None:
        return first_line(error)
    if isinstance(cause, ModuleNotFoundError) and cause.name and "is not a package" in str(cause):
        module, _, name = cause.name.rpartition(".")  # `module.nope`, tried as a submodule once getattr failed
        return f"module '{module}' has no attribute '{name}'"
    if isinstance(cause, (ImportError, AttributeError)):
        return first_line(cause)
    return f"{type(cause).__name__}: {first_line(cause)}"


def parse_sweep(raw: Any, *, stage: str, level: str, key: str | None = None) -> SweepSpec:
    """Validate one `variants`/`subvariants` block; raise ConfigError naming the stage and key.

    `key` is where the block sits in the stage's config when that is not `<level>s` (a variant's own space).
    """
    where = key or level + "s"
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a mapping with `points` or `params`", stage=stage, key=where)
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(SWEEP_KEYS)})",
            stage=stage,
            key=where,
        )
    has_points, has_params = raw.get("points") is not None, raw.get("params") is not None
    if has_points == has_params:
        raise ConfigError("give exactly one of `points` or `params`", stage=stage, key=where)
    raw_tags = raw.get("tags") or {}
    if not isinstance(raw_tags, Mapping):
        raise ConfigError("must be a mapping of tag names to values", stage=stage, key=f"{where}.tags")
    tags = {str(k): str(v) for k, v in raw_tags.items()}
    common = {
        "tags": tags,
        "pruner": _pruner(raw.get("pruner"), stage, where),
        "time_budget_s": _time_budget(raw.get("time_budget_s"), stage, where),
        "aggregate": _aggregate(raw.get("aggregate"), stage, where),
    }
    if has_points:
        if raw.get("sampler") not in (None, "grid"):
            raise ConfigError(
                "`sampler` applies to `params`, not to explicit `points`", stage=stage, key=f"{where}.sampler"
            )
        points = _explicit_points(raw["points"], stage, where, own_spaces=level == "variant")
        return SweepSpec(level=level, sampler="grid", points=points, **common)

    sampler = _sampler(raw.get("sampler") or "grid", stage, where)
    dimensions = _dimensions(raw["params"], stage, where)
    if sampler == "grid":
        continuous = [d.key for d in dimensions if d.is_continuous]
        if continuous:
            raise ConfigError(
                "grid cannot enumerate a continuous interval; use sampler random or tpe, or choice/range",
                stage=stage,
                key=f"{where}.params.{continuous[0]}",
            )
        names = UniqueNames()
        points = tuple(
            Point(name=names.unique(point_name(swept(params, dimensions))), params=params, index=i)
            for i, params in enumerate(
                dict(zip([d.key for d in dimensions], combo, strict=True))
                for combo in itertools.product(*(d.values() for d in dimensions))
            )
        )
        return SweepSpec(level=level, sampler="grid", points=points, dimensions=dimensions, **common)

    n, seed = raw.get("n"), raw.get("seed")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        name = sampler if isinstance(sampler, str) else sampler["_target_"]
        raise ConfigError(f"sampler {name} needs a positive integer n, got {n!r}", stage=stage, key=f"{where}.n")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ConfigError(f"seed must be an integer, got {seed!r}", stage=stage, key=f"{where}.seed")
    return SweepSpec(level=level, sampler=sampler, dimensions=dimensions, n=n, seed=seed, **common)


def _aggregate(raw: Any, stage: str, where: str) -> str | None:
    if raw is None or (isinstance(raw, str) and raw in AGGREGATES):
        return raw
    raise ConfigError(f"must be one of {', '.join(AGGREGATES)}, got {raw!r}", stage=stage, key=f"{where}.aggregate")


def _sampler(raw: Any, stage: str, where: str) -> str | dict[str, Any]:
    key = f"{where}.sampler"
    if isinstance(raw, str) and raw in SAMPLERS:
        missing = [module for module in SAMPLER_NEEDS.get(raw, ()) if importlib.util.find_spec(module) is None]
        if missing:
            raise ConfigError(
                f"sampler {raw} needs {', '.join(missing)}, not installed: pip install {' '.join(missing)}",
                stage=stage,
                key=key,
            )
        return raw
    if isinstance(raw, Mapping) and "_target_" in raw:
        path = raw["_target_"]
        if not isinstance(path, str) or not path:
            raise ConfigError(
                f"must be a dotted path to a sampler class, got {path!r}", stage=stage, key=f"{key}._target_"
            )
        _check_call(import_object(path, stage=stage, key=f"{key}._target_"), path, raw, stage=stage, key=key)
        return {str(k): v for k, v in raw.items()}
    raise ConfigError(
        f"unknown sampler {raw!r} (choose one of: {', '.join(SAMPLERS)}, or a mapping with `_target_`)",
        stage=stage,
        key=key,
    )


def _pruner(raw: Any, stage: str, where: str) -> str | dict[str, Any] | None:
    if raw is None or raw == "none":
        return None
    if isinstance(raw, str) and raw in PRUNERS:
        return raw
    if isinstance(raw, Mapping) and "_target_" in raw:
        path, key = raw["_target_"], f"{where}.pruner._target_"
        if not isinstance(path, str) or not path:
            raise ConfigError(f"must be a dotted path to a pruner class, got {path!r}", stage=stage, key=key)
        _check_call(import_object(path, stage=stage, key=key), path, raw, stage=stage, key=f"{where}.pruner")
        return {str(k): v for k, v in raw.items()}
    raise ConfigError(
        f"unknown pruner {raw!r} (choose one of: none, {', '.join(PRUNERS)}, or a mapping with `_target_`)",
        stage=stage,
        key=f"{where}.pruner",
    )


def _check_call(target: Any, path: str, raw: Mapping[str, Any], *, stage: str, key: str) -> None:
    """Bind a pruner's or sampler's arguments now, so a misspelt one fails the plan rather than the first trial.
    Hydra's other special keys (`_args_`, `_partial_`, ...) change how it calls; then the call is left to Hydra."""
    if any(k != "_target_" and k.startswith("_") and k.endswith("_") for k in raw):
        return
    kwargs = {str(k): v for k, v in raw.items() if k != "_target_"}
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(**kwargs)
    except TypeError as e:
        raise ConfigError(
            f"{path}{signature} cannot take ({', '.join(sorted(kwargs))}): {e}", stage=stage, key=key
        ) from None


def _time_budget(raw: Any, stage: str, where: str) -> float | None:
    if raw is None:
        return None
    if not positive_number(raw):
        raise ConfigError(
            f"must be a positive number of seconds, got {raw!r}", stage=stage, key=f"{where}.time_budget_s"
        )
    return float(raw)


def positive_number(value: Any) -> bool:
    """A count of seconds: int or float but not bool (YAML's `yes`), finite and above zero."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _explicit_points(raw: Any, stage: str, where: str, *, own_spaces: bool) -> tuple[Point, ...]:
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("must map point names to param mappings", stage=stage, key=f"{where}.points")
    points = []
    for i, (name, params) in enumerate(raw.items()):
        params = {} if params is None else params
        at = f"{where}.points.{name}"
        if not isinstance(params, Mapping):
            raise ConfigError(f"must be a mapping of params, got {params!r}", stage=stage, key=at)
        params = {str(k): v for k, v in params.items()}
        below = None
        if own_spaces and OWN_SPACE in params:
            space = params.pop(OWN_SPACE)
            key = f"{at}.{OWN_SPACE}"
            below = () if space is None else (parse_sweep(space, stage=stage, level="subvariant", key=key),)
        _no_own_space(flatten(params), stage, at)
        points.append(Point(name=str(name), params=params, index=i, below=below))
    return tuple(points)


def _no_own_space(params: Mapping[str, Any], stage: str, where: str) -> None:
    for key in params:
        parts = key.split(".")
        if OWN_SPACE in parts:
            raise ConfigError(
                f"`{OWN_SPACE}` is not a param: only a named point of `variants.points` can carry it, at its top",
                stage=stage,
                key=f"{where}.{'.'.join(parts[: parts.index(OWN_SPACE) + 1])}",
            )


def _dimensions(raw: Any, stage: str, where: str) -> tuple[Dimension, ...]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("must map param names to values or sweeps", stage=stage, key=f"{where}.params")
    parser = OverridesParser.create()
    dims = []
    flat = flatten(raw)
    _no_own_space(flat, stage, f"{where}.params")
    for key, value in flat.items():
        if not isinstance(value, str):
            dims.append(Dimension(key=key, fixed=value))
            continue
        try:
            override = parser.parse_override(f"{key}={value}")
        except HydraException as e:
            # `{lr: tag(log, interval(1, 2))}` in YAML's flow style is cut at its first comma before Hydra sees it.
            cut = value.count("(") > value.count(")")
            hint = "; in a {...} mapping YAML splits it at the comma: use block style or quote it" if cut else ""
            raise ConfigError(
                f"malformed sweep {value!r}: {first_line(e)}{hint}", stage=stage, key=f"{where}.params.{key}"
            ) from None
        if override.is_sweep_override():
            dim = Dimension(key=key, override=override)
            if dim.is_continuous:
                _check_interval(override.value(), stage=stage, key=f"{where}.params.{key}")
            dims.append(dim)
        else:
            dims.append(Dimension(key=key, fixed=override.value()))
    return tuple(dims)


def _check_interval(sweep: Any, *, stage: str, key: str) -> None:
    if not sweep.start < sweep.end:
        raise ConfigError(
            f"interval({sweep.start}, {sweep.end}) is empty: start must be below end", stage=stage, key=key
        )
    if "log" in sweep.tags and sweep.start <= 0:
        raise ConfigError(f"a log interval must start above 0, got {sweep.start}", stage=stage, key=key)
