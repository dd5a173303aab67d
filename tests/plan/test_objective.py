"""Issue 21: several objectives with a Pareto front and constraints, and replicates judged by their aggregate.

The judgements are checked against brute force on hand-made results; the config is checked through `build_plan`, as a
user's YAML reaches it, with every mistake one error naming the stage and the key.
"""

from __future__ import annotations

import importlib.util
import math
import random
import re
import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtree_pipeline import build_plan
from runtree_pipeline.errors import ConfigError, ConfigErrors
from runtree_pipeline.plan.objective import Constraint, Goal, Objective

# ---- the judgements --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """A `Scored` result; `id` tells apart results with equal values."""

    id: int
    values: tuple[float, ...] | None
    feasible: bool = True
    finished: bool = True


def ids(results) -> list[int]:
    return [r.id for r in results]


def naive_front(results: list[Result], modes: tuple[str, ...]) -> list[int]:
    """O(n^2) and in signed terms (smaller is better everywhere), independent of `Goal.better`."""
    sign = [1 if m == "min" else -1 for m in modes]
    pool = [r for r in results if r.finished and r.feasible and r.values is not None]

    def key(r: Result) -> list[float]:
        return [s * v for s, v in zip(sign, r.values, strict=True)]

    def beats(q: Result, p: Result) -> bool:
        return all(a <= b for a, b in zip(key(q), key(p), strict=True)) and any(
            a < b for a, b in zip(key(q), key(p), strict=True)
        )

    return [p.id for p in pool if not any(beats(q, p) for q in pool if q is not p)]


def objective(*modes: str, select: str | None = None, constraints: tuple[Constraint, ...] = ()) -> Objective:
    return Objective(tuple(Goal(f"m{i}", mode) for i, mode in enumerate(modes)), constraints, select)


def random_results(rng: random.Random, n: int, *, grid: bool) -> list[Result]:
    """Some ineligible (unfinished, infeasible, without values), and on an integer grid ties and duplicates."""
    out = []
    for i in range(n):
        point = (rng.randint(0, 6), rng.randint(0, 6)) if grid else (rng.random(), rng.random())
        roll = rng.random()
        out.append(
            Result(
                i,
                None if roll < 0.1 else tuple(map(float, point)),
                feasible=not 0.1 <= roll < 0.25,
                finished=not 0.25 <= roll < 0.35,
            )
        )
    return out


@pytest.mark.parametrize("modes", [("min", "min"), ("min", "max"), ("max", "max")])
@pytest.mark.parametrize("grid", [False, True], ids=["continuous", "grid"])
def test_front_is_the_brute_force_front(modes, grid):
    rng = random.Random(21)
    goals = objective(*modes)
    for n in (1, 2, 7, 40, 120):
        results = random_results(rng, n, grid=grid)
        assert ids(goals.front(results)) == naive_front(results, modes)


def test_an_ineligible_result_dominates_nothing():
    """A result that would beat everyone but is infeasible, unfinished or without a value hides nothing."""
    goals = objective("min", "min")
    plain = [Result(0, (1.0, 2.0)), Result(1, (2.0, 1.0)), Result(2, (3.0, 3.0))]
    for bad in (
        Result(9, (0.0, 0.0), feasible=False),
        Result(9, (0.0, 0.0), finished=False),
        Result(9, None),
    ):
        assert ids(goals.front([bad, *plain])) == [0, 1]
        assert goals.select_one([bad, *plain]).id == 0


def test_equal_values_are_all_on_the_front_in_the_order_given():
    goals = objective("min", "max")
    results = [Result(0, (1.0, 1.0)), Result(1, (2.0, 3.0)), Result(2, (1.0, 1.0)), Result(3, (2.0, 2.0))]
    assert ids(goals.front(results)) == [0, 1, 2]


