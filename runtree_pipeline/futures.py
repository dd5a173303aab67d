"""Futures for code that is sometimes concurrent and sometimes not, so both share one code path."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any, TypeVar

T = TypeVar("T")


def run_now(call: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
    """A finished future of `call(...)`: how sequential code stands in where concurrent code would hand out futures."""
    future: Future[T] = Future()
    try:
        future.set_result(call(*args, **kwargs))
    except Exception as e:  # noqa: BLE001 - re-raised by whoever takes the result, as a pool would
        future.set_exception(e)
    return future


def settle(future: Future[Any], value: Any) -> None:
    """Complete a future with a result, or with `value` raised if it is an exception, unless another thread (a
    worker, a reader, a `close`) got there first."""
    with contextlib.suppress(InvalidStateError):
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)
