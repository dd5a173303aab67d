"""The words runs and leaves are described with, in one place; each is also the text stored in MLflow."""

from __future__ import annotations

from enum import Enum


class _Text(str, Enum):
    """An enum that is its value wherever text is expected: tags, JSON, f-strings, comparisons with MLflow's strings."""

    __str__ = str.__str__
    __format__ = str.__format__


class Status(_Text):
    """A run's or stage's end state; the first four are MLflow's own run statuses."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"
    SKIPPED = "SKIPPED"


class Level(_Text):
    """Where a run sits in a stage's tree."""

    STAGE = "stage"
    VARIANT = "variant"
    SUBVARIANT = "subvariant"


class Origin(_Text):
    """How a leaf got its result in this execution; the summary counts leaves by it (plus failures)."""

    EXECUTED = "executed"
    REUSED = "reused"
    REDONE = "redone"
