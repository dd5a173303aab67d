from __future__ import annotations

import re

import pytest

from runtree_pipeline.errors import ConfigError
from runtree_pipeline.plan.sweeps import PRUNERS, SWEEP_KEYS, format_value, parse_sweep, point_name


def variants(raw, level="variant"):
    return parse_sweep(raw, stage="train", level=level)


def test_explicit_points_keep_names_order_and_params():
    spec = variants({"points": {"z": {"lr": 0.1}, "a": {"lr": 0.01, "opt.m": 0.9}, "empty": None}})
    assert spec.sampler == "grid"
    assert [p.name for p in spec.points] == ["z", "a", "empty"]
    assert [p.index for p in spec.points] == [0, 1, 2]
    assert [dict(p.params) for p in spec.points] == [{"lr": 0.1}, {"lr": 0.01, "opt.m": 0.9}, {}]
    assert spec.keys == ("lr", "opt.m")
    assert spec.size() == 3


def test_explicit_points_accept_sampler_grid_and_tags():
    spec = variants({"points": {"p": {"x": 1}}, "sampler": "grid", "tags": {"kind": 1}})
    assert [p.name for p in spec.points] == ["p"]
    assert spec.tags == {"kind": "1"}


def test_grid_is_full_product_with_readable_names():
    spec = variants({"params": {"bs": "choice(32, 64)", "n": "range(1,3)"}})
    assert spec.sampler == "grid"
    assert [p.name for p in spec.points] == ["bs=32,n=1", "bs=32,n=2", "bs=64,n=1", "bs=64,n=2"]
    assert [dict(p.params) for p in spec.points] == [
        {"bs": 32, "n": 1},
        {"bs": 32, "n": 2},
        {"bs": 64, "n": 1},
        {"bs": 64, "n": 2},
    ]
    assert [p.index for p in spec.points] == [0, 1, 2, 3]
    assert spec.keys == ("bs", "n")
    assert spec.size() == 4


def test_grid_points_carry_fixed_values():
    spec = variants({"params": {"bs": "choice(32, 64)", "n": "range(1,3)", "opt": "adam", "lr": 0.1, "deep": {"a": 1}}})
    assert len(spec.points) == 4
    for point in spec.points:
        assert point.params["opt"] == "adam"
        assert point.params["lr"] == 0.1
        assert point.params["deep.a"] == 1
        assert point.name == point_name({"bs": point.params["bs"], "n": point.params["n"]})
    assert {(p.params["bs"], p.params["n"]) for p in spec.points} == {(32, 1), (32, 2), (64, 1), (64, 2)}
    assert len({p.name for p in spec.points}) == 4


def test_grid_repeated_values_get_unique_names():
    spec = variants({"params": {"x": "choice(1, 1, 1)"}})
    assert [p.name for p in spec.points] == ["x=1", "x=1 #2", "x=1 #3"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("choice(32, 64)", [32, 64], id="choice"),
        pytest.param("choice(64, 32)", [64, 32], id="choice-keeps-order"),
        pytest.param("32,64", [32, 64], id="comma-list"),
        pytest.param("range(1,3)", [1, 2], id="range"),
        pytest.param("range(0,10,5)", [0, 5], id="range-step"),
        pytest.param("choice(a, b)", ["a", "b"], id="choice-strings"),
        pytest.param("choice(0.1, 1e-3)", [0.1, 0.001], id="choice-floats"),
        pytest.param("adam", ["adam"], id="fixed-string"),
        pytest.param("true", [True], id="fixed-bool-grammar"),
        pytest.param(0.5, [0.5], id="fixed-non-string"),
        pytest.param([1, 2], [[1, 2]], id="fixed-list"),
    ],
)
def test_grammar_values(value, expected):
    spec = variants({"params": {"k": value}})
    assert [p.params["k"] for p in spec.points] == expected


@pytest.mark.parametrize(
    ("value", "sweep", "continuous"),
    [
        pytest.param("interval(0, 1)", True, True, id="interval"),
        pytest.param("tag(log, interval(0.001, 0.1))", True, True, id="log-interval"),
        pytest.param("choice(1, 2)", True, False, id="choice"),
        pytest.param("range(1, 3)", True, False, id="range"),
        pytest.param("adam", False, False, id="fixed"),
    ],
)
def test_dimension_kinds(value, sweep, continuous):
    spec = variants({"params": {"k": value}, "sampler": "random", "n": 1})
    (dim,) = spec.dimensions
    assert (dim.key, dim.is_sweep, dim.is_continuous) == ("k", sweep, continuous)


