"""The command line: the shipped configs and a user's own through real Hydra composition, exit codes and error lines,
--help, signals before the pipeline runs. A subprocess only where the process boundary is the subject (exit codes,
stderr, the working directory, multirun, signals); the rest composes with Hydra in-process on a real sqlite store."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException, OverrideParseException
from mlflow import MlflowClient

from runtree_pipeline import build_plan, run_plan
from runtree_pipeline.cli.main import CONFIG_PACKAGE, describe_hydra_error, help_text
from runtree_pipeline.cli.main import _command as finishing_command
from runtree_pipeline.tracking.provenance import cli_command
from tests.conftest import REPO, all_runs, cli_env, copy_of


def _by_level(runs):
    out = {}
    for r in runs:
        out.setdefault(r.data.tags["runtree.level"], []).append(r)
    return out


def compose_sweep(name: str, *overrides: str):
    with initialize_config_module(CONFIG_PACKAGE, version_base=None):
        return compose("config", [f"+sweep={name}", *overrides])


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr
    return [line for line in proc.stderr.splitlines() if line.strip()]


# ---- the shipped pipelines, composed by Hydra in-process -------------------------------------------------------


def test_tutorial_builds_the_notebook_challenge_tree(store, client):
    cfg = compose_sweep("tutorial", f"tracking_uri={store}")
    run_plan(build_plan(cfg, default_experiment="tutorial"), plots=False)

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


def test_same_seed_same_tree(store, client):
    for _ in range(2):
        cfg = compose_sweep("tutorial", f"tracking_uri={store}", "stages.tuning.subvariants.n=3")
        run_plan(build_plan(cfg, default_experiment="tutorial"), plots=False)
    stages = _by_level(all_runs(client, "tutorial"))["stage"]
    assert len(stages) == 2
    assert len({s.data.tags["runtree.pipeline_id"] for s in stages}) == 2
    assert stages[0].data.metrics == stages[1].data.metrics
    assert {k: v for k, v in stages[0].data.tags.items() if k.startswith("best.")} == {
        k: v for k, v in stages[1].data.tags.items() if k.startswith("best.")
    }


# ---- through the command line ----------------------------------------------------------------------------------


def test_dry_run_prints_plan_and_touches_no_store(run_cli, tmp_path):
    proc = run_cli("+sweep=cnn", "dry_run=true", "stages.search.variants.n=8")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    order = [line.split()[0].rstrip(":") for line in lines if line.startswith("  ")]
    assert order == ["data", "search", "final"]
    assert "8 variant run(s), 24 sub-variant run(s)" in proc.stdout  # 3 seeds each
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "mlruns").exists()


@pytest.fixture(scope="module")
def on_the_default_store(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, bool, Path]:
    """One command with no tracking_uri (MLflow then creates `mlflow.db` in the working directory, 3 s), for the
    tests that read what it left: its output, its directory, whether a write-ahead log was left beside the store,
    and a copy of the store file alone, both taken as the command exited, before any test opened the store."""
    where = tmp_path_factory.mktemp("default_store")
    proc = subprocess.run(
        [sys.executable, "-m", "runtree_pipeline", "+sweep=tutorial", "stages.tuning.subvariants.n=2"]
        + ["experiment=try2", "plots=false"],
        cwd=where,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    wal_left = (where / "mlflow.db-wal").exists()
    copy = tmp_path_factory.mktemp("copy") / "mlflow.db"
    shutil.copy(where / "mlflow.db", copy)
    return proc, where, wal_left, copy


def test_default_store_is_mlflow_db_in_working_directory_and_summary_in_hydra_run_dir(on_the_default_store):
    proc, where, _, _ = on_the_default_store
    assert "tuning" in proc.stdout and "best metric1=" in proc.stdout and "mlflow ui" in proc.stdout
    client = MlflowClient(f"sqlite:///{where / 'mlflow.db'}")
    runs = all_runs(client, "try2")
    assert len(runs) == 1 + 5 + 10
    (stage,) = _by_level(runs)["stage"]

    (summary_path,) = where.glob("outputs/*/*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["ok"] is True
    assert summary["stages"]["tuning"]["run_id"] == stage.info.run_id
    assert summary["stages"]["tuning"]["best"]["run_id"] == stage.data.tags["runtree.best_run_id"]
    assert summary["stages"]["tuning"]["runs"] == 16


USER_TARGETS = """
import os


def rows(*, seed: int) -> dict:
    return {"rows": 100 + seed}


def quad(*, x: float, offset: float = 0.0) -> dict:
    return {"loss": (x - 1) ** 2 + offset, "pid": os.getpid()}
