"""`report(step, **metrics)` inside a leaf, and the channel that takes a pruning question back to the driver.

A level's pruner compares a leaf with its siblings, so it lives with their study in the driver. A leaf reaches it
through one authenticated loopback socket (`multiprocessing.connection`), the same way from a thread of the driver,
a pool worker or a Ray task on this machine: one short round trip per report, only when the level prunes and the
objective is among the metrics. Without a pruner `report` only logs.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import numbers
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

from runtree_pipeline.errors import Preempted, Pruned
from runtree_pipeline.tracking.records import RunRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Desk:
    """Where a leaf asks whether to stop, and what it asks about: picklable, carried by the leaf's task."""

    address: tuple[str, int]
    authkey: bytes
    metric: str


PREEMPTED = "preempted"
"""The file in the pipeline's control directory that says it got SIGTERM."""
LEAF_ENV = "RUNTREE_LEAF"
"""Carries a program's leaf (its run, its desk, where to note a pruning) into the program's `report`."""


@dataclass
class _Leaf:
    run: RunRef
    desk: Desk | None
    pruned_file: str | None = None
    """A program's leaf: where `report` notes the step it was pruned at, read once the program exits."""
    keep_checkpoints: int = 2
    control: str | None = None
    """The pipeline's control directory, where a SIGTERM of the pipeline is noted."""
    preempted: bool = False
    """`Preempted` was raised: once per leaf, so the target's own `save_checkpoint` in its handler goes through."""
    recorded: dict[str, int] = field(default_factory=dict)
    """The highest step of each metric its run had recorded when a checkpoint was restored: a step reported again
    is not logged twice."""
    step: int | None = None
    """The highest step reported so far."""
    last: dict[str, tuple[int, float]] = field(default_factory=dict)
    """Each metric's latest report, (step, value): a returned metric equal to it at the highest step is logged."""


_current: contextvars.ContextVar[_Leaf | None] = contextvars.ContextVar("runtree_leaf", default=None)
_in_process: list[_Leaf] = []
"""The leaves running in this process: one at a time on every executor, which lets `report` from a thread the
target started (contextvars do not flow into `threading.Thread`) find its leaf."""
_connections: dict[tuple[tuple[str, int], bytes], Connection] = {}
_unreachable: set[tuple[tuple[str, int], bytes]] = set()
_connections_lock = threading.Lock()
CONNECT_TIMEOUT_S = 5.0


def report(step: int, **metrics: float) -> None:
    """Log `metrics` at `step` on the calling leaf's run; raise `Pruned` when the leaf's pruner says stop.

    Call it once per epoch (or evaluation) from a target the pipeline runs. The pruner is asked only when the leaf's
    level has one and the stage's objective metric is among `metrics`; otherwise nothing is ever raised.
    """
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise TypeError(f"report(): step must be a non-negative int, got {step!r}")
    bad = [k for k, v in metrics.items() if not isinstance(v, numbers.Real) or isinstance(v, bool)]
    if bad:
        raise TypeError(f"report(): metric(s) {', '.join(bad)} must be numbers")
    leaf = current_leaf()
    if leaf is None:
        from runtree_pipeline.tracking.active import log_to_active_run

        if not log_to_active_run(step, metrics):
            raise RuntimeError(
                "runtree_pipeline.report() was called outside a leaf and outside an MLflow run: call it from a "
                "target or a program that a pipeline runs, or inside mlflow.start_run()"
            )
        return
    fresh = {k: v for k, v in metrics.items() if step > leaf.recorded.get(k, -1)}
    if fresh:
        from runtree_pipeline.tracking.active import log_step

        log_step(leaf.run, step, fresh)
        leaf.last.update({k: (step, float(v)) for k, v in metrics.items()})
        leaf.step = step if leaf.step is None else max(leaf.step, step)
    stop_if_preempted(leaf)  # after logging: the step it was told at is in the history
    desk = leaf.desk
    if desk is not None and desk.metric in metrics and _ask(desk, leaf.run.run_id, step, float(metrics[desk.metric])):
        if leaf.pruned_file is not None:
            with open(leaf.pruned_file, "w") as fh:
                fh.write(str(step))
        raise Pruned(step)


def stop_if_preempted(leaf: _Leaf) -> None:
    """Raise `Preempted` in a leaf once the pipeline got SIGTERM: the first time it is asked, and only then."""
    if leaf.control is None or leaf.preempted:
        return
    if os.path.exists(os.path.join(leaf.control, PREEMPTED)):
        leaf.preempted = True
        raise Preempted()


def tell_restored(leaf: _Leaf, until: int) -> None:
    """A leaf continued from a checkpoint tells its pruner the objective values its run recorded up to there, so a
    new execution's study (a resume) judges it on its whole curve; a study that heard them already ignores them."""
    desk = leaf.desk
    if desk is None:
        return
    from runtree_pipeline.tracking.active import metric_history

    for step, value in metric_history(leaf.run, desk.metric):
        if step <= until:
            _ask(desk, leaf.run.run_id, step, value)


def current_leaf() -> _Leaf | None:
    """The calling leaf: this thread's, the one leaf running in this process (from a thread its target started),
    or the leaf this process is as a program a pipeline launched."""
    return _current.get() or (_in_process[0] if len(_in_process) == 1 else None) or _program_leaf()


def note_logged(metrics: dict[str, tuple[int, float]]) -> None:
    """What a program logged to its leaf run itself, as (step, value): the calling leaf's result does not log it
    again, and what it adds is logged at the program's last step."""
    leaf = _current.get()
    if leaf is None or not metrics:
        return
    leaf.last.update(metrics)
    highest = max(step for step, _ in metrics.values())
    leaf.step = highest if leaf.step is None else max(leaf.step, highest)


