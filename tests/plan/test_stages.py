from __future__ import annotations

import re

import networkx as nx
import pytest
from omegaconf import OmegaConf

from runtree_pipeline.errors import ConfigError, ConfigErrors
from runtree_pipeline.plan.references import Reference
from runtree_pipeline.plan.stages import STAGE_KEYS, Limits, build_plan

QUAD = "tests.targets.quad"
DATA = "tests.targets.with_outputs"
METRIC = {"metric": "loss"}


def plan_of(stages, **top):
    return build_plan({**top, "stages": stages}, default_experiment="x")


def errors_of(stages, **top) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as info:
        plan_of(stages, **top)
    return info.value.errors


def quad(**extra):
    return {"_target_": QUAD, "params": {"x": 1.0}, **extra}


def data(**extra):
    return {"_target_": DATA, "params": {"seed": 1}, **extra}


def test_order_is_topological():
    stages = {
        "report": data(depends_on=["eval", "train"]),
        "eval": data(depends_on=["train"]),
        "train": data(depends_on="prep"),
        "side": data(),
        "prep": data(),
    }
    plan = plan_of(stages)
    assert sorted(plan.order) == sorted(stages)
    assert list(plan.stages) == list(plan.order)
    for name in plan.order:
        for dep in plan.stages[name].depends_on:
            assert plan.order.index(dep) < plan.order.index(name)
    assert plan.stages["train"].depends_on == ("prep",)
    assert set(plan.graph.edges) == {("eval", "report"), ("train", "report"), ("train", "eval"), ("prep", "train")}
    assert nx.is_directed_acyclic_graph(plan.graph)
    assert plan.upstream("report") == {"eval", "train", "prep"}
    assert plan.upstream("side") == set()


def test_describe_lists_stages_in_order_with_run_counts():
    stages = {
        "train": quad(
            depends_on=["prep"],
            params={},
            variants={"points": {"a": {"x": 1}, "b": {"x": 2}}},
            subvariants={"sampler": "random", "n": 6, "seed": 0, "params": {"y": "interval(0, 1)"}},
        ),
        "grid": quad(variants={"params": {"y": "choice(1, 2)", "offset": "range(0, 2)"}}, depends_on="train"),
        "prep": data(),
    }
    plan = plan_of(stages, objective=METRIC)
    assert plan.order == ("prep", "train", "grid")
    assert plan.stages["train"].run_counts() == (2, 12)
    assert plan.stages["grid"].run_counts() == (4, 0)
    assert plan.stages["prep"].run_counts() == (0, 0)
    lines = plan.describe().splitlines()
    assert lines[0] == "pipeline 'x': 3 stage(s) in execution order"
    assert [line.split()[0].rstrip(":") for line in lines[1:4]] == ["prep", "train", "grid"]
    assert lines[1].endswith("single run → 0 variant run(s), 0 sub-variant run(s)")
    assert "train after prep: tests.targets.quad" in lines[2]
    assert "variants: 2 (points); subvariants: 6 (random)" in lines[2]
    assert lines[2].endswith("→ 2 variant run(s), 12 sub-variant run(s)")
    assert "variants: 4 (grid)" in lines[3] and lines[3].endswith("→ 4 variant run(s), 0 sub-variant run(s)")
    assert lines[4] == "total: 21 MLflow run(s); dry run, nothing was recorded"


def test_subvariants_without_variants_count_once():
    plan = plan_of(
        {"s": quad(subvariants={"sampler": "tpe", "n": 5, "params": {"y": "interval(0, 1)"}})}, objective=METRIC
    )
    assert plan.stages["s"].run_counts() == (0, 5)
    assert "total: 6 MLflow run(s)" in plan.describe()


REF_X = "${best:a.params.seed}"

