"""What a run tells its user while and after it runs: a handful of progress lines in a non-terminal run, the
leaf counts of every execution (new or resumed) in the summary and summary.json, and how to reproduce it."""

from __future__ import annotations

import contextlib
import fcntl
import io
import itertools
import json
import logging
import os
import re
import struct
import subprocess
import termios
import threading
from collections.abc import Iterator

import pyte
import pytest

from runtree_pipeline import build_plan, run_plan
from runtree_pipeline.plan.objective import Objective
from runtree_pipeline.plan.params import flatten
from runtree_pipeline.plan.sweeps import format_value
from runtree_pipeline.reports.progress import BarProgress, LogProgress, make_progress
from runtree_pipeline.reports.summary import PARAM_LINES, render, write_json
from tests.conftest import all_runs


def _progress_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "[runtree_pipeline.progress]" in line]


def test_a_200_leaf_sweep_logs_a_bounded_number_of_progress_lines(run_cli, store):
    proc = run_cli("+sweep=tutorial", f"tracking_uri={store}", "stages.tuning.subvariants.n=40", "plots=false")
    assert proc.returncode == 0, proc.stderr
    lines = _progress_lines(proc.stdout + proc.stderr)
    assert 2 <= len(lines) <= 6, lines
    assert "stage tuning: started, 200 leaves to run" in lines[0]
    assert "stage tuning: FINISHED — 200/200 leaves" in lines[-1] and "best metric1=" in lines[-1]
    assert "reused" not in lines[-1]
    summary = proc.stdout.splitlines()
    assert "  tuning  FINISHED  206 runs" in summary
    assert "    leaves: executed=200 reused=0 redone=0 failed=0" in summary


def _config(store: str, marker_dir: str) -> dict:
    return {
        "tracking_uri": store,
        "experiment": "counts",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {  # x=1 and x=2 fail the first time only
                "_target_": "tests.targets.fails_once",
                "params": {"marker_dir": marker_dir, "fail_on": [1, 2]},
                "subvariants": {"params": {"x": "range(0, 4)"}},
            },
            "always": {  # x=0 fails every time
                "_target_": "tests.targets.flaky",
                "params": {"fail_on": [0]},
                "subvariants": {"params": {"x": "range(0, 2)"}},
            },
            "after": {"_target_": "tests.targets.quad", "depends_on": ["fit"], "params": {"x": "${best:fit.params.x}"}},
        },
    }


def _counts(result) -> dict[str, tuple[int, int, int, int]]:
    stages = result.to_dict()["stages"]
    return {name: tuple(s[k] for k in ("executed", "reused", "redone", "failed")) for name, s in stages.items()}


def test_every_execution_reports_what_it_executed_reused_and_redid(store, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="runtree_pipeline.progress")
    config = _config(store, str(tmp_path / "markers"))
    first = run_plan(build_plan(config), progress=LogProgress(), plots=False)
    assert _counts(first) == {"fit": (4, 0, 0, 2), "always": (2, 0, 0, 1), "after": (1, 0, 0, 0)}
    assert "stage fit: started, 4 leaves to run" in caplog.messages
    assert "stage after: started, 1 leaf to run" in caplog.messages

    caplog.clear()
    resumed = run_plan(build_plan({**config, "resume": "last"}), progress=LogProgress(), plots=False)
    # fit: 2 reused, 2 failed before and now redone; always: x=0 redone and failed again (counted in both);
    # after: fit's best moved to x=1, so its input changed and it ran in a new run.
    assert _counts(resumed) == {"fit": (0, 2, 2, 0), "always": (0, 1, 1, 1), "after": (1, 0, 0, 0)}
    facts = resumed.to_dict()["stages"]
    assert all(type(facts[s][k]) is int for s in facts for k in ("executed", "reused", "redone", "failed"))
    messages = caplog.messages
    assert "stage fit: resumed, 4 leaves; those that finished before are reused, not run" in messages
    assert any(m.startswith("stage fit: FINISHED — 4/4 leaves (2 reused, 2 redone), best loss=0,") for m in messages)
    assert any(m.startswith("stage always: FINISHED — 2/2 leaves (1 reused, 1 redone), 1 failed,") for m in messages)
    assert "stage after: started, 1 leaf to run" in messages

    lines = render(resumed, build_plan(config), where="here").splitlines()
    for stage, runs, counts in (
        ("fit   ", "5 runs", "executed=0 reused=2 redone=2 failed=0"),
        ("always", "3 runs", "executed=0 reused=1 redone=1 failed=1"),
        ("after ", "1 run", "executed=1 reused=0 redone=0 failed=0"),
    ):
        at = lines.index(f"  {stage}  FINISHED  {runs}")
        assert lines[at + 1] == f"    leaves: {counts}"
    on_disk = json.loads(write_json(resumed, tmp_path / "summary.json").read_text())
    assert {k: on_disk["stages"]["always"][k] for k in ("executed", "reused", "redone", "failed")} == {
        "executed": 0,
        "reused": 1,
        "redone": 1,
        "failed": 1,
    }

    again = run_plan(build_plan({**config, "resume": "last"}), plots=False)
    assert _counts(again) == {"fit": (0, 4, 0, 0), "always": (0, 1, 1, 1), "after": (0, 1, 0, 0)}


