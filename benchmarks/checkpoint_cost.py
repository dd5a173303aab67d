"""What saving and restoring a checkpoint directory costs against MLflow's own artifact calls on the same directory.

Run by hand (not a test):

    python benchmarks/checkpoint_cost.py [--repeats 7] [--mb 50] [--files 5] [--only sqlite,server]

A directory of `--files` files of random bytes, `--mb` MB in all, on a sqlite store (artifacts on local disk) and
on a local `mlflow server` in its default form (artifacts proxied through it). Per repeat, each contender on a
fresh run of its own, alternated A B A B:

- runtree save: `store_checkpoint`, what `save_checkpoint` does in a leaf (files, two tags, the listing that finds
  older checkpoints to delete); restore: `newest_checkpoint` then `fetch_checkpoint`, what `last_checkpoint` does
  (one `get_run`, then a download into the artifact cache, a fresh cache directory per repeat so it downloads).
- MLflow save: `MlflowClient.log_artifacts(run_id, dir, "checkpoints/step-0")`; restore:
  `mlflow.artifacts.download_artifacts(run_id=..., artifact_path=..., dst_path=<fresh directory>)`.

Also timed, for the runtree contender: a steady-state save, step 2 with `keep=2` over steps 0 and 1 (stored
untimed beforehand), which deletes step 0 as every later epoch of a training does. Target (issue 20 §1): runtree ÷
MLflow <= 1.2 for save and restore, on each store. Every call is timed in one process with `time.perf_counter`
after one untimed round of each contender (imports, first connections); medians per contender, ratios from the
same invocation; one markdown table, headed by the exact command line, at the end.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tracking_overhead import env  # noqa: E402

from runtree_pipeline.tracking.localserver import LocalMlflowServer  # noqa: E402

STORES = ("sqlite", "server")


def make_directory(root: Path, mb: int, files: int) -> Path:
    source = root / "checkpoint"
    source.mkdir()
    for i in range(files):
        (source / f"part-{i}.bin").write_bytes(os.urandom(mb * 1_000_000 // files))
    return source


class Contenders:
    """Both contenders' save and restore on one store, each on a run of its own."""

    def __init__(self, uri: str, scratch: Path, source: Path) -> None:
        from mlflow import MlflowClient

        self.uri, self.scratch, self.source = uri, scratch, source
        self.client = MlflowClient(uri)
        self.experiment = self.client.create_experiment(f"checkpoints-{time.time_ns()}")
        self.n = 0

    def fresh(self):  # noqa: ANN201 - a RunRef
        from runtree_pipeline.tracking.records import RunRef

        run = self.client.create_run(self.experiment).info
        return RunRef(run.run_id, self.experiment, self.uri, run.run_name, run.artifact_uri, run.start_time)

    def directory(self, prefix: str) -> Path:
        self.n += 1
        return Path(tempfile.mkdtemp(prefix=f"{prefix}-{self.n}-", dir=self.scratch))

    def runtree(self) -> dict[str, float]:
        from runtree_pipeline.tracking.active import fetch_checkpoint, newest_checkpoint, store_checkpoint

        ref = self.fresh()
        t0 = time.perf_counter()
        store_checkpoint(ref, self.source, 0, 2)
        t1 = time.perf_counter()
        os.environ["RUNTREE_ARTIFACT_CACHE"] = str(self.directory("cache"))
        step, saved_at, _ = newest_checkpoint(ref)
        t2 = time.perf_counter()
        restored = fetch_checkpoint(ref, step, saved_at)
        t3 = time.perf_counter()
        check(restored, self.source)
        store_checkpoint(ref, self.source, 1, 2)
        t4 = time.perf_counter()
        store_checkpoint(ref, self.source, 2, 2)
        t5 = time.perf_counter()
        left = sorted(a.path for a in self.client.list_artifacts(ref.run_id, "checkpoints"))
        assert left == ["checkpoints/step-1", "checkpoints/step-2"], left
        return {"save": t1 - t0, "restore": t3 - t1, "newest": t2 - t1, "fetch": t3 - t2, "steady": t5 - t4}

    def mlflow(self) -> dict[str, float]:
        from mlflow.artifacts import download_artifacts

        ref = self.fresh()
        t0 = time.perf_counter()
        self.client.log_artifacts(ref.run_id, str(self.source), "checkpoints/step-0")
        t1 = time.perf_counter()
        restored = download_artifacts(
            run_id=ref.run_id, artifact_path="checkpoints/step-0", dst_path=str(self.directory("dst")),
            tracking_uri=self.uri,
        )
        t2 = time.perf_counter()
        check(Path(restored), self.source)
        return {"save": t1 - t0, "restore": t2 - t1}


