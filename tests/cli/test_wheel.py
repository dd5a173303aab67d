"""The wheel a stranger installs: built from this checkout, installed offline into a fresh venv, run from an empty
directory with nothing of the checkout on the path. One build and one venv for the whole session."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO

# Build output and run leftovers at the top of the checkout; everything else is copied, as a clone would hold it.
LEFTOVERS = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", ".pytest_cache", "outputs", "multirun", "mlruns", "mlflow.db*", "data",
    ".runtree",
)


def _not_source(directory: str, names: list[str]) -> set[str]:
    ignored = {n for n in names if n == "__pycache__"}
    return ignored | (LEFTOVERS(directory, names) if Path(directory) == REPO else set())


def _run(*args: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("MLFLOW_")}
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _see_test_packages(python: Path) -> None:
    """Make the packages of the interpreter running the tests importable in the new venv, after its own.

    `--system-site-packages` would not do: inside a venv or a conda env, the new venv's base is the base interpreter,
    whose site-packages lack what the test environment installed. Listed in a `.pth` file as plain paths, these
    directories are added without their own `.pth` files, so the checkout's editable install stays invisible.
    """
    seen = [*site.getsitepackages(), site.getusersitepackages()]
    own = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=python.parent).stdout
    Path(own.strip(), "_runtree_test_packages.pth").write_text("".join(f"{d}\n" for d in seen if Path(d).is_dir()))


@pytest.fixture(scope="session")
def venv(tmp_path_factory) -> Path:
    """A venv holding the wheel of this checkout; its dependencies are those of the interpreter running the tests.

    The build copies the checkout first: setuptools builds in the source tree and would leave `build/` there, whose
    stale files end up in later wheels. `--no-build-isolation` uses the installed setuptools, so nothing is
    downloaded; `--ignore-installed` installs the wheel even though the editable install has the same version.
    """
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=_not_source)
    _run(
        sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation", "-w", root / "dist", cwd=root
    )
    (wheel,) = (root / "dist").glob("runtree_pipeline-*.whl")
    env_dir = root / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", env_dir, cwd=root)
    python = env_dir / "bin" / "python"
    _see_test_packages(python)
    _run(
        python,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-index",
        "--ignore-installed",
        "-c",
        REPO / "constraints.txt",
        wheel,
        cwd=root,
    )
    return env_dir


@pytest.fixture
def empty_dir(tmp_path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return work


def test_the_venv_runs_the_wheel_not_the_checkout(venv, empty_dir):
    proc = _run(
        venv / "bin" / "python",
        "-c",
        "import importlib.resources as r, runtree_pipeline, runtree_pipeline.conf as c; "
        "print(runtree_pipeline.__file__); print(c.__file__); "
        "print(*sorted(p.name for p in r.files('runtree_pipeline.conf').joinpath('sweep').iterdir()))",
        cwd=empty_dir,
    )
    module, conf, sweeps = proc.stdout.splitlines()
    # The test interpreter's editable install would otherwise answer for a conf/ missing from the wheel.
    assert Path(module).is_relative_to(venv) and Path(conf).is_relative_to(venv)
    assert sweeps.split() == ["cnn.yaml", "script.yaml", "tradeoff.yaml", "tutorial.yaml"]


def test_shipped_sweep_runs_from_an_empty_directory(venv, empty_dir):
    python = venv / "bin" / "python"
    proc = _run(
        python,
        "-m",
        "runtree_pipeline",
        "+sweep=tutorial",
        "stages.tuning.subvariants.n=2",
        "plots=false",
        cwd=empty_dir,
    )
    assert "best metric1=" in proc.stdout
    assert (empty_dir / "mlflow.db").is_file()
    help_text = _run(python, "-m", "runtree_pipeline", "--help", cwd=empty_dir).stdout
    assert "+sweep=cnn" in help_text and "+sweep=tutorial" in help_text and "processes" in help_text


def test_own_pipeline_with_targets_in_the_working_directory(venv, empty_dir):
    (empty_dir / "mytargets.py").write_text("def bowl(*, x: float) -> dict:\n    return {'loss': (x - 1) ** 2}\n")
    (empty_dir / "my_conf" / "sweep").mkdir(parents=True)
    (empty_dir / "my_conf" / "sweep" / "mine.yaml").write_text(
        textwrap.dedent("""\
        # @package _global_
        objective: {metric: loss}
        stages:
          fit:
            _target_: mytargets.bowl
            variants:
              params: {x: "choice(0, 1, 2)"}
        """)
    )
    proc = _run(
        venv / "bin" / "python",
        "-m",
        "runtree_pipeline",
        "--config-dir",
        "./my_conf",
        "+sweep=mine",
        "plots=false",
        cwd=empty_dir,
    )
    assert "best loss=0" in proc.stdout, proc.stdout
    # A console script puts its bin directory, not the working directory, first on sys.path.
    proc = _run(
        venv / "bin" / "runtree-pipeline", "--config-dir", "./my_conf", "+sweep=mine", "plots=false", cwd=empty_dir
    )
    assert "best loss=0" in proc.stdout, proc.stdout


def test_runtree_console_script(venv, empty_dir):
    proc = _run(venv / "bin" / "runtree", "--help", cwd=empty_dir)
    assert "usage: runtree" in proc.stdout
