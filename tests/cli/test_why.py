"""`runtree why RUN_ID`: the verdict for each way a run comes to be executed rather than reused, first on hand-built
run trees (each case alone), then through the real command on a store three cached executions wrote."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from runtree_pipeline import build_plan, run_plan
from runtree_pipeline.cli import console
from runtree_pipeline.reports.views import render_why
from runtree_pipeline.tracking.records import RunRecord

# ---- render_why on hand-built runs ------------------------------------------------------------------------------


def stage_run(
    pipeline: str,
    start: int,
    *,
    stage: str = "fit",
    key: str = "s",
    code: str | None = "c1",
    params: dict | None = None,
    upstream: dict | None = None,
    levels: str = "subvariant",
    **tags: str,
) -> RunRecord:
    all_tags = {
        "runtree.pipeline_id": pipeline,
        "runtree.stage": stage,
        "runtree.level": "stage",
        "runtree.key": key,
        "runtree.levels": levels,
        **{f"runtree.upstream.{k}": v for k, v in (upstream or {}).items()},
        **({"runtree.code": code} if code else {}),
        **tags,
    }
    return RunRecord(
        f"{stage}-{pipeline}", "1", stage, "FINISHED", start, start + 50, tags=all_tags, params=params or {}
    )


def leaf(
    parent: RunRecord,
    point: str,
    *,
    key: str,
    params: dict | None = None,
    status: str = "FINISHED",
    start: int | None = None,
    end: int | None = None,
    experiment: str = "1",
    **tags: str,
) -> RunRecord:
    begin = parent.start_time + 1 if start is None else start
    all_tags = {
        "runtree.pipeline_id": parent.tags["runtree.pipeline_id"],
        "runtree.stage": parent.tags["runtree.stage"],
        "runtree.level": "subvariant",
        "runtree.key": key,
        "mlflow.parentRunId": parent.run_id,
        **tags,
    }
    if status == "FINISHED":
        all_tags["runtree.metrics"] = '["loss"]'
    return RunRecord(
        f"{parent.run_id}/{point}",
        experiment,
        f"{parent.name}/{point}",
        status,
        begin,
        begin + 10 if end is None else end,
        parent_id=parent.run_id,
        tags=all_tags,
        params={"x": "1", **(params or {})},
        metrics={"loss": 0.5} if status == "FINISHED" else {},
    )


def why(run: RunRecord, *others: RunRecord) -> list[str]:
    return render_why(run, [run, *others]).splitlines()


def test_a_cached_copy_names_the_run_that_computed_it():
    first, second = stage_run("p1", 100), stage_run("p2", 200)
    original = leaf(first, "x=1", key="k")
    copy = leaf(second, "x=1", key="k", **{"runtree.cached_from": original.run_id})
    assert why(copy, first, original, second) == [
        f"reused: taken from run {original.run_id} of pipeline p1 (same content key)"
    ]


def test_a_run_with_no_earlier_namesake_in_its_experiment():
    """A run of another experiment, or one that started after this run's stage, does not count as earlier."""
    other, first, later = stage_run("p0", 10), stage_run("p1", 100), stage_run("p2", 300)
    run = leaf(first, "x=1", key="k")
    elsewhere = leaf(other, "x=1", key="k", experiment="2")
    assert why(run, other, elsewhere, first, later, leaf(later, "x=1", key="k")) == [
        "executed: no earlier run of fit/x=1 in this experiment"
    ]


@pytest.mark.parametrize(("status", "said"), [("FAILED", "ended FAILED"), ("KILLED", "ended KILLED")])
def test_the_same_key_that_did_not_finish_before(status, said):
    first, second = stage_run("p1", 100), stage_run("p2", 200)
    failed = leaf(first, "x=1", key="k", status=status)
    assert why(leaf(second, "x=1", key="k"), first, failed, second) == [
        f"executed: the earlier run {failed.run_id} with the same key {said}"
    ]


def test_the_same_key_pruned_before_says_a_pruner_must_still_decide():
    first, second = stage_run("p1", 100), stage_run("p2", 200)
    pruned = leaf(first, "x=1", key="k", status="KILLED", **{"runtree.pruned": "true", "runtree.pruned_at_step": "2"})
    assert why(leaf(second, "x=1", key="k"), first, pruned, second) == [
        f"executed: an earlier run {pruned.run_id} with the same key was pruned: a pruned leaf is taken only where "
        "its level still has a pruner (with cache: true, or on resume)"
    ]


def test_the_same_key_finished_before_but_the_cache_was_off():
    first, second = stage_run("p1", 100), stage_run("p2", 200)
    failed_once = leaf(first, "x=1", key="k", status="FAILED")
    done = leaf(first, "x=1", key="k", start=150)
    assert why(leaf(second, "x=1", key="k"), first, failed_once, done, second) == [
        f"executed: an earlier run {done.run_id} has the same key, but this execution did not use the cache "
        "(cache: true reuses it)"
    ]


