"""A program as a leaf: started in a process group of its own with the leaf's params as arguments, its MLflow calls
continuing the leaf's run, its output kept on the run as it comes, and its group stopped whatever ends it first (its
own exit, a timeout, a Ctrl-C, the pipeline's end).

The program is the user's script, unchanged: what it logs to MLflow is the leaf's, what it writes to `RUNTREE_RESULT`
or its `result_file` is added to that, and its exit code says whether it failed. A program is never trusted to end
its group's other processes itself: every group is registered where the pipeline can stop it (`ProgramGroups`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtree_pipeline.errors import Pruned
from runtree_pipeline.execution.reporting import PREEMPTED, leaf_env, note_logged
from runtree_pipeline.plan.params import flatten, hydra_quoted
from runtree_pipeline.plan.targets import CommandTarget

if TYPE_CHECKING:
    from runtree_pipeline.execution.leaf import LeafTask

KILL_GRACE_S = 5.0
"""Between SIGTERM and SIGKILL: time for a program to save what it can."""
LOG_UPLOAD_S = 15.0
"""How often a program's logs are uploaded while it runs, to a store whose artifacts are not on this machine."""
_TAIL_BYTES = 64 * 1024


class ProgramFailed(Exception):
    """Ends the leaf FAILED with this message as its error, as it is: `exit code 2: <the program's last words>`."""


def run_program(target: CommandTarget, params: Mapping[str, Any], task: LeafTask) -> dict[str, Any]:
    """Run the program to its end and return the leaf's result: what it logged to its run, plus its result file."""
    from runtree_pipeline.tracking.active import log_params, logged_metrics, program_env

    launch = Path(target.launch_dir)
    leaf_dir = Path(task.leaf_dir) if task.leaf_dir else launch / ".runtree" / "leaves" / task.run.run_id
    leaf_dir.mkdir(parents=True, exist_ok=True)
    cwd = leaf_dir if target.workdir == "leaf" else launch
    private = Path(tempfile.mkdtemp(prefix="runtree-program-"))
    try:
        result_path, pruned_path = private / "result.json", private / "pruned"
        tracking = program_env(task.run, target.launch_dir)
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")}
        env.update(tracking)
        run = replace(task.run, tracking_uri=tracking["MLFLOW_TRACKING_URI"])
        env.update(
            leaf_env(run, task.desk, str(pruned_path), keep_checkpoints=task.keep_checkpoints, control=task.groups)
        )
        env.setdefault("RUNTREE_ARTIFACT_CACHE", str(launch / ".runtree" / "artifacts"))  # wherever it runs
        env.update(
            RUNTREE_PARAMS=json.dumps(dict(params), default=str),
            RUNTREE_RESULT=str(result_path),
            RUNTREE_LAUNCH_DIR=str(launch),
            RUNTREE_LEAF_DIR=str(leaf_dir),
        )
        env.setdefault("PYTHONUNBUFFERED", "1")  # its logs as they come, not when a pipe's buffer fills
        log_params(task.run, flatten(dict(params)))  # before the program's own log_params of the same values
        argv = command_line(target, params, leaf_dir=leaf_dir)
        returncode, last_words = _run(argv, cwd=cwd, env=env, task=task, logs=leaf_dir / "logs")
        if pruned_path.exists():
            raise Pruned(int(pruned_path.read_text() or 0))
        if returncode < 0:
            name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
            raise ProgramFailed(f"killed by signal {name}" + (f": {last_words}" if last_words else ""))
        if returncode > 0:
            raise ProgramFailed(f"exit code {returncode}" + (f": {last_words}" if last_words else ""))
        result = _results(target, result_path, cwd)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    logged = logged_metrics(task.run)
    note_logged(logged)
    returned = {key: value for key, (_, value) in logged.items()}
    returned.update(result)
    missing = [metric for metric in task.objectives if not _number(returned.get(metric))]
    if missing:
        recorded = ", ".join(sorted(returned)) or "nothing"
        raise ProgramFailed(
            f"MissingObjective: the program logged no '{missing[0]}' and its result has none (it recorded: {recorded})"
        )
    return returned


