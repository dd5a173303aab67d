"""The one definition of "better": every comparison of objective values (best leaf, progress, views) goes here."""

from __future__ import annotations

import math
from dataclasses import dataclass

MODES = ("min", "max")


@dataclass(frozen=True)
class Objective:
    """The metric a stage is judged by and its direction; `metric=None` means a stage judged only by succeeding."""

    metric: str | None
    mode: str = "min"

    def better(self, a: float, b: float) -> bool:
        """Whether `a` beats `b`; ties keep the earlier value."""
        return a < b if self.mode == "min" else a > b

    def rank(self, value: float | None) -> tuple[int, float]:
        """A sort key putting the best first and missing or non-finite values last."""
        if value is None or not math.isfinite(value):
            return (1, 0.0)
        return (0, value if self.mode == "min" else -value)
