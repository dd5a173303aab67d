"""The Slurm executor: every leaf a Slurm job, submitted with submitit; the driver stays where it was started and
does all the tracking, as with Ray.

Leaves submitted within a few milliseconds of each other (the scheduler fills every free slot in one pass) go to
Slurm as one job array. One thread asks Slurm about every job in flight at once (`squeue`, and `sacct` for a job
the controller has forgotten), so a stage of a thousand leaves costs `slurmctld` one query per poll, not one per
job; a job's result is read only once it has
ended. submitit's own `result()` waits up to 30 s for the result file of a job that was cancelled or killed, which
this never calls for such a job.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtree_pipeline.errors import ConfigError, ConfigErrors
from runtree_pipeline.execution.executors.base import STOPPED, Executor, _timeout
from runtree_pipeline.execution.leaf import LeafOutcome, LeafTask, execute
from runtree_pipeline.futures import settle
from runtree_pipeline.plan.stages import Plan
from runtree_pipeline.tracking.sqlite import sqlite_path

log = logging.getLogger(__name__)

DONE = frozenset({"COMPLETED"})
ENDED = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
    }
)
"""Job states after which a job runs no more; only COMPLETED has a result to read."""
BATCH_S = 0.02
POLL_S = 0.25


@dataclass(eq=False)
class _Job:
    task: LeafTask
    future: Future[LeafOutcome]
    job: Any = None
    timed_out: bool = False
    timer: threading.Timer | None = None


class SlurmExecutor(Executor):
    """Leaves as Slurm jobs. `max_jobs` caps the jobs in flight (the executor's `workers`); `setup` are shell lines
    each job runs first (`module load ...`, `source venv/bin/activate`); `additional` any other sbatch option."""

    def __init__(
        self,
        partition: str | None = None,
        max_jobs: int = 16,
        timeout_min: int = 60,
        cpus_per_task: int = 1,
        mem_gb: float | None = None,
        gpus_per_task: int = 0,
        setup: Sequence[str] = (),
        additional: Mapping[str, Any] | None = None,
        folder: str | None = None,
        shared_store: bool = False,
        startup_s: float = 10.0,
    ) -> None:
        self.partition = partition
        self.workers = max_jobs
        self.timeout_min = timeout_min
        self.cpus_per_task = cpus_per_task
        self.mem_gb = mem_gb
        self.gpus_per_task = gpus_per_task
        self.setup = list(setup)
        self.additional = dict(additional or {})
        self.folder = folder
        self.shared_store = shared_store
        self.startup_s = startup_s
        """Added to a leaf's timeout, counted from its job's start: the job's interpreter starts and imports runtree
        and MLflow before the target is called (about 2 s here, longer on a busy node or a slow shared filesystem)."""
        self._thread: threading.Thread | None = None

    # ---- before anything runs ----------------------------------------------------------------------------------

    def check(self, *, tracking_uri: str, plan: Plan | None = None) -> list[ConfigError]:
        problems = super().check(tracking_uri=tracking_uri, plan=plan)
        if importlib.util.find_spec("submitit") is None:
            problems.append(
                ConfigError("the slurm executor needs submitit: pip install 'runtree-pipeline[slurm]'", key="executor")
            )
        if shutil.which("sbatch") is None or shutil.which("sacct") is None:
            problems.append(
                ConfigError("no sbatch or sacct on PATH: this machine is not a Slurm login node", key="executor")
            )
        path = sqlite_path(tracking_uri)
        if path is not None and not self.shared_store and not problems and not self._one_node():
            problems.append(
                ConfigError(
                    f"jobs on other nodes cannot write to the sqlite file {path}: use a tracking server "
                    "(tracking_uri=http://HOST:PORT), or executor.shared_store=true if every node mounts that file's "
                    "filesystem",
                    key="executor.shared_store",
                )
            )
        return problems

    def _one_node(self) -> bool:
        """Whether every node of the partition is this machine, so its jobs see its files."""
        command = ["sinfo", "-h", "-N", "-o", "%N"] + (["-p", self.partition] if self.partition else [])
        try:
            nodes = set(subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.split())
        except (OSError, subprocess.SubprocessError):
            return False
        return nodes == {socket.gethostname().split(".")[0]}

    def _start(self, *, tracking_uri: str) -> None:
        problems = self.check(tracking_uri=tracking_uri)
        if problems:
            raise ConfigErrors(problems)
        import submitit

        folder = Path(self.folder or Path.cwd() / ".runtree" / "slurm").resolve()
        self._executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
        additional = dict(self.additional)
        gpus = {}
        if self.gpus_per_task:
            gpus = {"slurm_gpus_per_task": self.gpus_per_task}
            additional.setdefault("ntasks", 1)  # sbatch refuses --gpus-per-task without a task count
        self._executor.update_parameters(
            timeout_min=self.timeout_min,
            cpus_per_task=self.cpus_per_task,
            slurm_job_name="runtree",
            **({"slurm_partition": self.partition} if self.partition else {}),
            **({"mem_gb": self.mem_gb} if self.mem_gb is not None else {}),
            **gpus,
            **({"slurm_setup": self.setup} if self.setup else {}),
            **({"slurm_additional_parameters": additional} if additional else {}),
        )
        if not self._one_node():
            self.report_host = socket.gethostbyname(socket.gethostname())
        # Made here, not in __init__: an unstarted executor pickles (a driver in another process gets a copy).
        self._jobs: dict[str, _Job] = {}
        self._queued: list[_Job] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="runtree-slurm", daemon=True)
        self._thread.start()

    # ---- leaves ------------------------------------------------------------------------------------------------

    def _submit(self, task: LeafTask) -> Future[LeafOutcome]:
        job = _Job(task, Future())
        job.future.set_running_or_notify_cancel()
        with self._lock:
            self._queued.append(job)
        self._wake.set()
        return job.future

    def _send(self, batch: list[_Job]) -> None:
        """One sbatch for all of them: a job array when there are several."""
        try:
            if len(batch) == 1:
                submitted = [self._executor.submit(execute, batch[0].task)]
            else:
                with self._executor.batch():
                    submitted = [self._executor.submit(execute, job.task) for job in batch]
        except Exception as e:  # noqa: BLE001 - sbatch refusing is a failed leaf, not a dead pipeline
            for job in batch:
                settle(job.future, LeafOutcome(error=f"SlurmError: sbatch failed: {str(e).strip()[:300]}"))
            return
        with self._lock:
            if self._stop.is_set():  # closed while sbatch ran: these jobs are nobody's now
                _scancel([handle.job_id for handle in submitted])
                for job in batch:
                    settle(job.future, LeafOutcome(error=STOPPED))
                return
            for job, handle in zip(batch, submitted, strict=True):
                job.job = handle
                self._jobs[handle.job_id] = job

    def _time_out(self, job: _Job) -> None:
        if not job.future.done():
            job.timed_out = True
            _scancel([job.job.job_id])

    def _watch(self) -> None:
        """Sends what was submitted, and polls the jobs in flight, until the executor closes."""
        last_poll = 0.0
        failing = False
        while not self._stop.is_set():
            self._wake.wait(POLL_S)
            if self._wake.is_set():
                time.sleep(BATCH_S)  # the rest of the scheduler's pass
                self._wake.clear()
            with self._lock:
                batch, self._queued = self._queued, []
            if batch:
                self._send(batch)
            if time.monotonic() - last_poll >= POLL_S or not batch:
                last_poll = time.monotonic()
                try:
                    self._poll()
                except Exception as e:  # noqa: BLE001 - a controller hiccup: ask again at the next poll
                    if not failing:
                        log.warning("could not ask Slurm about the jobs in flight (asking again): %s", e)
                    failing = True
                else:
                    failing = False

    def _poll(self) -> None:
        with self._lock:
            ids = list(self._jobs)
        if not ids:
            return
        states = _states(ids)
        for job_id, state in states.items():
            if state == "RUNNING":
                self._running(job_id)
            if state not in ENDED:
                continue
            with self._lock:
                job = self._jobs.pop(job_id, None)
            if job is not None:
                self._ended(job, state)

    def _running(self, job_id: str) -> None:
        """A leaf's timeout counts from its job's start (plus `startup_s`), not from its submission: waiting in the
        queue is not running long."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.timer is not None or job.task.worker_timeout_s is None:
                return
            job.timer = threading.Timer(job.task.worker_timeout_s + self.startup_s, self._time_out, args=(job,))
            job.timer.daemon = True
            job.timer.start()

    def _ended(self, job: _Job, state: str) -> None:
        if job.timer is not None:
            job.timer.cancel()
        if job.timed_out:
            outcome = LeafOutcome(error=_timeout(job.task))
        elif state in DONE:
            outcome = _result(job)
        else:
            outcome = LeafOutcome(error=f"SlurmJobEnded: job {job.job.job_id} ended {state}{_last_words(job)}")
        settle(job.future, outcome)

    def _shutdown(self) -> None:
        """Every job of this pipeline is cancelled: none stays in the queue after the driver ends."""
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
            queued, self._queued = self._queued, []
        _scancel([job.job.job_id for job in jobs])
        for job in jobs:
            if job.timer is not None:
                job.timer.cancel()
        for job in jobs + queued:
            settle(job.future, LeafOutcome(error=STOPPED))
        _wait_gone([job.job.job_id for job in jobs])


def _states(ids: Sequence[str]) -> dict[str, str]:
    """Every job's state in one call: `squeue -t all` asks slurmctld, which knows a job's end at once and keeps it
    for minutes (`MinJobAge`); `sacct` (slurmdbd) answers seconds later, so it is asked only about jobs the
    controller has forgotten. A job neither knows yet (just submitted) is left out."""
    states = _listed(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(ids)])
    missing = [job_id for job_id in ids if job_id not in states]
    if missing:
        states.update(_listed(["sacct", "-n", "-P", "-X", "--array", "-o", "JobID,State", "-j", ",".join(missing)]))
    return states