@pytest.mark.parametrize(
    ("raw", "key", "match"),
    [
        pytest.param(5, "variants", "must be a mapping with `points` or `params`", id="not-a-mapping"),
        pytest.param(
            {"params": {"x": 1}, "sampel": "random"},
            "variants",
            r"unknown key\(s\) sampel \(allowed: points",
            id="unknown-key",
        ),
        pytest.param(
            {"points": {"a": {}}, "params": {"x": 1}}, "variants", "exactly one of `points` or `params`", id="both"
        ),
        pytest.param({"sampler": "random", "n": 2}, "variants", "exactly one of `points` or `params`", id="neither"),
        pytest.param(
            {"points": {"a": {"x": 1}}, "sampler": "random"},
            "variants.sampler",
            "applies to `params`",
            id="points-with-random",
        ),
        pytest.param({"points": {}}, "variants.points", "must map point names", id="empty-points"),
        pytest.param({"points": [1, 2]}, "variants.points", "must map point names", id="points-list"),
        pytest.param(
            {"points": {"a": 3}}, "variants.points.a", "must be a mapping of params, got 3", id="point-not-mapping"
        ),
        pytest.param({"params": {}}, "variants.params", "must map param names", id="empty-params"),
        pytest.param(
            {"params": {"x": "choice(1,2)"}, "sampler": "bayes"},
            "variants.sampler",
            r"unknown sampler 'bayes' \(choose one of: grid, random, tpe, qmc, gp, cmaes, nsga2, or a mapping",
            id="unknown-sampler",
        ),
        pytest.param(
            {"params": {"x": "choice(1,2"}}, "variants.params.x", r"malformed sweep 'choice\(1,2'", id="unclosed-choice"
        ),
        pytest.param(
            {"params": {"x": "range(1,3"}}, "variants.params.x", r"malformed sweep 'range\(1,3'", id="unclosed-range"
        ),
        pytest.param(
            {"params": {"x": "interval(0, 1)"}},
            "variants.params.x",
            "grid cannot enumerate a continuous interval",
            id="grid-interval",
        ),
        pytest.param(
            {"params": {"x": "choice(1,2)"}, "sampler": "random"},
            "variants.n",
            "sampler random needs a positive integer n, got None",
            id="random-without-n",
        ),
        pytest.param(
            {"params": {"x": "choice(1,2)"}, "sampler": "tpe", "n": 0},
            "variants.n",
            "needs a positive integer n, got 0",
            id="n-zero",
        ),
        pytest.param(
            {"params": {"x": "choice(1,2)"}, "sampler": "random", "n": True}, "variants.n", "got True", id="n-bool"
        ),
        pytest.param(
            {"params": {"x": "choice(1,2)"}, "sampler": "random", "n": "3"}, "variants.n", "got '3'", id="n-string"
        ),
        pytest.param(
            {"params": {"x": "choice(1,2)"}, "sampler": "random", "n": 3, "seed": "s"},
            "variants.seed",
            "seed must be an integer, got 's'",
            id="bad-seed",
        ),
    ],
)
def test_bad_sweeps(raw, key, match):
    with pytest.raises(ConfigError, match=match) as info:
        variants(raw)
    assert (info.value.stage, info.value.key) == ("train", key)
    assert str(info.value).startswith(f"stage 'train', key '{key}': ")


def test_interval_under_grid_names_subvariant_key():
    with pytest.raises(ConfigError, match="grid cannot enumerate") as info:
        variants({"params": {"bs": "choice(1,2)", "lr": "interval(0.1, 1)"}}, level="subvariant")
    assert (info.value.stage, info.value.key) == ("train", "subvariants.params.lr")


def test_non_mapping_sweep_tags_is_config_error():
    with pytest.raises(ConfigError):
        variants({"params": {"x": "choice(1,2)"}, "tags": ["a", "b"]})


