"""Pictures drawn in a helper process while the tree is still being recorded.

Importing matplotlib and drawing two PNGs per parent used to happen after the last run, on the driver's critical
path (about a second per 40 parents, plus half a second of imports). One helper process draws each parent's
pictures as soon as the parent closes, on a core the driver does not use; the driver only stores what comes back.

The helper is a plain `python -m runtree_pipeline.execution.painter`, fed pickled calls on its stdin, not a
multiprocessing worker: those import the caller's main module again, which re-runs a user's script that calls
`run_pipeline` without an `if __name__ == "__main__"` guard. It exits when its stdin closes, so a driver killed
outright (`kill -9`) leaves no painter behind.

The driver stores pictures as they come back, not at the end, and keeps at most `window` out at once: when 2,000
small parents closed faster than the painter drew them, every parent's PNGs stayed in the driver until the last
run (5-7 KB per leaf, against about 1 KB per leaf for the tree itself).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import itertools
import logging
import pickle
import queue
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, wait
from typing import IO, Any

from runtree_pipeline.futures import settle
from runtree_pipeline.interrupts import sigint_blocked
from runtree_pipeline.plan.objective import Objective
from runtree_pipeline.results import NodeResult

log = logging.getLogger(__name__)

Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
WINDOW = 8


class Painter:
    """Draws off the critical path; a picture that fails, or a painter that dies, costs a warning, never a run."""

    def __init__(self, stall_s: float = 120.0, window: int | None = None) -> None:
        """`stall_s`: how long the end of a pipeline waits for the next picture before it goes on without the rest;
        pictures arrive in order, so that is how long the painter may make no progress at all. `window`: how many
        pictures may be out at once, sent or drawn and not yet handed back; the parents that close while the
        painter is that far behind wait their turn as references to results the driver keeps anyway (default
        `WINDOW`)."""
        self.stall_s = stall_s
        self.window = max(1, WINDOW if window is None else window)
        self._process: subprocess.Popen[bytes] | None = None
        self._broken = False
        self._ids = itertools.count()
        self._calls: dict[int, Future[Any]] = {}
        self._outbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._waiting: deque[tuple[NodeResult | None, Callable[[], Call]]] = deque()
        self._out: deque[tuple[NodeResult | None, Future[Any]]] = deque()

    @property
    def held(self) -> int:
        """Pictures out now: sent to the painter, being drawn, or drawn and not yet handed back."""
        return len(self._out)

    def start(self, *, importance: bool = False) -> None:
        """Start the process and import matplotlib there now, while the driver still has runs to record; with
        `importance`, also what param importances need (scikit-learn: about a second, which at the end of a
        pipeline would be waited for)."""
        if self._process is None:
            self._submit(None, _warm, importance=importance)

    def parent(self, node: NodeResult, objective: Objective) -> None:
        """The children of a parent that just closed, against their params (sent without their metrics and outputs:
        the pictures need params and objective values only)."""
        if not objective.metric or not node.changed or node.artifact_uri is None:
            return
        from runtree_pipeline.reports.plots import parent_plots

        def call() -> Call:
            judged = node.candidates or node.leaves
            leaves = [dataclasses.replace(leaf, metrics={}, outputs={}, error=None, aggregate=None) for leaf in judged]
            best = node.best.run_id if node.best else None
            front = [member.run_id for member in node.front]
            return parent_plots, (leaves,), {"objective": objective, "best_run_id": best, "front": front}

        self._later(node, call)

    def dag(self, node: NodeResult, edges: Sequence[tuple[str, str]], nodes: Sequence[str], **kw: Any) -> None:
        """The stage DAG with this stage highlighted; a one-stage pipeline has no DAG worth a picture."""
        if len(nodes) < 2 or not node.changed or node.artifact_uri is None:
            return
        from runtree_pipeline.reports.plots import dag_files

        self._submit(node, dag_files, edges, nodes, **kw)

    def drawn(self) -> list[tuple[NodeResult, dict[str, bytes]]]:
        """What is drawn by now, without waiting; room in the window goes to the parents waiting for it."""
        done = []
        while self._out and self._out[0][1].done():
            done.extend(self._handed(*self._out.popleft()))
        self._send()
        return done

    def pictures(self) -> Iterator[tuple[NodeResult, dict[str, bytes]]]:
        """Everything still to draw, each call's files as they come (a node may come twice: its own pictures, then
        its DAG); a painter that hangs costs its pictures."""
        while self._out or (self._waiting and not self._broken):
            if not self._out:
                self._send()
                continue
            node, future = self._out[0]
            if not wait([future], timeout=self.stall_s).done:
                left = len(self._out) + len(self._waiting)
                self._give_up(f"no picture came back for {self.stall_s:g} s; {left} are left undrawn")
                self.close()
                break
            self._out.popleft()
            self._send()
            yield from self._handed(node, future)
        self._out.clear()
        self._waiting.clear()

    def _handed(self, node: NodeResult | None, future: Future[Any]) -> list[tuple[NodeResult, dict[str, bytes]]]:
        try:
            files = future.result()
        except Exception as e:  # noqa: BLE001 - a picture must never fail a recorded pipeline
            if node is not None:
                log.warning("could not draw plots for %s: %s", node.name, e)
            return []
        return [(node, files)] if node is not None and files else []

    def close(self) -> None:
        """Stop drawing at once: after an interrupt nobody waits for pictures."""
        process, self._process = self._process, None
        if process is None:
            return
        self._outbox.put(None)
        with contextlib.suppress(Exception):
            process.kill()
            process.wait(5)
        for future in list(self._calls.values()):
            settle(future, RuntimeError("the painter was stopped"))

    def _submit(self, node: NodeResult | None, draw: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._later(node, lambda: (draw, args, kwargs))

    def _later(self, node: NodeResult | None, call: Callable[[], Call]) -> None:
        """`call` is made when it is sent, so what it sends exists only while it is out."""
        if not self._broken and self._process is not None and self._process.poll() is not None:
            self._give_up("the painter process ended")
        if self._broken:
            return
        self._waiting.append((node, call))
        self._send()

    def _send(self) -> None:
        while self._waiting and len(self._out) < self.window and not self._broken:
            node, call = self._waiting.popleft()
            future: Future[Any] = Future()
            try:
                draw, args, kwargs = call()
                if self._process is None:
                    self._launch()
                number = next(self._ids)
                self._calls[number] = future
                self._outbox.put((number, draw.__module__, draw.__qualname__, args, kwargs))
            except Exception as e:  # noqa: BLE001 - a picture must never fail a recorded pipeline
                self._give_up(f"the painter failed ({e})")
                break
            self._out.append((node, future))
        if self._broken:
            self._waiting.clear()

    def _give_up(self, why: str) -> None:
        if not self._broken:
            self._broken = True
            log.warning("plots are off for the rest of this pipeline: %s", why)

    def _launch(self) -> None:
        # Ctrl-C blocked as for the leaf workers: a terminal's Ctrl-C reaches the whole group, and the driver alone
        # decides what an interrupt does.
        with sigint_blocked():
            self._process = subprocess.Popen(
                [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
        for target, pipe in ((self._write, self._process.stdin), (self._read, self._process.stdout)):
            threading.Thread(target=target, args=(pipe,), name="runtree-painter", daemon=True).start()

    def _write(self, pipe: IO[bytes]) -> None:
        """Calls go out from here, so a painter that is behind never blocks the driver on a full pipe."""
        with contextlib.suppress(OSError, ValueError):
            while (call := self._outbox.get()) is not None:
                pickle.dump(call, pipe)
                pipe.flush()

    def _read(self, pipe: IO[bytes]) -> None:
        """Completes each call's future as its answer comes back; whatever is left fails once the painter is gone."""
        with contextlib.suppress(EOFError, OSError, pickle.UnpicklingError):
            while True:
                call, ok, value = pickle.load(pipe)
                future = self._calls.pop(call, None)
                if future is not None:
                    if ok:
                        settle(future, value)
                    else:
                        settle(future, RuntimeError(value))
        if self._process is not None:
            self._give_up("the painter process ended")
        for future in list(self._calls.values()):
            settle(future, RuntimeError("the painter process ended"))


def _warm(*, importance: bool = False) -> None:
    from runtree_pipeline.reports.plots import warm

    warm()
    if importance:
        from runtree_pipeline.reports.importance import warm as warm_importance

        warm_importance()


def _serve(calls: IO[bytes], answers: IO[bytes]) -> None:
    """The painter's loop: one pickled call in, one pickled answer out, until the driver closes the pipe."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            call, module, name, args, kwargs = pickle.load(calls)
        except EOFError:
            return
        try:
            draw = getattr(importlib.import_module(module), name)
            answer = (call, True, draw(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 - reported to the driver, which logs it
            answer = (call, False, f"{type(e).__name__}: {e}")
        pickle.dump(answer, answers)
        answers.flush()


if __name__ == "__main__":
    answers, sys.stdout = sys.stdout.buffer, sys.stderr  # a stray print must not corrupt the answers
    _serve(sys.stdin.buffer, answers)
