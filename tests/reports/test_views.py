"""The text views of recorded trees, on records built by hand: what `runtree best` prints to reproduce a run."""

from __future__ import annotations

from runtree_pipeline.reports.views import reproduce_command
from runtree_pipeline.tracking.records import RunRecord


def test_reproducing_one_run_pins_its_params_but_leaves_upstream_artifacts_to_their_reference():
    """A `runs:/` param came from `${best:STAGE.artifacts.K}`: pinning the URI would hand the target a string, while
    the stage's own reference, resolved again by the re-run pipeline, hands it a local copy."""
    stage = RunRecord(
        "s1",
        "0",
        "search",
        "FINISHED",
        tags={
            "runtree.stage": "search",
            "runtree.levels": "variant",
            "runtree.command": "python -m runtree_pipeline +sweep=cnn",
        },
    )
    leaf = RunRecord("l1", "0", "search/a", "FINISHED", params={"lr": "0.1", "data_dir": "runs:/abc/outputs/data"})
    assert reproduce_command(stage, leaf) == (
        "python -m runtree_pipeline +sweep=cnn '~stages.search.variants' ++stages.search.params.lr=0.1"
    )


def test_the_tree_says_which_runs_were_taken_from_the_cache():
    from runtree_pipeline.reports.views import render_tree
    from runtree_pipeline.tracking.index import RunIndex

    common = {"runtree.pipeline_id": "p1", "runtree.stage": "fit"}
    stage = RunRecord("s1", "0", "fit", "FINISHED", start_time=1, tags={**common, "runtree.level": "stage"})
    leaves = [
        RunRecord(
            f"l{i}",
            "0",
            f"fit/x={i}",
            "FINISHED",
            start_time=2 + i,
            parent_id="s1",
            tags={
                **common,
                "runtree.level": "subvariant",
                **({"runtree.cached_from": "abcdef0123456789"} if i else {}),
            },
            metrics={"loss": float(i)},
        )
        for i in range(2)
    ]
    lines = render_tree(RunIndex([stage, *leaves])).splitlines()
    assert [line.endswith("(cached from abcdef01)") for line in lines[2:]] == [False, True]


def test_best_promises_the_same_best_only_where_nothing_raced_several_workers():
    """With a pruner and several workers, which leaves are pruned depends on which reported first, so a rerun with
    the same seeds may pick another best; `runtree best` must not promise otherwise."""
    from runtree_pipeline.reports.views import render_best

    def stage(**extra: str) -> RunRecord:
        tags = {"runtree.stage": "fit", "runtree.levels": "subvariant", "runtree.command": "python -m runtree_pipeline"}
        return RunRecord("s1", "0", "fit", "FINISHED", tags={**tags, **extra})

    leaf = RunRecord("l1", "0", "fit/x=1", "FINISHED", params={"x": "1"}, metrics={"loss": 0.5})
    assert "(same seeds, same best):" in render_best(stage(), leaf)
    raced = render_best(stage(**{"runtree.order_dependent": "pruner"}), leaf)
    assert "(same seeds; a pruner with several workers may decide differently):" in raced
    assert "same best" not in raced
    both = render_best(stage(**{"runtree.order_dependent": "time_budget_s,tpe"}), leaf)
    assert "(same seeds; a time budget or tpe with several workers may decide differently):" in both
