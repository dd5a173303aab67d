"""Pictures drawn in a helper process while the tree is still being recorded.

Importing matplotlib and drawing two PNGs per parent used to happen after the last run, on the driver's critical
path (about a second per 40 parents, plus half a second of imports). One spawned process draws each parent's
pictures as soon as the parent closes, on a core the driver does not use; the driver only stores what comes back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from runtree_pipeline.interrupts import sigint_blocked
from runtree_pipeline.plan.objective import Objective
from runtree_pipeline.results import NodeResult

log = logging.getLogger(__name__)


class Painter:
    """Draws off the critical path; a picture that fails, or a painter that dies, costs a warning, never a run."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._pending: list[tuple[NodeResult, Future[dict[str, bytes]]]] = []

    def start(self) -> None:
        """Start the process and import matplotlib there now, while the driver still has runs to record."""
        if self._pool is None:
            self._submit(None, _warm)

    def parent(self, node: NodeResult, objective: Objective) -> None:
        """The children of a parent that just closed, against their params (sent without their metrics and outputs:
        the pictures need params and objective values only)."""
        if not objective.metric or not node.changed or node.artifact_uri is None:
            return
        from runtree_pipeline.reports.plots import parent_plots

        leaves = [dataclasses.replace(leaf, metrics={}, outputs={}, error=None) for leaf in node.leaves]
        best = node.best.run_id if node.best else None
        self._submit(node, parent_plots, leaves, objective=objective, best_run_id=best)

    def dag(self, node: NodeResult, edges: Sequence[tuple[str, str]], nodes: Sequence[str], **kw: Any) -> None:
        """The stage DAG with this stage highlighted; a one-stage pipeline has no DAG worth a picture."""
        if len(nodes) < 2 or not node.changed or node.artifact_uri is None:
            return
        from runtree_pipeline.reports.plots import dag_files

        self._submit(node, dag_files, edges, nodes, **kw)

    def pictures(self) -> Iterator[tuple[NodeResult, dict[str, bytes]]]:
        """Each node with everything drawn for it, once all of it is drawn."""
        drawn: dict[str, tuple[NodeResult, dict[str, bytes]]] = {}
        for node, future in self._pending:
            try:
                files = future.result()
            except Exception as e:  # noqa: BLE001 - a picture must never fail a recorded pipeline
                log.warning("could not draw plots for %s: %s", node.name, e)
                continue
            if files:
                drawn.setdefault(node.run_id, (node, {}))[1].update(files)
        self._pending.clear()
        yield from drawn.values()

    def close(self) -> None:
        """Stop drawing at once: after an interrupt nobody waits for pictures."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            with contextlib.suppress(Exception):
                process.terminate()
                process.join(5)

    def _submit(self, node: NodeResult | None, draw: Any, *args: Any, **kwargs: Any) -> None:
        if self._pool is None:
            # The process starts at the first submit, with Ctrl-C blocked as for the leaf workers: a terminal's
            # Ctrl-C reaches the whole group, and the driver alone decides what an interrupt does.
            with sigint_blocked():
                self._pool = ProcessPoolExecutor(
                    1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_orphan_exits,
                    initargs=(os.getpid(),),
                )
                future = self._pool.submit(draw, *args, **kwargs)
        else:
            future = self._pool.submit(draw, *args, **kwargs)
        if node is not None:
            self._pending.append((node, future))


def _orphan_exits(driver: int) -> None:
    """A driver killed outright (`kill -9`) cannot stop its painter, and the painter would wait for work forever,
    holding the driver's stdout and stderr open: it leaves on its own once its parent is gone."""

    def watch() -> None:
        while os.getppid() == driver:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="runtree-orphan-watch", daemon=True).start()


def _warm() -> None:
    from runtree_pipeline.reports.plots import _pyplot

    _pyplot()
