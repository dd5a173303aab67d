"""Beyond one number, on a real store: replicates judged by their aggregate, several objectives with their Pareto
front, constraints, and all of it through resume and the cache."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from runtree_pipeline import build_plan, run_plan
from runtree_pipeline.errors import ConfigErrors, Interrupted
from tests.conftest import all_runs

SEEDS = {"aggregate": "mean", "params": {"seed": "range(0, 5)"}}


def lucky(store: str, experiment: str, seeds: dict | None = SEEDS, **fit) -> dict:
    """Two learning rates over five seeds each; 0.1 is worse on average but has the luckiest single run."""
    stage = {"_target_": "tests.targets.lucky_seed", "variants": {"params": {"lr": "choice(0.1, 0.01)"}}, **fit}
    if seeds is not None:
        stage["subvariants"] = seeds
    return {
        "tracking_uri": store,
        "experiment": experiment,
        "objective": {"metric": "loss", "mode": "min"},
        "stages": {
            "fit": stage,
            "use": {"_target_": "tests.targets.quad", "depends_on": ["fit"], "params": {"x": "${best:fit.params.lr}"}},
        },
    }


def by_level(client, experiment: str) -> dict[str, list]:
    runs: dict[str, list] = {}
    for run in all_runs(client, experiment):
        runs.setdefault(run.data.tags["runtree.level"], []).append(run)
    return runs


def stage_run(client, experiment: str, stage: str = "fit"):
    (run,) = [r for r in by_level(client, experiment)["stage"] if r.data.tags["runtree.stage"] == stage]
    return run


# --- replicates ------------------------------------------------------------------------------------------------------


def test_without_aggregate_the_lucky_seed_of_the_worse_config_wins(store):
    """The trap the aggregate exists for: judged by its best child, a stage takes the luckiest seed's config."""
    result = run_plan(build_plan(lucky(store, "plain", seeds={"params": {"seed": "range(0, 5)"}})), plots=False)
    assert result.stages["fit"].best.params == {"lr": 0.1, "seed": 3}
    assert result.stages["use"].best.params["x"] == 0.1


def test_a_lucky_seed_of_a_worse_config_does_not_win_an_aggregated_stage(store, client):
    result = run_plan(build_plan(lucky(store, "agg")), plots=False)

    variants = {r.data.params["lr"]: r for r in by_level(client, "agg")["variant"]}
    good, bad = variants["0.01"], variants["0.1"]
    assert good.data.tags["runtree.aggregate"] == "mean" and good.data.tags["runtree.replicates"] == "5"
    assert good.data.metrics["mean_loss"] == pytest.approx(statistics.fmean([1.0, 1.01, 1.02, 1.03, 1.04]))
    assert good.data.metrics["std_loss"] == pytest.approx(statistics.stdev([1.0, 1.01, 1.02, 1.03, 1.04]))
    assert bad.data.metrics["mean_loss"] == pytest.approx(1.7)
    assert "runtree.best_run_id" not in good.data.tags  # no replicate is "the best" of its parent

    stage = stage_run(client, "agg")
    assert stage.data.tags["runtree.best_run_id"] == good.info.run_id == result.stages["fit"].best.run_id
    assert stage.data.metrics["best_loss"] == pytest.approx(1.02)
    assert stage.data.metrics["best_std_loss"] == pytest.approx(good.data.metrics["std_loss"])
    assert result.stages["fit"].best.params == {"lr": 0.01}  # the seed varies: it is not the variant's
    assert result.stages["use"].best.params["x"] == 0.01
    best = result.to_dict()["stages"]["fit"]["best"]
    assert best["aggregate"]["how"] == "mean" and best["aggregate"]["replicates"] == 5


def test_median_and_the_replicate_closest_to_it(store, client):
    result = run_plan(build_plan(lucky(store, "median", seeds={**SEEDS, "aggregate": "median"})), plots=False)
    best = result.stages["fit"].best
    assert best.metrics["median_loss"] == best.metrics["loss"] == pytest.approx(1.02)
    seeds = {r.info.run_id: r.data.params["seed"] for r in by_level(client, "median")["subvariant"]}
    assert seeds[best.closest] == "2"  # its loss is the median: the model `register:` would take


def test_failed_replicates_are_left_out_and_counted(store, client):
    result = run_plan(build_plan(lucky(store, "failing", params={"fail_seed": 4})), plots=False)
    (good,) = [r for r in by_level(client, "failing")["variant"] if r.data.params["lr"] == "0.01"]
    assert good.info.status == "FINISHED"
    assert good.data.tags["runtree.replicates"] == "4"
    assert good.data.tags["runtree.failed_children"] == "1"
    assert good.data.metrics["mean_loss"] == pytest.approx(statistics.fmean([1.0, 1.01, 1.02, 1.03]))
    assert result.stages["fit"].best.params == {"lr": 0.01, "fail_seed": 4}


