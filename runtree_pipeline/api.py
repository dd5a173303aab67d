"""The Python API: build a plan from a config object and run it; the CLI is a thin layer over these."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from runtree_pipeline.errors import ConfigErrors, UnknownPipeline
from runtree_pipeline.execution.executors import Executor, LocalExecutor
from runtree_pipeline.plan.stages import Plan, build_plan
from runtree_pipeline.reports.progress import Progress
from runtree_pipeline.results import PipelineResult


def run_pipeline(
    config: DictConfig | Mapping[str, Any],
    *,
    name: str = "runtree",
    executor: Executor | None = None,
) -> PipelineResult:
    """Validate `config` (raising ConfigErrors before any run exists), then run it and return its results.

    `name` is the experiment used when the config sets none (the CLI passes the sweep's name); `resume: last` or
    `resume: <pipeline_id>` in the config continues that execution instead of starting a new one.
    """
    return run_plan(build_plan(config, default_experiment=name), executor=executor)


def run_plan(
    plan: Plan,
    *,
    executor: Executor | None = None,
    progress: Progress | None = None,
    command: str | None = None,
    plots: bool = True,
    output_dir: str | None = None,
) -> PipelineResult:
    """Run a validated plan. `command` is recorded on every stage run as the way to reproduce it; `plots` draws
    the children of every parent and the DAG as artifacts once the tree is recorded; `output_dir` holds what
    programs run as leaves write (default `.runtree/outputs/<pipeline_id>` here).

    The executor is checked against the store before the store is opened, so a refused combination raises
    ConfigErrors with no store file, experiment or run left behind; a `resume` where there is no store file raises
    UnknownPipeline rather than create an empty store to look in. The executor is then started before the store is
    opened: its workers start on the other cores while this process imports MLflow and opens the store, and it is
    closed here if anything fails before the runner takes it over.
    """
    from runtree_pipeline.execution.scheduler import Runner, new_painter
    from runtree_pipeline.interrupts import shielded
    from runtree_pipeline.tracking.mlflow_store import MlflowStore, default_uri, load_mlflow, quiet_mlflow_env
    from runtree_pipeline.tracking.sqlite import sqlite_path

    quiet_mlflow_env()
    executor = executor or LocalExecutor()
    uri = plan.tracking_uri or default_uri()
    problems = executor.check(tracking_uri=uri, plan=plan)
    if problems:
        raise ConfigErrors(problems)
    if plan.resume and (path := sqlite_path(uri)) is not None and not path.exists():
        raise UnknownPipeline(f"resume={plan.resume}: no tracking store at {uri}, so no execution to resume")
    store = None
    painter = new_painter(plan) if plots else None
    try:
        if painter is not None:  # matplotlib (and scikit-learn) import there while MLflow imports here
            painter.start()
        executor.start(tracking_uri=uri)  # the local executor imports MLflow
        load_mlflow()
        executor.ready()  # an executor that cannot start leaves no store, experiment or run behind
        store = MlflowStore(uri=plan.tracking_uri, experiment=plan.experiment)
        runner = Runner(
            plan,
            store=store,
            executor=executor,
            progress=progress,
            command=command,
            plots=plots,
            output_dir=output_dir,
            painter=painter,
        )
        return runner.run()
    except BaseException:
        with shielded(discard=True):
            executor.close()
            if painter is not None:
                painter.close()
        raise
    finally:
        if store is not None:
            store.close()
