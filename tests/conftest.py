from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtree_pipeline.tracking.localserver import LocalMlflowServer

REPO = Path(__file__).resolve().parent.parent


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
def store(tmp_path) -> str:
    """A fresh embedded sqlite store in a temp dir."""
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def client(store):
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
def mlflow_server(tmp_path_factory):
    server = server_at(tmp_path_factory.mktemp("server")).start()
    yield server.url
    server.stop()


@pytest.fixture
def own_mlflow_server(tmp_path):
    """A server this test may stop and restart."""
    root = tmp_path / "server"
    root.mkdir()
    server = server_at(root).start()
    yield server
    server.stop()