def test_a_parent_whose_replicates_all_failed_has_no_objective(store, client):
    config = lucky(store, "all-failed", seeds={**SEEDS, "params": {"seed": "range(4, 5)"}}, params={"fail_seed": 4})
    result = run_plan(build_plan(config), plots=False)
    variants = by_level(client, "all-failed")["variant"]
    assert {r.info.status for r in variants} == {"FAILED"}
    assert all("mean_loss" not in r.data.metrics and "runtree.aggregate" not in r.data.tags for r in variants)
    assert result.stages["fit"].status == "FAILED" and result.stages["use"].status == "SKIPPED"


def test_a_sampler_above_an_aggregated_level_is_told_the_aggregate(store, client):
    """tpe over lr with seeds under each: one trial per lr, told its mean (recorded where a resume replays it)."""
    config = lucky(store, "tpe")
    config["stages"]["fit"]["variants"] = {"sampler": "tpe", "n": 4, "seed": 0, "params": {"lr": "choice(0.1, 0.01)"}}
    run_plan(build_plan(config), plots=False)
    for variant in by_level(client, "tpe")["variant"]:
        told = json.loads(variant.data.tags["runtree.told"])
        assert told["value"] == pytest.approx(variant.data.metrics["mean_loss"])


def test_a_replicate_param_is_not_offered_downstream(store):
    config = lucky(store, "ref")
    config["stages"]["use"]["params"] = {"x": "${best:fit.params.seed}"}
    with pytest.raises(ConfigErrors) as e:
        build_plan(config)
    assert "'seed' differs between the replicates stage 'fit' aggregates" in str(e.value)


def test_the_tree_shows_aggregates_with_their_spread(store, capsys):
    from runtree_pipeline.cli import console

    run_plan(build_plan(lucky(store, "shown")), plots=False)
    capsys.readouterr()
    assert console.main(["tree", "--tracking-uri", store, "--experiment", "shown"]) == 0
    out = capsys.readouterr().out
    assert "mean_loss=1.02 ± 0.01581 (5)" in out
    assert "mean_loss=1.7 ± 0.6708 (5)" in out


# --- several objectives ---------------------------------------------------------------------------------------------

WIDTHS, DEPTHS = (1, 2, 4, 8), (1, 2, 3)


def tradeoff(store: str, experiment: str, **top) -> dict:
    return {
        "tracking_uri": store,
        "experiment": experiment,
        "objective": [{"metric": "loss", "mode": "min"}, {"metric": "latency", "mode": "min"}],
        **top,
        "stages": {
            "fit": {
                "_target_": "tests.targets.tradeoff",
                "variants": {"params": {"width": f"choice{WIDTHS}", "depth": f"choice{DEPTHS}"}},
            }
        },
    }


def hand_front(points: dict[tuple, tuple[float, float]]) -> set[tuple]:
    """The grid's Pareto front, by the definition: nothing else is at least as good on both and better on one."""
    return {
        p
        for p, (a, b) in points.items()
        if not any(c <= a and d <= b and (c < a or d < b) for q, (c, d) in points.items() if q != p)
    }


def grid_values(constraint=lambda size: True) -> dict[tuple, tuple[float, float]]:
    from tests.targets import tradeoff as target

    out = {}
    for w in WIDTHS:
        for d in DEPTHS:
            metrics = target(width=w, depth=d)
            if constraint(metrics["params_m"]):
                out[(w, d)] = (metrics["loss"], metrics["latency"])
    return out


def test_the_pareto_front_of_a_grid_is_the_one_computed_by_hand(store, client):
    result = run_plan(build_plan(tradeoff(store, "front")), plots=False)

    runs = {
        (int(r.data.params["width"]), int(r.data.params["depth"])): r for r in by_level(client, "front")["variant"]
    }
    expected = hand_front(grid_values())
    assert 1 < len(expected) < len(runs)
    stage = stage_run(client, "front")
    front_ids = set(stage.data.tags["runtree.pareto_run_ids"].split(","))
    assert front_ids == {runs[p].info.run_id for p in expected}
    assert {m.run_id for m in result.stages["fit"].node.front} == front_ids

    written = json.loads(Path(client.download_artifacts(stage.info.run_id, "pareto_front.json")).read_text())
    assert {m["run_id"] for m in written} == front_ids
    member = next(m for m in written if m["run_id"] == runs[(8, 1)].info.run_id)
    assert member["values"] == {"loss": pytest.approx(10 / 8 + 0.1), "latency": 8.0}
    assert member["params"] == {"width": 8, "depth": 1}

    # select defaults to the first objective: the front member with the lowest loss
    best = min(expected, key=lambda p: grid_values()[p][0])
    assert stage.data.tags["runtree.best_run_id"] == runs[best].info.run_id


