"""What a stage's leaves run, in one place: which kind of target a stage declares, whether it can take the params
the stage will pass, what of it goes into a run's content key, and how it is named to the user.

One class per kind: a Python function (`_target_`) or a program (`command`). A kind added later (a notebook, a
container) is one more subclass here, one more branch in `parse`, and its `run` in the execution layer; nothing else
reads a stage's target keys or knows what a target is made of.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import shlex
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtree_pipeline.errors import ConfigError
from runtree_pipeline.plan.sweeps import import_object

KEYS = ("_target_", "command", "command_args", "result_file", "workdir")
"""The stage keys that declare its target, allowed beside the stage's other keys."""

Call = tuple[Mapping[str, Any], str]
"""The params one leaf may be given, and where in the stage they come from (" in variant 'mlp'", or "")."""


class Target(ABC):
    """What a leaf runs. Frozen and picklable: it travels to workers in other processes and machines."""

    runs_as_process = False
    """Whether the leaf's work is a process group of its own, which can be stopped (at a timeout, a Ctrl-C)
    without harm to the worker or the pipeline running it."""

    @abstractmethod
    def validate(self, stage: str, calls: Iterable[Call] | None) -> list[ConfigError]:
        """Problems found before any run exists: the target cannot be found, or cannot take the params of one of
        `calls`. `calls` is None when the stage's params are broken themselves: check the target alone."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What names the target in a content key: a different value means different results."""

    @abstractmethod
    def code(self) -> str | None:
        """A hash of the source the target runs (recorded as `runtree.code`), None when there is none to read;
        read anew each time, so an edit between two pipelines in one process is seen."""

    @abstractmethod
    def describe(self) -> str:
        """The target as the user wrote it, for the dry run and messages."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The stage keys that declare it, as the stage run's resolved `config.yaml` records them."""

    def key_parts(self, code: str | None) -> dict[str, Any]:
        """The target's share of a run's content key; `code` is `self.code()`, or None to leave it out (`cache:
        {code: false}`, and the keys of stores written before keys held it)."""
        return {**self.identity(), **({"code": code} if code else {})}

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True)
class FunctionTarget(Target):
    """`_target_: module.function`: called with the leaf's params as keyword arguments, returns a mapping."""

    path: str

    def validate(self, stage: str, calls: Iterable[Call] | None) -> list[ConfigError]:
        """Imports the function and binds every distinct set of param names to its signature, as a call would."""
        try:
            function = import_object(self.path, stage=stage, key="_target_")
        except ConfigError as e:
            return [e]
        if calls is None:
            return []
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            return []
        seen = set()
        for kwargs, where in calls:
            names = tuple(sorted(kwargs))
            if names in seen:
                continue
            seen.add(names)
            try:
                signature.bind(**kwargs)
            except TypeError as e:
                message = f"{self.path}{signature} cannot take params ({', '.join(names)}){where}: {e}"
                return [ConfigError(message, stage=stage, key="params")]
        return []

    def identity(self) -> dict[str, Any]:
        return {"target": self.path}

    def code(self) -> str | None:
        """The module file that defines the function: editing the target (or anything else in its file) changes
        the keys of its runs, so neither a resume nor the cache reuses results of older code. What it imports from
        other files is not included. None when there is no source file (a builtin, a C module)."""
        from hydra.utils import get_object

        try:
            module = inspect.getmodule(get_object(self.path))
            path = inspect.getsourcefile(module) if module is not None else None
        except (TypeError, ImportError, AttributeError):
            return None
        if path is None:
            return None
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()[:16]

    def describe(self) -> str:
        return self.path

    def config(self) -> dict[str, Any]:
        return {"_target_": self.path}


ARGS = ("overrides", "flags", "none")
WORKDIRS = ("launch", "leaf")
_INTERPRETER = re.compile(r"(python|pypy|bash|sh|zsh|dash|perl|ruby|node|Rscript|julia)[\d.]*(\.exe)?")


