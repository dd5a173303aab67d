"""Targets used by the tests: small, deterministic, and each exercising one thing a user relies on."""

from __future__ import annotations

import os
from pathlib import Path


def quad(*, x: float, y: float = 0.0, offset: float = 0.0) -> dict:
    """A bowl with its minimum at x=1, y=-2: the true optimum of a grid is known in advance."""
    return {"loss": (x - 1) ** 2 + (y + 2) ** 2 + offset, "xy": x * y}


def flaky(*, x: float, fail_on: tuple = (), y: float = 0.0) -> dict:
    if x in fail_on:
        raise RuntimeError(f"boom at x={x}")
    return {"loss": (x - 1) ** 2 + y}


def no_objective(*, x: float) -> dict:
    return {"accuracy": x, "note": "no loss here"}


def with_outputs(*, name: str = "data", seed: int = 0) -> dict:
    return {"path": f"/data/{name}/{seed}", "rows": 100 + seed}


def logs_steps(*, x: float, steps: int = 3) -> dict:
    """Logs through the fluent API: these values must land on the leaf run that called it."""
    import mlflow

    for i in range(steps):
        mlflow.log_metric("curve", x * i, step=i)
    return {"loss": x}


def counted(*, x: float, log_file: str) -> dict:
    """Appends a line per call so tests can count executions."""
    with open(log_file, "a") as fh:
        fh.write(f"{x}\n")
    return {"loss": (x - 1) ** 2}


def nested(*, opt: dict, x: float = 0.0) -> dict:
    return {"loss": opt["lr"] * 10 + x}


NOT_CALLABLE = 42

if os.environ.get("RUNTREE_TEST_IMPORT_ERROR"):
    raise ImportError("configured to fail")

__all__ = ["Path"]
