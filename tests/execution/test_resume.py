"""Resume, de-duplication and failure isolation against a real sqlite store.

Through the Python API, except where the process is the subject: a pipeline killed or interrupted as a process,
and the exit code of a `resume=` that names nothing.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from runtree_pipeline import ConfigErrors, run_pipeline
from runtree_pipeline.tracking.mlflow_store import filter_eq
from tests.conftest import all_runs, cli_env


def resumable(tmp_path, store: str, *, xs: str = "range(0, 4)", sleep: float = 0.0) -> dict:
    """The pipeline these tests resume: 2 variants x 4 points of a target that counts its calls."""
    return {
        "tracking_uri": store,
        "experiment": "resumable",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.counted",
                "params": {"log_file": str(tmp_path / "calls.txt"), "sleep": sleep},
                "variants": {"points": {"a": {"y": 0.0}, "b": {"y": 1.0}}},
                "subvariants": {"params": {"x": xs}},
            }
        },
    }


@pytest.fixture
def conf(tmp_path, store) -> Path:
    """The same pipeline as a sweep file, for the CLI."""
    d = tmp_path / "conf"
    (d / "sweep").mkdir(parents=True)
    config = {k: v for k, v in resumable(tmp_path, store).items() if k != "tracking_uri"}
    (d / "sweep" / "fit.yaml").write_text("# @package _global_\n" + yaml.safe_dump(config, sort_keys=False))
    return d


def calls(tmp_path) -> collections.Counter:
    path = tmp_path / "calls.txt"
    return collections.Counter(path.read_text().splitlines() if path.exists() else [])


def leaves_of(runs):
    return [r for r in runs if r.data.tags["runtree.level"] == "subvariant"]


def assert_complete_tree(client, experiment, n_leaves):
    runs = all_runs(client, experiment)
    leaves = leaves_of(runs)
    assert len(leaves) == n_leaves
    assert len({(r.data.tags["mlflow.parentRunId"], r.data.tags["runtree.key"]) for r in leaves}) == n_leaves
    assert {r.info.status for r in runs} == {"FINISHED"}
    by_parent = collections.defaultdict(list)
    for leaf in leaves:
        by_parent[leaf.data.tags["mlflow.parentRunId"]].append(leaf)
    parents = [r for r in runs if r.data.tags["runtree.level"] != "subvariant"]
    for parent in parents:
        mine = by_parent.get(parent.info.run_id) or leaves
        best = min(mine, key=lambda r: r.data.metrics["loss"])
        assert parent.data.metrics["best_loss"] == best.data.metrics["loss"]
        assert parent.data.tags["runtree.best_run_id"] == best.info.run_id
    return runs


def start_cli(tmp_path, conf, store, *args):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtree_pipeline",
            "--config-dir",
            str(conf),
            "+sweep=fit",
            f"tracking_uri={store}",
            *args,
        ],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_calls(tmp_path, n, proc, timeout=120):
    deadline = time.time() + timeout
    while sum(calls(tmp_path).values()) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the pipeline made no progress"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "sigint"])
def test_interrupted_pipeline_resumes_without_redoing_finished_leaves(run_cli, conf, store, client, tmp_path, sig):
    proc = start_cli(tmp_path, conf, store, "stages.fit.params.sleep=0.2")
    wait_for_calls(tmp_path, 3, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)

    before = all_runs(client, "resumable")
    statuses = collections.Counter(r.info.status for r in before)
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert "KILLED" in statuses and "RUNNING" not in statuses, statuses
        assert "resume=" in err
    else:
        assert "RUNNING" in statuses, statuses
    finished_before = {
        f"{r.data.params['x']},{float(r.data.params['y'])}" for r in leaves_of(before) if r.info.status == "FINISHED"
    }
    assert finished_before

    run_pipeline({**resumable(tmp_path, store, sleep=0.2), "resume": "last"})
    runs = assert_complete_tree(client, "resumable", 8)
    assert len([r for r in runs if r.data.tags["runtree.level"] == "stage"]) == 1
    counted = calls(tmp_path)
    assert set(counted) == {f"{x},{y}" for x in range(4) for y in (0.0, 1.0)}
    for leaf in finished_before:
        assert counted[leaf] == 1, leaf
    assert sum(counted.values()) <= 8 + 1


def test_grown_space_adds_only_new_points_and_a_finished_resume_executes_nothing(store, client, tmp_path):
    run_pipeline(resumable(tmp_path, store, xs="range(1, 4)"))
    assert sum(calls(tmp_path).values()) == 6
    first = {r.info.run_id: r for r in all_runs(client, "resumable")}

    grown = {**resumable(tmp_path, store, xs="range(-1, 4)"), "resume": "last"}
    run_pipeline(grown)
    counted = calls(tmp_path)
    assert sum(counted.values()) == 10
    assert counted["-1,0.0"] == counted["0,1.0"] == 1
    runs = assert_complete_tree(client, "resumable", 10)
    assert set(first) <= {r.info.run_id for r in runs}

    run_pipeline(grown)
    assert sum(calls(tmp_path).values()) == 10
    after = all_runs(client, "resumable")
    assert {r.info.run_id: r.info.end_time for r in after} == {r.info.run_id: r.info.end_time for r in runs}


def two_stage(store, tmp_path, xs="range(2, 4)"):
    return {
        "tracking_uri": store,
        "experiment": "chain",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.counted",
                "params": {"log_file": str(tmp_path / "calls.txt")},
                "subvariants": {"params": {"x": xs}},
            },
            "after": {
                "_target_": "tests.targets.counted",
                "depends_on": ["fit"],
                "params": {"log_file": str(tmp_path / "after.txt"), "x": "${best:fit.params.x}"},
            },
        },
    }


def test_downstream_reruns_only_when_upstream_best_changes(store, client, tmp_path):
    first = run_pipeline(two_stage(store, tmp_path))
    after_calls = tmp_path / "after.txt"
    assert after_calls.read_text().splitlines() == ["2,0.0"]

    same_best = run_pipeline({**two_stage(store, tmp_path, "range(2, 5)"), "resume": first.pipeline_id})
    assert same_best.pipeline_id == first.pipeline_id
    assert after_calls.read_text().splitlines() == ["2,0.0"]
    assert same_best.stages["after"].run_id == first.stages["after"].run_id

    better = run_pipeline({**two_stage(store, tmp_path, "range(0, 5)"), "resume": "last"})
    assert after_calls.read_text().splitlines() == ["2,0.0", "1,0.0"]
    assert better.stages["fit"].run_id == first.stages["fit"].run_id
    assert better.stages["after"].run_id != first.stages["after"].run_id
    old = client.get_run(first.stages["after"].run_id)
    assert old.data.tags["runtree.superseded_by"] == better.stages["after"].run_id
    assert client.get_run(better.stages["after"].run_id).data.params["x"] == "1"


def test_failed_leaves_are_redone_in_place(store, client, tmp_path):
    config = {
        "tracking_uri": store,
        "experiment": "flaky",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.fails_once",
                "params": {"marker_dir": str(tmp_path / "markers"), "fail_on": [1, 2]},
                "subvariants": {"params": {"x": "range(0, 4)"}},
            }
        },
    }
    first = run_pipeline(config)
    runs = all_runs(client, "flaky")
    failed = {r.info.run_id for r in runs if r.info.status == "FAILED"}
    assert len(failed) == 2
    stage = next(r for r in runs if r.data.tags["runtree.level"] == "stage")
    assert stage.data.metrics["best_loss"] == 1.0 and stage.data.tags["runtree.failed_children"] == "2"

    run_pipeline({**config, "resume": first.pipeline_id})
    runs = assert_complete_tree(client, "flaky", 4)
    redone = [r for r in runs if r.info.run_id in failed]
    assert len(redone) == 2
    assert all("runtree.error" not in r.data.tags for r in redone)
    stage = next(r for r in runs if r.data.tags["runtree.level"] == "stage")
    assert stage.data.metrics["best_loss"] == 0.0
    assert stage.data.tags["runtree.failed_children"] == "0"


def test_non_finite_objective_never_wins(store, client):
    config = {
        "tracking_uri": store,
        "experiment": "nan",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.nan_at",
                "params": {"nan_on": [0, 1]},
                "subvariants": {"params": {"x": "range(0, 4)"}},
            }
        },
    }
    result = run_pipeline(config)
    assert result.stages["fit"].best.params["x"] == 2
    stage = next(r for r in all_runs(client, "nan") if r.data.tags["runtree.level"] == "stage")
    assert stage.data.metrics["best_loss"] == 11.0


def test_on_failure_stop_stops_the_stage_and_skips_downstream(store, client, tmp_path):
    config = two_stage(store, tmp_path, "range(0, 6)")
    config["stages"]["fit"].update(_target_="tests.targets.flaky", params={"fail_on": [2]}, on_failure="stop")
    result = run_pipeline(config)
    assert result.stages["fit"].status == "FAILED"
    assert "on_failure=stop" in result.stages["fit"].reason
    assert result.stages["after"].status == "SKIPPED"
    leaves = leaves_of(all_runs(client, "chain"))
    assert sorted(r.data.params["x"] for r in leaves) == ["0", "1", "2"]


def test_quotes_unicode_and_wildcards_in_names_and_tags(store, client):
    names = ["it's", 'say "hi"', "naïve ✓", "100%_done"]
    config = {
        "tracking_uri": store,
        "experiment": "odd 'names' %_",
        "objective": {"metric": "loss"},
        "tags": {"note": "50% of_runs 'quoted'"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.quad",
                "variants": {"points": {name: {"x": i} for i, name in enumerate(names)}},
            }
        },
    }
    first = run_pipeline(config)
    again = run_pipeline({**config, "resume": "last"})
    assert again.pipeline_id == first.pipeline_id
    runs = all_runs(client, "odd 'names' %_")
    assert sorted(r.info.run_name for r in runs) == sorted(["fit", *(f"fit/{n}" for n in names)])
    for value in ("50% of_runs 'quoted'", "naïve ✓", "100%_done"):
        key = "note" if "quoted" in value else "mlflow.runName"
        found = client.search_runs([runs[0].info.experiment_id], filter_string=filter_eq(key, value))
        expected = [r for r in runs if r.data.tags.get(key) == value]
        assert sorted(r.info.run_id for r in found) == sorted(r.info.run_id for r in expected)
    assert client.search_runs([runs[0].info.experiment_id], filter_string=filter_eq("mlflow.runName", "fit/%")) == []
    with pytest.raises(ValueError, match="both quote characters"):
        filter_eq("note", "'\"")


def test_secret_looking_keys_are_redacted_everywhere(store, client):
    config = {
        "tracking_uri": store,
        "experiment": "secrets",
        "objective": {"metric": "loss"},
        "tags": {"DB_PASSWORD": "hunter2"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.secret_user",
                "params": {"api_key": "sk-123456"},
                "subvariants": {"params": {"x": "choice(1, 2)"}},
            }
        },
    }
    result = run_pipeline(config)
    assert result.stages["fit"].best.metrics["key_len"] == 9
    assert result.to_dict()["stages"]["fit"]["best"]["params"]["api_key"] == "***"
    runs = all_runs(client, "secrets")
    for r in runs:
        assert r.data.params["api_key"] == "***"
        assert r.data.tags["DB_PASSWORD"] == "***"
        assert "sk-123456" not in str(r.data.tags) and "hunter2" not in str(r.data.tags)
    stage = next(r for r in runs if r.data.tags["runtree.level"] == "stage")
    assert stage.data.tags["best.api_key"] == "***"
    text = Path(client.download_artifacts(stage.info.run_id, "config.yaml")).read_text()
    assert "sk-123456" not in text and "hunter2" not in text
    assert yaml.safe_load(text)["stages"]["fit"]["params"]["api_key"] == "***"


def test_resume_of_unknown_pipeline_is_a_clear_error(run_cli, conf, store, client, tmp_path):
    run_pipeline(resumable(tmp_path, store, xs="1"))
    proc = run_cli("--config-dir", str(conf), "+sweep=fit", f"tracking_uri={store}", "resume=0123456789ab")
    assert proc.returncode == 2
    assert "runtree: error: resume=0123456789ab: no pipeline execution '0123456789ab'" in proc.stderr
    with pytest.raises(ConfigErrors, match="key 'resume'"):
        run_pipeline({**resumable(tmp_path, store), "resume": "yesterday"})
    assert len(all_runs(client, "resumable")) == 1 + 2 + 2
