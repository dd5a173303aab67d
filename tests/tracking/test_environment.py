"""What a stage run keeps of the environment it ran in: the installed distributions, and the uncommitted diff when the
work tree was dirty, so a result can be traced to the code and libraries that produced it."""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import version
from pathlib import Path

from runtree_pipeline import build_plan, run_pipeline, run_plan
from runtree_pipeline.tracking.provenance import requirements
from tests.conftest import all_runs

GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


def _repo(path: Path) -> Path:
    path.mkdir()
    subprocess.run([*GIT, "init", "-q"], cwd=path, check=True)
    (path / "train.py").write_text("lr = 0.1\n")
    subprocess.run([*GIT, "add", "train.py"], cwd=path, check=True)
    subprocess.run([*GIT, "commit", "-qm", "code"], cwd=path, check=True)
    return path


def _config(store: str, experiment: str, xs: str = "range(0, 2)") -> dict:
    return {
        "tracking_uri": store,
        "experiment": experiment,
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {"_target_": "tests.targets.quad", "subvariants": {"params": {"x": xs}}},
            "after": {"_target_": "tests.targets.quad", "depends_on": ["fit"], "params": {"x": "${best:fit.params.x}"}},
        },
    }


def _stage_runs(client, experiment: str) -> dict:
    return {
        r.data.tags["runtree.stage"]: r for r in all_runs(client, experiment) if r.data.tags["runtree.level"] == "stage"
    }


def _environment(client, run) -> dict[str, str]:
    listed = [f.path for f in client.list_artifacts(run.info.run_id, "environment")]
    return {path: Path(client.download_artifacts(run.info.run_id, path)).read_text() for path in listed}


def test_every_stage_run_lists_the_installed_distributions_and_a_clean_tree_has_no_diff(
    store, client, tmp_path, monkeypatch
):
    monkeypatch.chdir(_repo(tmp_path / "project"))
    run_pipeline(_config(store, "clean"))  # the Python API, as a notebook calls it

    stages = _stage_runs(client, "clean")
    assert set(stages) == {"fit", "after"}  # a swept stage (written when its parent ends) and a one-leaf one
    for stage in stages.values():
        assert stage.data.tags["runtree.git_dirty"] == "false"
        files = _environment(client, stage)
        assert list(files) == ["environment/requirements.txt"]
        lines = files["environment/requirements.txt"].splitlines()
        assert f"mlflow=={version('mlflow')}" in lines
        assert f"hydra-core=={version('hydra-core')}" in lines  # names normalised as pip does
        (own,) = [line for line in lines if line.startswith("runtree-pipeline==")]
        assert own.startswith(f"runtree-pipeline=={version('runtree-pipeline')}")
        names = [line.split("==")[0] for line in lines]
        assert names == sorted(set(names))


def test_a_dirty_tree_keeps_its_diff_against_head_staged_changes_included(run_cli, store, client, tmp_path):
    repo = _repo(tmp_path / "project")
    (repo / "train.py").write_text("lr = 0.3\n")
    (repo / "model.py").write_text("layers = 4\n")
    subprocess.run([*GIT, "add", "model.py"], cwd=repo, check=True)
    (repo / "notes.txt").write_text("untracked\n")

    proc = run_cli("+sweep=tutorial", f"tracking_uri={store}", "stages.tuning.subvariants.n=2", "plots=false", cwd=repo)
    assert proc.returncode == 0, proc.stderr

    (stage,) = _stage_runs(client, "tutorial").values()
    assert stage.data.tags["runtree.git_dirty"] == "true"
    diff = _environment(client, stage)["environment/git.diff"]
    assert "-lr = 0.1\n+lr = 0.3\n" in diff
    assert "+layers = 4\n" in diff
    assert "notes.txt" not in diff
    # It is the patch that turns the recorded commit into the tree that ran.
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    subprocess.run(["git", "checkout", "-q", stage.data.tags["mlflow.source.git.commit"]], cwd=clone, check=True)
    subprocess.run(["git", "apply"], cwd=clone, input=diff, text=True, check=True)
    assert (clone / "train.py").read_text() == "lr = 0.3\n"
    assert (clone / "model.py").read_text() == "layers = 4\n"


def test_a_resume_rewrites_the_files_only_on_stage_runs_where_something_ran_again(store, client, tmp_path, monkeypatch):
    repo = _repo(tmp_path / "project")
    monkeypatch.chdir(repo)
    run_plan(build_plan(_config(store, "resumed")), plots=False)
    (repo / "train.py").write_text("lr = 0.3\n")

    run_plan(build_plan({**_config(store, "resumed"), "resume": "last"}), plots=False)
    stages = _stage_runs(client, "resumed")
    assert [list(_environment(client, s)) for s in stages.values()] == [["environment/requirements.txt"]] * 2

    run_plan(build_plan({**_config(store, "resumed", xs="range(-1, 2)"), "resume": "last"}), plots=False)
    stages = _stage_runs(client, "resumed")
    assert len(stages) == 2 and "runtree.superseded_by" not in stages["fit"].data.tags
    assert "+lr = 0.3\n" in _environment(client, stages["fit"])["environment/git.diff"]  # its new leaf ran here
    assert "environment/git.diff" not in _environment(client, stages["after"])  # fit's best is unchanged


def _dist(directory: Path, name: str, version_: str, direct_url: dict | None = None) -> None:
    info = directory / f"{name.replace('-', '_')}-{version_}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version_}\n\nName: not this\n")
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))


def test_requirements_follow_installs_mark_direct_urls_and_take_the_first_of_a_name_on_the_path(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    _dist(first, "Zeta_Pkg", "1.0", {"url": "file:///src/zeta", "dir_info": {"editable": True}})
    _dist(second, "zeta-pkg", "0.9")
    _dist(
        second, "from-git", "2.0", {"url": "https://example.org/g.git", "vcs_info": {"vcs": "git", "commit_id": "abc"}}
    )
    _dist(first, "shadowed", "1.0")  # a stale build's metadata in the launch directory, before the install itself
    _dist(second, "shadowed", "1.0", {"url": "file:///src/shadowed", "dir_info": {}})
    _dist(first, "older", "1.0")
    _dist(second, "older", "0.5", {"url": "file:///src/older", "dir_info": {"editable": True}})
    monkeypatch.syspath_prepend(str(second))
    monkeypatch.syspath_prepend(str(first))

    lines = requirements().splitlines()
    assert "zeta-pkg==1.0  # editable: file:///src/zeta" in lines
    assert not any(line.startswith("zeta-pkg==0.9") for line in lines)
    assert "from-git==2.0  # git+https://example.org/g.git@abc" in lines
    assert "shadowed==1.0  # direct: file:///src/shadowed" in lines
    assert "older==1.0" in lines

    _dist(first, "late", "3.1")  # installed while the process runs, as from a notebook
    assert "late==3.1" in requirements().splitlines()
