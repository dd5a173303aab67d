"""Where leaves run. An executor only runs leaf tasks; scheduling, ask/tell and tracking stay in the scheduler.

The interface is small (start, submit a task and get a future of its outcome, close) so that a process pool or a
Ray cluster is one short class each, and every executor passes the same tests. Workers only compute: the driver
creates and ends every run, and a worker writes only what the target itself logs to its already-created leaf run.
A worker that dies takes down its own leaf only, which becomes a FAILED run.

One module per executor, so each reads on its own; the names are re-exported here because configs name them by
this path (`_target_: runtree_pipeline.execution.executors.ProcessExecutor`). None of these modules imports pebble,
Ray, submitit or MLflow at import time: a dry run and `runtree --help` stay fast.
"""

from runtree_pipeline.execution.executors.base import STOPPED, Executor
from runtree_pipeline.execution.executors.forkserver import WORKER_MODULES, default_start_method
from runtree_pipeline.execution.executors.local import LocalExecutor
from runtree_pipeline.execution.executors.processes import ProcessExecutor
from runtree_pipeline.execution.executors.ray import RayExecutor
from runtree_pipeline.execution.executors.slurm import SlurmExecutor

__all__ = [
    "STOPPED",
    "WORKER_MODULES",
    "Executor",
    "LocalExecutor",
    "ProcessExecutor",
    "RayExecutor",
    "SlurmExecutor",
    "default_start_method",
]
