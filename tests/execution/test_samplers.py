"""Samplers: the points each sweep asks for, and what `tpe` learns from the values it is told.

The learning tests would fail if `tell` did nothing or `tpe` were random search: on the same seed, TPE without
results draws exactly the points random search draws, so every comparison below is against that baseline.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import warnings
from dataclasses import replace
from pathlib import Path

import pytest

from runtree_pipeline import build_plan, run_plan
from runtree_pipeline.errors import Interrupted
from runtree_pipeline.execution.samplers import FixedSampler, OptunaSampler, Told, new_sampler, study_seed
from runtree_pipeline.plan.objective import Objective
from runtree_pipeline.plan.sweeps import parse_sweep, point_name
from runtree_pipeline.tracking.index import PreviousPoint
from tests.conftest import all_runs
from tests.targets import bowl_at, count_or_stop

MIN = Objective.of("y")


def told(value: float | None) -> Told:
    """One objective's value as a sampler is told it (None: a failure)."""
    return Told(None if value is None else (value,))


def variants(raw, level="variant"):
    return parse_sweep(raw, stage="train", level=level)


def drain(sampler, objective=None):
    """Ask until the sampler is exhausted, telling each point `objective(params)` before the next ask."""
    points = []
    while (point := sampler.ask()) is not None:
        points.append(point)
        if objective is not None:
            sampler.tell(point, told(objective(point.params)))
    return points


# --- grid and random: which points ---------------------------------------------------------------------------------


def test_fixed_sampler_yields_points_in_order_then_none():
    spec = variants({"params": {"bs": "choice(32, 64)", "n": "range(1,3)"}})
    sampler = new_sampler(spec, objective=MIN)
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
    first = [(p.name, dict(p.params)) for p in drain(new_sampler(spec, objective=MIN))]
    second = [(p.name, dict(p.params)) for p in drain(new_sampler(spec, objective=MIN))]
    assert first == second
    assert len({params["lr"] for _, params in first}) == 8
    other = [dict(p.params) for p in drain(new_sampler(variants({**RANDOM, "seed": 4}), objective=MIN))]
    assert other != [params for _, params in first]


def test_a_parents_study_seed_is_the_same_in_every_process_and_release():
    """A resume derives a recorded parent's seed again, in another process and maybe another release: were the
    derivation salted per process (Python's `hash()`) or changed, the resumed parent would draw other points."""
    spec = variants({"sampler": "tpe", "n": 8, "seed": 0, "params": {"x": "interval(-3, 3)"}}, level="subvariant")
    assert study_seed(spec, "fit/small") == 1896030154
    assert study_seed(spec, "fit/wide") == 1926845842
    assert study_seed(replace(spec, seed=1), "fit/small") != 1896030154
    assert study_seed(replace(spec, seed=None), "fit/small") is None
    assert study_seed(variants({"params": {"x": "1,2"}}), "fit") is None


def test_random_draws_exactly_n_then_none():
    spec = variants(RANDOM)
    sampler = new_sampler(spec, objective=Objective.of("y", "max"))
    assert isinstance(sampler, OptunaSampler) and not sampler.learns
    points = [sampler.ask() for _ in range(7)]
    assert not sampler.exhausted
    points += drain(sampler)
    assert len(points) == spec.size() == 8
    assert [p.index for p in points] == list(range(8))
    assert sampler.exhausted and sampler.ask() is None


def test_random_values_stay_inside_the_space():
    spec = variants({**RANDOM, "n": 30})
    for point in drain(new_sampler(spec, objective=MIN)):
        assert 0.001 <= point.params["lr"] <= 0.1
        assert point.params["bs"] in (16, 32, 64)
        assert point.params["opt"] == "adam"
        assert point.name == point_name({k: point.params[k] for k in ("lr", "bs")})


def test_random_log_interval_spreads_over_decades():
    spec = variants({"sampler": "random", "n": 60, "seed": 0, "params": {"lr": "tag(log, interval(0.0001, 1))"}})
    values = [p.params["lr"] for p in drain(new_sampler(spec, objective=MIN))]
    assert sum(v < 0.01 for v in values) > len(values) / 4


