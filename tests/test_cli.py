"""End to end through `python -m runtree_pipeline`: real Hydra composition, a real sqlite store, the stock client."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import all_runs


def _by_level(runs):
    out = {}
    for r in runs:
        out.setdefault(r.data.tags["runtree.level"], []).append(r)
    return out


def test_tutorial_builds_the_notebook_challenge_tree(run_cli, store, client, tmp_path):
    proc = run_cli("+sweep=tutorial", f"tracking_uri={store}")
    assert proc.returncode == 0, proc.stderr
    assert "tuning" in proc.stdout and "best metric1=" in proc.stdout and "mlflow ui" in proc.stdout

    runs = all_runs(client, "tutorial")
    levels = _by_level(runs)
    assert (len(levels["stage"]), len(levels["variant"]), len(levels["subvariant"])) == (1, 5, 125)
    (stage,) = levels["stage"]
    assert "mlflow.parentRunId" not in stage.data.tags
    leaves = levels["subvariant"]
    assert stage.data.metrics["best_metric1"] == min(r.data.metrics["metric1"] for r in leaves)
    for variant in levels["variant"]:
        assert variant.data.tags["mlflow.parentRunId"] == stage.info.run_id
        mine = [r for r in leaves if r.data.tags["mlflow.parentRunId"] == variant.info.run_id]
        assert len(mine) == 25
        best = min(mine, key=lambda r: r.data.metrics["metric1"])
        assert variant.data.metrics["best_metric1"] == best.data.metrics["metric1"]
        assert variant.data.tags["best.param1"] == best.data.params["param1"]
        assert variant.data.tags["best.param2"] == best.data.params["param2"]
        assert len({r.info.run_name for r in mine}) == 25
    assert {r.data.tags["test_identifier"] for r in runs} == {"subset_test"}
    assert {r.info.status for r in runs} == {"FINISHED"}

    (summary_path,) = tmp_path.glob("outputs/*/*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["ok"] is True
    assert summary["stages"]["tuning"]["run_id"] == stage.info.run_id
    assert summary["stages"]["tuning"]["best"]["run_id"] == stage.data.tags["runtree.best_run_id"]
    assert summary["stages"]["tuning"]["runs"] == 131


def test_same_seed_same_tree(run_cli, store, client):
    for _ in range(2):
        proc = run_cli("+sweep=tutorial", f"tracking_uri={store}", "stages.tuning.subvariants.n=3")
        assert proc.returncode == 0, proc.stderr
    stages = _by_level(all_runs(client, "tutorial"))["stage"]
    assert len(stages) == 2
    assert len({s.data.tags["runtree.pipeline_id"] for s in stages}) == 2
    assert stages[0].data.metrics == stages[1].data.metrics
    assert {k: v for k, v in stages[0].data.tags.items() if k.startswith("best.")} == {
        k: v for k, v in stages[1].data.tags.items() if k.startswith("best.")
    }


def test_dry_run_prints_plan_and_touches_no_store(run_cli, tmp_path):
    proc = run_cli("+sweep=cnn", "dry_run=true", "stages.search.subvariants.n=8")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    order = [line.split()[0].rstrip(":") for line in lines if line.startswith("  ")]
    assert order == ["data", "search", "final"]
    assert "2 variant run(s), 16 sub-variant run(s)" in proc.stdout
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "mlruns").exists()


def test_default_store_is_mlflow_db_in_working_directory(run_cli, tmp_path):
    proc = run_cli("+sweep=tutorial", "stages.tuning.subvariants.n=2", "experiment=try2")
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(all_runs(client, "try2")) == 1 + 5 + 10


USER_SWEEP = """
# @package _global_
experiment: mine
objective: {metric: loss}
stages:
  a:
    _target_: tests.targets.with_outputs
    params: {seed: 1}
  b:
    depends_on: [a]
    _target_: tests.targets.quad
    params: {offset: "${best:a.metrics.rows}"}
    subvariants:
      params: {x: "choice(0, 1)"}
