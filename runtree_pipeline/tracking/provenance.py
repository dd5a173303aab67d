"""How to reproduce a pipeline: the command line that started it and the code it ran (git commit, dirty flag)."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence

COMMAND = "runtree.command"
CWD = "runtree.cwd"
GIT_COMMIT = "mlflow.source.git.commit"
GIT_DIRTY = "runtree.git_dirty"
_NOT_REPRODUCING = ("resume", "dry_run", "progress")


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


def cli_command(argv: Sequence[str], task_overrides: Sequence[str]) -> str:
    """`python -m runtree_pipeline ...` for one job: its own overrides (not the multirun sweep) plus the config
    search flags, without the ones that would not reproduce it (`resume=`, `dry_run=`)."""
    flags: list[str] = []
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if arg in ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn") and i + 1 < len(args):
            flags += [arg, args[i + 1]]
        elif arg.startswith(("--config-dir=", "--config-path=", "--config-name=")):
            flags.append(arg)
    keep = [o for o in task_overrides if o.split("=", 1)[0].lstrip("+~") not in _NOT_REPRODUCING]
    return shlex.join(["python", "-m", "runtree_pipeline", *flags, *keep])


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, cwd=os.getcwd(), stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
