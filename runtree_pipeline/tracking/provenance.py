"""How to reproduce a pipeline: the command line that started it, the code it ran (git commit, dirty flag, the
uncommitted diff) and the installed distributions."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

COMMAND = "runtree.command"
CWD = "runtree.cwd"
GIT_COMMIT = "mlflow.source.git.commit"
GIT_DIRTY = "runtree.git_dirty"
ENVIRONMENT = "runtree.environment"
REQUIREMENTS_ARTIFACT = "environment/requirements.txt"
DIFF_ARTIFACT = "environment/git.diff"
DIFF_TOO_LARGE_ARTIFACT = "environment/git.diff.too-large.txt"
DIFF_LIMIT = 1_000_000
_NOT_REPRODUCING = ("resume", "dry_run", "progress")
_DIFF = (
    "-c",
    "diff.relative=false",  # what `--no-relative` says, also to a git older than 2.28
    "diff",
    "--no-color",
    "--no-ext-diff",
    "--no-textconv",
    "--src-prefix=a/",
    "--dst-prefix=b/",
    "--submodule=short",
    "HEAD",
)
_MULTIRUN_ONLY = (
    "hydra.mode=",
    "hydra/launcher=",
    "hydra.launcher.",
    "hydra/sweeper=",
    "hydra.sweeper.",
    "hydra.sweep.",
)
SCRIPT = "runtree-pipeline"
log = logging.getLogger(__name__)


def invocation_tags(command: str | None) -> dict[str, str]:
    """Tags for every stage run: the command, the directory it was started in (its relative paths, a target
    module next to it and `--config-dir ./conf` only work from there), and the commit when that is a git repo."""
    tags = {COMMAND: command} if command else {}
    tags[CWD] = here = launch_dir()
    commit = _git("rev-parse", "HEAD", cwd=here)
    if commit:
        tags[GIT_COMMIT] = commit.decode().strip()
        tags[GIT_DIRTY] = "true" if _git("status", "--porcelain", "--untracked-files=no", cwd=here) else "false"
    return tags


def environment_files(dirty: bool) -> dict[str, str | bytes]:
    """Artifacts for every stage run: what was installed, and when the work tree was dirty what the commit does not
    hold (staged and unstaged changes to tracked files; untracked files count for neither, as for the dirty flag).

    Provenance never fails a run: whatever goes wrong collecting them is one warning, and nothing is recorded."""
    try:
        files: dict[str, str | bytes] = {REQUIREMENTS_ARTIFACT: requirements()}
        diff = _git(*_DIFF, cwd=launch_dir()) if dirty else None
        if diff and len(diff) > DIFF_LIMIT:
            files[DIFF_TOO_LARGE_ARTIFACT] = (
                f"`git diff HEAD` was {len(diff)} bytes, over the {DIFF_LIMIT}-byte limit: not stored.\n"
                f"sha256 {hashlib.sha256(diff).hexdigest()}, to compare with `git {' '.join(_DIFF)} | sha256sum`.\n"
            )
        elif diff:
            files[DIFF_ARTIFACT] = diff  # bytes as git wrote them: a file that is not UTF-8 still applies
    except Exception as e:  # noqa: BLE001 - see above
        log.warning("the environment (installed distributions, git diff) is not recorded: %s: %s", type(e).__name__, e)
        return {}
    return files


def environment_digest(files: Mapping[str, str | bytes]) -> str:
    """The `runtree.environment` tag: equal digests, equal files, so a resume compares without downloading."""
    digest = hashlib.sha256()
    for name in sorted(files):
        content = files[name]
        for part in (name.encode(), content if isinstance(content, bytes) else content.encode()):
            digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()[:16]


def resumed_files(files: Mapping[str, str | bytes], at: float) -> dict[str, str | bytes]:
    """The same files under `environment/resumed-<UTC time>/`, beside those of the execution that created the run."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"
    folder = f"environment/resumed-{stamp}/"
    return {name.replace("environment/", folder, 1): content for name, content in files.items()}


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
    unreadable: list[str] = []
    for dist in distributions():
        try:
            raw, version = _name_and_version(dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "")
            if not raw:
                continue
            name = re.sub(r"[-_.]+", "-", raw).lower()
            first, origin = found.get(name, (version, ""))
            if not origin and first == version:  # a stale `*.egg-info` in the launch directory shadows the install
                found[name] = (version, _origin(dist.read_text("direct_url.json")))
        except Exception as e:  # noqa: BLE001 - one broken install (METADATA not UTF-8, say) must not hide the rest
            unreadable.append(f"# unreadable: {getattr(dist, '_path', dist)}: {type(e).__name__}\n")
    return "".join(f"{name}=={found[name][0]}{found[name][1]}\n" for name in sorted(found)) + "".join(unreadable)


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
    argv0: str,
    task_overrides: Sequence[str],
    hydra_overrides: Sequence[str] = (),
    *,
    config_dir: str | None = None,
    config_path: str | None = None,
    config_name: str | None = None,
    resume: str | None = None,
) -> str:
    """The command line of one job, typed the way it was started (`python -m runtree_pipeline` or the
    `runtree-pipeline` script), with the config search flags and the job's own overrides (not the multirun sweep;
    Hydra's own too, such as `hydra.job.chdir=true`, but not those that only shape a multirun).

    The flags come as Hydra's parser read them (`-cd=DIR`, `--config-d DIR`, ...) and are written one way, so any
    spelling it accepts is reproduced. Without `resume`: the command that reproduces the job, without what would
    not (`resume=`, `dry_run=`, `progress=`). With it: the command that finishes that execution, every override
    kept and `resume=` set to it.
    """
    flags: list[str] = []
    for flag, value in (("--config-path", config_path), ("--config-name", config_name), ("--config-dir", config_dir)):
        if value is not None:
            flags += [f"{flag}={value}"] if value.startswith("-") else [flag, value]
    dropped = ("resume",) if resume is not None else _NOT_REPRODUCING
    keep = [o for o in task_overrides if o.split("=", 1)[0].lstrip("+~") not in dropped]
    keep += [o for o in hydra_overrides if not o.lstrip("+~").startswith(_MULTIRUN_ONLY)]
    if resume is not None:
        keep.append(f"resume={resume}")
    return shlex.join([*_program(argv0), *flags, *keep])


