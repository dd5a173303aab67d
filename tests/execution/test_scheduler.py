"""The run tree the Python API records, read back with the stock MlflowClient against a real sqlite store."""

from __future__ import annotations

from runtree_pipeline import run_pipeline
from tests.conftest import all_runs


def _tree(client, experiment):
    runs = all_runs(client, experiment)
    by_id = {r.info.run_id: r for r in runs}
    children = {}
    for r in runs:
        children.setdefault(r.data.tags.get("mlflow.parentRunId"), []).append(r)
    return runs, by_id, children


def _leaves_under(run_id, children):
    kids = children.get(run_id, [])
    if not kids:
        return []
    out = []
    for kid in kids:
        below = _leaves_under(kid.info.run_id, children)
        out.extend(below if below else [kid])
    return out


def grid_config(store, **stage_extra):
    return {
        "tracking_uri": store,
        "experiment": "grid",
        "objective": {"metric": "loss", "mode": "min"},
        "tags": {"project": "bowl"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.quad",
                "tags": {"owner": "me"},
                "variants": {"points": {"flat": {"y": 0.0}, "deep": {"y": -2.0}}},
                "subvariants": {"params": {"x": "choice(0, 1, 2, 3)"}},
                **stage_extra,
            }
        },
    }


def test_three_level_tree_with_best_on_every_parent(store, client):
    result = run_pipeline(grid_config(store))
    assert result.ok
    runs, by_id, children = _tree(client, "grid")
    assert len(runs) == 1 + 2 + 8

    (stage,) = children[None]
    assert stage.info.run_name == "fit"
    assert stage.data.tags["runtree.level"] == "stage"
    variants = children[stage.info.run_id]
    assert sorted(v.info.run_name for v in variants) == ["fit/deep", "fit/flat"]
    pipeline_ids = {r.data.tags["runtree.pipeline_id"] for r in runs}
    assert pipeline_ids == {result.pipeline_id}

    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.tags["runtree.stage"] == "fit"
        assert r.data.tags["runtree.root_run_id"] == stage.info.run_id
        assert r.data.tags["project"] == "bowl"
        assert r.data.tags["owner"] == "me"

    for parent in [stage, *variants]:
        leaves = _leaves_under(parent.info.run_id, children)
        best = min(leaves, key=lambda leaf: leaf.data.metrics["loss"])
        assert parent.data.metrics["best_loss"] == best.data.metrics["loss"]
        assert parent.data.metrics["best_xy"] == best.data.metrics["xy"]
        assert parent.data.tags["runtree.best_run_id"] == best.info.run_id
        assert parent.data.tags["best.x"] == best.data.params["x"]
        assert parent.data.tags["best.y"] == best.data.params["y"]

    deep = next(v for v in variants if v.info.run_name == "fit/deep")
    names = sorted(leaf.info.run_name for leaf in children[deep.info.run_id])
    assert names == [f"fit/deep/x={x}" for x in range(4)]
    for leaf in children[deep.info.run_id]:
        assert leaf.data.tags["runtree.level"] == "subvariant"
        assert leaf.data.params["y"] == "-2.0"
    assert stage.data.metrics["best_loss"] == 0.0
    assert result.stages["fit"].best.params == {"y": -2.0, "x": 1}


def test_downstream_stage_consumes_upstream_best(store, client):
    config = {
        "tracking_uri": store,
        "experiment": "chain",
        "objective": {"metric": "loss"},
        "stages": {
            "data": {"_target_": "tests.targets.with_outputs", "params": {"name": "digits", "seed": 3}},
            "search": {
                "_target_": "tests.targets.quad",
                "depends_on": ["data"],
                "params": {"offset": "${best:data.metrics.rows}"},
                "subvariants": {"params": {"x": "range(0, 4)", "y": "choice(-2, 0)"}},
            },
            "final": {
                "_target_": "tests.targets.with_outputs",
                "depends_on": ["search"],
                "params": {
                    "name": "${best:data.outputs.path}/${best:search.params.x}",
                    "seed": "${best:search.params.y}",
                },
            },
        },
    }
    result = run_pipeline(config)
    assert result.ok, result.stages
    runs, by_id, children = _tree(client, "chain")
    stages = {r.info.run_name: r for r in children[None]}
    assert set(stages) == {"data", "search", "final"}
    search_best = by_id[stages["search"].data.tags["runtree.best_run_id"]]
    assert search_best.data.params["offset"] == "103.0"
    assert search_best.data.params["x"] == "1" and search_best.data.params["y"] == "-2"
    assert stages["final"].data.params == {"name": "/data/digits/3/1", "seed": "-2"}
    assert stages["final"].data.tags["runtree.upstream.search"] == stages["search"].info.run_id
    assert stages["search"].data.tags["runtree.upstream.data"] == stages["data"].info.run_id
    assert "runtree.best_run_id" not in stages["final"].data.tags

    artifacts = {f.path for f in client.list_artifacts(stages["final"].info.run_id)}
    assert {"config.yaml", "outputs.json"} <= artifacts
    config_text = client.download_artifacts(stages["final"].info.run_id, "config.yaml")
    with open(config_text) as fh:
        text = fh.read()
    assert "/data/digits/3/1" in text and "${best" not in text


