from __future__ import annotations

import json

import numpy as np
import pytest

from runtree_pipeline.plan.stages import Register
from runtree_pipeline.tracking.active import use_tracking_uri
from runtree_pipeline.tracking.registry import NoModelToRegister, register_best

X = np.arange(6, dtype=float).reshape(-1, 1)


@pytest.fixture
def fluent(store, client):
    """The store as this process's tracking URI, as it is while a leaf runs: `log_model` and `load_model` use it."""
    restore = use_tracking_uri(store)
    yield client
    restore()


@pytest.fixture
def experiment(fluent) -> str:
    return fluent.create_experiment("reg")


def leaf(client, experiment: str, slope: float = 2.0, names: tuple[str, ...] = ("model",)) -> str:
    """A finished run that logged one real sklearn model per name (y = slope * x), in that order."""
    import mlflow
    import mlflow.sklearn
    from sklearn.linear_model import LinearRegression

    run_id = client.create_run(experiment).info.run_id
    with mlflow.start_run(run_id=run_id):
        for name in names:
            fitted = LinearRegression().fit(X, slope * X.ravel())
            mlflow.sklearn.log_model(fitted, name=name, pip_requirements=["scikit-learn"])
    return run_id


def register(store, run_id: str, value: float | None, *, mode: str = "min", **options) -> dict[str, str]:
    return register_best(
        tracking_uri=store,
        register=Register("digits", **options),
        stage="final",
        pipeline_id="abc123def456",
        stage_run_id="stage-run",
        best_run_id=run_id,
        objective_metric="loss",
        objective_mode=mode,
        objective_value=value,
    )


def champion(client, name: str = "digits", alias: str = "champion"):
    return client.get_model_version_by_alias(name, alias)


