"""Progress while a pipeline runs: live bars on a terminal, a few periodic log lines anywhere else.

Bars (tqdm) show leaves done of total per stage and overall, failures, the current best objective, elapsed and ETA.
On a resume, leaves that finished before are reused, not run: they count as done at once and are reported as
reused, so the ETA reflects only the leaves that really run.
Without a terminal (CI logs, Hydra multirun jobs) the same facts go through logging, so Hydra's job log keeps
them, at most once per interval per stage plus a line when a stage starts and ends: a 10,000-leaf sweep does not
flood a log.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from runtree_pipeline.plan.objective import Objective
from runtree_pipeline.plan.sweeps import format_value
from runtree_pipeline.states import Origin

log = logging.getLogger("runtree_pipeline.progress")


@dataclass
class _Stage:
    total: int
    objective: Objective
    resumed: bool = False
    done: int = 0
    failed: int = 0
    pruned: int = 0
    reused: int = 0
    redone: int = 0
    best: float | None = None
    started: float = field(default_factory=time.monotonic)
    last_line: float = field(default_factory=time.monotonic)
    bar: Any = None

    @property
    def metric(self) -> str | None:
        return self.objective.metric

    def update(self, value: float | None, failed: bool, origin: str, pruned: bool) -> None:
        self.done += 1
        self.failed += failed
        self.pruned += pruned
        self.reused += origin == Origin.REUSED
        self.redone += origin == Origin.REDONE
        if value is not None and math.isfinite(value):
            if self.best is None or self.objective.better(value, self.best):
                self.best = value

    def facts(self) -> str:
        parts = [f"{self.done}/{self.total} leaves" + self.how()]
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.pruned:
            parts.append(f"{self.pruned} pruned")
        if self.best is not None and self.metric:
            parts.append(f"best {self.metric}={format_value(self.best)}")
        elapsed = time.monotonic() - self.started
        parts.append(f"{_clock(elapsed)} elapsed")
        ran = self.done - self.reused
        if ran > 0 and self.done < self.total:
            parts.append(f"ETA {_clock(elapsed / ran * (self.total - self.done))}")
        return ", ".join(parts)

    def how(self) -> str:
        said = [f"{n} {word}" for n, word in ((self.reused, Origin.REUSED), (self.redone, Origin.REDONE)) if n]
        return f" ({', '.join(said)})" if said else ""

    def plan(self) -> str:
        """What starting the stage will do, said before any leaf is looked at: on a resume, how many leaves
        will run is only known as the walk meets them."""
        leaves = f"{self.total} leaf" if self.total == 1 else f"{self.total} leaves"
        if self.resumed:
            return f"resumed, {leaves}; those that finished before are reused, not run"
        return f"started, {leaves} to run"


class Progress:
    """What the runner reports; this base reports nothing (`progress=false`). Safe to call from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stages: dict[str, _Stage] = {}

    def stage_started(
        self,
        name: str,
        *,
        total: int,
        objective: Objective,
        resumed: bool = False,
    ) -> None:
        stage = _Stage(total=total, objective=objective, resumed=resumed)
        with self._lock:
            self._stages[name] = stage
            self._started(name, stage)

    def leaf_done(
        self,
        name: str,
        *,
        objective: float | None,
        failed: bool,
        origin: str = Origin.EXECUTED,
        pruned: bool = False,
    ) -> None:
        """`objective` is the leaf's value; `origin` is LeafResult.origin (an `Origin`: executed, redone or reused);
        a pruned leaf is neither failed nor a candidate for best."""
        with self._lock:
            stage = self._stages.get(name)
            if stage is not None:
                stage.update(objective, failed, origin, pruned)
                self._updated(name, stage)

    def stage_finished(self, name: str, *, status: str) -> None:
        with self._lock:
            stage = self._stages.get(name)
            if stage is not None:
                self._finished(name, stage, status)

    def close(self) -> None:
        """Called once at the end, also after an error."""

    def _started(self, name: str, stage: _Stage) -> None: ...

    def _updated(self, name: str, stage: _Stage) -> None: ...

    def _finished(self, name: str, stage: _Stage, status: str) -> None: ...


class LogProgress(Progress):
    def __init__(self, *, interval: float = 15.0) -> None:
        super().__init__()
        self.interval = interval

    def _started(self, name: str, stage: _Stage) -> None:
        log.info("stage %s: %s", name, stage.plan())

    def _updated(self, name: str, stage: _Stage) -> None:
        now = time.monotonic()
        if now - stage.last_line >= self.interval and stage.done < stage.total:
            stage.last_line = now
            log.info("stage %s: %s", name, stage.facts())

    def _finished(self, name: str, stage: _Stage, status: str) -> None:
        log.info("stage %s: %s — %s", name, status, stage.facts())


class BarProgress(Progress):
    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        from tqdm import tqdm

        self._tqdm = tqdm
        self._stream = stream
        self._overall = tqdm(total=0, desc="pipeline", unit="leaf", file=stream, position=0, leave=True)

    def _started(self, name: str, stage: _Stage) -> None:
        stage.bar = self._tqdm(
            total=stage.total,
            desc=f"{name} (resumed)" if stage.resumed else name,
            unit="leaf",
            file=self._stream,
            position=len(self._stages),
            leave=True,
        )
        self._overall.total += stage.total
        self._overall.refresh()

    def _updated(self, name: str, stage: _Stage) -> None:
        stage.bar.update(1)
        postfix = {}
        if stage.reused:
            postfix[Origin.REUSED.value] = stage.reused
        if stage.redone:
            postfix[Origin.REDONE.value] = stage.redone
        if stage.failed:
            postfix["failed"] = stage.failed
        if stage.pruned:
            postfix["pruned"] = stage.pruned
        if stage.best is not None and stage.metric:
            postfix[f"best {stage.metric}"] = format_value(stage.best)
        stage.bar.set_postfix(postfix, refresh=False)
        self._overall.update(1)

    def _finished(self, name: str, stage: _Stage, status: str) -> None:
        stage.bar.set_description(f"{name} ({status.lower()})", refresh=True)
        stage.bar.close()

    def close(self) -> None:
        for stage in self._stages.values():
            if stage.bar is not None:
                stage.bar.close()
        self._overall.close()


def make_progress(enabled: bool, *, stream: TextIO | None = None) -> Progress:
    stream = stream or sys.stderr
    if not enabled:
        return Progress()
    if stream.isatty():
        return BarProgress(stream)
    return LogProgress()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60:02d}:{seconds % 60:02d}"
