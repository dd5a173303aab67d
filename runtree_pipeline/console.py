"""`runtree tree | best | list`: look at recorded pipelines without writing `search_runs` filters by hand.

Exit codes scripts can rely on: 0 found and printed; 2 no such experiment, pipeline or stage (or nothing recorded);
3 the tracking store cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import schema


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--tracking-uri",
        help="store to read (default: MLflow's own: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)",
    )
    common.add_argument("--experiment", help="experiment name (default: all experiments)")
    pick = argparse.ArgumentParser(add_help=False)
    pick.add_argument("--pipeline", default="last", help="pipeline id from the summary, or 'last' (default)")

    parser = argparse.ArgumentParser(prog="runtree", description="Look at pipelines recorded by runtree_pipeline.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tree = commands.add_parser(
        "tree", parents=[common, pick], help="a pipeline's run tree: status, objective and key params per run"
    )
    tree.add_argument("--limit", type=int, default=8, help="children shown per parent before '… N more' (default 8)")
    best = commands.add_parser(
        "best", parents=[common, pick], help="a stage's best leaf and the command that reproduces it"
    )
    best.add_argument("stages", nargs="+", metavar="STAGE")
    commands.add_parser("list", parents=[common], help="pipeline executions: id, start, status, best per stage")
    return parser


class _Fail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        print(_run(args))
    except _Fail as e:
        print(f"runtree: error: {e}", file=sys.stderr)
        return e.code
    return 0


def _run(args: argparse.Namespace) -> str:
    from .tracking import TrackingReader, TrackingUnavailable, UnknownExperiment
    from .views import RunTree, render_best, render_list, render_tree

    try:
        reader = TrackingReader(uri=args.tracking_uri, experiment=args.experiment)
    except TrackingUnavailable as e:
        raise _Fail(3, str(e)) from None
    except UnknownExperiment as e:
        raise _Fail(2, str(e)) from None

    if args.command == "list":
        return render_list(reader.stage_runs(), reader.experiment_names())

    pipeline_id = reader.latest_pipeline_id() if args.pipeline == "last" else args.pipeline
    runs = reader.pipeline_runs(pipeline_id) if pipeline_id else []
    where = f"experiment '{args.experiment}'" if args.experiment else reader.uri
    if not runs:
        what = "no pipeline recorded" if args.pipeline == "last" else f"no pipeline '{args.pipeline}'"
        raise _Fail(2, f"{what} in {where}")
    tree = RunTree(runs)
    if args.command == "tree":
        return render_tree(tree, limit=args.limit)

    out = []
    for name in args.stages:
        try:
            stage = tree.stage(name)
        except LookupError as e:
            raise _Fail(2, str(e)) from None
        best_id = stage.data.tags.get(schema.BEST_RUN_ID)
        alone = not tree.children.get(stage.info.run_id) and stage.info.status == "FINISHED"
        leaf = tree.by_id.get(best_id) if best_id else (stage if alone else None)
        if leaf is None:
            raise _Fail(2, f"stage '{name}' has no best run ({stage.data.tags.get(schema.ERROR, stage.info.status)})")
        out.append(render_best(stage, leaf))
    return "\n\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
