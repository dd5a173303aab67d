"""Progress while a pipeline runs: live bars on a terminal, a few periodic log lines anywhere else.

Bars (tqdm) show leaves done of total per stage and overall, failures, the current best objective, elapsed and ETA.
On a resume, leaves that finished before are reused, not run: they count as done at once and are reported as
reused, so the ETA reflects only the leaves that really run.
Without a terminal (CI logs, Hydra multirun jobs) the same facts go through logging, so Hydra's job log keeps
them, at most once per interval per stage plus a line when a stage starts and ends: a 10,000-leaf sweep does not
flood a log.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from runtree_pipeline.plan.objective import Objective
from runtree_pipeline.plan.sweeps import format_value
from runtree_pipeline.states import Origin

log = logging.getLogger("runtree_pipeline.progress")

ECHO_ROOM = 8
"""Columns a bar leaves free at the right edge, for the `^C` the terminal echoes there (up to four of them)."""


@dataclass
class _Stage:
    total: int
    objective: Objective
    resumed: bool = False
    aggregate: str | None = None
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
        metric = self.objective.metric
        return f"{self.aggregate}_{metric}" if metric and self.aggregate else metric

    def update(self, value: float | None, failed: bool, origin: str, pruned: bool) -> None:
        self.done += 1
        self.failed += failed
        self.pruned += pruned
        self.reused += origin == Origin.REUSED
        self.redone += origin == Origin.REDONE
        self.seen(value)

    def seen(self, value: float | None) -> None:
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
        aggregate: str | None = None,
    ) -> None:
        """`aggregate`: how the stage's best is judged when a level's replicates are aggregated."""
        stage = _Stage(total=total, objective=objective, resumed=resumed, aggregate=aggregate)
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

    def aggregated(self, name: str, *, objective: float | None) -> None:
        """A parent judged by its replicates' aggregate closed: that, not any one replicate, can be the best."""
        with self._lock:
            stage = self._stages.get(name)
            if stage is not None:
                stage.seen(objective)
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
    """Bars at the bottom of a terminal: the overall one and one per running stage. A finished stage's bar turns
    into a line of text above them, and `close` takes every bar off the screen, so what is printed next (the
    summary on stdout, an error line on stderr, which share the screen) starts on a clean line instead of over what
    a bar left behind. While bars show, console log lines (ours, Hydra's, MLflow's own handler) are written above
    them rather than across them. The overall bar appears with the first stage: a run that fails before any stage (a
    store that cannot be opened, Ctrl-C during start-up) shows no bar at all."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        from tqdm import tqdm

        self._tqdm = tqdm
        self._stream = stream
        self._overall: Any = None
        self._closed = False
        self._showing = contextlib.ExitStack()

    def _bar(self, total: int, desc: str) -> Any:
        # The terminal echoes a Ctrl-C as `^C` after the top bar: on a full-width bar it would wrap to the next line,
        # and the bars would then be erased one line too low.
        columns = terminal_columns(self._stream) or 80
        ncols = max(columns - ECHO_ROOM, 20)
        return self._tqdm(total=total, desc=desc, unit="leaf", file=self._stream, leave=False, ncols=ncols)

    def _started(self, name: str, stage: _Stage) -> None:
        if self._closed:
            return
        if self._overall is None:
            self._showing.enter_context(_logs_above(self._tqdm, self._stream))
            self._overall = self._bar(0, "pipeline")
        stage.bar = self._bar(stage.total, f"{name} (resumed)" if stage.resumed else name)
        self._overall.total += stage.total
        self._overall.refresh()

    def _updated(self, name: str, stage: _Stage) -> None:
        if stage.bar is None:
            return
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
        if stage.bar is None:
            return
        stage.bar.close()
        stage.bar = None
        self._tqdm.write(f"stage {name}: {status} — {stage.facts()}", file=self._stream)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # The log streams are given back even when a bar cannot be taken off (a terminal hung up) or was never
            # drawn (the overall bar failed to appear): the error that follows must reach the console.
            try:
                for stage in self._stages.values():
                    bar, stage.bar = stage.bar, None
                    if bar is not None:
                        bar.close()
                if self._overall is not None:
                    self._overall.close()
                    # tqdm leaves the cursor on the top bar's line; erase from there to the end of the screen whatever
                    # a bar may have left (one drawn over by a target's own output, one wrapped by a resized terminal).
                    self._stream.write("\r\x1b[J")
                    self._stream.flush()
            finally:
                self._showing.close()


@contextlib.contextmanager
def _logs_above(tqdm: Any, bars: TextIO) -> Iterator[None]:
    """Every console log handler (a StreamHandler that is not a file's) writes through `_AboveBars`. Its stream is
    swapped rather than the handler replaced, so its level, filters and format stay as they were."""
    loggers = [logging.getLogger(), *list(logging.Logger.manager.loggerDict.values())]
    handlers = {h for x in loggers for h in getattr(x, "handlers", ())}  # a PlaceHolder has none
    swapped = []
    for handler in handlers:
        console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if console and handler.stream is not None:  # a handler with no stream yet writes nowhere
            stream = handler.stream
            handler.setStream(_AboveBars(stream, tqdm, bars))
            swapped.append((handler, stream))
    try:
        yield
    finally:
        for handler, stream in swapped:
            handler.stream = stream  # not setStream: its flush of a stream that has gone away must not stop the rest


class _AboveBars:
    """A log handler's stream while bars show: each record takes the bars off the screen, is written where they
    were, and the bars are drawn again below it."""

    def __init__(self, stream: Any, tqdm: Any, bars: TextIO) -> None:
        self._target = stream
        self._tqdm = tqdm
        self._bars = bars

    def write(self, text: str) -> Any:
        with self._tqdm.external_write_mode(file=self._bars):
            written = self._target.write(text)
            self._target.flush()
        return written

    def flush(self) -> None:
        self._target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def terminal_columns(stream: TextIO) -> int:
    """The columns of the terminal `stream` shows on, `COLUMNS` first as in `shutil.get_terminal_size`; 0 when it is
    not a terminal. The bars and the summary measure the one screen they share the same way."""
    with contextlib.suppress(ValueError):
        if (columns := int(os.environ.get("COLUMNS", ""))) > 0:
            return columns
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


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
