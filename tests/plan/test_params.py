from __future__ import annotations

import copy
from types import MappingProxyType

import pytest

from runtree_pipeline.plan.params import flatten, lookup, merge


@pytest.mark.parametrize(
    ("base", "layers", "expected"),
    [
        pytest.param({"a": 1, "b": 2}, [{"a": 3}, {"a": 4}], {"a": 4, "b": 2}, id="later-wins"),
        pytest.param({"a": 1}, [], {"a": 1}, id="no-layers"),
        pytest.param({}, [{"a.b.c": 1}], {"a": {"b": {"c": 1}}}, id="dotted-creates"),
        pytest.param(
            {"opt": {"lr": 1, "m": 0.9}}, [{"opt.lr": 2}], {"opt": {"lr": 2, "m": 0.9}}, id="dotted-sets-nested"
        ),
        pytest.param({"opt": "adam"}, [{"opt.lr": 1}], {"opt": {"lr": 1}}, id="dotted-replaces-scalar-parent"),
        pytest.param(
            {"opt": {"lr": 1, "m": 0.9}}, [{"opt": {"lr": 2}}], {"opt": {"lr": 2, "m": 0.9}}, id="nested-merge"
        ),
        pytest.param(
            {"opt": {"a": {"b": 1, "c": 2}}},
            [{"opt": {"a": {"b": 3}}}],
            {"opt": {"a": {"b": 3, "c": 2}}},
            id="deep-merge",
        ),
        pytest.param(
            {"opt": {"lr": 1}}, [{"opt": {"s.g": 2}}], {"opt": {"lr": 1, "s": {"g": 2}}}, id="dotted-inside-nested"
        ),
        pytest.param({"opt": {"lr": 1}}, [{"opt": None}], {"opt": None}, id="scalar-replaces-dict"),
        pytest.param({"opt": 1}, [{"opt": {"lr": 2}}], {"opt": {"lr": 2}}, id="dict-replaces-scalar"),
        pytest.param(
            {"x": 1},
            [{"opt.lr": 1}, {"opt": {"m": 2}}, {"x": 5}],
            {"x": 5, "opt": {"lr": 1, "m": 2}},
            id="three-layers",
        ),
    ],
)
def test_merge(base, layers, expected):
    assert merge(base, *layers) == expected


def test_merge_does_not_mutate_or_alias_inputs():
    base = {"opt": {"lr": 1, "sched": {"gamma": 0.5}}, "xs": [1, 2]}
    layer = {"opt.lr": 2, "extra": {"ys": [3]}, "opt": {"sched": {"step": 3}}}
    before = copy.deepcopy((base, layer))
    out = merge(base, layer)
    assert out == {"opt": {"lr": 2, "sched": {"gamma": 0.5, "step": 3}}, "xs": [1, 2], "extra": {"ys": [3]}}
    assert (base, layer) == before
    out["opt"]["sched"]["gamma"] = 9
    out["xs"].append(9)
    out["extra"]["ys"].append(9)
    assert (base, layer) == before


def test_merge_accepts_read_only_mappings():
    out = merge(MappingProxyType({"a": 1}), MappingProxyType({"b.c": 2}))
    assert out == {"a": 1, "b": {"c": 2}}
    assert type(out) is dict


def test_merge_expands_nested_dotted_keys_without_existing_parent():
    assert merge({}, {"opt": {"a.b": 1}}) == merge({"opt": {}}, {"opt": {"a.b": 1}}) == {"opt": {"a": {"b": 1}}}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param({}, {}, id="empty"),
        pytest.param({"a": 1, "b": "x"}, {"a": 1, "b": "x"}, id="flat"),
        pytest.param({"opt": {"lr": 0.1, "s": {"g": 2}}, "x": 1}, {"opt.lr": 0.1, "opt.s.g": 2, "x": 1}, id="nested"),
        pytest.param({"opt": {}}, {"opt": {}}, id="empty-dict-kept"),
        pytest.param({"xs": [1, {"a": 2}]}, {"xs": [1, {"a": 2}]}, id="lists-kept"),
        pytest.param({"m": MappingProxyType({"a": 1})}, {"m.a": 1}, id="any-mapping"),
    ],
)
def test_flatten(params, expected):
    assert flatten(params) == expected


def test_flatten_prefix_and_round_trip():
    params = {"opt": {"lr": 0.1, "s": {"g": 2}}, "x": 1}
    assert flatten(params, "p.") == {"p.opt.lr": 0.1, "p.opt.s.g": 2, "p.x": 1}
    assert merge({}, flatten(params)) == params


@pytest.mark.parametrize(
    ("dotted", "expected"),
    [
        pytest.param("x", 1, id="top"),
        pytest.param("opt.lr", 0.1, id="nested"),
        pytest.param("opt.s.g", None, id="none-value"),
        pytest.param("opt.s", {"g": None}, id="sub-mapping"),
    ],
)
def test_lookup(dotted, expected):
    assert lookup({"x": 1, "opt": {"lr": 0.1, "s": {"g": None}}}, dotted) == expected


@pytest.mark.parametrize("dotted", ["y", "opt.nope", "x.y", "opt.lr.z", ""])
def test_lookup_missing_raises_key_error(dotted):
    with pytest.raises(KeyError) as info:
        lookup({"x": 1, "opt": {"lr": 0.1}}, dotted)
    assert info.value.args == (dotted,)
