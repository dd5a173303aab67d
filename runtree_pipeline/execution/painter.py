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

On Linux the painter draws nothing itself once warm: it forks two drawers, each warm and keeping its own figures
from one parent to the next, and hands each call to a free one. The last variant and its stage close together at
the end of a pipeline, when the driver only waits for their pictures; drawn side by side they cost the longer of
the two instead of both (0.27 s instead of 0.42 s for 25 and 125 leaves). Calls and answers travel as frames (the
call's number and the length of its pickle) so that the painter can wait on the driver and both drawers at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import itertools
import json
import logging
import os
import pickle
import queue
import selectors
import signal
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, wait
from typing import IO, Any

from runtree_pipeline.futures import settle
from runtree_pipeline.interrupts import sigint_blocked
from runtree_pipeline.plan.objective import Objective
from runtree_pipeline.results import NodeResult

log = logging.getLogger(__name__)

Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
WINDOW = 8
DRAWERS = 2
NICE = 10
"""The painter's priority below the driver's: on a machine with no idle core, pictures wait for the runs."""
CLOSE_S = 0.5
"""How long `close` waits for the painter to end by itself; one still warming up reads its calls' end only after."""
HEADER = struct.Struct("<QQ")
"""A frame's head: the call's number and the length of the pickle that follows."""


class Painter:
    """Draws off the critical path; a picture that fails, or a painter that dies, costs a warning, never a run."""

    def __init__(
        self, stall_s: float = 120.0, window: int | None = None, warmup: Mapping[str, Any] | None = None
    ) -> None:
        """`stall_s`: how long the end of a pipeline waits for the next picture before it goes on without the rest;
        pictures arrive in order, so that is how long the painter may make no progress at all. `window`: how many
        pictures may be out at once, sent or drawn and not yet handed back; the parents that close while the
        painter is that far behind wait their turn as references to results the driver keeps anyway (default
        `WINDOW`). `warmup`: what the painter draws once before the first parent, keywords of `plots.warm`."""
        self.stall_s = stall_s
        self.warmup = dict(warmup or {})
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

    def start(self) -> None:
        """Start the process and warm it now (matplotlib imported, a throwaway parent drawn for each layout the
        pipeline will ask for, and scikit-learn imported when some parent may rank its params), while the driver
        still has runs to record: at the end of a pipeline all that would be waited for."""
        if self._process is None and not self._broken:
            try:
                self._launch()
            except Exception as e:  # noqa: BLE001 - a picture must never fail a recorded pipeline
                self._give_up(f"the painter failed ({e})")

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
        """Stop drawing at once: after an interrupt nobody waits for pictures. Its calls end first, so that the
        painter ends its drawers and waits for them itself (killed, they would be left to init, as zombies where
        the driver is a container's first process); a painter that does not end by itself then is killed."""
        process, self._process = self._process, None
        if process is None:
            return
        self._outbox.put(None)
        try:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(CLOSE_S)
        finally:  # an interrupt during the wait must not leave it running: nobody would close it again
            with contextlib.suppress(Exception):
                if process.poll() is None:
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
                self._outbox.put(_frame(number, (draw.__module__, draw.__qualname__, args, kwargs)))
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
        command = [sys.executable, "-m", __name__, json.dumps(self.warmup)]
        with sigint_blocked():
            self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for target, pipe in ((self._write, self._process.stdin), (self._read, self._process.stdout)):
            threading.Thread(target=target, args=(pipe,), name="runtree-painter", daemon=True).start()

    def _write(self, pipe: IO[bytes]) -> None:
        """Calls go out from here, so a painter that is behind never blocks the driver on a full pipe."""
        with contextlib.suppress(OSError, ValueError):
            while (frame := self._outbox.get()) is not None:
                pipe.write(frame)
                pipe.flush()
            pipe.close()

    def _read(self, pipe: IO[bytes]) -> None:
        """Completes each call's future as its answer comes back; whatever is left fails once the painter is gone."""
        with contextlib.suppress(EOFError, OSError, pickle.UnpicklingError):
            while (frame := _read_frame(pipe.read)) is not None:
                call, (ok, value) = frame[0], pickle.loads(frame[1])
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


def _frame(number: int, message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(number, len(data)) + data


def _read_frame(read: Callable[[int], bytes]) -> tuple[int, bytes] | None:
    """The next frame from a blocking `read`; None at the end of the stream."""
    head = _read_exactly(read, HEADER.size)
    if head is None:
        return None
    number, length = HEADER.unpack(head)
    data = _read_exactly(read, length)
    if data is None:
        raise EOFError("the stream ended inside a frame")
    return number, data


def _read_exactly(read: Callable[[int], bytes], size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = read(left)
        if not chunk:
            if left == size and size:
                return None
            raise EOFError("the stream ended inside a frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _draw_calls(calls: int, answers: int) -> None:
    """A drawer: one framed call in, its framed answer out, until the calls end."""
    while (frame := _read_frame(lambda n: os.read(calls, n))) is not None:
        number, data = frame
        try:
            module, name, args, kwargs = pickle.loads(data)
            answer = (True, getattr(importlib.import_module(module), name)(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 - reported to the driver, which logs it
            answer = (False, f"{type(e).__name__}: {e}")
        _write_all(answers, _frame(number, answer))


@dataclasses.dataclass(eq=False)
class _Drawer:
    pid: int
    calls: int
    answers: int
    inbox: bytearray = dataclasses.field(default_factory=bytearray)
    drawing: int | None = None


def _fork_drawer(inherited: Sequence[int] = ()) -> _Drawer:
    """A drawer forked from this warm process: it starts with what the warm-up imported and drew, and dies with it
    (the kernel's parent-death signal), so no drawer outlives a painter that is killed."""
    calls_r, calls_w = os.pipe()
    answers_r, answers_w = os.pipe()
    painter = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            if os.getppid() != painter:
                os._exit(0)
            for fd in (calls_w, answers_r, *inherited):
                with contextlib.suppress(OSError):
                    os.close(fd)
            _draw_calls(calls_r, answers_w)
        except BaseException:  # noqa: BLE001 - a drawer's end is read by the painter as its pipe closing
            code = 1
        os._exit(code)
    os.close(calls_r)
    os.close(answers_w)
    return _Drawer(pid, calls_w, answers_r)


def _serve(calls: int, answers: int, drawers: int) -> None:
    """Hands each call to a free drawer and passes its answer back. A drawer that dies fails the call it had; the
    calls still to come go to the others, and with none left the painter ends (the driver then gives up on
    pictures)."""
    crew: list[_Drawer] = []
    for _ in range(drawers):  # a drawer keeps no end of the driver's pipes, nor of the drawers before it
        crew.append(_fork_drawer([calls, answers, *(fd for d in crew for fd in (d.calls, d.answers))]))
    waiting: deque[bytes] = deque()
    inbox = bytearray()
    selector = selectors.DefaultSelector()
    selector.register(calls, selectors.EVENT_READ, None)
    for drawer in crew:
        selector.register(drawer.answers, selectors.EVENT_READ, drawer)
    try:
        while crew:
            for key, _ in selector.select():
                drawer = key.data
                chunk = os.read(key.fd, 1 << 20)
                if drawer is None:
                    if not chunk:
                        return
                    inbox += chunk
                    waiting.extend(_frames(inbox))
                elif chunk:
                    drawer.inbox += chunk
                    for frame in _frames(drawer.inbox):
                        drawer.drawing = None
                        _write_all(answers, frame)
                else:
                    selector.unregister(drawer.answers)
                    crew.remove(drawer)
                    _end(drawer)
                    if drawer.drawing is not None:
                        _write_all(answers, _frame(drawer.drawing, (False, "the drawing process died")))
            for drawer in crew:
                if waiting and drawer.drawing is None:
                    frame = waiting.popleft()
                    drawer.drawing = HEADER.unpack_from(frame)[0]
                    try:
                        _write_all(drawer.calls, frame)
                    except OSError:
                        pass  # it died: its pipe's end is read next, which fails this call
    finally:
        for drawer in crew:
            _end(drawer, kill=True)


def _frames(buffer: bytearray) -> Iterator[bytes]:
    """The whole frames at the start of `buffer`, taken out of it."""
    while len(buffer) >= HEADER.size:
        size = HEADER.size + HEADER.unpack_from(buffer)[1]
        if len(buffer) < size:
            return
        frame = bytes(buffer[:size])
        del buffer[:size]
        yield frame


def _end(drawer: _Drawer, *, kill: bool = False) -> None:
    with contextlib.suppress(OSError):
        if kill:
            os.kill(drawer.pid, signal.SIGKILL)
        os.close(drawer.calls)
        os.close(drawer.answers)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(drawer.pid, 0)


def _main(argv: list[str]) -> None:
    # The driver decides what a signal to the whole group does, and ends the painter itself (or, killed, by the end
    # of its calls).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from runtree_pipeline.reports.plots import warm

    with contextlib.suppress(OSError, AttributeError):
        os.nice(NICE)
    answers = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the answers
    sys.stdout = sys.stderr
    with contextlib.suppress(Exception):  # an unwarmed painter is slower, not wrong
        warm(**(json.loads(argv[0]) if argv else {}))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    drawers = min(DRAWERS, cores) if sys.platform.startswith("linux") else 1
    if drawers > 1:
        _serve(sys.stdin.fileno(), answers, drawers)
    else:
        _draw_calls(sys.stdin.fileno(), answers)
    # Its drawers are ended and reaped; the interpreter's teardown (matplotlib's, scikit-learn's) would only make
    # the driver's `close` wait.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    _main(sys.argv[1:])