"""

USER_PIPELINE = """
# @package _global_
# A user's own pipeline: its targets live in mytargets.py, in the directory the command runs from.
experiment: mine
objective: {metric: loss}
stages:
  a:
    _target_: mytargets.rows
    params: {seed: 1}
  b:
    depends_on: [a]
    _target_: mytargets.quad
    params: {offset: "${best:a.metrics.rows}"}
    subvariants:
      params: {x: "choice(0, 1, 2)"}
"""


@pytest.fixture
def user_project(tmp_path) -> Path:
    """A user's project: a target module and a sweep file, neither installed nor on PYTHONPATH."""
    (tmp_path / "mytargets.py").write_text(USER_TARGETS)
    sweep = tmp_path / "my_conf" / "sweep"
    sweep.mkdir(parents=True)
    (sweep / "mine.yaml").write_text(textwrap.dedent(USER_PIPELINE))
    return tmp_path


def test_user_targets_import_from_the_working_directory_in_the_driver_and_in_spawned_workers(user_project, empty_store):
    """`-P` keeps Python from putting the working directory on sys.path, as a console script does: the CLI must.
    (The default store is there already: creating it costs 3 s and proves nothing here.)"""
    copy_of(empty_store, user_project, "mlflow.db")
    env = cli_env()
    assert str(user_project) not in env["PYTHONPATH"].split(os.pathsep)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-P",
            "-m",
            "runtree_pipeline",
            "--config-dir",
            "./my_conf",
            "+sweep=mine",
            "executor=processes",
            "executor.workers=2",
            "executor.start_method=spawn",
            "plots=false",
        ],
        cwd=user_project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    runs = all_runs(MlflowClient(f"sqlite:///{user_project / 'mlflow.db'}"), "mine")
    assert {r.info.status for r in runs} == {"FINISHED"}
    leaves = _by_level(runs)["subvariant"]
    assert len(leaves) == 3
    assert next(r for r in runs if r.info.run_name == "b").data.metrics["best_loss"] == 101.0
    assert proc.pid not in {int(r.data.metrics["pid"]) for r in leaves}


@pytest.fixture
def user_conf(tmp_path) -> Path:
    """A user's config directory whose targets are the test suite's own (importable through PYTHONPATH)."""
    conf = tmp_path / "my_conf"
    (conf / "sweep").mkdir(parents=True)
    pipeline = USER_PIPELINE.replace("mytargets.rows", "tests.targets.with_outputs").replace(
        "mytargets.", "tests.targets."
    )
    (conf / "sweep" / "mine.yaml").write_text(textwrap.dedent(pipeline))
    return conf


def test_failing_stage_exits_1_and_says_which(run_cli, user_conf, store):
    proc = run_cli(
        "--config-dir",
        str(user_conf),
        "+sweep=mine",
        f"tracking_uri={store}",
        "plots=false",
        "stages.b._target_=tests.targets.no_objective",
        "~stages.b.params",
    )
    assert proc.returncode == 1
    assert "runtree: error: pipeline did not complete: b: no successful leaf" in proc.stderr
    assert "target returned no 'loss'" in proc.stderr


SMALLER = {
    "cnn": "stages: {search: {params: {epochs: 1}, variants: {n: 2}, subvariants: {params: {seed: 'range(0, 2)'}}}, "
    "final: {params: {epochs: 3}}}",
    "tutorial": "stages: {tuning: {subvariants: {n: 2}}}",
    "tradeoff": "stages: {search: {params: {epochs: 1}, variants: {n: 4}}}",
}