def test_select_picks_the_front_member_best_on_its_metric(store, client):
    result = run_plan(build_plan(tradeoff(store, "select", select={"metric": "latency"})), plots=False)
    assert result.stages["fit"].best.params == {"width": 1, "depth": 1}


def test_a_constraint_excludes_the_otherwise_best_point(store, client):
    """Single objective: the lowest loss needs the biggest model; `params_m <= 1.0` rules it and its peers out,
    and they are tagged infeasible."""
    config = tradeoff(store, "constrained", constraints=["params_m <= 1.0"])
    config["objective"] = {"metric": "loss", "mode": "min"}
    unconstrained = run_plan(build_plan({**config, "constraints": None, "experiment": "free"}), plots=False)
    result = run_plan(build_plan(config), plots=False)

    assert unconstrained.stages["fit"].best.params == {"width": 8, "depth": 3}
    feasible = grid_values(lambda params_m: params_m <= 1.0)
    expected = min(feasible, key=lambda p: feasible[p][0])
    assert result.stages["fit"].best.params == dict(zip(("width", "depth"), expected, strict=True))
    tagged = {
        (int(r.data.params["width"]), int(r.data.params["depth"]))
        for r in by_level(client, "constrained")["variant"]
        if r.data.tags.get("runtree.feasible") == "false"
    }
    assert tagged == set(grid_values()) - set(feasible)


def test_no_feasible_leaf_fails_the_stage_saying_why(store):
    config = tradeoff(store, "infeasible", constraints=["params_m < 0"])
    result = run_plan(build_plan(config), plots=False)
    assert result.stages["fit"].status == "FAILED"
    assert "meets the constraints (params_m < 0)" in result.stages["fit"].reason


def test_aggregated_replicates_with_several_objectives_aggregate_each(store, client):
    config = tradeoff(store, "both")
    config["stages"]["fit"]["subvariants"] = {"aggregate": "mean", "params": {"offset": "range(0, 2)"}}
    config["stages"]["fit"]["_target_"] = "tests.targets.tradeoff_offset"
    result = run_plan(build_plan(config), plots=False)
    for variant in by_level(client, "both")["variant"]:
        metrics = variant.data.metrics
        assert set(metrics) >= {"mean_loss", "mean_latency", "std_loss", "std_latency"}
    assert {m.run_id for m in result.stages["fit"].node.front} <= {
        r.info.run_id for r in by_level(client, "both")["variant"]
    }
    assert result.stages["fit"].node.front


# --- resume and the cache, with lists -------------------------------------------------------------------------------


def two_ways(store: str, tmp_path: Path, experiment: str, sampler, stop_at: int) -> dict:
    return {
        "tracking_uri": store,
        "experiment": experiment,
        "objective": [{"metric": "near_1"}, {"metric": "near_minus_1"}],
        "constraints": ["x_value <= 0.5"],
        "stages": {
            "fit": {
                "_target_": "tests.targets.two_ways",
                "params": {"log_file": str(tmp_path / f"{experiment}.txt"), "stop_at": stop_at},
                "variants": {"sampler": sampler, "n": 14, "seed": 5, "params": {"x": "interval(-2, 2)"}},
            }
        },
    }


@pytest.mark.parametrize(
    "sampler",
    [
        pytest.param("tpe", id="tpe"),
        pytest.param({"_target_": "optuna.samplers.NSGAIISampler", "population_size": 4}, id="nsga2-target"),
    ],
)
def test_an_interrupted_multi_objective_sweep_resumes_as_the_uninterrupted_one(store, client, tmp_path, sampler):
    """Told both values and the constraint's violation, and replayed with them on resume: the resumed study asks
    exactly the uninterrupted one's points; tpe past its 10 startup trials, nsga2 past its first generation."""
    stopped = two_ways(store, tmp_path, "stopped", sampler, 11)
    with pytest.raises(Interrupted):
        run_plan(build_plan(stopped), plots=False)
    run_plan(build_plan({**stopped, "resume": "last"}), plots=False)
    run_plan(build_plan(two_ways(store, tmp_path, "whole", sampler, -1)), plots=False)

    def xs(experiment: str) -> dict[str, str]:
        return {r.info.run_name: r.data.params["x"] for r in by_level(client, experiment)["variant"]}

    assert len(xs("stopped")) == 14
    assert xs("stopped") == xs("whole")
    calls = (tmp_path / "stopped.txt").read_text().splitlines()
    assert len(calls) == len(set(calls)) == 14


def test_the_cache_takes_every_leaf_and_finds_the_same_front(store, tmp_path):
    config = {**two_ways(store, tmp_path, "cached", "random", -1), "cache": True}
    first = run_plan(build_plan(config), plots=False)
    again = run_plan(build_plan(config), plots=False)
    assert again.stages["fit"].counts["executed"] == 0
    assert [m.name for m in again.stages["fit"].node.front] == [m.name for m in first.stages["fit"].node.front]
    assert again.stages["fit"].best.params == first.stages["fit"].best.params
    assert all(m.params["x"] <= 0.5 for m in first.stages["fit"].node.front)