def command_line(target: CommandTarget, params: Mapping[str, Any], *, leaf_dir: Path) -> list[str]:
    """The command with the params appended; `python` is the pipeline's own interpreter, and the command's relative
    paths stay the launch directory's when the program runs in a directory of its own."""
    argv = list(target.argv)
    if argv[0] in ("python", "python3") and sys.executable:
        argv[0] = sys.executable
    launch = Path(target.launch_dir)
    if target.workdir != "launch":
        for i, word in enumerate(argv):
            if (os.sep in word or i > 0) and not word.startswith("-") and (launch / word).exists():
                argv[i] = str(launch / word)
    argv += arguments(params, target.args)
    if target.args == "overrides" and not any(w.startswith(("hydra.run.dir=", "++hydra.run.dir=")) for w in argv):
        argv.append(f"hydra.run.dir={_override_value(str(leaf_dir))}")  # two Hydra apps never share a directory
    return argv


def arguments(params: Mapping[str, Any], mode: str) -> list[str]:
    """`overrides`: `key=value` in Hydra's override grammar, nested keys dotted; `flags`: `--key=value`; `none`."""
    if mode == "none":
        return []
    flat = flatten(dict(params))
    if mode == "flags":
        return [f"--{key}={_flag_value(value)}" for key, value in flat.items()]
    return [f"{key}={_override_value(value)}" for key, value in flat.items()]


_BARE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+./:@%")


def _override_value(value: Any) -> str:
    """A value Hydra's override parser reads back as the same value (a string that would read as a number, a bool
    or null is quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_override_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if text and set(text) <= _BARE and not _reads_as_other(text):
        return text
    return hydra_quoted(text)


def _reads_as_other(text: str) -> bool:
    if text.lower() in ("true", "false", "null", "inf", "-inf", "+inf", "nan") or text[0] in "-+.":
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def _flag_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _run(argv: list[str], *, cwd: Path, env: dict[str, str], task: LeafTask, logs: Path) -> tuple[int, str]:
    """The program's exit code and the last non-empty line of its stderr; its group is stopped on a timeout, and on
    anything that interrupts this call (a Ctrl-C on the local executor), before that goes on."""
    groups = ProgramGroups(task.groups) if task.groups else None
    with _Logs(task, logs) as output:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            if groups is not None:
                groups.add(process.pid)
            output.follow(process)
            try:
                process.wait(timeout=task.timeout_s)
            except subprocess.TimeoutExpired:
                stop_group(process.pid, process)
                raise ProgramFailed(
                    f"Timeout: the program ran longer than limits.timeout_s={task.timeout_s:g} s and was stopped"
                ) from None
        except BaseException:
            stop_group(process.pid, process)
            raise
        finally:
            _kill(process.pid, signal.SIGKILL)  # what it started and left behind goes with it
            if groups is not None:
                groups.remove(process.pid)
    return process.returncode, output.last_words


def stop_group(pgid: int, process: subprocess.Popen[bytes] | None = None, *, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM to the whole group, SIGKILL to whatever of it is left after `grace_s`."""
    if not _kill(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.05)
            if process.returncode is not None and not _alive(pgid):
                return
        elif not _alive(pgid):
            return
        else:
            time.sleep(0.05)
    _kill(pgid, signal.SIGKILL)
    if process is not None:
        process.wait()


def _kill(pgid: int, signum: int) -> bool:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _alive(pgid: int) -> bool:
    """Whether any process of the group is left that is not a zombie waiting for its parent."""
    if not _kill(pgid, 0):
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


class ProgramGroups:
    """The process groups of the programs a pipeline runs, one file each in a directory the pipeline owns: a worker
    adds its program's group there and removes it once the group is gone, and the pipeline stops whatever is still
    listed when it ends, even groups whose worker was killed before it could."""

    def __init__(self, path: str | None = None) -> None:
        self._path = path

    @property
    def path(self) -> str:
        """Named on first use and made only when something is written there: a pipeline that runs no program and
        gets no SIGTERM leaves nothing behind, even if it is killed."""
        if self._path is None:
            self._path = os.path.join(tempfile.gettempdir(), f"runtree-groups-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        return self._path

    def add(self, pgid: int) -> None:
        with contextlib.suppress(OSError):
            os.makedirs(self.path, exist_ok=True)
            Path(self.path, str(pgid)).write_text(str(os.getpid()))

    def remove(self, pgid: int) -> None:
        with contextlib.suppress(OSError):
            Path(self.path, str(pgid)).unlink()

    def listed(self) -> list[int]:
        if self._path is None:
            return []
        with contextlib.suppress(OSError):
            return [int(p.name) for p in Path(self._path).iterdir() if p.name.isdigit()]
        return []

    def preempt(self) -> None:
        """Tell every leaf the pipeline is stopping: a flag file `report` and `save_checkpoint` look for, and SIGTERM
        to every program's group, which is how a program hears it."""
        with contextlib.suppress(OSError):
            os.makedirs(self.path, exist_ok=True)
            Path(self.path, PREEMPTED).touch()
        for pgid in self.listed():
            _kill(pgid, signal.SIGTERM)

    def stop(self) -> None:
        """Stop every listed group (SIGTERM to all at once, then SIGKILL after the grace period) and forget them."""
        groups = [pgid for pgid in self.listed() if _kill(pgid, signal.SIGTERM)]
        deadline = time.monotonic() + KILL_GRACE_S
        while groups and time.monotonic() < deadline:
            time.sleep(0.05)
            groups = [pgid for pgid in groups if _alive(pgid)]
        for pgid in groups:
            _kill(pgid, signal.SIGKILL)

    def close(self) -> None:
        self.stop()
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)


