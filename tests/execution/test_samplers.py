"""Samplers: the points each sweep asks for, and what `tpe` learns from the values it is told.

The learning tests would fail if `tell` did nothing or `tpe` were random search: on the same seed, TPE without
results draws exactly the points random search draws, so every comparison below is against that baseline.
"""

from __future__ import annotations

import math
import statistics
import warnings

import pytest

from runtree_pipeline import build_plan, run_plan
from runtree_pipeline.execution.samplers import FixedSampler, OptunaSampler, new_sampler
from runtree_pipeline.plan.sweeps import parse_sweep, point_name
from tests.conftest import all_runs
from tests.targets import bowl_at


def variants(raw, level="variant"):
    return parse_sweep(raw, stage="train", level=level)


def drain(sampler, objective=None):
    """Ask until the sampler is exhausted, telling each point `objective(params)` before the next ask."""
    points = []
    while (point := sampler.ask()) is not None:
        points.append(point)
        if objective is not None:
            sampler.tell(point, objective(point.params))
    return points


# --- grid and random: which points ---------------------------------------------------------------------------------


def test_fixed_sampler_yields_points_in_order_then_none():
    spec = variants({"params": {"bs": "choice(32, 64)", "n": "range(1,3)"}})
    sampler = new_sampler(spec, direction="min")
    assert isinstance(sampler, FixedSampler) and not sampler.learns
    assert not sampler.exhausted
    points = drain(sampler)
    assert points == list(spec.points)
    assert sampler.exhausted and sampler.ask() is None


RANDOM = {
    "sampler": "random",
    "n": 8,
    "seed": 3,
    "params": {"lr": "tag(log, interval(0.001, 0.1))", "bs": "choice(16, 32, 64)", "opt": "adam"},
}


def test_random_with_seed_is_deterministic():
    spec = variants(RANDOM)
    first = [(p.name, dict(p.params)) for p in drain(new_sampler(spec, direction="min"))]
    second = [(p.name, dict(p.params)) for p in drain(new_sampler(spec, direction="min"))]
    assert first == second
    assert len({params["lr"] for _, params in first}) == 8
    other = [dict(p.params) for p in drain(new_sampler(variants({**RANDOM, "seed": 4}), direction="min"))]
    assert other != [params for _, params in first]


def test_random_draws_exactly_n_then_none():
    spec = variants(RANDOM)
    sampler = new_sampler(spec, direction="max")
    assert isinstance(sampler, OptunaSampler) and not sampler.learns
    points = [sampler.ask() for _ in range(7)]
    assert not sampler.exhausted
    points += drain(sampler)
    assert len(points) == spec.size() == 8
    assert [p.index for p in points] == list(range(8))
    assert sampler.exhausted and sampler.ask() is None


def test_random_values_stay_inside_the_space():
    spec = variants({**RANDOM, "n": 30})
    for point in drain(new_sampler(spec, direction="min")):
        assert 0.001 <= point.params["lr"] <= 0.1
        assert point.params["bs"] in (16, 32, 64)
        assert point.params["opt"] == "adam"
        assert point.name == point_name({k: point.params[k] for k in ("lr", "bs")})


def test_random_log_interval_spreads_over_decades():
    spec = variants({"sampler": "random", "n": 60, "seed": 0, "params": {"lr": "tag(log, interval(0.0001, 1))"}})
    values = [p.params["lr"] for p in drain(new_sampler(spec, direction="min"))]
    assert sum(v < 0.01 for v in values) > len(values) / 4


def test_random_repeated_names_become_numbered():
    spec = variants({"sampler": "random", "n": 3, "seed": 0, "params": {"k": "choice(1)"}})
    assert [p.name for p in drain(new_sampler(spec, direction="min"))] == ["k=1", "k=1 #2", "k=1 #3"]


def test_each_sampler_names_its_own_siblings():
    spec = variants({"sampler": "random", "n": 2, "seed": 0, "params": {"k": "choice(1)"}})
    assert [p.name for p in drain(new_sampler(spec, direction="min"))] == ["k=1", "k=1 #2"]
    assert [p.name for p in drain(new_sampler(spec, direction="min"))] == ["k=1", "k=1 #2"]


# --- tpe: what it learns from tells ---------------------------------------------------------------------------------

OPTIMUM = (1.0, -2.0)


def distance(params) -> float:
    return math.hypot(params["x"] - OPTIMUM[0], params["y"] - OPTIMUM[1])


def bowl(sampler: str, *, seed: int, n: int = 50) -> dict:
    """A 2-D bowl around OPTIMUM: random search and TPE on the same seed and space."""
    return {"sampler": sampler, "n": n, "seed": seed, "params": {"x": "interval(-5, 5)", "y": "interval(-5, 5)"}}


def late_distance(sampler: str, *, direction: str, seeds=(0, 1), last: int = 20) -> float:
    """Mean distance to the optimum of each study's last points, when every point is told how good it was."""
    sign = 1 if direction == "min" else -1
    late = []
    for seed in seeds:
        study = new_sampler(variants(bowl(sampler, seed=seed)), direction=direction)
        points = drain(study, lambda params: sign * distance(params) ** 2)
        late += [distance(p.params) for p in points[-last:]]
    return statistics.mean(late)


