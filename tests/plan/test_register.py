from __future__ import annotations

import re

import pytest

from runtree_pipeline.errors import ConfigError, ConfigErrors
from runtree_pipeline.plan.stages import STAGE_KEYS, Register, build_plan

QUAD = "tests.targets.quad"


def plan_of(stages, **top):
    return build_plan({**top, "stages": stages}, default_experiment="x")


def stage(register, **extra):
    return {"_target_": QUAD, "params": {"x": 1.0}, "register": register, **extra}


def test_register_is_a_stage_key():
    assert "register" in STAGE_KEYS


def test_defaults():
    plan = plan_of({"final": stage({"name": "digits-cnn"})})
    assert plan.stages["final"].register == Register(name="digits-cnn")
    assert plan.stages["final"].register == Register("digits-cnn", "champion", False, None)


def test_every_field_is_parsed_and_kept_in_the_stage_config():
    register = {"name": "digits-cnn", "alias": "prod_1", "only_if_better": True, "model": "clf"}
    plan = plan_of({"final": stage(register, objective={"metric": "loss", "mode": "max"})})
    assert plan.stages["final"].register == Register("digits-cnn", "prod_1", True, "clf")
    assert plan.config["stages"]["final"]["register"] == register


def test_nulls_take_the_defaults():
    plan = plan_of({"final": stage({"name": "m", "alias": None, "only_if_better": None, "model": None})})
    assert plan.stages["final"].register == Register("m")


def test_a_stage_without_register_has_none_and_no_config_entry():
    plan = plan_of({"final": {"_target_": QUAD, "params": {"x": 1.0}}})
    assert plan.stages["final"].register is None
    assert "register" not in plan.config["stages"]["final"]
    assert plan_of({"final": stage(None)}).stages["final"].register is None


def test_only_if_better_uses_the_top_level_objective():
    plan = plan_of({"final": stage({"name": "m", "only_if_better": True})}, objective={"metric": "loss"})
    assert plan.stages["final"].register.only_if_better
    assert plan.stages["final"].objective.metric == "loss"


@pytest.mark.parametrize(
    ("register", "key", "match"),
    [
        pytest.param("digits-cnn", "register", r"^must be a mapping like \{name: ", id="not-mapping"),
        pytest.param(["m"], "register", r"^must be a mapping", id="list"),
        pytest.param({}, "register.name", r"^must be a registered model's name, got None$", id="no-name"),
        pytest.param({"name": ""}, "register.name", r"got ''$", id="empty-name"),
        pytest.param({"name": "  "}, "register.name", r"got '  '$", id="blank-name"),
        pytest.param({"name": 3}, "register.name", r"got 3$", id="int-name"),
        pytest.param({"name": "team/cnn"}, "register.name", r"^cannot contain '/' or ':'", id="slash-name"),
        pytest.param({"name": "a:b"}, "register.name", r"^cannot contain '/' or ':'", id="colon-name"),
        pytest.param({"name": "m", "alias": ""}, "register.alias", r"^must be a non-empty alias", id="empty-alias"),
        pytest.param({"name": "m", "alias": "best model"}, "register.alias", r"got 'best model'$", id="space-alias"),
        pytest.param({"name": "m", "alias": 1}, "register.alias", r"got 1$", id="int-alias"),
        pytest.param({"name": "m", "alias": "v2"}, "register.alias", r"^'v2' is reserved", id="version-alias"),
        pytest.param({"name": "m", "alias": "V10"}, "register.alias", r"^'V10' is reserved", id="upper-version-alias"),
        pytest.param({"name": "m", "alias": "Latest"}, "register.alias", r"^'Latest' is reserved", id="latest"),
        pytest.param(
            {"name": "m", "only_if_better": "yes"},
            "register.only_if_better",
            r"^must be true or false, got 'yes'$",
            id="only-if-better-not-bool",
        ),
        pytest.param(
            {"name": "m", "only_if_better": True},
            "register.only_if_better",
            r"^needs objective.metric to compare",
            id="only-if-better-without-metric",
        ),
        pytest.param({"name": "m", "model": ""}, "register.model", r"^must be the name of a logged model", id="model"),
        pytest.param({"name": "m", "model": 7}, "register.model", r"got 7$", id="int-model"),
        pytest.param(
            {"name": "m", "aliases": "x"},
            "register.aliases",
            r"^unknown key \(did you mean 'alias'\?\) \(allowed: name, alias, only_if_better, model\)$",
            id="unknown-key",
        ),
    ],
)
def test_bad_register_is_one_config_error(register, key, match):
    with pytest.raises(ConfigErrors) as info:
        plan_of({"final": stage(register)})
    (error,) = info.value.errors
    assert isinstance(error, ConfigError)
    assert (error.stage, error.key) == ("final", key)
    assert re.search(match, error.detail), error.detail


def test_alias_like_a_version_is_fine_when_not_only_digits():
    plan = plan_of({"final": stage({"name": "m", "alias": "v2-candidate"})})
    assert plan.stages["final"].register.alias == "v2-candidate"


def test_several_register_problems_are_reported_together():
    with pytest.raises(ConfigErrors) as info:
        plan_of({"final": stage({"name": "a/b", "alias": "v1", "only_if_better": True, "extra": 1})})
    assert [e.key for e in info.value.errors] == [
        "register.extra",  # an unknown key first: it may be why another is missing
        "register.alias",
        "register.name",
        "register.only_if_better",
    ]
