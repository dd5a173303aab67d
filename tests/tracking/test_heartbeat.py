"""Who holds an execution, read from its stage runs' tags alone: a driver on this host while its process lives (the
pid and its start time, so a reused pid does not count), one elsewhere while its heartbeat is fresh, none once it
said it ended."""

from __future__ import annotations

import socket
import subprocess

import pytest

from runtree_pipeline.tracking.heartbeat import DRIVER, ENDED, HEARTBEAT, Driver, _process_start, alive, holder
from runtree_pipeline.tracking.records import RunRecord

NOW = 1_800_000_000.0


def stage_run(driver: Driver, beat: str = "", status: str = "RUNNING") -> RunRecord:
    tags = {DRIVER: driver.tag(), **({HEARTBEAT: beat} if beat else {})}
    return RunRecord("r1", "0", "fit", status, tags=tags)


@pytest.fixture
def other_process():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_driver_on_this_host_holds_while_its_process_lives(other_process):
    driver = Driver(socket.gethostname(), other_process.pid, 0, _process_start(other_process.pid))
    assert holder([stage_run(driver)]) == driver
    other_process.kill()
    other_process.wait()
    assert holder([stage_run(driver)]) is None, "its pid no longer exists: taken over at once"


def test_a_reused_pid_is_not_the_driver(other_process):
    driver = Driver(socket.gethostname(), other_process.pid, 0, "1")  # another process once had this pid
    assert holder([stage_run(driver)]) is None


def test_a_driver_elsewhere_holds_while_its_heartbeat_is_fresh():
    driver = Driver("another-host", 4242, 0, "99")
    fresh, stale = str(int((NOW - 10) * 1000)), str(int((NOW - 61) * 1000))
    assert holder([stage_run(driver, fresh)], now=NOW) == driver
    assert holder([stage_run(driver, stale)], now=NOW) is None
    assert holder([stage_run(driver, stale)], now=NOW, stale_after_s=120) == driver
    assert holder([stage_run(driver)], now=NOW) is None, "no heartbeat at all: it never beat"


def test_a_driver_that_ended_holds_nothing(other_process):
    here = Driver(socket.gethostname(), other_process.pid, 0, _process_start(other_process.pid))
    assert holder([stage_run(here, ENDED)]) is None
    assert alive(stage_run(here, ENDED)) is False
    assert alive(RunRecord("r", "0", "fit", "RUNNING")) is None


def test_this_process_is_never_its_own_rival():
    from runtree_pipeline.tracking.heartbeat import this_driver

    assert holder([stage_run(this_driver())]) is None
