"""The samplers beyond grid, random and tpe: `qmc`, `gp`, `cmaes`, `nsga2` by name and any Optuna sampler by
`_target_`, checked when the plan is built, seeded per parent, and resumed as the uninterrupted sweep would go on."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest

from runtree_pipeline import build_plan, run_plan
from runtree_pipeline.errors import ConfigErrors, Interrupted
from runtree_pipeline.execution.samplers import new_sampler, study_seed
from tests.conftest import all_runs
from tests.execution.test_samplers import (
    MIN,
    SPACE,
    Recorder,
    assert_resumes_as,
    cut_at,
    drain,
    drawn_under,
    parallel,
    stopping_config,
    variants,
)
from tests.targets import bowl_at

HAS_CMAES = importlib.util.find_spec("cmaes") is not None
QMC_TARGET = {"_target_": "optuna.samplers.QMCSampler", "seed": 0}
QMC_UNSEEDED_TARGET = {"_target_": "optuna.samplers.QMCSampler", "scramble": True}
NAMED = [
    "qmc",
    "gp",
    "nsga2",
    pytest.param("cmaes", marks=pytest.mark.skipif(not HAS_CMAES, reason="the cmaes package is not installed")),
]


def two_bowls(store: str, sampler, *, n: int = 6) -> dict:
    return {
        "tracking_uri": store,
        "experiment": "sampled",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.bowl_at",
                "variants": {"points": {"left": {"centre": -2.0}, "right": {"centre": 2.0}}},
                "subvariants": {"sampler": sampler, "n": n, "seed": 1, "params": {"x": "interval(-3, 3)"}},
            }
        },
    }


def asked_by_own_sampler(config: dict, variant: str, centre: float) -> list[float]:
    """What the variant's own sampler, seeded for it, asks when told each point's loss in turn."""
    spec = variants(config["stages"]["fit"]["subvariants"], level="subvariant")
    seed = study_seed(spec, variant)
    own = new_sampler(spec if seed is None else replace(spec, seed=seed), objective=MIN)
    return sorted(p.params["x"] for p in drain(own, lambda params: bowl_at(x=params["x"], centre=centre)["loss"]))


@pytest.mark.parametrize("sampler", [*NAMED, pytest.param(QMC_UNSEEDED_TARGET, id="target-without-seed")])
def test_a_sampler_by_name_or_target_draws_n_points_per_parent_seeded_per_parent(store, client, sampler):
    """Each variant gets n leaves inside the space, exactly the points its own sampler asks on the per-parent seed;
    siblings search different points, as with tpe. A `_target_` sampler without a `seed` takes the per-parent one."""
    config = two_bowls(store, sampler)
    result = run_plan(build_plan(config), plots=False)
    runs = all_runs(client, "sampled")
    assert {r.info.status for r in runs} == {"FINISHED"}
    drawn = drawn_under(runs)
    assert {parent: len(xs) for parent, xs in drawn.items()} == {"fit/left": 6, "fit/right": 6}
    assert all(-3 <= x <= 3 for xs in drawn.values() for x in xs)
    assert drawn["fit/left"] == asked_by_own_sampler(config, "fit/left", -2.0)
    assert drawn["fit/right"] == asked_by_own_sampler(config, "fit/right", 2.0)
    assert not set(drawn["fit/left"]) & set(drawn["fit/right"])
    leaves = [r for r in runs if r.data.tags["runtree.level"] == "subvariant"]
    assert result.stages["fit"].best.metrics["loss"] == min(r.data.metrics["loss"] for r in leaves)


def test_a_target_sampler_with_its_own_seed_keeps_it(store, client):
    """`{_target_: optuna.samplers.QMCSampler, seed: 0}` draws with seed 0 under every parent: the user's seed is
    not replaced by the per-parent one, so both variants search the same QMC points."""
    run_plan(build_plan(two_bowls(store, QMC_TARGET)), plots=False)
    drawn = drawn_under(all_runs(client, "sampled"))
    assert drawn["fit/left"] == drawn["fit/right"]
    assert len(set(drawn["fit/left"])) == 6


def plan_error(store: str, sampler, key: str = "subvariants.sampler") -> str:
    with pytest.raises(ConfigErrors) as info:
        build_plan(two_bowls(store, sampler))
    (error,) = info.value.errors
    assert (error.stage, error.key) == ("fit", key)
    return error.detail


@pytest.mark.parametrize(
    ("sampler", "key", "message"),
    [
        ("bayes", "", "unknown sampler 'bayes' (choose one of: grid, random, tpe, qmc, gp, cmaes, nsga2, or a mapping"),
        ({"_target_": "optuna.samplers.NoSuchSampler"}, "._target_", "cannot import 'optuna.samplers.NoSuchSampler'"),
        ({"_target_": "optuna.samplers.QMCSampler", "sead": 0}, "", "cannot take (sead)"),
    ],
    ids=["unknown-name", "unimportable-target", "misspelt-argument"],
)
def test_a_bad_sampler_is_one_plan_time_error_naming_stage_and_key(store, sampler, key, message):
    assert message in plan_error(store, sampler, "subvariants.sampler" + key)


@pytest.mark.skipif(HAS_CMAES, reason="the cmaes package is installed")
def test_cmaes_without_its_package_fails_the_plan_naming_what_to_install(store):
    assert plan_error(store, "cmaes") == "sampler cmaes needs cmaes, not installed: pip install cmaes"


@pytest.mark.parametrize(
    ("sampler", "listed"),
    [
        ("gp", ["gp"]),
        ("nsga2", ["nsga2"]),
        ("qmc", ["qmc"]),
        (QMC_TARGET, ["optuna.samplers.QMCSampler"]),
        ("random", []),
    ],
)
def test_a_learning_sampler_is_order_dependent_with_several_workers(store, sampler, listed):
    """gp and nsga2 draw from the values told so far, which with several workers depend on which leaves finished
    first; qmc from whether its first point failed before the next was asked; random from nothing told."""
    stage = build_plan(two_bowls(store, sampler)).stages["fit"]
    assert list(stage.order_dependent(workers=2)) == listed
    assert stage.order_dependent(workers=1) == ()


@pytest.mark.parametrize(
    ("sampler", "n", "stop_at"),
    [
        pytest.param("qmc", 6, 4, id="qmc"),
        pytest.param(QMC_TARGET, 6, 8, id="qmc-target"),
        pytest.param("nsga2", 6, 4, id="nsga2"),
        pytest.param("gp", 12, 11, id="gp-after-its-startup-trials"),
    ],
)
def test_an_interrupted_sweep_resumes_drawing_the_points_of_the_uninterrupted_one(
    store, client, tmp_path, sampler, n, stop_at
):
    """Stopped by Ctrl-C after `stop_at` leaves and resumed with `resume: last`, the sweep has exactly the points
    the uninterrupted one draws on the same seeds, under the same names (a resume that drew a point again would
    name it 'x=... #2'), and no finished leaf runs again. gp is cut after its 10 random startup trials, where its
    points come from the Gaussian process (which here draws two points within 0.001 of each other, hence one '#2'
    in both sweeps)."""
    levels = {
        "variants": {"points": {"left": {"centre": -2.0}, "right": {"centre": 2.0}}},
        "subvariants": {"sampler": sampler, "n": n, "seed": 3, "params": {"x": "interval(-3, 3)"}},
    }

    def leaves(experiment: str) -> dict:
        runs = all_runs(client, experiment)
        names = {r.info.run_id: r.info.run_name for r in runs}
        return {
            (names[r.data.tags["mlflow.parentRunId"]], r.info.run_name): r
            for r in runs
            if r.data.tags["runtree.level"] == "subvariant"
        }

    stopped = stopping_config(store, tmp_path, levels, "stopped", stop_at)
    with pytest.raises(Interrupted):
        run_plan(build_plan(stopped), plots=False)
    finished = {name: r.info.run_id for name, r in leaves("stopped").items() if r.info.status == "FINISHED"}
    assert len(finished) == stop_at

    run_plan(build_plan({**stopped, "resume": "last"}), plots=False)
    run_plan(build_plan(stopping_config(store, tmp_path, levels, "uninterrupted", -1)), plots=False)

    resumed, uninterrupted = leaves("stopped"), leaves("uninterrupted")
    assert len(resumed) == 2 * n
    assert {k: r.data.params["x"] for k, r in resumed.items()} == {
        k: r.data.params["x"] for k, r in uninterrupted.items()
    }
    assert {name: resumed[name].info.run_id for name in finished} == finished
    calls = (tmp_path / "stopped.txt").read_text().splitlines()
    assert len(calls) == len(set(calls)) == len(resumed)


def learning(sampler, *, n: int):
    spec = variants({"sampler": sampler, "n": n, "seed": 0, "params": SPACE}, level="subvariant")
    return new_sampler(replace(spec, seed=study_seed(spec, "fit/a")), objective=MIN)


@pytest.mark.parametrize("t", [9, 22])
@pytest.mark.parametrize(
    "sampler",
    [
        "gp",
        pytest.param({"_target_": "optuna.samplers.NSGAIISampler", "population_size": 4}, id="nsga2-target"),
    ],
)
def test_a_learning_sampler_asked_ahead_and_told_out_of_order_resumes_as_the_uninterrupted_one(sampler, t):
    """With 3 workers, points asked before earlier ones are told and told as they finish: replaying the recorded
    asks and tells makes a resumed gp (past its 10 startup trials at t=22) or nsga2 (past its first generation of
    4) ask exactly the points the uninterrupted one asked. Without the replay the resumed study would be told the
    reused values in another order and draw elsewhere."""
    n = 14
    uninterrupted = Recorder(learning(sampler, n=n))
    events = parallel(uninterrupted, workers=3, seed=0)
    assert [i for kind, i in events if kind == "tell"] != sorted(range(n)), "everything was told in order"
    history = cut_at(uninterrupted, events, t)

    sampler_again = learning(sampler, n=n)
    sampler_again.replay(history)
    assert_resumes_as(Recorder(sampler_again, history), uninterrupted, history, events[t:])


def test_qmc_replays_a_failed_first_point_as_it_was_told():
    """Optuna's QMCSampler draws at random the point after a first one that failed before it was asked: a resume that
    drew qmc's points again from a fresh study, where the redone first leaf succeeds, would go on with other points.
    The replay tells the failure where it came, so the resumed sweep asks exactly the uninterrupted one's points."""

    calls = []

    def first_fails(params) -> float | None:
        calls.append(params)
        return None if len(calls) == 1 else params["x"]

    uninterrupted = Recorder(learning("qmc", n=8))
    points = drain(uninterrupted, first_fails)
    history = [p for p in uninterrupted.history() if p.index < 4]

    redrawn = learning("qmc", n=8)
    assert [dict(p.params) for p in drain(redrawn, objective=lambda params: params["x"])] != [
        dict(p.params) for p in points
    ]
    resumed = learning("qmc", n=8)
    resumed.replay(history)
    assert [(p.name, dict(p.params)) for p in drain(resumed, lambda params: params["x"])] == [
        (p.name, dict(p.params)) for p in points
    ]