@pytest.mark.parametrize(
    ("modes", "a", "b", "expected"),
    [
        (("min", "min"), (1, 1), (1, 2), True),
        (("min", "min"), (1, 2), (1, 1), False),
        (("min", "min"), (1, 1), (1, 1), False),
        (("min", "min"), (1, 3), (2, 2), False),
        (("min", "max"), (1, 5), (2, 4), True),
        (("min", "max"), (1, 4), (2, 5), False),
        (("max", "max"), (2, 5), (1, 5), True),
    ],
)
def test_dominates(modes, a, b, expected):
    assert objective(*modes).dominates(a, b) is expected


def test_select_one_takes_the_front_member_best_on_select():
    # (1, 5) and (1, 3) tie on m0, the selected goal: the front decides, not the order
    goals = objective("min", "min")
    results = [Result(0, (1.0, 5.0)), Result(1, (1.0, 3.0)), Result(2, (2.0, 1.0))]
    assert goals.select_one(results).id == 1
    assert objective("min", "min", select="m1").select_one(results).id == 2
    assert objective("min", "max", select="m1").select_one(results).id == 0


def test_select_one_keeps_the_first_of_front_members_tied_on_select():
    goals = objective("min", "min", "min", select="m0")
    a, b = Result(0, (1.0, 2.0, 1.0)), Result(1, (1.0, 1.0, 2.0))
    assert goals.select_one([a, b]) is a
    assert goals.select_one([b, a]) is b


@pytest.mark.parametrize("modes", [("min", "min"), ("min", "max")])
@pytest.mark.parametrize("select", ["m0", "m1"])
def test_select_one_is_the_brute_force_choice(modes, select):
    rng = random.Random(7)
    goals = objective(*modes, select=select)
    i, sign = int(select[1]), 1 if modes[int(select[1])] == "min" else -1
    for n in (1, 5, 30, 90):
        results = random_results(rng, n, grid=True)
        front = [r for r in results if r.id in naive_front(results, modes)]
        expected = min(front, key=lambda r: sign * r.values[i]) if front else None  # min keeps the first
        assert goals.select_one(results) is expected


@pytest.mark.parametrize(("mode", "expected"), [("min", 2), ("max", 4)])
def test_one_goal_selects_the_best_eligible_result_first_on_ties(mode, expected):
    goals = objective(mode)
    results = [
        Result(0, (0.0,), feasible=False),
        Result(1, (0.0,), finished=False),
        Result(2, (1.0,)),
        Result(3, (1.0,)),
        Result(4, (9.0,)),
        Result(5, (9.0,)),
        Result(6, None),
        Result(7, (99.0,), feasible=False),
    ]
    assert goals.select_one(results).id == expected


def test_nothing_eligible_selects_nothing():
    results = [Result(0, None), Result(1, (1.0,), feasible=False), Result(2, (1.0,), finished=False)]
    assert objective("min").select_one(results) is None
    assert objective("min", "min").select_one([]) is None
    assert objective("min", "min").front(results) == []


def test_values_need_every_goal_finite():
    goals = objective("min", "max")
    assert goals.values({"m0": 1.0, "m1": 2.0, "other": 3.0}) == (1.0, 2.0)
    for metrics in ({"m0": 1.0}, {"m0": 1.0, "m1": math.nan}, {"m0": math.inf, "m1": 1.0}):
        assert goals.values(metrics) is None
    assert Objective().values({"m0": 1.0}) is None


def test_selected_goal_is_the_first_unless_select_names_one():
    assert objective("min", "max").metric == "m0"
    assert (objective("min", "max", select="m1").metric, objective("min", "max", select="m1").mode) == ("m1", "max")
    assert objective("min", "max", select="m1").value((3.0, 4.0)) == 4.0


# ---- replicates folded into one result -------------------------------------------------------------------------------

LOSS = Objective((Goal("loss"),))
FOUR = [1.0, 1.5, 9.0, 10.0]  # mean 5.375 is nearest 9.0; median 5.25 is 3.75 from both 1.5 and 9.0


def replicates(losses, **columns):
    return [({"loss": v, **{k: c[i] for k, c in columns.items()}}, (v,)) for i, v in enumerate(losses)]