def test_cnn_and_tutorial_in_one_multirun_keep_their_files_in_the_working_directory(run_cli, store, client, tmp_path):
    """Each job composes a shipped sweep under a smaller one: a multirun applies every override to every job, and
    a key of one sweep is unknown to the other; training for longer proves nothing more here."""
    sweeps = tmp_path / "smaller" / "sweep"
    sweeps.mkdir(parents=True)
    for name, body in SMALLER.items():
        (sweeps / f"small_{name}.yaml").write_text(f"# @package _global_\ndefaults: [{name}, _self_]\n{body}\n")
    proc = run_cli(
        "-m",
        "--config-dir",
        "smaller",
        "+sweep=small_cnn,small_tutorial,small_tradeoff",
        f"tracking_uri={store}",
        "plots=false",
    )
    assert proc.returncode == 0, proc.stderr
    assert len(all_runs(client, "tutorial")) == 1 + 5 + 10
    assert len(list(tmp_path.glob("multirun/*/*/*/summary.json"))) == 3

    traded = {r.info.run_id: r for r in all_runs(client, "tradeoff")}
    (search,) = [r for r in traded.values() if r.info.run_name == "search"]
    front = search.data.tags["runtree.pareto_run_ids"].split(",")
    assert front and all(traded[run_id].data.metrics["params_k"] <= 20 for run_id in front)
    assert search.data.tags["runtree.best_run_id"] in front

    runs = all_runs(client, "cnn")
    stages = {r.info.run_name: r for r in runs if r.data.tags["runtree.level"] == "stage"}
    assert set(stages) == {"data", "search", "final"}
    assert len(runs) == 3 + 2 + 4
    assert {r.info.status for r in runs} == {"FINISHED"}
    best = next(r for r in runs if r.info.run_id == stages["search"].data.tags["runtree.best_run_id"])
    assert best.data.tags["runtree.aggregate"] == "mean" and best.data.tags["runtree.replicates"] == "2"
    final = stages["final"].data.params
    for key in ("channels", "lr", "batch_size"):
        assert final[key] == best.data.params[key]
    data_dir = tmp_path / "data" / "digits" / "val0.2_seed0"
    assert sorted(p.name for p in data_dir.iterdir()) == ["train.npz", "val.npz"]
    (data_leaf,) = [r for r in runs if r.info.run_name == "data"]
    assert final["data_dir"] == f"runs:/{data_leaf.info.run_id}/outputs/data"
    listed = {a.path for a in client.list_artifacts(data_leaf.info.run_id, "outputs/data")}
    assert listed == {"outputs/data/train.npz", "outputs/data/val.npz"}
    copies = list((tmp_path / ".runtree" / "artifacts").iterdir())
    assert len(copies) == 2  # the data of cnn's and of tradeoff's: one copy each, not one per leaf
    assert all(sorted(p.name for p in (copy / "data").iterdir()) == ["train.npz", "val.npz"] for copy in copies)
    assert final["epochs"] == "3"
    assert 0 < stages["final"].data.metrics["val_loss"] < 1.0
    assert stages["final"].data.metrics["val_accuracy"] > 0.9
    history = client.get_metric_history(stages["final"].info.run_id, "val_loss")
    assert [m.step for m in history] == [0, 1, 2]
    assert history[-1].value == stages["final"].data.metrics["val_loss"]


def test_the_shipped_training_script_runs_unchanged_as_the_leaves_of_script(run_cli, store, client, tmp_path):
    """`+sweep=script` from a clone's root: each leaf is `python examples/train_digits.py` with its params as Hydra
    overrides, and what the script logs to MLflow itself (params, a val_loss per epoch) is its leaf run's."""
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    proc = run_cli(
        "+sweep=script",
        f"tracking_uri={store}",
        "stages.search.subvariants.n=2",
        "stages.search.params.epochs=2",
        "executor.workers=2",
        "plots=false",
        "progress=false",
    )
    assert proc.returncode == 0, proc.stderr

    runs = all_runs(client, "script")
    assert len(runs) == 1 + 2
    (stage,) = [r for r in runs if r.data.tags["runtree.level"] == "stage"]
    leaves = [r for r in runs if r.data.tags["runtree.level"] == "subvariant"]
    assert stage.info.status == "FINISHED" and {r.info.status for r in leaves} == {"FINISHED"}
    best = min(leaves, key=lambda r: r.data.metrics["val_loss"])
    assert stage.data.tags["runtree.best_run_id"] == best.info.run_id
    assert stage.data.metrics["best_val_loss"] == best.data.metrics["val_loss"]
    for leaf in leaves:
        history = client.get_metric_history(leaf.info.run_id, "val_loss")
        assert [m.step for m in history] == [0, 1]
        assert history[-1].value == leaf.data.metrics["val_loss"]
        assert leaf.data.params["epochs"] == "2" and leaf.data.params["channels"] == "8"  # the script's own log
    assert len({r.data.params["lr"] for r in leaves}) == 2


# ---- invalid input: exit 2, one line, nothing recorded ---------------------------------------------------------

