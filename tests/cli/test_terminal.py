"""What a person sees in a terminal: the real CLI in a pseudo-terminal of a given size, its bars live, and the screen
rebuilt from everything it wrote by a terminal emulator (pyte), as it stands when the command has ended.

The summary (stdout) and the bars and error lines (stderr) share that screen; nothing a bar drew may be left on it,
whether the pipeline succeeds, fails, cannot record a result, or is stopped with Ctrl-C while the bars show.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pyte
import pytest
import yaml

from tests.conftest import cli_env

ROWS = 100  # tall enough that nothing the command prints scrolls off the screen read back
BAR = re.compile(r"[█▏▎▍▌▋▊▉]|\d+%\||\d+/\d+ \[|it/s|leaf/s|s/leaf")  # tqdm's blocks, `40%|`, `1/1 [`, rates
# Make the pseudo-terminal the command's controlling terminal, so that ^C typed into it interrupts the command.
CONTROLLING = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)
# A write the store refuses for good: its metrics table is gone (retried for RUNTREE_RETRY_SECONDS, then exit 4).
BREAKER = """
import sqlite3


def fit(*, x: float, db: str) -> dict:
    if x == 2:
        with sqlite3.connect(db) as connection:
            connection.execute("DROP TABLE metrics")
    return {"loss": (x - 1) ** 2}
"""


def _sweep(tmp_path: Path, stages: dict) -> str:
    sweep = tmp_path / "conf" / "sweep" / "screen.yaml"
    sweep.parent.mkdir(parents=True, exist_ok=True)
    sweep.write_text("# @package _global_\n" + yaml.safe_dump({"objective": {"metric": "loss"}, "stages": stages}))
    return str(sweep.parent.parent)


def _two_stages(tmp_path: Path, *, sleep: float = 0.2, leaves: int = 4) -> dict:
    calls = str(tmp_path / "calls.txt")
    return {
        "prep": {"_target_": "tests.targets.counted", "params": {"x": -1, "log_file": calls}},
        "fit": {
            "depends_on": ["prep"],
            "_target_": "tests.targets.counted",
            "params": {"log_file": calls, "sleep": sleep},
            "variants": {"points": {"a": {"y": 0.0}, "b": {"y": 1.0}}},
            "subvariants": {"params": {"x": f"range(0, {leaves})"}},
        },
    }


def _in_terminal(
    tmp_path: Path, columns: int, *args: str, ctrl_c_after: bytes | None = None, **env: str
) -> tuple[int, list[str]]:
    """Run the CLI in a pseudo-terminal `columns` wide; its exit code and the screen's non-blank lines at the end.
    With `ctrl_c_after`, ^C is typed half a second after the command first writes that."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, columns, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-c", CONTROLLING, "-m", "runtree_pipeline", *args, "plots=false"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=tmp_path,
        env=cli_env(COLUMNS=str(columns), LINES=str(ROWS), TERM="xterm", **env),
        start_new_session=True,
    )
    os.close(slave)
    output = bytearray()
    typed = ctrl_c_after is None
    deadline = time.monotonic() + 240
    try:
        while True:
            assert time.monotonic() < deadline, bytes(output[-2000:]).decode(errors="replace")
            if select.select([master], [], [], 0.1)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the command and everything it started have closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            if not typed and ctrl_c_after in output:
                time.sleep(0.5)
                os.write(master, b"\x03")
                typed = True
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    code = proc.wait(timeout=60)
    screen = pyte.Screen(columns, ROWS)
    pyte.ByteStream(screen).feed(bytes(output))
    return code, [line.rstrip() for line in screen.display if line.strip()]


def _no_bar_left(screen: list[str]) -> None:
    left = [line for line in screen if BAR.search(line)]
    assert not left, "a bar was left on the screen:\n" + "\n".join(screen)


def _summary(screen: list[str]) -> list[str]:
    start = next(i for i, line in enumerate(screen) if line.startswith("runtree pipeline "))
    look = next(i for i in range(start, len(screen)) if screen[i].startswith("look: "))
    end = next((i for i in range(look + 1, len(screen)) if not screen[i].startswith("  ")), len(screen))
    return screen[start:end]