def test_the_same_key_still_running_when_this_stage_started():
    first, second = stage_run("p1", 100), stage_run("p2", 200)
    slow = leaf(first, "x=1", key="k", end=250)
    assert why(leaf(second, "x=1", key="k"), first, slow, second) == [
        f"executed: the earlier run {slow.run_id} with the same key had not finished when this stage started"
    ]


def test_changed_params_against_the_newest_earlier_run():
    oldest, newer, now = stage_run("p1", 100), stage_run("p2", 200), stage_run("p3", 300)
    compared = leaf(newer, "x=1", key="k2", params={"lr": "0.01"})
    lines = why(
        leaf(now, "x=1", key="k3", params={"lr": "0.02", "seed": "3"}),
        oldest,
        leaf(oldest, "x=1", key="k1", params={"lr": "0.5"}),
        newer,
        compared,
        now,
    )
    assert lines == [
        f"executed: its content key differs from the newest earlier run of fit/x=1, {compared.run_id} of pipeline p2",
        "  inputs changed: lr 0.01 → 0.02, seed unset → 3",
    ]


def test_changed_code_is_told_before_params():
    first, second = stage_run("p1", 100, code="c1"), stage_run("p2", 200, code="c2")
    before = leaf(first, "x=1", key="k1")
    lines = why(leaf(second, "x=1", key="k2", params={"x": "2"}), first, before, second)
    assert lines[1:] == [
        f"  code changed: the target's source file differs from the one run {before.run_id} used",
        "  inputs changed: x 1 → 2",
    ]


def test_code_left_out_of_the_key():
    first, second = stage_run("p1", 100, code="c1"), stage_run("p2", 200, code=None)
    before = leaf(first, "x=1", key="k1")
    lines = why(leaf(second, "x=1", key="k2"), first, before, second)
    assert lines[1] == (
        f"  code fingerprint left out of the key (cache: {{code: false}}): run {before.run_id} was keyed with it"
    )


def test_a_param_from_an_upstream_stage_that_has_a_new_best():
    """`prep` ran again with another result; the cached copy of the old `prep` names the run that computed it."""
    prep_then = stage_run("p0", 10, stage="prep", levels="")
    prep_copy = stage_run("p1", 100, stage="prep", levels="", **{"runtree.cached_from": prep_then.run_id})
    prep_now = replace(stage_run("p2", 200, stage="prep", levels=""), metrics={"loss": 13.0})
    first = stage_run("p1", 110, upstream={"prep": prep_copy.run_id})
    second = stage_run("p2", 210, upstream={"prep": prep_now.run_id})
    before = leaf(first, "x=1", key="k1", params={"y": "8.0", "lr": "0.1"})
    run = leaf(second, "x=1", key="k2", params={"y": "13.0", "lr": "0.2"})
    lines = why(run, prep_then, prep_copy, prep_now, first, before, second)
    assert lines[1:] == [
        "  inputs changed: lr 0.1 → 0.2, y 8.0 → 13.0 (from stage 'prep')",
        f"  upstream input changed: stage 'prep' has a new best (run {prep_now.run_id}, was {prep_then.run_id})",
    ]


def test_an_upstream_best_taken_from_the_cache_is_not_a_new_best():
    prep_then = stage_run("p1", 10, stage="prep", levels="")
    prep_copy = stage_run("p2", 100, stage="prep", levels="", **{"runtree.cached_from": prep_then.run_id})
    first = stage_run("p1", 20, upstream={"prep": prep_then.run_id})
    second = stage_run("p2", 110, upstream={"prep": prep_copy.run_id})
    before = leaf(first, "x=1", key="k1", params={"lr": "0.1"})
    lines = why(leaf(second, "x=1", key="k2", params={"lr": "0.2"}), prep_then, prep_copy, first, before, second)
    assert lines[1:] == ["  inputs changed: lr 0.1 → 0.2"]


def test_same_params_and_code_point_at_a_parent_whose_params_changed():
    """The stage's `lr` changed, but the point overrides it: the leaf's own params are the same."""
    first = stage_run("p1", 100, key="s1", params={"lr": "0.1"})
    second = stage_run("p2", 200, key="s2", params={"lr": "0.2"})
    before = leaf(first, "x=1", key="k1", params={"lr": "0.5"})
    lines = why(leaf(second, "x=1", key="k2", params={"lr": "0.5"}), first, before, second)
    assert lines[1:] == ["  its parent's key changed: fit has lr 0.1 → 0.2"]


def test_same_params_code_and_parents():
    first, second = stage_run("p1", 100, levels=""), stage_run("p2", 200, key="other", levels="")
    assert why(second, first)[1:] == [
        "  same params and code: another _target_, or a key written by another runtree version"
    ]


def test_a_parent_counts_its_leaves_taken_from_earlier_runs():
    first, second = stage_run("p1", 100), stage_run("p2", 200)
    original = leaf(first, "x=1", key="k1")
    copy = leaf(second, "x=1", key="k1", **{"runtree.cached_from": original.run_id})
    new = leaf(second, "x=2", key="k2")
    assert why(second, first, original, copy, new) == [
        "parent of 2 leaves: 1 taken from earlier runs, 1 executed ('runtree why' on a leaf says why)",
        f"  an earlier run {first.run_id} of pipeline p1 has the same content key",
    ]