def test_stage_runs_record_command_directory_and_git_commit(run_cli, store, client, tmp_path, monkeypatch):
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "train.py").write_text("# the user's code\n")
    subprocess.run([*git, "add", "train.py"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "code"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()

    proc = run_cli(
        "+sweep=tutorial", f"tracking_uri={store}", "stages.tuning.subvariants.n=2", "plots=false", "progress=false"
    )
    assert proc.returncode == 0, proc.stderr
    assert _progress_lines(proc.stdout + proc.stderr) == []
    (stage,) = [r for r in all_runs(client, "tutorial") if r.data.tags["runtree.level"] == "stage"]
    tags = stage.data.tags
    assert tags["runtree.command"] == (
        f"python -m runtree_pipeline +sweep=tutorial tracking_uri={store} stages.tuning.subvariants.n=2 plots=false"
    )
    assert tags["runtree.cwd"] == str(tmp_path)
    assert tags["mlflow.source.git.commit"] == head
    assert tags["runtree.git_dirty"] == "false"
    assert tags["mlflow.source.name"] == "runtree_pipeline"

    (tmp_path / "train.py").write_text("# edited\n")
    monkeypatch.chdir(tmp_path)
    config = {
        "tracking_uri": store,
        "experiment": "api",
        "stages": {"one": {"_target_": "tests.targets.quad", "params": {"x": 1}}},
    }
    run_plan(build_plan(config), plots=False)
    (newest,) = all_runs(client, "api")
    assert newest.data.tags["runtree.git_dirty"] == "true"
    assert newest.data.tags["runtree.cwd"] == str(tmp_path)
    assert "runtree.command" not in newest.data.tags


def test_the_summary_fits_the_terminal_and_never_exceeds_80_columns(store, tmp_path, monkeypatch):
    deep = tmp_path.joinpath(*[f"directory_{i}" for i in range(8)])  # a path longer than a line, without a space
    deep.mkdir(parents=True)
    name = "a_stage_whose_name_is_longer_than_its_column"
    config = {
        "tracking_uri": store,
        "experiment": "a_fairly_long_experiment_name_as_people_write_them",
        "objective": {"metric": "loss"},
        "stages": {
            name: {
                "_target_": "tests.targets.counted",
                "params": {"log_file": str(deep / "calls.txt"), "y": 0.5},
                "subvariants": {"params": {"x": "range(0, 3)"}},
            },
        },
    }
    plan = build_plan(config)
    result = run_plan(plan, plots=False)
    best = result.stages[name].best
    long_uri = f"sqlite:///{deep}/mlflow.db"  # longer than any line: it must still be copyable whole
    assert len(long_uri) > 90
    params = ", ".join(f"{k}={format_value(v)}" for k, v in best.params.items())
    assert len(params) > 80

    counts = "    leaves: executed=3 reused=0 redone=0 failed=0"
    stage_lines = {
        80: [f"  {name}  FINISHED  4 runs", counts, f"    best loss=0.5 (min)  run {best.run_id}"],
        60: [f"  {name}  FINISHED", "      4 runs", counts, "    best loss=0.5 (min)", f"      run {best.run_id}"],
    }
    for (columns, width), uri in itertools.product(((200, 80), (80, 80), (60, 60)), (store, long_uri)):
        monkeypatch.setenv("COLUMNS", str(columns))
        where = f"experiment 'x' in {uri} — run `mlflow ui --backend-store-uri {uri}` and open that experiment"
        lines = render(result, plan, where=where).splitlines()
        look = next(i for i, line in enumerate(lines) if line.startswith("look: experiment 'x' in"))
        assert max(len(line) for line in lines[:look]) <= width, "\n".join(lines)
        command = f"    mlflow ui --backend-store-uri {uri}"
        assert command in lines[look:], "the command to copy is whole, on a line of its own:\n" + "\n".join(lines)
        assert all(len(line) <= width or line in (command, f"  {uri}") for line in lines[look:]), "\n".join(lines)
        if uri == long_uri:
            expected_look = ["look: experiment 'x' in", f"  {uri}", "  run", command, "  and open that experiment"]
            assert lines[look:] == expected_look, "\n".join(lines)
        assert lines[:2] == [
            f"runtree pipeline {result.pipeline_id} — experiment",
            "  'a_fairly_long_experiment_name_as_people_write_them' (ok)",
        ]
        assert lines[2 : 2 + len(stage_lines[width])] == stage_lines[width]
        start = next(i for i, line in enumerate(lines) if line.startswith("    params: "))
        block = [lines[start], *(line for line in lines[start + 1 :] if line.startswith("      "))]
        assert "".join(block).replace(" ", "") == f"params: {params}".replace(" ", ""), "a param was lost"
        assert all(line.startswith("  ") for line in lines[look + 1 :])
        said = "".join(lines[look:]).replace(" ", "")
        expected = f"look: {where}".replace(" — ", "").replace("`", "")
        assert said == expected.replace(" ", ""), "each part after a dash on its own line"

    on_disk = json.loads(write_json(result, tmp_path / "summary.json").read_text())
    assert on_disk["stages"][name]["best"]["params"]["log_file"] == str(deep / "calls.txt")


def test_params_beyond_four_lines_are_cut_at_a_param_and_say_how_many_are_left(store, tmp_path):
    """Past four lines the params stop at a whole param and say how many more summary.json has: a list that just
    stops reads as if it were all of them."""
    opt = {"lr": 0.1, **{f"setting_number_{i}": i / 8 for i in range(30)}}
    config = {
        "tracking_uri": store,
        "experiment": "many",
        "objective": {"metric": "loss"},
        "stages": {"fit": {"_target_": "tests.targets.nested", "params": {"opt": opt}}},
    }
    plan = build_plan(config)
    result = run_plan(plan, plots=False)
    every = [f"{k}={format_value(v)}" for k, v in flatten(result.stages["fit"].best.params).items()]
    assert len(every) == 31
    for width in (80, 60):
        lines = render(result, plan, where="here", width=width).splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("    params: "))
        block = [lines[start], *itertools.takewhile(lambda line: line.startswith("      "), lines[start + 1 :])]
        assert len(block) == PARAM_LINES and max(len(line) for line in block) <= width, "\n".join(lines)
        shown, more = " ".join(line.strip() for line in block).removeprefix("params: ").split(", … ")
        left = re.fullmatch(r"(\d+) more, all in summary\.json", more)
        assert left, "\n".join(block)
        assert shown.split(", ") == every[: len(every) - int(left[1])], "a param is cut or out of order"

    on_disk = json.loads(write_json(result, tmp_path / "summary.json").read_text())
    assert len(flatten(on_disk["stages"]["fit"]["best"]["params"])) == 31


class _Terminal:
    """A pseudo-terminal of a given size, its output collected as it comes, and the screen a person would see."""

    def __init__(self, columns: int, rows: int = 24) -> None:
        self.columns, self.rows = columns, rows
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.stream = open(slave, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed by `close`
        self.output = bytearray()
        self._master = master
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):  # EIO once the slave side is closed
            while chunk := os.read(self._master, 65536):
                self.output += chunk

    def close(self) -> None:
        self.stream.close()
        self._reader.join(10)
        os.close(self._master)

    def screen(self) -> list[str]:
        screen = pyte.Screen(self.columns, self.rows)
        pyte.ByteStream(screen).feed(bytes(self.output))
        return [line.rstrip() for line in screen.display if line.strip()]


@contextlib.contextmanager
def _terminal(columns: int) -> Iterator[_Terminal]:
    terminal = _Terminal(columns)
    try:
        yield terminal
    finally:
        terminal.close()


def test_bars_leave_nothing_behind_on_the_terminal_for_what_is_printed_after_them():
    """A stage's bar becomes one line when it ends, a log line goes above the bars, and once closed no bar is left
    for the summary or an error line to be printed over."""
    loss = Objective.of("loss")
    logger = logging.getLogger("tests.progress.terminal")
    with _terminal(80) as terminal:
        handler = logging.StreamHandler(terminal.stream)
        logger.addHandler(handler)
        logger.propagate = False
        try:
            progress = make_progress(True, stream=terminal.stream)
            assert isinstance(progress, BarProgress)
            progress.stage_started("prep", total=1, objective=loss)
            progress.leaf_done("prep", objective=4.0, failed=False)
            progress.stage_finished("prep", status="FINISHED")
            progress.stage_started("fit", total=30, objective=loss)
            progress.stage_started("other", total=2, objective=loss, resumed=True)
            progress.leaf_done("fit", objective=1.5, failed=False)
            logger.warning("run fit/x=1 failed: RuntimeError: boom")
            progress.leaf_done("fit", objective=None, failed=True)
            progress.leaf_done("other", objective=0.25, failed=False, origin="reused")
            progress.close()
            progress.leaf_done("fit", objective=1.0, failed=False)  # a worker finishing late draws nothing
            terminal.stream.write("runtree: error: interrupted\n")
        finally:
            logger.removeHandler(handler)
            logger.propagate = True
    assert terminal.screen() == [
        "stage prep: FINISHED — 1/1 leaves, best loss=4, 00:00 elapsed",
        "run fit/x=1 failed: RuntimeError: boom",
        "runtree: error: interrupted",
    ]
    assert "█" in terminal.output.decode(), "no bar was drawn at all"


def test_a_run_that_stops_before_any_stage_draws_no_bar():
    """The store could not be opened, the config was refused, Ctrl-C came during start-up: the error line is the
    only thing on the screen."""
    with _terminal(80) as terminal:
        progress = make_progress(True, stream=terminal.stream)
        progress.close()
        terminal.stream.write("runtree: error: tracking store x is not usable\n")
    assert terminal.screen() == ["runtree: error: tracking store x is not usable"]


def _console_streams() -> dict[logging.Handler, object]:
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = {h for x in loggers for h in getattr(x, "handlers", ())}
    return {h: h.stream for h in handlers if isinstance(h, logging.StreamHandler)}


@pytest.mark.parametrize("hung_up", ["while the bars show", "as the first bar appears"])
def test_log_handlers_get_their_streams_back_when_the_terminal_goes_away(hung_up):
    """A bar that cannot be taken off the screen (the terminal hung up: BrokenPipeError) or that never appeared must
    not leave the console log handlers writing through the bars: the error that follows has to be logged."""
    logger = logging.getLogger("tests.progress.hangup")
    console = io.StringIO()
    handler = logging.StreamHandler(console)
    logger.addHandler(handler)
    read, write = os.pipe()
    bars = open(write, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed below, after its reader is gone
    try:
        before = _console_streams()
        progress = BarProgress(bars)
        if hung_up == "while the bars show":
            progress.stage_started("fit", total=3, objective=Objective.of("loss"))
            assert handler.stream is not console, "log lines did not go above the bars"
            os.close(read)
            with pytest.raises(BrokenPipeError):
                progress.close()
        else:
            os.close(read)
            with pytest.raises(BrokenPipeError):
                progress.stage_started("fit", total=3, objective=Objective.of("loss"))
            progress.close()
        assert _console_streams() == before
        logger.warning("runtree: error: the terminal went away")
        assert console.getvalue() == "runtree: error: the terminal went away\n"
    finally:
        logger.removeHandler(handler)
        with contextlib.suppress(BrokenPipeError):
            bars.close()


def test_a_console_handler_without_a_stream_is_left_alone(tmp_path):
    """Some handlers have no stream until they first write; swapping one in would hand the bars a None to write
    and flush, and its restore would fail every later log line (seen once another test had left one behind)."""
    logger = logging.getLogger("tests.progress.streamless")
    streamless = logging.StreamHandler()
    streamless.stream = None
    logger.addHandler(streamless)
    try:
        with open(tmp_path / "bars.txt", "w", encoding="utf-8") as bars:
            progress = BarProgress(bars)
            progress.stage_started("fit", total=1, objective=Objective.of("loss"))
            progress.leaf_done("fit", objective=0.5, failed=False)
            progress.close()
        assert streamless.stream is None
    finally:
        logger.removeHandler(streamless)
