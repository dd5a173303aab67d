"""Sweep declarations, explicit points or Hydra's sweep grammar, validated into `SweepSpec`s; sampling is in execution.

Hydra's own override parser reads the grammar, so `choice`, `range`, `interval` and `tag(log, ...)` mean exactly
what they mean on Hydra's command line.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
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
        names = UniqueNames()
        points = tuple(
            Point(name=names.unique(point_name(swept(params, dimensions))), params=params, index=i)
            for i, params in enumerate(
                dict(zip([d.key for d in dimensions], combo, strict=True))
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
            raise ConfigError(f"must be a mapping of params, got {params!r}", stage=stage, key=f"{where}.points.{name}")
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
        raise ConfigError(
            f"interval({sweep.start}, {sweep.end}) is empty: start must be below end", stage=stage, key=key
        )
    if "log" in sweep.tags and sweep.start <= 0:
        raise ConfigError(f"a log interval must start above 0, got {sweep.start}", stage=stage, key=key)