def test_random_repeated_names_become_numbered():
    spec = variants({"sampler": "random", "n": 3, "seed": 0, "params": {"k": "choice(1)"}})
    assert [p.name for p in drain(new_sampler(spec, objective=MIN))] == ["k=1", "k=1 #2", "k=1 #3"]


def test_each_sampler_names_its_own_siblings():
    spec = variants({"sampler": "random", "n": 2, "seed": 0, "params": {"k": "choice(1)"}})
    assert [p.name for p in drain(new_sampler(spec, objective=MIN))] == ["k=1", "k=1 #2"]
    assert [p.name for p in drain(new_sampler(spec, objective=MIN))] == ["k=1", "k=1 #2"]


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
        study = new_sampler(variants(bowl(sampler, seed=seed)), objective=Objective.of("y", direction))
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
    untold = drain(new_sampler(variants(bowl("tpe", seed=0, n=20)), objective=MIN))
    random = drain(new_sampler(variants(bowl("random", seed=0, n=20)), objective=MIN))
    assert [dict(p.params) for p in untold] == [dict(p.params) for p in random]
    told = drain(new_sampler(variants(bowl("tpe", seed=0, n=20)), objective=MIN), distance)
    assert [dict(p.params) for p in told][10:] != [dict(p.params) for p in random][10:]


SPACE = {"x": "interval(-2, 3)", "y": "choice(-2, 0, 2)", "c": 7}


def asked_after(order, values, *, seed: int = 0):
    """A tpe sweep of 16 asks 12 points ahead (as a parallel executor does), tells them in `order` with `values`,
    and returns the 4 points it asks next."""
    sampler = new_sampler(variants({"sampler": "tpe", "n": 16, "seed": seed, "params": SPACE}), objective=MIN)
    assert sampler.learns
    ahead = [sampler.ask() for _ in range(12)]
    assert len({p.index for p in ahead}) == 12 and not sampler.exhausted
    for i in order:
        sampler.tell(ahead[i], told(values(ahead)[i]))
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
    sampler = new_sampler(spec, objective=Objective.of("y", direction))
    points = []
    while (point := sampler.ask()) is not None:
        points.append(point)
        assert -2 <= point.params["x"] <= 3
        assert point.params["y"] in (-2, 0, 2)
        assert point.params["c"] == 7
        value = (point.params["x"] - 1) ** 2 + point.params["y"]
        sampler.tell(point, told(None if len(points) == 3 else (math.nan if len(points) == 4 else value)))
    assert len(points) == 14
    assert sampler.ask() is None
    assert len({p.name for p in points}) == 14


def failing_study(failure, *, fail_at=(2, 5, 11, 12), n: int = 20) -> list[float]:
    """A 1-D tpe sweep whose points at `fail_at` are told `failure`: the x of every point it asks."""
    spec = variants({"sampler": "tpe", "n": n, "seed": 2, "params": {"x": "interval(-4, 4)", "c": 7}})
    sampler = new_sampler(spec, objective=MIN)
    xs = []
    while (point := sampler.ask()) is not None:
        xs.append(point.params["x"])
        sampler.tell(point, told(failure if point.index in fail_at else (point.params["x"] - 1) ** 2))
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


class Recorder:
    """Asks and tells a sampler as the scheduler does, keeping what the scheduler writes on each child's run: where
    it was asked (at creation) and where and what it was told (in its end write). Started from a previous history,
    it keeps those records as the runs keep their tags."""

    def __init__(self, sampler, previous=()) -> None:
        self.sampler = sampler
        self.points = {}
        self.asked = {p.index: (p.params, p.asked_after) for p in previous}
        self.told = {p.index: (p.told, p.value) for p in previous if p.told is not None}

    @property
    def exhausted(self) -> bool:
        return self.sampler.exhausted

    def ask(self):
        point = self.sampler.ask()
        if point is not None:
            self.points[point.index] = point
            self.asked.setdefault(point.index, (dict(point.params), self.sampler.asked_after(point)))
        return point

    def tell(self, point, how: Told) -> None:
        position = self.sampler.tell_position(point)
        if position is not None:
            self.told[point.index] = (position, how.values)
        self.sampler.tell(point, how)

    def history(self) -> list[PreviousPoint]:
        return [
            PreviousPoint(params, index, after, *self.told.get(index, (None, None)))
            for index, (params, after) in sorted(self.asked.items())
        ]


