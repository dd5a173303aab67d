"""`runtree tree | best | list` against stores the real pipeline produced, content first, exit codes second."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import all_runs, cli_env


def runtree(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runtree_pipeline.console", *args], capture_output=True, text=True, env=cli_env(), cwd=cwd
    )


@pytest.fixture
def tutorial(run_cli, store, client, tmp_path):
    proc = run_cli("+sweep=tutorial", f"tracking_uri={store}", "stages.tuning.subvariants.n=6")
    assert proc.returncode == 0, proc.stderr
    (summary,) = tmp_path.glob("outputs/*/*/summary.json")
    return json.loads(summary.read_text())


def test_tree_shows_levels_best_marks_and_collapses(tutorial, store, client):
    proc = runtree("tree", "--tracking-uri", store, "--limit", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"pipeline {tutorial['pipeline_id']}")
    assert lines[1].startswith("tuning  FINISHED  best_metric1=")
    variants = [line for line in lines if re.match(r"^[├└]── (★ )?test_\d", line)]
    assert len(variants) == 2
    assert variants[0].startswith("├── ★ test_")
    assert lines[-1] == "└── … 3 more"
    assert sum("… 4 more" in line for line in lines) == 2
    best = tutorial["stages"]["tuning"]["best"]
    marked = [line for line in lines if line.startswith("│   ├── ★")]
    assert marked and f"metric1={best['metrics']['metric1']:.4g}" in marked[0]


def test_tree_highlights_failures(run_cli, store, tmp_path):
    conf = tmp_path / "conf" / "sweep"
    conf.mkdir(parents=True)
    (conf / "flaky.yaml").write_text(
        "# @package _global_\nobjective: {metric: loss}\nstages:\n  fit:\n    _target_: tests.targets.flaky\n"
        "    params: {fail_on: [1]}\n    subvariants:\n      params: {x: 'range(0, 3)'}\n"
    )
    assert run_cli("--config-dir", str(conf.parent), "+sweep=flaky", f"tracking_uri={store}").returncode == 0
    proc = runtree("tree", "--tracking-uri", store, "--experiment", "flaky")
    assert proc.returncode == 0, proc.stderr
    (failed,) = [line for line in proc.stdout.splitlines() if "✗" in line]
    assert "x=1" in failed and "✗ FAILED" in failed and "RuntimeError: boom at x=1" in failed
    assert proc.stdout.splitlines()[-1].startswith("└── x=1")


def test_best_prints_the_leaf_and_commands_that_reproduce_it(tutorial, store, client, run_cli, tmp_path):
    proc = runtree("best", "tuning", "--tracking-uri", store, "--experiment", "tutorial")
    assert proc.returncode == 0, proc.stderr
    best = tutorial["stages"]["tuning"]["best"]
    text = proc.stdout
    assert f"run      {best['run_id']}" in text
    assert f"param1={best['params']['param1']}" in text and f"metric1={best['metrics']['metric1']:.4g}" in text
    lines = text.splitlines()
    whole = lines[lines.index("reproduce the whole pipeline (same seeds, same best):") + 1].strip()
    single = lines[lines.index("reproduce this run only:") + 1].strip()
    assert whole == f"python -m runtree_pipeline +sweep=tutorial tracking_uri={store} stages.tuning.subvariants.n=6"

    for command in (whole, single):
        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "runtree_pipeline"]
        again = run_cli(*argv[3:])
        assert again.returncode == 0, again.stderr
    stages = sorted(
        (r for r in all_runs(client, "tutorial") if r.data.tags["runtree.level"] == "stage"),
        key=lambda r: r.info.start_time,
    )
    assert len(stages) == 3
    original, whole_rerun, single_rerun = stages
    for stage in (original, whole_rerun):
        assert stage.data.metrics["best_metric1"] == best["metrics"]["metric1"]
        assert {k[5:]: v for k, v in stage.data.tags.items() if k.startswith("best.")} == {
            k: str(v) for k, v in best["params"].items()
        }
    assert single_rerun.data.metrics["metric1"] == best["metrics"]["metric1"]
    assert single_rerun.data.params == {k: str(v) for k, v in best["params"].items()}


def test_list_shows_each_execution(tutorial, store, run_cli):
    assert run_cli("+sweep=tutorial", f"tracking_uri={store}", "stages.tuning.subvariants.n=2").returncode == 0
    proc = runtree("list", "--tracking-uri", store)
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.splitlines()
    assert rows[0].split() == ["pipeline", "started", "experiment", "status", "best", "per", "stage"]
    assert len(rows) == 3
    assert rows[2].startswith(tutorial["pipeline_id"])
    assert "tutorial" in rows[2] and "FINISHED" in rows[2]
    assert f"tuning={tutorial['stages']['tuning']['best']['metrics']['metric1']:.4g}" in rows[2]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param(["tree", "--experiment", "nope"], 2, "no experiment 'nope'", id="unknown-experiment"),
        pytest.param(["tree", "--pipeline", "0123456789ab"], 2, "no pipeline '0123456789ab'", id="unknown-pipeline"),
        pytest.param(["best", "nostage"], 2, "no stage 'nostage' in this pipeline (it has: tuning)", id="unknown-stage"),
    ],
)
def test_clear_errors(tutorial, store, args, code, message):
    proc = runtree(*args, "--tracking-uri", store)
    assert proc.returncode == code
    assert proc.stderr.strip() == f"runtree: error: {proc.stderr.strip().split('error: ', 1)[1]}"
    assert message in proc.stderr


def test_missing_or_unreachable_store(tmp_path):
    missing = runtree("list", "--tracking-uri", f"sqlite:///{tmp_path / 'nothing.db'}")
    assert missing.returncode == 3 and "no tracking store at" in missing.stderr
    assert not (tmp_path / "nothing.db").exists()
    down = runtree("tree", "--tracking-uri", "http://127.0.0.1:9")
    assert down.returncode == 3 and "is not usable" in down.stderr


@pytest.mark.parametrize("command", [[], ["tree"], ["best"], ["list"]])
def test_help_everywhere(command):
    proc = runtree(*command, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: runtree")


def test_tree_against_a_server(mlflow_server, run_cli):
    assert run_cli("+sweep=tutorial", f"tracking_uri={mlflow_server}", "experiment=console_http", "stages.tuning.subvariants.n=2").returncode == 0
    proc = runtree("tree", "--tracking-uri", mlflow_server, "--experiment", "console_http")
    assert proc.returncode == 0, proc.stderr
    assert len([line for line in proc.stdout.splitlines() if "test_" in line]) == 5