@pytest.mark.parametrize(
    "value",
    [pytest.param("tag(log, interval(0, 1))", id="log-from-zero"), pytest.param("interval(1, 0)", id="reversed")],
)
def test_invalid_interval_is_config_error(value):
    with pytest.raises(ConfigError, match="interval"):
        variants({"params": {"x": value}, "sampler": "random", "n": 2})


def test_format_value_and_point_name():
    assert format_value(0.123456) == "0.1235"
    assert format_value(1e-5) == "1e-05"
    assert format_value(3) == "3"
    assert point_name({"bs": 32, "lr": 0.001, "opt": "adam"}) == "bs=32,lr=0.001,opt=adam"


GRID = {"params": {"x": "choice(1, 2)"}}
RANDOM = {"params": {"x": "interval(0, 1)"}, "sampler": "random", "n": 4}
TPE = {"params": {"x": "interval(0, 1)"}, "sampler": "tpe", "n": 4}
POINTS = {"points": {"a": {"x": 1}}}


def test_new_sweep_keys_are_allowed():
    assert {"pruner", "time_budget_s"} <= set(SWEEP_KEYS)


@pytest.mark.parametrize("base", [GRID, RANDOM, TPE, POINTS], ids=["grid", "random", "tpe", "points"])
@pytest.mark.parametrize("pruner", PRUNERS)
def test_named_pruner_on_any_sampler(base, pruner):
    assert variants({**base, "pruner": pruner}).pruner == pruner


@pytest.mark.parametrize("raw", [{}, {"pruner": None}, {"pruner": "none"}], ids=["absent", "null", "none"])
def test_no_pruner(raw):
    assert variants({**GRID, **raw}).pruner is None


def test_pruner_in_hydra_instantiate_form_is_a_plain_dict():
    raw = {"_target_": "tests.targets.with_outputs", "seed": 3}
    spec = variants({**RANDOM, "pruner": raw}, level="subvariant")
    assert spec.pruner == raw
    assert type(spec.pruner) is dict


def test_optuna_pruner_in_hydra_instantiate_form():
    pytest.importorskip("optuna")
    raw = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 3}
    assert variants({**TPE, "pruner": raw}).pruner == raw


def test_pruner_call_with_hydra_special_keys_is_left_to_hydra():
    raw = {"_target_": "tests.targets.bowl_at", "_partial_": True, "centre": 3}
    assert variants({**GRID, "pruner": raw}).pruner == raw


@pytest.mark.parametrize(("budget", "expected"), [(60, 60.0), (0.5, 0.5), (None, None)])
def test_time_budget(budget, expected):
    spec = variants({**RANDOM, "time_budget_s": budget})
    assert spec.time_budget_s == expected
    assert spec.size() == 4


def test_time_budget_on_points():
    assert variants({**POINTS, "time_budget_s": 30}).time_budget_s == 30.0


