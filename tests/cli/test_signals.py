"""Ctrl-C and SIGTERM at any moment: no run is left RUNNING, the store stays usable, and `resume` finishes the job.

Through the real CLI, at moments spread over a whole pipeline's life. Each moment is anchored on something the
pipeline leaves behind (the store being built, worker processes, leaves logging their calls, the first picture,
the summary) rather than on a wall-clock delay alone: on a busy 2-core machine start-up alone takes from 2 to 8
seconds, and fixed delays would all land in the imports. The process exits 0 (it finished first) or 128 + the
signal; no run is left RUNNING; the store opens (or does not exist); and when anything was recorded,
`resume: last` completes the tree without executing a finished leaf again.

In-process, the moments that used to orphan a run are hit exactly, from inside MLflow's own writes.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from runtree_pipeline import build_plan, run_plan
from tests.conftest import all_runs, cli_env

LEAVES = [f"{x},{y}" for y in (0.0, 1.0) for x in range(3)]
PREP = "-1,0.0"
HANG = 90.0


def sweep(calls: Path) -> dict:
    return {
        "experiment": "signals",
        "objective": {"metric": "loss"},
        "stages": {
            "prep": {"_target_": "tests.targets.counted", "params": {"x": -1, "log_file": str(calls)}},
            "fit": {
                "depends_on": ["prep"],
                "_target_": "tests.targets.counted",
                "params": {"log_file": str(calls), "sleep": 0.2},
                "variants": {"points": {"a": {"y": 0.0}, "b": {"y": 1.0}}},
                "subvariants": {"params": {"x": "range(0, 3)"}},
            },
        },
    }


@dataclass(frozen=True)
class Case:
    executor: str
    sig: signal.Signals
    anchor: str
    offset: float
    must_interrupt: bool = True

    @property
    def name(self) -> str:
        return f"{self.executor}-{self.sig.name}-{self.anchor}+{self.offset:g}"


L, P, INT, TERM = "local", "processes", signal.SIGINT, signal.SIGTERM
# In the order of a pipeline's life: interpreter start, imports and Hydra, a brand-new store being built, the store
# just built (experiment, resume lookup, provenance), the worker pool starting, leaves, pictures, the summary. Every
# moment, with both signals and both executors spread over them, and no more: each case is a whole CLI process.
CASES = [
    Case(L, INT, "spawn", 0.0, must_interrupt=False),
    Case(L, INT, "spawn", 0.3),
    Case(L, TERM, "spawn", 1.2),
    Case(L, INT, "building", 0.0),
    Case(P, TERM, "building", 0.5),
    Case(L, TERM, "store", 0.0),
    Case(P, INT, "workers", 0.0),
    Case(L, INT, "leaves:1", 0.0),
    Case(P, INT, "leaves:2", 0.05),  # Ctrl-C reaches the whole group: the driver and the workers running leaves
    Case(P, TERM, "leaves:5", 0.0),
    Case(P, INT, "plot", 0.0, must_interrupt=False),
    Case(L, INT, "done", 0.0),
    Case(L, TERM, "summary", 0.0, must_interrupt=False),
]


@dataclass
class Outcome:
    case: Case
    dir: Path
    rc: int | None
    sent_at: float | None
    exited_at: float
    stderr: str
    leftover: bool


def _workers_started(pid: int, where: Path) -> bool:
    """A spawned worker, or the forkserver workers fork from, among the process's children (Linux); elsewhere the
    store existing comes close."""
    listing = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        children = listing.read_text().split()
    except OSError:
        return (where / "mlflow.db").exists()
    for child in children:
        try:
            if any(mark in Path(f"/proc/{child}/cmdline").read_bytes() for mark in (b"spawn_main", b"forkserver")):
                return True
        except OSError:
            continue
    return False


def _reached(anchor: str, where: Path, pid: int) -> bool:
    kind, _, arg = anchor.partition(":")
    if kind == "spawn":
        return True
    if kind == "building":
        return any(where.glob("mlflow.db.creating-*"))
    if kind == "store":
        return (where / "mlflow.db").exists()
    if kind == "workers":
        return _workers_started(pid, where)
    if kind in ("leaves", "done"):
        calls = where / "calls.txt"
        return calls.exists() and len(calls.read_text().splitlines()) >= (int(arg) if arg else 1 + len(LEAVES))
    if kind == "plot":
        return any(where.glob("mlruns/*/*/artifacts/**/*.png"))
    if kind == "summary":
        return any(where.glob("outputs/*/*/summary.json"))
    raise ValueError(anchor)


def _interrupt(case: Case, where: Path, conf: Path, empty_store: Path) -> Outcome:
    """Start the CLI, wait for the case's moment, signal it, and wait for it to exit."""
    where.mkdir()
    if case.anchor.partition(":")[0] not in ("spawn", "building", "store"):
        shutil.copy(empty_store, where / "mlflow.db")
    args = [sys.executable, "-m", "runtree_pipeline", "--config-dir", str(conf), "+sweep=signals"]
    args += [f"tracking_uri=sqlite:///{where / 'mlflow.db'}", f"stages.prep.params.log_file={where / 'calls.txt'}"]
    args += [f"stages.fit.params.log_file={where / 'calls.txt'}"]
    if case.executor == P:
        args += ["executor=processes", "executor.workers=2"]
    with open(where / "stdout.txt", "w") as out, open(where / "stderr.txt", "w") as err:
        started = time.monotonic()
        env = cli_env(PYTHONFAULTHANDLER="1")
        proc = subprocess.Popen(args, cwd=where, env=env, stdout=out, stderr=err, start_new_session=True)
    sent_at = None
    try:
        while proc.poll() is None and not _reached(case.anchor, where, proc.pid):
            if time.monotonic() - started > HANG:
                break
            time.sleep(0.01)
        if case.offset:
            time.sleep(case.offset)
        if proc.poll() is None:
            # Ctrl-C in a terminal reaches the whole process group; SIGTERM (docker stop, kill) only the process.
            if case.sig == INT:
                os.killpg(proc.pid, case.sig)
            else:
                proc.send_signal(case.sig)
            sent_at = time.monotonic() - started
        try:
            rc: int | None = proc.wait(timeout=HANG)
        except subprocess.TimeoutExpired:
            rc = None
            proc.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack to stderr.txt
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        exited_at = time.monotonic() - started
        leftover = False
        deadline = time.monotonic() + 10
        while _group_alive(proc.pid):
            if time.monotonic() > deadline:
                leftover = True
                break
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return Outcome(case, where, rc, sent_at, exited_at, (where / "stderr.txt").read_text(), leftover)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _check(outcome: Outcome) -> list[str]:
    """Everything a user relies on after the signal; returns what went wrong."""
    from mlflow import MlflowClient

    case, where = outcome.case, outcome.dir
    problems: list[str] = []
    expected = {128 + case.sig} if case.must_interrupt else {0, 128 + case.sig}
    if outcome.rc is None:
        problems.append(f"still running {HANG:.0f}s after the signal")
    elif outcome.rc not in expected:
        # While the interpreter itself starts (streams, `site` and the environment's .pth hooks) no program can
        # handle a signal: the process dies of it, or Python reports that its initialisation failed.
        unborn = (outcome.rc == -case.sig and not outcome.stderr) or (
            outcome.rc == 1 and "Fatal Python error: init_" in outcome.stderr
        )
        if not (case.anchor == "spawn" and unborn):
            problems.append(f"exit code {outcome.rc}, expected {sorted(expected)}")
    if outcome.leftover:
        problems.append("processes of its group were still alive 10 s after it exited")
    if list(where.glob("mlflow.db.creating-*")):
        problems.append("a half-built store was left behind")
    config = sweep(where / "calls.txt")
    store = f"sqlite:///{where / 'mlflow.db'}"
    if not (where / "mlflow.db").exists():
        return problems
    try:
        before = all_runs(MlflowClient(store), "signals")
    except Exception as e:  # noqa: BLE001 - any failure here is the finding
        return [*problems, f"the store does not open: {str(e).splitlines()[0]}"]
    statuses = collections.Counter(r.info.status for r in before)
    if statuses["RUNNING"]:
        problems.append(f"runs left RUNNING: {dict(statuses)}")
    if statuses["KILLED"] and "resume=" not in outcome.stderr:
        problems.append("runs were KILLED but the message does not say how to resume")
    if not before:
        return problems
    leaves = [r for r in before if r.data.tags["runtree.level"] == "subvariant"]
    finished = {_point(r) for r in leaves if r.info.status == "FINISHED"}
    try:
        run_plan(build_plan({**config, "tracking_uri": store, "resume": "last"}), plots=False)
    except Exception as e:  # noqa: BLE001
        return [*problems, f"resume=last failed: {type(e).__name__}: {e}"]
    after = all_runs(MlflowClient(store), "signals")
    levels = collections.Counter(r.data.tags["runtree.level"] for r in after)
    if levels != {"stage": 2, "variant": 2, "subvariant": 6} or {r.info.status for r in after} != {"FINISHED"}:
        problems.append(f"resume left {dict(levels)} runs, {dict(collections.Counter(r.info.status for r in after))}")
    leaves = [r for r in after if r.data.tags["runtree.level"] == "subvariant"]
    if sorted(_point(r) for r in leaves) != sorted(LEAVES):
        problems.append(f"leaves after resume: {sorted(_point(r) for r in leaves)}")
    fit = next((r for r in after if r.info.run_name == "fit"), None)
    if fit is None or fit.data.metrics.get("best_loss") != min(r.data.metrics["loss"] for r in leaves):
        problems.append("the fit stage's best_loss is not its best leaf's loss")
    calls = collections.Counter((where / "calls.txt").read_text().splitlines())
    if set(calls) != {PREP, *LEAVES}:
        problems.append(f"calls: {dict(calls)}")
    redone = sorted(p for p in finished if calls[p] != 1)
    if redone:
        problems.append(f"leaves finished before the signal were executed again: {redone}")
    return problems


