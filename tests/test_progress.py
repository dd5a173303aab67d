"""Progress output in a non-terminal run stays a handful of lines; the stage runs record how to reproduce them."""

from __future__ import annotations

import subprocess

from tests.conftest import all_runs


def _progress_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "[runtree_pipeline.progress]" in line]


def test_a_200_leaf_sweep_logs_a_bounded_number_of_progress_lines(run_cli, store):
    proc = run_cli("+sweep=tutorial", f"tracking_uri={store}", "stages.tuning.subvariants.n=40", "plots=false")
    assert proc.returncode == 0, proc.stderr
    lines = _progress_lines(proc.stdout + proc.stderr)
    assert 2 <= len(lines) <= 6, lines
    assert "stage tuning: started, 200 leaves to run" in lines[0]
    assert "stage tuning: FINISHED — 200/200 leaves" in lines[-1] and "best metric1=" in lines[-1]


def test_progress_off(run_cli, store):
    proc = run_cli("+sweep=tutorial", f"tracking_uri={store}", "stages.tuning.subvariants.n=2", "progress=false", "plots=false")
    assert proc.returncode == 0, proc.stderr
    assert _progress_lines(proc.stdout + proc.stderr) == []


def test_stage_runs_record_command_and_git_commit(run_cli, store, client, tmp_path):
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "train.py").write_text("# the user's code\n")
    subprocess.run([*git, "add", "train.py"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "code"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()

    proc = run_cli("+sweep=tutorial", f"tracking_uri={store}", "stages.tuning.subvariants.n=2", "plots=false")
    assert proc.returncode == 0, proc.stderr
    (stage,) = [r for r in all_runs(client, "tutorial") if r.data.tags["runtree.level"] == "stage"]
    tags = stage.data.tags
    assert tags["runtree.command"] == (
        f"python -m runtree_pipeline +sweep=tutorial tracking_uri={store} stages.tuning.subvariants.n=2 plots=false"
    )
    assert tags["mlflow.source.git.commit"] == head
    assert tags["runtree.git_dirty"] == "false"
    assert tags["mlflow.source.name"] == "runtree_pipeline"

    (tmp_path / "train.py").write_text("# edited\n")
    assert run_cli("+sweep=tutorial", f"tracking_uri={store}", "stages.tuning.subvariants.n=2").returncode == 0
    newest = max(
        (r for r in all_runs(client, "tutorial") if r.data.tags["runtree.level"] == "stage"), key=lambda r: r.info.start_time
    )
    assert newest.data.tags["runtree.git_dirty"] == "true"
