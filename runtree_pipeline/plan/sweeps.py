"""Sweep declarations (explicit points or Hydra's sweep grammar) and the samplers that turn them into points.

Hydra's own override parser reads the grammar, so `choice`, `range`, `interval` and `tag(log, ...)` mean exactly
what they mean on Hydra's command line. Samplers follow Optuna's ask/tell shape so that a parallel executor can ask
for several points before any result is told, which is what `tpe` needs to work with more than one worker.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from runtree_pipeline.errors import ConfigError, first_line
from runtree_pipeline.plan.params import flatten

SAMPLERS = ("grid", "random", "tpe")
SWEEP_KEYS = ("points", "params", "sampler", "n", "seed", "tags")


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
    """One child of a parent run: a name unique among its siblings and the params it adds (dotted keys)."""

    name: str
    params: Mapping[str, Any]
    index: int = 0


@dataclass(frozen=True)
class SweepSpec:
    """A validated `variants` or `subvariants` block."""

    level: str
    sampler: str
    points: tuple[Point, ...] = ()
    dimensions: tuple[Dimension, ...] = ()
    n: int | None = None
    seed: int | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def keys(self) -> tuple[str, ...]:
        if self.dimensions:
            return tuple(d.key for d in self.dimensions)
        return tuple(sorted({k for p in self.points for k in p.params}))

    def size(self) -> int:
        if self.sampler in ("random", "tpe"):
            return int(self.n or 0)
        return len(self.points)

    def new_sampler(self, *, direction: str) -> Sampler:
        """A fresh sampler for one parent; every parent gets its own so that tpe learns per parent."""
        if self.sampler in ("random", "tpe"):
            return OptunaSampler(self, direction=direction)
        return FixedSampler(self.points)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def point_name(params: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={format_value(v)}" for k, v in params.items())


def _swept(params: Mapping[str, Any], dimensions: tuple[Dimension, ...]) -> dict[str, Any]:
    """What tells siblings apart: the swept keys (all keys when nothing is swept)."""
    swept = {d.key for d in dimensions if d.is_sweep}
    return {k: v for k, v in params.items() if k in swept} or dict(params)


class _Names:
    """Makes point names unique among siblings: a repeated draw becomes `name #2`."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def unique(self, name: str) -> str:
        count = self._seen.get(name, 0) + 1
        self._seen[name] = count
        return name if count == 1 else f"{name} #{count}"


class Sampler:
    """Ask/tell over the points of one parent. `ask` returns None once the sweep is exhausted.

    `learns` is true when a point depends on results told before it, so points must not be asked ahead.
    """

    learns = False

    def ask(self) -> Point | None:
        raise NotImplementedError

    def tell(self, point: Point, value: float | None) -> None:
        """Report a point's objective value (None when it failed); samplers that do not learn ignore it."""

    def replay(self, points: list[dict[str, Any]]) -> None:
        """On resume, ask these points (a previous execution's) first; only samplers that learn need it."""


class FixedSampler(Sampler):
    def __init__(self, points: tuple[Point, ...]) -> None:
        self._points: Iterator[Point] = iter(points)

    def ask(self) -> Point | None:
        return next(self._points, None)


class OptunaSampler(Sampler):
    """Random search or TPE through Optuna's ask/tell, seeded so that a sweep draws the same points every time."""

    def __init__(self, spec: SweepSpec, *, direction: str) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if spec.sampler == "tpe":
            sampler = optuna.samplers.TPESampler(seed=spec.seed)
        else:
            sampler = optuna.samplers.RandomSampler(seed=spec.seed)
        self._study = optuna.create_study(
            sampler=sampler, direction="minimize" if direction == "min" else "maximize"
        )
        self._spec = spec
        self.learns = spec.sampler == "tpe"
        swept = [d for d in spec.dimensions if d.is_sweep]
        self._choices = {d.key: _choices(d) for d in swept}
        self._distributions = {d.key: _distribution(d, self._choices[d.key]) for d in swept}
        self._trials: dict[int, Any] = {}
        self._names = _Names()
        self._asked = 0

    def ask(self) -> Point | None:
        if self._asked >= (self._spec.n or 0):
            return None
        trial = self._study.ask(self._distributions)
        params = {}
        for dim in self._spec.dimensions:
            if not dim.is_sweep:
                params[dim.key] = dim.fixed
                continue
            raw = trial.params[dim.key]
            choices = self._choices[dim.key]
            params[dim.key] = choices[raw] if choices is not None else raw
        index = self._asked
        self._asked += 1
        self._trials[index] = trial
        return Point(name=self._names.unique(point_name(_swept(params, self._spec.dimensions))), params=params, index=index)

    def replay(self, points: list[dict[str, Any]]) -> None:
        for params in points[: self._spec.n]:
            fixed = {}
            for dim in self._spec.dimensions:
                if not dim.is_sweep or dim.key not in params:
                    continue
                choices = self._choices[dim.key]
                if choices is None:
                    fixed[dim.key] = params[dim.key]
                elif params[dim.key] in choices:
                    fixed[dim.key] = choices.index(params[dim.key])
            if len(fixed) == len(self._distributions):
                self._study.enqueue_trial(fixed, skip_if_exists=False)

    def tell(self, point: Point, value: float | None) -> None:
        import optuna

        trial = self._trials.pop(point.index)
        if value is None or not math.isfinite(value):
            self._study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self._study.tell(trial, value)