def _point(run) -> str:
    return f"{run.data.params['x']},{float(run.data.params['y'])}"


def test_a_signal_at_any_moment_leaves_no_run_running_and_resume_completes_the_tree(tmp_path, empty_store):
    conf = tmp_path / "conf"
    (conf / "sweep").mkdir(parents=True)
    text = yaml.safe_dump(sweep(Path("CALLS")), sort_keys=False)
    (conf / "sweep" / "signals.yaml").write_text("# @package _global_\n" + text)

    started = time.monotonic()
    table, failures = [], []
    with ThreadPoolExecutor(3) as pool:
        slowest_first = sorted(CASES, key=lambda case: case.executor != P)
        futures = [pool.submit(_interrupt, case, tmp_path / case.name, conf, empty_store) for case in slowest_first]
        for future in futures:
            outcome = future.result()
            problems = _check(outcome)
            sent = f"{outcome.sent_at:5.2f}s" if outcome.sent_at is not None else "  -   "
            table.append(f"{outcome.case.name:34} sent {sent} exit {outcome.rc} after {outcome.exited_at:5.2f}s")
            failures += [f"{outcome.case.name}: {p}" for p in problems]
            if problems:
                tail = outcome.stderr.strip().splitlines()[-60 if outcome.rc is None else -4 :]
                failures.append("  stderr: " + "\n".join(tail))
    print("\n".join(table), f"\n{len(CASES)} moments in {time.monotonic() - started:.1f}s", sep="\n")
    assert not failures, "\n".join([*failures, "", *table])


