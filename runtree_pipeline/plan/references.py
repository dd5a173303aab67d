"""`${best:STAGE.KIND.KEY}`: an OmegaConf resolver whose meaning depends on when it is resolved.

While the plan is built, it records each reference and leaves its text in place, so every other interpolation
(`${experiment}`, `${oc.env:...}`) is resolved once against the whole config. When a stage starts, the texts left in
its params are resolved again, this time to the best leaf of the upstream stage.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from runtree_pipeline.errors import RuntreeError

KINDS = ("params", "metrics", "outputs", "artifacts", "run_id")
_MARK = "${best:"

_handler: contextvars.ContextVar[Callable[[str], Any] | None] = contextvars.ContextVar("best_handler", default=None)


@dataclass(frozen=True)
class Reference:
    stage: str
    kind: str
    key: str | None
    text: str

    @classmethod
    def parse(cls, arg: str) -> Reference:
        parts = str(arg).strip().split(".", 2)
        text = f"${{best:{arg}}}"
        if len(parts) < 2 or parts[1] not in KINDS:
            raise ValueError(
                f"{text} must look like STAGE.params.KEY, STAGE.metrics.KEY, STAGE.outputs.KEY, STAGE.artifacts.KEY "
                "or STAGE.run_id"
            )
        stage, kind = parts[0], parts[1]
        key = parts[2] if len(parts) == 3 else None
        if (kind == "run_id") != (key is None):
            raise ValueError(f"{text}: {'run_id takes no key' if kind == 'run_id' else kind + ' needs a key'}")
        return cls(stage=stage, kind=kind, key=key, text=text)


def _resolve_best(arg: str) -> Any:
    handler = _handler.get()
    if handler is None:
        raise ValueError(f"${{best:{arg}}} only has a value while a runtree pipeline runs the stage that uses it")
    return handler(arg)


if not OmegaConf.has_resolver("best"):
    OmegaConf.register_new_resolver("best", _resolve_best)


@contextlib.contextmanager
def _using(handler: Callable[[str], Any]) -> Iterator[None]:
    token = _handler.set(handler)
    try:
        yield
    finally:
        _handler.reset(token)


@contextlib.contextmanager
def recording() -> Iterator[list[Reference]]:
    """While active, `${best:...}` records the reference and resolves to its own text."""
    found: list[Reference] = []

    def record(arg: str) -> str:
        found.append(Reference.parse(arg))
        return f"{_MARK}{arg}}}"

    with _using(record):
        yield found


def resolve_recording(node: Any) -> tuple[Any, list[Reference]]:
    """Resolve a config node to plain containers, keeping `${best:...}` texts and returning what they refer to."""
    with recording() as refs:
        value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return value, refs


def substitute(value: Any, lookup: Callable[[Reference], Any]) -> Any:
    """Replace the `${best:...}` texts left by `resolve_recording` with values from `lookup`."""
    if isinstance(value, dict):
        return {k: substitute(v, lookup) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, lookup) for v in value]
    if isinstance(value, str) and _MARK in value:
        if value.startswith(_MARK) and value.endswith("}") and value.count(_MARK) == 1:
            return lookup(Reference.parse(value[len(_MARK) : -1]))
        from omegaconf.errors import InterpolationResolutionError

        try:
            with _using(lambda arg: lookup(Reference.parse(arg))):
                return OmegaConf.to_container(OmegaConf.create({"v": value}), resolve=True)["v"]
        except InterpolationResolutionError as e:
            # `${best:...}` inside a longer text: OmegaConf wraps the lookup's own error, which says what is missing.
            cause: BaseException | None = e
            while cause is not None and not isinstance(cause, RuntreeError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            raise cause from None
    return value
