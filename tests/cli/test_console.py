"""`runtree tree | best | list | diff` against stores the real pipeline produced, content first, exit codes second.

The pipelines are recorded once for the module and only read here; `runtree` runs in process. A subprocess is
started only where the process boundary is the subject: the reproduce commands must run as printed, in a shell.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from types import SimpleNamespace

import pytest

from runtree_pipeline import build_plan, run_plan
from runtree_pipeline.cli import console
from tests.conftest import all_runs, cli_env, copy_of

TUTORIAL = {
    "experiment": "tutorial",
    "objective": {"metric": "metric1", "mode": "min"},
    "stages": {
        "tuning": {
            "_target_": "runtree_pipeline.examples.tutorial.trial",
            "variants": {"points": {f"test_{i}": {"test_no": i} for i in range(5)}},
            "subvariants": {
                "sampler": "random",
                "n": 6,
                "seed": 0,
                "params": {"param1": "choice(a, b, c)", "param2": "choice(d, e, f)", "draw": "interval(0, 1)"},
            },
        }
    },
}
FLAKY = {
    "experiment": "flaky",
    "objective": {"metric": "loss"},
    "stages": {
        "fit": {
            "_target_": "tests.targets.flaky",
            "params": {"fail_on": [1]},
            "subvariants": {"params": {"x": "range(0, 3)"}},
        }
    },
}
CHAIN = {
    "experiment": "chain",
    "objective": {"metric": "loss"},
    "stages": {
        "fit": {
            "_target_": "tests.targets.quad",
            "params": {"y": -2.0},
            "subvariants": {"params": {"x": "range(0, 3)"}},
        },
        "after": {
            "_target_": "tests.targets.quad",
            "depends_on": ["fit"],
            "params": {"x": "${best:fit.params.x}", "y": "${best:fit.params.y}", "offset": 0.5},
        },
    },
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, empty_store):
    """Three executions in one store, oldest first: the tutorial's shape, one with a failing leaf, and a newest
    one in another experiment that has no `tuning` stage and a single-run stage `after`."""
    store = copy_of(empty_store, tmp_path_factory.mktemp("console"))
    results = {
        name: run_plan(build_plan({**config, "tracking_uri": store}), plots=False)
        for name, config in (("tutorial", TUTORIAL), ("flaky", FLAKY), ("chain", CHAIN))
    }
    assert all(r.ok for r in results.values())
    return SimpleNamespace(store=store, **results)


def runtree(capsys, *args: str) -> SimpleNamespace:
    code = console.main(list(args))
    out = capsys.readouterr()
    return SimpleNamespace(code=code, out=out.out, err=out.err, lines=out.out.splitlines())


def test_tree_shows_levels_best_marks_and_collapses(recorded, capsys):
    proc = runtree(capsys, "tree", "--tracking-uri", recorded.store, "--experiment", "tutorial", "--limit", "2")
    assert proc.code == 0, proc.err
    lines = proc.lines
    assert lines[0].startswith(f"pipeline {recorded.tutorial.pipeline_id} of experiment 'tutorial'  (")
    assert lines[1].startswith("tuning  FINISHED  best_metric1=")
    variants = [line for line in lines if re.match(r"^[├└]── (★ )?test_\d", line)]
    assert len(variants) == 2
    assert variants[0].startswith("├── ★ test_")
    assert lines[-1] == "└── … 3 more"
    assert sum("… 4 more" in line for line in lines) == 2
    best = recorded.tutorial.stages["tuning"].best
    marked = [line for line in lines if line.startswith("│   ├── ★")]
    assert marked and f"metric1={best.metrics['metric1']:.4g}" in marked[0]


def test_tree_defaults_to_the_newest_pipeline_and_names_it(recorded, capsys):
    proc = runtree(capsys, "tree", "--tracking-uri", recorded.store)
    assert proc.code == 0, proc.err
    assert proc.lines[0].startswith(f"pipeline {recorded.chain.pipeline_id} of experiment 'chain'  (")
    assert proc.lines[-1] == "after  FINISHED  loss=0.5"


def test_tree_highlights_failures(recorded, capsys):
    proc = runtree(capsys, "tree", "--tracking-uri", recorded.store, "--experiment", "flaky")
    assert proc.code == 0, proc.err
    (failed,) = [line for line in proc.lines if "✗" in line]
    assert "x=1" in failed and "✗ FAILED" in failed and "RuntimeError: boom at x=1" in failed
    assert proc.lines[-1].startswith("└── x=1")


def test_best_takes_the_newest_pipeline_that_has_the_stage(recorded, capsys):
    """The newest pipeline (chain) has no `tuning`: the tutorial's is shown, and says which one it is."""
    proc = runtree(capsys, "best", "tuning", "--tracking-uri", recorded.store)
    assert proc.code == 0, proc.err
    best = recorded.tutorial.stages["tuning"].best
    assert proc.lines[0] == (
        f"stage tuning of pipeline {recorded.tutorial.pipeline_id} of experiment 'tutorial': best by metric1 (min)"
    )
    assert f"run      {best.run_id}  {best.name}" in proc.out
    assert f"param1={best.params['param1']}" in proc.out and f"metric1={best.metrics['metric1']:.4g}" in proc.out
    assert "reproduce" not in proc.out  # recorded through the API: no command line to give

    both = runtree(capsys, "best", "fit", "--tracking-uri", recorded.store)
    assert both.lines[0].startswith(f"stage fit of pipeline {recorded.chain.pipeline_id} of experiment 'chain'")
    older = runtree(capsys, "best", "fit", "--tracking-uri", recorded.store, "--experiment", "flaky")
    assert older.lines[0].startswith(f"stage fit of pipeline {recorded.flaky.pipeline_id} of experiment 'flaky'")


