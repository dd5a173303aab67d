"""One driver per execution: the driver that runs an execution says so on its stage runs (`runtree.driver`: host,
pid, since) and keeps a heartbeat there (`runtree.heartbeat`, refreshed every few seconds, on a client of its own so
it works against a server as against a file), and a second driver on the same execution is refused until the first
one is gone.

Gone means: on this host, its process no longer exists (checked at once, by pid and the process's start time, so a
reused pid is not mistaken for it); elsewhere, its heartbeat is older than `stale_after_s`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from runtree_pipeline.tracking.records import RunRecord, RunRef

DRIVER = "runtree.driver"
HEARTBEAT = "runtree.heartbeat"
ENDED = "ended"
"""The heartbeat's last value, written by a driver as its pipeline ends, however it ends."""
INTERVAL_S = 5.0
STALE_AFTER_S = 60.0


@dataclass(frozen=True)
class Driver:
    host: str
    pid: int
    since: int
    """When it took the execution (ms since the epoch)."""
    started: str = ""
    """Its process's start time as the kernel counts it: with the pid, names one process."""

    def tag(self) -> str:
        return json.dumps({"host": self.host, "pid": self.pid, "since": self.since, "started": self.started})

    @classmethod
    def parse(cls, text: str) -> Driver | None:
        try:
            data = json.loads(text)
            return cls(str(data["host"]), int(data["pid"]), int(data["since"]), str(data.get("started", "")))
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since / 1000))
        return f"pid {self.pid} on {self.host}, since {since}"


def this_driver() -> Driver:
    return Driver(socket.gethostname(), os.getpid(), int(time.time() * 1000), _process_start(os.getpid()))


def holder(
    records: Iterable[RunRecord], *, stale_after_s: float = STALE_AFTER_S, now: float | None = None
) -> Driver | None:
    """The live driver of an execution, from its stage runs' tags: None when none is, or it is this process."""
    me = this_driver()
    for record in records:
        driver = Driver.parse(record.tags.get(DRIVER, ""))
        if driver is None or (driver.host, driver.pid, driver.started) == (me.host, me.pid, me.started):
            continue
        if alive(record, stale_after_s=stale_after_s, now=now):
            return driver
    return None


def alive(record: RunRecord, *, stale_after_s: float = STALE_AFTER_S, now: float | None = None) -> bool | None:
    """Whether the driver named on `record` still runs its execution; None when the run names no driver. A driver
    that ended (however its pipeline ended) said so; one on this host is alive while its process is; one elsewhere
    while its heartbeat is fresh."""
    driver = Driver.parse(record.tags.get(DRIVER, ""))
    if driver is None:
        return None
    beat = record.tags.get(HEARTBEAT, "")
    if beat == ENDED:
        return False
    if driver.host == socket.gethostname():
        return bool(driver.started) and _process_start(driver.pid) == driver.started
    now = time.time() if now is None else now
    return beat.isdigit() and now - int(beat) / 1000 < stale_after_s


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), '' when it does not exist or cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


class Heartbeat:
    """Refreshes `runtree.heartbeat` on the execution's stage runs every `interval_s`, from a thread with its own
    client, until stopped; a failed refresh is tried again at the next beat (a short outage must not stop a run)."""

    def __init__(self, uri: str, refs: Callable[[], Iterable[RunRef]], *, interval_s: float = INTERVAL_S) -> None:
        self._uri = uri
        self._refs = refs
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="runtree-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        if not self._uri.startswith("memory:"):  # the tests' in-memory store has no driver to guard
            self._thread.start()
        return self

    def _beat(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self._uri)
        while not self._stop.wait(self._interval):
            now = str(int(time.time() * 1000))
            for ref in list(self._refs()):
                if self._stop.is_set():  # `stop` may have written `ended` already: never beat over it
                    return
                with contextlib.suppress(Exception):
                    client.set_tag(ref.run_id, HEARTBEAT, now)

    def stop(self) -> None:
        """No more beats, and the runs say their driver ended (a write that fails leaves them to go stale)."""
        self._stop.set()
        if not self._thread.is_alive():
            return
        self._thread.join(timeout=self._interval + 5)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self._uri)
        for ref in list(self._refs()):
            with contextlib.suppress(Exception):
                client.set_tag(ref.run_id, HEARTBEAT, ENDED)
