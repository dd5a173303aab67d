"""A real single-node Slurm cluster for the tests that need one, brought up by `scripts/slurm-cluster.sh`.

Use the `slurm_cluster` session fixture (import it into the test module or conftest). Where the cluster cannot be had
(not root, no apt) the tests skip with a reason naming the script; under CI (`CI` set) that is a failure instead, so
CI cannot pass without having run them. A cluster someone else started is used and left running. One the tests
started is stopped when the last test process using it ends: xdist workers share it through a lock file, so one
worker's session end does not stop it under another's running jobs.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "slurm-cluster.sh"
STATE = Path(os.environ.get("RUNTREE_SLURM_DIR", "/var/lib/runtree-slurm"))
_STARTED_BY_TESTS = STATE / "started-by-tests"
_LEASE = Path(tempfile.gettempdir()) / "runtree-slurm-tests.lease"
_lease_fd: int | None = None


@dataclass(frozen=True)
class SlurmCluster:
    partition: str
    node: str
    gpus: int
    state_dir: Path


def _script(command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), command], capture_output=True, text=True, timeout=timeout, check=False)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"Slurm cluster required under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _take_lease() -> None:
    """Shared while in use; `release` stops the cluster only if it can then take it exclusively."""
    global _lease_fd
    if _lease_fd is None:
        try:
            _lease_fd = os.open(_LEASE, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # another user's lease file: a read-only descriptor locks it too
            _lease_fd = os.open(_LEASE, os.O_RDONLY)
        fcntl.flock(_lease_fd, fcntl.LOCK_SH)


def cluster_or_skip() -> SlurmCluster:
    """The running cluster, started first if this is a root machine with apt; otherwise skip (fail under CI)."""
    _take_lease()
    if _script("status", 30).returncode != 0:
        if os.geteuid() != 0 or not (shutil.which("apt-get") or shutil.which("slurmctld")):
            _unavailable("no Slurm cluster, and `scripts/slurm-cluster.sh up` needs root and apt")
        up = _script("up", 900)
        if up.returncode == 77:
            _unavailable(f"scripts/slurm-cluster.sh up: {up.stdout.strip().splitlines()[-1]}")
        if up.returncode != 0:
            pytest.fail(f"scripts/slurm-cluster.sh up failed (exit {up.returncode}):\n{up.stdout}{up.stderr}")
        if "ready in" in up.stdout:
            _STARTED_BY_TESTS.touch()
    sinfo = subprocess.run(["sinfo", "-h", "-o", "%P %N"], capture_output=True, text=True, check=True).stdout
    lines = sinfo.split("\n")
    partition, node = next((line for line in lines if "*" in line), lines[0]).split()
    return SlurmCluster(partition=partition.rstrip("*"), node=node, gpus=2, state_dir=STATE)


def release() -> None:
    """Stop the cluster if the tests started it and no other test process still holds the lease."""
    global _lease_fd
    if _lease_fd is None:
        return
    fd, _lease_fd = _lease_fd, None
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        if _STARTED_BY_TESTS.exists():
            _script("down", 120)
            _STARTED_BY_TESTS.unlink(missing_ok=True)
    finally:
        os.close(fd)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    try:
        cluster = cluster_or_skip()
    except BaseException:
        release()
        raise
    yield cluster
    release()
