"""Ctrl-C and SIGTERM that never land in the middle of a tracking write.

A signal arriving while `create_run` is in flight would leave a run in the store that nobody knows to end. While a
pipeline runs, the signal is raised as KeyboardInterrupt at once (a long target stops immediately) unless a write is
in flight, in which case it is raised as soon as that write returns.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

_pending: list[int] = []
_depth = 0


def _handler(signum: int, frame: Any) -> None:
    if _depth > 0:
        _pending.append(signum)
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """While a pipeline runs: SIGINT and SIGTERM become KeyboardInterrupt, deferred past tracking writes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _pending.clear()


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Around one tracking write: a signal that arrives now is raised when the write is done.

    Only the main thread receives signals; writes on other threads finish before the runner ends open runs.
    """
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending:
            _pending.clear()
            raise KeyboardInterrupt