def tpe(*, n: int = 20, seed: int = 0):
    return new_sampler(variants({"sampler": "tpe", "n": n, "seed": seed, "params": SPACE}), objective=MIN)


def replayed(history, *, n: int = 20, seed: int = 0):
    sampler = tpe(n=n, seed=seed)
    sampler.replay(history)
    return sampler


def objective(params) -> float:
    return (params["x"] - 1) ** 2 + params["y"]


def sequential(cut: int, *, in_flight: bool = False, n: int = 20):
    """A tpe sweep asked and told in turn, and its history as a kill after `cut` asks leaves it: the last point
    still running (never told) when `in_flight`."""
    recorder = Recorder(tpe(n=n))
    points = drain(recorder, objective)
    history = [p for p in recorder.history() if p.index < cut]
    if in_flight:
        history[-1] = replace(history[-1], told=None, value=None)
    return points, history


@pytest.mark.parametrize("recorded", ["asks-and-tells", "params-only"])
@pytest.mark.parametrize("cut", [3, 12, 20])
def test_a_replayed_study_asks_the_previous_points_first_with_their_names(cut, recorded):
    """On resume the previous execution's points come back first, in order and with the same names, so the
    scheduler finds their runs by key and reuses or redoes them in place; the study still asks n points in all. A
    store from before asks and tells were recorded (params only) still resumes so."""
    uninterrupted, history = sequential(cut)
    if recorded == "params-only":
        history = [PreviousPoint(p.params) for p in history]
    resumed = drain(replayed(history), objective)
    assert len(resumed) == 20
    assert [(p.name, dict(p.params)) for p in resumed[:cut]] == [(p.name, dict(p.params)) for p in uninterrupted[:cut]]


def test_a_replay_longer_than_the_sweep_asks_only_n_points():
    uninterrupted, history = sequential(20)
    resumed = drain(replayed(history, n=5), objective)
    assert [dict(p.params) for p in resumed] == [dict(p.params) for p in uninterrupted[:5]]


@pytest.mark.parametrize("in_flight", [False, True], ids=["between-leaves", "mid-leaf"])
@pytest.mark.parametrize("cut", [pytest.param(3, id="within-startup"), pytest.param(12, id="after-startup")])
def test_a_replayed_study_goes_on_as_the_uninterrupted_one(cut, in_flight):
    """A point still running at the kill comes back untold, and is told when it is redone."""
    uninterrupted, history = sequential(cut, in_flight=in_flight)
    recorder = Recorder(replayed(history), history)
    resumed = drain(recorder, objective)
    assert len({p.name.split(" #")[0] for p in resumed}) == 20, "a resumed study asked a point it already had"
    assert [(p.name, dict(p.params)) for p in resumed] == [(p.name, dict(p.params)) for p in uninterrupted]
    assert recorder.history() == sequential(20)[1]


def parallel(recorder, *, workers: int, seed: int):
    """Asks up to `workers` points ahead and tells one of those in flight, picked at random, until the sweep ends,
    as a parallel executor whose leaves take any time. Returns the events: ("ask", index) and ("tell", index)."""
    rng = random.Random(seed)
    running, events = [], []
    while True:
        while len(running) < workers and (point := recorder.ask()) is not None:
            running.append(point)
            events.append(("ask", point.index))
        if not running:
            return events
        point = running.pop(rng.randrange(len(running)))
        recorder.tell(point, told(failing_objective(point.params)))
        events.append(("tell", point.index))