def test_best_of_a_single_run_stage_is_its_own_run(recorded, capsys):
    proc = runtree(capsys, "best", "after", "--tracking-uri", recorded.store)
    assert proc.code == 0, proc.err
    after = recorded.chain.stages["after"]
    assert (
        proc.lines[0]
        == f"stage after of pipeline {recorded.chain.pipeline_id} of experiment 'chain': best by loss (min)"
    )
    assert proc.lines[1] == f"run      {after.run_id}  after"
    assert proc.lines[2] == "params   offset=0.5, x=1, y=-2.0"


def test_list_shows_each_execution_newest_first(recorded, capsys):
    proc = runtree(capsys, "list", "--tracking-uri", recorded.store)
    assert proc.code == 0, proc.err
    header, *rows = proc.lines
    assert header.split() == ["pipeline", "started", "experiment", "status", "best", "per", "stage"]
    assert [row.split()[0] for row in rows] == [
        r.pipeline_id for r in (recorded.chain, recorded.flaky, recorded.tutorial)
    ]
    assert all("FINISHED" in row for row in rows)
    tuning = recorded.tutorial.stages["tuning"].best.metrics["metric1"]
    assert rows[2].split()[3] == "tutorial" and rows[2].endswith(f"tuning={tuning:.4g}")
    assert rows[0].endswith("fit=0 after=0.5")  # a stage without sweeps shows its own objective value