ONE_ERROR = [
    pytest.param(
        {"prep": data(), "train": quad(depends_on=["prepp"])},
        "train",
        "depends_on",
        r"unknown stage 'prepp' \(did you mean 'prep'\?\)",
        id="unknown-dep-hint",
    ),
    pytest.param({"train": quad(depends_on="zzz")}, "train", "depends_on", r"unknown stage 'zzz'$", id="unknown-dep"),
    pytest.param(
        {"a": data(depends_on="b"), "b": data(depends_on="a")},
        "a",
        "depends_on",
        r"stages form a cycle: a -> b -> a$",
        id="cycle",
    ),
    pytest.param({"a": data(depends_on="a")}, "a", "depends_on", r"stages form a cycle: a -> a$", id="self-cycle"),
    pytest.param(
        {"a": data(depends_on="c"), "b": data(depends_on="a"), "c": data(depends_on="b")},
        "a",
        "depends_on",
        r"cycle: a -> b -> c -> a$",
        id="three-cycle",
    ),
    pytest.param(
        {"a": data(depends_on=["b", "x"]), "b": data(depends_on="a"), "x": data()},
        "a",
        "depends_on",
        r"cycle: a -> b -> a$",
        id="cycle-with-tail",
    ),
    pytest.param(
        {"a": data(), "b": quad(params={"x": REF_X})},
        "b",
        "depends_on",
        r"\$\{best:a\.params\.seed\} refers to stage 'a', which is not upstream \(add it to depends_on\)",
        id="ref-not-upstream",
    ),
    pytest.param(
        {"a": data(params={"seed": "${best:b.run_id}"}), "b": quad(depends_on="a")},
        "a",
        "depends_on",
        r"refers to stage 'b', which is not upstream",
        id="ref-downstream",
    ),
    pytest.param(
        {"b": quad(params={"x": "${best:ghost.params.x}"})},
        "b",
        "params",
        r"refers to unknown stage 'ghost'",
        id="ref-unknown-stage",
    ),
    pytest.param(
        {"a": data(), "b": quad(depends_on="a", params={"x": "${best:a.params.sed}"})},
        "b",
        "params",
        r"stage 'a' has no param 'sed' \(did you mean 'seed'\?\)",
        id="ref-missing-param",
    ),
    pytest.param(
        {"a": data(), "b": quad(depends_on="a", params={"x": "${best:a.params.name}"})},
        "b",
        "params",
        r"stage 'a' has no param 'name'",
        id="ref-param-only-a-default",
    ),
    pytest.param(
        {"b": quad(params={"x": "${best:x}"})},
        "b",
        None,
        r"\$\{best:x\} must look like STAGE\.params\.KEY",
        id="ref-malformed",
    ),
    pytest.param(
        {"b": quad(params={"x": "${best:a.loss.x}"})},
        "b",
        None,
        r"must look like STAGE\.params\.KEY",
        id="ref-bad-kind",
    ),
    pytest.param(
        {"a": data(), "b": quad(depends_on="a", params={"x": "${best:a.run_id.x}"})},
        "b",
        None,
        r"run_id takes no key",
        id="ref-run-id-key",
    ),
    pytest.param(
        {"a": data(), "b": quad(depends_on="a", params={"x": "${best:a.metrics}"})},
        "b",
        None,
        r"metrics needs a key",
        id="ref-no-key",
    ),
    pytest.param(
        {"a": {"_target_": "tests.targets.nope"}},
        "a",
        "_target_",
        r"cannot import 'tests\.targets\.nope': module 'tests\.targets' has no attribute 'nope'$",
        id="import-missing-attr",
    ),
    pytest.param(
        {"a": {"_target_": "no_such_module.f"}},
        "a",
        "_target_",
        r"cannot import 'no_such_module\.f': No module named 'no_such_module'$",
        id="import-missing-module",
    ),
    pytest.param(
        {"a": {"_target_": "tests.targets.NOT_CALLABLE"}},
        "a",
        "_target_",
        r"'tests\.targets\.NOT_CALLABLE' is not callable",
        id="not-callable",
    ),
    pytest.param({"a": {"params": {"x": 1}}}, "a", "_target_", r"missing `_target_`", id="no-target"),
    pytest.param({"a": 5}, "a", None, r"must be a mapping with a `_target_`", id="stage-not-mapping"),
    pytest.param(
        {"a": quad(params={"x": 1, "z": 2})},
        "a",
        "params",
        r"cannot take params \(x, z\): got an unexpected keyword argument 'z'",
        id="unknown-kwarg",
    ),
    pytest.param(
        {"a": quad(params={"y": 2})},
        "a",
        "params",
        r"cannot take params \(y\): missing a required argument: 'x'",
        id="missing-kwarg",
    ),
    pytest.param(
        {"a": quad(params={"x": [1]}, objective=METRIC, variants={"points": {"p": {"y": 1}, "q": {"z": 2}}})},
        "a",
        "params",
        r"unexpected keyword argument 'z'",
        id="variant-point-kwarg",
    ),
    pytest.param(
        {"a": quad(params={}, objective=METRIC, variants={"points": {"p": {"x": 1}, "q": {"y": 1}}})},
        "a",
        "params",
        r"missing a required argument: 'x'",
        id="variant-point-missing",
    ),
    pytest.param(
        {"a": quad(objective=METRIC, variants={"params": {"z": "choice(1, 2)"}})},
        "a",
        "params",
        r"unexpected keyword argument 'z'",
        id="grid-kwarg",
    ),
    pytest.param(
        {
            "a": quad(
                objective=METRIC,
                variants={"points": {"p": {}}},
                subvariants={"sampler": "random", "n": 2, "params": {"z": "interval(0, 1)"}},
            )
        },
        "a",
        "params",
        r"unexpected keyword argument 'z'",
        id="subvariant-kwarg",
    ),
    pytest.param(
        {"a": quad(objective=METRIC, variants={"sampler": "bayes", "params": {"y": "choice(1, 2)"}})},
        "a",
        "variants.sampler",
        r"unknown sampler 'bayes'",
        id="unknown-sampler",
    ),
    pytest.param(
        {"a": quad(objective=METRIC, variants={"params": {"y": "choice(1,2"}})},
        "a",
        "variants.params.y",
        r"malformed sweep 'choice\(1,2'",
        id="malformed-grammar",
    ),
    pytest.param(
        {"a": quad(objective=METRIC, subvariants={"params": {"y": "interval(0, 1)"}})},
        "a",
        "subvariants.params.y",
        r"grid cannot enumerate a continuous interval",
        id="grid-interval",
    ),
    pytest.param(
        {"a": quad(objective=METRIC, variants={"sampler": "random", "params": {"y": "interval(0, 1)"}})},
        "a",
        "variants.n",
        r"needs a positive integer n",
        id="random-without-n",
    ),
    pytest.param(
        {"a": quad(variants={"params": {"y": "choice(1, 2)"}})},
        "a",
        "objective.metric",
        r"a stage that sweeps needs objective\.metric",
        id="missing-metric",
    ),
    pytest.param(
        {"a": quad(objective={"metric": "loss", "mode": "up"})},
        "a",
        "objective.mode",
        r"must be min or max, got 'up'",
        id="bad-mode",
    ),
    pytest.param(
        {"a": quad(objective="loss")}, "a", "objective", r"must be a mapping like", id="objective-not-mapping"
    ),
    pytest.param(
        {"a": quad(depend_on=["b"])},
        "a",
        "depend_on",
        r"unknown key \(did you mean 'depends_on'\?\) \(allowed: _target_, command, command_args, result_file, "
        r"workdir, params",
        id="unknown-stage-key",
    ),
    pytest.param(
        {"a": quad(on_failure="retry")},
        "a",
        "on_failure",
        r"must be one of continue, stop, got 'retry'",
        id="bad-on-failure",
    ),
    pytest.param({"a": quad(tags=["t"])}, "a", "tags", r"must be a mapping of tag names", id="tags-not-mapping"),
    pytest.param({"a": quad(params=[1])}, "a", "params", r"must be a mapping$", id="params-not-mapping"),
    pytest.param({}, None, "stages", r"no stages declared", id="no-stages"),
    pytest.param(
        {"a": quad(limits=5)},
        "a",
        "limits",
        r"must be a mapping like \{timeout_s: 600, retries: 1\}$",
        id="limits-int",
    ),
    pytest.param(
        {"a": quad(limits={"timeout": 5})},
        "a",
        "limits.timeout",
        r"unknown key \(did you mean 'timeout_s'\?\) \(allowed: timeout_s, retries, keep_checkpoints\)$",
        id="limits-unknown-key",
    ),
    pytest.param(
        {"a": quad(limits={"timeout_s": 0})},
        "a",
        "limits.timeout_s",
        r"must be a positive number of seconds, got 0$",
        id="timeout-zero",
    ),
    pytest.param(
        {"a": quad(limits={"timeout_s": -1.5})}, "a", "limits.timeout_s", r"got -1\.5$", id="timeout-negative"
    ),
    pytest.param({"a": quad(limits={"timeout_s": True})}, "a", "limits.timeout_s", r"got True$", id="timeout-bool"),
    pytest.param({"a": quad(limits={"timeout_s": "1m"})}, "a", "limits.timeout_s", r"got '1m'$", id="timeout-string"),
    pytest.param(
        {"a": quad(limits={"retries": -1})},
        "a",
        "limits.retries",
        r"must be a non-negative integer, got -1$",
        id="retries-negative",
    ),
    pytest.param({"a": quad(limits={"retries": True})}, "a", "limits.retries", r"got True$", id="retries-bool"),
    pytest.param({"a": quad(limits={"retries": 1.5})}, "a", "limits.retries", r"got 1\.5$", id="retries-float"),
    pytest.param(
        {
            "a": quad(
                objective=METRIC,
                variants={"points": {"p": {}}, "pruner": "median"},
                subvariants={"params": {"y": "choice(1, 2)"}},
            )
        },
        "a",
        "variants.pruner",
        r"the pruner goes on the leaf level, subvariants: ",
        id="pruner-on-parent-level",
    ),
    pytest.param(
        {
            "a": quad(
                objective=METRIC,
                variants={"sampler": "random", "n": 2, "params": {"y": "interval(0, 1)"}, "pruner": "hyperband"},
                subvariants={"params": {"offset": "choice(1, 2)"}},
            )
        },
        "a",
        "variants.pruner",
        r"the pruner goes on the leaf level, subvariants",
        id="pruner-on-random-parent-level",
    ),
    pytest.param(
        {"a": quad(variants={"params": {"y": "choice(1, 2)"}, "pruner": "median"})},
        "a",
        "objective.metric",
        r"a stage that sweeps needs objective\.metric",
        id="pruner-without-metric",
    ),
    pytest.param(
        {
            "a": quad(
                objective=METRIC, subvariants={**{"params": {"y": "choice(1, 2)"}}, "pruner": {"_target_": "nope.P"}}
            )
        },
        "a",
        "subvariants.pruner._target_",
        r"cannot import 'nope\.P': No module named 'nope'$",
        id="pruner-import",
    ),
    pytest.param(
        {
            "search": quad(
                objective=METRIC, variants={"points": {"mlp": {"_subvariants_": {"params": {"hidden": "choice(1,2"}}}}}
            )
        },
        "search",
        "variants.points.mlp._subvariants_.params.hidden",
        r"malformed sweep 'choice\(1,2'",
        id="own-space-malformed",
    ),
    pytest.param(
        {
            "a": quad(
                objective=METRIC, variants={"points": {"p": {}}}, subvariants={"points": {"q": {"_subvariants_": None}}}
            )
        },
        "a",
        "subvariants.points.q._subvariants_",
        r"is not a param: only a named point of `variants\.points` can carry it",
        id="own-space-in-subvariants",
    ),
    pytest.param(
        {"a": quad(objective=METRIC, variants={"params": {"y": "choice(1, 2)", "_subvariants_": None}})},
        "a",
        "variants.params._subvariants_",
        r"is not a param",
        id="own-space-in-grid-params",
    ),
    pytest.param(
        {
            "a": quad(
                params={},
                objective=METRIC,
                variants={"points": {"mlp": {"x": 1, "_subvariants_": {"params": {"z": "choice(1, 2)"}}}}},
            )
        },
        "a",
        "params",
        r"tests\.targets\.quad\(.*\) -> 'dict' cannot take params \(x, z\) in variant 'mlp': "
        r"got an unexpected keyword argument 'z'$",
        id="own-space-kwarg",
    ),
    pytest.param(
        {
            "a": quad(
                params={},
                objective=METRIC,
                variants={"points": {"mlp": {"_subvariants_": {"params": {"y": "choice(1, 2)"}}}}},
            )
        },
        "a",
        "params",
        r"cannot take params \(y\) in variant 'mlp': missing a required argument: 'x'$",
        id="own-space-missing",
    ),
    pytest.param(
        {
            "a": quad(
                params={},
                objective=METRIC,
                variants={"points": {"big": {"x": 1}, "lin": {"_subvariants_": None}}},
                subvariants={"params": {"x": "choice(1, 2)"}},
            )
        },
        "a",
        "params",
        r"cannot take params \(\) in variant 'lin': missing a required argument: 'x'$",
        id="leaf-variant-misses-stage-subvariants",
    ),
]


