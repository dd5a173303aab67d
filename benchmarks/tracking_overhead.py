"""Tracking cost per MLflow run: the tutorial's hand-written loop vs the stock-client floor vs runtree_pipeline.

Run by hand (not a test):  python benchmarks/tracking_overhead.py [--repeats 3]

Shape: 5 parents x 25 children with param1/param2/metric1/metric2 (the tutorial's challenge). Each contender runs
in its own fresh process against (1) an embedded sqlite store and (2) a local `mlflow server` in its default form
(uvicorn, 4 workers, job runner off) on a free loopback port. ms/run = (last run end - first run start) / runs,
read from the store, so interpreter start-up and imports count for nobody. Also measured: the `processes`
executor on 32 leaves sleeping 0.5 s with 4 workers, and the wall time of a dry run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from runtree_pipeline.tracking.localserver import LocalMlflowServer

REPO = Path(__file__).resolve().parent.parent
SHAPE = ("5", "25")  # parents, children per parent

# The tutorial's challenge loop, call for call: fluent API, a parent per test, nested children that log two
# params, two metrics and a tag each, then the parent logs the best metric1 and the params that produced it.
SEED_LOOP = """
import random, sys
import mlflow
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment(sys.argv[2])
for test_no in range(int(sys.argv[3])):
    best, best_params = float("inf"), None
    with mlflow.start_run(run_name=f"parent_{test_no}"):
        mlflow.set_tag("test_identifier", "subset_test")
        for i in range(int(sys.argv[4])):
            with mlflow.start_run(run_name=f"run_{i}_test_{test_no}", nested=True):
                p1, p2 = random.choice(["a", "b"]), random.choice(["d", "f"])
                m1, m2 = random.uniform(0, 1), abs(random.gauss(5, 2.5))
                mlflow.log_param("param1", p1)
                mlflow.log_param("param2", p2)
                mlflow.log_metric("metric1", m1)
                mlflow.log_metric("metric2", m2)
                mlflow.set_tag("test_identifier", "subset_test")
            if m1 < best:
                best, best_params = m1, (p1, p2)
        mlflow.log_metric("best_metric1", best)
        mlflow.log_param("best_param1", best_params[0])
        mlflow.log_param("best_param2", best_params[1])
"""

# The floor: the fewest stock client calls that record the same runs, one after another.
FLOOR = """
import random, sys, time
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
client = MlflowClient(sys.argv[1])
exp = client.create_experiment(sys.argv[2])
def record(name, parent=None, params=(), metrics=()):
    tags = {"mlflow.runName": name}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp, run_name=name, tags=tags)
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics],
                     params=[Param(k, v) for k, v in params], tags=[RunTag("test_identifier", "subset_test")])
    client.set_terminated(run.info.run_id)
    return run.info.run_id
for test_no in range(int(sys.argv[3])):
    parent = client.create_run(exp, run_name=f"parent_{test_no}").info.run_id
    best = min((random.uniform(0, 1), random.choice("ab"), random.choice("df")) for _ in range(int(sys.argv[4])))
    for i in range(int(sys.argv[4])):
        record(f"run_{i}", parent, [("param1", random.choice("ab")), ("param2", random.choice("df"))],
               [("metric1", random.uniform(0, 1)), ("metric2", abs(random.gauss(5, 2.5)))])
    now = int(time.time() * 1000)
    client.log_batch(parent, metrics=[Metric("best_metric1", best[0], now, 0)],
                     params=[Param("best_param1", best[1]), Param("best_param2", best[2])])
    client.set_terminated(parent)
"""

SLEEPY = """
# @package _global_
experiment: sleepy
objective: {metric: loss}
stages:
  sleep:
    _target_: tests.targets.sleepy
    params: {sleep: 0.5}
    subvariants:
      params: {x: "range(0, 32)"}