def leaf_env(
    run: RunRef, desk: Desk | None, pruned_file: str, *, keep_checkpoints: int = 2, control: str | None = None
) -> dict[str, str]:
    """The environment variable that lets `report` and the checkpoints inside a program launched as a command find
    its leaf."""
    leaf = {
        "run": [run.run_id, run.experiment_id, run.tracking_uri, run.name, run.artifact_uri],
        "desk": None if desk is None else [list(desk.address), desk.authkey.hex(), desk.metric],
        "pruned_file": pruned_file,
        "keep_checkpoints": keep_checkpoints,
        "control": control,
    }
    return {LEAF_ENV: json.dumps(leaf)}


_from_env: list[_Leaf | None] = []


def _program_leaf() -> _Leaf | None:
    """The leaf of the program this process is, when a pipeline launched it; read from its environment once."""
    if not _from_env:
        raw = os.environ.get(LEAF_ENV)
        leaf = None
        if raw:
            data = json.loads(raw)
            desk = data["desk"]
            leaf = _Leaf(
                RunRef(*data["run"]),
                None if desk is None else Desk((desk[0][0], int(desk[0][1])), bytes.fromhex(desk[1]), desk[2]),
                pruned_file=data["pruned_file"],
                keep_checkpoints=int(data.get("keep_checkpoints", 2)),
                control=data.get("control"),
            )
        _from_env.append(leaf)
    return _from_env[0]


@contextlib.contextmanager
def in_leaf(
    run: RunRef, desk: Desk | None, *, keep_checkpoints: int = 2, control: str | None = None
) -> Iterator[_Leaf]:
    """While a leaf's target runs: `report` logs to `run` and asks `desk`; yields what was reported, so a returned
    metric is logged at the last step, and not at all when it only repeats that step's report."""
    leaf = _Leaf(run, desk, keep_checkpoints=keep_checkpoints, control=control)
    token = _current.set(leaf)
    _in_process.append(leaf)
    try:
        yield leaf
    finally:
        _in_process.remove(leaf)
        _current.reset(token)


def _ask(desk: Desk, run_id: str, step: int, value: float) -> bool:
    """One round trip on this process's connection to the desk, opened on first use (a lost one is opened again
    once: a worker outlives nothing, but the driver's own thread can meet a desk of an earlier pipeline)."""
    key = (desk.address, desk.authkey)
    with _connections_lock:
        if key in _unreachable:
            return False
        for attempt in (1, 2):
            connection = _connections.get(key)
            try:
                if connection is None:
                    socket.create_connection(desk.address, timeout=CONNECT_TIMEOUT_S).close()  # fail fast, not hang
                    connection = _connections[key] = Client(desk.address, authkey=desk.authkey)
                connection.send((run_id, step, value))
                return bool(connection.recv())
            except (OSError, EOFError):
                _connections.pop(key, None)
                if attempt == 2:
                    _unreachable.add(key)
                    log.warning(
                        "could not reach the pipeline's pruner at %s:%s: leaves of this worker go on unpruned",
                        *desk.address,
                    )
    return False


class ReportDesk:
    """The driver's end: answers each leaf's question with `decide(run_id, step, value)`, on threads of its own
    (one per connected worker), so a leaf's question never waits for the scheduling loop."""

    def __init__(self, decide: Callable[[str, int, float], bool], *, host: str = "127.0.0.1") -> None:
        self._decide = decide
        self._authkey = os.urandom(16)
        self._listener = Listener((host, 0), authkey=self._authkey)
        self.address: tuple[str, int] = self._listener.address
        self._closed = False
        self._connections: list[Connection] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="runtree-reports", daemon=True)
        self._thread.start()

    def desk(self, metric: str) -> Desk:
        """What a leaf of a level that prunes on `metric` carries in its task."""
        return Desk(self.address, self._authkey, metric)

    def _accept(self) -> None:
        while True:
            try:
                connection = self._listener.accept()
            except Exception:  # noqa: BLE001 - a failed handshake or a closed listener
                if self._closed:
                    return
                continue
            with self._lock:
                if self._closed:
                    connection.close()
                    return
                self._connections.append(connection)
            threading.Thread(target=self._serve, args=(connection,), name="runtree-report", daemon=True).start()

    def _serve(self, connection: Connection) -> None:
        with contextlib.suppress(OSError, EOFError):
            while True:
                run_id, step, value = connection.recv()
                connection.send(self._answer(run_id, step, value))

    def _answer(self, run_id: str, step: int, value: Any) -> bool:
        if not isinstance(value, float):
            return False
        try:
            return bool(self._decide(run_id, step, value))
        except Exception:  # noqa: BLE001 - a pruner's bug must not fail the leaf that asked
            log.exception("the pruner failed to decide on run %s at step %s; the leaf goes on", run_id, step)
            return False

    def close(self) -> None:
        """Stop answering: the accepting thread is woken by one last connection of our own, then every
        connection is closed, which ends the threads serving them."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            connections, self._connections = self._connections, []
        with contextlib.suppress(OSError, EOFError):
            Client(self.address, authkey=self._authkey).close()
        self._thread.join(timeout=5)
        self._listener.close()
        with _connections_lock:
            own = _connections.pop((self.address, self._authkey), None)
        for connection in [*connections, *([own] if own is not None else [])]:
            with contextlib.suppress(OSError):
                connection.close()
