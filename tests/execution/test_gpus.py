"""One GPU per leaf: `executor=processes executor.gpus=[...]` runs at most one leaf per listed device at a time, and
each leaf sees only its own device in CUDA_VISIBLE_DEVICES. No GPU is needed to prove it: the leaves record the
device they were given and when their work began and ended, on real worker processes and a real sqlite store.

The whole executor contract also runs on device slots (`TestProcessesOnDevices`): N pools must start, stop, survive
a dead worker and an interrupt as the one pool does.
"""

from __future__ import annotations

import collections

import pytest

from runtree_pipeline import ConfigErrors, build_plan, run_plan
from runtree_pipeline.execution.executors import ProcessExecutor
from runtree_pipeline.tracking.tags import outputs_of
from tests.conftest import all_runs
from tests.execution.test_executors import ExecutorContract, ctrl_c, reference  # noqa: F401 - fixtures


class TestProcessesOnDevices(ExecutorContract):
    @pytest.fixture(scope="class")
    @classmethod
    def make_executor(cls):
        return lambda: ProcessExecutor(gpus=[0, 1])


def pipeline(store: str, experiment: str, n: int, **params) -> dict:
    return {
        "tracking_uri": store,
        "experiment": experiment,
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "_target_": "tests.targets.on_device",
                "params": params,
                "subvariants": {"params": {"x": f"range(0, {n})"}},
                **({"limits": {"timeout_s": 3.0}} if "naps_at" in params else {}),
            }
        },
    }


def leaves(client, experiment: str) -> list:
    return [r for r in all_runs(client, experiment) if r.data.tags["runtree.level"] == "subvariant"]


def device_of(leaf) -> str:
    return outputs_of(leaf.data.tags)["device"]


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one moment; one that ends as another begins is not open with it."""
    events = sorted([(began, 1) for began, _ in spans] + [(ended, -1) for _, ended in spans])
    open_now = most = 0
    for _, step in events:
        open_now += step
        most = max(most, open_now)
    return most


@pytest.mark.parametrize("gpus", [[0, 1], ["0", "0", "GPU-b"]], ids=["one-slot-each", "a-device-listed-twice"])
def test_each_leaf_sees_one_device_and_a_device_runs_one_leaf_per_listing_at_a_time(store, client, gpus):
    executor = ProcessExecutor(gpus=gpus)
    assert executor.workers == len(gpus)
    assert run_plan(build_plan(pipeline(store, "slots", 4 * len(gpus))), executor=executor, plots=False).ok

    runs = leaves(client, "slots")
    assert len(runs) == 4 * len(gpus) and {r.info.status for r in runs} == {"FINISHED"}
    listed = collections.Counter(map(str, gpus))
    on = collections.defaultdict(list)
    for leaf in runs:
        on[device_of(leaf)].append((leaf.data.metrics["began"], leaf.data.metrics["ended"]))
    assert set(on) == set(listed), "every leaf saw exactly one listed device, and every device was used"
    assert {device: most_at_once(spans) for device, spans in on.items() if most_at_once(spans) > listed[device]} == {}


@pytest.mark.parametrize(
    "failure", [{"naps_at": [0], "nap": 60.0}, {"dies_at": [0]}], ids=["stopped-at-its-timeout", "died"]
)
def test_a_worker_stopped_or_dead_gives_its_device_back(store, client, failure):
    """`fit` loses the worker running its x=0; `after` starts once `fit` is done, two leaves at once, so they take
    both slots, the lost one's in the worker that replaced it: both devices run `after`'s leaves."""
    config = pipeline(store, "lost", 2, **failure)
    config["stages"]["after"] = {
        "_target_": "tests.targets.on_device",
        "depends_on": ["fit"],
        "subvariants": {"params": {"x": "range(0, 4)"}},
    }
    assert run_plan(build_plan(config), executor=ProcessExecutor(gpus=[0, 1]), plots=False).ok

    runs = {r.info.run_name: r for r in leaves(client, "lost")}
    assert (
        runs.pop("fit/x=0").data.tags["runtree.error"].startswith("Timeout:" if "naps_at" in failure else "WorkerDied:")
    )
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert {device_of(r) for name, r in runs.items() if name.startswith("after/")} == {"0", "1"}


def test_a_program_run_as_a_leaf_sees_only_its_workers_device(store, tmp_path):
    """Programs (`command:`) inherit their worker's environment: nothing more is needed for them."""
    program = tmp_path / "device.py"
    program.write_text(
        "import json, os\n"
        "result = {'loss': 0.0, 'device': os.environ['CUDA_VISIBLE_DEVICES']}\n"
        "json.dump(result, open(os.environ['RUNTREE_RESULT'], 'w'))\n"
    )
    config = {
        "tracking_uri": store,
        "experiment": "programs",
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "command": f"python {program}",
                "command_args": "none",
                "subvariants": {"params": {"x": "range(0, 4)"}},
            }
        },
    }
    executor = ProcessExecutor(gpus=[0, "GPU-b"])
    result = run_plan(build_plan(config), executor=executor, plots=False, output_dir=str(tmp_path / "out"))
    assert result.ok
    assert {leaf.outputs["device"] for leaf in result.stages["fit"].node.leaves} == {"0", "GPU-b"}


def test_device_values_are_checked_before_anything_runs():
    """A device is an index or an id, one per entry: "0,1" would give a leaf two devices."""
    for bad in (0, "0", [], [True], [-1], ["0,1"], [" "], [[0, 1]], [0.5]):
        (problem,) = ProcessExecutor(gpus=bad).check(tracking_uri="sqlite:///unused.db")
        assert problem.key == "executor.gpus", bad
    assert ProcessExecutor(gpus=[0, "GPU-5a1f", 0]).check(tracking_uri="sqlite:///unused.db") == []
    assert ProcessExecutor(gpus=[0, 1, 2], workers=2).workers == 2


@pytest.mark.fresh_store
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["executor.gpus=[0,1]", "executor.workers=3"],
            "key 'executor.workers': 3 workers for 2 device slots in executor.gpus=[0, 1]: at most one leaf runs "
            "per listed device (list a device twice for two leaves on it), so leave workers unset or lower it",
        ),
        (
            ["executor.gpus=[]"],
            "key 'executor.gpus': must be a non-empty list of device indices or ids, e.g. [0,1], not []",
        ),
    ],
    ids=["more-workers-than-devices", "no-device"],
)
def test_a_bad_device_setting_is_one_error_line_exit_2_and_no_store(run_cli, store, tmp_path, overrides, message):
    proc = run_cli("+sweep=tutorial", f"tracking_uri={store}", "executor=processes", *overrides)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"runtree: error: {message}"]
    assert not (tmp_path / "store.db").exists()


def test_the_api_refuses_more_workers_than_devices_before_the_store_exists(tmp_path):
    store = f"sqlite:///{tmp_path / 'store.db'}"
    with pytest.raises(ConfigErrors, match="key 'executor.workers'"):
        run_plan(build_plan(pipeline(store, "refused", 2)), executor=ProcessExecutor(gpus=[0], workers=2))
    assert not (tmp_path / "store.db").exists()
