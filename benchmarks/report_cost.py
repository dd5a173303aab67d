"""What one `report(step, **metrics)` call costs a target, so "call it once per epoch" is a measured promise.

Run by hand (not a test):  python benchmarks/report_cost.py [--reports 200] [--repeats 3]

Each leaf times its own `report` calls with `time.perf_counter` and returns the mean in ms: no process start-up,
no run creation, only the call. Contenders: without a pruner (one metrics write to the leaf's run) and with one
(the write plus the round trip to the driver's pruner), on the local and processes executors, against a fresh
embedded sqlite store each. Beside them, the same write made with MLflow's own `mlflow.log_metrics` from inside
the leaf, which is what a target would call without runtree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # for workers


def reporting(*, x: float, reports: int, how: str) -> dict:
    """The leaf: `reports` steps of three metrics, timed one call at a time."""
    import mlflow

    from runtree_pipeline import report

    spent = 0.0
    for step in range(reports):
        metrics = {"val_loss": 1.0 / (step + 1) + x, "train_loss": 0.5, "accuracy": 0.9}
        started = time.perf_counter()
        if how == "mlflow":
            mlflow.log_metrics(metrics, step=step)
        else:
            report(step, **metrics)
        spent += time.perf_counter() - started
    return {"val_loss": 1.0 / reports + x, "ms_per_report": spent / reports * 1000}


def measure(executor: str, how: str, *, pruner: bool, reports: int) -> float:
    from runtree_pipeline import build_plan, run_plan
    from runtree_pipeline.execution.executors import LocalExecutor, ProcessExecutor

    subvariants: dict = {"params": {"x": "0,1,2,3"}}
    if pruner:
        subvariants["pruner"] = {"_target_": "optuna.pruners.NopPruner"}  # asked every step, never stops a leaf
    with tempfile.TemporaryDirectory() as scratch:
        config = {
            "tracking_uri": f"sqlite:///{scratch}/store.db",
            "experiment": "report",
            "objective": {"metric": "val_loss"},
            "stages": {
                "fit": {
                    "_target_": "benchmarks.report_cost.reporting",
                    "params": {"reports": reports, "how": how},
                    "subvariants": subvariants,
                }
            },
        }
        make = {"local": LocalExecutor, "processes": lambda: ProcessExecutor(workers=2)}[executor]
        result = run_plan(build_plan(config), executor=make(), plots=False)
        return statistics.median(leaf.metrics["ms_per_report"] for leaf in result.stages["fit"].node.leaves)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=200, help="report calls per leaf (4 leaves)")
    parser.add_argument("--repeats", type=int, default=3, help="pipelines per contender, alternated; medians shown")
    args = parser.parse_args()
    contenders = [
        ("local", "mlflow.log_metrics in the leaf", "mlflow", False),
        ("local", "report, no pruner", "report", False),
        ("local", "report, pruner asked", "report", True),
        ("processes", "mlflow.log_metrics in the leaf", "mlflow", False),
        ("processes", "report, no pruner", "report", False),
        ("processes", "report, pruner asked", "report", True),
    ]
    samples: dict[tuple[str, str], list[float]] = {(e, label): [] for e, label, _, _ in contenders}
    for _ in range(args.repeats):
        for executor, label, how, pruner in contenders:
            samples[(executor, label)].append(measure(executor, how, pruner=pruner, reports=args.reports))
    print(f"`python benchmarks/report_cost.py --reports {args.reports} --repeats {args.repeats}`\n")
    print("| executor | call | ms per call |\n|---|---|---:|")
    for (executor, label), values in samples.items():
        print(f"| {executor} | {label} | {statistics.median(values):.2f} |")


if __name__ == "__main__":
    main()
