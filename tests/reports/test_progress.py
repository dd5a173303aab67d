"""What a run tells its user while and after it runs: a handful of progress lines in a non-terminal run, the
leaf counts of every execution (new or resumed) in the summary and summary.json, and how to reproduce it."""

from __future__ import annotations

import json
import logging
import subprocess

from runtree_pipeline import build_plan, run_plan
from runtree_pipeline.reports.progress import LogProgress
from runtree_pipeline.reports.summary import render, write_json
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
    assert "reused" not in lines[-1]
    assert "tuning       FINISHED  206 runs  executed=200 reused=0 redone=0 failed=0" in proc.stdout


def _config(store: str, marker_dir: str) -> dict:
    return {
        "tracking_uri": store,
        "experiment": "counts",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {  # x=1 and x=2 fail the first time only
                "_target_": "tests.targets.fails_once",
                "params": {"marker_dir": marker_dir, "fail_on": [1, 2]},
                "subvariants": {"params": {"x": "range(0, 4)"}},
            },
            "always": {  # x=0 fails every time
                "_target_": "tests.targets.flaky",
                "params": {"fail_on": [0]},
                "subvariants": {"params": {"x": "range(0, 2)"}},
            },
            "after": {"_target_": "tests.targets.quad", "depends_on": ["fit"], "params": {"x": "${best:fit.params.x}"}},
        },
    }


def _counts(result) -> dict[str, tuple[int, int, int, int]]:
    stages = result.to_dict()["stages"]
    return {name: tuple(s[k] for k in ("executed", "reused", "redone", "failed")) for name, s in stages.items()}


def test_every_execution_reports_what_it_executed_reused_and_redid(store, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="runtree_pipeline.progress")
    config = _config(store, str(tmp_path / "markers"))
    first = run_plan(build_plan(config), progress=LogProgress(), plots=False)
    assert _counts(first) == {"fit": (4, 0, 0, 2), "always": (2, 0, 0, 1), "after": (1, 0, 0, 0)}
    assert "stage fit: started, 4 leaves to run" in caplog.messages
    assert "stage after: started, 1 leaf to run" in caplog.messages

    caplog.clear()
    resumed = run_plan(build_plan({**config, "resume": "last"}), progress=LogProgress(), plots=False)
    # fit: 2 reused, 2 failed before and now redone; always: x=0 redone and failed again (counted in both);
    # after: fit's best moved to x=1, so its input changed and it ran in a new run.
    assert _counts(resumed) == {"fit": (0, 2, 2, 0), "always": (0, 1, 1, 1), "after": (1, 0, 0, 0)}
    facts = resumed.to_dict()["stages"]
    assert all(type(facts[s][k]) is int for s in facts for k in ("executed", "reused", "redone", "failed"))
    messages = caplog.messages
    assert "stage fit: resumed, 4 leaves; those that finished before are reused, not run" in messages
    assert any(m.startswith("stage fit: FINISHED — 4/4 leaves (2 reused, 2 redone), best loss=0,") for m in messages)
    assert any(m.startswith("stage always: FINISHED — 2/2 leaves (1 reused, 1 redone), 1 failed,") for m in messages)
    assert "stage after: started, 1 leaf to run" in messages

    text = render(resumed, build_plan(config), where="here")
    assert "  fit          FINISHED    5 runs  executed=0 reused=2 redone=2 failed=0" in text.splitlines()
    assert "  always       FINISHED    3 runs  executed=0 reused=1 redone=1 failed=1" in text.splitlines()
    assert "  after        FINISHED    1 run   executed=1 reused=0 redone=0 failed=0" in text.splitlines()
    on_disk = json.loads(write_json(resumed, tmp_path / "summary.json").read_text())
    assert {k: on_disk["stages"]["always"][k] for k in ("executed", "reused", "redone", "failed")} == {
        "executed": 0,
        "reused": 1,
        "redone": 1,
        "failed": 1,
    }

    again = run_plan(build_plan({**config, "resume": "last"}), plots=False)
    assert _counts(again) == {"fit": (0, 4, 0, 0), "always": (0, 1, 1, 1), "after": (0, 1, 0, 0)}


def test_stage_runs_record_command_directory_and_git_commit(run_cli, store, client, tmp_path, monkeypatch):
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "train.py").write_text("# the user's code\n")
    subprocess.run([*git, "add", "train.py"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "code"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()

    proc = run_cli(
        "+sweep=tutorial", f"tracking_uri={store}", "stages.tuning.subvariants.n=2", "plots=false", "progress=false"
    )
    assert proc.returncode == 0, proc.stderr
    assert _progress_lines(proc.stdout + proc.stderr) == []
    (stage,) = [r for r in all_runs(client, "tutorial") if r.data.tags["runtree.level"] == "stage"]
    tags = stage.data.tags
    assert tags["runtree.command"] == (
        f"python -m runtree_pipeline +sweep=tutorial tracking_uri={store} stages.tuning.subvariants.n=2 plots=false"
    )
    assert tags["runtree.cwd"] == str(tmp_path)
    assert tags["mlflow.source.git.commit"] == head
    assert tags["runtree.git_dirty"] == "false"
    assert tags["mlflow.source.name"] == "runtree_pipeline"

    (tmp_path / "train.py").write_text("# edited\n")
    monkeypatch.chdir(tmp_path)
    config = {
        "tracking_uri": store,
        "experiment": "api",
        "stages": {"one": {"_target_": "tests.targets.quad", "params": {"x": 1}}},
    }
    run_plan(build_plan(config), plots=False)
    (newest,) = all_runs(client, "api")
    assert newest.data.tags["runtree.git_dirty"] == "true"
    assert newest.data.tags["runtree.cwd"] == str(tmp_path)
    assert "runtree.command" not in newest.data.tags