def _choices(dim: Dimension) -> list[Any] | None:
    """Discrete values as a list (Optuna then samples an index, so any value type works), or None if continuous."""
    return None if dim.is_continuous else dim.values()


def _distribution(dim: Dimension, choices: list[Any] | None) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if choices is None:
        sweep = dim.override.value()
        return FloatDistribution(float(sweep.start), float(sweep.end), log="log" in sweep.tags)
    return CategoricalDistribution(list(range(len(choices))))


def parse_sweep(raw: Any, *, stage: str, level: str) -> SweepSpec:
    """Validate one `variants`/`subvariants` block; raise ConfigError naming the stage and key."""
    where = level + "s"
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
    if has_points:
        if raw.get("sampler") not in (None, "grid"):
            raise ConfigError(
                "`sampler` applies to `params`, not to explicit `points`", stage=stage, key=f"{where}.sampler"
            )
        return SweepSpec(level=level, sampler="grid", points=_explicit_points(raw["points"], stage, where), tags=tags)

    sampler = raw.get("sampler") or "grid"
    if sampler not in SAMPLERS:
        raise ConfigError(
            f"unknown sampler '{sampler}' (choose one of: {', '.join(SAMPLERS)})", stage=stage, key=f"{where}.sampler"
        )
    dimensions = _dimensions(raw["params"], stage, where)
    if sampler == "grid":
        continuous = [d.key for d in dimensions if d.is_continuous]
        if continuous:
            raise ConfigError(
                "grid cannot enumerate a continuous interval; use sampler random or tpe, or choice/range",
                stage=stage,
                key=f"{where}.params.{continuous[0]}",
            )
        names = _Names()
        points = tuple(
            Point(name=names.unique(point_name(_swept(params, dimensions))), params=params, index=i)
            for i, params in enumerate(
                dict(zip([d.key for d in dimensions], combo))
                for combo in itertools.product(*(d.values() for d in dimensions))
            )
        )
        return SweepSpec(level=level, sampler="grid", points=points, dimensions=dimensions, tags=tags)

    n, seed = raw.get("n"), raw.get("seed")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"sampler {sampler} needs a positive integer n, got {n!r}", stage=stage, key=f"{where}.n")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ConfigError(f"seed must be an integer, got {seed!r}", stage=stage, key=f"{where}.seed")
    return SweepSpec(level=level, sampler=sampler, dimensions=dimensions, n=n, seed=seed, tags=tags)


def _explicit_points(raw: Any, stage: str, where: str) -> tuple[Point, ...]:
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("must map point names to param mappings", stage=stage, key=f"{where}.points")
    points = []
    for i, (name, params) in enumerate(raw.items()):
        params = {} if params is None else params
        if not isinstance(params, Mapping):
            raise ConfigError(
                f"must be a mapping of params, got {params!r}", stage=stage, key=f"{where}.points.{name}"
            )
        points.append(Point(name=str(name), params={str(k): v for k, v in params.items()}, index=i))
    return tuple(points)


def _dimensions(raw: Any, stage: str, where: str) -> tuple[Dimension, ...]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("must map param names to values or sweeps", stage=stage, key=f"{where}.params")
    parser = OverridesParser.create()
    dims = []
    for key, value in flatten(raw).items():
        if not isinstance(value, str):
            dims.append(Dimension(key=key, fixed=value))
            continue
        try:
            override = parser.parse_override(f"{key}={value}")
        except HydraException as e:
            raise ConfigError(
                f"malformed sweep {value!r}: {first_line(e)}", stage=stage, key=f"{where}.params.{key}"
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
        raise ConfigError(f"interval({sweep.start}, {sweep.end}) is empty: start must be below end", stage=stage, key=key)
    if "log" in sweep.tags and sweep.start <= 0:
        raise ConfigError(f"a log interval must start above 0, got {sweep.start}", stage=stage, key=key)
