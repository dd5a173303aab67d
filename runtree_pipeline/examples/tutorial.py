"""The seed notebook's toy trial as a target: random metrics, made repeatable by an explicit per-trial `draw`."""

from __future__ import annotations

import random


def trial(*, param1: str, param2: str, test_no: int, draw: float) -> dict[str, float]:
    """`draw` is a random number the sampler picks per trial, so repeated (param1, param2) pairs still differ."""
    rng = random.Random(f"{test_no}:{param1}:{param2}:{draw!r}")
    return {"metric1": rng.uniform(0, 1), "metric2": abs(rng.gauss(5, 2.5))}
