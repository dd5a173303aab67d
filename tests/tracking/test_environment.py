"""What a stage run keeps of the environment it ran in: the installed distributions, and the uncommitted diff when the
work tree was dirty, so a result can be traced to the code and libraries that produced it."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest

from runtree_pipeline import Interrupted, build_plan, run_pipeline, run_plan
from runtree_pipeline.tracking import provenance
from runtree_pipeline.tracking.provenance import environment_files, requirements
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
    return {path: content.decode() for path, content in _environment_bytes(client, run).items()}


def _environment_bytes(client, run, folder: str = "environment") -> dict[str, bytes]:
    """Every file under `environment/`, a resume's subfolders included."""
    files: dict[str, bytes] = {}
    for f in client.list_artifacts(run.info.run_id, folder):
        if f.is_dir:
            files.update(_environment_bytes(client, run, f.path))
        else:
            files[f.path] = Path(client.download_artifacts(run.info.run_id, f.path)).read_bytes()
    return files


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
    """Whatever the user's git config says, wherever Hydra moved the job to: from a subdirectory with
    `diff.relative=true`, and with `hydra.job.chdir=true` into a run directory outside the repository."""
    repo = _repo(tmp_path / "project")
    (repo / "src").mkdir()
    (repo / "src" / "legacy.txt").write_bytes(b"caf\xe9\n")  # Latin-1, not UTF-8
    subprocess.run([*GIT, "add", "src"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", "legacy"], cwd=repo, check=True)
    (repo / "train.py").write_text("lr = 0.3\n")
    (repo / "model.py").write_text("layers = 4\n")
    subprocess.run([*GIT, "add", "model.py"], cwd=repo, check=True)
    (repo / "src" / "legacy.txt").write_bytes(b"caf\xe9 cr\xe8me\n")
    (repo / "notes.txt").write_text("untracked\n")
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text("[diff]\n\trelative = true\n")

    proc = run_cli(
        "+sweep=tutorial",
        f"tracking_uri={store}",
        "stages.tuning.subvariants.n=2",
        "plots=false",
        "hydra.job.chdir=true",
        f"hydra.run.dir={tmp_path / 'elsewhere'}",
        cwd=repo / "src",
        GIT_CONFIG_GLOBAL=str(gitconfig),
    )
    assert proc.returncode == 0, proc.stderr

    (stage,) = _stage_runs(client, "tutorial").values()
    assert stage.data.tags["runtree.git_dirty"] == "true"
    diff = _environment_bytes(client, stage)["environment/git.diff"]
    assert b"-lr = 0.1\n+lr = 0.3\n" in diff
    assert b"+layers = 4\n" in diff
    assert b"+caf\xe9 cr\xe8me\n" in diff  # as git wrote it, not decoded
    assert b"notes.txt" not in diff
    # It is the patch that turns the recorded commit into the tree that ran.
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    subprocess.run(["git", "checkout", "-q", stage.data.tags["mlflow.source.git.commit"]], cwd=clone, check=True)
    subprocess.run(["git", "apply"], cwd=clone, input=diff, check=True)
    assert (clone / "train.py").read_text() == "lr = 0.3\n"
    assert (clone / "model.py").read_text() == "layers = 4\n"
    assert (clone / "src" / "legacy.txt").read_bytes() == b"caf\xe9 cr\xe8me\n"


def test_a_diff_over_the_limit_is_a_note_with_its_size_and_digest_and_submodules_are_their_commits(
    tmp_path, monkeypatch
):
    sub = _repo(tmp_path / "library")
    repo = _repo(tmp_path / "project")
    add = [*GIT, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), "library"]
    subprocess.run(add, cwd=repo, check=True, capture_output=True)
    subprocess.run([*GIT, "commit", "-qm", "library"], cwd=repo, check=True)
    (repo / "library" / "train.py").write_text("lr = 0.2\n")
    subprocess.run([*GIT, "commit", "-qam", "moved on"], cwd=repo / "library", check=True)
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text("[diff]\n\tsubmodule = diff\n")  # would inline the library's own changes
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    monkeypatch.chdir(repo)

    diff = environment_files(dirty=True)["environment/git.diff"]
    assert b"+Subproject commit " in diff and b"lr = 0.2" not in diff

    (repo / "train.py").write_text("".join(f"lr = {i}\n" for i in range(150_000)))  # about 1.5 MB of diff
    files = environment_files(dirty=True)
    assert "environment/git.diff" not in files
    note = files["environment/git.diff.too-large.txt"]
    command = re.search(r"`(git [^`]*) \| sha256sum`", note).group(1)
    full = subprocess.run(shlex.split(command), capture_output=True, check=True).stdout
    assert len(full) > 1_000_000
    assert f"was {len(full)} bytes" in note
    assert hashlib.sha256(full).hexdigest() in note


def test_a_resume_keeps_the_files_and_adds_its_own_beside_them_only_where_something_ran_in_another_environment(
    store, client, tmp_path, monkeypatch
):
    repo = _repo(tmp_path / "project")
    monkeypatch.chdir(repo)
    run_plan(build_plan(_config(store, "resumed")), plots=False)
    first = {name: _environment(client, s) for name, s in _stage_runs(client, "resumed").items()}
    (repo / "train.py").write_text("lr = 0.3\n")

    run_plan(build_plan({**_config(store, "resumed"), "resume": "last"}), plots=False)  # nothing runs again
    assert {name: _environment(client, s) for name, s in _stage_runs(client, "resumed").items()} == first

    run_plan(build_plan({**_config(store, "resumed", xs="range(-1, 2)"), "resume": "last"}), plots=False)
    stages = _stage_runs(client, "resumed")
    assert len(stages) == 2 and "runtree.superseded_by" not in stages["fit"].data.tags
    files = _environment(client, stages["fit"])  # its new leaf ran here, from a dirty tree
    (folder,) = {path.rsplit("/", 1)[0] for path in files} - {"environment"}
    assert re.fullmatch(r"environment/resumed-\d{8}T\d{6}\.\d{3}Z", folder)
    assert files["environment/requirements.txt"] == first["fit"]["environment/requirements.txt"]
    assert "environment/git.diff" not in files  # the first execution ran from a clean tree
    assert "+lr = 0.3\n" in files[f"{folder}/git.diff"]
    assert files[f"{folder}/requirements.txt"] == files["environment/requirements.txt"]
    assert _environment(client, stages["after"]) == first["after"]  # fit's best is unchanged: nothing ran there

    run_plan(build_plan({**_config(store, "resumed", xs="range(-2, 2)"), "resume": "last"}), plots=False)
    assert _environment(client, _stage_runs(client, "resumed")["fit"]) == files  # ran again, in the same environment


def test_a_stage_run_that_fails_on_its_inputs_or_is_interrupted_has_the_files(store, client, tmp_path, monkeypatch):
    monkeypatch.chdir(_repo(tmp_path / "project"))
    config = _config(store, "failed")
    config["stages"]["after"]["params"] = {"x": "${best:fit.artifacts.model}"}  # fit returns no path
    run_plan(build_plan(config), plots=False)
    after = _stage_runs(client, "failed")["after"]
    assert after.info.status == "FAILED"
    assert list(_environment(client, after)) == ["environment/requirements.txt"]

    params = {"x": 0, "log_file": str(tmp_path / "calls.log"), "stop_at": 0}
    stopping = {
        "tracking_uri": store,
        "experiment": "stopped",
        "objective": {"metric": "val_loss"},
        "stages": {"fit": {"_target_": "tests.targets.diverging", "params": params}},
    }
    with pytest.raises(Interrupted):  # Ctrl-C in its one leaf
        run_plan(build_plan(stopping), plots=False)
    (fit,) = _stage_runs(client, "stopped").values()
    assert fit.info.status == "KILLED"
    assert list(_environment(client, fit)) == ["environment/requirements.txt"]

    run_plan(build_plan({**stopping, "resume": "last"}), plots=False)  # redone in the same run, same environment
    (fit,) = _stage_runs(client, "stopped").values()
    assert fit.info.status == "FINISHED"
    assert list(_environment(client, fit)) == ["environment/requirements.txt"]


def _dist(directory: Path, name: str, version_: str, direct_url: dict | None = None, author: str = "") -> Path:
    info = directory / f"{name.replace('-', '_')}-{version_}.dist-info"
    info.mkdir(parents=True)
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version_}\nAuthor: {author}\n\nName: not this\n"
    (info / "METADATA").write_bytes(metadata.encode("latin-1"))
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))
    return info


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


