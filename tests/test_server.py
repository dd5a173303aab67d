"""The same tree through a real `mlflow server` on loopback: nothing in the package may assume a local store."""

from __future__ import annotations

from mlflow import MlflowClient

from tests.conftest import all_runs


def test_pipeline_against_tracking_server(run_cli, mlflow_server):
    proc = run_cli(
        "+sweep=tutorial", f"tracking_uri={mlflow_server}", "experiment=over_http", "stages.tuning.subvariants.n=4"
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{mlflow_server}" in proc.stdout

    client = MlflowClient(mlflow_server)
    runs = all_runs(client, "over_http")
    assert len(runs) == 1 + 5 + 20
    assert {r.info.status for r in runs} == {"FINISHED"}
    (stage,) = [r for r in runs if r.data.tags["runtree.level"] == "stage"]
    leaves = [r for r in runs if r.data.tags["runtree.level"] == "subvariant"]
    best = min(leaves, key=lambda r: r.data.metrics["metric1"])
    assert stage.data.metrics["best_metric1"] == best.data.metrics["metric1"]
    assert stage.data.tags["runtree.best_run_id"] == best.info.run_id
    assert "config.yaml" in {f.path for f in client.list_artifacts(stage.info.run_id)}


def test_unreachable_store_is_one_clear_error_before_any_work(run_cli):
    proc = run_cli("+sweep=tutorial", "tracking_uri=http://127.0.0.1:9", timeout=600, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1].startswith("runtree: error: tracking store http://127.0.0.1:9 is not usable")