def failing_objective(params) -> float | None:
    """`objective`, with a few leaves failing (not so many that TPE never leaves its 10 random startup trials): a
    failure is told too, and must be replayed as one."""
    return None if params["y"] == 2 and params["x"] > 1.5 else objective(params)


def cut_at(recorder: Recorder, events, t: int) -> list[PreviousPoint]:
    """The history the store holds after the first `t` events: the points asked so far, told if their tell came."""
    asked = {i for kind, i in events[:t] if kind == "ask"}
    told = {i for kind, i in events[:t] if kind == "tell"}
    return [p if p.index in told else replace(p, told=None, value=None) for p in recorder.history() if p.index in asked]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("t", [7, 23, 33])
def test_a_study_asked_ahead_and_told_out_of_order_resumes_as_the_uninterrupted_one(t, seed):
    """With 4 workers points are asked before earlier ones are told, and told in whatever order they finish: the
    record of where each ask and tell came lets a resumed study, told the rest in the same order, ask exactly the
    points the uninterrupted one asked, and record the same history."""
    uninterrupted = Recorder(tpe())
    events = parallel(uninterrupted, workers=4, seed=seed)
    assert len(events) == 40
    assert [kind for kind, _ in events[:8]] != ["ask", "tell"] * 4, "nothing was asked ahead"
    assert [i for kind, i in events if kind == "tell"] != sorted(range(20)), "everything was told in order"
    history = cut_at(uninterrupted, events, t)

    assert_resumes_as(Recorder(replayed(history), history), uninterrupted, history, events[t:])


def assert_resumes_as(resumed, uninterrupted, history, rest) -> None:
    """The resumed sampler asks the recorded points again first (the reused ones told as they were), then, told the
    rest of the events in their order, asks what the uninterrupted one asked and records the same history."""
    for previous in history:
        point = resumed.ask()
        assert (point.index, point.name) == (previous.index, uninterrupted.points[previous.index].name)
        if previous.told is not None:
            resumed.tell(point, told(failing_objective(point.params)))  # reused: the replay told it already
    for kind, index in rest:
        if kind == "ask":
            assert resumed.ask().index == index
        else:
            resumed.tell(resumed.points[index], told(failing_objective(resumed.points[index].params)))
    assert resumed.ask() is None
    names = {i: (p.name, dict(p.params)) for i, p in resumed.points.items()}
    assert names == {i: (p.name, dict(p.params)) for i, p in uninterrupted.points.items()}
    assert resumed.history() == uninterrupted.history()


def test_the_same_history_told_in_another_order_leads_elsewhere():
    """The replay test above can fail: a resume that told the same values in index order would draw other points."""
    uninterrupted = Recorder(tpe())
    events = parallel(uninterrupted, workers=4, seed=0)
    history = cut_at(uninterrupted, events, 33)
    told_in_index_order = [replace(p, told=p.index if p.told is not None else None) for p in history]
    resumed = drain(replayed(told_in_index_order), failing_objective)
    assert [dict(p.params) for p in resumed] != [dict(p.params) for p in uninterrupted.points.values()]


@pytest.mark.parametrize(
    "diverged",
    [
        pytest.param(lambda h: replayed(h, seed=1), id="other-seed"),
        pytest.param(lambda h: replayed([replace(h[5], index=6), *h[:5], *h[6:]]), id="gap"),
        pytest.param(lambda h: replayed([*h[:5], replace(h[5], told=0), *h[6:]]), id="told-before-asked"),
    ],
)
def test_a_history_the_study_does_not_reproduce_warns_once_and_enqueues_the_rest(diverged, caplog):
    """Another Optuna, a changed space or a damaged record must not stop a resume: the previous points still come
    first, as fixed trials."""
    uninterrupted, history = sequential(12)
    with caplog.at_level(logging.WARNING, logger="runtree_pipeline.execution.samplers"):
        sampler = diverged(history)
    assert len([r for r in caplog.records if "does not replay" in r.message]) == 1
    resumed = drain(sampler, objective)
    assert len(resumed) == 20
    assert [dict(p.params) for p in resumed[:12]] == [dict(p.params) for p in uninterrupted[:12]]