@pytest.mark.parametrize("direction", ["min", "max"])
def test_tpe_learns_from_tells_where_random_search_does_not(direction):
    """After 30 tells, TPE's last 20 points sit clearly nearer the optimum than random search's on the same seeds:
    0.48 of random's mean distance on seeds 0 and 1, 0.37-0.59 on any pair of seeds 0-39, exactly 1.0 if tells did
    nothing. With the objective negated and maximised TPE must find the same optimum: a sampler that ignored
    `direction` would run to the rim."""
    tpe, random = late_distance("tpe", direction=direction), late_distance("random", direction=direction)
    assert tpe < 0.75 * random, (tpe, random)


def test_tpe_told_nothing_draws_what_random_search_draws():
    """The baseline the learning test relies on: without results TPE samples like random search on its seed, so
    the difference there comes from the tells alone."""
    untold = drain(new_sampler(variants(bowl("tpe", seed=0, n=20)), direction="min"))
    random = drain(new_sampler(variants(bowl("random", seed=0, n=20)), direction="min"))
    assert [dict(p.params) for p in untold] == [dict(p.params) for p in random]
    told = drain(new_sampler(variants(bowl("tpe", seed=0, n=20)), direction="min"), distance)
    assert [dict(p.params) for p in told][10:] != [dict(p.params) for p in random][10:]


SPACE = {"x": "interval(-2, 3)", "y": "choice(-2, 0, 2)", "c": 7}


def asked_after(order, values, *, seed: int = 0):
    """A tpe sweep of 16 asks 12 points ahead (as a parallel executor does), tells them in `order` with `values`,
    and returns the 4 points it asks next."""
    sampler = new_sampler(variants({"sampler": "tpe", "n": 16, "seed": seed, "params": SPACE}), direction="min")
    assert sampler.learns
    ahead = [sampler.ask() for _ in range(12)]
    assert len({p.index for p in ahead}) == 12 and not sampler.exhausted
    for i in order:
        sampler.tell(ahead[i], values(ahead)[i])
    return [dict(p.params) for p in drain(sampler, lambda params: (params["x"] - 1) ** 2 + params["y"])]


def test_points_asked_ahead_learn_the_same_whatever_order_they_are_told_in():
    """Parallel workers finish in any order: each value must be credited to its own point."""

    def values(points):
        return [(p.params["x"] - 1) ** 2 + p.params["y"] for p in points]

    forward = asked_after(range(12), values)
    assert len(forward) == 4
    assert asked_after(reversed(range(12)), values) == forward
    assert asked_after([5, 0, 11, 3, 1, 10, 2, 9, 4, 8, 6, 7], values) == forward
    # The comparison can fail: the same values credited to the wrong points lead elsewhere.
    assert asked_after(range(12), lambda points: values(points)[::-1]) != forward


@pytest.mark.parametrize("direction", ["min", "max"])
def test_tpe_asks_n_points_inside_the_space_also_after_failed_tells(direction):
    spec = variants({"sampler": "tpe", "n": 14, "seed": 1, "params": SPACE})
    sampler = new_sampler(spec, direction=direction)
    points = []
    while (point := sampler.ask()) is not None:
        points.append(point)
        assert -2 <= point.params["x"] <= 3
        assert point.params["y"] in (-2, 0, 2)
        assert point.params["c"] == 7
        value = (point.params["x"] - 1) ** 2 + point.params["y"]
        sampler.tell(point, None if len(points) == 3 else (math.nan if len(points) == 4 else value))
    assert len(points) == 14
    assert sampler.ask() is None
    assert len({p.name for p in points}) == 14


def failing_study(failure, *, fail_at=(2, 5, 11, 12), n: int = 20) -> list[float]:
    """A 1-D tpe sweep whose points at `fail_at` are told `failure`: the x of every point it asks."""
    spec = variants({"sampler": "tpe", "n": n, "seed": 2, "params": {"x": "interval(-4, 4)", "c": 7}})
    sampler = new_sampler(spec, direction="min")
    xs = []
    while (point := sampler.ask()) is not None:
        xs.append(point.params["x"])
        sampler.tell(point, failure if point.index in fail_at else (point.params["x"] - 1) ** 2)
    return xs