@pytest.mark.parametrize(("how", "value", "closest"), [("mean", 5.375, 2), ("median", 5.25, 1)])
def test_aggregate_metrics_and_closest_replicate(how, value, closest):
    reps = replicates(FOUR, acc=[0.5, 0.6, 0.7, 0.8], broken=[1.0, math.nan, 1.0, 1.0])
    reps[0][0]["only_first"] = 3.0
    agg = LOSS.aggregate(how, reps)
    assert (agg.how, agg.replicates, agg.closest) == (how, 4, closest)
    assert agg.metrics["loss"] == agg.metrics[f"{how}_loss"] == value
    assert agg.metrics["std_loss"] == pytest.approx(statistics.stdev(FOUR))
    assert agg.metrics[f"{how}_acc"] == pytest.approx(0.65)
    assert set(agg.metrics) == {"loss", f"{how}_loss", "std_loss", "acc", f"{how}_acc", "std_acc"}
    assert agg.recorded() == {f"{how}_loss": value, "std_loss": agg.metrics["std_loss"], **_named(agg, how, "acc")}


def _named(agg, how, metric):
    return {f"{how}_{metric}": agg.metrics[f"{how}_{metric}"], f"std_{metric}": agg.metrics[f"std_{metric}"]}


def test_std_is_the_sample_std_and_needs_two_replicates():
    two = LOSS.aggregate("mean", replicates([1.0, 3.0]))
    assert two.metrics["std_loss"] == pytest.approx(math.sqrt(2))  # the population std would be 1
    one = LOSS.aggregate("mean", replicates([4.0]))
    assert one.metrics == {"loss": 4.0, "mean_loss": 4.0}
    assert one.recorded() == {"mean_loss": 4.0}
    assert one.closest == 0


def test_closest_is_measured_on_the_selected_goal():
    goals = Objective((Goal("loss"), Goal("latency")), select="latency")
    reps = [({"loss": 1.0, "latency": 30.0}, (1.0, 30.0)), ({"loss": 2.0, "latency": 10.0}, (2.0, 10.0))]
    reps.append(({"loss": 9.0, "latency": 18.0}, (9.0, 18.0)))
    agg = goals.aggregate("median", reps)
    assert (agg.metrics["loss"], agg.metrics["latency"], agg.closest) == (2.0, 18.0, 2)


# ---- constraints -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a <= 2", Constraint("a", "<=", 2.0)),
        ("a > -1.5", Constraint("a", ">", -1.5)),
        ("  params_m   >=  1e3 ", Constraint("params_m", ">=", 1000.0)),
        ("latency_ms < 40", Constraint("latency_ms", "<", 40.0)),
        ("params_m<=2.0", Constraint("params_m", "<=", 2.0)),
    ],
)
def test_constraint_parses(text, expected):
    assert Constraint.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a =< 2", r"must read 'metric OP number' with OP one of <=, >=, <, >, got 'a =< 2'"),
        ("a == 2", r"must read 'metric OP number'"),
        ("a <= x", r"the bound must be a finite number, got 'x' in 'a <= x'"),
        ("a <= nan", r"the bound must be a finite number"),
        ("a <= 2 or b", r"must read 'metric OP number'"),
    ],
)
def test_constraint_rejects(text, match):
    with pytest.raises(ValueError, match=match):
        Constraint.parse(text)


VALUES = [None, math.nan, math.inf, -math.inf, -3.0, 1.999, 2.0, 2.001, 5.0]
COMPARE = {"<": lambda v: v < 2.0, "<=": lambda v: v <= 2.0, ">": lambda v: v > 2.0, ">=": lambda v: v >= 2.0}


@pytest.mark.parametrize("op", ["<", "<=", ">", ">="])
def test_a_constraint_holds_only_on_a_finite_value_and_violation_says_so(op):
    rule = Constraint("a", op, 2.0)
    for value in VALUES:
        metrics = {} if value is None else {"a": value}
        expected = value is not None and math.isfinite(value) and COMPARE[op](value)
        assert rule.holds(metrics) is expected, value
        assert (rule.violation(metrics) <= 0) is expected, value
    assert Constraint("a", "<", 2.0).violation({"a": 5.0}) == 3.0