@pytest.mark.parametrize(("stages", "stage", "key", "match"), ONE_ERROR)
def test_bad_config_is_one_config_error(stages, stage, key, match):
    with pytest.raises(ConfigErrors, match=match) as info:
        plan_of(stages)
    (error,) = info.value.errors
    assert isinstance(error, ConfigError)
    assert (error.stage, error.key) == (stage, key)
    assert re.search(match, error.detail)


@pytest.mark.parametrize(
    ("top", "key", "match"),
    [
        pytest.param(
            {"objective": {"metric": "loss", "mode": "best"}},
            "objective.mode",
            r"must be min or max, got 'best'",
            id="bad-mode",
        ),
        pytest.param({"tags": "t"}, "tags", r"must be a mapping of tag names", id="tags-not-mapping"),
        pytest.param({"experiment": "${nope}"}, "experiment", r"nope", id="bad-interpolation"),
    ],
)
def test_bad_top_level_config(top, key, match):
    (error,) = errors_of({"a": quad()}, **top)
    assert (error.stage, error.key) == (None, key)
    assert re.search(match, error.detail)


@pytest.mark.parametrize(
    ("source", "match"),
    [
        pytest.param("raise ValueError('no config file found')\n", r"ValueError: no config file found$", id="raises"),
        pytest.param("def f(:\n", r"SyntaxError: .*\(broken_user_module_\w+\.py, line 1\)$", id="syntax"),
        pytest.param("import no_such_dependency\n", r"No module named 'no_such_dependency'$", id="missing-dependency"),
    ],
)
def test_a_target_module_that_fails_to_import_names_the_real_error(tmp_path, monkeypatch, request, source, match):
    module = f"broken_user_module_{request.node.callspec.id.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    (error,) = errors_of({"a": {"_target_": f"{module}.f"}})
    assert (error.stage, error.key) == ("a", "_target_")
    assert re.match(rf"cannot import '{module}\.f': {match}", error.detail), error.detail


