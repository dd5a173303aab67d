"""Samplers: ask/tell over one parent's points, so a parallel executor can ask for several before any is told.

That is what lets `tpe` work with more than one worker; random, tpe, qmc, gp, cmaes, nsga2 and any Optuna sampler given
by `_target_` go through Optuna, grid and explicit points through a fixed list.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from runtree_pipeline.plan.objective import Objective
from runtree_pipeline.plan.sweeps import Dimension, Point, SweepSpec, UniqueNames, point_name, swept
from runtree_pipeline.tracking.index import PreviousPoint

log = logging.getLogger(__name__)


PRUNERS = {
    "median": "optuna.pruners.MedianPruner",
    "percentile": "optuna.pruners.PercentilePruner",
    "hyperband": "optuna.pruners.HyperbandPruner",
    "successive_halving": "optuna.pruners.SuccessiveHalvingPruner",
}
"""The pruners a level names in one word, with Optuna's defaults (a percentile pruner keeps the best 75%); any
other is given the Hydra way, `{_target_: ..., ...}`."""


SAMPLERS = {
    "random": ("optuna.samplers.RandomSampler", {}),
    "tpe": ("optuna.samplers.TPESampler", {}),
    "qmc": ("optuna.samplers.QMCSampler", {"scramble": True}),
    "gp": ("optuna.samplers.GPSampler", {}),
    "cmaes": ("optuna.samplers.CmaEsSampler", {}),
    "nsga2": ("optuna.samplers.NSGAIISampler", {}),
}
"""The samplers a level names in one word, with Optuna's defaults but a scrambled qmc: unscrambled, its seed moves
only the first point, and sibling parents would search the same Sobol points."""


def study_seed(spec: SweepSpec, parent: str) -> int | None:
    """The seed of one parent's study, from its level's `seed` and the parent's run name: siblings draw different
    points, and a rerun of the same config the same ones. None when the level draws nothing seeded, or its
    `_target_` sampler has a `seed` of its own (which it keeps) or takes none.

    sha256, as Python's `hash()` of a string changes from one process to the next.
    """
    if not spec.drawn or spec.seed is None or not _takes_seed(spec.sampler):
        return None
    digest = hashlib.sha256(json.dumps([spec.seed, parent]).encode()).digest()
    return int.from_bytes(digest[:4], "big")  # Optuna's samplers seed numpy, which takes 32 bits


def _takes_seed(sampler: str | Mapping[str, Any]) -> bool:
    if isinstance(sampler, str):
        return True
    return "seed" not in sampler and _has_parameter(str(sampler["_target_"]), "seed")


@cache
def _has_parameter(path: str, name: str) -> bool:
    from hydra.utils import get_object

    try:
        return name in inspect.signature(get_object(path)).parameters
    except (TypeError, ValueError):
        return False


def optuna_sampler(spec: SweepSpec) -> Any:
    """The level's Optuna sampler, seeded with `spec.seed` unless a `_target_` sampler has a seed of its own.
    Optuna's warning that qmc or gp is experimental would repeat for every parent, and the user can do nothing."""
    import warnings

    from hydra.utils import instantiate
    from optuna.exceptions import ExperimentalWarning

    if isinstance(spec.sampler, str):
        path, defaults = SAMPLERS[spec.sampler]
        raw: dict[str, Any] = {"_target_": path, **defaults, "seed": spec.seed}
    else:
        raw = dict(spec.sampler)
        if spec.seed is not None and _takes_seed(spec.sampler):
            raw["seed"] = spec.seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return instantiate(raw)


def new_sampler(spec: SweepSpec, *, objective: Objective) -> Sampler:
    """A fresh sampler for one parent; every parent gets its own so that tpe learns, and a pruner compares, per
    parent."""
    if spec.drawn:
        return OptunaSampler(spec, objective=objective)
    if spec.pruner is None:
        return FixedSampler(spec.points)
    return FixedSampler(spec.points, trials=_Trials(_study(spec, objective=objective)))