def test_feasible_needs_every_constraint():
    goals = objective("min", constraints=(Constraint("a", "<=", 2.0), Constraint("b", ">", 0.0)))
    assert goals.feasible({"a": 2.0, "b": 1.0})
    assert not goals.feasible({"a": 2.0})
    assert goals.violations({"a": 3.0, "b": 1.0}) == [1.0, 0.0]
    assert objective("min").feasible({})


# ---- the config ------------------------------------------------------------------------------------------------------

FIT = "tests.targets.lucky_seed"
QUAD = "tests.targets.quad"
TWO = [{"metric": "loss", "mode": "min"}, {"metric": "size", "mode": "min"}]
LR = {"params": {"lr": "choice(0.01, 0.1)"}}
SEEDS = {"aggregate": "mean", "params": {"seed": "range(0, 5)"}}


def plan_of(stages, **top):
    return build_plan({**top, "stages": stages}, default_experiment="x")


def fit(**extra):
    return {"_target_": FIT, "params": {"lr": 0.01, "seed": 0}, "variants": LR, **extra}


def use(param: str) -> dict:
    return {"_target_": QUAD, "depends_on": ["fit"], "params": {"x": f"${{best:fit.params.{param}}}"}}


ONE_ERROR = [
    pytest.param(
        {"fit": fit(objective=TWO, select={"metric": "latency"})},
        {},
        "fit",
        "select",
        r"'latency' is not an objective \(objectives: loss, size\)$",
        id="select-not-an-objective",
    ),
    pytest.param(
        {"fit": fit(objective={"metric": "loss"}, select="size")},
        {},
        "fit",
        "select",
        r"'size' is not an objective \(objectives: loss\)$",
        id="select-string-one-goal",
    ),
    pytest.param(
        {"fit": fit(objective=[{"mode": "min"}, {"metric": "loss"}])},
        {},
        "fit",
        "objective[0]",
        r"must be a mapping like \{metric: val_loss, mode: min\}, got \{'mode': 'min'\}$",
        id="item-without-metric",
    ),
    pytest.param(
        {"fit": fit(objective=[{"mode": "max"}])},
        {},
        "fit",
        "objective[0]",
        r"must be a mapping like",
        id="only-item-without-metric",
    ),
    pytest.param(
        {"fit": fit(objective=[{"metric": "loss"}, {"metric": "size", "mode": "maximise"}])},
        {},
        "fit",
        "objective[1].mode",
        r"must be min or max, got 'maximise'$",
        id="mode-in-list",
    ),
    pytest.param(
        {"fit": fit(objective=[{"metric": "loss", "mode": "best"}])},
        {},
        "fit",
        "objective[0].mode",
        r"must be min or max, got 'best'$",
        id="only-item-bad-mode",
    ),
    pytest.param(
        {"fit": fit(objective={"metric": "loss", "mode": "best"})},
        {},
        "fit",
        "objective.mode",
        r"must be min or max, got 'best'$",
        id="mapping-bad-mode-in-a-sweep",
    ),
    pytest.param(
        {"fit": fit(objective=[{"metric": "loss"}, {"metric": "size"}, {"metric": "loss", "mode": "max"}])},
        {},
        "fit",
        "objective[2].metric",
        r"'loss' is listed twice$",
        id="same-metric-twice",
    ),
    pytest.param(
        {"fit": fit(objective=[])},
        {},
        "fit",
        "objective",
        r"must be a mapping like \{metric: val_loss, mode: min\}, or a list of them$",
        id="empty-list",
    ),
    pytest.param(
        {"fit": fit(objective=TWO, constraints={"size": 2})},
        {},
        "fit",
        "constraints",
        r"must be a list like \['params_m <= 2.0'\], got \{'size': 2\}$",
        id="constraints-not-a-list",
    ),
    pytest.param(
        {"fit": fit(objective=TWO, constraints=["size <= 2", "loss <= x"])},
        {},
        "fit",
        "constraints[1]",
        r"the bound must be a finite number, got 'x'",
        id="constraint-bound",
    ),
    pytest.param(
        {"fit": fit(constraints=["size =< 2"])},
        {"objective": TWO},
        "fit",
        "constraints[0]",
        r"must read 'metric OP number'",
        id="constraint-operator",
    ),
    pytest.param(
        {"fit": fit(objective=TWO, subvariants={"params": {"seed": "range(0, 2)"}, "pruner": "median"})},
        {},
        "fit",
        "subvariants.pruner",
        r"cannot prune with 2 objectives \(loss, size\): Optuna prunes on one value$",
        id="pruner-on-subvariants",
    ),
    pytest.param(
        {"fit": fit(variants={**LR, "pruner": "hyperband"})},
        {"objective": TWO},
        "fit",
        "variants.pruner",
        r"cannot prune with 2 objectives",
        id="pruner-on-variants",
    ),
    pytest.param(
        {
            "fit": fit(
                objective=TWO,
                variants={
                    "sampler": {"_target_": "optuna.samplers.CmaEsSampler"},
                    "n": 4,
                    "params": {"lr": "interval(0.01, 0.1)"},
                },
            )
        },
        {},
        "fit",
        "variants.sampler",
        r"cmaes optimises one objective, this stage has 2 \(loss, size\): use nsga2, tpe, random or grid$",
        id="cmaes-target",
    ),
    pytest.param(
        {"fit": fit(objective=TWO, subvariants={"sampler": "cmaes", "n": 4, "params": {"seed": "interval(0, 1)"}})},
        {},
        "fit",
        "subvariants.sampler",
        r"cmaes optimises one objective",
        id="cmaes-name",
        marks=pytest.mark.skipif(importlib.util.find_spec("cmaes") is None, reason="needs the cmaes package"),
    ),
    pytest.param(
        {"fit": fit(objective={"metric": "loss"}, subvariants={**SEEDS, "aggregate": "average"})},
        {},
        "fit",
        "subvariants.aggregate",
        r"must be one of mean, median, got 'average'$",
        id="unknown-aggregate",
    ),
    pytest.param(
        {"fit": fit(objective={"metric": "loss"}, subvariants={**SEEDS, "aggregate": ["mean"]})},
        {},
        "fit",
        "subvariants.aggregate",
        r"must be one of mean, median, got \['mean'\]$",
        id="aggregate-not-a-name",
    ),
    pytest.param(
        {"fit": fit(objective={"metric": "loss"}, subvariants=SEEDS), "use": use("seed")},
        {},
        "use",
        "params",
        r"\$\{best:fit\.params\.seed\}: 'seed' differs between the replicates stage 'fit' aggregates",
        id="best-param-of-replicates",
    ),
    pytest.param(
        {
            "fit": {
                "_target_": FIT,
                "params": {"lr": 0.01},
                "objective": {"metric": "loss"},
                "variants": {"aggregate": "median", "params": {"seed": "range(0, 3)"}},
            },
            "use": use("seed"),
        },
        {},
        "use",
        "params",
        r"'seed' differs between the replicates stage 'fit' aggregates",
        id="best-param-of-replicated-variants",
    ),
    pytest.param(
        {"fit": fit()},
        {"objective": TWO, "select": {"metric": "latency"}},
        None,
        "select",
        r"'latency' is not an objective \(objectives: loss, size\)$",
        id="top-level-select",
    ),
]


