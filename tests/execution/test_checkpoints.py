"""Checkpoints on the leaf's own run (`save_checkpoint`, `last_checkpoint`), against a real sqlite store: a retry,
a resume after kill -9 and a program started again all continue from the newest one, in the same run, with each
step in the metric history once."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from runtree_pipeline import build_plan, last_checkpoint, run_plan, save_checkpoint
from runtree_pipeline.execution.executors import LocalExecutor, ProcessExecutor
from tests.conftest import REPO, all_runs, cli_env

EXECUTORS = [
    pytest.param(LocalExecutor, id="local"),
    pytest.param(lambda: ProcessExecutor(workers=2), id="processes"),
]


def config(store: str, experiment: str, params: dict, limits: dict | None = None) -> dict:
    stage = {"_target_": "tests.targets.resumable", "params": params, "limits": limits or {}}
    return {"tracking_uri": store, "experiment": experiment, "objective": {"metric": "loss"}, "stages": {"fit": stage}}


def checkpoints(client, run_id: str) -> list[str]:
    return sorted(item.path for item in client.list_artifacts(run_id, "checkpoints"))


def steps(client, run_id: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, "loss")]


@pytest.mark.parametrize("make", EXECUTORS)
def test_a_retry_continues_from_the_newest_checkpoint_with_each_step_once(store, client, tmp_path, make):
    marker = tmp_path / "starts"
    params = {"x": 1.0, "epochs": 8, "marker": str(marker), "fail_at": 5}
    result = run_plan(build_plan(config(store, "retry", params, {"retries": 1})), executor=make(), plots=False)

    leaf = result.stages["fit"].best
    assert marker.read_text().split() == ["0", "5"], "the second attempt started after step 4's checkpoint"
    assert leaf.metrics["state"] == 8.0, "no step was trained twice"
    assert steps(client, leaf.run_id) == list(range(8))
    (run,) = all_runs(client, "retry")
    assert run.data.tags["runtree.attempts"] == "2"
    assert run.data.tags["runtree.checkpoint_step"] == "7"
    assert checkpoints(client, leaf.run_id) == ["checkpoints/step-6", "checkpoints/step-7"]


def test_keep_checkpoints_keeps_that_many_of_the_newest(store, client, tmp_path):
    params = {"x": 1.0, "epochs": 6, "marker": str(tmp_path / "starts")}
    limits = {"keep_checkpoints": 3}
    result = run_plan(build_plan(config(store, "keep", params, limits)), executor=LocalExecutor(), plots=False)

    run_id = result.stages["fit"].best.run_id
    assert checkpoints(client, run_id) == ["checkpoints/step-3", "checkpoints/step-4", "checkpoints/step-5"]


def test_a_resume_after_kill_9_continues_in_the_same_run_from_step_4(store, client, tmp_path):
    marker = tmp_path / "starts"
    params = {"x": 1.0, "epochs": 8, "marker": str(marker), "die_at": 4}  # after reporting step 4
    script = (
        "import sys\n"
        "from runtree_pipeline import build_plan, run_plan\n"
        f"config = {config(store, 'killed', params)!r}\n"
        "if len(sys.argv) > 1:\n"
        "    config['resume'] = 'last'\n"
        "run_plan(build_plan(config), plots=False)\n"
    )
    first = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=cli_env(), capture_output=True, timeout=300)
    assert first.returncode == -9, first.stderr
    (killed,) = all_runs(client, "killed")  # a stage without sweeps is its own leaf
    assert killed.data.tags["runtree.checkpoint_step"] == "3"

    second = subprocess.run([sys.executable, "-c", script, "resume"], cwd=REPO, env=cli_env(), capture_output=True)
    assert second.returncode == 0, second.stderr

    assert marker.read_text().split() == ["0", "4"], "the resumed leaf started at step 4, after step 3's checkpoint"
    leaves = all_runs(client, "killed")
    assert [r.info.run_id for r in leaves] == [killed.info.run_id]
    assert leaves[0].info.status == "FINISHED"
    assert steps(client, killed.info.run_id) == list(range(8))
    assert leaves[0].data.metrics["state"] == 8.0


def test_a_command_leaf_continues_from_its_checkpoint(store, client, tmp_path):
    program = tmp_path / "train.py"
    program.write_text(
        "import os, sys, tempfile\n"
        "from pathlib import Path\n"
        "from runtree_pipeline import last_checkpoint, report, save_checkpoint\n"
        "marker = Path(sys.argv[1])\n"
        "ckpt = last_checkpoint()\n"
        "start = ckpt.step + 1 if ckpt else 0\n"
        "state = int((ckpt.path / 'n').read_text()) if ckpt else 0\n"
        "with open(marker, 'a') as fh:\n"
        "    fh.write(f'{start}\\n')\n"
        "for epoch in range(start, 5):\n"
        "    if epoch == 3 and not marker.with_suffix('.failed').exists():\n"
        "        marker.with_suffix('.failed').touch()\n"
        "        sys.exit('lost at step 3')\n"
        "    state += 1\n"
        "    d = Path(tempfile.mkdtemp())\n"
        "    (d / 'n').write_text(str(state))\n"
        "    save_checkpoint(d, step=epoch)\n"
        "    report(epoch, loss=1 / state)\n"
    )
    marker = tmp_path / "starts"
    stage = {"command": ["python", str(program), str(marker)], "command_args": "none", "limits": {"retries": 1}}
    cfg = {"tracking_uri": store, "experiment": "program", "objective": {"metric": "loss"}, "stages": {"fit": stage}}
    result = run_plan(build_plan(cfg), executor=ProcessExecutor(workers=1), plots=False)

    leaf = result.stages["fit"].best
    assert marker.read_text().split() == ["0", "3"]
    assert leaf.metrics["loss"] == pytest.approx(1 / 5)
    assert steps(client, leaf.run_id) == list(range(5))


def test_outside_a_leaf_both_say_so(tmp_path):
    with pytest.raises(RuntimeError, match=r"save_checkpoint\(\) was called outside a leaf"):
        save_checkpoint(tmp_path, step=0)
    with pytest.raises(RuntimeError, match=r"last_checkpoint\(\) was called outside a leaf"):
        last_checkpoint()


def test_keep_checkpoints_must_be_a_positive_integer(store):
    from runtree_pipeline import ConfigErrors

    with pytest.raises(ConfigErrors, match=r"stage 'fit', key 'limits.keep_checkpoints': must be a positive integer"):
        build_plan(config(store, "bad", {"x": 1, "epochs": 1, "marker": "m"}, {"keep_checkpoints": 0}))


def test_a_leaf_resumed_from_its_checkpoint_tells_the_new_study_its_whole_curve(store, client, tmp_path):
    """After kill -9 at step 4 and `resume=last`, the pruner of the new execution has heard steps 0-4 from the
    run's history as well as 5-7 from the continued leaf: it judges the leaf on its whole curve."""
    marker = tmp_path / "starts"
    params = {"epochs": 8, "marker": str(marker), "die_at": 4}
    cfg = config(store, "pruned_resume", params)
    never = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 100}
    cfg["stages"]["fit"]["subvariants"] = {"params": {"x": "choice(1.0)"}, "pruner": never}
    script = (
        "import sys\n"
        "from runtree_pipeline import build_plan, run_plan\n"
        f"config = {cfg!r}\n"
        "if len(sys.argv) > 1:\n"
        "    config['resume'] = 'last'\n"
        "run_plan(build_plan(config), plots=False)\n"
    )
    first = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=cli_env(), capture_output=True, timeout=300)
    assert first.returncode == -9, first.stderr
    second = subprocess.run([sys.executable, "-c", script, "resume"], cwd=REPO, env=cli_env(), capture_output=True)
    assert second.returncode == 0, second.stderr

    (leaf,) = [r for r in all_runs(client, "pruned_resume") if r.data.tags["runtree.level"] != "stage"]
    assert marker.read_text().split() == ["0", "4"]
    assert [step for step, _ in json.loads(leaf.data.tags["runtree.reported"])] == list(range(8))


def test_the_cache_never_hands_a_new_execution_another_runs_half_trained_checkpoint(store, client, tmp_path):
    marker = tmp_path / "starts"
    cfg = {**config(store, "cached", {"x": 1.0, "epochs": 6, "marker": str(marker), "die_at": 3}), "cache": True}
    script = f"from runtree_pipeline import build_plan, run_plan\nrun_plan(build_plan({cfg!r}), plots=False)\n"
    first = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=cli_env(), capture_output=True, timeout=300)
    assert first.returncode == -9, first.stderr
    (killed,) = all_runs(client, "cached")

    result = run_plan(build_plan(cfg), executor=LocalExecutor(), plots=False)  # a new execution, not a resume

    assert marker.read_text().split() == ["0", "0"], "it trained from scratch, in a run of its own"
    assert result.stages["fit"].best.run_id != killed.info.run_id
    assert steps(client, result.stages["fit"].best.run_id) == list(range(6))