# --- through a pipeline ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_pipeline_asks_and_tells_every_parent_its_own_sampler(store, client, sampler):
    """Each variant's leaves are exactly the points its own sampler (seeded for that variant) asks when told each
    leaf's loss in turn: the scheduler tells the right value to the right parent's sampler (the two bowls have
    different minima, so values crossed between siblings would lead tpe elsewhere). The tree has n leaves per
    variant and the stage's best is the best leaf."""
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
        spec = variants(sweep, level="subvariant")
        own = new_sampler(replace(spec, seed=study_seed(spec, variant)), objective=MIN)
        points = drain(own, lambda params, c=centre: bowl_at(x=params["x"], centre=c)["loss"])
        asked[variant] = sorted(p.params["x"] for p in points)
        assert sorted(recorded) == asked[variant], variant
        assert all(-3 <= x <= 3 for x in recorded)
    assert asked["fit/left"] != asked["fit/right"]
    best = min(r.data.metrics["loss"] for r in leaves)
    (stage,) = [r for r in runs if r.data.tags["runtree.level"] == "stage"]
    assert stage.data.metrics["best_loss"] == best == result.stages["fit"].best.metrics["loss"]


def stops_once(*, x: float, centre: float, log_file: str, stop_at: int) -> dict:
    """`bowl_at` logging each call, except that the call after `stop_at` logged ones is a Ctrl-C, once."""
    count_or_stop(log_file, stop_at, f"{centre!r},{x!r}")
    return bowl_at(x=x, centre=centre)


GRID_OVER_TPE = {
    "variants": {"points": {"left": {"centre": -2.0}, "right": {"centre": 2.0}}},
    "subvariants": {"sampler": "tpe", "n": 14, "seed": 3, "params": {"x": "interval(-3, 3)"}},
}
TPE_OVER_TPE = {
    "variants": {"sampler": "tpe", "n": 3, "seed": 1, "params": {"centre": "interval(-2, 2)"}},
    "subvariants": {"sampler": "tpe", "n": 5, "seed": 3, "params": {"x": "interval(-3, 3)"}},
}



def stopping_config(store: str, tmp_path: Path, levels: dict, experiment: str, stop: int) -> dict:
    """A one-stage sweep of `stops_once` over `levels`, interrupted at its `stop`-th leaf (never when negative)."""
    fit = {
        "_target_": "tests.execution.test_samplers.stops_once",
        "params": {"log_file": str(tmp_path / f"{experiment}.txt"), "stop_at": stop},
        **levels,
    }
    return {"tracking_uri": store, "experiment": experiment, "objective": {"metric": "loss"}, "stages": {"fit": fit}}

