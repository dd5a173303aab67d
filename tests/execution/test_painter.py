"""The painter draws in its own process while the tree is recorded; whatever happens to it, no run fails for it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from runtree_pipeline.execution.painter import Painter
from runtree_pipeline.plan.objective import Objective
from runtree_pipeline.reports.plots import DAG_PLOT, OBJECTIVE_PLOT, PARALLEL_PLOT
from runtree_pipeline.results import LeafResult, NodeResult

PNG = b"\x89PNG\r\n\x1a\n"
LOSS = Objective.of("loss", "min")


def node(name: str, xs=(0.0, 1.0, 2.0), *, changed: bool = True) -> NodeResult:
    leaves = tuple(
        LeafResult(f"{name}-{i}", f"{name}/x={x}", {"x": x}, {"loss": x * x}, {"o": "o"}, "FINISHED", None, x * x)
        for i, x in enumerate(xs)
    )
    return NodeResult(f"run-{name}", name, "variant", leaves, leaves[0], (), changed, f"file:///nowhere/{name}")


def painters(painter: Painter) -> set[int]:
    """The painter's process and its drawers."""
    import psutil

    process = painter._process
    if process is None:
        return set()
    with contextlib.suppress(psutil.NoSuchProcess):
        return {process.pid, *(child.pid for child in psutil.Process(process.pid).children(recursive=True))}
    return {process.pid}


def drawers(painter: Painter, within: float = 30) -> list[int]:
    """The two drawers, once the painter has warmed up and forked both (one after the other)."""
    import psutil

    deadline = time.monotonic() + within
    while len(found := psutil.Process(painter._process.pid).children()) < 2:
        assert time.monotonic() < deadline, f"the painter forked {len(found)} drawers"
        time.sleep(0.05)
    return [child.pid for child in found]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


def gone(pids: set[int], within: float = 10) -> bool:
    deadline = time.monotonic() + within
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_each_parent_and_the_dag_come_back_as_pngs_under_their_artifact_paths():
    painter = Painter()
    a, b = node("a"), node("b")
    try:
        painter.parent(a, LOSS)
        painter.parent(b, LOSS)
        painter.dag(a, [("a", "b")], ["a", "b"], highlight="a", status={"a": "FINISHED", "b": "FAILED"})
        drawn: dict[str, dict[str, bytes]] = {}
        for n, files in painter.pictures():
            drawn.setdefault(n.name, {}).update(files)
    finally:
        painter.close()
    assert set(drawn) == {"a", "b"}
    assert set(drawn["a"]) == {OBJECTIVE_PLOT, PARALLEL_PLOT, DAG_PLOT}
    assert set(drawn["b"]) == {OBJECTIVE_PLOT, PARALLEL_PLOT}
    assert all(png[:8] == PNG for files in drawn.values() for png in files.values())


def test_the_driver_holds_at_most_a_window_of_pictures_and_every_parent_still_gets_its_own():
    """2,000 small parents closing faster than the painter draws once queued all their PNGs in the driver; now the
    parents beyond the window wait as references, go out as pictures come back, and none is dropped."""
    painter = Painter(window=2)
    drawn: dict[str, dict[str, bytes]] = {}
    most = 0
    try:
        for i in range(12):
            painter.parent(node(f"p{i}", xs=tuple(float(x) for x in range(30))), LOSS)
            most = max(most, painter.held)
            for n, files in painter.drawn():
                drawn.setdefault(n.name, {}).update(files)
            most = max(most, painter.held)
        assert painter._waiting, "the painter kept up: nothing waited, so the window was not tested"
        for n, files in painter.pictures():
            most = max(most, painter.held)
            drawn.setdefault(n.name, {}).update(files)
    finally:
        painter.close()
    assert most <= 2
    assert set(drawn) == {f"p{i}" for i in range(12)}
    assert all(set(files) == {OBJECTIVE_PLOT, PARALLEL_PLOT} for files in drawn.values())