def test_a_distribution_whose_metadata_is_not_utf8_is_noted_and_the_pipeline_runs(store, client, tmp_path, monkeypatch):
    site = tmp_path / "site"
    broken = _dist(site, "old-pkg", "1.0", author="Ren\xe9")  # written in Latin-1 by an old packaging tool
    _dist(site, "fine-pkg", "2.0")
    monkeypatch.syspath_prepend(str(site))

    lines = requirements().splitlines()
    assert "fine-pkg==2.0" in lines
    assert f"# unreadable: {broken}: UnicodeDecodeError" in lines
    assert f"mlflow=={version('mlflow')}" in lines

    run_pipeline(_config(store, "latin1"))
    for stage in _stage_runs(client, "latin1").values():
        assert stage.info.status == "FINISHED"
        assert "fine-pkg==2.0" in _environment(client, stage)["environment/requirements.txt"].splitlines()


def test_provenance_that_cannot_be_collected_is_one_warning_and_nothing_recorded(
    store, client, tmp_path, monkeypatch, caplog
):
    def broken() -> str:
        raise RuntimeError("an interpreter like no other")

    monkeypatch.setattr(provenance, "_read_requirements", broken)
    monkeypatch.syspath_prepend(str(tmp_path))  # not the reading an earlier test left
    with caplog.at_level(logging.WARNING, logger="runtree_pipeline"):
        run_pipeline(_config(store, "unrecorded"))

    warnings = [r.getMessage() for r in caplog.records if r.name == provenance.__name__]
    assert warnings == [
        "the environment (installed distributions, git diff) is not recorded: RuntimeError: an interpreter like "
        "no other"
    ]
    for stage in _stage_runs(client, "unrecorded").values():
        assert stage.info.status == "FINISHED"
        assert client.list_artifacts(stage.info.run_id, "environment") == []
        assert "runtree.environment" not in stage.data.tags
