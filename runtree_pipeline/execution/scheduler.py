"""Walks the plan's DAG and grows the run tree: stage run → variant runs → sub-variant runs, best results flowing up.

One scheduling loop serves every executor: each parent asks its sampler for points while the executor has free
workers, and tells it each result as it completes (Optuna's ask/tell), so `tpe` works on a pool as well as inline.
On resume the same walk runs against the previous execution's runs: a child whose content key matches a FINISHED
run is reused, one that failed or was cut off is redone in that same run, and a parent is only written to when
something below it changed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import uuid
from collections import deque
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, replace
from typing import Any

import yaml

from runtree_pipeline.tracking import tags as schema
from runtree_pipeline.errors import Interrupted, StageInputError, TrackingFailed, UnknownPipeline
from runtree_pipeline.futures import run_now
from runtree_pipeline.execution.executors import Executor, LocalExecutor
from runtree_pipeline.interrupts import ThreadPool, interruptible, received, shielded
from runtree_pipeline.execution.leaf import LeafOutcome, LeafTask, objective_value
from runtree_pipeline.plan.params import flatten, lookup, merge
from runtree_pipeline.plan.stages import Plan, StageSpec
from runtree_pipeline.reports.plots import DAG_PLOT
from runtree_pipeline.reports.progress import Progress
from runtree_pipeline.tracking.provenance import invocation_tags
from runtree_pipeline.tracking.redact import redact
from runtree_pipeline.plan.references import Reference, substitute
from runtree_pipeline.results import LeafResult, NodeResult, PipelineResult, StageResult, select_best
from runtree_pipeline.tracking.index import ExistingTree, content_key
from runtree_pipeline.plan.sweeps import Point, SweepSpec
from runtree_pipeline.execution.samplers import new_sampler
from runtree_pipeline.tracking.mlflow_store import TrackingWriter, outputs_tags

log = logging.getLogger(__name__)


class _Cancelled(Exception):
    """Raised in a driver thread that notices the pipeline was interrupted; its runs are ended KILLED."""


class _InlinePool:
    """The sequential stand-in for a thread pool: runs each call at once in the caller's thread.

    With one worker this keeps targets in the main thread, where Ctrl-C interrupts them immediately.
    """

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        return run_now(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing runs in the background."""


@dataclass
class _Slot:
    """A run the walk is filling: freshly created, redone in place, or reused as it was."""

    run: Any
    key: str
    state: str  # "new" | "redo" | "done"

    @property
    def run_id(self) -> str:
        return self.run.info.run_id


