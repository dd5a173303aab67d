"""Ctrl-C while program leaves (`command:`) run, through the real CLI: a program runs in a process group of its own,
which a terminal's Ctrl-C does not reach, so the pipeline must stop it (and whatever it started) itself before it
exits; then the printed command finishes the same pipeline. The program is tests/programs/waiter.py: it notes its
pid and its child's, and waits for good unless a marker file tells it to finish."""

from __future__ import annotations

import collections
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.cli.test_cli import as_typed_in_a_shell
from tests.cli.test_signals import HANG, _group_alive
from tests.conftest import all_runs, cli_env, copy_of
from tests.execution.test_commands import gone

WAITER = Path(__file__).resolve().parent.parent / "programs" / "waiter.py"


def sweep(pids: Path, marker: Path, xs: list[int]) -> dict:
    return {
        "experiment": "ctrlc",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "command": ["python", str(WAITER), str(pids), str(marker)],
                "command_args": "none",
                "subvariants": {"params": {"x": f"choice({', '.join(map(str, xs))})"}},
            }
        },
    }


def noted_pids(pids: Path) -> list[int]:
    return [int(pid) for noted in pids.glob("*.pids") for pid in noted.read_text().split()]


@pytest.mark.parametrize(
    ("executor", "xs"),
    [
        pytest.param(["executor=processes", "executor.workers=2"], [1, 2], id="processes"),
        pytest.param([], [3], id="local"),
    ],
)
def test_ctrl_c_stops_every_program_and_its_children_and_the_printed_command_finishes(
    tmp_path, empty_store, executor, xs
):
    pids, marker = tmp_path / "pids", tmp_path / "finish"
    pids.mkdir()
    (tmp_path / "conf" / "sweep").mkdir(parents=True)
    text = yaml.safe_dump(sweep(pids, marker, xs), sort_keys=False)
    (tmp_path / "conf" / "sweep" / "waiting.yaml").write_text("# @package _global_\n" + text)
    store = copy_of(empty_store, tmp_path)
    args = ["--config-dir", "./conf", "+sweep=waiting", f"tracking_uri={store}", *executor]
    args += ["progress=false", "plots=false"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtree_pipeline", *args],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    noted: list[int] = []
    try:
        deadline = time.monotonic() + HANG
        while len(list(pids.glob("*.pids"))) < len(xs):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the programs did not start"
            time.sleep(0.05)
        noted = noted_pids(pids)
        assert len(noted) == 2 * len(xs) and not any(map(gone, noted))
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the CLI's group, not the programs' own groups
        sent = time.monotonic()
        out, err = proc.communicate(timeout=HANG)
        exited = time.monotonic()
        print(f"exit {proc.returncode} {exited - sent:.1f} s after Ctrl-C")
        assert proc.returncode == 130, out + err
        while not all(map(gone, noted)) and time.monotonic() - exited < 3:
            time.sleep(0.05)
        left = [pid for pid in noted if not gone(pid)]
        assert not left, f"still running 3 s after the CLI exited: {left} of programs and children {noted}"
        while _group_alive(proc.pid) and time.monotonic() - exited < 10:
            time.sleep(0.05)
        assert not _group_alive(proc.pid), "the CLI's workers outlived it"
    finally:
        for pid in noted:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    client = MlflowClient(store)
    runs = all_runs(client, "ctrlc")
    (pipeline_id,) = {r.data.tags["runtree.pipeline_id"] for r in runs}
    leaves = [r for r in runs if r.data.tags["runtree.level"] == "subvariant"]
    assert len(leaves) == len(xs) and {r.info.status for r in runs} == {"KILLED"}
    (line,) = [ln for ln in err.splitlines() if ln.startswith("runtree: error: ")] or [err]
    message, _, command = line.partition("; finish with: ")
    assert message.startswith("runtree: error: interrupted during stage 'fit': "), err
    assert shlex.split(command)[1:] == ["-m", "runtree_pipeline", *args, f"resume={pipeline_id}"]

    marker.touch()
    began = time.monotonic()
    again = as_typed_in_a_shell(command, tmp_path)
    print(f"resumed in {time.monotonic() - began:.1f} s")
    assert again.returncode == 0, again.stdout + again.stderr
    runs = all_runs(client, "ctrlc")
    assert {r.data.tags["runtree.pipeline_id"] for r in runs} == {pipeline_id}
    assert collections.Counter(r.data.tags["runtree.level"] for r in runs) == {"stage": 1, "subvariant": len(xs)}
    assert {r.info.status for r in runs} == {"FINISHED"}
    leaves = [r for r in runs if r.data.tags["runtree.level"] == "subvariant"]
    assert sorted(r.data.metrics["loss"] for r in leaves) == xs
