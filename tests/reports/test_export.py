"""`runtree export` and `PipelineResult.to_frame()`: one row per run of the pipeline as it now stands, the same
table from both, read back against what the stock MLflow client holds."""

from __future__ import annotations

import csv
import io
from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow import MlflowClient

from runtree_pipeline.cli import console
from tests.conftest import all_runs, record_failing_tree

FIXED = ["pipeline_id", "run_id", "parent_run_id", "stage", "level", "name", "status"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One execution resumed with another upstream input, so both stages have a superseded run; then a newer
    pipeline in another experiment."""
    root = tmp_path_factory.mktemp("export")
    store = f"sqlite:///{root / 'store.db'}"
    resumed, other = record_failing_tree(store, "export")
    client = MlflowClient(store)
    runs = [r for r in all_runs(client, "export")]
    superseded = {r.info.run_id for r in runs if "runtree.superseded_by" in r.data.tags}
    assert len(superseded) == 2
    current = [
        r for r in runs if r.info.run_id not in superseded and r.data.tags["runtree.root_run_id"] not in superseded
    ]
    return SimpleNamespace(store=store, root=root, result=resumed, other=other, runs=runs, current=current)


def _export(capsys, *args: str) -> str:
    assert console.main(["export", *args]) == 0
    return capsys.readouterr().out


def test_one_row_per_current_run_with_every_param_and_metric(recorded, capsys):
    path = recorded.root / "runs.csv"
    _export(capsys, "--tracking-uri", recorded.store, "--experiment", "export", "-o", str(path))
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = reader.fieldnames, list(reader)

    params = sorted({k for r in recorded.current for k in r.data.params})
    metrics = sorted({k for r in recorded.current for k in r.data.metrics})
    assert header == FIXED + [f"params.{k}" for k in params] + [f"metrics.{k}" for k in metrics]
    assert {"params.x", "params.y", "params.fail_on", "metrics.loss", "metrics.best_loss"} <= set(header)

    by_id = {r.info.run_id: r for r in recorded.current}
    assert [row["run_id"] for row in rows if row["run_id"] in by_id] == [row["run_id"] for row in rows]
    assert len(rows) == len(by_id) == 1 + 2 + 8 + 1  # superseded stage runs and their trees are left out
    assert [row["name"] for row in rows[:4]] == ["fit", "fit/a", "fit/a/x=0", "fit/a/x=1"]
    assert rows[-1]["name"] == "after"
    for row in rows:
        run = by_id[row["run_id"]]
        tags = run.data.tags
        assert row["pipeline_id"] == recorded.result.pipeline_id == tags["runtree.pipeline_id"]
        assert row["stage"] == tags["runtree.stage"] and row["level"] == tags["runtree.level"]
        assert row["name"] == run.info.run_name and row["status"] == run.info.status
        assert row["parent_run_id"] == ("" if row["level"] == "stage" else tags["mlflow.parentRunId"])
        assert {k: row[f"params.{k}"] for k in params if row[f"params.{k}"]} == run.data.params
        assert {k: float(row[f"metrics.{k}"]) for k in metrics if row[f"metrics.{k}"]} == run.data.metrics
    failed = [row for row in rows if row["status"] == "FAILED"]
    assert {row["name"] for row in failed} == {"fit/a/x=1", "fit/a/x=3", "fit/b/x=1", "fit/b/x=3"}
    assert all(row["metrics.loss"] == "" and row["params.fail_on"] == "[1, 3]" for row in failed)


def test_csv_goes_to_stdout_without_a_file_and_defaults_to_the_newest_pipeline(recorded, capsys):
    newest = _export(capsys, "--tracking-uri", recorded.store)
    (row,) = csv.DictReader(io.StringIO(newest))
    assert row["pipeline_id"] == recorded.other.pipeline_id and row["name"] == "one" and row["metrics.loss"] == "5.0"

    by_id = _export(capsys, "--tracking-uri", recorded.store, "--pipeline", recorded.result.pipeline_id)
    path = recorded.root / "same.csv"
    _export(capsys, "--tracking-uri", recorded.store, "--experiment", "export", "--pipeline", "last", "-o", str(path))
    assert by_id == path.read_text()


def test_to_frame_is_the_exported_table(recorded, capsys):
    frame = recorded.result.to_frame()
    path = recorded.root / "frame.csv"
    _export(capsys, "--tracking-uri", recorded.store, "--experiment", "export", "-o", str(path))
    assert frame.to_csv(index=False) == path.read_text()
    assert list(frame.columns[:7]) == FIXED
    assert frame["params.x"].dtype == "Int64" and frame["params.y"].dtype == "float64"
    assert frame["metrics.loss"].dtype == "float64"
    leaves = frame[frame["level"] == "subvariant"]
    best = leaves.sort_values("metrics.loss").iloc[0]
    assert best["run_id"] == recorded.result.stages["fit"].best.run_id


def test_parquet_when_the_file_says_so(recorded, capsys):
    path = recorded.root / "runs.parquet"
    assert _export(capsys, "--tracking-uri", recorded.store, "--experiment", "export", "-o", str(path)) == ""
    assert path.read_bytes()[:4] == b"PAR1"
    back = pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, recorded.result.to_frame())
    assert back["params.x"].dtype == "Int64" and back["params.fail_on"].isna().iloc[-1]


def test_an_unwritable_file_is_an_error_not_a_traceback(recorded, capsys):
    target = recorded.root / "no" / "such" / "dir.csv"
    code = console.main(["export", "--tracking-uri", recorded.store, "-o", str(target)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("runtree: error: cannot write ")
