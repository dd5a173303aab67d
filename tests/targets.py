"""Targets used by the tests: small, deterministic, and each exercising one thing a user relies on."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def quad(*, x: float, y: float = 0.0, offset: float = 0.0) -> dict:
    """A bowl with its minimum at x=1, y=-2: the true optimum of a grid is known in advance."""
    return {"loss": (x - 1) ** 2 + (y + 2) ** 2 + offset, "xy": x * y}


def flaky(*, x: float, fail_on: tuple = (), y: float = 0.0) -> dict:
    if x in fail_on:
        raise RuntimeError(f"boom at x={x}")
    return {"loss": (x - 1) ** 2 + y}


def no_objective(*, x: float) -> dict:
    return {"accuracy": x, "note": "no loss here"}


def with_outputs(*, name: str = "data", seed: int = 0) -> dict:
    return {"path": f"/data/{name}/{seed}", "rows": 100 + seed}


def logs_steps(*, x: float, steps: int = 3) -> dict:
    """Logs through the fluent API: these values must land on the leaf run that called it."""
    import mlflow

    for i in range(steps):
        mlflow.log_metric("curve", x * i, step=i)
    return {"loss": x}


def counted(*, x: float, log_file: str, y: float = 0.0, sleep: float = 0.0) -> dict:
    """Appends a line per call so tests can count executions; sleeps first so a test can interrupt it."""
    import time

    time.sleep(sleep)
    with open(log_file, "a") as fh:
        fh.write(f"{x},{y}\n")
    return {"loss": (x - 1) ** 2 + y}


def fails_once(*, x: float, marker_dir: str, fail_on: tuple = ()) -> dict:
    """Fails the first call for each x in fail_on, succeeds afterwards: a transient bad trial."""
    marker = Path(marker_dir) / f"failed-{x}"
    if x in fail_on and not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        raise RuntimeError(f"transient failure at x={x}")
    return {"loss": (x - 1) ** 2}


def nan_at(*, x: float, nan_on: tuple = ()) -> dict:
    return {"loss": float("nan") if x in nan_on else (x - 1) ** 2 + 10}


def secret_user(*, api_key: str, x: float = 0.0) -> dict:
    return {"loss": x, "key_len": len(api_key)}


def nested(*, opt: dict, x: float = 0.0) -> dict:
    return {"loss": opt["lr"] * 10 + x}


NOT_CALLABLE = 42


def contract(*, x: float, y: float = 0.0, fail_on: tuple = ()) -> dict:
    """What every executor must get right: fluent logging to the leaf, a failing point, a returned metric."""
    import mlflow

    for i in range(3):
        mlflow.log_metric("curve", x + i, step=i)
    if x in fail_on:
        raise ValueError(f"bad point x={x}")
    return {"loss": (x - 2) ** 2 + y, "x_seen": x}


def crash_at(*, x: float, crash_on: tuple = ()) -> dict:
    """Kills its own worker process, as a segfaulting extension or an OOM kill would."""
    import os

    if x in crash_on:
        os._exit(3)
    return {"loss": x}


def sleepy(*, x: float = 0.0, sleep: float = 0.5) -> dict:
    import time

    time.sleep(sleep)
    return {"loss": x}


def timed(*, x: float = 0.0, sleep: float = 0.5) -> dict:
    """Sleeps, and returns when its own work began and ended, by the wall clock the tracking store uses."""
    import time

    began = time.time()
    time.sleep(sleep)
    return {"loss": x, "began": began, "ended": time.time()}


def on_device(
    *, x: float = 0.0, sleep: float = 0.3, naps_at: tuple = (), nap: float = 60.0, dies_at: tuple = ()
) -> dict:
    """`timed`, with the device its worker was given as an output. At the points in `naps_at` it hangs `nap` seconds,
    at those in `dies_at` it kills its worker."""
    import os
    import time

    began = time.time()
    device = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if x in dies_at:
        os._exit(3)
    time.sleep(nap if x in naps_at else sleep)
    return {"loss": x, "began": began, "ended": time.time(), "device": device}


def logs_steps_grouped(*, x: float, group: int, steps: int = 3) -> dict:
    return logs_steps(x=x + 100 * group, steps=steps)


def stops_pipeline(*, x: float, log_file: str, at: float, after: int, driver: int = 0, y: float = 0.0) -> dict:
    """`counted`, except that one call at x == `at` (the first to claim it, in a file `.claimed` holding its run's
    name) stops the pipeline mid-way.

    That call waits until `after` leaves of its experiment are FINISHED in the store, leaves a marker (the log file
    with suffix `.stopping`), interrupts the driver as Ctrl-C would if `driver` is its pid (otherwise the test kills
    the driver once it sees the marker), and then stays in flight until the driver has ended its run, giving up
    after a minute. Every other call, the resumed one included, is an ordinary `counted` leaf.
    """
    import os
    import signal
    import time

    log = Path(log_file)
    claimed = False
    if x == at and not log.with_suffix(".claimed").exists():
        import mlflow  # only here: importing it triples a fresh worker's (a Slurm job's) way to an ordinary call

        run = mlflow.active_run().info
        try:
            with log.with_suffix(".claimed").open("x") as claim:
                claim.write(run.run_name)
            claimed = True
        except FileExistsError:
            pass
    if not claimed:
        return counted(x=x, log_file=log_file, y=y)
    client = mlflow.MlflowClient()
    finished = "attributes.status = 'FINISHED' and tags.`runtree.level` = 'subvariant'"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(client.search_runs([run.experiment_id], finished)) < after:
        time.sleep(0.05)
    log.with_suffix(".stopping").touch()
    if driver:
        os.kill(driver, signal.SIGINT)
    while time.monotonic() < deadline and client.get_run(run.run_id).info.status == "RUNNING":
        time.sleep(0.05)
    raise RuntimeError(f"x={x} was still running when the pipeline stopped")


def bowl_at(*, x: float, centre: float) -> dict:
    """A bowl whose minimum each parent can move: siblings with different centres learn different things."""
    return {"loss": (x - centre) ** 2}


def diverging(*, x: float, epochs: int = 5, log_file: str | None = None, stop_at: int = -1) -> dict:
    """Reports `val_loss` each epoch: points below 3 improve (the higher x, the better), points from 3 on diverge
    from epoch 2, so a pruner's decisions are known in advance. With `log_file`, each call is counted there, and the
    call after `stop_at` counted ones is a Ctrl-C, once."""
    from runtree_pipeline import report

    if log_file is not None:
        count_or_stop(log_file, stop_at, f"{x!r}")
    loss = 0.0
    for epoch in range(epochs):
        loss = 1 / (epoch + 1) - 0.01 * x + (x * epoch if x >= 3 and epoch >= 2 else 0.0)
        report(epoch, val_loss=loss, train_loss=loss / 2)
    return {"val_loss": loss}


def naps(*, x: float, nap_on: tuple = (), seconds: float = 60.0, sleep: float = 0.0) -> dict:
    """Hangs (sleeps `seconds`) at the points in `nap_on`, as a trial stuck on I/O would; sleeps `sleep` otherwise."""
    import time

    time.sleep(seconds if x in nap_on else sleep)
    return {"loss": (x - 1) ** 2}


def count_or_stop(log_file: str, stop_at: int, line: str) -> None:
    """Appends `line` to `log_file`, so a test can count calls; the call after `stop_at` counted ones is a Ctrl-C
    instead, once: a pipeline interrupted at a known point, in process, for resume tests."""
    log = Path(log_file)
    marker = log.with_suffix(".stopped")
    if len(log.read_text().splitlines() if log.exists() else []) == stop_at and not marker.exists():
        marker.touch()
        raise KeyboardInterrupt
    with log.open("a") as fh:
        fh.write(line + "\n")


def makes_files(*, rows: int = 3, workdir: str = ".") -> dict:
    """Returns a directory and a file as paths: both become artifacts of its run, consumed downstream."""
    base = Path(workdir) / f"made-{rows}"
    (base / "data" / "part").mkdir(parents=True, exist_ok=True)
    (base / "data" / "rows.txt").write_text("\n".join(str(i) for i in range(rows)))
    (base / "data" / "part" / "extra.txt").write_text("extra")
    (base / "model.bin").write_bytes(bytes(range(rows)))
    return {"loss": float(rows), "data": base / "data", "model": base / "model.bin", "note": "paths above"}


def reads_files(*, data, model, x: float = 0.0) -> dict:
    """Gets local paths, not URIs: counts the rows it was given."""
    if not isinstance(data, Path) or not isinstance(model, Path):
        raise TypeError(f"expected local paths, got {type(data).__name__} and {type(model).__name__}")
    rows = len((data / "rows.txt").read_text().splitlines())
    assert (data / "part" / "extra.txt").read_text() == "extra"
    return {"loss": (x - rows) ** 2, "rows": rows, "model_bytes": len(model.read_bytes()), "seen_at": str(data)}


def returns_missing_path() -> dict:
    return {"loss": 1.0, "data": Path("no/such/place")}


def fits_line(*, slope: float, log_model: bool = True) -> dict:
    """Fits y = 2x with a given slope's noise and logs the fitted model to its run (MLflow's sklearn flavour)."""
    import mlflow.sklearn
    import numpy as np
    from sklearn.linear_model import LinearRegression

    x = np.arange(10.0).reshape(-1, 1)
    model = LinearRegression().fit(x, slope * x.ravel())
    if log_model:
        mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
    return {"loss": abs(slope - 2.0)}


def best_of_curve(*, x: float) -> dict:
    """Reports a curve whose last point is not its best, and returns its best: what the run's objective is."""
    from runtree_pipeline import report

    curve = [0.9 + x, 0.5 + x, 0.7 + x]
    for step, value in enumerate(curve):
        report(step, loss=value)
    return {"loss": min(curve)}