def optuna_study_failing_at(fail_at=(2, 5, 11, 12), n: int = 20) -> list[float]:
    """The same sweep in plain Optuna, those trials told as FAIL."""
    import optuna
    from optuna.distributions import FloatDistribution

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=2), direction="minimize")
    xs = []
    for i in range(n):
        trial = study.ask({"x": FloatDistribution(-4.0, 4.0)})
        xs.append(trial.params["x"])
        if i in fail_at:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, (trial.params["x"] - 1) ** 2)
    return xs


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(None, id="none"),
        pytest.param(math.nan, id="nan"),
        pytest.param(math.inf, id="inf"),
        pytest.param(-math.inf, id="minus-inf"),
    ],
)
def test_a_failed_tell_is_a_failed_trial_not_a_result(failure):
    """A failed leaf (the scheduler tells None) or a non-finite value is recorded as a FAIL trial: TPE goes on
    exactly as Optuna does with those trials failed, silently. -inf told as a result would be the best ever seen."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xs = failing_study(failure)
    assert xs == optuna_study_failing_at()
    # The comparison can fail: the same trials told a (good) value lead elsewhere.
    assert failing_study(0.0)[13:] != xs[13:]


# --- tpe: resuming --------------------------------------------------------------------------------------------------


def replayed(points, *, n: int):
    sampler = new_sampler(variants({"sampler": "tpe", "n": n, "seed": 0, "params": SPACE}), direction="min")
    sampler.replay([dict(p.params) for p in points])
    return sampler


def objective(params) -> float:
    return (params["x"] - 1) ** 2 + params["y"]


@pytest.mark.parametrize("cut", [3, 12, 20])
def test_a_replayed_study_asks_the_previous_points_first_with_their_names(cut):
    """On resume the previous execution's points come back first, in order and with the same names, so the
    scheduler finds their runs by key and reuses or redoes them in place; the study still asks n points in all."""
    uninterrupted = drain(
        new_sampler(variants({"sampler": "tpe", "n": 20, "seed": 0, "params": SPACE}), direction="min"), objective
    )
    resumed = drain(replayed(uninterrupted[:cut], n=20), objective)
    assert len(resumed) == 20
    assert [(p.name, dict(p.params)) for p in resumed[:cut]] == [(p.name, dict(p.params)) for p in uninterrupted[:cut]]


def test_a_replay_longer_than_the_sweep_asks_only_n_points():
    uninterrupted = drain(
        new_sampler(variants({"sampler": "tpe", "n": 20, "seed": 0, "params": SPACE}), direction="min"), objective
    )
    resumed = drain(replayed(uninterrupted, n=5), objective)
    assert [dict(p.params) for p in resumed] == [dict(p.params) for p in uninterrupted[:5]]


@pytest.mark.xfail(
    strict=True,
    reason="OptunaSampler.replay enqueues the previous points as fixed trials, which does not advance the seeded "
    "samplers' random state: the resumed study then draws differently, and inside TPE's 10 startup trials it asks "
    "again the very points it already has ('x=... #2')",
)
@pytest.mark.parametrize("cut", [pytest.param(3, id="within-startup"), pytest.param(12, id="after-startup")])
def test_a_replayed_study_goes_on_as_the_uninterrupted_one(cut):
    spec = {"sampler": "tpe", "n": 20, "seed": 0, "params": SPACE}
    uninterrupted = drain(new_sampler(variants(spec), direction="min"), objective)
    resumed = drain(replayed(uninterrupted[:cut], n=20), objective)
    assert len({p.name.split(" #")[0] for p in resumed}) == 20, "a resumed study asked a point it already had"
    assert [dict(p.params) for p in resumed] == [dict(p.params) for p in uninterrupted]


# --- through a pipeline ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_pipeline_asks_and_tells_every_parent_its_own_sampler(store, client, sampler):
    """Each variant's leaves are exactly the points its own sampler asks when told each leaf's loss in turn: the
    scheduler tells the right value to the right parent's sampler (the two bowls have different minima, so values
    crossed between siblings would lead tpe elsewhere). The tree has n leaves per variant and the stage's best is
    the best leaf."""
    sweep = {"sampler": sampler, "n": 12, "seed": 1, "params": {"x": "interval(-3, 3)"}}
    centres = {"fit/left": -2.0, "fit/right": 2.0}
    config = {
        "tracking_uri": store,
        "experiment": "sampled",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.bowl_at",
                "variants": {"points": {"left": {"centre": -2.0}, "right": {"centre": 2.0}}},
                "subvariants": sweep,
            }
        },
    }
    result = run_plan(build_plan(config), plots=False)
    runs = all_runs(client, "sampled")
    names = {r.info.run_id: r.info.run_name for r in runs}
    leaves = [r for r in runs if r.data.tags["runtree.level"] == "subvariant"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(names[r.data.tags["mlflow.parentRunId"]] for r in leaves) == ["fit/left"] * 12 + ["fit/right"] * 12
    asked = {}
    for variant, centre in centres.items():
        recorded = [float(r.data.params["x"]) for r in leaves if names[r.data.tags["mlflow.parentRunId"]] == variant]
        own = new_sampler(variants(sweep, level="subvariant"), direction="min")
        points = drain(own, lambda params, c=centre: bowl_at(x=params["x"], centre=c)["loss"])
        asked[variant] = sorted(p.params["x"] for p in points)
        assert sorted(recorded) == asked[variant], variant
        assert all(-3 <= x <= 3 for x in recorded)
    if sampler == "tpe":
        assert asked["fit/left"] != asked["fit/right"]
    best = min(r.data.metrics["loss"] for r in leaves)
    (stage,) = [r for r in runs if r.data.tags["runtree.level"] == "stage"]
    assert stage.data.metrics["best_loss"] == best == result.stages["fit"].best.metrics["loss"]
