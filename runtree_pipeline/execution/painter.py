"""Pictures drawn in a helper process while the tree is still being recorded.

Importing matplotlib and drawing two PNGs per parent used to happen after the last run, on the driver's critical
path (about a second per 40 parents, plus half a second of imports). One helper process draws each parent's
pictures as soon as the parent closes, on a core the driver does not use; the driver only stores what comes back.

The helper is a plain `python -m runtree_pipeline.execution.painter`, fed pickled calls on its stdin, not a
multiprocessing worker: those import the caller's main module again, which re-runs a user's script that calls
`run_pipeline` without an `if __name__ == "__main__"` guard. It exits when its stdin closes, so a driver killed
outright (`kill -9`) leaves no painter behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import pickle
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import IO, Any

from runtree_pipeline.futures import settle
from runtree_pipeline.interrupts import sigint_blocked
from runtree_pipeline.plan.objective import Objective
from runtree_pipeline.results import NodeResult

log = logging.getLogger(__name__)


class Painter:
    """Draws off the critical path; a picture that fails, or a painter that dies, costs a warning, never a run."""

    def __init__(self, stall_s: float = 120.0) -> None:
        """`stall_s`: how long the end of a pipeline waits for the next picture before it goes on without the rest;
        pictures arrive in order, so that is how long the painter may make no progress at all."""
        self.stall_s = stall_s
        self._process: subprocess.Popen[bytes] | None = None
        self._broken = False
        self._calls: dict[int, Future[Any]] = {}
        self._outbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._pending: list[tuple[NodeResult, Future[dict[str, bytes]]]] = []

    def start(self) -> None:
        """Start the process and import matplotlib there now, while the driver still has runs to record."""
        if self._process is None:
            self._submit(None, _warm)

    def parent(self, node: NodeResult, objective: Objective) -> None:
        """The children of a parent that just closed, against their params (sent without their metrics and outputs:
        the pictures need params and objective values only)."""
        if not objective.metric or not node.changed or node.artifact_uri is None:
            return
        from runtree_pipeline.reports.plots import parent_plots

        leaves = [dataclasses.replace(leaf, metrics={}, outputs={}, error=None) for leaf in node.leaves]
        best = node.best.run_id if node.best else None
        self._submit(node, parent_plots, leaves, objective=objective, best_run_id=best)

    def dag(self, node: NodeResult, edges: Sequence[tuple[str, str]], nodes: Sequence[str], **kw: Any) -> None:
        """The stage DAG with this stage highlighted; a one-stage pipeline has no DAG worth a picture."""
        if len(nodes) < 2 or not node.changed or node.artifact_uri is None:
            return
        from runtree_pipeline.reports.plots import dag_files

        self._submit(node, dag_files, edges, nodes, **kw)

    def pictures(self) -> Iterator[tuple[NodeResult, dict[str, bytes]]]:
        """Each node with everything drawn for it, once all of it is drawn; a painter that hangs costs its pictures."""
        drawn: dict[str, tuple[NodeResult, dict[str, bytes]]] = {}
        for i, (node, future) in enumerate(self._pending):
            try:
                files = future.result(timeout=self.stall_s)
            except FutureTimeout:  # not the builtin TimeoutError before Python 3.11
                self._give_up(f"no picture came back for {self.stall_s:g} s; {len(self._pending) - i} are left undrawn")
                self.close()
                break
            except Exception as e:  # noqa: BLE001 - a picture must never fail a recorded pipeline
                log.warning("could not draw plots for %s: %s", node.name, e)
                continue
            if files:
                drawn.setdefault(node.run_id, (node, {}))[1].update(files)
        self._pending.clear()
        yield from drawn.values()

    def close(self) -> None:
        """Stop drawing at once: after an interrupt nobody waits for pictures."""
        process, self._process = self._process, None
        if process is None:
            return
        self._outbox.put(None)
        with contextlib.suppress(Exception):
            process.kill()
            process.wait(5)
        for future in self._calls.values():
            settle(future, RuntimeError("the painter was stopped"))

    def _submit(self, node: NodeResult | None, draw: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if not self._broken and self._process is not None and self._process.poll() is not None:
            self._give_up("the painter process ended")
        if self._broken:
            return
        future: Future[Any] = Future()
        try:
            if self._process is None:
                self._launch()
            call = len(self._calls)
            self._calls[call] = future
            self._outbox.put((call, draw.__module__, draw.__qualname__, args, kwargs))
        except Exception as e:  # noqa: BLE001 - a picture must never fail a recorded pipeline
            self._give_up(f"the painter failed ({e})")
            return
        if node is not None:
            self._pending.append((node, future))

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
                future = self._calls.get(call)
                if future is not None:
                    if ok:
                        settle(future, value)
                    else:
                        settle(future, RuntimeError(value))
        if self._process is not None:
            self._give_up("the painter process ended")
        for future in list(self._calls.values()):
            settle(future, RuntimeError("the painter process ended"))


def _warm() -> None:
    from runtree_pipeline.reports.plots import _pyplot

    _pyplot()


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
