"""A program leaf (`command:`) run as a Ray task: started by the Ray worker, its params, result and output reach the
leaf run as they do on the local and process executors. One test: a Ray runtime takes seconds to start."""

from __future__ import annotations

import os
from pathlib import Path

from runtree_pipeline import build_plan, run_plan
from runtree_pipeline.execution.executors import RayExecutor
from tests.conftest import all_runs
from tests.execution.test_executors import ray_runtime  # noqa: F401 - the fixture, for this module's own runtime

SCRIPT = (
    'x=$(echo "$1" | cut -d= -f2); echo "training x=$x"; echo "warned" >&2; '
    'printf \'{"loss": %s, "parent": "%s"}\' "$x" "$PPID" > "$RUNTREE_RESULT"'
)


def program_config(store: str, experiment: str) -> dict:
    """Two leaves, each a shell program that prints, warns and writes its result: run by another executor's worker."""
    return {
        "tracking_uri": store,
        "experiment": experiment,
        "objective": {"metric": "loss"},
        "stages": {
            "fit": {
                "command": ["sh", "-c", SCRIPT, "train"],
                "command_args": "flags",
                "subvariants": {"params": {"x": "choice(5, 3)"}},
            }
        },
    }


def test_a_program_runs_as_a_ray_task_and_its_result_and_output_land_on_its_leaf(ray_runtime, store, client, tmp_path):  # noqa: F811
    config = program_config(store, "ray_command")
    result = run_plan(
        build_plan(config),
        executor=RayExecutor(address="local", workers=2),
        plots=False,
        output_dir=str(tmp_path / "out"),
    )

    assert result.stages["fit"].status == "FINISHED"
    assert result.stages["fit"].best.params == {"x": 3}
    leaves = {leaf.params["x"]: leaf for leaf in result.stages["fit"].node.leaves}
    assert {x: leaf.metrics["loss"] for x, leaf in leaves.items()} == {5: 5, 3: 3}
    assert all(leaf.outputs["parent"] != str(os.getpid()) for leaf in leaves.values()), "started by a Ray worker"
    runs = [r for r in all_runs(client, "ray_command") if r.data.tags["runtree.level"] == "subvariant"]
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        x = run.data.params["x"]
        assert run.data.metrics["loss"] == float(x)
        logs = Path(client.download_artifacts(run.info.run_id, "logs"))
        assert (logs / "stdout.txt").read_text() == f"training x={x}\n"
        assert (logs / "stderr.txt").read_text() == "warned\n"