def _study(spec: SweepSpec, *, objective: Objective, sampler: Any = None) -> Any:
    """The parent's study; without a sampler (grid, explicit points) it only prunes and asks for no params."""
    import optuna
    from hydra.utils import instantiate

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = spec.pruner
    if isinstance(pruner, str):
        pruner = {"_target_": PRUNERS[pruner], **({"percentile": 25.0} if pruner == "percentile" else {})}
    return optuna.create_study(
        sampler=sampler or optuna.samplers.RandomSampler(seed=0),
        pruner=instantiate(dict(pruner)) if pruner is not None else optuna.pruners.NopPruner(),
        directions=["minimize" if g.mode == "min" else "maximize" for g in objective.goals] or ["minimize"],
    )


@dataclass(frozen=True)
class Told:
    """How a point ended, as its sampler is told: its values (one per objective; None when it failed), whether it
    was pruned, how far it breaks each constraint, and for a point reused from an earlier execution the
    intermediate values it reported then."""

    values: tuple[float, ...] | None
    pruned: bool = False
    reported: Mapping[int, float] | None = None
    violations: tuple[float, ...] | None = None


class _Trials:
    """One parent's open Optuna trials by point index: where a leaf's reports meet its level's pruner.

    Reports arrive on the report desk's threads while the scheduling loop asks and tells, hence the lock.
    """

    def __init__(self, study: Any) -> None:
        self.study = study
        self.lock = threading.RLock()
        self._open: dict[int, Any] = {}
        self._reported: dict[int, dict[int, float]] = {}
        self._retried: set[int] = set()

    def open(self, index: int, trial: Any) -> None:
        with self.lock:
            self._open[index] = trial
            self._reported[index] = {}

    def has(self, index: int) -> bool:
        return index in self._open

    def retry(self, index: int) -> None:
        """A failed leaf runs again in the same trial, whose curve Optuna cannot take back: its retry is never
        pruned, and the study keeps the first attempt's curve (which a resume replays)."""
        with self.lock:
            self._retried.add(index)

    def report(self, index: int, step: int, value: float) -> bool:
        with self.lock:
            trial = self._open.get(index)
            if trial is None or index in self._retried or step in self._reported[index]:
                return False
            trial.report(value, step)
            self._reported[index][step] = value
            return trial.should_prune()

    def reported(self, index: int) -> dict[int, float]:
        with self.lock:
            return dict(self._reported.get(index, {}))

    def close(self, index: int, told: Told) -> None:
        """Tell the study how the point ended; `told.reported` is a history recorded by an earlier execution, told
        to the study first when this one saw none (a reused leaf), so its pruner compares as it did then."""
        import optuna

        with self.lock:
            trial = self._open.pop(index)
            if told.reported and not self._reported.get(index):
                for step, intermediate in sorted(told.reported.items()):
                    trial.report(intermediate, step)
            self._reported.pop(index, None)
            for i, violation in enumerate(told.violations or ()):
                trial.set_constraint(str(i), violation)  # tpe, nsga2 and gp sample away from infeasible points
            if told.pruned:
                self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            elif told.values is None or not all(math.isfinite(v) for v in told.values):
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                self.study.tell(trial, list(told.values))


