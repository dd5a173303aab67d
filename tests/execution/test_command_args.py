"""The params a program leaf is given on its command line. With `command_args: overrides` a Hydra app reads them
with Hydra's own override parser, so each value must come back as the very value the leaf was planned with: a string
"1" that arrived as the int 1, or a path whose backslashes doubled, would train on something else than the run
records. `flags` and `none` are checked for what an argparse script or a program that reads RUNTREE_PARAMS gets."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from runtree_pipeline.execution.commands import arguments, command_line
from runtree_pipeline.plan.targets import CommandTarget

PARSER = OverridesParser.create()


def read_back(words: list[str]) -> dict[str, Any]:
    """What a Hydra app's command line makes of the words, nested again by their dotted keys."""
    out: dict[str, Any] = {}
    for override in PARSER.parse_overrides(words):
        *parents, leaf = override.key_or_group.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = override.value()
    return out


def same(a: Any, b: Any) -> bool:
    """Equal and of the same JSON type all the way down (1 is not 1.0, True, or "1"; nan is nan)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


VALUES = [
    *[pytest.param(v, id=f"int:{v}") for v in (0, 7, -3, 10**20)],
    *[pytest.param(v, id=f"float:{v!r}") for v in (0.1, 1e-05, 1e20, -2.5, 3.0, float("inf"), float("-inf"))],
    pytest.param(float("nan"), id="float:nan"),
    pytest.param(True, id="true"),
    pytest.param(False, id="false"),
    pytest.param(None, id="none"),
    *[
        pytest.param(v, id=f"str:{v}")
        for v in ("1", "-1", "+1", ".5", "1.", "1e3", "1_000", "0x10", "true", "False", "TRUE", "null", "Null")
    ],
    *[pytest.param(v, id=f"str:{v}") for v in ("nan", "NaN", "inf", "-inf", "+inf")],
    *[pytest.param(v, id=f"str:{v}") for v in ("adam", "ab_c-1.2", "e5", "-", "-x", "~", "@x", "%x")],
    pytest.param("two words", id="str:space"),
    pytest.param("  ", id="str:blanks"),
    pytest.param("", id="str:empty"),
    pytest.param("it's", id="str:single-quote"),
    pytest.param('say "hi"', id="str:double-quotes"),
    pytest.param("''", id="str:two-single-quotes"),
    pytest.param("trail\\", id="str:trailing-backslash"),
    pytest.param("\\'", id="str:backslash-quote"),
    pytest.param("a,b", id="str:comma"),
    pytest.param("a=b", id="str:equals"),
    pytest.param("a:b", id="str:colon"),
    pytest.param("/a/b-c.d", id="str:path"),
    pytest.param("./data/train set.csv", id="str:relative-path-with-space"),
    pytest.param("[1]", id="str:list-like"),
    pytest.param("{a:1}", id="str:dict-like"),
    pytest.param("choice(1,2)", id="str:sweep-like"),
    pytest.param("x#y $HOME *", id="str:shell-characters"),
    pytest.param("é ü 字", id="str:unicode"),
    pytest.param("a\tb\nc", id="str:tab-newline"),
    pytest.param([1, 2.5, "a b"], id="list:mixed"),
    pytest.param([[1, [2, 3]], [], ["1", None, True]], id="list:nested"),
    pytest.param([], id="list:empty"),
    pytest.param([{"a": 1, "b": "x y"}], id="list:of-dicts"),
    pytest.param({}, id="dict:empty"),
]

BACKSLASHES = [
    pytest.param("a\\b", id="str:backslash"),
    pytest.param("C:\\data\\train", id="str:windows-path"),
    pytest.param("a\\\\b", id="str:two-backslashes"),
    pytest.param("\\d+\\.csv", id="str:regex"),
]


@pytest.mark.parametrize("value", VALUES)
def test_a_hydra_app_reads_back_the_very_value_it_was_given(value):
    words = arguments({"k": value}, "overrides")
    assert len(words) == 1 and words[0].startswith("k=")
    back = read_back(words)["k"]
    assert same(back, value), f"{words[0]} reads back as {back!r}"


@pytest.mark.parametrize("value", BACKSLASHES)
def test_a_backslash_that_precedes_no_quote_reads_back_as_one(value):
    words = arguments({"k": value}, "overrides")
    assert read_back(words)["k"] == value, f"{words[0]} reads back as {read_back(words)['k']!r}"


def test_nested_params_become_dotted_keys_that_rebuild_the_same_mapping():
    params = {
        "lr": 0.001,
        "opt": {"name": "adam", "betas": [0.9, 0.999], "sched": {"kind": "cos", "warmup": 0, "final": None}},
        "data": {"path": "/a/b c.d", "extra": {}},
        "seed": "42",
    }
    words = arguments(params, "overrides")
    assert sorted(w.split("=", 1)[0] for w in words) == [
        "data.extra",
        "data.path",
        "lr",
        "opt.betas",
        "opt.name",
        "opt.sched.final",
        "opt.sched.kind",
        "opt.sched.warmup",
        "seed",
    ]
    assert same(read_back(words), params)


def test_flags_are_one_word_each_strings_as_they_are_and_the_rest_as_json():
    params = {"x": 2.5, "opt": {"name": "two words", "betas": [0.9, 0.99]}, "on": True, "none": None, "n": "1"}
    words = arguments(params, "flags")
    assert words == [
        "--x=2.5",
        "--opt.name=two words",
        "--opt.betas=[0.9, 0.99]",
        "--on=true",
        "--none=null",
        "--n=1",
    ]
    for word in words[2:5]:
        key, _, text = word.removeprefix("--").partition("=")
        assert same(json.loads(text), {"opt.betas": [0.9, 0.99], "on": True, "none": None}[key])


def test_none_passes_nothing():
    assert arguments({"x": 1, "opt": {"lr": 0.1}}, "none") == []


def test_the_command_line_names_this_interpreter_launch_paths_and_a_run_dir_of_the_leafs_own(tmp_path):
    (tmp_path / "train.py").write_text("")
    target = CommandTarget(("python", "train.py", "--fast", "missing.txt"), workdir="leaf", launch_dir=str(tmp_path))
    leaf = tmp_path / "out, dir" / "leaf=1"
    argv = command_line(target, {"x": "a b", "opt": {"lr": 0.1}}, leaf_dir=leaf)
    assert argv[:4] == [sys.executable, str(tmp_path / "train.py"), "--fast", "missing.txt"]
    assert read_back(argv[4:]) == {"x": "a b", "opt": {"lr": 0.1}, "hydra": {"run": {"dir": str(leaf)}}}

    own = CommandTarget(("python", "train.py", "hydra.run.dir=."), launch_dir=str(tmp_path))
    assert command_line(own, {}, leaf_dir=leaf)[2:] == ["hydra.run.dir=."], "the user's own run directory is kept"
    flags = CommandTarget(("python", "train.py"), args="flags", launch_dir=str(tmp_path))
    assert command_line(flags, {"x": 1}, leaf_dir=leaf)[2:] == ["--x=1"], "only a Hydra app is given a run directory"