CLI_ERRORS = [
    pytest.param([], "key 'stages': no stages declared: choose a pipeline with +sweep=NAME", id="no-sweep"),
    pytest.param(
        ["USER", "stages.b._target_=no_such_module.f"],
        "stage 'b', key '_target_': cannot import 'no_such_module.f': No module named 'no_such_module'",
        id="unimportable-target",
    ),
    pytest.param(
        ["USER", "stages.b.depends_on=[a,zz]"],
        "stage 'b', key 'depends_on': unknown stage 'zz'",
        id="unknown-dependency",
    ),
    pytest.param(
        ["+sweep=tutorial", "stages.tunin.n=1"],
        "cannot override 'stages.tunin.n': there is no key 'stages.tunin' (did you mean 'stages.tuning'?); "
        "to add a new key use +stages.tunin.n=1",
        id="unknown-override-key",
    ),
    pytest.param(
        ["sweep=cnn"],
        "'sweep=cnn' overrides a sweep that is not chosen by default: did you mean +sweep=cnn?",
        id="sweep-without-plus",
    ),
    pytest.param(
        ["+sweep=tutorial", "stages.tuning.subvariants.n=choice(1,"],
        "malformed override 'stages.tuning.subvariants.n=choice(1,': no viable alternative at input 'choice(1,' "
        "(quote a value that holds special characters, e.g. 'key=\"a,b\"'; "
        "grammar: https://hydra.cc/docs/advanced/override_grammar/basic/)",
        id="malformed-override",
    ),
    pytest.param(
        ["+sweep=tutorial", "+executor.bogus=1"],
        "key 'executor': cannot create runtree_pipeline.execution.executors.LocalExecutor: "
        "LocalExecutor.__init__() got an unexpected keyword argument 'bogus'",
        id="executor-key",
    ),
    pytest.param(
        ["+sweep=tutorial", "executor=ray", "executor.address=auto"],
        "key 'executor.address': Ray workers on other machines cannot write to {store}: "
        "use a tracking server (tracking_uri=http://HOST:PORT) or executor.address=local",
        id="ray-cluster-with-sqlite-store",
    ),
    pytest.param(
        ["--config-dir", "nope", "+sweep=mine"],
        "Additional config directory '{tmp}/nope' not found",
        id="missing-config-dir",
    ),
    pytest.param(
        ["--bogus", "+sweep=tutorial"],
        "unrecognized arguments: --bogus (see python -m runtree_pipeline --help)",
        id="unknown-flag",
    ),
    pytest.param(
        ["BROKEN"],
        "{tmp}/my_conf/sweep/broken.yaml, line 4, column 1: not valid YAML: while parsing a flow sequence, "
        "expected ',' or ']', but got '<stream end>'",
        id="broken-yaml",
    ),
]


