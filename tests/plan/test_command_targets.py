"""A stage that runs a program (`command:`): how its keys are read, which programs are refused before any run exists,
and what of it goes into a run's content key (a key that moved would make resume and the cache miss runs, one that
stayed put after an edit to the script would reuse results of older code)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runtree_pipeline.execution.keys import content_key
from runtree_pipeline.plan.targets import CommandTarget, FunctionTarget, parse
from tests.conftest import cli_env


def error_of(raw: dict) -> str:
    _, error = parse(raw, stage="fit")
    assert error is not None, raw
    return str(error)


# ---- parse ---------------------------------------------------------------------------------------------------------


def test_a_command_string_is_split_as_a_shell_would_split_it():
    target, error = parse({"command": "python 'my train.py' --note \"two words\" lr=0.1", "params": {}}, stage="fit")
    assert error is None
    assert target == CommandTarget(("python", "my train.py", "--note", "two words", "lr=0.1"))
    assert (target.args, target.workdir, target.result_file) == ("overrides", "launch", None)


def test_a_command_list_is_taken_word_for_word():
    raw = {"command": ["python", "my train.py", 3, 0.5], "command_args": "flags", "workdir": "leaf"}
    target, error = parse({**raw, "result_file": "out/metrics.json"}, stage="fit")
    assert error is None
    assert target == CommandTarget(
        ("python", "my train.py", "3", "0.5"), args="flags", result_file="out/metrics.json", workdir="leaf"
    )


@pytest.mark.parametrize(
    ("raw", "key", "message"),
    [
        pytest.param(
            {"_target_": "tests.targets.quad", "command": "python train.py"},
            "command",
            "a stage runs either a `_target_` or a `command`, not both: remove one",
            id="both",
        ),
        pytest.param(
            {},
            "_target_",
            "missing `_target_` (a dotted path to a callable) or `command` (a program to run)",
            id="neither",
        ),
        pytest.param(
            {"command": "python train.py", "command_args": "argv"},
            "command_args",
            "must be one of overrides, flags, none, got 'argv'",
            id="command_args",
        ),
        pytest.param(
            {"command": "python train.py", "workdir": "tmp"},
            "workdir",
            "must be one of launch, leaf, got 'tmp'",
            id="workdir",
        ),
        pytest.param(
            {"command": "python train.py", "result_file": 3},
            "result_file",
            "must be the path of a JSON or YAML file the program writes, got 3",
            id="result_file-not-a-string",
        ),
        pytest.param(
            {"command": "python train.py", "result_file": ""},
            "result_file",
            "must be the path of a JSON or YAML file the program writes, got ''",
            id="result_file-empty",
        ),
        pytest.param({"command": ""}, "command", "is empty: name the program to run", id="command-empty"),
        pytest.param(
            {"command": "python 'train.py"},
            "command",
            "cannot be split like a shell would: No closing quotation",
            id="command-unsplittable",
        ),
        pytest.param(
            {"command": {"python": "train.py"}},
            "command",
            "must be a command line (a string) or a list of its words, got {'python': 'train.py'}",
            id="command-mapping",
        ),
    ],
)
def test_a_stage_whose_target_keys_are_wrong_gets_one_error_on_the_key_to_fix(raw, key, message):
    assert error_of(raw) == f"stage 'fit', key '{key}': {message}"


@pytest.mark.parametrize(
    ("key", "value"), [("command_args", "flags"), ("result_file", "metrics.json"), ("workdir", "leaf")]
)
@pytest.mark.parametrize("function", [{"_target_": "tests.targets.quad"}, {}], ids=["with-_target_", "alone"])
def test_a_command_key_without_a_command_is_an_error_naming_that_key(key, value, function):
    assert error_of({**function, key: value}) == (
        f"stage 'fit', key '{key}': `{key}` goes with `command`, and this stage has none"
    )


def test_a_function_stage_is_still_a_function_target():
    assert parse({"_target_": "tests.targets.quad"}, stage="fit") == (FunctionTarget("tests.targets.quad"), None)


# ---- validate ------------------------------------------------------------------------------------------------------


def problems(tmp_path: Path, argv: tuple[str, ...]) -> list[str]:
    return [str(e) for e in CommandTarget(argv, launch_dir=str(tmp_path)).validate("fit", None)]


@pytest.fixture
def project(tmp_path) -> Path:
    """A launch directory with a script, an executable shell script and one that is not executable."""
    (tmp_path / "train.py").write_text("print('training')\n")
    (tmp_path / "run.sh").write_text("#!/bin/sh\necho run\n")
    (tmp_path / "run.sh").chmod(0o755)
    (tmp_path / "plain.sh").write_text("#!/bin/sh\necho plain\n")
    (tmp_path / "plain.sh").chmod(0o644)
    return tmp_path


@pytest.mark.parametrize(
    "argv",
    [
        ("python", "train.py"),
        ("python", "-u", "train.py", "--lr=1"),
        ("./run.sh",),
        ("bash", "plain.sh"),
        ("python", "-m", "no_such_package_anywhere"),
        ("python", "-mno_such_package_anywhere"),
        ("python", "-c", "import no_such_module"),
        ("python", "-W", "ignore", "train.py"),
        ("python", "-X", "dev", "train.py"),
        ("sleep", "1"),
    ],
    ids=lambda argv: " ".join(argv),
)
def test_a_program_that_can_run_is_no_error(project, argv):
    assert problems(project, argv) == []


def test_a_program_not_on_path_is_an_error_before_any_run(project):
    assert problems(project, ("no-such-program-rt19", "train.py")) == [
        "stage 'fit', key 'command': program not found on PATH: no-such-program-rt19"
    ]


def test_a_relative_program_that_does_not_exist_is_an_error_naming_the_launch_directory(project):
    assert problems(project, ("./missing.sh",)) == [
        f"stage 'fit', key 'command': program not found: ./missing.sh (from {project})"
    ]
    assert problems(project, ("bin/trainer", "x")) == [
        f"stage 'fit', key 'command': program not found: bin/trainer (from {project})"
    ]


def test_a_program_that_is_not_executable_is_an_error_with_the_fix(project):
    assert problems(project, ("./plain.sh",)) == [
        "stage 'fit', key 'command': ./plain.sh is not executable: chmod +x it, or name its interpreter "
        "(bash ./plain.sh)"
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ("python", "missing.py"),
        ("python", "-u", "missing.py"),
        ("python", "-W", "ignore", "missing.py"),
        ("python3.11", "-X", "dev", "missing.py", "--lr=1"),
        ("bash", "missing.py"),
    ],
    ids=lambda argv: " ".join(argv),
)
def test_a_script_the_interpreter_cannot_open_is_an_error_naming_it(project, argv):
    assert problems(project, argv) == [
        f"stage 'fit', key 'command': {argv[0]} cannot open missing.py: no such file in {project}"
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ("uv", "run", "train.py"),
        ("uv", "run", "python", "train.py"),
        ("conda", "run", "-n", "env", "python", "train.py"),
    ],
    ids=" ".join,
)
def test_a_script_run_through_an_environment_runner_is_no_error(project, monkeypatch, argv):
    bin_dir = project / "bin"
    bin_dir.mkdir()
    for runner in ("uv", "conda"):
        (bin_dir / runner).write_text("#!/bin/sh\n")
        (bin_dir / runner).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert problems(project, argv) == []


# ---- the content key -----------------------------------------------------------------------------------------------


def test_the_identity_is_the_command_line_how_params_are_passed_and_the_result_file():
    base = CommandTarget(("python", "train.py"))
    assert base.identity() == {"command": ["python", "train.py"], "command_args": "overrides"}
    others = [
        CommandTarget(("python", "train.py", "--fast")),
        CommandTarget(("python", "other.py")),
        CommandTarget(("python", "train.py"), args="flags"),
        CommandTarget(("python", "train.py"), args="none"),
        CommandTarget(("python", "train.py"), result_file="metrics.json"),
    ]
    keys = {content_key(stage="fit", params={"x": 1}, **t.key_parts(None)) for t in [base, *others]}
    assert len(keys) == 1 + len(others), "each of them can change what a leaf computes"
    assert others[-1].identity()["result_file"] == "metrics.json"


@pytest.mark.parametrize(
    ("command", "program"),
    [
        ("python train.py --lr=1", "train.py"),
        ("python -u train.py", "train.py"),
        ("./run.sh first", "run.sh"),
        ("bash run.sh", "run.sh"),
        (f"{sys.executable} train.py", "train.py"),
        ("/usr/bin/python3 train.py", "train.py"),
    ],
)
def test_code_is_the_hash_of_the_program_file_not_of_its_interpreter(project, command, program):
    target, error = parse({"command": command}, stage="fit")
    assert error is None
    target = CommandTarget(target.argv, launch_dir=str(project))
    assert target.program_file() == project / program
    assert target.code() == hashlib.sha256((project / program).read_bytes()).hexdigest()[:16]


def test_editing_the_program_file_changes_its_code(project):
    for argv, path in ((("python", "train.py"), project / "train.py"), (("./run.sh",), project / "run.sh")):
        target = CommandTarget(argv, launch_dir=str(project))
        first = target.code()
        assert first is not None and first == target.code()
        path.write_text(path.read_text() + "# an edit\n")
        assert target.code() not in (None, first), "read anew after an edit, in the same process"


def test_a_command_that_runs_no_file_of_the_users_has_no_code(project):
    assert CommandTarget(("python", "-c", "print(1)"), launch_dir=str(project)).code() is None
    assert CommandTarget(("sleep", "1"), launch_dir=str(project)).code() is None


def test_the_launch_directory_is_not_part_of_a_targets_equality():
    """A pipeline resumed from another directory (or a worker unpickling it elsewhere) plans the same target."""
    here = CommandTarget(("python", "train.py"), args="flags", launch_dir="/a")
    assert here == CommandTarget(("python", "train.py"), args="flags", launch_dir="/b")
    assert here != CommandTarget(("python", "train.py"), args="flags", workdir="leaf", launch_dir="/a")
    sent = pickle.loads(pickle.dumps(here))
    assert sent == here and sent.launch_dir == "/a", "a worker sees the launch directory it was planned in"


KEY_OF = """
import json, sys
from runtree_pipeline.execution.keys import content_key
from runtree_pipeline.plan.targets import parse
target, _ = parse({"command": "python train.py --lr=0.1", "command_args": "flags", "result_file": "m.json"}, stage="f")
print(json.dumps([target.code(), content_key(stage="f", params={"x": 1.5}, **target.key_parts(target.code()))]))
"""


def test_the_content_key_is_the_same_in_another_process(project, monkeypatch):
    """Resume and the cache compare keys written by one process with keys computed by the next."""
    monkeypatch.chdir(project)
    target, _ = parse(
        {"command": "python train.py --lr=0.1", "command_args": "flags", "result_file": "m.json"}, stage="f"
    )
    here = [target.code(), content_key(stage="f", params={"x": 1.5}, **target.key_parts(target.code()))]
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KEY_OF)],
        cwd=project,
        env=cli_env(PYTHONHASHSEED="12345"),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(proc.stdout) == here
    assert here[0] is not None and os.path.isfile(project / "train.py")


# ---- through the command line --------------------------------------------------------------------------------------

BROKEN = """
# @package _global_
experiment: commands
objective: {metric: loss}
stages:
  both:
    _target_: tests.targets.quad
    command: python train.py
  lost:
    command: no-such-program-rt19 --fast
  odd:
    command: python train.py
    command_args: argv
"""


@pytest.mark.fresh_store
def test_the_cli_reports_each_broken_command_stage_on_one_line_and_writes_nothing(run_cli, project, store):
    conf = project / "conf" / "sweep"
    conf.mkdir(parents=True)
    (conf / "broken.yaml").write_text(BROKEN)
    proc = run_cli("--config-dir", str(project / "conf"), "+sweep=broken", f"tracking_uri={store}", cwd=project)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        "runtree: error: stage 'both', key 'command': a stage runs either a `_target_` or a `command`, not both: "
        "remove one",
        "runtree: error: stage 'lost', key 'command': program not found on PATH: no-such-program-rt19",
        "runtree: error: stage 'odd', key 'command_args': must be one of overrides, flags, none, got 'argv'",
    ]
    assert not Path(store.removeprefix("sqlite:///")).exists()
    assert not (project / "mlruns").exists() and not (project / "outputs").exists()
