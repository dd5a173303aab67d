"""The painter draws in its own process while the tree is recorded; whatever happens to it, no run fails for it."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from runtree_pipeline.execution.painter import Painter
from runtree_pipeline.plan.objective import Objective
from runtree_pipeline.reports.plots import DAG_PLOT, OBJECTIVE_PLOT, PARALLEL_PLOT
from runtree_pipeline.results import LeafResult, NodeResult

PNG = b"\x89PNG\r\n\x1a\n"
LOSS = Objective("loss", "min")


def node(name: str, xs=(0.0, 1.0, 2.0), *, changed: bool = True) -> NodeResult:
    leaves = tuple(
        LeafResult(f"{name}-{i}", f"{name}/x={x}", {"x": x}, {"loss": x * x}, {"o": "o"}, "FINISHED", None, x * x)
        for i, x in enumerate(xs)
    )
    return NodeResult(f"run-{name}", name, "variant", leaves, leaves[0], (), changed, f"file:///nowhere/{name}")


def workers() -> set[int]:
    """This process's spawned workers (not, say, multiprocessing's resource tracker or a test's server)."""
    pid = os.getpid()
    found = set()
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(int(child))
        except OSError:
            continue
    return found


def test_each_parent_and_the_dag_come_back_as_pngs_under_their_artifact_paths():
    painter = Painter()
    a, b = node("a"), node("b")
    try:
        painter.parent(a, LOSS)
        painter.parent(b, LOSS)
        painter.dag(a, [("a", "b")], ["a", "b"], highlight="a", status={"a": "FINISHED", "b": "FAILED"})
        drawn = dict((n.name, files) for n, files in painter.pictures())
    finally:
        painter.close()
    assert set(drawn) == {"a", "b"}
    assert set(drawn["a"]) == {OBJECTIVE_PLOT, PARALLEL_PLOT, DAG_PLOT}
    assert set(drawn["b"]) == {OBJECTIVE_PLOT, PARALLEL_PLOT}
    assert all(png[:8] == PNG for files in drawn.values() for png in files.values())


def test_nothing_is_drawn_and_no_process_started_for_what_has_no_picture():
    """A parent reused unchanged, a pipeline with one stage (its DAG is one box) and an objective-less stage."""
    painter = Painter()
    before = workers()
    painter.parent(node("same", changed=False), LOSS)
    painter.parent(node("blind"), Objective(None, "min"))
    painter.dag(node("only"), [], ["only"], highlight="only", status={"only": "FINISHED"})
    assert list(painter.pictures()) == []
    assert workers() == before


def test_a_painter_that_dies_costs_a_warning_and_leaves_no_process(caplog):
    painter = Painter()
    before = workers()
    painter.parent(node("first"), LOSS)
    assert list(painter.pictures())
    (worker,) = workers() - before
    os.kill(worker, signal.SIGKILL)
    painter.parent(node("second"), LOSS)
    with caplog.at_level(logging.WARNING, logger="runtree_pipeline.execution.painter"):
        assert list(painter.pictures()) == []
    assert "could not draw plots for second" in caplog.text
    painter.close()
    assert workers() - before == set()


def test_close_stops_a_painter_that_is_still_drawing():
    painter = Painter()
    before = workers()
    for i in range(20):
        painter.parent(node(f"p{i}", xs=tuple(float(x) for x in range(200))), LOSS)
    painter.close()
    assert workers() - before == set()


def test_a_painter_whose_driver_was_killed_outright_exits_on_its_own(tmp_path):
    """`kill -9` gives the driver no chance to stop its painter; an orphan would hold the terminal's pipes open."""
    import subprocess
    import sys
    import time

    script = (
        "import os, sys, time\n"
        "from runtree_pipeline.execution.painter import Painter\n"
        "painter = Painter()\n"
        "painter.start()\n"
        "list(painter.pictures())\n"
        "print(painter._pool._processes and list(painter._pool._processes)[0], flush=True)\n"
        "time.sleep(60)\n"
    )
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    painter = int(driver.stdout.readline())
    driver.kill()
    driver.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{painter}").exists() and b"Z" not in _state(painter):
        assert time.monotonic() < deadline, "the painter outlived its driver by 10 s"
        time.sleep(0.1)


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().split(b")")[-1].split()[:1][0]
    except (OSError, IndexError):
        return b"Z"
