from __future__ import annotations

import pytest

from runtree_pipeline.errors import ConfigError
from runtree_pipeline.plan.sweeps import format_value, parse_sweep, point_name


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
            r"unknown sampler 'bayes' \(choose one of: grid, random, tpe\)",
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