def test_pictures_drawn_by_now_are_handed_back_without_waiting_for_the_rest():
    """What lets the driver store each parent's pictures while it records the rest of the tree."""
    painter = Painter()
    try:
        painter.parent(node("first"), LOSS)
        deadline = time.monotonic() + 60
        while not (done := painter.drawn()):
            assert time.monotonic() < deadline, "the first parent's pictures never came back"
            time.sleep(0.05)
        assert [n.name for n, _ in done] == ["first"]
        painter._submit(node("slow"), time.sleep, 30)
        started = time.monotonic()
        assert painter.drawn() == []
        assert time.monotonic() - started < 1
        assert painter.held == 1
    finally:
        painter.close()


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2, reason="drawers need fork, 2 cores"
)
def test_two_parents_that_close_together_are_drawn_side_by_side():
    """The last variant and its stage close together at the end, when the driver only waits for their pictures."""
    painter = Painter()
    painter.start()
    try:
        assert len(drawers(painter)) == 2
        started = time.monotonic()
        painter._submit(node("a"), time.sleep, 1.5)
        painter._submit(node("b"), time.sleep, 1.5)
        assert len(list(painter.pictures())) == 0  # time.sleep returns no files, and both came back
        took = time.monotonic() - started
    finally:
        painter.close()
    assert took < 2.7, f"two 1.5 s drawings took {took:.2f} s: drawn one after the other"


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2, reason="drawers need fork, 2 cores"
)
def test_a_drawer_that_dies_fails_its_own_picture_and_the_other_draws_the_rest(caplog):
    painter = Painter()
    painter.start()
    try:
        first, second = drawers(painter)
        painter._submit(node("stuck"), time.sleep, 60)
        deadline = time.monotonic() + 10
        while not any(open(f"/proc/{pid}/wchan").read() == "hrtimer_nanosleep" for pid in (first, second)):
            assert time.monotonic() < deadline, "no drawer took the call"
            time.sleep(0.02)
        stuck = next(pid for pid in (first, second) if open(f"/proc/{pid}/wchan").read() == "hrtimer_nanosleep")
        os.kill(stuck, signal.SIGKILL)
        with caplog.at_level(logging.WARNING, logger="runtree_pipeline.execution.painter"):
            painter.parent(node("after"), LOSS)
            drawn = [n.name for n, _ in painter.pictures()]
        pids = painters(painter)
    finally:
        painter.close()
    assert drawn == ["after"]
    assert "could not draw plots for stuck: the drawing process died" in caplog.text
    assert gone(pids | {stuck})


def test_nothing_is_drawn_and_no_process_started_for_what_has_no_picture():
    """A parent reused unchanged, a pipeline with one stage (its DAG is one box) and an objective-less stage."""
    painter = Painter()
    painter.parent(node("same", changed=False), LOSS)
    painter.parent(node("blind"), Objective())
    painter.dag(node("only"), [], ["only"], highlight="only", status={"only": "FINISHED"})
    assert list(painter.pictures()) == []
    assert painter._process is None


def test_a_painter_that_dies_costs_a_warning_and_leaves_no_process(caplog):
    painter = Painter()
    painter.parent(node("first"), LOSS)
    assert list(painter.pictures())
    pids = painters(painter)
    os.kill(painter._process.pid, signal.SIGKILL)
    assert gone(pids), "the painter's drawers outlived it"
    with caplog.at_level(logging.WARNING, logger="runtree_pipeline.execution.painter"):
        painter.parent(node("second"), LOSS)
        painter.parent(node("third"), LOSS)
        assert list(painter.pictures()) == []
    assert "could not draw plots for second" in caplog.text or "plots are off" in caplog.text
    painter.close()
    assert gone(pids)


def test_a_painter_that_hangs_costs_its_pictures_not_the_pipeline(caplog):
    """The end of a pipeline waits for pictures; a painter stuck in one (here a call that sleeps a minute) is given
    up after `stall_s` without progress, with the pictures behind it."""
    painter = Painter()
    painter.parent(node("drawn"), LOSS)
    assert [n.name for n, _ in painter.pictures()] == ["drawn"]  # matplotlib imported, at its own pace
    painter.stall_s = 1
    painter._submit(node("stuck"), time.sleep, 60)
    painter.parent(node("after"), LOSS)
    pids = painters(painter)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="runtree_pipeline.execution.painter"):
        assert list(painter.pictures()) == []
    assert time.monotonic() - started < 20
    assert "no picture came back for 1 s; 2 are left undrawn" in caplog.text
    assert gone(pids)


def test_close_stops_a_painter_that_is_still_drawing():
    painter = Painter()
    for i in range(20):
        painter.parent(node(f"p{i}", xs=tuple(float(x) for x in range(200))), LOSS)
    pids = painters(painter)
    assert pids
    painter.close()
    assert gone(pids)


