"""A retry continues from the leaf's newest checkpoint however its first attempt was lost: past its timeout (the pool
kills the worker), with its worker dead, or on Ray after an exception; each step lands in the history once."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from runtree_pipeline import build_plan, last_checkpoint, report, run_plan, save_checkpoint
from runtree_pipeline.execution.executors import ProcessExecutor, RayExecutor
from tests.conftest import all_runs
from tests.execution.test_executors import ray_runtime  # noqa: F401 - the fixture, for this module's own runtime

EPOCHS, LOST_AT = 6, 3


def trains(*, epochs: int, marker: str, lost_at: int, how: str) -> dict:
    """Trains `epochs` steps from its newest checkpoint, noting where each attempt started in `marker`; once, at
    step `lost_at` (reported, not yet saved), it hangs, ends its process, or raises (`how`)."""
    checkpoint = last_checkpoint()
    start, state = (checkpoint.step + 1, int((checkpoint.path / "state").read_text())) if checkpoint else (0, 0)
    with open(marker, "a") as fh:
        fh.write(f"{start}\n")
    for epoch in range(start, epochs):
        state += 1
        report(epoch, loss=1 / state)
        once = Path(f"{marker}.lost")
        if epoch == lost_at and not once.exists():
            once.touch()
            if how == "hang":
                time.sleep(600)
            if how == "exit":
                os._exit(3)
            raise RuntimeError(f"lost at step {epoch}")
        saved = Path(tempfile.mkdtemp())
        (saved / "state").write_text(str(state))
        save_checkpoint(saved, step=epoch)
    return {"loss": 1 / state, "state": state}


def run_lost_once(store: str, tmp_path: Path, how: str, executor, limits: dict) -> tuple[Path, object]:
    marker = tmp_path / "starts"
    params = {"epochs": EPOCHS, "marker": str(marker), "lost_at": LOST_AT, "how": how}
    stage = {"_target_": f"{__name__}.trains", "params": params, "limits": {"retries": 1, **limits}}
    config = {"tracking_uri": store, "experiment": how, "objective": {"metric": "loss"}, "stages": {"fit": stage}}
    result = run_plan(build_plan(config), executor=executor, plots=False, output_dir=str(tmp_path / "out"))
    return marker, result


def assert_continued_from_the_newest_checkpoint(client, how: str, marker: Path, result) -> None:
    assert result.ok, result.stages["fit"].node.leaves[0].error
    starts = marker.read_text().split()
    assert starts == ["0", str(LOST_AT)], "the second attempt started after the newest checkpoint, not from scratch"
    (run,) = all_runs(client, how)
    assert run.info.status == "FINISHED"
    assert run.data.tags["runtree.attempts"] == "2"
    assert run.data.metrics["state"] == EPOCHS, "no step was trained twice"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(EPOCHS))


def test_a_retry_after_a_timeout_continues_from_the_newest_checkpoint(store, client, tmp_path):
    executor = ProcessExecutor(workers=1)
    marker, result = run_lost_once(store, tmp_path, "hang", executor, {"timeout_s": 4})
    assert_continued_from_the_newest_checkpoint(client, "hang", marker, result)
    (run,) = all_runs(client, "hang")
    first = client.download_artifacts(run.info.run_id, "attempts/1")
    assert "Timeout:" in next(Path(first).iterdir()).read_text()


def test_a_retry_after_the_worker_died_continues_from_the_newest_checkpoint(store, client, tmp_path):
    marker, result = run_lost_once(store, tmp_path, "exit", ProcessExecutor(workers=1), {})
    assert_continued_from_the_newest_checkpoint(client, "exit", marker, result)


@pytest.mark.usefixtures("ray_runtime")
def test_a_retry_on_ray_continues_from_the_newest_checkpoint(store, client, tmp_path):
    marker, result = run_lost_once(store, tmp_path, "raise", RayExecutor(address="local", workers=1), {})
    assert_continued_from_the_newest_checkpoint(client, "raise", marker, result)