def test_failing_leaves_are_failed_runs_and_best_skips_them(store, client):
    config = grid_config(store)
    fit = config["stages"]["fit"]
    fit["_target_"] = "tests.targets.flaky"
    fit["params"] = {"fail_on": [1]}
    result = run_pipeline(config)
    assert result.ok
    runs, by_id, children = _tree(client, "grid")
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert sorted(r.info.run_name for r in failed) == ["fit/deep/x=1", "fit/flat/x=1"]
    for r in failed:
        assert r.data.tags["runtree.error"] == "RuntimeError: boom at x=1"
        tb = client.download_artifacts(r.info.run_id, "traceback.txt")
        assert "raise RuntimeError" in open(tb).read()
    (stage,) = children[None]
    assert stage.info.status == "FINISHED"
    assert stage.data.tags["runtree.failed_children"] == "0"
    assert stage.data.tags["runtree.failed_leaves"] == "2"
    for variant in children[stage.info.run_id]:
        assert variant.info.status == "FINISHED"
        assert variant.data.tags["runtree.failed_children"] == "1"
        assert variant.data.metrics["best_loss"] == 1.0 + float(variant.data.params["y"])
        assert variant.data.tags["best.x"] in ("0", "2")


def test_stage_with_no_successful_leaf_fails_and_skips_downstream(store, client):
    config = grid_config(store)
    config["stages"]["fit"]["_target_"] = "tests.targets.flaky"
    config["stages"]["fit"]["params"] = {"fail_on": [0, 1, 2, 3]}
    config["stages"]["after"] = {
        "_target_": "tests.targets.quad",
        "depends_on": ["fit"],
        "params": {"x": "${best:fit.params.x}"},
    }
    result = run_pipeline(config)
    assert not result.ok
    assert result.stages["fit"].status == "FAILED"
    assert "no successful leaf" in result.stages["fit"].reason
    assert result.stages["after"].status == "SKIPPED"
    runs = all_runs(client, "grid")
    assert {r.info.status for r in runs} == {"FAILED"}
    assert not [r for r in runs if r.info.run_name == "after"]


def test_missing_objective_fails_the_leaf_naming_what_was_returned(store, client):
    config = grid_config(store)
    config["stages"]["fit"] = {
        "_target_": "tests.targets.no_objective",
        "subvariants": {"params": {"x": "choice(1, 2)"}},
    }
    result = run_pipeline(config)
    assert result.stages["fit"].status == "FAILED"
    leaves = [r for r in all_runs(client, "grid") if r.data.tags["runtree.level"] == "subvariant"]
    assert len(leaves) == 2
    for leaf in leaves:
        assert leaf.info.status == "FAILED"
        assert leaf.data.tags["runtree.error"] == (
            "MissingObjective: target returned no 'loss' (it returned: accuracy, note)"
        )


def test_target_fluent_logging_lands_on_its_leaf(store, client):
    config = grid_config(store)
    config["stages"]["fit"] = {
        "_target_": "tests.targets.logs_steps",
        "variants": {"params": {"x": "choice(2, 5)"}},
    }
    run_pipeline(config)
    runs = all_runs(client, "grid")
    leaves = {r.info.run_name: r for r in runs if r.data.tags["runtree.level"] == "variant"}
    assert set(leaves) == {"fit/x=2", "fit/x=5"}
    for name, x in (("fit/x=2", 2), ("fit/x=5", 5)):
        history = client.get_metric_history(leaves[name].info.run_id, "curve")
        assert [(m.step, m.value) for m in history] == [(i, x * i) for i in range(3)]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_dotted_params_set_nested_values(store, client):
    config = grid_config(store)
    config["stages"]["fit"] = {
        "_target_": "tests.targets.nested",
        "params": {"opt": {"lr": 0.5, "momentum": 0.9}},
        "subvariants": {"params": {"opt.lr": "choice(0.1, 0.01)"}},
    }
    result = run_pipeline(config)
    assert result.stages["fit"].best.params == {"opt": {"lr": 0.01, "momentum": 0.9}}
    leaves = [r for r in all_runs(client, "grid") if r.data.tags["runtree.level"] == "subvariant"]
    assert sorted(r.data.params["opt.lr"] for r in leaves) == ["0.01", "0.1"]
    assert {r.data.params["opt.momentum"] for r in leaves} == {"0.9"}


def test_maximise_objective(store, client):
    config = grid_config(store)
    config["objective"] = {"metric": "xy", "mode": "max"}
    result = run_pipeline(config)
    assert result.stages["fit"].best.metrics["xy"] == 0.0
    variants = [r for r in all_runs(client, "grid") if r.data.tags["runtree.level"] == "variant"]
    assert {r.info.run_name: r.data.metrics["best_xy"] for r in variants} == {"fit/flat": 0.0, "fit/deep": -0.0}