@pytest.mark.fresh_store
@pytest.mark.parametrize(("args", "message"), CLI_ERRORS)
def test_invalid_input_is_one_error_line_exit_2_and_no_store(run_cli, user_conf, store, tmp_path, args, message):
    if args[:1] == ["USER"]:
        args = ["--config-dir", str(user_conf), "+sweep=mine", *args[1:]]
    if args[:1] == ["BROKEN"]:
        (user_conf / "sweep" / "broken.yaml").write_text("# @package _global_\nstages:\n  a: {x: [1, 2\n")
        args = ["--config-dir", str(user_conf), "+sweep=broken"]
    proc = run_cli(*args, f"tracking_uri={store}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = error_lines(proc)
    assert line == "runtree: error: " + message.replace("{store}", store).replace("{tmp}", str(tmp_path))
    assert not (tmp_path / "store.db").exists()


def test_a_ray_cluster_is_refused_before_the_default_store_is_created(run_cli, tmp_path):
    """With no tracking_uri the check sees MLflow's default, the store the pipeline would have created."""
    proc = run_cli("+sweep=tutorial", "executor=ray", "executor.address=auto")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert error_lines(proc) == [
        f"runtree: error: key 'executor.address': Ray workers on other machines cannot write to "
        f"sqlite:///{tmp_path / 'mlflow.db'}: use a tracking server (tracking_uri=http://HOST:PORT) or "
        "executor.address=local"
    ]
    assert not (tmp_path / "mlflow.db").exists()


HYDRA_ERRORS = [
    pytest.param(
        ["+sweep=cnn", "stages.serch.params.x=1"],
        "cannot override 'stages.serch.params.x': there is no key 'stages.serch' (did you mean 'stages.search'?); "
        "to add a new key use +stages.serch.params.x=1",
        id="misspelt-key",
    ),
    pytest.param(
        ["+sweep=cnn", "stages.search.params.widht=3"],
        "cannot override 'stages.search.params.widht': there is no key 'stages.search.params.widht'; "
        "to add a new key use +stages.search.params.widht=3",
        id="new-key-without-plus",
    ),
    pytest.param(
        ["+sweep=cnn", "stages.search.params.epochs=choice(1,"],
        "malformed override 'stages.search.params.epochs=choice(1,': no viable alternative at input 'choice(1,' "
        "(quote a value that holds special characters, e.g. 'key=\"a,b\"'; "
        "grammar: https://hydra.cc/docs/advanced/override_grammar/basic/)",
        id="malformed-override",
    ),
    pytest.param(
        ["+sweep=tutorail"],
        "unknown sweep 'tutorail' (did you mean '+sweep=tutorial'?); available: +sweep=cnn, +sweep=script, "
        "+sweep=tradeoff, +sweep=tutorial; your own: --config-dir DIR with DIR/sweep/tutorail.yaml",
        id="unknown-sweep",
    ),
    pytest.param(
        ["+sweep=cnn", "executor=rey"],
        "unknown executor 'rey' (did you mean 'executor=ray'?); "
        "available: executor=local, executor=processes, executor=ray, executor=slurm",
        id="unknown-executor",
    ),
    pytest.param(
        ["sweep=tutorial"],
        "'sweep=tutorial' overrides a sweep that is not chosen by default: did you mean +sweep=tutorial?",
        id="sweep-without-plus",
    ),
    pytest.param(
        ["+sweep=cnn", "+stages.search=1"],
        "Could not append to config. An item is already at 'stages.search'. Either remove + prefix: 'stages.search=1' "
        "Or add a second + to add or override 'stages.search': '++stages.search=1'",
        id="append-existing",
    ),
    pytest.param(
        ["+sweep=cnn", "stages.search.params='${oops'"],
        "Error merging override stages.search.params='${oops': no viable alternative at input '${oops'",
        id="bad-interpolation",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), HYDRA_ERRORS)
def test_hydra_composition_errors_are_one_line_with_the_fix(overrides, message):
    with pytest.raises((ConfigCompositionException, OverrideParseException)) as info:
        with initialize_config_module(CONFIG_PACKAGE, version_base=None):
            compose("config", overrides)
    assert describe_hydra_error(info.value, overrides) == message


# ---- --help ----------------------------------------------------------------------------------------------------


def test_help_lists_real_sweeps_every_key_and_the_executors(user_conf):
    text = help_text(str(user_conf))
    lines = text.splitlines()
    assert lines[0].startswith("usage: python -m runtree_pipeline")
    assert {"+sweep=cnn", "+sweep=tutorial", "+sweep=mine"} <= {
        line.split()[0] for line in lines if line.startswith("  +sweep=")
    }
    assert "  +sweep=mine" not in help_text()
    mine = next(line for line in lines if line.startswith("  +sweep=mine"))
    assert "A user's own pipeline" in mine

    cfg = compose_sweep("tutorial")
    for key in cfg:
        (line,) = [
            line
            for line in lines
            if line.startswith(f"  {key}=") or line.split() == [key] or line.startswith(f"  {key} ")
        ]
        assert len(line.split()) > 1, f"no description for {key}: {line!r}"
    for name, keys in {
        "local": [],
        "processes": ["workers", "start_method", "gpus"],
        "ray": ["address", "workers", "num_cpus", "num_gpus"],
    }.items():
        start = next(i for i, line in enumerate(lines) if line.split()[:1] == [name])
        assert len(lines[start].split()) > 1
        block = []
        for line in lines[start + 1 :]:
            if not line.startswith("    "):
                break
            block.append(line)
        assert [line.split("=")[0].strip() for line in block if line[4] != " "] == keys
    assert "README" in text and "--hydra-help" in text


def test_help_and_hydra_help_through_the_command_line(run_cli, user_conf):
    proc = run_cli("--config-dir", str(user_conf), "--help")
    assert proc.returncode == 0, proc.stderr
    assert "+sweep=mine" in proc.stdout and "+sweep=cnn" in proc.stdout and "executor=local" in proc.stdout
    proc = run_cli("--hydra-help")
    assert proc.returncode == 0, proc.stderr
    assert "== Flags ==" in proc.stdout and "--config-dir" in proc.stdout


# ---- signals before the pipeline runs --------------------------------------------------------------------------

SLOW_IMPORT = """
import pathlib, time

pathlib.Path("importing").touch()
time.sleep(60)


def f(*, x: float = 0) -> dict:
    return {"loss": x}
"""


@pytest.mark.fresh_store
@pytest.mark.parametrize(
    ("sig", "code", "line"),
    [
        pytest.param(signal.SIGINT, 130, "runtree: error: interrupted", id="sigint"),
        pytest.param(signal.SIGTERM, 143, "runtree: error: interrupted (SIGTERM)", id="sigterm"),
    ],
)
def test_signal_while_the_plan_is_built_exits_with_its_code_and_one_line(user_project, store, sig, code, line):
    """The plan imports every target; a slow import holds the process there, before any run or store exists."""
    (user_project / "slowmod.py").write_text(SLOW_IMPORT)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtree_pipeline",
            "--config-dir",
            "./my_conf",
            "+sweep=mine",
            f"tracking_uri={store}",
            "stages.a._target_=slowmod.f",
            "~stages.a.params",
            "stages.b.params.offset=0",
            "stages.b.depends_on=[]",
        ],
        cwd=user_project,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not (user_project / "importing").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, out + err
    assert [ln for ln in err.splitlines() if ln.strip()] == [line]
    assert not (user_project / "store.db").exists()