# ---- in-process: the exact moments a signal used to orphan a run, and the rules of the shields ----------------


@contextlib.contextmanager
def signal_on_runs_write(nth: int, sig: signal.Signals):
    """Signal this process from inside MLflow's own write of the `runs` table (creating, reopening or ending a run),
    the nth time it happens: the moment that used to leave a run RUNNING, hit exactly rather than by timing."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    seen = 0

    def after_execute(conn, cursor, statement, parameters, context, executemany) -> None:
        nonlocal seen
        if statement.lstrip().upper().startswith(("INSERT INTO RUNS ", "UPDATE RUNS ")):
            seen += 1
            if seen == nth:
                signal.raise_signal(sig)

    event.listen(Engine, "after_cursor_execute", after_execute)
    try:
        yield
    finally:
        event.remove(Engine, "after_cursor_execute", after_execute)


def small(tmp_path: Path, empty_store: Path) -> dict:
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    config = sweep(tmp_path / "calls.txt")
    config["stages"]["fit"]["params"]["sleep"] = 0.0
    config["stages"]["fit"]["variants"]["points"].pop("b")
    config["stages"]["fit"]["subvariants"]["params"]["x"] = "range(0, 2)"
    return {**config, "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}


@pytest.mark.parametrize("nth", range(1, 11))  # 5 runs: each one's creation and its end
def test_a_signal_inside_a_run_write_never_orphans_or_rekills_that_run(tmp_path, empty_store, nth):
    from mlflow import MlflowClient

    from runtree_pipeline import Interrupted

    sig = (INT, TERM)[nth % 2]
    config = small(tmp_path, empty_store)
    with signal_on_runs_write(nth, sig), pytest.raises(Interrupted) as interrupted:
        run_plan(build_plan(config), plots=False)
    assert interrupted.value.exit_code == 128 + sig
    client = MlflowClient(config["tracking_uri"])
    before = all_runs(client, "signals")
    assert "RUNNING" not in {r.info.status for r in before}

    run_plan(build_plan({**config, "resume": "last"}), plots=False)
    after = all_runs(client, "signals")
    levels = collections.Counter(r.data.tags["runtree.level"] for r in after)
    assert levels == {"stage": 2, "variant": 1, "subvariant": 2}
    assert {r.info.status for r in after} == {"FINISHED"}
    # The signal never lands between a target's return and its run's end, so no target ran twice.
    calls = collections.Counter((tmp_path / "calls.txt").read_text().splitlines())
    assert calls == {PREP: 1, "0,0.0": 1, "1,0.0": 1}


@pytest.mark.parametrize("nth", range(1, 5))  # the resume's first writes reopen the stage and variant runs
def test_a_signal_while_a_resume_reopens_runs_never_orphans_them(tmp_path, empty_store, nth):
    from mlflow import MlflowClient

    from runtree_pipeline import Interrupted

    config = small(tmp_path, empty_store)
    with signal_on_runs_write(6, INT), pytest.raises(Interrupted):
        run_plan(build_plan(config), plots=False)
    resume = {**config, "resume": "last"}
    with signal_on_runs_write(nth, TERM), pytest.raises(Interrupted) as interrupted:
        run_plan(build_plan(resume), plots=False)
    assert interrupted.value.exit_code == 143
    client = MlflowClient(config["tracking_uri"])
    assert "RUNNING" not in {r.info.status for r in all_runs(client, "signals")}

    run_plan(build_plan(resume), plots=False)
    after = all_runs(client, "signals")
    assert collections.Counter(r.data.tags["runtree.level"] for r in after) == {
        "stage": 2,
        "variant": 1,
        "subvariant": 2,
    }
    assert {r.info.status for r in after} == {"FINISHED"}
    calls = collections.Counter((tmp_path / "calls.txt").read_text().splitlines())
    assert calls == {PREP: 1, "0,0.0": 1, "1,0.0": 1}


def converts_interrupts(*, x: float, marker: str, y: float = 0.0) -> dict:
    """A training loop that turns Ctrl-C into an error of its own, the first time it runs, as some libraries do."""
    if not Path(marker).exists():
        Path(marker).touch()
        try:
            signal.raise_signal(TERM)
            time.sleep(30)
        except KeyboardInterrupt:
            raise RuntimeError("training stopped early") from None
    return {"loss": x + y}


def test_a_signal_a_target_turns_into_its_own_error_still_stops_the_pipeline(tmp_path, empty_store):
    from mlflow import MlflowClient

    from runtree_pipeline import Interrupted

    config = small(tmp_path, empty_store)
    config["stages"]["fit"]["_target_"] = "tests.cli.test_signals.converts_interrupts"
    config["stages"]["fit"]["params"] = {"marker": str(tmp_path / "signalled")}
    config["preempt_grace_s"] = 0  # SIGTERM stops the leaf where it is, as Ctrl-C does
    with pytest.raises(Interrupted) as interrupted:
        run_plan(build_plan(config), plots=False)
    assert interrupted.value.exit_code == 143
    client = MlflowClient(config["tracking_uri"])
    assert "RUNNING" not in {r.info.status for r in all_runs(client, "signals")}
    run_plan(build_plan({**config, "resume": "last"}), plots=False)
    assert {r.info.status for r in all_runs(client, "signals")} == {"FINISHED"}


def test_inside_a_pipeline_a_shielded_section_finishes_before_the_signal_is_raised():
    from runtree_pipeline.interrupts import Signalled, interruptible, shielded

    finished = False
    with pytest.raises(Signalled) as raised, interruptible():
        with shielded():
            signal.raise_signal(TERM)
            finished = True
        pytest.fail("the signal was not raised when the shielded section ended")
    assert finished and raised.value.exit_code == 143


def test_a_swallowed_interrupt_is_raised_again_at_the_next_shield_and_clean_up_is_not_cut_short():
    from runtree_pipeline.interrupts import Signalled, interruptible, shielded

    with interruptible():
        with contextlib.suppress(KeyboardInterrupt):  # a training loop that stops early on Ctrl-C
            signal.raise_signal(INT)
        with pytest.raises(Signalled):
            with shielded():
                pass
        with shielded(discard=True):
            signal.raise_signal(INT)
            signal.raise_signal(TERM)


def test_outside_a_pipeline_a_shield_hands_the_signal_to_the_handler_that_was_there():
    from runtree_pipeline.interrupts import shielded

    received: list[int] = []

    def own(signum: int, frame: object) -> None:
        received.append(signum)

    previous = signal.signal(TERM, own)
    try:
        with shielded():
            signal.raise_signal(TERM)
            assert received == []
        assert received == [TERM]
        assert signal.getsignal(TERM) is own and signal.getsignal(INT) is signal.default_int_handler
    finally:
        signal.signal(TERM, previous)