def test_missing_stages_key_is_config_error():
    with pytest.raises(ConfigErrors, match="no stages declared") as info:
        build_plan({"experiment": "e"})
    assert [(e.stage, e.key) for e in info.value.errors] == [(None, "stages")]


def test_several_problems_are_reported_together_sorted():
    stages = {
        "d": quad(variants={"params": {"y": "choice(1,2"}}),
        "c": quad(depends_on="ghost"),
        "b": quad(on_failure="never", depend_on="a"),
        "a": {"_target_": "no_such_module.f"},
        "e": quad(params={"x": 1, "z": 1}, variants={"params": {"y": "choice(1, 2)"}}),
    }
    errors = errors_of(stages, objective={"mode": "best"})
    assert [(e.stage, e.key) for e in errors] == [
        (None, "objective.mode"),
        ("a", "_target_"),
        ("b", "depend_on"),
        ("b", "on_failure"),
        ("c", "depends_on"),
        ("d", "variants.params.y"),
        ("e", "objective.metric"),
        ("e", "params"),
    ]
    with pytest.raises(ConfigErrors) as info:
        plan_of(stages, objective={"mode": "best"})
    assert str(info.value).splitlines() == [str(e) for e in errors]
    assert str(info.value).splitlines()[1].startswith("stage 'a', key '_target_': cannot import")