@pytest.mark.parametrize(("stages", "top", "stage", "key", "match"), ONE_ERROR)
def test_a_bad_objective_is_one_config_error(stages, top, stage, key, match):
    with pytest.raises(ConfigErrors) as info:
        plan_of(stages, **top)
    (error,) = info.value.errors
    assert isinstance(error, ConfigError)
    assert (error.stage, error.key) == (stage, key)
    assert re.search(match, error.detail), error.detail


def test_a_param_the_replicates_share_is_a_valid_reference():
    plan = plan_of({"fit": fit(objective={"metric": "loss"}, subvariants=SEEDS), "use": use("lr")})
    assert plan.stages["fit"].aggregates and not plan.stages["use"].aggregates
    assert plan.stages["fit"].replicate_keys() == {"seed"}
    assert plan.stages["fit"].subvariants.aggregate == "mean"
    assert plan.stages["use"].references[0].key == "lr"


def test_a_stage_takes_what_it_leaves_out_from_the_top_level():
    plan = plan_of(
        {
            "inherits": fit(),
            "own_goals": fit(objective=[{"metric": "size", "mode": "max"}, {"metric": "loss", "mode": "min"}]),
            "own_rest": fit(constraints=["loss < 3"], select={"metric": "loss"}),
            "one_goal": fit(objective={"metric": "loss"}),
        },
        objective=TWO,
        constraints=["size <= 15"],
        select={"metric": "size"},
    )
    both = (Constraint("size", "<=", 15.0),)
    stages = {name: stage.objective for name, stage in plan.stages.items()}
    assert stages["inherits"] == Objective((Goal("loss"), Goal("size")), both, "size")
    assert stages["own_goals"] == Objective((Goal("size", "max"), Goal("loss")), both, "size")
    assert stages["own_rest"] == Objective((Goal("loss"), Goal("size")), (Constraint("loss", "<", 3.0),), "loss")
    # the inherited select names no goal of its own: its one goal is the selected one
    assert (stages["one_goal"].goals, stages["one_goal"].metric, stages["one_goal"].constraints) == (
        (Goal("loss"),),
        "loss",
        both,
    )