# ---- the command, on a real store ----------------------------------------------------------------------------


def config(store: str, *, prep_x: float = 3.0, b_y: float = 1.0) -> dict:
    """`a` takes `y` from `prep`'s best, `b` sets its own; x=2 always fails."""
    return {
        "tracking_uri": store,
        "experiment": "why",
        "objective": {"metric": "loss"},
        "cache": True,
        "stages": {
            "prep": {"_target_": "tests.targets.quad", "params": {"x": prep_x}},
            "fit": {
                "_target_": "tests.targets.flaky",
                "depends_on": ["prep"],
                "params": {"fail_on": [2.0], "y": "${best:prep.metrics.loss}"},
                "variants": {"points": {"a": {}, "b": {"y": b_y}}},
                "subvariants": {"params": {"x": "range(0, 3)"}},
            },
        },
    }


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Three executions: the first; one with `b`'s `y` changed; one where `prep` has a new best."""
    store = f"sqlite:///{tmp_path_factory.mktemp('why') / 'store.db'}"
    results = [
        run_plan(build_plan(config(store, **changes)), plots=False)
        for changes in ({}, {"b_y": 2.0}, {"b_y": 2.0, "prep_x": 4.0})
    ]

    def leaves(result) -> dict[str, str]:
        return {leaf.name: leaf.run_id for leaf in result.stages["fit"].node.leaves}

    return SimpleNamespace(store=store, results=results, leaves=[leaves(r) for r in results])


def runtree(capsys, *args: str) -> SimpleNamespace:
    code = console.main(list(args))
    out = capsys.readouterr()
    return SimpleNamespace(code=code, out=out.out, err=out.err, lines=out.out.splitlines())


def test_why_tells_cached_changed_and_failed_leaves_apart(recorded, capsys):
    first, second, _ = recorded.leaves
    pipeline = recorded.results[0].pipeline_id

    def verdict(name: str) -> list[str]:
        proc = runtree(capsys, "why", second[name], "--tracking-uri", recorded.store, "--experiment", "why")
        assert proc.code == 0, proc.err
        return proc.lines

    assert verdict("fit/a/x=0") == [
        f"reused: taken from run {first['fit/a/x=0']} of pipeline {pipeline} (same content key)"
    ]
    assert verdict("fit/b/x=1") == [
        f"executed: its content key differs from the newest earlier run of fit/b/x=1, {first['fit/b/x=1']} "
        f"of pipeline {pipeline}",
        "  inputs changed: y 1.0 → 2.0",
    ]
    assert verdict("fit/a/x=2") == [f"executed: the earlier run {first['fit/a/x=2']} with the same key ended FAILED"]


def test_why_names_the_upstream_stage_whose_best_changed(recorded, capsys):
    """In the third execution `prep` ran again; in the second it was a cached copy of the first's."""
    _, second, third = recorded.leaves
    prep = [r.stages["prep"] for r in recorded.results]
    proc = runtree(capsys, "why", third["fit/a/x=0"], "--tracking-uri", recorded.store)
    assert proc.code == 0, proc.err
    assert proc.lines == [
        f"executed: its content key differs from the newest earlier run of fit/a/x=0, {second['fit/a/x=0']} "
        f"of pipeline {recorded.results[1].pipeline_id}",
        "  inputs changed: y 8.0 → 13.0 (from stage 'prep')",
        f"  upstream input changed: stage 'prep' has a new best (run {prep[2].run_id}, was {prep[0].run_id})",
    ]
    overridden = runtree(capsys, "why", third["fit/b/x=0"], "--tracking-uri", recorded.store)
    assert overridden.lines[1] == "  its parent's key changed: fit has y 8.0 → 13.0 (from stage 'prep')"


@pytest.mark.parametrize("experiment", [None, "nope"])
def test_an_unknown_run_id_exits_2(recorded, capsys, experiment):
    args = ["why", "0123456789abcdef0123456789abcdef", "--tracking-uri", recorded.store]
    proc = runtree(capsys, *args, *(["--experiment", experiment] if experiment else []))
    assert proc.code == 2 and proc.out == ""
    if experiment is None:
        assert (
            proc.err
            == f"runtree: error: no run 0123456789abcdef0123456789abcdef in any experiment of {recorded.store}\n"
        )


def test_a_run_runtree_did_not_record_exits_2(recorded, capsys):
    from mlflow import MlflowClient

    client = MlflowClient(recorded.store)
    plain = client.create_run(client.get_experiment_by_name("why").experiment_id)
    client.set_terminated(plain.info.run_id)
    proc = runtree(capsys, "why", plain.info.run_id, "--tracking-uri", recorded.store)
    assert proc.code == 2
    assert proc.err.startswith(f"runtree: error: run {plain.info.run_id} was not recorded by runtree")


def test_a_missing_store_exits_3(tmp_path, capsys):
    proc = runtree(capsys, "why", "0" * 32, "--tracking-uri", f"sqlite:///{tmp_path / 'nothing.db'}")
    assert proc.code == 3 and "no tracking store at" in proc.err