class _Logs:
    """The program's stdout and stderr, whole, as `logs/stdout.txt` and `logs/stderr.txt` on its run while it runs:
    written straight into the run's artifact directory when that is on this machine, else kept beside the leaf and
    uploaded every `LOG_UPLOAD_S` and once at the end."""

    def __init__(self, task: LeafTask, local: Path) -> None:
        from runtree_pipeline.tracking.active import local_artifact_dir

        self._task = task
        artifacts = local_artifact_dir(task.run)
        self._upload = artifacts is None
        self.dir = local if artifacts is None else artifacts / "logs"
        self._threads: list[threading.Thread] = []
        self._tail = bytearray()
        self._done = threading.Event()

    def __enter__(self) -> _Logs:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._upload:
            uploader = threading.Thread(target=self._upload_every, name="runtree-logs", daemon=True)
            uploader.start()
            self._threads.append(uploader)
        return self

    def follow(self, process: subprocess.Popen[bytes]) -> None:
        for name, stream in (("stdout.txt", process.stdout), ("stderr.txt", process.stderr)):
            thread = threading.Thread(target=self._copy, args=(stream, self.dir / name), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _copy(self, stream: Any, path: Path) -> None:
        keep = path.name == "stderr.txt"
        with stream, open(path, "ab") as out:
            for chunk in iter(lambda: stream.read1(65536), b""):
                out.write(chunk)
                out.flush()
                if keep:
                    self._tail += chunk
                    del self._tail[:-_TAIL_BYTES]

    def _upload_every(self) -> None:
        while not self._done.wait(LOG_UPLOAD_S):
            self._upload_now()

    def _upload_now(self) -> None:
        from runtree_pipeline.tracking.active import upload_file

        for path in sorted(self.dir.glob("*.txt")):
            with contextlib.suppress(Exception):
                upload_file(self._task.run, path, "logs")

    @property
    def last_words(self) -> str:
        lines = [line.strip() for line in self._tail.decode("utf-8", "replace").splitlines()]
        return next((line for line in reversed(lines) if line), "")

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join(timeout=10)
        if self._upload:
            self._upload_now()


def _results(target: CommandTarget, result_path: Path, cwd: Path) -> dict[str, Any]:
    """`RUNTREE_RESULT` and `result_file` as one mapping; `artifacts` entries become paths, as a function's are."""
    result: dict[str, Any] = {}
    if result_path.exists():
        result.update(_mapping(result_path, "RUNTREE_RESULT"))
    if target.result_file is not None:
        path = cwd / target.result_file
        if not path.exists():
            raise ProgramFailed(f"MissingResult: the program exited 0 but wrote no result_file {target.result_file}")
        result.update(_mapping(path, f"result_file {target.result_file}"))
    artifacts = result.pop("artifacts", None)
    if artifacts is None:
        return result
    if not isinstance(artifacts, Mapping) or not all(isinstance(v, str) for v in artifacts.values()):
        raise ProgramFailed("BadResult: `artifacts` must map names to paths of files or directories")
    for name, where in artifacts.items():
        if name in result:
            raise ProgramFailed(f"BadResult: '{name}' is both a result and an artifact")
        result[str(name)] = cwd / where
    return result


def _mapping(path: Path, what: str) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text()
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ProgramFailed(f"BadResult: {what} cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise ProgramFailed(f"BadResult: {what} must hold a mapping of results, got {type(data).__name__}")
    return {str(k): v for k, v in data.items()}