def test_a_misspelt_depends_on_is_one_error_not_one_per_reference_it_would_make_upstream():
    """Issue 18: the typo came second, after a 'not upstream' line that only followed from it."""
    stages = {
        "prep": data(),
        "data": data(depends_on="prep"),
        "other": data(),
        "train": quad(
            depnds_on=["data"],
            params={
                "x": "${best:data.params.seed}",
                "offset": "${best:prep.run_id}/${best:other.run_id}/${best:data.params.sed}",
            },
        ),
    }
    assert [str(e) for e in errors_of(stages)] == [
        f"stage 'train', key 'depnds_on': unknown key (did you mean 'depends_on'?) (allowed: {', '.join(STAGE_KEYS)})",
        "stage 'train', key 'depends_on': ${best:other.run_id} refers to stage 'other', which is not upstream "
        "(add it to depends_on)",
        "stage 'train', key 'params': ${best:data.params.sed}: stage 'data' has no param 'sed' (did you mean 'seed'?)",
    ]


@pytest.mark.parametrize(
    ("stage", "keys"),
    [
        pytest.param({"_targt_": QUAD, "params": {"x": 1}}, ["_targt_", "_target_"], id="target"),
        pytest.param(quad(register={"nme": "m"}), ["register.nme", "register.name"], id="register-name"),
        pytest.param(
            quad(on_failure="never", depend_on=["b"], tags=[1]), ["depend_on", "on_failure", "tags"], id="unrelated"
        ),
    ],
)
def test_an_unknown_key_comes_first_among_its_stages_errors(stage, keys):
    """A misspelt key is often why the key it meant is missing: the cause is read before its consequence."""
    errors = errors_of({"b": data(on_failure="never", sede=1), "a": stage})
    assert [(e.stage, e.key) for e in errors] == [*(("a", k) for k in keys), ("b", "sede"), ("b", "on_failure")]
    assert errors[0].detail.startswith("unknown key (did you mean")


def test_stage_without_sweeps_needs_no_metric():
    plan = plan_of({"a": quad(), "b": data(variants=None)})
    assert plan.stages["a"].objective.metric is None
    assert not plan.stages["a"].sweeps


def test_sweeping_stage_inherits_top_level_objective():
    plan = plan_of(
        {
            "a": quad(variants={"params": {"y": "choice(1, 2)"}}),
            "b": quad(objective={"mode": "max"}, variants={"points": {"p": {}}}),
        },
        objective={"metric": "loss", "mode": "min"},
    )
    assert (plan.stages["a"].objective.metric, plan.stages["a"].objective.mode) == ("loss", "min")
    assert (plan.stages["b"].objective.metric, plan.stages["b"].objective.mode) == ("loss", "max")


def test_best_references_are_kept_as_text_and_recorded():
    stages = {
        "a": data(),
        "b": quad(
            depends_on=["a"],
            params={"x": "${best:a.params.seed}", "offset": "o-${best:a.metrics.rows}", "y": "${best:a.outputs.path}"},
        ),
        "c": data(depends_on="b", params={"name": "${best:b.run_id}"}),
    }
    plan = plan_of(stages)
    assert plan.stages["b"].params == {
        "x": "${best:a.params.seed}",
        "offset": "o-${best:a.metrics.rows}",
        "y": "${best:a.outputs.path}",
    }
    assert set(plan.stages["b"].references) == {
        Reference("a", "params", "seed", "${best:a.params.seed}"),
        Reference("a", "metrics", "rows", "${best:a.metrics.rows}"),
        Reference("a", "outputs", "path", "${best:a.outputs.path}"),
    }
    assert plan.stages["c"].references == (Reference("b", "run_id", None, "${best:b.run_id}"),)
    assert plan.stages["a"].references == ()
    assert plan.config["stages"]["b"]["params"]["x"] == "${best:a.params.seed}"


