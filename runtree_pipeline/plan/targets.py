"""What a stage's leaves run, in one place: which kind of target a stage declares, whether it can take the params
the stage will pass, what of it goes into a run's content key, and how it is named to the user.

One class per kind. A kind added later (a program run as a subprocess, a notebook) is one more subclass here, one
more branch in `parse`, and its `run` in `runtree_pipeline.execution.leaf`; nothing else reads a stage's target
keys or knows what a target is made of.
"""

from __future__ import annotations

import hashlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from runtree_pipeline.errors import ConfigError
from runtree_pipeline.plan.sweeps import import_object

KEYS = ("_target_",)
"""The stage keys that declare its target, allowed beside the stage's other keys."""

Call = tuple[Mapping[str, Any], str]
"""The params one leaf may be given, and where in the stage they come from (" in variant 'mlp'", or "")."""


class Target(ABC):
    """What a leaf runs. Frozen and picklable: it travels to workers in other processes and machines."""

    @abstractmethod
    def validate(self, stage: str, calls: Iterable[Call] | None) -> list[ConfigError]:
        """Problems found before any run exists: the target cannot be found, or cannot take the params of one of
        `calls`. `calls` is None when the stage's params are broken themselves: check the target alone."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What names the target in a content key: a different value means different results."""

    @abstractmethod
    def code(self) -> str | None:
        """A hash of the source the target runs (recorded as `runtree.code`), None when there is none to read;
        read anew each time, so an edit between two pipelines in one process is seen."""

    @abstractmethod
    def describe(self) -> str:
        """The target as the user wrote it, for the dry run and messages."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The stage keys that declare it, as the stage run's resolved `config.yaml` records them."""

    def key_parts(self, code: str | None) -> dict[str, Any]:
        """The target's share of a run's content key; `code` is `self.code()`, or None to leave it out (`cache:
        {code: false}`, and the keys of stores written before keys held it)."""
        return {**self.identity(), **({"code": code} if code else {})}

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True)
class FunctionTarget(Target):
    """`_target_: module.function`: called with the leaf's params as keyword arguments, returns a mapping."""

    path: str

    def validate(self, stage: str, calls: Iterable[Call] | None) -> list[ConfigError]:
        """Imports the function and binds every distinct set of param names to its signature, as a call would."""
        try:
            function = import_object(self.path, stage=stage, key="_target_")
        except ConfigError as e:
            return [e]
        if calls is None:
            return []
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            return []
        seen = set()
        for kwargs, where in calls:
            names = tuple(sorted(kwargs))
            if names in seen:
                continue
            seen.add(names)
            try:
                signature.bind(**kwargs)
            except TypeError as e:
                message = f"{self.path}{signature} cannot take params ({', '.join(names)}){where}: {e}"
                return [ConfigError(message, stage=stage, key="params")]
        return []

    def identity(self) -> dict[str, Any]:
        return {"target": self.path}

    def code(self) -> str | None:
        """The module file that defines the function: editing the target (or anything else in its file) changes
        the keys of its runs, so neither a resume nor the cache reuses results of older code. What it imports from
        other files is not included. None when there is no source file (a builtin, a C module)."""
        from hydra.utils import get_object

        try:
            module = inspect.getmodule(get_object(self.path))
            path = inspect.getsourcefile(module) if module is not None else None
        except (TypeError, ImportError, AttributeError):
            return None
        if path is None:
            return None
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()[:16]

    def describe(self) -> str:
        return self.path

    def config(self) -> dict[str, Any]:
        return {"_target_": self.path}


def parse(raw: Mapping[str, Any], *, stage: str) -> tuple[Target, ConfigError | None]:
    """The target a stage's resolved config declares, and the error that makes it unusable; with an error the
    target is only a stand-in, so the rest of the stage can still be checked and every problem reported at once."""
    path = raw.get("_target_")
    if path is None or path == "":
        missing = ConfigError("missing `_target_` (a dotted path to a callable)", stage=stage, key="_target_")
        return FunctionTarget(""), missing
    if not isinstance(path, str):
        message = f"must be a dotted path to a callable (a string), got {path!r}"
        return FunctionTarget(str(path)), ConfigError(message, stage=stage, key="_target_")
    return FunctionTarget(path), None