def test_list_shows_a_dash_for_a_stage_without_objective_value(store, capsys):
    config = {
        "tracking_uri": store,
        "objective": {"metric": "loss"},
        "stages": {"data": {"_target_": "tests.targets.with_outputs"}},
    }
    run_plan(build_plan(config), plots=False)
    proc = runtree(capsys, "list", "--tracking-uri", store)
    assert proc.lines[1].endswith("FINISHED    data=-")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["tree", "--experiment", "nope"], "no experiment 'nope' in {store} (it has: ", id="unknown-experiment"
        ),
        pytest.param(
            ["tree", "--pipeline", "0123456789ab"],
            "no pipeline '0123456789ab' in any experiment of {store}",
            id="unknown-pipeline",
        ),
        pytest.param(
            ["best", "nostage"],
            "no pipeline with stage 'nostage' in any experiment of {store} "
            "(searched 3 pipelines; their stages: after, fit, tuning)",
            id="no-pipeline-has-the-stage",
        ),
        pytest.param(
            ["best", "after", "--experiment", "tutorial"],
            "no pipeline with stage 'after' in experiment 'tutorial' of {store} "
            "(searched 1 pipeline; their stages: tuning)",
            id="not-in-that-experiment",
        ),
        pytest.param(
            ["best", "nostage", "--pipeline", "{tutorial}"],
            "no stage 'nostage' in pipeline {tutorial} (it has: tuning)",
            id="not-in-that-pipeline",
        ),
        pytest.param(
            ["export", "--pipeline", "0123456789ab"],
            "no pipeline '0123456789ab' in any experiment of {store}",
            id="export-unknown-pipeline",
        ),
        pytest.param(
            ["diff", "0123456789ab", "{tutorial}"],
            "no pipeline '0123456789ab' in any experiment of {store}",
            id="diff-unknown-pipeline",
        ),
        pytest.param(
            ["diff", "--experiment", "tutorial"],
            "fewer than two pipeline executions in experiment 'tutorial' of {store} (found 1)",
            id="diff-one-execution",
        ),
    ],
)
def test_clear_errors(recorded, capsys, args, message):
    names = {"store": recorded.store, "tutorial": recorded.tutorial.pipeline_id}
    proc = runtree(capsys, *(a.format(**names) for a in args), "--tracking-uri", recorded.store)
    assert proc.code == 2
    assert proc.out == ""
    (line,) = proc.err.splitlines()
    assert line.startswith("runtree: error: " + message.format(**names))


def test_diff_names_the_changed_param_and_the_new_best(store, capsys):
    """Without ids, the experiment's two newest executions, older first; identical ones say nothing differs."""
    ids = []
    for y in (-2.0, 0.0, 0.0):
        config = {**CHAIN, "tracking_uri": store}
        config["stages"] = {"fit": {**CHAIN["stages"]["fit"], "params": {"y": y}}, "after": CHAIN["stages"]["after"]}
        ids.append(run_plan(build_plan(config), plots=False).pipeline_id)

    proc = runtree(capsys, "diff", ids[0], ids[1], "--tracking-uri", store)
    assert proc.code == 0, proc.err
    assert proc.lines[0].startswith(f"diff {ids[0]} (") and proc.lines[0].endswith(", experiment 'chain'")
    assert proc.lines[1:6] == [
        "stage fit",
        "  config   params.y: -2 → 0",
        "  code     same",
        "  best     loss 0 → 4   (y=-2.0 → y=0.0)",
        "  leaves   executed 3 → 3, reused 0 → 0, failed 0 → 0",
    ]
    newest = runtree(capsys, "diff", "--experiment", "chain", "--tracking-uri", store)
    assert newest.code == 0, newest.err
    assert newest.lines[0].startswith(f"diff {ids[1]} (") and f"→ {ids[2]} (" in newest.lines[0]
    assert newest.lines[1:] == ["stage fit  — nothing differs", "stage after  — nothing differs"]


def test_missing_or_unreachable_store(tmp_path, capsys):
    missing = runtree(capsys, "list", "--tracking-uri", f"sqlite:///{tmp_path / 'nothing.db'}")
    assert missing.code == 3 and "no tracking store at" in missing.err
    assert not (tmp_path / "nothing.db").exists()
    down = runtree(capsys, "tree", "--tracking-uri", "http://127.0.0.1:9")
    assert down.code == 3 and "is not usable" in down.err


