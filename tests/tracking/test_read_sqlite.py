"""Whole trees read from a sqlite store with plain SQL must be exactly what `search_runs` gives, run for run and
field for field, and any store the SQL does not expect must be read through MLflow instead of failing."""

from __future__ import annotations

import logging
import math
import sqlite3
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from runtree_pipeline.tracking import sqlite_read
from runtree_pipeline.tracking.mlflow_store import TrackingReader
from runtree_pipeline.tracking.records import RunRecord
from runtree_pipeline.tracking.sqlite_read import SqliteRunReader
from tests.conftest import copy_of, record_failing_tree


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, empty_store):
    """A resumed execution with failed leaves and superseded stages, then the odd cases written by hand: a deleted
    leaf, a NaN metric, a run with no name column, a tag with no value, and a run of the same pipeline id in
    another experiment (outside a reader scoped to 'readback')."""
    root = tmp_path_factory.mktemp("read")
    store = copy_of(empty_store, root)
    result, other = record_failing_tree(store, "readback")
    client = MlflowClient(store)
    reader = TrackingReader(uri=store, experiment="readback")
    runs = reader.pipeline_runs(result.pipeline_id)
    leaves = [r for r in runs if r.tags.get("runtree.level") == "subvariant"]
    assert any(r.status == "FAILED" for r in leaves)
    assert any("runtree.superseded_by" in r.tags for r in runs)
    client.delete_run(leaves[0].run_id)
    client.log_metric(leaves[1].run_id, "odd", math.nan)
    stray = client.create_run(
        client.get_experiment_by_name("other").experiment_id, tags={"runtree.pipeline_id": result.pipeline_id}
    )
    with sqlite3.connect(Path(store.removeprefix("sqlite:///"))) as db:
        db.execute("UPDATE runs SET name = NULL WHERE run_uuid = ?", (leaves[2].run_id,))
        db.execute("UPDATE tags SET value = NULL WHERE run_uuid = ? AND key = 'mlflow.user'", (leaves[3].run_id,))
    return SimpleNamespace(
        store=store,
        pipeline_id=result.pipeline_id,
        other_id=other.pipeline_id,
        deleted=leaves[0].run_id,
        nan=leaves[1].run_id,
        unnamed=leaves[2].run_id,
        untagged=leaves[3].run_id,
        stray=stray.info.run_id,
    )


def _via_mlflow(reader: TrackingReader) -> TrackingReader:
    reader._sql = None
    return reader


def _comparable(runs: list[RunRecord]) -> list[tuple]:
    """Every field, with dicts as item lists so their order counts too, and NaN as text since NaN != NaN."""
    out = []
    for run in runs:
        fields = asdict(replace(run, metrics={k: "nan" if math.isnan(v) else v for k, v in run.metrics.items()}))
        out.append(tuple((k, list(v.items()) if isinstance(v, dict) else v) for k, v in fields.items()))
    return out


@pytest.mark.parametrize("experiment", ["readback", None], ids=["one-experiment", "all-experiments"])
def test_sql_reads_exactly_what_search_runs_finds(recorded, experiment):
    fast = TrackingReader(uri=recorded.store, experiment=experiment)
    slow = _via_mlflow(TrackingReader(uri=recorded.store, experiment=experiment))
    for pipeline_id in (recorded.pipeline_id, recorded.other_id, "0123456789ab"):
        assert _comparable(fast.pipeline_runs(pipeline_id)) == _comparable(slow.pipeline_runs(pipeline_id))
    assert _comparable(fast.stage_runs()) == _comparable(slow.stage_runs())

    by_id = {r.run_id: r for r in fast.pipeline_runs(recorded.pipeline_id)}
    assert recorded.deleted not in by_id
    assert (recorded.stray in by_id) == (experiment is None)
    assert math.isnan(by_id[recorded.nan].metrics["odd"])
    assert by_id[recorded.unnamed].name == by_id[recorded.unnamed].tags["mlflow.runName"] != ""
    assert by_id[recorded.untagged].tags["mlflow.user"] is None
    assert {r.status for r in by_id.values()} >= {"FINISHED", "FAILED"}


def test_sql_is_what_reads_a_sqlite_store(recorded, monkeypatch):
    reader = TrackingReader(uri=recorded.store, experiment="readback")
    monkeypatch.setattr(TrackingReader, "_search", lambda *_: pytest.fail("searched through MLflow"))
    assert reader.pipeline_runs(recorded.pipeline_id)
    assert reader.stage_runs()


def test_unexpected_tables_are_read_through_mlflow(recorded, monkeypatch, caplog):
    expected = _comparable(_via_mlflow(TrackingReader(uri=recorded.store, experiment="readback")).stage_runs())
    monkeypatch.setitem(sqlite_read._COLUMNS, "runs", {*sqlite_read._COLUMNS["runs"], "renamed_in_a_future_mlflow"})
    reader = TrackingReader(uri=recorded.store, experiment="readback")
    searched = []
    search = TrackingReader._search
    monkeypatch.setattr(TrackingReader, "_search", lambda self, f: searched.append(f) or search(self, f))
    with caplog.at_level(logging.INFO, logger=sqlite_read.__name__):
        assert _comparable(reader.stage_runs()) == expected
        assert _comparable(reader.stage_runs()) == expected
    assert len(searched) == 2
    assert [r.getMessage() for r in caplog.records] == [
        f"reading {Path(recorded.store.removeprefix('sqlite:///'))} through MLflow: its tables lack "
        "runs.renamed_in_a_future_mlflow"
    ]


def test_a_file_that_is_no_mlflow_store_is_left_to_mlflow(tmp_path):
    unrelated = tmp_path / "unrelated.db"
    with sqlite3.connect(unrelated) as db:
        db.execute("CREATE TABLE runs (x)")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    for path in (unrelated, garbage, tmp_path / "missing.db"):
        assert SqliteRunReader(path).runs_tagged(["0"], "runtree.pipeline_id", "x") is None
    assert not (tmp_path / "missing.db").exists()
    assert unrelated.read_bytes()  # untouched by the read-only connection
    with sqlite3.connect(unrelated) as db:
        assert [row[0] for row in db.execute("SELECT name FROM sqlite_master")] == ["runs"]