def check(restored: Path, source: Path) -> None:
    got = sorted((p.name, p.stat().st_size) for p in restored.iterdir())
    assert got == sorted((p.name, p.stat().st_size) for p in source.iterdir()), got


def measure(uri: str, scratch: Path, source: Path, repeats: int) -> dict[str, list[dict[str, float]]]:
    contenders = Contenders(uri, scratch, source)
    order: list[tuple[str, Callable[[], dict[str, float]]]] = [
        ("runtree", contenders.runtree), ("mlflow", contenders.mlflow)
    ]
    for _, call in order:  # untimed: imports, first connections
        call()
    samples: dict[str, list[dict[str, float]]] = {"runtree": [], "mlflow": []}
    for i in range(repeats):
        for label, call in order if i % 2 == 0 else order[::-1]:
            samples[label].append(call())
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--files", type=int, default=5)
    parser.add_argument("--only", default=",".join(STORES))
    args = parser.parse_args()
    os.environ.clear()
    os.environ.update(env())
    from runtree_pipeline.tracking.mlflow_store import quiet_mlflow_env
    from runtree_pipeline.tracking.sqlite import create_sqlite_store

    quiet_mlflow_env()
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="runtree-ckptcost-") as tmp:
        root = Path(tmp)
        source = make_directory(root, args.mb, args.files)
        os.chdir(root)  # the sqlite store's artifacts land under ./mlruns
        for store in args.only.split(","):
            scratch = root / store
            scratch.mkdir()
            if store == "sqlite":
                uri = f"sqlite:///{root / 'store.db'}"
                create_sqlite_store(uri)
                results[store] = measure(uri, scratch, source, args.repeats)
            else:
                server = LocalMlflowServer(scratch, workers=None, env=env()).start()
                try:
                    results[store] = measure(server.url, scratch, source, args.repeats)
                finally:
                    server.stop()
            shutil.rmtree(scratch, ignore_errors=True)

    def med(samples: list[dict[str, float]], key: str) -> float:
        return statistics.median(s[key] for s in samples)

    print(f"`{shlex.join(['python', 'benchmarks/checkpoint_cost.py', *sys.argv[1:]])}`\n")
    print(f"{args.mb} MB in {args.files} files, medians of {args.repeats}\n")
    print("| store | step | runtree | MLflow | runtree ÷ MLflow | target |\n|---|---|---:|---:|---:|---|")
    for store, samples in results.items():
        ours, theirs = samples["runtree"], samples["mlflow"]
        for step in ("save", "restore"):
            a, b = med(ours, step), med(theirs, step)
            met = "met" if a / b <= 1.2 else "**not met**"
            print(f"| {store} | {step} | {a:.3f} s | {b:.3f} s | {a / b:.2f}× | ≤ 1.2× {met} |")
        detail = ", ".join(f"{k} {med(ours, k):.3f} s" for k in ("newest", "fetch"))
        print(f"| {store} | restore, runtree's parts | {detail} | | | |")
        print(f"| {store} | steady save (step 2, deletes step 0) | {med(ours, 'steady'):.3f} s | | | |")


if __name__ == "__main__":
    main()