def _listed(command: list[str]) -> dict[str, str]:
    """`ID|STATE` lines, one per array task (`-r`, `--array`); a folded line (`12_[0-3]`) is skipped."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    states = {}
    for line in done.stdout.splitlines():
        job_id, _, state = line.partition("|")
        if "[" not in job_id and state:
            states[job_id.strip()] = state.split()[0]
    return states


def _result(job: _Job) -> LeafOutcome:
    """The outcome the job pickled; none (a job killed between finishing and writing) is a failed leaf, found
    without submitit's wait for the file, which would hold up every other job's poll."""
    if not Path(job.job.paths.result_pickle).exists():
        return LeafOutcome(error=f"SlurmJobFailed: job {job.job.job_id} completed without writing its result")
    try:
        outcome = job.job.result()
    except Exception as e:  # noqa: BLE001 - whatever submitit raises, the leaf failed
        return LeafOutcome(error=f"SlurmJobFailed: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else e!r}")
    return outcome if isinstance(outcome, LeafOutcome) else LeafOutcome(error=f"SlurmJobFailed: got {outcome!r}")


def _last_words(job: _Job) -> str:
    with contextlib.suppress(Exception):
        lines = Path(job.job.paths.stderr).read_text(errors="replace").strip().splitlines()
        if lines:
            return f": {lines[-1][:200]}"
    return ""


def _scancel(ids: Sequence[str]) -> None:
    if ids:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["scancel", *ids], capture_output=True, timeout=60, check=False)


def _wait_gone(ids: Sequence[str], timeout_s: float = 15.0) -> None:
    """Until squeue lists none of them (cancelled jobs linger while Slurm stops their processes)."""
    deadline = time.monotonic() + timeout_s
    while ids and time.monotonic() < deadline:
        try:
            listed = subprocess.run(
                ["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True, text=True, timeout=30
            ).stdout.split()
        except (OSError, subprocess.SubprocessError):
            return
        if not listed:
            return
        time.sleep(0.25)