@pytest.mark.parametrize(
    ("raw", "key", "match"),
    [
        pytest.param(
            {**GRID, "pruner": "medain"},
            "variants.pruner",
            r"^unknown pruner 'medain' \(choose one of: none, median, percentile, hyperband, successive_halving, or "
            r"a mapping with `_target_`\)$",
            id="unknown-pruner",
        ),
        pytest.param({**GRID, "pruner": 3}, "variants.pruner", r"unknown pruner 3 ", id="pruner-number"),
        pytest.param(
            {**GRID, "pruner": {"n_startup_trials": 3}},
            "variants.pruner",
            r"unknown pruner \{'n_startup_trials': 3\}",
            id="pruner-mapping-without-target",
        ),
        pytest.param(
            {**GRID, "pruner": {"_target_": "tests.targets.nope"}},
            "variants.pruner._target_",
            r"^cannot import 'tests\.targets\.nope': module 'tests\.targets' has no attribute 'nope'$",
            id="pruner-missing-attr",
        ),
        pytest.param(
            {**GRID, "pruner": {"_target_": "no_such_module.Pruner"}},
            "variants.pruner._target_",
            r"^cannot import 'no_such_module\.Pruner': No module named 'no_such_module'$",
            id="pruner-missing-module",
        ),
        pytest.param(
            {**GRID, "pruner": {"_target_": "tests.targets.NOT_CALLABLE"}},
            "variants.pruner._target_",
            r"^'tests\.targets\.NOT_CALLABLE' is not callable$",
            id="pruner-not-callable",
        ),
        pytest.param(
            {**GRID, "pruner": {"_target_": 5}},
            "variants.pruner._target_",
            r"^must be a dotted path to a pruner class, got 5$",
            id="pruner-target-not-string",
        ),
        pytest.param(
            {**GRID, "pruner": {"_target_": "tests.targets.with_outputs", "seed": 1, "sed": 2}},
            "variants.pruner",
            r"^tests\.targets\.with_outputs\(\*, .*\) -> 'dict' cannot take \(sed, seed\): "
            r"got an unexpected keyword argument 'sed'$",
            id="pruner-bad-kwarg",
        ),
        pytest.param({**RANDOM, "time_budget_s": 0}, "variants.time_budget_s", r"got 0$", id="budget-zero"),
        pytest.param({**RANDOM, "time_budget_s": -5}, "variants.time_budget_s", r"got -5$", id="budget-negative"),
        pytest.param({**RANDOM, "time_budget_s": True}, "variants.time_budget_s", r"got True$", id="budget-bool"),
        pytest.param(
            {**RANDOM, "time_budget_s": "60"},
            "variants.time_budget_s",
            r"^must be a positive number of seconds, got '60'$",
            id="budget-string",
        ),
        pytest.param(
            {**RANDOM, "time_budget_s": float("inf")}, "variants.time_budget_s", r"got inf$", id="budget-infinite"
        ),
    ],
)
def test_bad_pruner_or_budget(raw, key, match):
    with pytest.raises(ConfigError) as info:
        variants(raw)
    assert (info.value.stage, info.value.key) == ("train", key)
    assert re.search(match, info.value.detail), info.value.detail
    assert "\n" not in str(info.value)


def test_pruner_error_names_the_subvariants_level():
    with pytest.raises(ConfigError) as info:
        variants({**RANDOM, "pruner": "bogus"}, level="subvariant")
    assert info.value.key == "subvariants.pruner"


OWN = {"sampler": "random", "n": 5, "params": {"y": "interval(0, 1)"}}


def test_variant_point_with_its_own_space():
    spec = variants(
        {"points": {"mlp": {"x": 1, "_subvariants_": OWN}, "lin": {"x": 2, "_subvariants_": None}, "b": {}}}
    )
    mlp, lin, b = spec.points
    assert dict(mlp.params) == {"x": 1}
    assert dict(lin.params) == {"x": 2}
    (own,) = mlp.below
    assert (own.level, own.sampler, own.n, own.keys) == ("subvariant", "random", 5, ("y",))
    assert lin.below == ()
    assert b.below is None
    assert spec.keys == ("x",)


def test_own_space_can_be_explicit_points_with_pruner_and_budget():
    own = {"points": {"small": {"y": 1}, "big": {"y": 2}}, "pruner": "hyperband", "time_budget_s": 90}
    spec = variants({"points": {"mlp": {"_subvariants_": own}}})
    ((sub,),) = [p.below for p in spec.points]
    assert [p.name for p in sub.points] == ["small", "big"]
    assert (sub.pruner, sub.time_budget_s) == ("hyperband", 90.0)
    assert dict(spec.points[0].params) == {}


def test_points_without_own_spaces_are_unchanged():
    spec = variants({"points": {"a": {"x": 1}}})
    assert spec.points[0].below is None


