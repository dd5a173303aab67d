"""A stage's target on its own: what the plan reports about it, and what of it goes into a run's content key (which
stores written by earlier versions must still match, so resume and the cache keep finding their runs)."""

from __future__ import annotations

import pickle
import sys
import uuid
from pathlib import Path

import pytest

from runtree_pipeline.execution.keys import content_key
from runtree_pipeline.execution.leaf import run
from runtree_pipeline.plan.targets import FunctionTarget, parse

QUAD = FunctionTarget("tests.targets.quad")
SOURCE = 'def f(*, x):\n    return {"loss": x}\n'


@pytest.fixture
def module(tmp_path, monkeypatch):
    """A module file of the test's own, importable under a fresh name, so an edit to it is the test's alone."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str = SOURCE, name: str | None = None) -> tuple[str, Path]:
        name = name or f"rt_target_{uuid.uuid4().hex[:8]}"
        path = tmp_path / f"{name}.py"
        path.write_text(source)
        monkeypatch.delitem(sys.modules, name, raising=False)
        return name, path

    return write


def messages(errors) -> list[tuple[str | None, str | None, str]]:
    return [(e.stage, e.key, str(e)) for e in errors]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "missing `_target_` (a dotted path to a callable) or `command` (a program to run)"),
        ({"_target_": None}, "missing `_target_` (a dotted path to a callable) or `command` (a program to run)"),
        ({"_target_": ""}, "missing `_target_` (a dotted path to a callable) or `command` (a program to run)"),
        ({"_target_": 3}, "must be a dotted path to a callable (a string), got 3"),
    ],
    ids=repr,
)
def test_a_stage_without_a_usable_target_is_one_error_naming_the_key(raw, message):
    _, error = parse(raw, stage="fit")
    assert str(error) == f"stage 'fit', key '_target_': {message}"


def test_a_dotted_path_is_a_function_target():
    assert parse({"_target_": "tests.targets.quad", "params": {}}, stage="fit") == (QUAD, None)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_module.f", "cannot import 'no_such_module.f': No module named 'no_such_module'"),
        ("tests.targets.nope", "cannot import 'tests.targets.nope': module 'tests.targets' has no attribute 'nope'"),
        ("tests.targets.NOT_CALLABLE", "'tests.targets.NOT_CALLABLE' is not callable"),
    ],
)
def test_a_target_that_cannot_be_called_is_reported_whatever_the_params(path, message):
    for calls in (None, [({"x": 1}, "")]):
        assert messages(FunctionTarget(path).validate("fit", calls)) == [
            ("fit", "_target_", f"stage 'fit', key '_target_': {message}")
        ]


def test_params_the_function_cannot_take_are_one_error_naming_the_first_bad_call():
    calls = [({"x": 1}, ""), ({"x": 1, "z": 2}, " in variant 'mlp'"), ({"x": 1, "w": 2}, "")]
    (error,) = QUAD.validate("fit", calls)
    assert (error.stage, error.key) == ("fit", "params")
    assert error.detail == (
        "tests.targets.quad(*, x: 'float', y: 'float' = 0.0, offset: 'float' = 0.0) -> 'dict' cannot take params (x, z)"
        " in variant 'mlp': got an unexpected keyword argument 'z'"
    )


def test_params_that_fit_and_unknown_params_are_no_error():
    assert QUAD.validate("fit", [({"x": 1}, ""), ({"x": 1, "y": 2, "offset": 0}, "")]) == []
    assert QUAD.validate("fit", None) == [], "params not known: the signature is not checked"
    assert QUAD.validate("fit", [({}, "")]) != [], "the required x is missing"


def test_code_is_stable_and_changes_when_the_source_file_is_edited(module):
    name, path = module()
    target = FunctionTarget(f"{name}.f")
    first = target.code()
    assert first == target.code() == FunctionTarget(f"{name}.f").code()
    path.write_text(SOURCE + "# a comment counts: the whole file is fingerprinted\n")
    assert target.code() not in (None, first), "read anew after an edit, in the same process"


def test_a_function_without_a_source_file_has_no_code():
    assert FunctionTarget("builtins.len").code() is None
    assert FunctionTarget("no_such_module.f").code() is None


def test_content_keys_are_those_earlier_versions_wrote(module):
    """Pinned values: a change here orphans every run already recorded (resume and the cache would miss them)."""
    name, _ = module(name="rt_pinned_target")
    target = FunctionTarget(f"{name}.f")
    code = target.code()
    assert code == "2efe0497abf05741"
    assert content_key(stage="fit", params={"x": 1.5}, **target.key_parts(code)) == "b68503f99468715def8b29b2"
    assert content_key(stage="fit", params={"x": 1.5}, **target.key_parts(None)) == "a395cf34f59a929e3ee47835"


def test_describe_and_config_are_the_dotted_path_as_written():
    assert QUAD.describe() == str(QUAD) == "tests.targets.quad"
    assert QUAD.config() == {"_target_": "tests.targets.quad"}


def test_a_target_survives_pickling_and_runs_from_the_copy():
    """Workers get targets pickled; the executor contract tests run them in real worker processes and Ray tasks."""
    sent = pickle.loads(pickle.dumps(QUAD))
    assert sent == QUAD
    assert run(sent, {"x": 3.0}) == {"loss": 4.0 + 4.0, "xy": 0.0}