def reports_from_a_thread(*, x: float) -> dict:
    """Trains in a thread of its own, as some training loops do: `report` still finds its leaf."""
    import threading

    from runtree_pipeline import report

    def train() -> None:
        for step in range(3):
            report(step, loss=x + step)

    worker = threading.Thread(target=train)
    worker.start()
    worker.join()
    return {"loss": x}


def counts_monitors(*, x: float = 0.0, sleep: float = 0.0, fail: bool = False) -> dict:
    """How many of MLflow's system metrics monitors run beside the leaf's work, as a metric; raises at the end
    when `fail`, so a failed leaf's sampling can be checked too."""
    import threading
    import time

    time.sleep(sleep)
    monitors = sum(t.name == "SystemMetricsMonitor" for t in threading.enumerate())
    if fail:
        raise RuntimeError(f"failing on purpose with {monitors} monitor(s)")
    return {"loss": x, "monitors": monitors}


def resumable(*, x: float, epochs: int, marker: str, fail_at: int = -1, die_at: int = -1) -> dict:
    """Trains `epochs` steps from its newest checkpoint, noting where each attempt started in `marker`; fails at
    step `fail_at` (raises) or kills its own process at `die_at` (a kill -9 of a local pipeline), once each."""
    import tempfile

    from runtree_pipeline import last_checkpoint, report, save_checkpoint

    checkpoint = last_checkpoint()
    start, state = 0, 0.0
    if checkpoint is not None:
        state = float((checkpoint.path / "state.txt").read_text())
        start = checkpoint.step + 1
    with open(marker, "a") as fh:
        fh.write(f"{start}\n")
    for epoch in range(start, epochs):
        state += 1
        report(epoch, loss=x + 1 / state)
        once = Path(f"{marker}.{epoch}")
        if epoch in (fail_at, die_at) and not once.exists():  # reported, not saved: the step runs again
            once.touch()
            if epoch == die_at:
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"lost at step {epoch}")
        saved = Path(tempfile.mkdtemp()) / "state.txt"
        saved.write_text(str(state))
        save_checkpoint(saved.parent, step=epoch)
    return {"loss": x + 1 / state, "state": state}