"""


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out["PYTHONPATH"] = str(REPO)
    out["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return out


def ms_per_run(uri: str, experiment: str) -> tuple[float, int]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=50000)
    span = max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)
    return span / len(runs), len(runs)


def run(cmd: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def contenders(uri: str, tag: str, cwd: Path) -> dict[str, list[str]]:
    found = {
        "tutorial loop (fluent, as written)": [sys.executable, "-c", SEED_LOOP, uri, f"seed-{tag}", *SHAPE],
        "floor (MlflowClient, 3 calls/run)": [sys.executable, "-c", FLOOR, uri, f"floor-{tag}", *SHAPE],
        "runtree_pipeline +sweep=tutorial": [
            sys.executable,
            "-m",
            "runtree_pipeline",
            "+sweep=tutorial",
            f"tracking_uri={uri}",
            f"experiment=runtree-{tag}",
            f"hydra.run.dir={cwd / 'outputs' / tag}",
        ],
    }
    if uri.startswith("sqlite:"):
        # runtree switches a sqlite file to WAL; the floor again on that same file shows what WAL alone gives.
        found["floor again, on the file runtree switched to WAL"] = [
            sys.executable,
            "-c",
            FLOOR,
            uri,
            f"floor2-{tag}",
            *SHAPE,
        ]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender and store; the median is shown")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="runtree-bench-"))
    server = LocalMlflowServer(root, workers=None, env=env()).start()
    url = server.url
    rows = []
    try:
        stores = (("sqlite", lambda i: f"sqlite:///{root / f'bench{i}.db'}"), ("server", lambda i: url))
        for store_name, make_uri in stores:
            results: dict[str, list[float]] = {}
            for i in range(args.repeats):
                uri = make_uri(i)
                for label, cmd in contenders(uri, f"{store_name}{i}", root).items():
                    run(cmd, root)
                    experiment = f"runtree-{store_name}{i}" if label.startswith("runtree") else cmd[4]
                    value, _ = ms_per_run(uri, experiment)
                    results.setdefault(label, []).append(value)
            medians = {label: statistics.median(v) for label, v in results.items()}
            seed = medians["tutorial loop (fluent, as written)"]
            floor = medians["floor (MlflowClient, 3 calls/run)"]
            for label, value in medians.items():
                rows.append((store_name, label, value, seed / value, value / floor))

        conf = root / "conf" / "sweep"
        conf.mkdir(parents=True)
        (conf / "sleepy.yaml").write_text(textwrap.dedent(SLEEPY))
        sleepy_uri = f"sqlite:///{root / 'sleepy.db'}"
        wall = run(
            [
                sys.executable,
                "-m",
                "runtree_pipeline",
                "--config-dir",
                str(conf.parent),
                "+sweep=sleepy",
                f"tracking_uri={sleepy_uri}",
                "executor=processes",
                "executor.workers=4",
                f"hydra.run.dir={root / 'outputs' / 'sleepy'}",
            ],
            root,
        )
        per_run, count = ms_per_run(sleepy_uri, "sleepy")
        span = per_run * count / 1000
        dry = statistics.median(
            run(
                [
                    sys.executable,
                    "-m",
                    "runtree_pipeline",
                    "+sweep=tutorial",
                    "dry_run=true",
                    f"hydra.run.dir={root / 'outputs' / 'dry'}",
                ],
                root,
            )
            for _ in range(5)
        )
    finally:
        server.stop()

    print("| store | contender | ms/run | tutorial loop ÷ this | this ÷ floor |")
    print("|---|---|---:|---:|---:|")
    for store_name, label, value, speedup, vs_floor in rows:
        print(f"| {store_name} | {label} | {value:.1f} | {speedup:.2f}× | {vs_floor:.2f}× |")
    ideal = 32 * 0.5 / 4
    print()
    print(
        f"processes, 4 workers, 32 leaves × 0.5 s: first run start → last run end {span:.2f} s "
        f"(ideal {ideal:.1f} s, ratio {span / ideal:.2f}); whole command {wall:.2f} s incl. start-up"
    )
    print(f"dry run (+sweep=tutorial dry_run=true): {dry:.2f} s wall (median of 5)")


if __name__ == "__main__":
    main()