def _program(argv0: str) -> list[str]:
    """How to start us again from the same shell: the console script by the name it has on PATH (by its path when
    that name finds another program), anything else as `-m runtree_pipeline` of this interpreter, named as PATH
    finds it (`python`, else its own name such as `python3`) or else by its path: `.venv/bin/python` run without
    activating the venv, a PATH whose `python` is another interpreter or that has none.

    An interpreter is compared by path, not by the file it links to: a venv's `python` links to the base
    interpreter, which started by its own path does not see the venv's packages. A script is the same program
    whatever links lead to it (its first line names its interpreter)."""
    if os.path.splitext(os.path.basename(argv0))[0] == SCRIPT:
        found = shutil.which(SCRIPT)
        return [SCRIPT] if found and os.path.realpath(found) == os.path.realpath(argv0) else [argv0]
    here = os.path.abspath(sys.executable) if sys.executable else ""
    for name in dict.fromkeys(("python", os.path.basename(here))):
        found = shutil.which(name) if name else None
        if found and os.path.abspath(found) == here:
            return [name, "-m", "runtree_pipeline"]
    return [here or "python", "-m", "runtree_pipeline"]


def _git(*args: str, cwd: str) -> bytes | None:
    """Its output as git wrote it, None when there is no git or no repository. `cwd` is `launch_dir()`: a job
    that `hydra.job.chdir=true` moved into its output directory still describes the tree it was started in.

    `_DIFF` makes a patch `git apply` takes onto HEAD whatever the user's git config says about colour, prefixes,
    external diff tools, text conversions, `diff.relative` (a patch of a subdirectory, its paths cut short) and
    `diff.submodule` (a submodule's own diff instead of its commit); binary files are only named."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, timeout=10, cwd=cwd, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None