@pytest.mark.parametrize(
    ("upstream", "key"),
    [
        pytest.param(quad(params={}, variants={"points": {"p": {"x": 1, "y": 2}}}), "y", id="from-point"),
        pytest.param(
            quad(subvariants={"sampler": "random", "n": 2, "params": {"y": "interval(0, 1)"}}),
            "y",
            id="from-random-dim",
        ),
        pytest.param({"_target_": "tests.targets.nested", "params": {"opt": {"lr": 0.1}}}, "opt", id="nested-parent"),
        pytest.param(
            {"_target_": "tests.targets.nested", "params": {"opt": {}}, "variants": {"points": {"p": {"opt.lr": 1}}}},
            "opt.lr",
            id="dotted-point",
        ),
    ],
)
def test_reference_to_swept_or_nested_param_is_valid(upstream, key):
    plan = plan_of(
        {"a": upstream, "b": quad(depends_on="a", params={"x": f"${{best:a.params.{key}}}"})}, objective=METRIC
    )
    assert plan.stages["b"].references[0].key == key


def test_interpolations_resolve_at_plan_time():
    plan = plan_of(
        {"a": data(params={"name": "${experiment}-${base}", "seed": "${seed}"})},
        experiment="exp",
        base="v1",
        seed=7,
        tracking_uri="sqlite:///x.db",
        tags={"team": 3},
    )
    assert plan.experiment == "exp"
    assert plan.stages["a"].params == {"name": "exp-v1", "seed": 7}
    assert plan.tracking_uri == "sqlite:///x.db"
    assert plan.tags == {"team": "3"}
    assert plan.stages["a"].references == ()


@pytest.mark.parametrize("top", [{}, {"experiment": None}, {"experiment": ""}])
def test_experiment_defaults(top):
    plan = build_plan({**top, "stages": {"a": data()}}, default_experiment="fallback")
    assert plan.experiment == "fallback"
    assert plan.tracking_uri is None


def test_accepts_dictconfig():
    cfg = OmegaConf.create({"experiment": "e", "stages": {"b": quad(depends_on="a"), "a": data()}, "hydra": {"x": 1}})
    plan = build_plan(cfg, default_experiment="x")
    assert plan.order == ("a", "b")
    assert plan.experiment == "e"
    assert "hydra" not in plan.config


def test_non_list_depends_on_is_config_error():
    (error,) = errors_of({"a": quad(depends_on=5)})
    assert str(error) == "stage 'a', key 'depends_on': must be a list of stage names, got 5"


@pytest.mark.parametrize(
    ("stages", "got"), [pytest.param(5, "5", id="int"), pytest.param([quad()], "a list", id="list")]
)
def test_non_mapping_stages_is_config_error_saying_what_it_got(stages, got):
    (error,) = errors_of(stages)
    assert str(error) == f"key 'stages': must map each stage's name to its config, got {got}"


def test_non_mapping_sweep_tags_is_config_error():
    (error,) = errors_of({"a": quad(objective=METRIC, variants={"params": {"y": "choice(1, 2)"}, "tags": ["t"]})})
    assert str(error) == "stage 'a', key 'variants.tags': must be a mapping of tag names to values"


def test_broken_stage_does_not_make_dependents_report_unknown_stage():
    errors = errors_of(
        {
            "a": {"_target_": "tests.targets.nope", "params": {"x": 1}},
            "b": quad(depends_on="a", params={"x": "${best:a.params.x}"}),
        }
    )
    assert [(e.stage, e.key) for e in errors] == [("a", "_target_")]


def test_no_stages_still_reports_other_problems():
    errors = errors_of({}, objective={"mode": "best"})
    assert [(e.stage, e.key) for e in errors] == [(None, "objective.mode"), (None, "stages")]


OWN_SPACE = {"sampler": "random", "n": 5, "params": {"y": "interval(0, 1)"}, "pruner": "median", "time_budget_s": 60}


def own_spaces(**extra):
    """Three variants: one with its own random space, one leaf, one under the stage's grid of offsets."""
    return quad(
        params={},
        objective=METRIC,
        variants={
            "points": {
                "mlp": {"x": 1, "_subvariants_": OWN_SPACE},
                "lin": {"x": 2, "_subvariants_": None},
                "base": {"x": 3},
            }
        },
        subvariants={"params": {"offset": "choice(0, 1)"}},
        **extra,
    )


def test_per_variant_spaces_are_counted_per_variant():
    stage = plan_of({"search": own_spaces()}).stages["search"]
    assert stage.run_counts() == (3, 5 + 0 + 2)
    assert stage.leaf_count() == 5 + 1 + 2
    mlp, lin, base = stage.variants.points
    assert stage.below(mlp) == mlp.below and mlp.below[0].n == 5
    assert stage.below(lin) == ()
    assert stage.below(base) == (stage.subvariants,)