@pytest.mark.parametrize(
    ("raw", "level", "key", "match"),
    [
        pytest.param(
            {"points": {"p": {"y": 1, "_subvariants_": OWN}}},
            "subvariant",
            "subvariants.points.p._subvariants_",
            "is not a param: only a named point of `variants.points` can carry it",
            id="in-subvariant-point",
        ),
        pytest.param(
            {"params": {"x": "choice(1, 2)", "_subvariants_": OWN}},
            "variant",
            "variants.params._subvariants_",
            "is not a param",
            id="in-grid-params",
        ),
        pytest.param(
            {"params": {"x": "interval(0, 1)", "_subvariants_": None}, "sampler": "random", "n": 2},
            "variant",
            "variants.params._subvariants_",
            "is not a param",
            id="in-random-params",
        ),
        pytest.param(
            {"params": {"x": "interval(0, 1)", "opt": {"_subvariants_": 1}}, "sampler": "tpe", "n": 2},
            "variant",
            "variants.params.opt._subvariants_",
            "is not a param",
            id="nested-in-tpe-params",
        ),
        pytest.param(
            {"points": {"p": {"opt": {"_subvariants_": OWN}}}},
            "variant",
            "variants.points.p.opt._subvariants_",
            "is not a param",
            id="nested-in-variant-point",
        ),
        pytest.param(
            {"points": {"mlp": {"_subvariants_": {"points": {"q": {"_subvariants_": None}}}}}},
            "variant",
            "variants.points.mlp._subvariants_.points.q._subvariants_",
            "is not a param",
            id="in-own-space-point",
        ),
        pytest.param(
            {"points": {"mlp": {"_subvariants_": 5}}},
            "variant",
            "variants.points.mlp._subvariants_",
            "must be a mapping with `points` or `params`",
            id="own-space-not-mapping",
        ),
        pytest.param(
            {"points": {"mlp": {"_subvariants_": {"sampler": "random", "n": 2}}}},
            "variant",
            "variants.points.mlp._subvariants_",
            "give exactly one of `points` or `params`",
            id="own-space-empty",
        ),
        pytest.param(
            {"points": {"mlp": {"_subvariants_": {"params": {"hidden": "choice(1,2"}}}}},
            "variant",
            "variants.points.mlp._subvariants_.params.hidden",
            r"malformed sweep 'choice\(1,2'",
            id="own-space-malformed",
        ),
        pytest.param(
            {"points": {"mlp": {"_subvariants_": {"params": {"y": "choice(1,2)"}, "sampler": "random"}}}},
            "variant",
            "variants.points.mlp._subvariants_.n",
            "sampler random needs a positive integer n",
            id="own-space-without-n",
        ),
        pytest.param(
            {"points": {"mlp": {"_subvariants_": {**OWN, "pruner": "bogus"}}}},
            "variant",
            "variants.points.mlp._subvariants_.pruner",
            "unknown pruner 'bogus'",
            id="own-space-pruner",
        ),
        pytest.param(
            {"points": {"mlp": {"_subvariants_": {**OWN, "tags": ["t"]}}}},
            "variant",
            "variants.points.mlp._subvariants_.tags",
            "must be a mapping of tag names",
            id="own-space-tags",
        ),
        pytest.param(
            {"points": {"mlp": {"_subvariants_": {**OWN, "sampel": "tpe"}}}},
            "variant",
            "variants.points.mlp._subvariants_",
            r"unknown key\(s\) sampel",
            id="own-space-unknown-key",
        ),
    ],
)
def test_bad_own_space(raw, level, key, match):
    with pytest.raises(ConfigError, match=match) as info:
        variants(raw, level=level)
    assert (info.value.stage, info.value.key) == ("train", key)
    assert str(info.value).startswith(f"stage 'train', key '{key}': ")
    assert "\n" not in str(info.value)


def test_own_space_error_reads_as_one_line():
    with pytest.raises(ConfigError) as info:
        parse_sweep(
            {"points": {"mlp": {"_subvariants_": {"params": {"hidden": "choice(1,2"}}}}},
            stage="search",
            level="variant",
        )
    assert str(info.value).startswith(
        "stage 'search', key 'variants.points.mlp._subvariants_.params.hidden': malformed sweep 'choice(1,2'"
    )


def test_parse_sweep_key_prefixes_every_key():
    with pytest.raises(ConfigError) as info:
        parse_sweep({"params": {"x": "choice(1,2)"}, "sampler": "tpe"}, stage="s", level="subvariant", key="a.b")
    assert info.value.key == "a.b.n"


def test_a_sweep_cut_at_its_comma_by_a_yaml_flow_mapping_says_so():
    """`params: {lr: tag(log, interval(1e-3, 1e-1))}` reaches the parser as `tag(log`."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.create("params: {lr: tag(log, interval(0.001, 0.1))}"))
    with pytest.raises(ConfigError) as raised:
        variants(raw)
    assert str(raised.value).startswith("stage 'train', key 'variants.params.lr': malformed sweep 'tag(log': ")
    assert str(raised.value).endswith("; in a {...} mapping YAML splits it at the comma: use block style or quote it")