"""


@pytest.fixture
def user_conf(tmp_path) -> Path:
    conf = tmp_path / "my_conf"
    (conf / "sweep").mkdir(parents=True)
    (conf / "sweep" / "mine.yaml").write_text(textwrap.dedent(USER_SWEEP))
    return conf


def test_user_config_dir(run_cli, user_conf, store, client):
    proc = run_cli("--config-dir", str(user_conf), "+sweep=mine", f"tracking_uri={store}")
    assert proc.returncode == 0, proc.stderr
    runs = all_runs(client, "mine")
    assert len(runs) == 1 + 1 + 2
    b = next(r for r in runs if r.info.run_name == "b")
    assert b.data.metrics["best_loss"] == 105.0


BAD_INPUTS = [
    pytest.param(["stages.b.depends_on=[a,zz]"], "stage 'b', key 'depends_on': unknown stage 'zz'", id="unknown-dependency"),
    pytest.param(["+stages.a.depends_on=[b]"], "stages form a cycle: a -> b -> a", id="cycle"),
    pytest.param(["stages.b.depends_on=[]"], "stage 'b', key 'depends_on': ${best:a.metrics.rows} refers to stage 'a', which is not upstream", id="reference-not-upstream"),
    pytest.param(["stages.b.params.offset=${best:a.params.nope}"], "stage 'b', key 'params': ${best:a.params.nope}: stage 'a' has no param 'nope'", id="reference-unknown-param"),
    pytest.param(["stages.b._target_=tests.targets.nope"], "stage 'b', key '_target_': cannot import 'tests.targets.nope'", id="unimportable-target"),
    pytest.param(["stages.b._target_=no_such_module.f"], "stage 'b', key '_target_': cannot import 'no_such_module.f'", id="unimportable-module"),
    pytest.param(["stages.b._target_=tests.targets.NOT_CALLABLE"], "stage 'b', key '_target_': 'tests.targets.NOT_CALLABLE' is not callable", id="not-callable"),
    pytest.param(["+stages.b.params.zzz=1"], "stage 'b', key 'params': tests.targets.quad", id="unexpected-param"),
    pytest.param(["+stages.b.subvariants.sampler=bogus"], "stage 'b', key 'subvariants.sampler': unknown sampler 'bogus'", id="unknown-sampler"),
    pytest.param(["stages.b.subvariants.params.x='choice(1,2'"], "stage 'b', key 'subvariants.params.x': malformed sweep", id="malformed-grammar"),
    pytest.param(["stages.b.subvariants.params.x='interval(0,1)'"], "stage 'b', key 'subvariants.params.x': grid cannot enumerate a continuous interval", id="grid-over-interval"),
    pytest.param(["objective.metric=null"], "stage 'b', key 'objective.metric': a stage that sweeps needs objective.metric", id="missing-objective"),
    pytest.param(["+stages.b.depend_on=[a]"], "stage 'b', key 'depend_on': unknown key (did you mean 'depends_on'?)", id="misspelt-stage-key"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUTS)
def test_bad_config_is_one_line_nonzero_exit_and_no_runs(run_cli, user_conf, store, tmp_path, overrides, message):
    proc = run_cli("--config-dir", str(user_conf), "+sweep=mine", f"tracking_uri={store}", *overrides)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("runtree: error: ")
    assert message in errors[0]
    assert "Traceback" not in proc.stderr
    db = tmp_path / "store.db"
    assert not db.exists() or all_runs(MlflowClient(store)) == []


def test_no_sweep_chosen_says_how_to_choose_one(run_cli):
    proc = run_cli()
    assert proc.returncode == 2
    assert "choose a pipeline with +sweep=NAME" in proc.stderr


def test_failing_stage_exits_nonzero_and_says_which(run_cli, user_conf, store):
    proc = run_cli(
        "--config-dir", str(user_conf), "+sweep=mine", f"tracking_uri={store}",
        "stages.b._target_=tests.targets.no_objective", "~stages.b.params",
    )
    assert proc.returncode == 1
    assert "runtree: error: pipeline did not complete: b: no successful leaf" in proc.stderr
    assert "target returned no 'loss'" in proc.stderr


def test_multirun_runs_one_pipeline_per_job(run_cli, store, client):
    proc = run_cli("-m", "+sweep=tutorial", f"tracking_uri={store}", "stages.tuning.subvariants.n=2,3")
    assert proc.returncode == 0, proc.stderr
    levels = _by_level(all_runs(client, "tutorial"))
    assert len(levels["stage"]) == 2
    assert len(levels["subvariant"]) == 5 * 2 + 5 * 3


def test_cnn_and_tutorial_in_one_multirun(run_cli, store, client, tmp_path):
    proc = run_cli("-m", "+sweep=cnn,tutorial", f"tracking_uri={store}", timeout=600, RUNTREE_DATA_DIR=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert len(all_runs(client, "tutorial")) == 131

    runs = all_runs(client, "cnn")
    stages = {r.info.run_name: r for r in runs if r.data.tags["runtree.level"] == "stage"}
    assert set(stages) == {"data", "search", "final"}
    assert len(runs) == 3 + 2 + 12
    assert {r.info.status for r in runs} == {"FINISHED"}
    best = next(r for r in runs if r.info.run_id == stages["search"].data.tags["runtree.best_run_id"])
    final = stages["final"].data.params
    for key in ("channels", "lr", "batch_size"):
        assert final[key] == best.data.params[key]
    assert final["data_dir"] == str(tmp_path / "runtree_digits" / "val0.2_seed0")
    assert final["epochs"] == "6"
    assert 0 < stages["final"].data.metrics["val_loss"] < 1.0
    assert stages["final"].data.metrics["val_accuracy"] > 0.9
    assert len(client.get_metric_history(stages["final"].info.run_id, "epoch_val_loss")) == 6
