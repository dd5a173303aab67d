from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtree_pipeline.tracking.localserver import LocalMlflowServer
from runtree_pipeline.tracking.sqlite import create_sqlite_store

REPO = Path(__file__).resolve().parent.parent

# pytest-xdist's `--dist loadscope` hands out whole modules (a test class on its own) in collection order. These
# take half a minute to minutes of one worker each (measured with `--durations=0`), so they go first: collected last,
# as `tests/tracking` is, one of them kept a worker busy alone for its last minute while the other had nothing left.
LONGEST_FIRST = (
    "tests/execution/test_slurm.py",
    "tests/execution/test_executors.py",
    "tests/cli/test_signals.py",
    "tests/execution/test_ray_runtime.py",
    "tests/execution/test_preemption.py",
    "tests/cli/test_command_signals.py",
    "tests/execution/test_commands.py",
    "tests/tracking/test_server.py",
    "tests/cli/test_cli.py",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fresh_store: `store` is only a URI; the code under test builds the store")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: order within a file kept


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["HYDRA_FULL_ERROR"] = "0"
    env.update(extra)
    return env


@pytest.fixture
def run_cli(tmp_path):
    """Run `python -m runtree_pipeline ...` in tmp_path, the way a user would."""

    def run(*args: str, cwd: Path | None = None, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "runtree_pipeline", *args],
            cwd=cwd or tmp_path,
            env=cli_env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture
def store(request, tmp_path, empty_store) -> str:
    """A sqlite store in a temp dir, already with MLflow's schema: a copy of the empty one, as migrating a new file
    costs 1-5 s. A test marked `fresh_store` gets only the URI: the code under test builds the store, or must not."""
    if request.node.get_closest_marker("fresh_store") is None:
        copy_of(empty_store, tmp_path)
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(autouse=True)
def _few_open_files():
    """Every store a test opens stays open in this worker (MLflow keeps a store per URI, with its sqlite files):
    5 descriptors per test, and past 1,024 `select()` refuses them, which the terminal tests use."""
    yield
    if Path("/proc/self/fd").is_dir() and len(os.listdir("/proc/self/fd")) > 256:
        from runtree_pipeline.tracking.sqlite import close_engines

        close_engines()


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """A store with MLflow's schema and nothing in it, built once per worker."""
    path = tmp_path_factory.mktemp("empty_store") / "store.db"
    create_sqlite_store(f"sqlite:///{path}")
    return path


def copy_of(empty_store: Path, directory: Path, name: str = "store.db") -> str:
    """The URI of a fresh store in `directory`, copied from the empty one."""
    shutil.copy(empty_store, directory / name)
    return f"sqlite:///{directory / name}"


@pytest.fixture
def client(store):
    """The stock client on `store`."""
    from mlflow import MlflowClient

    return MlflowClient(store)


def all_runs(client, experiment: str | None = None) -> list:
    """Every run in the store (or in one experiment), read with the stock client."""
    if experiment is None:
        ids = [e.experiment_id for e in client.search_experiments()]
    else:
        exp = client.get_experiment_by_name(experiment)
        ids = [exp.experiment_id] if exp else []
    return client.search_runs(ids, max_results=50000) if ids else []


def server_at(root: Path) -> LocalMlflowServer:
    """A real `mlflow server` on loopback (single worker, no job runner) whose children see the test env."""
    return LocalMlflowServer(root, env=cli_env())


@pytest.fixture(scope="session")
def session_server(tmp_path_factory):
    """One `mlflow server` per worker: starting one costs 5-7 s."""
    server = server_at(tmp_path_factory.mktemp("server")).start()
    yield server
    server.stop()


@pytest.fixture
def mlflow_server(session_server) -> str:
    return session_server.url


def failing_tree(store: str, experiment: str, fail_on: list[int]) -> dict:
    """Two variants x four points with failing points, and a stage that takes its best: resumed with other
    `fail_on`, both stages get a superseded run. The tree the read-back tests (export, sqlite reads) read."""
    return {
        "tracking_uri": store,
        "experiment": experiment,
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.flaky",
                "params": {"fail_on": fail_on},
                "variants": {"points": {"a": {"y": 0.0}, "b": {"y": 0.5}}},
                "subvariants": {"params": {"x": "range(0, 4)"}},
            },
            "after": {
                "_target_": "tests.targets.quad",
                "depends_on": ["fit"],
                "params": {"x": "${best:fit.params.x}", "offset": 0.25},
            },
        },
    }


def record_failing_tree(store: str, experiment: str):
    """`failing_tree` run, then resumed with other failures (both stages get a superseded run), then a one-stage
    pipeline in another experiment: returns the resumed execution's result and the other one's."""
    from runtree_pipeline import build_plan, run_plan

    run_plan(build_plan(failing_tree(store, experiment, [3])), plots=False)
    resumed = run_plan(build_plan({**failing_tree(store, experiment, [1, 3]), "resume": "last"}), plots=False)
    other = {
        "tracking_uri": store,
        "experiment": "other",
        "stages": {"one": {"_target_": "tests.targets.quad", "params": {"x": 2}}},
    }
    return resumed, run_plan(build_plan(other), plots=False)