@pytest.mark.fresh_store
def test_a_misspelt_depends_on_is_the_only_error_line_not_its_knock_on_reference(run_cli, user_conf, store, tmp_path):
    """Issue 18: `b` uses `${best:a...}`; with depends_on misspelt the typo came second, after 'not upstream'."""
    args = ["--config-dir", str(user_conf), "+sweep=mine", "~stages.b.depends_on", "+stages.b.depnds_on=[a]"]
    proc = run_cli(*args, f"tracking_uri={store}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert error_lines(proc) == [
        "runtree: error: stage 'b', key 'depnds_on': unknown key (did you mean 'depends_on'?) (allowed: _target_, "
        "command, command_args, result_file, workdir, params, depends_on, variants, subvariants, objective, "
        "constraints, select, tags, on_failure, limits, register)"
    ]
    assert not (tmp_path / "store.db").exists()


# ---- what the user is told to type next, and what is left on disk ----------------------------------------------

SLOW_PIPELINE = """
# @package _global_
objective: {metric: loss}
stages:
  prep:
    _target_: tests.targets.counted
    params: {x: -1, log_file: calls.txt}
  fit:
    depends_on: [prep]
    _target_: tests.targets.counted
    params: {log_file: calls.txt, sleep: 0.5}
    subvariants:
      params: {x: "range(0, 8)"}
"""


def as_typed_in_a_shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """A printed command line, pasted into a shell in `cwd` with the PATH the command was started with: its
    `python` need not be the interpreter running the tests, nor be there at all."""
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=300)


CTRL_C_ARGS = ["+sweep=slow", "experiment=ctrlc", "tracking_uri=sqlite:///store.db"]
CTRL_C_ARGS += ["+tags.note='two words'", "progress=false", "plots=false"]


@pytest.mark.parametrize(
    "config_dir",
    [
        pytest.param(["--config-dir", "./my_conf"], id="config-dir"),
        pytest.param(["-cd=./my_conf"], id="short-with-equals"),
        pytest.param(["--config-d", "./my_conf"], id="abbreviated"),
    ],
)
def test_the_finishing_command_writes_the_config_flag_as_hydra_read_it(monkeypatch, config_dir):
    """The config flag of the command printed on Ctrl-C is read from the process's arguments by Hydra's parser and
    written one way: `-cd=DIR` and `--config-d DIR` were dropped, and the pasted line did not find the sweep. The
    test below pastes one spelling's line into a shell; every spelling yields that same line."""
    monkeypatch.setattr(sys, "argv", [str(REPO / "runtree_pipeline" / "__main__.py"), *config_dir, *CTRL_C_ARGS])
    command = finishing_command(SimpleNamespace(task=CTRL_C_ARGS, hydra=[]), resume="0123456789ab")
    program, *rest = shlex.split(command)
    assert rest == ["-m", "runtree_pipeline", "--config-dir", "./my_conf", *CTRL_C_ARGS, "resume=0123456789ab"]
    assert program in ("python", os.path.basename(sys.executable), sys.executable)


