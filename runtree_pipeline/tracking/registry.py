"""A stage's best model as a registered model version: `register:` in the config, done once the stage has ended.

The model is the LoggedModel the best leaf logged through an MLflow flavour inside the target (MLflow 3 links it
to the active run as its `source_run_id`); the version links back to that run and carries what made it the best,
so a later pipeline can tell whether its own best beats the one the alias points to.
"""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from runtree_pipeline.errors import RuntreeError, TrackingFailed
from runtree_pipeline.plan.objective import Objective
from runtree_pipeline.tracking import tags as schema
from runtree_pipeline.tracking.retry import answered, retrying

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModel
    from mlflow.entities.model_registry import ModelVersion

    from runtree_pipeline.plan.stages import Register

_READY_WITHIN_S = 300


class NoModelToRegister(RuntreeError, LookupError):
    """The best leaf logged no model `register:` can use: the stage fails, in one line naming it."""

    exit_code = 1


def register_best(
    *,
    tracking_uri: str,
    register: Register,
    stage: str,
    pipeline_id: str,
    stage_run_id: str,
    best_run_id: str,
    objective_metric: str | None,
    objective_mode: str,
    objective_value: float | None,
) -> dict[str, str]:
    """Register the model `best_run_id` logged as a new version of `register.name` and point `register.alias` at it.

    Returns the tags for the stage run `stage_run_id` (writing them is the caller's job): `runtree.registered_model`
    and `runtree.registered_version`, or `runtree.registered` saying which version an `only_if_better` best did not
    beat, in which case nothing is created. A version from this same run already under the alias is returned as is,
    so a resumed or retried stage does not register its model twice.

    Raises NoModelToRegister when the run logged no usable model (none ready, or none named `register.model`), and
    TrackingFailed when the store still fails after retries.
    """
    from runtree_pipeline.tracking.mlflow_store import quiet_mlflow_env

    quiet_mlflow_env()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    model = _pick(register, stage, _logged_models(client, best_run_id), best_run_id)

    current = _aliased(client, register.name, register.alias)
    if current is not None and current.tags.get(schema.RUN_ID) == best_run_id:
        return {schema.REGISTERED_MODEL: register.name, schema.REGISTERED_VERSION: str(current.version)}
    if register.only_if_better and current is not None:
        objective = Objective.of(objective_metric, objective_mode)
        if not _beats(objective, objective_value, current.tags.get(schema.OBJECTIVE_VALUE)):
            return {schema.REGISTERED: f"not better than version {current.version}"}

    version_tags = {schema.PIPELINE_ID: pipeline_id, schema.STAGE: stage, schema.RUN_ID: best_run_id}
    if objective_metric:
        version_tags[schema.OBJECTIVE_METRIC] = objective_metric
    if objective_value is not None:
        version_tags[schema.OBJECTIVE_VALUE] = repr(float(objective_value))
    what = f"register the model of stage '{stage}' as '{register.name}'"
    _ensure_registered_model(client, register.name, what)
    version = retrying(
        what,
        client.create_model_version,
        register.name,
        _source(client, model, tracking_uri),
        run_id=best_run_id,
        tags=version_tags,
        description=f"best run of stage '{stage}' (stage run {stage_run_id}) in pipeline {pipeline_id}",
        await_creation_for=0,
        model_id=model.model_id,
    )
    version = _ready(client, version, what)
    retrying(
        f"point alias '{register.alias}' of '{register.name}' at version {version.version}",
        client.set_registered_model_alias,
        register.name,
        register.alias,
        str(version.version),
    )
    _link(client, model.model_id, register.name, int(version.version))
    return {schema.REGISTERED_MODEL: register.name, schema.REGISTERED_VERSION: str(version.version)}


def _logged_models(client: MlflowClient, run_id: str) -> list[LoggedModel]:
    """The run's finished models, oldest first: a model whose upload failed or never finished is not one to serve."""
    from mlflow.entities import LoggedModelStatus

    run = retrying(f"read run {run_id}", client.get_run, run_id)
    models: list[LoggedModel] = []
    token = None
    while True:
        page = retrying(
            f"list the models run {run_id} logged",
            client.search_logged_models,
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}'",
            order_by=[{"field_name": "creation_timestamp", "ascending": True}],
            page_token=token,
        )
        models.extend(page)
        token = page.token
        if not token:
            break
    ready = [m for m in models if m.status == LoggedModelStatus.READY]
    return sorted(ready, key=lambda m: m.creation_timestamp)