@dataclass(frozen=True)
class CommandTarget(Target):
    """`command: python train.py`: a program run in a process group of its own, the leaf's params appended as
    arguments (`command_args`), its result read from what it logged to its leaf run and the file it wrote.

    Relative paths in the command are the launch directory's, as they would be by hand, wherever the program runs.
    """

    argv: tuple[str, ...]
    args: str = "overrides"
    result_file: str | None = None
    workdir: str = "launch"
    launch_dir: str = field(default_factory=os.getcwd, compare=False)

    runs_as_process = True

    def validate(self, stage: str, calls: Iterable[Call] | None) -> list[ConfigError]:
        """The program must be found now, not fail once per leaf; so must the script an interpreter is given."""
        problem = self._unrunnable()
        return [] if problem is None else [ConfigError(problem, stage=stage, key="command")]

    def _unrunnable(self) -> str | None:
        program = self.argv[0]
        if os.sep in program or (os.altsep and os.altsep in program):
            path = Path(self.launch_dir, program)
            if not path.is_file():
                return f"program not found: {program} (from {self.launch_dir})"
            if not os.access(path, os.X_OK):
                return f"{program} is not executable: chmod +x it, or name its interpreter (bash {program})"
        elif shutil.which(program) is None:
            return f"program not found on PATH: {program}"
        script = self._script_argument()
        if script is not None and not Path(self.launch_dir, script).is_file():
            return f"{program} cannot open {script}: no such file in {self.launch_dir}"
        return None

    def _script_argument(self) -> str | None:
        """The file an interpreter is asked to run (`python train.py`), None when it runs code (`-c`, `-m`)."""
        if not _INTERPRETER.fullmatch(Path(self.argv[0]).name):
            return None
        words = iter(self.argv[1:])
        for token in words:
            if token.startswith(("-c", "-m")):
                return None
            if token in ("-W", "-X"):
                next(words, None)
            elif not token.startswith("-"):
                return token
        return None

    def program_file(self) -> Path | None:
        """The file whose edits change results: the command's first word when it is a path to a program of its own
        (`./train.sh`, `bin/trainer`), the script an interpreter runs (`python train.py`), else the first argument
        naming an existing file."""
        first = Path(self.launch_dir, self.argv[0])
        if not _INTERPRETER.fullmatch(first.name) and os.sep in self.argv[0] and first.is_file():
            return first
        for token in self.argv[1:]:
            if not token.startswith("-") and (path := Path(self.launch_dir, token)).is_file():
                return path
        return None

    def identity(self) -> dict[str, Any]:
        identity: dict[str, Any] = {"command": list(self.argv), "command_args": self.args}
        if self.result_file is not None:
            identity["result_file"] = self.result_file
        return identity

    def code(self) -> str | None:
        path = self.program_file()
        if path is None:
            return None
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()[:16]

    def describe(self) -> str:
        return shlex.join(self.argv)

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"command": self.describe(), "command_args": self.args, "workdir": self.workdir}
        if self.result_file is not None:
            config["result_file"] = self.result_file
        return config


def parse(raw: Mapping[str, Any], *, stage: str) -> tuple[Target, ConfigError | None]:
    """The target a stage's resolved config declares, and the error that makes it unusable; with an error the
    target is only a stand-in, so the rest of the stage can still be checked and every problem reported at once."""
    path = raw.get("_target_")
    command = raw.get("command")
    if command is not None and path is not None:
        message = "a stage runs either a `_target_` or a `command`, not both: remove one"
        return FunctionTarget(str(path)), ConfigError(message, stage=stage, key="command")
    if command is not None:
        return _command(raw, stage=stage)
    stray = [key for key in KEYS[2:] if raw.get(key) is not None]
    if stray:
        message = f"`{stray[0]}` goes with `command`, and this stage has none"
        return FunctionTarget(str(path or "")), ConfigError(message, stage=stage, key=stray[0])
    if path is None or path == "":
        message = "missing `_target_` (a dotted path to a callable) or `command` (a program to run)"
        return FunctionTarget(""), ConfigError(message, stage=stage, key="_target_")
    if not isinstance(path, str):
        message = f"must be a dotted path to a callable (a string), got {path!r}"
        return FunctionTarget(str(path)), ConfigError(message, stage=stage, key="_target_")
    return FunctionTarget(path), None


def _command(raw: Mapping[str, Any], *, stage: str) -> tuple[Target, ConfigError | None]:
    command = raw["command"]
    stand_in = CommandTarget(("true",))
    if isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as e:
            return stand_in, ConfigError(f"cannot be split like a shell would: {e}", stage=stage, key="command")
    elif isinstance(command, list) and all(_word(a) for a in command):
        argv = [str(a) for a in command]
    else:
        message = f"must be a command line (a string) or a list of its words, got {command!r}"
        return stand_in, ConfigError(message, stage=stage, key="command")
    if not argv:
        return stand_in, ConfigError("is empty: name the program to run", stage=stage, key="command")
    args = raw.get("command_args") or "overrides"
    if args not in ARGS:
        message = f"must be one of {', '.join(ARGS)}, got {args!r}"
        return stand_in, ConfigError(message, stage=stage, key="command_args")
    workdir = raw.get("workdir") or "launch"
    if workdir not in WORKDIRS:
        message = f"must be one of {', '.join(WORKDIRS)}, got {workdir!r}"
        return stand_in, ConfigError(message, stage=stage, key="workdir")
    result_file = raw.get("result_file")
    if result_file is not None and (not isinstance(result_file, str) or not result_file):
        message = f"must be the path of a JSON or YAML file the program writes, got {result_file!r}"
        return stand_in, ConfigError(message, stage=stage, key="result_file")
    return CommandTarget(tuple(argv), args=args, result_file=result_file, workdir=workdir), None


def _word(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)
