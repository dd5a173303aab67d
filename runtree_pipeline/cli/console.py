"""`runtree tree | best | list | export | why | diff`: look at recorded pipelines without writing `search_runs`
filters by hand.

Exit codes scripts can rely on: 0 found and printed; 2 no such experiment, pipeline, stage or run (or nothing
recorded, or a run runtree did not record), or an export file that cannot be written; 3 the tracking store cannot
be read.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from runtree_pipeline.errors import ExportFailed, NotRecorded, RuntreeError, TrackingFailed, TrackingUnavailable
from runtree_pipeline.states import Status
from runtree_pipeline.tracking import tags as schema

if TYPE_CHECKING:
    from runtree_pipeline.tracking.mlflow_store import TrackingReader


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--tracking-uri",
        help="store to read (default: MLflow's own: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)",
    )
    common.add_argument("--experiment", help="experiment name (default: all experiments)")
    pick = argparse.ArgumentParser(add_help=False)
    pick.add_argument("--pipeline", default="last", help="pipeline id from the summary, or 'last' (default)")

    parser = argparse.ArgumentParser(
        prog="runtree",
        description="Look at pipelines recorded by runtree_pipeline, export one as a table, or ask why a run ran.",
        epilog="Exit codes: 0 ok; 2 no such experiment, pipeline, stage or run; 3 the tracking store cannot be read. "
        "'runtree COMMAND --help' describes each command.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tree = commands.add_parser(
        "tree", parents=[common, pick], help="a pipeline's run tree: status, objective and key params per run"
    )
    tree.add_argument("--limit", type=int, default=8, help="children shown per parent before '… N more' (default 8)")
    best = commands.add_parser(
        "best",
        parents=[common, pick],
        help="a stage's best leaf and the commands that reproduce it",
        description="A stage's best leaf and the commands that reproduce it. Without --pipeline: the newest "
        "pipeline that has every STAGE named.",
    )
    best.add_argument("stages", nargs="+", metavar="STAGE")
    commands.add_parser("list", parents=[common], help="pipeline executions: id, start, status, best per stage")
    export = commands.add_parser(
        "export",
        parents=[common, pick],
        help="a pipeline's runs as a table: CSV (default) or Parquet",
        description="Write one row per run of a pipeline: pipeline_id, run_id, parent_run_id (empty for stage "
        "runs), stage, level, name, status, then params.<key> and metrics.<key> for every param and metric "
        "present. Stage runs superseded by a later resume are left out, as in 'runtree tree'. The same table "
        "as PipelineResult.to_frame() in Python.",
        epilog="Params that are numbers in every run become numeric columns (Parquet keeps the types). Examples: "
        "'runtree export > runs.csv', 'runtree export --experiment cnn -o runs.parquet'.",
    )
    export.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="file to write: Parquet when it ends in .parquet, else CSV (default: CSV on stdout)",
    )
    why = commands.add_parser(
        "why",
        parents=[common],
        help="why a run was executed rather than taken from an earlier execution",
        description="Why a run was executed rather than reused: the earlier run with the same content key and why "
        "it was not taken (it failed, or the cache was off), or what changed since the newest earlier run of the "
        "same name (the target's code, params, an upstream stage's best). On a parent run, how many of its "
        "leaves were taken from earlier runs.",
    )
    why.add_argument(
        "run_id", metavar="RUN_ID", help="a run id, from the MLflow UI, 'runtree best' or 'runtree export'"
    )
    diff = commands.add_parser(
        "diff",
        parents=[common],
        help="two executions side by side: config, code, best and leaves per stage",
        description="Compare two executions stage by stage: the config keys that differ (params, sweeps, limits), "
        "whether the target's code changed, the best value and params, and the leaves executed, reused and "
        "failed. Without pipeline ids: the two newest executions of --experiment (default: the newest "
        "execution's experiment), older first.",
    )
    diff.add_argument("pipelines", nargs="*", metavar="PIPELINE", help="two pipeline ids, older first (or none)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "diff" and len(args.pipelines) not in (0, 2):
        parser.error("runtree diff takes two pipeline ids, or none for the two newest executions")
    try:
        text = _run(args)
    except RuntreeError as e:
        print(f"runtree: error: {e}", file=sys.stderr)
        # `runtree` only reads: a read that outlived its retries is a store that cannot be read, not a lost result
        return TrackingUnavailable.exit_code if isinstance(e, TrackingFailed) else e.exit_code
    if text is not None:
        print(text)
    return 0


def _run(args: argparse.Namespace) -> str | None:
    from runtree_pipeline.reports.views import render_best, render_list, render_tree
    from runtree_pipeline.tracking.index import RunIndex
    from runtree_pipeline.tracking.mlflow_store import TrackingReader

    reader = TrackingReader(uri=args.tracking_uri, experiment=args.experiment)

    if args.command == "list":
        return render_list(reader.stage_runs(), reader.experiment_names())

    where = f"experiment '{args.experiment}' of {reader.uri}" if args.experiment else f"any experiment of {reader.uri}"
    if args.command == "why":
        return _why(reader, args.run_id, where)
    if args.command == "diff":
        return _diff(reader, args.pipelines, where)
    if args.pipeline != "last":
        pipeline_id = args.pipeline
    elif args.command == "best":
        pipeline_id = _newest_with(reader, args.stages, where)
    else:
        pipeline_id = reader.latest_pipeline_id()
    if args.command == "export":
        return _export(reader, pipeline_id, args, where)
    runs = reader.pipeline_runs(pipeline_id) if pipeline_id else []
    if not runs:
        raise _no_pipeline(args, where)
    tree = RunIndex(runs)
    experiment = reader.experiment_names().get(runs[0].experiment_id, runs[0].experiment_id)
    if args.command == "tree":
        return render_tree(tree, limit=args.limit, experiment=experiment)

    out = []
    for name in args.stages:
        try:
            stage = tree.stage(name)
        except LookupError as e:
            raise NotRecorded(str(e)) from None
        best_id = stage.tags.get(schema.BEST_RUN_ID)
        alone = not tree.children(stage.run_id) and stage.status == Status.FINISHED
        leaf = tree.by_id.get(best_id) if best_id else (stage if alone else None)
        if leaf is None:
            why = stage.tags.get(schema.ERROR, stage.status)
            raise NotRecorded(f"stage '{name}' has no best run ({why})")
        out.append(render_best(stage, leaf, experiment=experiment))
    return "\n\n".join(out)


def _newest_with(reader: TrackingReader, stages: Sequence[str], where: str) -> str:
    """The newest pipeline holding every stage asked for: another pipeline may have run since, in this or another
    experiment, without that stage."""
    newest: dict[str, int] = {}
    has: dict[str, set[str]] = {}
    for run in reader.stage_runs():
        pipeline_id = run.tags.get(schema.PIPELINE_ID)
        if pipeline_id is None:
            continue
        newest[pipeline_id] = max(newest.get(pipeline_id, 0), run.start_time or 0)
        has.setdefault(pipeline_id, set()).add(run.tags.get(schema.STAGE, "?"))
    if not has:
        raise NotRecorded(f"no pipeline recorded in {where}")
    found = [p for p in has if set(stages) <= has[p]]
    if not found:
        asked = ", ".join(f"'{s}'" for s in stages)
        seen = ", ".join(sorted(set().union(*has.values())))
        raise NotRecorded(
            f"no pipeline with stage {asked} in {where} (searched {len(has)} pipeline"
            f"{'s' if len(has) != 1 else ''}; their stages: {seen})",
        )
    return max(found, key=lambda p: newest[p])


def _why(reader: TrackingReader, run_id: str, where: str) -> str:
    """One search for the run's stage and one per stage upstream of it, whatever the number of executions."""
    from runtree_pipeline.reports.views import render_why

    run = reader.run(run_id)
    if run is None:
        raise NotRecorded(f"no run {run_id} in {where}")
    stage = run.tags.get(schema.STAGE)
    if stage is None or schema.PIPELINE_ID not in run.tags:
        raise NotRecorded(f"run {run_id} was not recorded by runtree (it has no {schema.STAGE} tag)")
    runs = reader.stage_history(stage)
    for upstream in sorted({name for r in runs for name in schema.upstream_of(r.tags)} - {stage}):
        runs += reader.stage_history(upstream)
    return render_why(run, runs)