def model_of(client, run_id: str, name: str = "model"):
    (model,) = [
        m
        for m in client.search_logged_models(
            experiment_ids=[client.get_run(run_id).info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
        if m.name == name
    ]
    return model


def test_first_registration_creates_version_1_with_alias_tags_and_links(store, fluent, experiment):
    run_id = leaf(fluent, experiment)
    assert register(store, run_id, 0.25) == {"runtree.registered_model": "digits", "runtree.registered_version": "1"}
    version = champion(fluent)
    assert version.version in (1, "1")
    assert version.aliases == ["champion"]
    assert version.run_id == run_id
    assert version.tags == {
        "runtree.pipeline_id": "abc123def456",
        "runtree.stage": "final",
        "runtree.run_id": run_id,
        "runtree.objective_metric": "loss",
        "runtree.objective_value": "0.25",
    }
    assert "stage-run" in version.description
    model = model_of(fluent, run_id)
    assert version.source == f"models:/{model.model_id}"
    linked = json.loads(fluent.get_logged_model(model.model_id).tags["mlflow.modelVersions"])
    assert linked == [{"name": "digits", "version": 1}]


def test_the_alias_version_loads_and_predicts_like_the_logged_model(store, fluent, experiment):
    import mlflow.sklearn

    run_id = leaf(fluent, experiment, slope=3.0)
    register(store, run_id, 0.1)
    loaded = mlflow.sklearn.load_model("models:/digits@champion")
    logged = mlflow.sklearn.load_model(model_of(fluent, run_id).model_uri)
    assert np.allclose(loaded.predict(X), logged.predict(X))
    assert np.allclose(loaded.predict(X), 3.0 * X.ravel())


def test_a_better_best_creates_version_2_and_moves_the_alias(store, fluent, experiment):
    register(store, leaf(fluent, experiment), 0.5, only_if_better=True)
    second = leaf(fluent, experiment, slope=5.0)
    assert register(store, second, 0.3, only_if_better=True)["runtree.registered_version"] == "2"
    version = champion(fluent)
    assert (int(version.version), version.run_id, version.tags["runtree.objective_value"]) == (2, second, "0.3")
    assert fluent.get_model_version("digits", "1").aliases == []


def test_only_if_better_creates_nothing_for_a_worse_or_equal_best(store, fluent, experiment):
    register(store, leaf(fluent, experiment), 0.5, only_if_better=True)
    register(store, leaf(fluent, experiment), 0.3, only_if_better=True)
    for value in (0.4, 0.3, None, float("nan")):
        worse = leaf(fluent, experiment)
        assert register(store, worse, value, only_if_better=True) == {"runtree.registered": "not better than version 2"}
    assert [int(v.version) for v in fluent.search_model_versions("name = 'digits'")] == [2, 1]
    assert int(champion(fluent).version) == 2


def test_without_only_if_better_a_worse_best_still_takes_the_alias(store, fluent, experiment):
    register(store, leaf(fluent, experiment), 0.3)
    worse = leaf(fluent, experiment)
    assert register(store, worse, 0.9)["runtree.registered_version"] == "2"
    assert champion(fluent).run_id == worse


def test_max_mode(store, fluent, experiment):
    register(store, leaf(fluent, experiment), 0.8, mode="max", only_if_better=True)
    lower = register(store, leaf(fluent, experiment), 0.7, mode="max", only_if_better=True)
    assert lower == {"runtree.registered": "not better than version 1"}
    higher = leaf(fluent, experiment)
    assert register(store, higher, 0.9, mode="max", only_if_better=True)["runtree.registered_version"] == "2"
    assert champion(fluent).run_id == higher


def test_a_version_without_a_recorded_objective_is_beaten(store, fluent, experiment):
    register(store, leaf(fluent, experiment), None)
    assert "runtree.objective_value" not in champion(fluent).tags
    assert register(store, leaf(fluent, experiment), 99.0, only_if_better=True)["runtree.registered_version"] == "2"


def test_another_alias_is_compared_on_its_own(store, fluent, experiment):
    register(store, leaf(fluent, experiment), 0.1, only_if_better=True)
    staging = leaf(fluent, experiment)
    tags = register(store, staging, 0.5, only_if_better=True, alias="staging")
    assert tags["runtree.registered_version"] == "2"
    assert champion(fluent, alias="staging").run_id == staging
    assert int(champion(fluent).version) == 1


def test_the_same_best_registered_again_is_not_a_new_version(store, fluent, experiment):
    run_id = leaf(fluent, experiment)
    first = register(store, run_id, 0.2)
    assert register(store, run_id, 0.2) == first
    assert len(fluent.search_model_versions("name = 'digits'")) == 1


def test_model_picks_by_name_and_the_default_is_the_oldest(store, fluent, experiment):
    run_id = leaf(fluent, experiment, names=("scaler", "clf"))
    register(store, run_id, 0.2, model="clf")
    assert champion(fluent).source == f"models:/{model_of(fluent, run_id, 'clf').model_id}"
    register_best(
        tracking_uri=store,
        register=Register("other"),
        stage="final",
        pipeline_id="p",
        stage_run_id="s",
        best_run_id=run_id,
        objective_metric=None,
        objective_mode="min",
        objective_value=None,
    )
    version = champion(fluent, name="other")
    assert version.source == f"models:/{model_of(fluent, run_id, 'scaler').model_id}"
    assert "runtree.objective_metric" not in version.tags


def test_a_run_without_a_model_names_the_stage_and_registers_nothing(store, fluent, experiment):
    run_id = fluent.create_run(experiment).info.run_id
    with pytest.raises(NoModelToRegister) as info:
        register(store, run_id, 0.1)
    assert str(info.value) == (
        f"stage 'final': its best run {run_id} logged no model to register "
        "(log one with mlflow.<flavour>.log_model inside the target)"
    )
    assert info.value.exit_code == 1
    assert fluent.search_registered_models() == []


def test_a_run_without_the_named_model_lists_what_it_logged(store, fluent, experiment):
    run_id = leaf(fluent, experiment, names=("model", "scaler"))
    with pytest.raises(NoModelToRegister, match=r"^stage 'final': its best run \w+ logged no model named 'clf'") as e:
        register(store, run_id, 0.1, model="clf")
    assert "it logged 'model', 'scaler'" in str(e.value)
    assert fluent.search_registered_models() == []


def test_another_process_tracking_uri_registers_the_artifact_location(store, fluent, experiment, tmp_path):
    """The database registry would resolve `models:/<id>` in the global store: the same files are registered by
    their location instead, and still load through the alias."""
    import mlflow.sklearn

    run_id = leaf(fluent, experiment, slope=4.0)
    restore = use_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    try:
        register(store, run_id, 0.1)
    finally:
        restore()
    version = champion(fluent)
    assert version.source == model_of(fluent, run_id).artifact_location
    assert version.run_id == run_id
    assert not (tmp_path / "elsewhere.db").exists()
    assert np.allclose(mlflow.sklearn.load_model("models:/digits@champion").predict(X), 4.0 * X.ravel())