@pytest.mark.parametrize("columns", [80, 200])
def test_the_summary_is_clean_and_80_columns_at_most_after_the_bars(tmp_path, store, columns):
    conf = _sweep(tmp_path, _two_stages(tmp_path))
    code, screen = _in_terminal(tmp_path, columns, "--config-dir", conf, "+sweep=screen", f"tracking_uri={store}")
    assert code == 0, "\n".join(screen)
    _no_bar_left(screen)
    summary = _summary(screen)
    look = next(i for i, line in enumerate(summary) if line.startswith("look: "))
    assert max(len(line) for line in summary[:look]) <= 80, "\n".join(summary)
    assert "]" not in "".join(summary), "\n".join(summary)
    # The one line allowed past 80 columns: the command to copy, whole (the terminal may still wrap it at its edge).
    command = f"    mlflow ui --backend-store-uri {store}"
    assert command in ("".join(screen) if columns < len(command) else screen), "\n".join(screen)
    assert summary[0].endswith("— experiment 'screen' (ok)")
    assert summary[1:3] == ["  prep  FINISHED   1 run", "    leaves: executed=1 reused=0 redone=0 failed=0"]
    fit = summary.index("  fit   FINISHED  11 runs")
    assert summary[fit + 1] == "    leaves: executed=8 reused=0 redone=0 failed=0"
    assert re.fullmatch(r"    best loss=0 \(min\)  run [0-9a-f]{32}", summary[fit + 2])
    assert summary[fit + 3].startswith("    params: log_file=")
    stages = [line for line in screen if line.startswith("stage ")]
    assert [re.sub(r"\d\d:\d\d", "MM:SS", line) for line in stages] == [
        "stage prep: FINISHED — 1/1 leaves, best loss=4, MM:SS elapsed",
        "stage fit: FINISHED — 8/8 leaves, best loss=0, MM:SS elapsed",
    ]


def test_a_failed_stage_and_its_error_line_are_clean(tmp_path, store):
    stages = {
        "fit": {
            "_target_": "tests.targets.flaky",
            "params": {"fail_on": [0, 1, 2]},
            "subvariants": {"params": {"x": "range(0, 3)"}},
        },
        "after": {"depends_on": ["fit"], "_target_": "tests.targets.quad", "params": {"x": "${best:fit.params.x}"}},
    }
    conf = _sweep(tmp_path, stages)
    code, screen = _in_terminal(tmp_path, 80, "--config-dir", conf, "+sweep=screen", f"tracking_uri={store}")
    assert code == 1, "\n".join(screen)
    _no_bar_left(screen)
    logged = r"\[[-\d :,]+\]\[runtree_pipeline\.execution\.scheduler\]\[WARNING\] - "
    assert len([line for line in screen if re.match(logged, line)]) >= 3, "each failed leaf's line on a line of its own"
    summary = _summary(screen)
    assert summary[1:3] == ["  fit    FAILED    4 runs", "    leaves: executed=3 reused=0 redone=0 failed=3"]
    assert max(len(line) for line in summary) <= 80
    error = [line for line in screen if line.startswith("runtree: error: ")]
    assert error[0].startswith("runtree: error: pipeline did not complete: fit: no successful leaf")
    assert screen.index(error[0]) > screen.index(summary[-1])


def test_a_result_that_cannot_be_recorded_ends_on_a_clean_error_line(tmp_path, store):
    (tmp_path / "breaker.py").write_text(BREAKER)
    db = store.removeprefix("sqlite:///")
    stages = {"fit": {"_target_": "breaker.fit", "params": {"db": db}, "subvariants": {"params": {"x": "range(0, 4)"}}}}
    conf = _sweep(tmp_path, stages)
    args = ("--config-dir", conf, "+sweep=screen", f"tracking_uri={store}")
    code, screen = _in_terminal(tmp_path, 200, *args, RUNTREE_RETRY_SECONDS="1")
    assert code == 4, "\n".join(screen)
    _no_bar_left(screen)
    assert [line for line in screen if line.startswith("runtree: error: could not ")], "\n".join(screen)


def test_ctrl_c_while_the_bars_show_leaves_only_the_error_line(tmp_path, store):
    conf = _sweep(tmp_path, _two_stages(tmp_path, sleep=2.0, leaves=10))
    args = ("--config-dir", conf, "+sweep=screen", f"tracking_uri={store}")
    code, screen = _in_terminal(tmp_path, 80, *args, ctrl_c_after=b"fit: ")
    assert code == 130, "\n".join(screen)
    _no_bar_left(screen)
    error = next(i for i, line in enumerate(screen) if line.startswith("runtree: error: interrupted"))
    assert any(line.startswith("stage prep: FINISHED — 1/1 leaves") for line in screen[:error]), "\n".join(screen)
