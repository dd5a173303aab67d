"""One pipeline execution as a table, one row per run: for people who reach for `study.trials_dataframe()` or
`dvc exp show --csv` rather than the MLflow UI. `runtree export` and `PipelineResult.to_frame()` both come here,
so the file and the DataFrame never disagree.

Superseded stage runs (an earlier stage run whose upstream best has since changed) are left out, as in
`runtree tree`: the table is the pipeline as it now stands. Param columns hold numbers when every value in them
reads back as the same text (`32`, `0.0058`), so sorting and plotting work and the CSV shows what MLflow shows;
anything else stays text, exactly as MLflow stores it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from runtree_pipeline.tracking import tags as schema
from runtree_pipeline.tracking.index import RunIndex
from runtree_pipeline.tracking.records import RunRecord

if TYPE_CHECKING:
    import pandas

    from runtree_pipeline.tracking.mlflow_store import TrackingReader

COLUMNS = ("pipeline_id", "run_id", "parent_run_id", "stage", "level", "name", "status")
JUDGED = ("replicates", "feasible", "on_front")
"""Columns a table has only when its pipeline aggregated replicates, had constraints or several objectives."""
PARAM = "params."
METRIC = "metrics."


def pipeline_frame(reader: TrackingReader, pipeline_id: str) -> pandas.DataFrame:
    """Every run of one execution, read with one paginated search."""
    return runs_frame(reader.pipeline_runs(pipeline_id))


def runs_frame(runs: Iterable[RunRecord]) -> pandas.DataFrame:
    """The table for the runs of one execution: stages in the order they started, each followed by
    its runs in tree order (a variant, then its sub-variants). Runs under a superseded stage run go with it."""
    import pandas as pd

    tree = RunIndex(runs)
    ordered: list[RunRecord] = []

    def walk(run: RunRecord) -> None:
        ordered.append(run)
        for child in sorted(tree.children(run.run_id), key=lambda r: r.name):
            walk(child)

    for stage in tree.stages:
        walk(stage)
    front = {run_id for stage in tree.stages for run_id in stage.tags.get(schema.PARETO, "").split(",") if run_id}
    params = sorted({k for r in ordered for k in r.params})
    metrics = sorted({k for r in ordered for k in r.metrics})
    fixed = {
        "pipeline_id": lambda r: r.tags.get(schema.PIPELINE_ID, ""),
        "run_id": lambda r: r.run_id,
        "parent_run_id": lambda r: "" if schema.is_stage(r.tags) else r.parent_id or "",
        "stage": lambda r: r.tags.get(schema.STAGE, ""),
        "level": lambda r: r.tags.get(schema.LEVEL, ""),
        "name": lambda r: r.name,
        "status": lambda r: r.status,
    }
    judged = {
        "replicates": lambda r: r.tags.get(schema.REPLICATES, ""),
        "feasible": lambda r: r.tags.get(schema.FEASIBLE, "true" if r.status == "FINISHED" else ""),
        "on_front": lambda r: str(r.run_id in front).lower(),
    }
    wanted = {
        "replicates": any(schema.REPLICATES in r.tags for r in ordered),
        "feasible": any(schema.CONSTRAINTS in stage.tags for stage in tree.stages),
        "on_front": bool(front),
    }
    fixed.update({name: judged[name] for name in JUDGED if wanted[name]})
    data: dict[str, Any] = {name: pd.Series([get(r) for r in ordered], dtype="str") for name, get in fixed.items()}
    for key in params:
        data[PARAM + key] = _param_column([r.params.get(key) for r in ordered])
    for key in metrics:
        data[METRIC + key] = pd.Series([r.metrics.get(key, math.nan) for r in ordered], dtype="float64")
    return pd.DataFrame(data)


def _param_column(values: list[str | None]) -> pandas.Series:
    """Numbers when nothing is lost by reading them as numbers, the text MLflow stores otherwise."""
    import pandas as pd

    present = [v for v in values if v is not None]
    if present and all(_is_int(v) for v in present):
        return pd.Series([None if v is None else int(v) for v in values], dtype="Int64")
    if present and all(_is_float(v) for v in present):
        return pd.Series([math.nan if v is None else float(v) for v in values], dtype="float64")
    return pd.Series(values, dtype="object" if not present else None)


def _is_int(text: str) -> bool:
    try:
        return str(int(text)) == text
    except ValueError:
        return False


def _is_float(text: str) -> bool:
    try:
        return repr(float(text)) == text
    except ValueError:
        return False


def write(frame: pandas.DataFrame, path: str | None, *, stdout: TextIO) -> None:
    """CSV to `path`, or to stdout when there is none (to pipe into other tools); Parquet when `path` ends in
    `.parquet` (keeps the column types)."""
    if path is None:
        frame.to_csv(stdout, index=False)
    elif Path(path).suffix.lower() == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
