"""What a stage is judged by, and every judgement made with it: which result beats which, the Pareto front, the one
member downstream stages take, feasibility, and replicates aggregated into one result.

Everything that compares results (the scheduler's parents, samplers, progress, views, registry) asks this module,
so a new selection rule or aggregate is a change here alone.
"""

from __future__ import annotations

import math
import operator
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

MODES = ("min", "max")
AGGREGATES: dict[str, Callable[[Sequence[float]], float]] = {"mean": statistics.fmean, "median": statistics.median}
"""How a level's replicates become one result (`aggregate:`); the spread beside it is always the sample std."""
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}


@dataclass(frozen=True)
class Goal:
    metric: str
    mode: str = "min"

    def better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def __str__(self) -> str:
        return f"{self.metric} ({self.mode})"


@dataclass(frozen=True)
class Constraint:
    """`metric OP bound`: a result that breaks it is infeasible, never on a front and never selected."""

    metric: str
    op: str
    bound: float

    @classmethod
    def parse(cls, text: str) -> Constraint:
        """`"params_m <= 2.0"` (spaces optional); raises ValueError with the reason."""
        match = re.fullmatch(r"\s*([^\s<>=]+)\s*(<=|>=|<|>)\s*(\S+)\s*", str(text))
        if match is None:
            raise ValueError(f"must read 'metric OP number' with OP one of {', '.join(OPERATORS)}, got {text!r}")
        metric, op, number = match.groups()
        try:
            bound = float(number)
        except ValueError:
            bound = math.nan
        if not math.isfinite(bound):
            raise ValueError(f"the bound must be a finite number, got {number!r} in {text!r}")
        return cls(metric, op, bound)

    def holds(self, metrics: Mapping[str, float]) -> bool:
        """A missing or non-finite metric breaks it: feasibility that cannot be checked is not granted."""
        value = metrics.get(self.metric)
        return value is not None and math.isfinite(value) and OPERATORS[self.op](value, self.bound)

    def violation(self, metrics: Mapping[str, float]) -> float:
        """Optuna's `constraints_func` convention: 0 or less when it holds, otherwise how far it is broken."""
        if self.holds(metrics):
            return 0.0
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return 1.0
        return max(abs(value - self.bound), 1e-12)

    def __str__(self) -> str:
        short = f"{self.bound:g}"
        return f"{self.metric} {self.op} {short if float(short) == self.bound else repr(self.bound)}"


class Scored(Protocol):
    """What the judgements read from a result: whether it finished, its values (one per goal) and feasibility."""

    @property
    def values(self) -> tuple[float, ...] | None: ...

    @property
    def feasible(self) -> bool: ...

    @property
    def finished(self) -> bool: ...


S = TypeVar("S", bound=Scored)


@dataclass(frozen=True)
class Aggregate:
    """Replicates folded into one result: its metrics (`m`, `<how>_m` and, from two replicates on, `std_m` for
    each metric every replicate has), how many there were, and the replicate closest to it."""

    how: str
    metrics: dict[str, float]
    replicates: int
    closest: int
    """Index (among the replicates given) of the one whose selected value is nearest the aggregate."""

    def recorded(self) -> dict[str, float]:
        """What the aggregated parent logs: the aggregate and the spread, named as such."""
        return {k: v for k, v in self.metrics.items() if k.startswith((f"{self.how}_", "std_"))}


