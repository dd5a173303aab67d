"""Samplers: ask/tell over one parent's points, so a parallel executor can ask for several before any is told.

That is what lets `tpe` work with more than one worker; random and tpe go through Optuna, grid and explicit points
through a fixed list.
"""

from __future__ import annotations

import math
from typing import Any

from runtree_pipeline.plan.sweeps import Dimension, Point, SweepSpec, UniqueNames, point_name, swept


def new_sampler(spec: SweepSpec, *, direction: str) -> Sampler:
    """A fresh sampler for one parent; every parent gets its own so that tpe learns per parent."""
    if spec.sampler in ("random", "tpe"):
        return OptunaSampler(spec, direction=direction)
    return FixedSampler(spec.points)


class Sampler:
    """Ask/tell over the points of one parent. `ask` returns None once the sweep is exhausted.

    `learns` is true when a point depends on results told before it, so points must not be asked ahead.
    """

    learns = False

    def ask(self) -> Point | None:
        raise NotImplementedError

    @property
    def exhausted(self) -> bool:
        """No point is left to ask: a parent whose children have all ended is then complete."""
        raise NotImplementedError

    def tell(self, point: Point, value: float | None) -> None:
        """Report a point's objective value (None when it failed); samplers that do not learn ignore it."""

    def replay(self, points: list[dict[str, Any]]) -> None:
        """On resume, ask these points (a previous execution's) first; only samplers that learn need it."""


class FixedSampler(Sampler):
    def __init__(self, points: tuple[Point, ...]) -> None:
        self._points = points
        self._next = 0

    def ask(self) -> Point | None:
        if self.exhausted:
            return None
        self._next += 1
        return self._points[self._next - 1]

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self._points)


class OptunaSampler(Sampler):
    """Random search or TPE through Optuna's ask/tell, seeded so that a sweep draws the same points every time."""

    def __init__(self, spec: SweepSpec, *, direction: str) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if spec.sampler == "tpe":
            sampler = optuna.samplers.TPESampler(seed=spec.seed)
        else:
            sampler = optuna.samplers.RandomSampler(seed=spec.seed)
        self._study = optuna.create_study(sampler=sampler, direction="minimize" if direction == "min" else "maximize")
        self._spec = spec
        self.learns = spec.sampler == "tpe"
        swept = [d for d in spec.dimensions if d.is_sweep]
        self._choices = {d.key: _choices(d) for d in swept}
        self._distributions = {d.key: _distribution(d, self._choices[d.key]) for d in swept}
        self._trials: dict[int, Any] = {}
        self._names = UniqueNames()
        self._asked = 0

    @property
    def exhausted(self) -> bool:
        return self._asked >= (self._spec.n or 0)

    def ask(self) -> Point | None:
        if self.exhausted:
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
        return Point(
            name=self._names.unique(point_name(swept(params, self._spec.dimensions))), params=params, index=index
        )

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