class Sampler:
    """Ask/tell over the points of one parent. `ask` returns None once the sweep is exhausted.

    `learns` is true when a point depends on results told before it, so points must not be asked ahead. A sampler
    whose level has a pruner keeps its points' Optuna trials in `_trials`, where their reports meet the pruner.
    """

    learns = False
    _trials: _Trials | None = None
    _prunes = False

    def ask(self) -> Point | None:
        raise NotImplementedError

    @property
    def exhausted(self) -> bool:
        """No point is left to ask: a parent whose children have all ended is then complete."""
        raise NotImplementedError

    def tell(self, point: Point, told: Told) -> None:
        """How a point ended; samplers that do not learn or prune ignore it."""

    @property
    def prunes(self) -> bool:
        return self._prunes

    def should_prune(self, point: Point, step: int, value: float) -> bool:
        """A leaf's objective at `step`, reported while it runs: whether its level's pruner stops it now."""
        return self._prunes and self._trials is not None and self._trials.report(point.index, step, value)

    def reported(self, point: Point) -> dict[int, float]:
        """The objective values `point` reported so far, by step, for its run to keep until a resume."""
        return self._trials.reported(point.index) if self._trials is not None else {}

    def retrying(self, point: Point) -> None:
        """`point`'s leaf failed and runs again (`limits.retries`)."""
        if self._trials is not None:
            self._trials.retry(point.index)

    def replay(self, history: Sequence[PreviousPoint]) -> None:
        """On resume, ask these points (a previous execution's) first; only samplers that learn need it."""

    def asked_after(self, point: Point) -> int | None:
        """How many tells came before `point` was asked, for a replay to ask it again in the same place; None when
        nothing needs recording (the sampler does not learn)."""
        return None

    def tell_position(self, point: Point) -> int | None:
        """The place telling `point` will take among this sampler's tells, known before the tell so the child's end
        write can record it; None when nothing needs recording (the sampler does not learn, or a replay already
        told this point)."""
        return None


class FixedSampler(Sampler):
    """Grid and explicit points, in order; with a pruner, each point is also a trial of a study that only prunes."""

    def __init__(self, points: tuple[Point, ...], *, trials: _Trials | None = None) -> None:
        self._points = points
        self._next = 0
        self._trials = trials
        self._prunes = trials is not None

    def ask(self) -> Point | None:
        if self.exhausted:
            return None
        self._next += 1
        point = self._points[self._next - 1]
        if self._trials is not None:
            with self._trials.lock:
                self._trials.open(point.index, self._trials.study.ask())
        return point

    def tell(self, point: Point, told: Told) -> None:
        if self._trials is not None:
            self._trials.close(point.index, told)

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self._points)


class _Diverged(Exception):
    """The replayed study no longer asks what the previous execution recorded."""