def _pick(register: Register, stage: str, models: list[LoggedModel], run_id: str) -> LoggedModel:
    hint = "log one with mlflow.<flavour>.log_model inside the target"
    if not models:
        raise NoModelToRegister(f"stage '{stage}': its best run {run_id} logged no model to register ({hint})")
    if register.model is None:
        return models[0]
    for model in models:
        if model.name == register.model:
            return model
    logged = ", ".join(sorted({repr(m.name) for m in models}))
    raise NoModelToRegister(
        f"stage '{stage}': its best run {run_id} logged no model named {register.model!r} to register "
        f"(it logged {logged}; set register.model to one of them)"
    )


def _aliased(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version `alias` points to, None for a new name or alias. Read through the registered model, whose
    absence has an error code of its own (a missing alias shares INVALID_PARAMETER_VALUE with real mistakes)."""
    registered = retrying(f"read registered model '{name}'", _registered_model, client, name)
    if registered is None or alias not in registered.aliases:
        return None
    return retrying(
        f"read version {registered.aliases[alias]} of '{name}'",
        client.get_model_version,
        name,
        str(registered.aliases[alias]),
    )


def _registered_model(client: MlflowClient, name: str) -> Any:
    return answered({"RESOURCE_DOES_NOT_EXIST"}, client.get_registered_model, name)


def _ensure_registered_model(client: MlflowClient, name: str, what: str) -> None:
    retrying(what, answered, {"RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"}, client.create_registered_model, name)


def _beats(objective: Objective, new: float | None, recorded: str | None) -> bool:
    """Whether the new best beats the value recorded on the aliased version; an unrecorded one is always beaten,
    and a new best without a finite value beats only that."""
    try:
        old = float(recorded) if recorded is not None else math.nan
    except ValueError:
        old = math.nan
    if not math.isfinite(old):
        return True
    return new is not None and math.isfinite(new) and objective.better(new, old)


def _source(client: MlflowClient, model: LoggedModel, tracking_uri: str) -> str:
    """`models:/<model_id>`, which is what links a version to its logged model in the UI, wherever it resolves in
    this store; else the model's artifact location (the same files).

    A server resolves that URI in its own store; a database store resolves it through the process-global tracking
    URI (MLflow's sqlalchemy registry calls a default `MlflowClient()`), which may be another store.
    """
    import mlflow

    if getattr(client, "_registry_uri", tracking_uri) != tracking_uri:
        return model.artifact_location
    if urlparse(tracking_uri).scheme in ("http", "https") or mlflow.get_tracking_uri() == tracking_uri:
        return model.model_uri
    return model.artifact_location


def _ready(client: MlflowClient, version: ModelVersion, what: str) -> ModelVersion:
    """Wait for a registry that copies files before a version is usable, without MLflow's own wait, which logs."""
    deadline = time.monotonic() + _READY_WITHIN_S
    while version.status == "PENDING_REGISTRATION" and time.monotonic() < deadline:
        time.sleep(1)
        version = retrying(what, client.get_model_version, version.name, str(version.version))
    if version.status != "READY":
        detail = f": {version.status_message}" if version.status_message else ""
        raise TrackingFailed(f"could not {what}: version {version.version} is {version.status}{detail}")
    return version


def _link(client: MlflowClient, model_id: str, name: str, version: int) -> None:
    """The logged model's `mlflow.modelVersions` tag, which its UI page lists versions from: a server writes it
    itself, a database store leaves it to the caller (as `mlflow.register_model` does)."""
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    model = retrying(f"read logged model {model_id}", client.get_logged_model, model_id)
    try:
        linked = json.loads(model.tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
    except ValueError:
        linked = []
    linked = linked if isinstance(linked, list) else []
    entry = {"name": name, "version": version}
    if any(isinstance(e, dict) and e.get("name") == name and str(e.get("version")) == str(version) for e in linked):
        return
    retrying(
        f"link logged model {model_id} to version {version} of '{name}'",
        client.set_logged_model_tags,
        model_id,
        {MLFLOW_MODEL_VERSIONS: json.dumps([*linked, entry])},
    )
