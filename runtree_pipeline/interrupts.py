"""Ctrl-C and SIGTERM that never leave a run behind RUNNING, and never leave a store half-written.

A signal arriving between `create_run` returning and the writer noting that run as open would leave a run in the
store that nobody knows to end. So while a pipeline runs (`interruptible`), a signal is raised as `Signalled` at
once (a long target stops immediately) unless a `shielded` section is in progress — a write together with the
bookkeeping that lets the runner end that run — in which case it is raised as soon as that section ends.

Once a signal has been raised the pipeline is stopping: a second Ctrl-C must not cut the clean-up short, so later
signals are only noted, and the clean-up runs under `shielded(discard=True)`. A target that swallows the
KeyboardInterrupt (training loops often do, to stop early) does not undo the request either: the next shielded
section raises it again.

Outside a pipeline a shield still defers the signal, then hands it to whatever handler was there before (Python's
KeyboardInterrupt, a caller's own handler, or death by SIGTERM), so that a store being created is never left half
migrated. Only the main thread receives signals; shields on other threads are no-ops, and the runner waits for those
threads before it ends the open runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_scopes = 0
_depth = 0
_pending: int | None = None
_stopping: int | None = None
_previous: dict[int, Any] = {}


class Signalled(KeyboardInterrupt):
    """A KeyboardInterrupt that remembers its signal, so SIGTERM can exit 143 where Ctrl-C exits 130."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)


def received() -> int | None:
    """The signal this pipeline is stopping for, if one was raised: it counts even when the code it interrupted
    turned the KeyboardInterrupt into an error of its own, or swallowed it."""
    return _stopping


def _handler(signum: int, frame: Any) -> None:
    global _pending, _stopping, _preempt_noted
    if signum == signal.SIGTERM and _preempt_hook is not None and not _preempt_noted and _stopping is None:
        _preempt_noted = True
        _preempt_hook()
        return
    if _depth > 0 or _scopes == 0 or _stopping is not None:
        if _pending is None:
            _pending = signum
        return
    _stopping = signum
    raise Signalled(signum)


_preempt_hook: Callable[[], None] | None = None
_preempt_noted = False


@contextlib.contextmanager
def preemptible(notify: Callable[[], None], grace_s: float) -> Iterator[None]:
    """A leaf running on the main thread (the local executor): a first SIGTERM does not stop it where it is.
    `notify` tells it (its next `report` raises `Preempted`) and it gets `grace_s` to save a checkpoint; the SIGTERM
    is then raised when the leaf ends, or when the grace is over (a watchdog sends it again), whichever comes first.

    The watchdog thread is started here, not in the signal handler: starting a thread takes a lock the interrupted
    main thread may hold."""
    global _preempt_hook, _preempt_noted, _stopping
    if not _on_main_thread() or grace_s <= 0:
        yield
        return
    told, ended = threading.Event(), threading.Event()

    def watchdog() -> None:
        told.wait()
        if not ended.wait(grace_s):
            os.kill(os.getpid(), signal.SIGTERM)

    def noted() -> None:
        notify()
        told.set()

    threading.Thread(target=watchdog, name="runtree-preempt", daemon=True).start()
    _preempt_hook, _preempt_noted = noted, False
    try:
        yield
    finally:
        was_noted = _preempt_noted
        _preempt_hook, _preempt_noted = None, False
        ended.set()
        told.set()
        if was_noted and _stopping is None:
            _stopping = signal.SIGTERM
            raise Signalled(signal.SIGTERM)


def pending() -> int | None:
    """A signal noted and not yet raised: one that arrived while the pipeline was already stopping."""
    return _pending


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def set_handlers(handler: Any) -> dict[int, Any]:
    """Handle SIGINT and SIGTERM with `handler`; returns the handlers replaced.

    A signal the parent chose to ignore (`nohup`, `cmd &` without job control) stays ignored.
    """
    previous = {}
    for s in _SIGNALS:
        if signal.getsignal(s) is not signal.SIG_IGN:
            previous[s] = signal.signal(s, handler)
    return previous


def raise_signalled(signum: int, frame: Any) -> None:
    """A handler for outside a pipeline: the signal becomes `Signalled`, so the caller can exit 128 + signal."""
    raise Signalled(signum)


def _install() -> None:
    _previous.update(set_handlers(_handler))


def _restore() -> None:
    for s, handler in _previous.items():
        signal.signal(s, handler if handler is not None else signal.SIG_DFL)
    _previous.clear()


def _take_pending() -> int | None:
    global _pending
    signum, _pending = _pending, None
    return signum


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """While a pipeline runs: SIGINT and SIGTERM raise `Signalled`, deferred past shielded sections. Nests."""
    global _scopes, _stopping
    if not _on_main_thread():
        yield
        return
    if _scopes == 0 and _depth == 0:
        _install()
    _scopes += 1
    try:
        yield
    finally:
        _scopes -= 1
        if _scopes == 0 and _depth == 0:
            _restore()
            signum = _take_pending()
            stopping, _stopping = _stopping, None
            if signum is not None and stopping is None:
                signal.raise_signal(signum)


@contextlib.contextmanager
def shielded(*, discard: bool = False) -> Iterator[None]:
    """A section a signal must not cut in two: a signal that arrives now is raised when the section ends.

    With `discard`, for the clean-up of a pipeline that is already stopping, such a signal is dropped instead.
    """
    global _depth, _pending, _stopping
    if not _on_main_thread():
        yield
        return
    own_handlers = _scopes == 0 and _depth == 0
    if own_handlers:
        _install()
    before = _pending
    _depth += 1
    try:
        yield
    finally:
        if discard:
            _pending = before
        if own_handlers:
            _restore()
            _depth -= 1
            if (signum := _take_pending()) is not None:
                signal.raise_signal(signum)
        else:
            signum = _take_pending() if _depth == 1 and not discard else None
            _depth -= 1
            if _depth == 0 and _scopes > 0 and not discard:
                if signum is None:
                    signum = _take_pending()
                if _stopping is None:
                    _stopping = signum
                if _stopping is not None:
                    raise Signalled(_stopping)


class ThreadPool(ThreadPoolExecutor):
    """A thread pool whose `submit` a signal cannot cut in two.

    `submit` starts a thread and then records it; a signal in between leaves a thread that `shutdown(wait=True)`
    does not wait for, which then creates runs after the runner has ended the open ones.
    """

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        with shielded():
            return super().submit(fn, *args, **kwargs)


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """Workers (and the threads that launch them and their replacements, and the forkserver) start with Ctrl-C
    blocked, as the pool wants it ignored: a terminal's Ctrl-C reaches the whole process group, and would otherwise
    print a KeyboardInterrupt traceback from every worker still importing. The driver gets its own Ctrl-C back as
    soon as the pool is created."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # starting it unblocks SIGINT again, so it starts first
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