@pytest.mark.parametrize(
    ("levels", "stop_at"),
    [
        pytest.param(GRID_OVER_TPE, 4, id="within-startup"),
        pytest.param(GRID_OVER_TPE, 26, id="after-startup-in-the-second-variant"),
        pytest.param(TPE_OVER_TPE, 7, id="tpe-variants"),
    ],
)
def test_an_interrupted_tpe_sweep_resumes_as_the_uninterrupted_one(store, client, tmp_path, levels, stop_at):
    """A tpe sweep stopped by Ctrl-C part-way and resumed with `resume: last` asks exactly the points the
    uninterrupted sweep asks on the same seed (none again as 'x=... #2'), without running again the leaves that had
    finished, and leaves the same record of asks and tells for a later resume."""

    def config(experiment: str, stop: int) -> dict:
        return stopping_config(store, tmp_path, levels, experiment, stop)

    def leaves(experiment: str) -> dict:
        return {
            r.info.run_name: r for r in all_runs(client, experiment) if r.data.tags["runtree.level"] == "subvariant"
        }

    with pytest.raises(Interrupted):
        run_plan(build_plan(config("stopped", stop_at)), plots=False)
    finished = {name: r.info.run_id for name, r in leaves("stopped").items() if r.info.status == "FINISHED"}
    assert len(finished) == stop_at

    run_plan(build_plan({**config("stopped", stop_at), "resume": "last"}), plots=False)
    run_plan(build_plan(config("uninterrupted", -1)), plots=False)

    resumed, uninterrupted = leaves("stopped"), leaves("uninterrupted")
    assert not any("#" in name for name in resumed)
    assert {n: r.data.params["x"] for n, r in resumed.items()} == {
        n: r.data.params["x"] for n, r in uninterrupted.items()
    }
    assert {r.info.status for r in all_runs(client, "stopped")} == {"FINISHED"}
    assert {name: resumed[name].info.run_id for name in finished} == finished
    calls = (tmp_path / "stopped.txt").read_text().splitlines()
    assert len(calls) == len(set(calls)) == len(resumed)

    def record(experiment: str) -> dict:
        return {
            r.info.run_name: (r.data.tags.get("runtree.asked"), r.data.tags.get("runtree.told"))
            for r in all_runs(client, experiment)
            if r.data.tags["runtree.level"] != "stage"
        }

    assert record("stopped") == record("uninterrupted")
    learning_children = len(uninterrupted) + (3 if levels is TPE_OVER_TPE else 0)
    assert sum(None not in tags for tags in record("uninterrupted").values()) == learning_children


def drawn_under(runs) -> dict[str, list[float]]:
    """Each parent's leaves' x, sorted, by the parent's run name."""
    names = {r.info.run_id: r.info.run_name for r in runs}
    drawn: dict[str, list[float]] = {}
    for run in runs:
        if run.data.tags["runtree.level"] == "subvariant":
            drawn.setdefault(names[run.data.tags["mlflow.parentRunId"]], []).append(float(run.data.params["x"]))
    return {parent: sorted(xs) for parent, xs in drawn.items()}


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_sibling_studies_draw_different_points_and_a_rerun_draws_them_again(store, client, sampler):
    """Two variants under one `subvariants` block and one seed: each variant's study has a seed of its own, so a
    user tuning two architectures searches two sets of points, not one set twice; a new execution of the same config
    draws the same points again. With n=8 tpe is still in its random startup trials: only the seed tells the
    siblings apart."""
    config = {
        "tracking_uri": store,
        "experiment": "siblings",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.bowl_at",
                "variants": {"points": {"small": {"centre": 1.0}, "wide": {"centre": 1.0}}},
                "subvariants": {"sampler": sampler, "n": 8, "seed": 0, "params": {"x": "interval(-3, 3)"}},
            }
        },
    }
    first = run_plan(build_plan(config), plots=False).pipeline_id
    second = run_plan(build_plan(config), plots=False).pipeline_id
    runs = all_runs(client, "siblings")
    drawn = {
        pipeline: drawn_under([r for r in runs if r.data.tags["runtree.pipeline_id"] == pipeline])
        for pipeline in (first, second)
    }
    assert first != second and sorted(drawn[first]) == ["fit/small", "fit/wide"]
    assert [len(xs) for xs in drawn[first].values()] == [8, 8]
    assert not set(drawn[first]["fit/small"]) & set(drawn[first]["fit/wide"])
    assert drawn[second] == drawn[first]


def old_seeding(spec, parent):
    """How studies were seeded before seeds were per parent: every parent with its level's own seed."""
    return spec.seed if spec.sampler in ("random", "tpe") else None


def grid_over(sampler: str) -> dict:
    return {
        "variants": {"points": {"left": {"centre": -2.0}, "right": {"centre": 2.0}}},
        "subvariants": {"sampler": sampler, "n": 8, "seed": 3, "params": {"x": "interval(-3, 3)"}},
    }