class OptunaSampler(Sampler):
    """An Optuna sampler through Optuna's ask/tell, seeded so that a sweep draws the same points every time.

    Seeded, a study is a function of the order of its asks and tells and of the values told, so a resume replays
    exactly that order: enqueued trials would not advance the samplers' random state, and the resumed study would
    then draw differently from the one that was cut off, asking again points it already has.
    """

    def __init__(self, spec: SweepSpec, *, objective: Objective) -> None:
        self._study = _study(spec, objective=objective, sampler=optuna_sampler(spec))
        self._trials = _Trials(self._study)
        self._prunes = spec.pruner is not None
        self._spec = spec
        self.learns = spec.learns
        swept = [d for d in spec.dimensions if d.is_sweep]
        self._choices = {d.key: _choices(d) for d in swept}
        self._distributions = {d.key: _distribution(d, self._choices[d.key]) for d in swept}
        self._names = UniqueNames()
        self._asked = 0
        self._tells = 0
        self._asked_after: dict[int, int] = {}
        self._told: set[int] = set()
        self._replayed: deque[Point] = deque()

    @property
    def exhausted(self) -> bool:
        return not self._replayed and self._asked >= (self._spec.n or 0)

    def ask(self) -> Point | None:
        if self._replayed:
            return self._replayed.popleft()
        if self.exhausted:
            return None
        with self._trials.lock:
            return self._point(self._study.ask(self._distributions), asked_after=self._tells)

    def asked_after(self, point: Point) -> int | None:
        return self._asked_after.get(point.index) if self.learns else None

    def tell_position(self, point: Point) -> int | None:
        return None if not self.learns or point.index in self._told else self._tells

    def tell(self, point: Point, told: Told) -> None:
        """A point a replay told already keeps that value: the study must stay the one the previous execution had."""
        if point.index in self._told:
            return
        self._trials.close(point.index, told)
        self._tells += 1

    def replay(self, history: Sequence[PreviousPoint]) -> None:
        """Ask the previous points again in their order, telling each recorded value where it was told, and hand
        them out first; points never told stay open for the scheduler to redo and tell.

        A store from before asks were recorded, or a history this study does not reproduce (another Optuna, a
        changed space), falls back to enqueuing the points as fixed trials: the resume goes on, but the points
        drawn after them differ from those the uninterrupted sweep would have drawn.
        """
        n = self._spec.n or 0
        told = [p.told + 1 for p in history if p.told is not None]
        own_seed = isinstance(self._spec.sampler, Mapping) and "seed" in self._spec.sampler
        unrecorded = any(p.index is None or p.asked_after is None for p in history)
        if (self._spec.seed is None and not own_seed) or unrecorded:
            # Without a seed nothing replays; a store from before asks were recorded cannot.
            self._tells = max([self._tells, *told])
            self._enqueue([p.params for p in history][:n])
            return
        asks = sorted((p for p in history if p.index < n), key=lambda p: p.index)
        tells = deque(sorted((p for p in asks if p.told is not None), key=lambda p: (p.told, p.index)))
        try:
            if [p.index for p in asks] != list(range(len(asks))):
                raise _Diverged(f"the recorded asks are not 0..{len(asks) - 1}")
            for previous in asks:
                while tells and tells[0].told < previous.asked_after:
                    self._replay_tell(tells.popleft())
                with self._trials.lock:
                    trial = self._study.ask(self._distributions)
                if trial.params != self._raw(previous.params):
                    raise _Diverged(f"ask {previous.index} drew {trial.params}, recorded {dict(previous.params)}")
                self._replayed.append(self._point(trial, asked_after=previous.asked_after))
            while tells:
                self._replay_tell(tells.popleft())
        except _Diverged as e:
            log.warning(
                "the %s sampler does not replay the previous execution (%s): its remaining points are enqueued, "
                "and those drawn after them will differ from an uninterrupted sweep's",
                self._spec.sampler_name,
                e,
            )
            self._enqueue([p.params for p in asks[len(self._replayed) :]])
        self._tells = max([self._tells, *told])

    def _point(self, trial: Any, *, asked_after: int) -> Point:
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
        self._trials.open(index, trial)
        self._asked_after[index] = asked_after
        return Point(
            name=self._names.unique(point_name(swept(params, self._spec.dimensions))), params=params, index=index
        )

    def _replay_tell(self, previous: PreviousPoint) -> None:
        index = previous.index
        if not self._trials.has(index):
            raise _Diverged(f"point {index} was told before it was asked")
        told = Told(previous.value, pruned=previous.pruned, reported=previous.reported, violations=previous.violations)
        self._trials.close(index, told)
        self._told.add(index)
        self._tells = max(self._tells, previous.told + 1)

    def _raw(self, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """Recorded params as Optuna holds them (a choice as its index), or None if they lie outside this space."""
        raw = {}
        for key, choices in self._choices.items():
            if key not in params:
                return None
            if choices is None:
                raw[key] = params[key]
            elif params[key] in choices:
                raw[key] = choices.index(params[key])
            else:
                return None
        return raw

    def _enqueue(self, points: Sequence[Mapping[str, Any]]) -> None:
        for params in points:
            raw = self._raw(params)
            if raw is not None:
                self._study.enqueue_trial(raw, skip_if_exists=False)


def _choices(dim: Dimension) -> list[Any] | None:
    """Discrete values as a list (Optuna then samples an index, so any value type works), or None if continuous."""
    return None if dim.is_continuous else dim.values()


def _distribution(dim: Dimension, choices: list[Any] | None) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if choices is None:
        sweep = dim.override.value()
        return FloatDistribution(float(sweep.start), float(sweep.end), log="log" in sweep.tags)
    return CategoricalDistribution(list(range(len(choices))))