def test_ctrl_c_prints_the_whole_command_that_finishes_the_execution(store, tmp_path):
    """Issue 18: only `resume=ID` was printed; pasted onto the plain command it looked in the sweep's experiment,
    not in `experiment=ctrlc`, and exited 2. The printed line, pasted as is, finishes the same execution. Started
    with `-cd=DIR`, it names `--config-dir DIR` (the test above: each spelling Hydra's parser takes)."""
    (tmp_path / "my_conf" / "sweep").mkdir(parents=True)
    (tmp_path / "my_conf" / "sweep" / "slow.yaml").write_text(SLOW_PIPELINE)
    args = CTRL_C_ARGS
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtree_pipeline", "-cd=./my_conf", *args],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    calls = tmp_path / "calls.txt"
    deadline = time.time() + 120
    while not calls.exists() or len(calls.read_text().splitlines()) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the pipeline made no progress"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err

    client = MlflowClient(store)
    (pipeline_id,) = {r.data.tags["runtree.pipeline_id"] for r in all_runs(client, "ctrlc")}
    (line,) = [ln for ln in err.splitlines() if ln.startswith("runtree: error: ")] or [err]
    message, _, command = line.partition("; finish with: ")
    assert message.startswith("runtree: error: interrupted during stage 'fit': "), err
    program, *rest = shlex.split(command)
    assert rest == ["-m", "runtree_pipeline", "--config-dir", "./my_conf", *args, f"resume={pipeline_id}"]
    assert program in ("python", os.path.basename(sys.executable), sys.executable)

    again = as_typed_in_a_shell(command, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    runs = all_runs(client, "ctrlc")
    assert {r.data.tags["runtree.pipeline_id"] for r in runs} == {pipeline_id}
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len(_by_level(runs)["subvariant"]) == 8


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A real venv (its `python` a link to the interpreter running the tests), in a directory with a space."""
    where = tmp_path_factory.mktemp("venv") / "a venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    return where


@pytest.mark.parametrize(
    ("started_as", "path", "printed"),
    [
        pytest.param("python", ["venv"], "python", id="python-on-PATH-is-this-one"),
        pytest.param("python3", ["venv"], "python3", id="python3-on-PATH-is-this-one"),
        pytest.param("python", ["base", "venv"], "venv", id="python-on-PATH-is-its-base-interpreter"),
        pytest.param("python", ["empty"], "venv", id="no-python-on-PATH"),
    ],
)
def test_the_printed_interpreter_is_the_one_that_ran(venv, tmp_path, started_as, path, printed):
    """`python -m runtree_pipeline` was printed whatever ran: wrong for `.venv/bin/python -m ...` run without
    activating the venv (the `python` on PATH, even the very file the venv's links to, lacks the venv's packages),
    and useless where PATH has no `python`. Here the venv's interpreter prints the command with a PATH of `venv`
    (its bin directory), `base` (a `python` linked to the same file) or `empty`."""
    dirs = {"venv": venv / "bin", "base": tmp_path / "base", "empty": tmp_path / "empty"}
    dirs["base"].mkdir()
    dirs["empty"].mkdir()
    (dirs["base"] / "python").symlink_to(os.path.realpath(venv / "bin" / "python"))
    assert os.path.realpath(dirs["base"] / "python") == os.path.realpath(venv / "bin" / "python")
    code = (
        "from runtree_pipeline.tracking.provenance import cli_command; "
        "print(cli_command('-c', ['+sweep=x'], config_dir='./my_conf'))"
    )
    env = cli_env(PATH=os.pathsep.join(str(dirs[name]) for name in path))
    proc = subprocess.run(
        [str(venv / "bin" / started_as), "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    program = printed if printed != "venv" else str(venv / "bin" / started_as)
    assert shlex.split(proc.stdout) == [program, "-m", "runtree_pipeline", "--config-dir", "./my_conf", "+sweep=x"]


def test_the_console_script_is_printed_by_the_name_on_path_only_if_that_finds_it(tmp_path, monkeypatch):
    """A `runtree-pipeline` found first on PATH may be another install's, which the pasted line would run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "runtree-pipeline"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    other = tmp_path / "other"
    other.mkdir()
    (other / "runtree-pipeline").symlink_to("/bin/true")
    for path, printed in ((bin_dir, "runtree-pipeline"), (other, str(script)), (tmp_path, str(script))):
        monkeypatch.setenv("PATH", str(path))
        assert shlex.split(cli_command(str(script), ["+sweep=x"])) == [printed, "+sweep=x"]


@pytest.mark.fresh_store
def test_a_target_that_does_not_import_is_our_line_only_not_hydras_log(user_project, store):
    """Hydra logged its own error on stdout, once per stage, with a false cause for a misspelt function ("'mytargets'
    is not a package"); HYDRA_FULL_ERROR=1 still shows it."""
    args = [sys.executable, "-m", "runtree_pipeline", "--config-dir", "./my_conf", "+sweep=mine"]
    args += [f"tracking_uri={store}", "stages.a._target_=mytargets.rowz", "stages.b._target_=nosuchmodule.quad"]
    expected = [
        "runtree: error: stage 'a', key '_target_': cannot import 'mytargets.rowz': module 'mytargets' has no "
        "attribute 'rowz'",
        "runtree: error: stage 'b', key '_target_': cannot import 'nosuchmodule.quad': No module named "
        "'nosuchmodule'",
    ]
    proc = subprocess.run(args, cwd=user_project, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert error_lines(proc) == expected
    assert proc.stdout == ""

    full = subprocess.run(
        args, cwd=user_project, env=cli_env(HYDRA_FULL_ERROR="1"), capture_output=True, text=True, timeout=300
    )
    assert full.returncode == 2
    assert "[hydra.utils][ERROR] - Error getting object at mytargets.rowz" in full.stdout
    assert "[hydra.utils][ERROR] - Error getting object at nosuchmodule.quad" in full.stdout


@pytest.mark.fresh_store
@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["+stages.b.params.nope=1"], id="config-error"),
        pytest.param(["dry_run=true"], id="dry-run"),
        pytest.param(["resume=0123456789ab"], id="resume-of-nothing"),
        pytest.param(["-m", "stages.a.params.seed=1,2", "+stages.b.params.nope=1"], id="multirun-config-error"),
        pytest.param(["-m", "+sweep=mine,nosuch"], id="multirun-unknown-sweep"),
    ],
)
def test_a_job_that_records_nothing_leaves_the_working_directory_as_it_was(run_cli, user_conf, tmp_path, args):
    """Hydra makes `outputs/DATE/TIME/` (`multirun/...`) before the job starts; nothing ran, so none of it stays."""
    where = tmp_path / "empty"
    where.mkdir()
    if "+sweep=mine,nosuch" not in args:
        args = [*args[:1], "+sweep=mine", *args[1:]] if args[0] == "-m" else ["+sweep=mine", *args]
    proc = run_cli("--config-dir", str(user_conf), *args, cwd=where)
    assert proc.returncode == (0 if "dry_run=true" in args else 2), proc.stdout + proc.stderr
    assert sorted(p.name for p in where.iterdir()) == []