def test_a_painter_whose_driver_was_killed_outright_exits_on_its_own(tmp_path):
    """`kill -9` gives the driver no chance to stop its painter; an orphan would hold the terminal's pipes open."""
    import subprocess
    import sys

    script = (
        "import os, sys, time\n"
        "from runtree_pipeline.execution.painter import Painter\n"
        "painter = Painter()\n"
        "painter.start()\n"
        "import psutil\n"
        "painter = psutil.Process(painter._process.pid)\n"
        "while len(painter.children()) < int(sys.argv[1]):\n"
        "    time.sleep(0.05)\n"
        "print(*[p.pid for p in [painter, *painter.children()]], flush=True)\n"
        "time.sleep(60)\n"
    )
    forks = 2 if sys.platform.startswith("linux") and (os.cpu_count() or 1) >= 2 else 0
    driver = subprocess.Popen([sys.executable, "-c", script, str(forks)], stdout=subprocess.PIPE, text=True)
    pids = set(map(int, driver.stdout.readline().split()))
    driver.kill()
    driver.wait()
    assert len(pids) == 1 + forks
    assert gone(pids), "the painter or its drawers outlived the driver by 10 s"


def test_a_script_without_a_main_guard_gets_its_pictures_and_runs_once(tmp_path):
    """The painter must not run the user's script again as its own main (what a spawned process does)."""
    import subprocess
    import sys

    from mlflow import MlflowClient

    from tests.conftest import all_runs, cli_env

    (tmp_path / "calls.txt").touch()
    (tmp_path / "script.py").write_text(
        "from runtree_pipeline import run_pipeline\n"
        "open('calls.txt', 'a').write('ran\\n')\n"
        "run_pipeline({'tracking_uri': 'sqlite:///store.db', 'experiment': 'guardless',\n"
        "              'objective': {'metric': 'loss'}, 'stages': {'fit': {'_target_': 'tests.targets.sleepy',\n"
        "              'params': {'sleep': 0.1}, 'subvariants': {'params': {'x': 'range(0, 6)'}}}}})\n"
    )
    proc = subprocess.run(
        [sys.executable, "script.py"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "calls.txt").read_text() == "ran\n"
    client = MlflowClient(f"sqlite:///{tmp_path / 'store.db'}")
    (stage,) = [r for r in all_runs(client, "guardless") if r.data.tags["runtree.level"] == "stage"]
    assert {f.path for f in client.list_artifacts(stage.info.run_id, "plots")} >= {OBJECTIVE_PLOT, PARALLEL_PLOT}


@pytest.mark.parametrize(
    ("sweep", "warmup"),
    [
        # A variant's 25 children vary in 3 params; the stage's 125 in those and the variant's test_no.
        ("tutorial", {"widths": [3, 4], "importance": True, "pareto": False}),
        ("tradeoff", {"widths": [2], "importance": True, "pareto": True}),
    ],
)
def test_the_painter_warms_up_on_the_layouts_of_the_shipped_sweeps(sweep, warmup):
    import yaml

    from runtree_pipeline.execution.scheduler import new_painter
    from runtree_pipeline.plan.stages import build_plan

    config = yaml.safe_load((Path(__file__).parents[2] / "conf" / "sweep" / f"{sweep}.yaml").read_text())
    painter = new_painter(build_plan(config, default_experiment=sweep))
    assert painter is not None and painter.warmup == warmup


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2, reason="drawers need fork, 2 cores"
)
def test_a_closed_painter_waits_for_its_drawers_itself_even_while_they_draw():
    """Killed outright, the painter would leave its drawers to be reaped by whoever adopts them: zombies for good
    where the driver is a container's first process. This process adopts orphans here, as such a driver does."""
    import ctypes

    assert ctypes.CDLL(None, use_errno=True).prctl(36, 1) == 0  # PR_SET_CHILD_SUBREAPER
    painter = Painter()
    painter.start()
    started = time.monotonic()
    try:
        pids = set(drawers(painter))
        painter._submit(node("slow"), time.sleep, 30)
        started = time.monotonic()
    finally:
        painter.close()
        took = time.monotonic() - started
        ctypes.CDLL(None, use_errno=True).prctl(36, 0)
    assert took < 2, f"close took {took:.2f} s"
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids), "a drawer was left to this process to reap"