def test_one_goal_is_recorded_as_a_mapping_and_several_as_a_list_with_select():
    plan = plan_of(
        {
            "single": fit(objective={"metric": "loss", "mode": "max"}),
            "single_list": fit(objective=[{"metric": "loss"}]),
            "several": fit(objective=TWO),
            "chosen": fit(objective=TWO, select={"metric": "size"}, constraints=["size <= 15", "loss > -1.5"]),
            "none": {"_target_": QUAD, "params": {"x": 1.0}},
        }
    )
    recorded = plan.config["stages"]
    # exactly what every earlier execution recorded, so a rerun's config compares equal
    assert recorded["single"]["objective"] == {"metric": "loss", "mode": "max"}
    assert recorded["single_list"]["objective"] == {"metric": "loss", "mode": "min"}
    assert recorded["none"]["objective"] == {"metric": None, "mode": "min"}
    for name in ("single", "single_list", "none"):
        assert "select" not in recorded[name] and "constraints" not in recorded[name]
    assert recorded["several"]["objective"] == TWO
    assert recorded["several"]["select"] == {"metric": "loss"}
    assert (recorded["chosen"]["select"], recorded["chosen"]["constraints"]) == (
        {"metric": "size"},
        ["size <= 15", "loss > -1.5"],
    )


# ---- through the command line ----------------------------------------------------------------------------------------

BAD_SELECT = """
# @package _global_
experiment: pareto
stages:
  fit:
    _target_: tests.targets.lucky_seed
    params: {lr: 0.01, seed: 0}
    objective:
      - {metric: loss, mode: min}
      - {metric: size, mode: min}
    select: {metric: latency}
    variants:
      params:
        lr: choice(0.01, 0.1)
    subvariants:
      aggregate: mean
      params:
        seed: range(0, 3)
"""


@pytest.mark.fresh_store
def test_the_cli_reports_a_bad_select_on_one_line_and_writes_nothing(run_cli, store, tmp_path):
    conf = tmp_path / "conf" / "sweep"
    conf.mkdir(parents=True)
    (conf / "pareto.yaml").write_text(textwrap.dedent(BAD_SELECT))
    proc = run_cli("--config-dir", str(tmp_path / "conf"), "+sweep=pareto", f"tracking_uri={store}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        "runtree: error: stage 'fit', key 'select': 'latency' is not an objective (objectives: loss, size)"
    ]
    assert not Path(store.removeprefix("sqlite:///")).exists()
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "outputs").exists()
