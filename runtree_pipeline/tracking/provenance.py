"""How to reproduce a pipeline: the command line that started it, the code it ran (git commit, dirty flag, the
uncommitted diff) and the installed distributions."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence

COMMAND = "runtree.command"
CWD = "runtree.cwd"
GIT_COMMIT = "mlflow.source.git.commit"
GIT_DIRTY = "runtree.git_dirty"
REQUIREMENTS_ARTIFACT = "environment/requirements.txt"
DIFF_ARTIFACT = "environment/git.diff"
_NOT_REPRODUCING = ("resume", "dry_run", "progress")
_AS_PATCH = ("--no-color", "--no-ext-diff", "--no-textconv", "--src-prefix=a/", "--dst-prefix=b/")
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


def environment_files(dirty: bool) -> dict[str, str]:
    """Artifacts for every stage run: what was installed, and when the work tree was dirty what the commit does not
    hold (staged and unstaged changes to tracked files; untracked files count for neither, as for the dirty flag)."""
    files = {REQUIREMENTS_ARTIFACT: requirements()}
    diff = _git_diff() if dirty else None
    if diff:
        files[DIFF_ARTIFACT] = diff
    return files


_requirements: tuple[tuple[tuple[str, int | None], ...], str] | None = None


def requirements() -> str:
    """`name==version` per installed distribution, as `pip freeze` would find them on this interpreter's path
    (the first of a name wins), sorted by normalised name; one installed from a local path (editable or not),
    a VCS or an archive says where in a comment, since its version alone cannot fetch it.

    Read again only when an entry of the path changed (an install or uninstall adds or removes a directory in it):
    the pipelines of a multirun, a notebook or a test session share one reading."""
    global _requirements
    state = tuple((entry, _mtime(entry)) for entry in map(os.path.abspath, sys.path))
    if _requirements is None or _requirements[0] != state:
        _requirements = (state, _read_requirements())
    return _requirements[1]


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _read_requirements() -> str:
    from importlib.metadata import distributions

    found: dict[str, tuple[str, str]] = {}
    for dist in distributions():
        raw, version = _name_and_version(dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "")
        if not raw:
            continue
        name = re.sub(r"[-_.]+", "-", raw).lower()
        first, origin = found.get(name, (version, ""))
        if not origin and first == version:  # a stale `*.egg-info` in the launch directory shadows the install
            found[name] = (version, _origin(dist.read_text("direct_url.json")))
    return "".join(f"{name}=={found[name][0]}{found[name][1]}\n" for name in sorted(found))


def _name_and_version(metadata: str) -> tuple[str, str]:
    """From the headers alone: `Distribution.metadata` parses the whole file as e-mail, about 1 ms per distribution."""
    headers: dict[str, str] = {}
    for line in metadata.splitlines():
        if not line:
            break
        key, _, value = line.partition(":")
        if key in ("Name", "Version"):
            headers.setdefault(key, value.strip())
    return headers.get("Name", ""), headers.get("Version", "")


def _origin(direct_url: str | None) -> str:
    """PEP 610's record of a direct-URL install, as an inline comment (pip reads past it)."""
    if not direct_url:
        return ""
    try:
        info = json.loads(direct_url)
        url = info["url"]
    except (ValueError, KeyError, TypeError):
        return ""
    vcs = info.get("vcs_info")
    if isinstance(vcs, dict) and vcs.get("vcs"):
        return f"  # {vcs['vcs']}+{url}@{vcs.get('commit_id', '')}"
    editable = isinstance(info.get("dir_info"), dict) and info["dir_info"].get("editable")
    return f"  # {'editable' if editable else 'direct'}: {url}"


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


def _git_diff() -> str | None:
    """Against HEAD, so staged changes count too; a patch `git apply` takes whatever the user's git config says
    about colour, prefixes, external diff tools and text conversions (binary files only named, not included)."""
    try:
        out = subprocess.run(
            ["git", "diff", *_AS_PATCH, "HEAD"],
            capture_output=True,
            timeout=10,
            cwd=os.getcwd(),
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode("utf-8", errors="replace") if out.returncode == 0 else None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, cwd=os.getcwd(), stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