@pytest.mark.parametrize(
    ("levels", "stop_at", "reached"),
    [
        pytest.param(grid_over("random"), 4, 1, id="random-cut-in-the-first-variant"),
        pytest.param(grid_over("random"), 11, 2, id="random-cut-in-the-second-variant"),
        pytest.param(grid_over("tpe"), 4, 1, id="tpe-cut-in-the-first-variant"),
        pytest.param(grid_over("tpe"), 11, 2, id="tpe-cut-in-the-second-variant"),
        pytest.param(TPE_OVER_TPE, 7, 2, id="tpe-variants"),
    ],
)
def test_a_store_from_before_per_parent_seeds_resumes_with_the_seeds_it_was_drawn_with(
    store, client, tmp_path, monkeypatch, levels, stop_at, reached
):
    """A parent recorded by an earlier release (its study had the level's own seed; it has no `runtree.seed`) keeps
    that seed on resume, and records it if redrawn: tpe's replay reproduces its asks, random draws its points again,
    each finished leaf is reused and none runs twice. A parent that execution never reached is new, and gets a seed
    of its own."""

    def config(experiment: str, stop: int) -> dict:
        return stopping_config(store, tmp_path, levels, experiment, stop)

    def variants_of(experiment: str) -> dict:
        return {r.info.run_name: r for r in all_runs(client, experiment) if r.data.tags["runtree.level"] == "variant"}

    with monkeypatch.context() as earlier_release:
        earlier_release.setattr("runtree_pipeline.execution.scheduler.study_seed", old_seeding)
        with pytest.raises(Interrupted):
            run_plan(build_plan(config("stopped", stop_at)), plots=False)
        run_plan(build_plan(config("old", -1)), plots=False)
    for run in all_runs(client):
        if "runtree.seed" in run.data.tags:
            client.delete_tag(run.info.run_id, "runtree.seed")
    recorded = set(variants_of("stopped"))
    finished = {
        r.info.run_name: r.info.run_id
        for r in all_runs(client, "stopped")
        if r.data.tags["runtree.level"] == "subvariant" and r.info.status == "FINISHED"
    }
    assert len(finished) == stop_at and len(recorded) == reached

    run_plan(build_plan({**config("stopped", stop_at), "resume": "last"}), plots=False)

    runs = all_runs(client, "stopped")
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.info.run_name: r.info.run_id for r in runs if r.info.run_name in finished} == finished
    calls = (tmp_path / "stopped.txt").read_text().splitlines()
    drawn, old = drawn_under(runs), drawn_under(all_runs(client, "old"))
    assert len(calls) == len(set(calls)) == sum(len(xs) for xs in drawn.values())
    resumed = variants_of("stopped")
    assert sorted(resumed) == sorted(variants_of("old"))
    sweep = variants(levels["subvariants"], level="subvariant")
    for name, variant in resumed.items():
        if name in recorded:
            assert drawn[name] == old[name], name
            # A parent redrawn now records the seed it was drawn with; one reused whole is not written again.
            assert variant.data.tags.get("runtree.seed", str(sweep.seed)) == str(sweep.seed), name
        else:
            seed = study_seed(sweep, name)
            own = new_sampler(replace(sweep, seed=seed), objective=MIN)
            centre = float(variant.data.params["centre"])
            expected = drain(own, lambda params, c=centre: bowl_at(x=params["x"], centre=c)["loss"])
            assert drawn[name] == sorted(p.params["x"] for p in expected) != old[name], name
            assert variant.data.tags["runtree.seed"] == str(seed)


def test_a_retried_leaf_is_not_pruned_on_the_curve_its_first_attempt_left():
    """Optuna cannot take back a trial's reported values: the retry's own values would be compared with steps
    the first attempt already reported, so a retry is never pruned."""
    spec = variants({"params": {"x": "0,1,2"}, "pruner": {"_target_": "optuna.pruners.ThresholdPruner", "upper": 1.0}})
    sampler = new_sampler(spec, objective=MIN)
    point = sampler.ask()
    assert sampler.should_prune(point, 0, 5.0)
    second = sampler.ask()
    assert not sampler.should_prune(second, 0, 0.5)
    sampler.retrying(second)
    assert not sampler.should_prune(second, 1, 5.0)
    assert sampler.reported(second) == {0: 0.5}