def test_subvariants_key_is_never_a_param():
    stage = plan_of({"search": own_spaces()}).stages["search"]
    assert [dict(p.params) for p in stage.variants.points] == [{"x": 1}, {"x": 2}, {"x": 3}]
    assert "_subvariants_" not in stage.variants.keys
    assert not any("_subvariants_" in key for key in stage.param_keys())


def test_param_keys_include_own_spaces():
    assert plan_of({"search": own_spaces()}).stages["search"].param_keys() == {"x", "y", "offset"}


def test_reference_to_a_param_only_an_own_space_has():
    plan = plan_of({"a": own_spaces(), "b": quad(depends_on="a", params={"x": "${best:a.params.y}"})})
    assert plan.stages["b"].references[0].key == "y"


def test_own_spaces_without_stage_subvariants():
    plan = plan_of(
        {
            "search": quad(
                params={},
                objective=METRIC,
                variants={
                    "points": {
                        "deep": {"_subvariants_": {"params": {"x": "choice(1, 2, 3)", "y": "choice(0, 1)"}}},
                        "fixed": {"x": 0},
                    },
                    "pruner": "median",
                },
            )
        }
    )
    stage = plan.stages["search"]
    assert stage.subvariants is None
    assert stage.variants.pruner == "median"
    assert stage.run_counts() == (2, 6)
    assert stage.leaf_count() == 7
    assert "variants: 2 (points), pruner median; variant 'deep': subvariants: 6 (grid) →" in plan.describe()
    assert "total: 9 MLflow run(s)" in plan.describe()


def test_own_space_supplies_a_required_param_the_stage_lacks():
    stage = plan_of(
        {
            "a": quad(
                params={},
                objective=METRIC,
                variants={"points": {"p": {"_subvariants_": {"points": {"q": {"x": 1, "y": 2}}}}, "r": {"x": 3}}},
            )
        }
    ).stages["a"]
    assert stage.run_counts() == (2, 1)


def test_variant_pruner_is_allowed_with_some_own_spaces():
    stage = plan_of(
        {
            "a": quad(
                objective=METRIC,
                variants={
                    "points": {"p": {"_subvariants_": {"params": {"y": "choice(1, 2)"}}}, "q": {}},
                    "pruner": "median",
                },
            )
        }
    ).stages["a"]
    assert stage.variants.pruner == "median"


def test_pruner_on_subvariants_and_time_budget_on_any_level():
    stage = plan_of(
        {
            "a": quad(
                objective=METRIC,
                variants={"points": {"p": {}}, "time_budget_s": 7200},
                subvariants={**OWN_SPACE, "pruner": {"_target_": "tests.targets.with_outputs", "seed": 2}},
            )
        }
    ).stages["a"]
    assert (stage.variants.time_budget_s, stage.variants.pruner) == (7200.0, None)
    assert stage.subvariants.pruner == {"_target_": "tests.targets.with_outputs", "seed": 2}


def test_describe_shows_budgets_pruners_own_spaces_and_limits():
    plan = plan_of({"search": own_spaces(limits={"timeout_s": 600, "retries": 1}), "prep": data()})
    assert plan.describe().splitlines() == [
        "pipeline 'x': 2 stage(s) in execution order",
        "  prep: tests.targets.with_outputs — single run → 0 variant run(s), 0 sub-variant run(s)",
        "  search: tests.targets.quad — variants: 3 (points); subvariants: 2 (grid);"
        " variant 'mlp': subvariants: up to 5 (random) or 60 s, pruner median; variant 'lin': no subvariants;"
        " limits timeout 600 s, 1 retry → 3 variant run(s), 7 sub-variant run(s)",
        "total: 12 MLflow run(s); dry run, nothing was recorded",
    ]


@pytest.mark.parametrize(
    ("limits", "shown"),
    [
        pytest.param({"timeout_s": 2.5}, "; limits timeout 2.5 s →", id="timeout"),
        pytest.param({"retries": 3}, "; limits 3 retries →", id="retries"),
        pytest.param({"timeout_s": 36000, "retries": 1}, "; limits timeout 36000 s, 1 retry →", id="both"),
    ],
)
def test_describe_limits_of_a_single_run(limits, shown):
    assert f"single run{shown}" in plan_of({"a": quad(limits=limits)}).describe()


def test_describe_pruner_in_instantiate_form_shows_its_target():
    plan = plan_of(
        {
            "a": quad(
                objective=METRIC,
                subvariants={
                    "sampler": "tpe",
                    "n": 500,
                    "params": {"y": "interval(0, 1)"},
                    "time_budget_s": 3600,
                    "pruner": {"_target_": "tests.targets.with_outputs"},
                },
            )
        }
    )
    assert "— subvariants: up to 500 (tpe) or 3600 s, pruner tests.targets.with_outputs →" in plan.describe()