@dataclass(frozen=True)
class Objective:
    """The goals a stage is judged by (empty: judged only by succeeding), the constraints a result must meet, and
    which goal picks the one result downstream stages take when there are several."""

    goals: tuple[Goal, ...] = ()
    constraints: tuple[Constraint, ...] = ()
    select: str | None = None
    """A goal's metric; None means the first goal."""

    @classmethod
    def of(cls, metric: str | None, mode: str = "min") -> Objective:
        return cls((Goal(metric, mode),) if metric else ())

    @property
    def selected(self) -> Goal | None:
        if not self.goals:
            return None
        return next((g for g in self.goals if g.metric == self.select), self.goals[0])

    @property
    def metric(self) -> str | None:
        """The selected goal's metric: the one progress shows, pruners compare and `best_*` ranks by."""
        goal = self.selected
        return goal.metric if goal else None

    @property
    def mode(self) -> str:
        goal = self.selected
        return goal.mode if goal else "min"

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(g.metric for g in self.goals)

    @property
    def multi(self) -> bool:
        return len(self.goals) > 1

    @property
    def _index(self) -> int:
        goal = self.selected
        return self.goals.index(goal) if goal else 0

    def values(self, metrics: Mapping[str, float]) -> tuple[float, ...] | None:
        """One value per goal, or None when any is missing or not finite: such a result is never a best."""
        if not self.goals:
            return None
        out = tuple(metrics.get(g.metric) for g in self.goals)
        if any(v is None or not math.isfinite(v) for v in out):
            return None
        return out  # type: ignore[return-value]

    def value(self, values: tuple[float, ...] | None) -> float | None:
        """The selected goal's value among `values`."""
        return values[self._index] if values else None

    def feasible(self, metrics: Mapping[str, float]) -> bool:
        return all(c.holds(metrics) for c in self.constraints)

    def violations(self, metrics: Mapping[str, float]) -> list[float]:
        return [c.violation(metrics) for c in self.constraints]

    def better(self, a: float, b: float) -> bool:
        """Whether selected value `a` beats `b`; ties keep the earlier value."""
        return self.selected.better(a, b) if self.selected else False

    def rank(self, value: float | None) -> tuple[int, float]:
        """A sort key putting the best selected value first and missing or non-finite values last."""
        if value is None or not math.isfinite(value):
            return (1, 0.0)
        return (0, value if self.mode == "min" else -value)

    def dominates(self, a: Sequence[float], b: Sequence[float]) -> bool:
        """`a` is no worse than `b` on every goal and better on one."""
        pairs = list(zip(self.goals, a, b, strict=True))
        return all(not g.better(y, x) for g, x, y in pairs) and any(g.better(x, y) for g, x, y in pairs)

    def eligible(self, results: Sequence[S]) -> list[S]:
        """Those that may be a best: finished, with every value finite, and feasible."""
        return [r for r in results if r.finished and r.values is not None and r.feasible]

    def front(self, results: Sequence[S]) -> list[S]:
        """The eligible results no other eligible one dominates, in the order given; equal values are all kept."""
        pool = self.eligible(results)
        return [r for r in pool if not any(self.dominates(o.values, r.values) for o in pool if o is not r)]

    def select_one(self, results: Sequence[S]) -> S | None:
        """The one result downstream stages take: among the front, the best on the selected goal (the first seen
        on a tie, so the choice is stable). With one goal it is simply the best eligible result."""
        best = None
        for r in self.front(results) if self.multi else self.eligible(results):
            if best is None or self.better(self.value(r.values), self.value(best.values)):
                best = r
        return best

    def aggregate(self, how: str, replicates: Sequence[tuple[Mapping[str, float], tuple[float, ...]]]) -> Aggregate:
        """`replicates` are the finished ones' (metrics, values); there must be at least one."""
        fold = AGGREGATES[how]
        shared = set.intersection(*(set(m) for m, _ in replicates))
        metrics: dict[str, float] = {}
        for key in sorted(shared):
            column = [m[key] for m, _ in replicates]
            if not all(math.isfinite(v) for v in column):
                continue
            metrics[key] = metrics[f"{how}_{key}"] = fold(column)
            if len(column) > 1:
                metrics[f"std_{key}"] = statistics.stdev(column)
        for goal, column in zip(self.goals, zip(*(v for _, v in replicates), strict=True), strict=True):
            metrics[goal.metric] = metrics[f"{how}_{goal.metric}"] = fold(column)
        target = metrics.get(self.metric) if self.metric else None
        closest = 0
        if target is not None:
            distances = [abs(self.value(v) - target) for _, v in replicates]
            closest = distances.index(min(distances))
        return Aggregate(how, metrics, len(replicates), closest)

    def describe(self) -> str:
        goals = ", ".join(map(str, self.goals)) or "success"
        if self.multi:
            goals += f"; select {self.metric}"
        if self.constraints:
            goals += f"; subject to {', '.join(map(str, self.constraints))}"
        return goals