@pytest.mark.fresh_store
def test_output_directories_of_earlier_runs_and_of_a_run_that_recorded_something_stay(
    run_cli, user_conf, tmp_path, empty_store
):
    copy_of(empty_store, tmp_path, "mlflow.db")  # the default store, there already: creating it costs 3 s
    proc = run_cli("--config-dir", str(user_conf), "+sweep=mine", "plots=false")
    assert proc.returncode == 0, proc.stderr
    (summary,) = tmp_path.glob("outputs/*/*/summary.json")
    proc = run_cli("--config-dir", str(user_conf), "+sweep=mine", "+stages.b.params.nope=1")
    assert proc.returncode == 2
    assert [p.relative_to(tmp_path) for p in tmp_path.glob("outputs/*/*")] == [summary.parent.relative_to(tmp_path)]


def test_a_job_that_records_nothing_leaves_alone_the_output_directory_another_launch_is_using(user_project, store):
    """Two launches started in the same second share `outputs/DATE/TIME/` (here both are given the same
    `hydra.run.dir`). The one interrupted before it recorded anything removed it, with the other's `.hydra/` and
    log, and the other then failed to write its summary there."""
    (user_project / "slowmod.py").write_text(SLOW_IMPORT)
    (user_project / "my_conf" / "sweep" / "slow.yaml").write_text(SLOW_PIPELINE)
    common = [sys.executable, "-m", "runtree_pipeline", "--config-dir", "./my_conf", "hydra.run.dir=shared"]
    common += [f"tracking_uri={store}", "progress=false", "plots=false"]

    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [*common, *args],
            cwd=user_project,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_for(path: Path, proc: subprocess.Popen) -> None:
        deadline = time.time() + 120
        while not path.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline
            time.sleep(0.05)

    first = start("+sweep=mine", "stages.a._target_=slowmod.f", "~stages.a.params", "stages.b.depends_on=[]")
    wait_for(user_project / "importing", first)  # its plan is being built: nothing recorded yet
    second = start("+sweep=slow", "stages.fit.params.sleep=0.25")  # 2 s of leaves after `calls.txt`
    wait_for(user_project / "calls.txt", second)
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 130, out + err
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, out + err
    shared = user_project / "shared"
    assert (shared / "summary.json").is_file()
    assert (shared / ".hydra" / "config.yaml").is_file()


def test_after_the_command_the_store_file_alone_holds_every_run(on_the_default_store):
    """The CLI ends without the interpreter's teardown, but closes its store connections first: sqlite folds its
    write-ahead log into the file, so a copy of `mlflow.db` alone is whole, and deleting it leaves nothing stale."""
    _, _, wal_left, copy = on_the_default_store
    assert not wal_left
    assert len(all_runs(MlflowClient(f"sqlite:///{copy}"), "try2")) == 1 + 5 + 5 * 2