class Runner:
    def __init__(
        self,
        plan: Plan,
        *,
        writer: TrackingWriter,
        executor: Executor | None = None,
        progress: Progress | None = None,
        command: str | None = None,
        plots: bool = True,
    ) -> None:
        self.plan = plan
        self.writer = writer
        self.executor = executor or LocalExecutor()
        self.progress = progress or Progress()
        self.command = command
        self.plots = plots
        self.existing = ExistingTree()
        self.pipeline_id = str(plan.resume) if plan.resume and plan.resume != "last" else uuid.uuid4().hex[:12]
        self._results: dict[str, StageResult] = {}
        self._running: set[str] = set()
        self.cancelled = threading.Event()
        self.subtrees: Any = _InlinePool()

    def run(self) -> PipelineResult:
        """Everything from reading a previous execution to the last picture happens where a signal is handled.

        An interruption, a failed write or a bug all end the same way: driver threads and workers are stopped
        first, so nothing writes afterwards, then every run still open is ended; a second signal cannot cut that
        short.
        """
        stages: Any = _InlinePool()
        failed = False
        with interruptible():
            try:
                self._load_previous()
                self._invocation = invocation_tags(self.command)
                self.executor.start(tracking_uri=self.writer.uri)
                if self.executor.workers > 1:
                    stages = ThreadPool(len(self.plan.order), "runtree-stage")
                    self.subtrees = ThreadPool(self.executor.workers, "runtree-variant")
                self._schedule(stages)
                self.writer.flush()
                if self.plots:
                    self._draw()
            except BaseException as e:
                failed = True
                # A library interrupted mid-way may turn the KeyboardInterrupt into an error of its own.
                signum = getattr(e, "signum", signal.SIGINT) if isinstance(e, KeyboardInterrupt) else received()
                with shielded(discard=True):
                    killed = self._stop(stages, "FAILED" if signum is None else "KILLED")
                if signum is not None:
                    raise Interrupted(
                        self.pipeline_id,
                        ", ".join(sorted(self._running)) or None,
                        killed,
                        signum=signum,
                        recorded=bool(self.plan.resume) or self.writer.created_runs,
                    ) from None
                if isinstance(e, TrackingFailed):
                    raise TrackingFailed(f"{e}; redo what is missing with resume={self.pipeline_id}") from e
                raise
            finally:
                # After a success every run is ended: a signal during the shutdown is still reported, not dropped.
                with shielded(discard=failed):
                    self.executor.close()
                    self.progress.close()
                    stages.shutdown()
                    self.subtrees.shutdown()
        return PipelineResult(
            pipeline_id=self.pipeline_id,
            experiment=self.plan.experiment,
            experiment_id=self.writer.experiment_id,
            tracking_uri=self.writer.uri,
            stages={name: self._results[name] for name in self.plan.order},
        )

    def _schedule(self, pool: Any) -> None:
        """Start every stage whose dependencies have results; independent branches overlap on a parallel executor."""
        waiting = list(self.plan.order)
        running: dict[Future[StageResult], str] = {}
        while waiting or running:
            for name in [n for n in waiting if all(d in self._results for d in self.plan.stages[n].depends_on)]:
                waiting.remove(name)
                self._running.add(name)
                running[pool.submit(self._run_stage, self.plan.stages[name])] = name
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                self._results[name] = result = future.result()
                self._running.discard(name)
                self.progress.stage_finished(name, status=result.status)

    def _draw(self) -> None:
        """Pictures for the MLflow UI on every parent that changed, and the DAG on every stage run."""
        from runtree_pipeline.reports.plots import dag_plot, parent_plots

        edges = [(dep, s.name) for s in self.plan.stages.values() for dep in s.depends_on]
        status = {name: result.status for name, result in self._results.items()}
        for name, result in self._results.items():
            node = result.node
            if node is None or not node.changed or node.artifact_uri is None:
                continue
            objective = self.plan.stages[name].objective
            try:
                files: dict[str, bytes] = {DAG_PLOT: dag_plot(edges, self.plan.order, highlight=name, status=status)}
                for parent in (node, *node.children):
                    if objective.metric and parent.changed:
                        best_id = parent.best.run_id if parent.best else None
                        drawn = parent_plots(parent.leaves, metric=objective.metric, mode=objective.mode, best_run_id=best_id)
                        if parent is node:
                            files.update(drawn)
                        elif drawn and parent.artifact_uri:
                            self.writer.attach(parent.artifact_uri, drawn)
                self.writer.attach(node.artifact_uri, files)
            except Exception as e:  # noqa: BLE001 - a picture must never fail a recorded pipeline
                log.warning("could not draw plots for stage %s: %s", name, e)

    def _load_previous(self) -> None:
        """On resume, the previous execution's runs: read here, where a signal is handled like any other."""
        resume = self.plan.resume
        if not resume:
            return
        if resume == "last":
            self.pipeline_id = self.writer.latest_pipeline_id() or ""
        runs = self.writer.pipeline_runs(self.pipeline_id) if self.pipeline_id else []
        if not runs:
            raise UnknownPipeline(
                f"resume={resume}: no pipeline execution {'at all' if resume == 'last' else resume!r} "
                f"in experiment '{self.writer.experiment}'"
            )
        self.existing = ExistingTree(runs)

    def _stop(self, stages: Any, status: str) -> int:
        """Let every driver thread see the interruption and return, so nothing writes after the runs are ended."""
        self.cancelled.set()
        try:
            self.executor.close()
            stages.shutdown(wait=True, cancel_futures=True)
            self.subtrees.shutdown(wait=True, cancel_futures=True)
            with contextlib.suppress(Exception):
                self.writer.flush()
        finally:
            killed = self.writer.end_open_runs(status)
        return killed

    def _run_stage(self, stage: StageSpec) -> StageResult:
        blocked = sorted(d for d in stage.depends_on if self._results[d].status != "FINISHED")
        if blocked:
            reason = f"skipped: upstream stage(s) {', '.join(blocked)} produced no result"
            log.warning("stage %s %s", stage.name, reason)
            return StageResult(stage.name, "SKIPPED", reason=reason)
        upstream = {d: self._results[d].run_id for d in stage.depends_on}
        tags = {
            **self.plan.tags,
            **stage.tags,
            schema.PIPELINE_ID: self.pipeline_id,
            schema.STAGE: stage.name,
            schema.LEVEL: "stage",
            **{schema.UPSTREAM + d: run_id for d, run_id in upstream.items()},
        }
        own = {
            **self._invocation,
            schema.LEVELS: ",".join(level.level for level in stage.levels),
            schema.OBJECTIVE_MODE: stage.objective.mode,
        }
        if stage.objective.metric:
            own[schema.OBJECTIVE_METRIC] = stage.objective.metric
        try:
            params = substitute(dict(stage.params), self._lookup)
            levels = tuple(_resolve_points(level, self._lookup) for level in stage.levels)
        except (StageInputError, ValueError) as e:
            run = self.writer.start(name=stage.name, tags={**tags, **own})
            self.writer.finish(run, status="FAILED", tags={schema.ROOT_RUN_ID: run.info.run_id, schema.ERROR: str(e)})
            log.error("stage %s failed: %s", stage.name, e)
            return StageResult(stage.name, "FAILED", reason=str(e), upstream=upstream)

        key = content_key(stage=stage.name, target=stage.target, params=params)
        slot = self._stage_slot(stage.name, key, tags, own)
        objective = stage.objective
        self.progress.stage_started(
            stage.name, total=stage.leaf_count(), metric=objective.metric, mode=objective.mode, resumed=slot.state != "new"
        )
        stage_tags = {schema.ROOT_RUN_ID: slot.run_id, **self._invocation}
        config = {**self.plan.config, "stages": {stage.name: {**self.plan.config["stages"][stage.name], "params": params}}}
        artifacts = {schema.CONFIG_ARTIFACT: yaml.safe_dump(redact(config), sort_keys=False)}

        tree = _Tree(self, stage, root_id=slot.run_id)
        if levels:
            node = tree.parent(slot, stage.name, "stage", params, levels, tags, extra_tags=stage_tags, artifacts=artifacts)
        else:
            leaf = tree.leaf(slot, stage.name, params, extra_tags=stage_tags, artifacts=artifacts)
            best = leaf if leaf.status == "FINISHED" else None
            node = NodeResult(slot.run_id, stage.name, "stage", (leaf,), best, (), slot.state != "done", slot.run.info.artifact_uri)
        if tree.stopped_by is not None:
            reason = f"on_failure=stop: stopped after {tree.stopped_by.name} failed ({tree.stopped_by.error})"
            log.error("stage %s failed: %s", stage.name, reason)
            return StageResult(stage.name, "FAILED", node=node, reason=reason, upstream=upstream)
        if node.best is None:
            first = next((leaf.error for leaf in node.leaves if leaf.error), "no leaf had a finite objective value")
            reason = f"no successful leaf ({node.failed} of {len(node.leaves)} failed; first error: {first})"
            log.error("stage %s failed: %s", stage.name, reason)
            return StageResult(stage.name, "FAILED", node=node, reason=reason, upstream=upstream)
        return StageResult(stage.name, "FINISHED", node=node, upstream=upstream)

    def _stage_slot(self, name: str, key: str, tags: Mapping[str, Any], own: Mapping[str, Any]) -> _Slot:
        found = self.existing.stage(name, key)
        if found is None:
            slot = _Slot(self.writer.start(name=name, tags={**tags, **own, schema.KEY: key}), key, "new")
        elif found.info.status == "FINISHED":
            slot = _Slot(found, key, "done")
        else:
            self.writer.reopen(found)
            slot = _Slot(found, key, "redo")
        # Also when the current run already exists: an interruption may have come before the old one was marked.
        # A found run that was itself superseded (the inputs went back to earlier values) must not hide the others.
        if found is None or schema.SUPERSEDED_BY not in found.data.tags:
            for stale in self.existing.stale_stages(name, key):
                self.writer.annotate(stale, {schema.SUPERSEDED_BY: slot.run_id})
        return slot

    def _lookup(self, ref: Reference) -> Any:
        best = self._results[ref.stage].best
        if best is None:
            raise StageInputError(f"{ref.text}: stage '{ref.stage}' has no best run")
        if ref.kind == "run_id":
            return best.run_id
        source = {"params": best.params, "metrics": best.metrics, "outputs": best.outputs}[ref.kind]
        try:
            return lookup(source, ref.key)
        except KeyError:
            have = ", ".join(sorted(flatten(dict(source)))) or "nothing"
            raise StageInputError(
                f"{ref.text}: the best run of stage '{ref.stage}' has no {ref.kind} key '{ref.key}' (it has: {have})"
            ) from None