@pytest.mark.parametrize("command", [[], ["tree"], ["best"], ["list"], ["export"], ["diff"]])
def test_help_everywhere(capsys, command):
    with pytest.raises(SystemExit) as exit:
        console.main([*command, "--help"])
    out = capsys.readouterr().out
    assert exit.value.code == 0 and out.startswith("usage: runtree")
    if not command:
        assert re.search(r"^\s+export\s+a pipeline's runs as a table: CSV \(default\) or Parquet$", out, re.M)
    if command == ["export"]:
        flat = " ".join(out.split())
        assert (
            "-o FILE, --output FILE file to write: Parquet when it ends in .parquet, else CSV (default: CSV on stdout)"
            in flat
        )
        assert "pipeline_id, run_id, parent_run_id (empty for stage runs), stage, level, name, status" in flat


def test_exit_codes_reach_the_shell(recorded):
    """The one place `runtree` runs as its own process: scripts see the exit code, and the error on stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "runtree_pipeline.cli.console", "best", "nostage", "--tracking-uri", recorded.store],
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("runtree: error: no pipeline with stage 'nostage'")


MINE = """\
# @package _global_
objective: {metric: loss}
stages:
  fit:
    _target_: mytargets.bowl
    params: {scale: 2}
    subvariants:
      sampler: random
      n: 5
      seed: 3
      params: {x: 'interval(-3, 3)', label: "choice('a b', c)"}
"""


def test_best_prints_commands_that_run_as_printed_from_anywhere(tmp_path, capsys, empty_store):
    """A user's own pipeline (target module and config beside it, relative store path): the printed commands are
    pasted into a shell in another directory and reproduce the same best."""
    project = tmp_path / "project"
    (project / "my_conf" / "sweep").mkdir(parents=True)
    copy_of(empty_store, project, "mlflow.db")  # an existing store: migrating a new one costs 1-5 s
    (project / "my_conf" / "sweep" / "mine.yaml").write_text(MINE)
    (project / "mytargets.py").write_text(
        "def bowl(*, x, scale, label):\n    return {'loss': scale * (x - 1) ** 2 + len(label)}\n"
    )
    env = cli_env(PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
    first = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtree_pipeline",
            "--config-dir",
            "my_conf",
            "+sweep=mine",
            "tracking_uri=sqlite:///mlflow.db",
            "plots=false",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert first.returncode == 0, first.stderr
    store = f"sqlite:///{project / 'mlflow.db'}"

    proc = runtree(capsys, "best", "fit", "--tracking-uri", store)
    assert proc.code == 0, proc.err
    lines = proc.lines
    whole = lines[lines.index("reproduce the whole pipeline (same seeds, same best):") + 1].strip()
    single = lines[lines.index("reproduce this run only:") + 1].strip()
    cd = f"cd {shlex.quote(str(project))} && "
    assert (
        whole
        == cd
        + "python -m runtree_pipeline --config-dir my_conf +sweep=mine tracking_uri=sqlite:///mlflow.db plots=false"
    )
    assert single.startswith(cd + "python -m runtree_pipeline --config-dir my_conf +sweep=mine")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for command in (whole, single):
        again = subprocess.run(["bash", "-c", command], cwd=elsewhere, env=env, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr
    assert list(elsewhere.iterdir()) == []

    from mlflow import MlflowClient

    runs = all_runs(MlflowClient(store), "mine")
    original, whole_rerun, single_rerun = sorted(
        (r for r in runs if r.data.tags["runtree.level"] == "stage"), key=lambda r: r.info.start_time
    )
    best = next(r for r in runs if r.info.run_id == original.data.tags["runtree.best_run_id"])
    assert whole_rerun.data.metrics["best_loss"] == original.data.metrics["best_loss"]
    assert whole_rerun.data.tags["best.x"] == best.data.params["x"]
    assert single_rerun.data.metrics["loss"] == best.data.metrics["loss"]
    assert single_rerun.data.params == best.data.params
    assert {r.data.tags["runtree.cwd"] for r in (original, whole_rerun, single_rerun)} == {str(project)}