def _diff(reader: TrackingReader, pipelines: Sequence[str], where: str) -> str:
    """Two searches for the runs, one artifact download per stage run for its config."""
    from runtree_pipeline.reports.views import render_diff
    from runtree_pipeline.tracking.index import RunIndex

    if not pipelines:
        pipelines = _two_newest(reader, where)
    indexes = []
    for pipeline_id in pipelines:
        index = RunIndex(reader.pipeline_runs(pipeline_id))
        if not index.stages:
            raise NotRecorded(f"no pipeline '{pipeline_id}' in {where}")
        indexes.append(index)
    old, new = indexes
    configs = {stage.run_id: reader.config_of(stage) for index in indexes for stage in index.stages}
    return render_diff(old, new, configs, experiments=reader.experiment_names())


def _two_newest(reader: TrackingReader, where: str) -> list[str]:
    """The two newest executions, older first, of the experiment asked for or else of the newest execution's."""
    started: dict[str, int] = {}
    experiment: dict[str, str] = {}
    for run in reader.stage_runs():
        pipeline_id = run.tags.get(schema.PIPELINE_ID)
        if pipeline_id is None or schema.SUPERSEDED_BY in run.tags:
            continue
        started[pipeline_id] = min(started.get(pipeline_id, run.start_time or 0), run.start_time or 0)
        experiment[pipeline_id] = run.experiment_id
    newest = sorted(started, key=lambda p: started[p], reverse=True)
    if newest:
        newest = [p for p in newest if experiment[p] == experiment[newest[0]]]
    if len(newest) < 2:
        raise NotRecorded(f"fewer than two pipeline executions in {where} (found {len(newest)}): nothing to compare")
    return newest[1::-1]


def _no_pipeline(args: argparse.Namespace, where: str) -> NotRecorded:
    what = "no pipeline recorded" if args.pipeline == "last" else f"no pipeline '{args.pipeline}'"
    return NotRecorded(f"{what} in {where}")


def _export(reader: TrackingReader, pipeline_id: str | None, args: argparse.Namespace, where: str) -> None:
    from runtree_pipeline.reports.export import pipeline_frame, write

    frame = pipeline_frame(reader, pipeline_id) if pipeline_id else None
    if frame is None or frame.empty:
        raise _no_pipeline(args, where)
    try:
        write(frame, args.output, stdout=sys.stdout)
    except BrokenPipeError:
        _stdout_closed()
        return None
    except (OSError, ImportError) as e:
        raise ExportFailed(f"cannot write {args.output}: {e}") from None
    if args.output:
        print(f"{len(frame)} runs of pipeline {pipeline_id} written to {args.output}", file=sys.stderr)


def _stdout_closed() -> None:
    """`runtree export | head` closed the pipe: that is the reader's choice, not an error; keep Python from
    complaining again when it flushes stdout at exit."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