def preemptible(*, epochs: int, marker: str, step_s: float = 0.2) -> dict:
    """Reports a step every `step_s`, checkpointing only when told the pipeline is stopping (`Preempted`): then it
    saves where it is and lets the pipeline end; started again, it continues from there, without pausing (the pause
    only gives a test time to stop the first start mid-run). Notes its starts and steps in `marker`."""
    import tempfile
    import time

    from runtree_pipeline import last_checkpoint, report, save_checkpoint
    from runtree_pipeline.errors import Preempted

    checkpoint = last_checkpoint()
    start = checkpoint.step + 1 if checkpoint is not None else 0
    with open(marker, "a") as fh:
        fh.write(f"start {start}\n")
    for epoch in range(start, epochs):
        time.sleep(step_s if checkpoint is None else 0)
        try:
            report(epoch, loss=1 / (epoch + 1))
        except Preempted:
            saved = Path(tempfile.mkdtemp()) / "state.txt"
            saved.write_text(str(epoch))
            save_checkpoint(saved.parent, step=epoch)
            with open(marker, "a") as fh:
                fh.write(f"saved {epoch}\n")
            raise
        with open(marker, "a") as fh:
            fh.write(f"step {epoch}\n")
    return {"loss": 1 / epochs}


def lucky_seed(*, lr: float, seed: int, fail_seed: int = -1) -> dict:
    """A good lr scores 1.0 give or take a little on every seed; a bad one scores 2.0 except on seed 3, where it
    is luckier than any run of the good lr: the best single run is the worse configuration's."""
    if seed == fail_seed:
        raise RuntimeError(f"seed {seed} diverged")
    if lr == 0.1:
        return {"loss": 2.0 if seed != 3 else 0.5, "size": 10.0}
    return {"loss": 1.0 + 0.01 * seed, "size": 20.0}


def tradeoff(*, width: int, depth: int) -> dict:
    """Bigger models are more accurate and slower: `loss` falls and `latency` rises with size."""
    size = width * depth
    return {"loss": 10.0 / size + 0.1 * depth, "latency": float(size), "params_m": size / 10}


def two_ways(*, x: float, log_file: str | None = None, stop_at: int = -1) -> dict:
    """Two objectives pulling apart (`near_1` wants x=1, `near_minus_1` wants x=-1) and a metric to constrain;
    counts its calls, and is a Ctrl-C after `stop_at` of them (see `count_or_stop`)."""
    if log_file is not None:
        count_or_stop(log_file, stop_at, f"{x}")
    return {"near_1": (x - 1) ** 2, "near_minus_1": (x + 1) ** 2, "x_value": x}


def tradeoff_offset(*, width: int, depth: int, offset: int) -> dict:
    """`tradeoff` shifted per replicate, so replicates differ on both objectives."""
    metrics = tradeoff(width=width, depth=depth)
    return {**metrics, "loss": metrics["loss"] + 0.1 * offset, "latency": metrics["latency"] + offset}


def one_matters(*, x: float, z: float) -> dict:
    """`x` decides the loss; `z` is swept alongside and does nothing."""
    return {"loss": (x - 1) ** 2, "z_seen": z}