def test_a_resumed_stage_judged_by_a_new_objective_list_judges_its_reused_leaves_again(store):
    """The objective is not in the content key: a resume with another objective reuses every leaf and re-judges it."""
    config = tradeoff(store, "rejudged")
    config["objective"] = {"metric": "loss", "mode": "min"}
    first = run_plan(build_plan(config), plots=False)
    both = run_plan(build_plan({**tradeoff(store, "rejudged"), "resume": "last"}), plots=False)
    assert first.stages["fit"].node.front == ()
    assert both.stages["fit"].counts["reused"] == len(WIDTHS) * len(DEPTHS)
    assert len(both.stages["fit"].node.front) == len(hand_front(grid_values()))
    assert math.isfinite(both.stages["fit"].best.objective)


# --- pictures and importance ------------------------------------------------------------------------------------------


def test_a_parent_of_ten_children_gets_param_importances_ranking_the_param_that_matters_first(store, client):
    config = {
        "tracking_uri": store,
        "experiment": "importance",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.one_matters",
                "variants": {"params": {"x": "choice(-1, 0, 1, 2, 3)", "z": "choice(0.1, 0.5, 0.9)"}},
            }
        },
    }
    run_plan(build_plan(config))
    stage = stage_run(client, "importance")
    written = json.loads(Path(client.download_artifacts(stage.info.run_id, "importance.json")).read_text())
    assert written["metric"] == "loss" and written["children"] == 15
    assert list(written["importances"]) == ["x", "z"]
    assert written["importances"]["x"] > 0.9
    names = {f.path for f in client.list_artifacts(stage.info.run_id, "plots")}
    assert "plots/param_importances.png" in names


def test_a_two_objective_parent_gets_its_front_drawn(store, client):
    run_plan(build_plan(tradeoff(store, "drawn")))
    stage = stage_run(client, "drawn")
    names = {f.path for f in client.list_artifacts(stage.info.run_id, "plots")}
    assert "plots/pareto_front.png" in names
    assert "importance.json" in {f.path for f in client.list_artifacts(stage.info.run_id)}  # 12 children, 2 params


def test_the_exported_table_says_which_runs_aggregate_are_feasible_and_on_the_front(store):
    frame = run_plan(build_plan(lucky(store, "table")), plots=False).to_frame()
    variants = frame[frame["level"] == "variant"]
    assert set(variants["replicates"]) == {"5"} and set(variants.columns) >= {"metrics.mean_loss", "metrics.std_loss"}
    assert "on_front" not in frame.columns and "feasible" not in frame.columns

    frame = run_plan(build_plan(tradeoff(store, "table2", constraints=["params_m <= 1.0"])), plots=False).to_frame()
    leaves = frame[frame["level"] == "variant"]
    assert leaves["on_front"].eq("true").sum() == len(hand_front(grid_values(lambda params_m: params_m <= 1.0)))
    infeasible = leaves[leaves["feasible"] == "false"]
    assert set(infeasible["name"]) == {"fit/width=4,depth=3", "fit/width=8,depth=2", "fit/width=8,depth=3"}


def test_a_stage_judged_by_its_own_replicates_is_its_own_best_and_fails_when_infeasible(store, client, capsys):
    """`aggregate` on the stage's only level: the stage run stands for its seeds, `runtree best` shows it; under a
    constraint its aggregate breaks, the stage run ends FAILED saying why."""
    from runtree_pipeline.cli import console

    config = lucky(store, "own", seeds=None)
    config["stages"]["fit"]["variants"] = {"aggregate": "mean", "params": {"seed": "range(0, 3)"}}
    config["stages"]["fit"]["params"] = {"lr": 0.01}
    result = run_plan(build_plan(config), plots=False)
    stage = stage_run(client, "own")
    assert stage.data.tags["runtree.best_run_id"] == stage.info.run_id == result.stages["fit"].best.run_id
    capsys.readouterr()
    assert console.main(["best", "fit", "--tracking-uri", store, "--experiment", "own"]) == 0
    out = capsys.readouterr().out
    assert "best by the mean loss of 3 replicates" in out and "'~stages.fit.variants'" not in out

    infeasible = {**config, "experiment": "own-infeasible", "constraints": ["size <= 5"]}
    result = run_plan(build_plan(infeasible), plots=False)
    stage = stage_run(client, "own-infeasible")
    assert result.stages["fit"].status == "FAILED" and stage.info.status == "FAILED"
    assert "meets the constraints (size <= 5)" in stage.data.tags["runtree.error"]