def test_describe_is_unchanged_without_new_features():
    plan = plan_of(
        {
            "train": quad(
                params={},
                variants={"points": {"a": {"x": 1}, "b": {"x": 2}}},
                subvariants={"sampler": "random", "n": 6, "seed": 0, "params": {"y": "interval(0, 1)"}},
            )
        },
        objective=METRIC,
    )
    assert plan.describe().splitlines()[1] == (
        "  train: tests.targets.quad — variants: 2 (points); subvariants: 6 (random)"
        " → 2 variant run(s), 12 sub-variant run(s)"
    )


def test_limits_parse():
    plan = plan_of({"a": quad(limits={"timeout_s": 600, "retries": 1}), "b": quad(), "c": quad(limits={"retries": 0})})
    assert "limits" in STAGE_KEYS
    assert plan.stages["a"].limits == Limits(timeout_s=600.0, retries=1)
    assert plan.stages["b"].limits == Limits() == Limits(timeout_s=None, retries=0)
    assert plan.stages["c"].limits == Limits()
    assert plan.stages["a"].limits.timeout_s == 600.0 and isinstance(plan.stages["a"].limits.timeout_s, float)


def test_limits_are_stored_only_when_set():
    plan = plan_of({"a": quad(limits={"timeout_s": 600}), "b": quad(), "c": quad(limits={"retries": 0})})
    assert plan.config["stages"]["a"]["limits"] == {"timeout_s": 600.0, "retries": 0, "keep_checkpoints": 2}
    assert plan.config["stages"]["b"] == {
        "_target_": QUAD,
        "depends_on": [],
        "params": {"x": 1.0},
        "objective": {"metric": None, "mode": "min"},
        "tags": {},
        "on_failure": "continue",
    }
    assert "limits" not in plan.config["stages"]["c"]


def test_several_limit_problems_are_reported_together():
    errors = errors_of({"a": quad(limits={"timeout_s": 0, "retries": -1, "retry": 2})})
    assert [e.key for e in errors] == ["limits.retry", "limits.retries", "limits.timeout_s"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(None, (False, True), id="absent"),
        pytest.param(False, (False, True), id="false"),
        pytest.param(True, (True, True), id="true"),
        pytest.param({"code": False}, (True, False), id="code-false-turns-it-on"),
        pytest.param({"enabled": False, "code": False}, (False, False), id="off-with-options"),
    ],
)
def test_cache_is_off_unless_asked_and_keeps_code_in_the_key_by_default(raw, expected):
    plan = build_plan({"cache": raw, "stages": {"a": {"_target_": "tests.targets.quad", "params": {"x": 1}}}})
    assert (plan.cache.enabled, plan.cache.code) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(5, "key 'cache': must be true, false or a mapping like {code: false}, got 5", id="int"),
        pytest.param({"code": "no"}, "key 'cache.code': must be true or false, got 'no'", id="not-bool"),
        pytest.param(
            {"cod": False},
            "key 'cache.cod': unknown key (did you mean 'code'?) (allowed: enabled, code)",
            id="unknown",
        ),
    ],
)
def test_a_malformed_cache_is_one_line_naming_the_key(raw, message):
    with pytest.raises(ConfigErrors) as raised:
        build_plan({"cache": raw, "stages": {"a": {"_target_": "tests.targets.quad", "params": {"x": 1}}}})
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("extra", "one", "several"),
    [
        pytest.param(
            {"subvariants": {"sampler": "random", "n": 3, "params": {"x": "interval(0, 1)"}}}, (), (), id="random"
        ),
        pytest.param(
            {"subvariants": {"sampler": "tpe", "n": 3, "params": {"x": "interval(0, 1)"}}}, (), ("tpe",), id="tpe"
        ),
        pytest.param(
            {"subvariants": {"params": {"x": "choice(0, 1)"}, "pruner": "median"}}, (), ("pruner",), id="pruned-grid"
        ),
        pytest.param(
            {"subvariants": {"params": {"x": "choice(0, 1)"}, "time_budget_s": 5}},
            ("time_budget_s",),
            ("time_budget_s",),
            id="budget",
        ),
        pytest.param(
            {"on_failure": "stop", "subvariants": {"params": {"x": "choice(0, 1)"}}},
            (),
            ("on_failure=stop",),
            id="stop",
        ),
    ],
)
def test_what_decides_by_timing_is_named_per_worker_count(extra, one, several):
    """What `runtree best` warns about instead of promising the same best on a rerun."""
    stage = plan_of({"fit": quad(**extra)}, objective={"metric": "loss"}).stages["fit"]
    assert stage.order_dependent(workers=1) == one
    assert stage.order_dependent(workers=2) == several
