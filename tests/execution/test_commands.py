"""Programs as leaves (`command:`), against a real sqlite store: unchanged scripts log onto their leaf runs, their
results and exit codes decide the leaf, and their processes never outlive the leaf, on the local and process
executors. The programs are in tests/programs/."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from runtree_pipeline import build_plan, run_plan
from runtree_pipeline.execution.executors import LocalExecutor, ProcessExecutor
from tests.conftest import all_runs

PROGRAMS = Path(__file__).resolve().parent.parent / "programs"
APP = f"python {PROGRAMS / 'hydra_app.py'}"
FLAGS = f"python {PROGRAMS / 'flags.py'}"

EXECUTORS = [
    pytest.param(LocalExecutor, id="local"),
    pytest.param(lambda: ProcessExecutor(workers=2), id="processes"),
]


def pipeline(store: str, experiment: str, stage: dict, **top) -> dict:
    return {
        "tracking_uri": store,
        "experiment": experiment,
        "objective": {"metric": "loss"},
        "stages": {"fit": stage},
        **top,
    }


def run(config: dict, executor, tmp_path: Path):
    return run_plan(build_plan(config), executor=executor, plots=False, output_dir=str(tmp_path / "out"))


def leaves(client, experiment: str) -> dict:
    """By their params as the run names show them (`fit/x=2`)."""
    runs = all_runs(client, experiment)
    return {r.info.run_name: r for r in runs if r.data.tags["runtree.level"] != "stage"}


def text_artifact(client, run_id: str, path: str) -> str:
    return Path(client.download_artifacts(run_id, path)).read_text()


def gone(pid: int) -> bool:
    """Whether `pid` is dead (a zombie that no one reaped counts as dead: it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("make", EXECUTORS)
def test_an_unchanged_hydra_app_logs_onto_its_leaf_and_the_best_flows_up(store, client, tmp_path, make):
    """Each app gets its own Hydra output directory in its leaf's, also when two start together (two workers)."""
    stage = {"command": APP, "params": {"epochs": 3}, "subvariants": {"params": {"x": "choice(3.5, 2.0)"}}}
    result = run(pipeline(store, "app", stage), make(), tmp_path)

    assert result.stages["fit"].status == "FINISHED"
    assert result.stages["fit"].best.params["x"] == 2.0
    runs = leaves(client, "app")
    assert len(all_runs(client, "app")) == 1 + 2, "the app's start_run() continued its leaf, and made no run"
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    best = runs["fit/x=2"]
    history = client.get_metric_history(best.info.run_id, "loss")
    assert [(m.step, round(m.value, 4)) for m in history] == [(0, 1.0), (1, 0.5), (2, 0.3333)]
    assert best.data.metrics["loss"] == pytest.approx(1 / 3)
    assert best.data.params["x"] == "2.0"
    assert "training x=2.0" in text_artifact(client, best.info.run_id, "logs/stdout.txt")

    dirs = {r.data.tags["hydra_dir"] for r in runs.values()}
    assert len(dirs) == 2
    for d in dirs:
        assert Path(d).is_relative_to(tmp_path / "out" / "leaves" / "fit")
        assert (Path(d) / ".hydra" / "overrides.yaml").exists()


def test_an_argparse_script_gets_flags_and_its_result_file_is_the_leafs_result(store, client, tmp_path):
    stage = {
        "command": FLAGS,
        "command_args": "flags",
        "params": {"opt": {"name": "adam"}},
        "subvariants": {"params": {"x": "choice(0.0, 2.5)"}},
    }
    result = run(pipeline(store, "flags", stage), LocalExecutor(), tmp_path)

    best = result.stages["fit"].best
    assert best.params == {"opt": {"name": "adam"}, "x": 2.5}
    assert best.metrics["loss"] == 0.25
    assert best.outputs["name"] == "adam"
    assert best.outputs["cwd"] == os.getcwd(), "by default a program runs where the pipeline was started"


def test_a_shell_script_writes_runtree_result_and_an_artifact(store, client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stage = {"command": [str(PROGRAMS / "result.sh"), "first"], "command_args": "none", "params": {"a": 1}}
    result = run(pipeline(store, "shell", stage), LocalExecutor(), tmp_path)

    leaf = result.stages["fit"].best
    assert leaf.metrics == {"loss": 1.5}
    assert leaf.outputs["tool"] == "sh"
    assert leaf.artifacts == ("notes",)
    assert text_artifact(client, leaf.run_id, "outputs/notes/notes.txt") == "notes for first\n"
    assert text_artifact(client, leaf.run_id, "logs/stdout.txt") == 'params: {"a": 1}\n'
    assert text_artifact(client, leaf.run_id, "logs/stderr.txt") == "a warning\n"


@pytest.mark.parametrize("make", EXECUTORS)
def test_a_failing_exit_code_fails_the_leaf_with_the_programs_last_words(store, client, tmp_path, make):
    stage = {
        "command": FLAGS,
        "command_args": "flags",
        "subvariants": {"params": {"x": "choice(1.0, 4.0)", "exit-code": "choice(0, 3)"}},
    }
    result = run(pipeline(store, "exits", stage), make(), tmp_path)

    runs = leaves(client, "exits")
    failed = {n: r for n, r in runs.items() if r.info.status == "FAILED"}
    assert sorted(failed) == ["fit/x=1,exit-code=3", "fit/x=4,exit-code=3"]
    assert failed["fit/x=4,exit-code=3"].data.tags["runtree.error"] == "exit code 3: boom: x=4.0 is bad"
    assert result.stages["fit"].best.params == {"x": 1.0, "exit-code": 0}
    stderr = text_artifact(client, failed["fit/x=4,exit-code=3"].info.run_id, "logs/stderr.txt")
    assert stderr == "boom: x=4.0 is bad\n\n"


def test_programs_with_their_own_workdir_never_collide_on_a_relative_result_file(store, client, tmp_path):
    """Two at a time, each writing `metrics.json` where it runs: each leaf reads its own."""
    writer = tmp_path / "writer.py"
    writer.write_text(
        "import json, os, sys, time\n"
        "x = float(sys.argv[1].split('=')[1])\n"
        "time.sleep(0.5)\n"
        "json.dump({'loss': x * 10, 'cwd': os.getcwd(), 'launch': os.environ['RUNTREE_LAUNCH_DIR']}, "
        "open('metrics.json', 'w'))\n"
    )
    stage = {
        "command": f"python {writer}",
        "workdir": "leaf",
        "result_file": "metrics.json",
        "subvariants": {"params": {"x": "choice(1, 2, 3, 4)"}},
    }
    result = run(pipeline(store, "workdirs", stage), ProcessExecutor(workers=2), tmp_path)

    runs = leaves(client, "workdirs")
    assert {r.data.params["x"]: r.data.metrics["loss"] for r in runs.values()} == {"1": 10, "2": 20, "3": 30, "4": 40}
    cwds = {leaf.outputs["cwd"] for leaf in result.stages["fit"].node.leaves}
    assert len(cwds) == 4
    for cwd in cwds:
        assert Path(cwd).is_relative_to(tmp_path / "out" / "leaves" / "fit")
        assert (Path(cwd) / "metrics.json").exists(), "a leaf's directory is kept after the run"
    assert {leaf.outputs["launch"] for leaf in result.stages["fit"].node.leaves} == {os.getcwd()}


def test_a_timeout_on_the_local_executor_stops_the_programs_whole_group(store, client, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    stage = {
        "command": ["python", str(PROGRAMS / "sleeper.py"), str(pids)],
        "command_args": "none",
        "limits": {"timeout_s": 2},
    }
    began = time.monotonic()
    result = run(pipeline(store, "timeout", stage), LocalExecutor(), tmp_path)

    assert time.monotonic() - began < 30
    assert result.stages["fit"].status == "FAILED"
    (leaf,) = all_runs(client, "timeout")
    assert leaf.data.tags["runtree.error"].startswith("Timeout: the program ran longer than limits.timeout_s=2 s")
    (noted,) = pids.iterdir()
    program, child = map(int, noted.read_text().split())
    assert gone(program) and gone(child), "the program and the child it started are both stopped"


def test_a_program_that_reports_is_pruned_and_ends_killed_whatever_its_exit_code(store, client, tmp_path):
    stage = {
        "command": APP,
        "params": {"epochs": 3, "report": True},
        "subvariants": {
            "sampler": "grid",
            "params": {"x": "choice(2.0, 5.0, 6.0)"},
            "pruner": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1},
        },
    }
    result = run(pipeline(store, "prune", stage), LocalExecutor(), tmp_path)

    runs = leaves(client, "prune")
    pruned = {n for n, r in runs.items() if r.data.tags.get("runtree.pruned") == "true"}
    assert pruned == {"fit/x=5", "fit/x=6"}
    assert {runs[n].info.status for n in pruned} == {"KILLED"}
    assert result.stages["fit"].counts["pruned"] == 2
    assert result.stages["fit"].best.params["x"] == 2.0
    assert len(client.get_metric_history(runs["fit/x=5"].info.run_id, "loss")) == 1


def test_the_program_sees_its_leaf_in_its_environment(store, client, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json, os\n"
        "keys = ['MLFLOW_RUN_ID', 'MLFLOW_EXPERIMENT_ID', 'MLFLOW_TRACKING_URI', 'RUNTREE_PARAMS',\n"
        "        'RUNTREE_LAUNCH_DIR']\n"
        "json.dump({'loss': 0, **{k.lower(): os.environ[k] for k in keys}}, open(os.environ['RUNTREE_RESULT'], 'w'))\n"
    )
    stage = {"command": f"{sys.executable} {probe}", "params": {"lr": 0.1, "net": {"width": 4}}}
    result = run(pipeline(store, "env", stage), ProcessExecutor(workers=1), tmp_path)

    leaf = result.stages["fit"].best
    assert leaf.outputs["mlflow_run_id"] == leaf.run_id
    assert leaf.outputs["mlflow_tracking_uri"] == store
    assert json.loads(leaf.outputs["runtree_params"]) == {"lr": 0.1, "net": {"width": 4}}
    assert leaf.outputs["runtree_launch_dir"] == os.getcwd()


def test_a_running_programs_output_is_on_its_run_as_it_comes(store, client, tmp_path):
    go_on = tmp_path / "go-on"
    waiter = tmp_path / "waiter.py"
    waiter.write_text(
        "import json, os, sys, time\n"
        "print('epoch 0 done')\n"
        f"while not os.path.exists({str(go_on)!r}):\n"
        "    time.sleep(0.05)\n"
        "print('all done')\n"
        "json.dump({'loss': 1}, open(os.environ['RUNTREE_RESULT'], 'w'))\n"
    )
    stage = {"command": f"python {waiter}", "command_args": "none"}
    pipeline_done = threading.Event()
    thread = threading.Thread(
        target=lambda: (run(pipeline(store, "live", stage), ProcessExecutor(workers=1), tmp_path), pipeline_done.set())
    )
    thread.start()
    try:
        deadline, seen = time.monotonic() + 60, ""
        while time.monotonic() < deadline and "epoch 0 done" not in seen:
            time.sleep(0.1)
            runs = all_runs(client, "live")
            if runs and runs[0].info.status == "RUNNING":
                with contextlib.suppress(Exception):
                    seen = text_artifact(client, runs[0].info.run_id, "logs/stdout.txt")
        assert seen == "epoch 0 done\n", "the first line is on the run while the program still runs"
        assert not pipeline_done.is_set()
    finally:
        go_on.touch()
        thread.join(timeout=60)
    (leaf,) = all_runs(client, "live")
    assert leaf.info.status == "FINISHED"
    assert text_artifact(client, leaf.info.run_id, "logs/stdout.txt") == "epoch 0 done\nall done\n"
