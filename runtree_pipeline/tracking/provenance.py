"""How to reproduce a pipeline: the command line that started it and the code it ran (git commit, dirty flag)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence

COMMAND = "runtree.command"
CWD = "runtree.cwd"
GIT_COMMIT = "mlflow.source.git.commit"
GIT_DIRTY = "runtree.git_dirty"
_NOT_REPRODUCING = ("resume", "dry_run", "progress")
_MULTIRUN_ONLY = (
    "hydra.mode=",
    "hydra/launcher=",
    "hydra.launcher.",
    "hydra/sweeper=",
    "hydra.sweeper.",
    "hydra.sweep.",
)
SCRIPT = "runtree-pipeline"


def invocation_tags(command: str | None) -> dict[str, str]:
    """Tags for every stage run: the command, the directory it was started in (its relative paths, a target
    module next to it and `--config-dir ./conf` only work from there), and the commit when that is a git repo."""
    tags = {COMMAND: command} if command else {}
    tags[CWD] = launch_dir()
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags[GIT_COMMIT] = commit
        tags[GIT_DIRTY] = "true" if _git("status", "--porcelain", "--untracked-files=no") else "false"
    return tags


def launch_dir() -> str:
    """Where the command was typed, also when `hydra.job.chdir=true` moved the job into its output directory."""
    here = os.getcwd()
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            runtime = HydraConfig.get().runtime
            if os.path.realpath(here) == os.path.realpath(runtime.output_dir):
                return str(runtime.cwd)
    except Exception:  # noqa: BLE001 - outside a Hydra job the process's own directory is the answer
        pass
    return here


def cli_command(
    argv: Sequence[str],
    task_overrides: Sequence[str],
    hydra_overrides: Sequence[str] = (),
    *,
    resume: str | None = None,
) -> str:
    """The command line of one job, typed the way it was started (`python -m runtree_pipeline` or the
    `runtree-pipeline` script), with the config search flags and the job's own overrides (not the multirun sweep;
    Hydra's own too, such as `hydra.job.chdir=true`, but not those that only shape a multirun).

    Without `resume`: the command that reproduces the job, without what would not (`resume=`, `dry_run=`,
    `progress=`). With it: the command that finishes that execution, every override kept and `resume=` set to it.
    """
    flags: list[str] = []
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if arg in ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn") and i + 1 < len(args):
            flags += [arg, args[i + 1]]
        elif arg.startswith(("--config-dir=", "--config-path=", "--config-name=")):
            flags.append(arg)
    dropped = ("resume",) if resume is not None else _NOT_REPRODUCING
    keep = [o for o in task_overrides if o.split("=", 1)[0].lstrip("+~") not in dropped]
    keep += [o for o in hydra_overrides if not o.lstrip("+~").startswith(_MULTIRUN_ONLY)]
    if resume is not None:
        keep.append(f"resume={resume}")
    return shlex.join([*_program(argv[0] if argv else ""), *flags, *keep])


def _program(argv0: str) -> list[str]:
    """How the user started us: the console script by the name it has on PATH (by its path when that name finds
    another program), anything else as `python -m runtree_pipeline`."""
    name = os.path.basename(argv0)
    if os.path.splitext(name)[0] != SCRIPT:
        return ["python", "-m", "runtree_pipeline"]
    found = shutil.which(SCRIPT)
    return [SCRIPT] if found and os.path.realpath(found) == os.path.realpath(argv0) else [argv0]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, cwd=os.getcwd(), stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