class _Tree:
    """Grows one stage's subtree; each parent drives its own ask/submit/tell loop."""

    def __init__(self, runner: Runner, stage: StageSpec, *, root_id: str) -> None:
        self.writer = runner.writer
        self.executor = runner.executor
        self.existing = runner.existing
        self.subtrees = runner.subtrees
        self.cancelled = runner.cancelled
        self.stage = stage
        self.root_id = root_id
        self.stopped_by: LeafResult | None = None
        self.progress = runner.progress
        self._replays = any(level.sampler == "tpe" for level in stage.levels)

    def parent(
        self,
        slot: _Slot,
        name: str,
        level: str,
        params: Mapping[str, Any],
        levels: tuple[SweepSpec, ...],
        tags: Mapping[str, Any],
        *,
        extra_tags: Mapping[str, Any] | None = None,
        artifacts: Mapping[str, str] | None = None,
    ) -> NodeResult:
        spec, below = levels[0], levels[1:]
        sampler = new_sampler(spec, direction=self.stage.objective.mode)
        if spec.sampler == "tpe" and slot.state != "new":
            sampler.replay(self.existing.points_under(slot.run_id))
        child_tags = {**tags, **spec.tags, schema.LEVEL: spec.level, schema.ROOT_RUN_ID: self.root_id}
        leaves: list[LeafResult] = []
        children: list[NodeResult] = []
        pending: dict[Future[Any], tuple[Point, _Slot, str, dict[str, Any]]] = {}
        changed = slot.state != "done"

        def reopen() -> None:
            nonlocal changed
            if not changed:
                self.writer.reopen(slot.run)
                changed = True

        ahead: deque[tuple[Point, str, dict[str, Any], Future[_Slot]]] = deque()
        depth = self.writer.prefetch if not (below or sampler.learns) else 1
        while True:
            while not self.cancelled.is_set() and self.stopped_by is None and len(pending) < self.executor.workers:
                while len(ahead) < depth and (point := sampler.ask()) is not None:
                    child_name = f"{name}/{point.name}"
                    child_params = merge(params, point.params)
                    child_key = content_key(parent=slot.key, name=point.name, params=child_params)
                    creating = self.writer.in_background(self._child_slot, slot, child_name, child_key, child_tags, point)
                    ahead.append((point, child_name, child_params, creating))
                if not ahead:
                    break
                point, child_name, child_params, creating = ahead.popleft()
                child = creating.result()
                if child.state != "done":
                    reopen()
                if below:
                    job = self.subtrees.submit(self.parent, child, child_name, spec.level, child_params, below, child_tags)
                    pending[job] = (point, child, child_name, child_params)
                elif child.state == "done":
                    leaf = self._reused(child.run, child_name, child_params)
                    leaves.append(leaf)
                    sampler.tell(point, leaf.objective)
                else:
                    pending[self._submit(child.run, child_params)] = (point, child, child_name, child_params)
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            if self.cancelled.is_set():
                raise _Cancelled
            for future in done:
                point, child, child_name, child_params = pending.pop(future)
                result = future.result()
                if isinstance(result, NodeResult):
                    if result.changed:
                        reopen()
                    children.append(result)
                    leaves.extend(result.leaves)
                    sampler.tell(point, result.best.objective if result.best else None)
                else:
                    leaf = self._record(child, child_name, child_params, result)
                    leaves.append(leaf)
                    sampler.tell(point, leaf.objective)

        for _, child_name, _, creating in ahead:
            child = creating.result()
            if child.state != "done":
                self.writer.finish(child.run, status="KILLED", tags={schema.ERROR: "not run: the stage stopped first"})
        best = select_best(leaves, mode=self.stage.objective.mode)
        if changed or slot.run.info.status != "FINISHED":
            self._finish_parent(slot, params, leaves, children, best, below, extra_tags, artifacts)
            changed = True
        return NodeResult(
            slot.run_id, name, level, tuple(leaves), best, tuple(children), changed, slot.run.info.artifact_uri
        )

    def _finish_parent(self, slot, params, leaves, children, best, below, extra_tags, artifacts) -> None:
        self.writer.flush()
        failed_leaves = sum(leaf.status != "FINISHED" for leaf in leaves)
        failed_children = sum(node.best is None for node in children) if below else failed_leaves
        tags: dict[str, Any] = {
            **(extra_tags or {}),
            schema.CHILDREN: len(children) if below else len(leaves),
            schema.FAILED_CHILDREN: failed_children,
            schema.FAILED_LEAVES: failed_leaves,
        }
        metrics: dict[str, float] = {}
        clear: tuple[str, ...] = ()
        if best is not None:
            tags[schema.BEST_RUN_ID] = best.run_id
            tags.update({schema.BEST_PARAM + k: v for k, v in flatten(dict(best.params)).items()})
            metrics = {schema.BEST_METRIC + k: v for k, v in best.metrics.items()}
            clear = (schema.ERROR,) if slot.state != "new" else ()
        else:
            tags[schema.ERROR] = f"no successful leaf among {len(leaves)}"
        if self.stopped_by is not None and slot.run_id == self.root_id:
            tags[schema.ERROR] = f"stopped after {self.stopped_by.name} failed (on_failure=stop)"
            clear = ()
        self.writer.finish(
            slot.run,
            status="FINISHED" if best is not None else "FAILED",
            params=flatten(dict(params)),
            metrics=metrics,
            tags=tags,
            artifacts=artifacts,
            clear_tags=clear,
        )

    def _child_slot(self, parent: _Slot, name: str, key: str, tags: Mapping[str, Any], point: Point) -> _Slot:
        found = self.existing.child(parent.run_id, key) if parent.state != "new" else None
        if found is None:
            own = {schema.KEY: key}
            if self._replays:
                own[schema.POINT] = json.dumps(point.params, sort_keys=True, default=str)
            run = self.writer.start(name=name, tags={**tags, **own}, parent_id=parent.run_id)
            return _Slot(run, key, "new")
        if found.info.status == "FINISHED":
            return _Slot(found, key, "done")
        self.writer.reopen(found)
        return _Slot(found, key, "redo")

    def leaf(
        self,
        slot: _Slot,
        name: str,
        params: Mapping[str, Any],
        *,
        extra_tags: Mapping[str, Any] | None = None,
        artifacts: Mapping[str, str] | None = None,
    ) -> LeafResult:
        """A stage without sweeps: its own run is the leaf."""
        if slot.state == "done":
            return self._reused(slot.run, name, params)
        outcome = self._submit(slot.run, params, require_objective=False).result()
        if self.cancelled.is_set():
            raise _Cancelled
        return self._record(slot, name, params, outcome, extra_tags=extra_tags, artifacts=artifacts)

    def _submit(self, run: Any, params: Mapping[str, Any], *, require_objective: bool = True) -> Future[LeafOutcome]:
        task = LeafTask(
            target=self.stage.target,
            kwargs=params,
            run=run,
            tracking_uri=self.writer.uri,
            objective=self.stage.objective.metric if require_objective else None,
        )
        return self.executor.submit(task)

    def _reused(self, run: Any, name: str, params: Mapping[str, Any]) -> LeafResult:
        returned = json.loads(run.data.tags.get(schema.RETURNED, "[]"))
        metrics = {k: run.data.metrics[k] for k in returned if k in run.data.metrics}
        outcome = LeafOutcome(metrics=metrics, outputs=self.writer.outputs_of(run))
        objective = objective_value(outcome, self.stage.objective.metric)
        self.progress.leaf_done(self.stage.name, objective=objective, failed=False, origin="reused")
        return LeafResult(
            run_id=run.info.run_id,
            name=name,
            params=params,
            metrics=metrics,
            outputs=outcome.outputs,
            status="FINISHED",
            objective=objective,
            origin="reused",
        )

    def _record(
        self,
        slot: _Slot,
        name: str,
        params: Mapping[str, Any],
        outcome: LeafOutcome,
        *,
        extra_tags: Mapping[str, Any] | None = None,
        artifacts: Mapping[str, str] | None = None,
    ) -> LeafResult:
        tags = {**(extra_tags or {}), schema.RETURNED: json.dumps(sorted(outcome.metrics)), **outputs_tags(outcome.outputs)}
        files = dict(artifacts or {})
        if outcome.outputs:
            files[schema.OUTPUTS_ARTIFACT] = json.dumps(redact(dict(outcome.outputs)), indent=2, sort_keys=True)
        if outcome.error:
            tags[schema.ERROR] = outcome.error
            if outcome.traceback:
                files[schema.TRACEBACK_ARTIFACT] = outcome.traceback
            log.warning("run %s failed: %s", name, outcome.error)
        status = "FINISHED" if outcome.ok else "FAILED"
        self.writer.finish(
            slot.run,
            status=status,
            params=flatten(dict(params)),
            metrics=outcome.metrics,
            tags=tags,
            artifacts=files,
            clear_tags=(schema.ERROR,) if outcome.ok and slot.state == "redo" else (),
        )
        leaf = LeafResult(
            run_id=slot.run_id,
            name=name,
            params=params,
            metrics=outcome.metrics,
            outputs=outcome.outputs,
            status=status,
            error=outcome.error,
            objective=objective_value(outcome, self.stage.objective.metric),
            origin="redone" if slot.state == "redo" else "executed",
        )
        self.progress.leaf_done(self.stage.name, objective=leaf.objective, failed=not outcome.ok, origin=leaf.origin)
        if outcome.error and self.stage.on_failure == "stop" and self.stopped_by is None:
            self.stopped_by = leaf
        return leaf


def _resolve_points(level: SweepSpec, lookup_fn: Any) -> SweepSpec:
    """Explicit points may hold `${best:...}` too; resolve them once the upstream results exist."""
    if not level.points:
        return level
    points = tuple(replace(p, params=substitute(dict(p.params), lookup_fn)) for p in level.points)
    return replace(level, points=points)
