"""Runs a plan as one loop over a flat set of open parents, and grows the run tree as leaves finish.

Every stage in progress, every variant and the stage itself, is an open parent with its own sampler (Optuna's
ask/tell): the loop asks the newest open parent for its next point whenever a worker is free, so a tree is filled
depth first and independent stages overlap. A parent is recorded, and tells its own parent, once its sampler is
exhausted and its last child has ended. On resume the same walk runs against the previous execution's runs: a child
whose content key matches a FINISHED run is reused, one that failed or was cut off is redone in that same run, and
a parent is only written to when something below it changed.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from runtree_pipeline.errors import Interrupted, StageInputError, TrackingFailed
from runtree_pipeline.execution.executors import Executor, LocalExecutor
from runtree_pipeline.execution.identity import RunIdentity
from runtree_pipeline.execution.leaf import LeafOutcome, LeafTask
from runtree_pipeline.execution.painter import Painter
from runtree_pipeline.execution.reporting import ReportDesk
from runtree_pipeline.execution.samplers import Sampler, new_sampler, study_seed
from runtree_pipeline.execution.tree import (
    LeafJob,
    OpenParent,
    Slot,
    StageRun,
    aggregated,
    cached_write,
    leaf_result,
    leaf_write,
    no_result,
    parent_write,
    reused_result,
    telling,
)
from runtree_pipeline.futures import run_now
from runtree_pipeline.interrupts import interruptible, pending, received, shielded
from runtree_pipeline.plan.params import flatten, lookup
from runtree_pipeline.plan.references import Reference, substitute
from runtree_pipeline.plan.stages import Plan, StageSpec
from runtree_pipeline.plan.sweeps import Point, SweepSpec
from runtree_pipeline.reports.progress import Progress
from runtree_pipeline.results import LeafResult, NodeResult, PipelineResult, StageResult
from runtree_pipeline.states import Level, Origin, Status
from runtree_pipeline.tracking import tags as schema
from runtree_pipeline.tracking.heartbeat import DRIVER, HEARTBEAT, Heartbeat, this_driver
from runtree_pipeline.tracking.provenance import (
    ENVIRONMENT,
    GIT_DIRTY,
    environment_digest,
    environment_files,
    invocation_tags,
    resumed_files,
)
from runtree_pipeline.tracking.records import RunRecord, RunRef, Write
from runtree_pipeline.tracking.redact import redact
from runtree_pipeline.tracking.store import RunStore

log = logging.getLogger(__name__)


AHEAD_SECONDS = 0.1
WARM_WIDTHS = 4
"""The painter warms up at most this many layouts (the widest): each costs it 0.3-0.4 s before its first parent."""
WIDEST_WARM = 12
"""Wider layouts are not warmed: drawing one costs seconds, far more than a layout's first figure saves."""


class Runner:
    """One execution of a plan against a store, on an executor; `run()` is the only entry point."""

    def __init__(
        self,
        plan: Plan,
        *,
        store: RunStore,
        executor: Executor | None = None,
        progress: Progress | None = None,
        command: str | None = None,
        plots: bool = True,
        output_dir: str | None = None,
        painter: Painter | None = None,
    ) -> None:
        """`painter`: one already started (see `run_plan`); otherwise the runner makes its own when `plots`."""
        self.plan = plan
        self.output_dir = output_dir
        self.store = store
        self.executor = executor or LocalExecutor()
        self.progress = progress or Progress()
        self.command = command
        self.plots = plots
        self._painter = painter if painter is not None else new_painter(plan) if plots else None
        self.identity = RunIdentity(plan, store)
        self._invocation: dict[str, str] = {}
        self._driver = this_driver()
        self._stage_refs: list[RunRef] = []
        self._heartbeat: Heartbeat | None = None
        self._environment: dict[str, str | bytes] = {}
        self._began = time.time()
        self._results: dict[str, StageResult] = {}
        self._started: set[str] = set()
        self._open: list[OpenParent] = []
        self._position = {name: i for i, name in enumerate(plan.order)}
        self._solo: deque[LeafJob] = deque()
        self._running: dict[Future[LeafOutcome], LeafJob] = {}
        self._desk: ReportDesk | None = None
        self._reporting: dict[str, tuple[Sampler, Point]] = {}

    @property
    def pipeline_id(self) -> str:
        """The execution's id, known from the start except on `resume=last`: then once the previous runs are read."""
        return self.identity.pipeline_id

    def run(self) -> PipelineResult:
        """Everything from reading a previous execution to the last picture happens where a signal is handled.

        An interruption, a failed write or a bug all end the same way: the workers are stopped first, so nothing
        writes afterwards, then every run still open is ended; a second signal cannot cut that short.
        """
        failed = False
        with interruptible():
            try:
                self.identity.load_previous()
                self._heartbeat = Heartbeat(self.store.uri, lambda: self._stage_refs).start()
                self._invocation = invocation_tags(self.command)
                self._environment = environment_files(self._invocation.get(GIT_DIRTY) == "true")
                if self._environment:
                    self._invocation[ENVIRONMENT] = environment_digest(self._environment)
                self.executor.preempt_grace_s = self.plan.preempt_grace_s
                self.executor.start(tracking_uri=self.store.uri)
                if self._painter is not None:
                    self._painter.start()
                if _prunes(self.plan):
                    self._desk = ReportDesk(self._should_prune, host=self.executor.report_host)
                self._loop()
                self.store.flush()
                self._draw()
            except BaseException as e:
                failed = True
                # A library interrupted mid-way may turn the KeyboardInterrupt into an error of its own.
                signum = getattr(e, "signum", signal.SIGINT) if isinstance(e, KeyboardInterrupt) else received()
                with shielded(discard=True):
                    if signum == signal.SIGTERM:
                        self._preempt()
                    killed = self._stop(Status.FAILED if signum is None else Status.KILLED)
                if signum is not None:
                    raise Interrupted(
                        self.pipeline_id,
                        ", ".join(sorted(self._started - set(self._results))) or None,
                        killed,
                        signum=signum,
                        recorded=bool(self.plan.resume) or self.store.created_runs,
                    ) from None
                if isinstance(e, TrackingFailed):
                    raise TrackingFailed(e.detail, pipeline_id=self.pipeline_id) from e
                raise
            finally:
                # After a success every run is ended: a signal during the shutdown is still reported, not dropped.
                with shielded(discard=failed), contextlib.ExitStack() as closing:
                    closing.callback(self.progress.close)
                    if self._painter is not None:
                        closing.callback(self._painter.close)
                    if self._desk is not None:
                        closing.callback(self._desk.close)
                    if self._heartbeat is not None:
                        closing.callback(self._heartbeat.stop)  # after the runs ended: the driver says it ended
                    self.executor.close()
        return PipelineResult(
            pipeline_id=self.pipeline_id,
            experiment=self.plan.experiment,
            experiment_id=self.store.experiment_id,
            tracking_uri=self.store.uri,
            stages={name: self._results[name] for name in self.plan.order},
        )

    # ---- the loop ----------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        """Start what can start, fill the free workers, wait for one leaf, record it; until every stage ended."""
        while len(self._results) < len(self.plan.order):
            before = (len(self._started), len(self._results))
            self._start_ready_stages()
            while len(self._running) < self.executor.workers and (leaf := self._next_leaf()) is not None:
                self._submit(leaf)
            if not self._running:
                if (len(self._started), len(self._results)) == before:
                    raise RuntimeError(f"scheduler stalled with stages {sorted(self._started - set(self._results))}")
                continue
            done, _ = wait(self._running, return_when=FIRST_COMPLETED)
            for future in done:
                leaf = self._running.pop(future)
                slot, outcome = leaf.slot.result(), future.result()
                if outcome.ended_at is not None and leaf.submitted_at is not None:
                    leaf.stage.leaf_seconds = outcome.ended_at - leaf.submitted_at
                if self._retried(leaf, slot, outcome):
                    continue
                self._reporting.pop(slot.ref.run_id, None)
                if outcome.error:
                    log.warning("run %s failed: %s", leaf.name, outcome.error)
                self.store.finish(slot.ref, leaf_write(leaf, slot, outcome))
                self._leaf_ended(leaf, leaf_result(leaf, slot, outcome))

    def _next_leaf(self) -> LeafJob | None:
        """The next leaf to run: a stage that is one run, else the next point of the earliest stage in plan order,
        from its newest open parent (depth first, so parents complete and report early)."""
        if self._solo:
            return self._solo.popleft()
        for parent in sorted(reversed(self._open), key=lambda p: self._position[p.stage.spec.name]):
            if parent.done:
                self._close_parent(parent)
                return self._next_leaf()
            if parent.stage.stopped_by is not None:
                continue
            if parent.ahead:
                leaf = parent.ahead.popleft()
                self._create_ahead(parent)
                return leaf
            point = self._ask(parent)
            if point is None:
                if parent.done:  # a time budget is found spent only when asked, maybe with no child open
                    self._close_parent(parent)
                    return self._next_leaf()
                continue
            below = _below(parent, point)
            if below:
                self._open_parent(parent, point, below)
                return self._next_leaf()
            leaf = self._new_leaf(parent, point)
            self._create_ahead(parent)
            return leaf
        return None

    def _submit(self, leaf: LeafJob) -> None:
        slot = leaf.slot.result()
        if slot.origin is Origin.REUSED:
            assert slot.record is not None
            result = reused_result(leaf, slot.record, self.store.outputs_of(slot.record))
            if slot.cached:
                if leaf.parent is not None:
                    self._reopen(leaf.parent)
                origin = schema.computed_by(slot.record.tags, slot.record.run_id)
                result = replace(result, run_id=slot.ref.run_id, cached_from=origin)
                self.store.finish(slot.ref, cached_write(leaf, slot, result))
            self._leaf_ended(leaf, result, reported=schema.reported_of(slot.record.tags))
            return
        if leaf.parent is not None:
            self._reopen(leaf.parent)
        leaf.submitted_at = now = time.time()
        stage = leaf.stage
        if stage.last_submit is not None:
            stage.submit_interval = now - stage.last_submit
        stage.last_submit = now
        metric = leaf.stage.spec.objective.metric
        desk = None
        if leaf.parent is not None and leaf.point is not None and leaf.parent.sampler.prunes and self._desk and metric:
            desk = self._desk.desk(metric)
            self._reporting[slot.ref.run_id] = (leaf.parent.sampler, leaf.point)
        task = LeafTask(
            target=leaf.stage.spec.target,
            leaf_dir=self._leaf_dir(leaf, slot.ref) if leaf.stage.spec.target.runs_as_process else None,
            kwargs=leaf.params,
            run=slot.ref,
            objectives=leaf.stage.spec.objective.metrics if leaf.parent is not None else (),
            desk=desk,
            timeout_s=leaf.stage.spec.limits.timeout_s,
            keep_checkpoints=leaf.stage.spec.limits.keep_checkpoints,
            system_metrics_s=self.plan.system_metrics_s,
            fetch=tuple(k for k, v in flatten(leaf.params).items() if isinstance(v, str) and v in stage.artifact_uris),
        )
        self._running[self.executor.submit(task)] = leaf

    def _leaf_dir(self, leaf: LeafJob, ref: RunRef) -> str:
        """A program's directory of its own, under the pipeline's output directory: readable by the leaf's name,
        unique by its run."""
        root = Path(self.output_dir) if self.output_dir else Path.cwd() / ".runtree" / "outputs" / self.pipeline_id
        stage = leaf.stage.spec.name
        name = re.sub(r"[^\w.=,+-]+", "_", leaf.name.removeprefix(f"{stage}/")).strip("_") or stage
        return str(root / "leaves" / stage / f"{name}-{ref.run_id[:8]}")

    def _retried(self, leaf: LeafJob, slot: Slot, outcome: LeafOutcome) -> bool:
        """`limits.retries`: a leaf that failed (raised, lost its worker, timed out) runs again in the same run, its
        failure kept as an artifact of that run; a pruned leaf is a decision, never retried."""
        leaf.attempts += 1
        retries = leaf.stage.spec.limits.retries
        if outcome.error is None or leaf.attempts > retries or leaf.stage.stopped_by is not None:
            return False
        log.warning(
            "run %s failed (attempt %d of %d), trying again: %s", leaf.name, leaf.attempts, 1 + retries, outcome.error
        )
        text = outcome.traceback or outcome.error
        self.store.attach(slot.ref, {f"attempts/{leaf.attempts}/{schema.TRACEBACK_ARTIFACT}": text})
        if leaf.parent is not None and leaf.point is not None:
            leaf.parent.sampler.retrying(leaf.point)
        self._submit(leaf)
        return True

    def _should_prune(self, run_id: str, step: int, value: float) -> bool:
        """Asked on the report desk's threads: a run that already ended, or is not a pruned level's, goes on."""
        entry = self._reporting.get(run_id)
        return entry is not None and entry[0].should_prune(entry[1], step, value)

    def _leaf_ended(self, leaf: LeafJob, result: LeafResult, *, reported: Mapping[int, float] | None = None) -> None:
        stage = leaf.stage
        self.progress.leaf_done(
            stage.spec.name,
            objective=result.objective if result.feasible and not stage.spec.aggregates else None,
            failed=result.failed,
            origin=result.origin,
            pruned=result.pruned,
        )
        if result.error and stage.spec.on_failure == "stop" and stage.stopped_by is None:
            stage.stopped_by = result
            self._drop_ahead(stage)
        parent = leaf.parent
        if parent is None:
            best = result if result.status == Status.FINISHED else None
            node = NodeResult(
                stage.slot.ref.run_id,
                stage.spec.name,
                Level.STAGE,
                (result,),
                best,
                (),
                stage.slot.origin is not Origin.REUSED or stage.slot.cached,
                stage.slot.ref.artifact_uri,
            )
            self._stage_ended(stage, node)
            return
        parent.leaves.append(result)
        parent.candidates.append(result)
        parent.replicates.append(result)
        objective = stage.spec.objective
        how = telling(objective, result.values, result.metrics, pruned=result.pruned, reported=reported)
        parent.sampler.tell(leaf.point, how)
        parent.open_children -= 1
        if parent.done:
            self._close_parent(parent)

    # ---- stages ------------------------------------------------------------------------------------------------

    def _start_ready_stages(self) -> None:
        for name in self.plan.order:
            stage = self.plan.stages[name]
            if name in self._started or not all(d in self._results for d in stage.depends_on):
                continue
            self._started.add(name)
            result = self._start_stage(stage)
            if result is not None:
                self._finish_stage(result)

    def _start_stage(self, spec: StageSpec) -> StageResult | None:
        blocked = sorted(d for d in spec.depends_on if self._results[d].status != Status.FINISHED)
        if blocked:
            reason = f"skipped: upstream stage(s) {', '.join(blocked)} produced no result"
            log.warning("stage %s %s", spec.name, reason)
            return StageResult(spec.name, Status.SKIPPED, reason=reason)
        upstream = {d: self._results[d].run_id for d in spec.depends_on}
        shared, own = schema.stage_tags(
            pipeline_id=self.pipeline_id,
            stage=spec.name,
            upstream=upstream,
            levels=[level.level for level in spec.levels],
            objective=spec.objective,
            order_dependent=spec.order_dependent(workers=self.executor.workers),
        )
        tags = {**self.plan.tags, **spec.tags, **shared}
        own = {**self._invocation, **own}
        uris: set[str] = set()

        def lookup(ref: Reference) -> Any:
            value = self._lookup(ref)
            if ref.kind == "artifacts":
                uris.add(value)
            return value

        try:
            params = substitute(dict(spec.params), lookup)
            levels = tuple(_resolve_points(level, lookup) for level in spec.levels)
        except StageInputError as e:
            ref = self.store.create(name=spec.name, tags={**tags, **own})
            self._record_environment(ref, None)
            self.store.finish(ref, Write(Status.FAILED, tags={schema.ROOT_RUN_ID: ref.run_id, schema.ERROR: str(e)}))
            log.error("stage %s failed: %s", spec.name, e)
            return StageResult(spec.name, Status.FAILED, reason=str(e), upstream=upstream)

        code = spec.target.code() if self.plan.cache.code else None
        if code is not None:
            own[schema.CODE] = code
        key = self.identity.stage_key(spec, params, code)
        driver = {DRIVER: self._driver.tag(), HEARTBEAT: str(int(time.time() * 1000))}
        slot = self.identity.stage_slot(spec, key, tags, {**own, **driver, **_seed_tag(levels, spec.name)})
        if slot.origin is Origin.REDONE:
            self.store.annotate(slot.ref, driver)
        if slot.created or slot.origin is Origin.REDONE:  # a stage taken as it was is not this driver's to hold
            self._stage_refs.append(slot.ref)
        if slot.created or slot.origin is Origin.REDONE:  # a reused one gets them if something runs in it again
            self._record_environment(slot.ref, None if slot.created else slot.record)
        self.progress.stage_started(
            spec.name,
            total=spec.leaf_count(),
            objective=spec.objective,
            resumed=slot.origin is not Origin.EXECUTED,
            aggregate=next((level.aggregate for level in spec.all_levels if level.aggregate), None),
        )
        config = {
            **self.plan.config,
            "stages": {spec.name: {**self.plan.config["stages"][spec.name], "params": params}},
        }
        stage = StageRun(
            spec,
            slot,
            upstream,
            own_tags={schema.ROOT_RUN_ID: slot.ref.run_id, **self._invocation},
            artifacts={schema.CONFIG_ARTIFACT: yaml.safe_dump(redact(config), sort_keys=False)},
            artifact_uris=frozenset(uris),
        )
        if levels:
            self._open.append(self._parent(stage, None, None, slot, spec.name, Level.STAGE, params, levels, tags))
        else:
            self._solo.append(LeafJob(stage, None, None, spec.name, params, run_now(lambda: slot)))
        return None

    def _stage_ended(self, stage: StageRun, node: NodeResult) -> None:
        name, upstream = stage.spec.name, stage.upstream
        if stage.stopped_by is not None:
            reason = f"on_failure=stop: stopped after {stage.stopped_by.name} failed ({stage.stopped_by.error})"
            result = StageResult(name, Status.FAILED, node=node, reason=reason, upstream=upstream)
        elif node.best is None:
            first = next((leaf.error for leaf in node.leaves if leaf.error), None)
            objective = stage.spec.objective
            if first is None:
                first = no_result(objective, node.candidates) if objective.constraints else None
            first = first or "no leaf had a finite objective value"
            reason = f"no successful leaf ({node.failed} of {len(node.leaves)} failed; first error: {first})"
            result = StageResult(name, Status.FAILED, node=node, reason=reason, upstream=upstream)
        else:
            result = StageResult(name, Status.FINISHED, node=node, upstream=upstream)
            if stage.spec.register is not None and not _registered_before(stage.slot):
                result = self._register(stage.spec, result)
        if result.reason:
            log.error("stage %s failed: %s", name, result.reason)
        self._finish_stage(result)

    def _register(self, spec: StageSpec, result: StageResult) -> StageResult:
        """`register:` the model the stage's best leaf logged becomes a version of a registered model. A best leaf
        that logged none fails the stage (its runs stay as they are), so the pipeline exits non-zero naming it."""
        from runtree_pipeline.tracking.registry import NoModelToRegister, register_best

        assert result.node is not None and result.best is not None and spec.register is not None
        ref = self._ref(result.node)
        try:
            tags = register_best(
                tracking_uri=self.store.uri,
                register=spec.register,
                stage=spec.name,
                pipeline_id=self.pipeline_id,
                stage_run_id=ref.run_id,
                best_run_id=result.best.closest or result.best.cached_from or result.best.run_id,
                objective_metric=spec.objective.metric,
                objective_mode=spec.objective.mode,
                objective_value=result.best.objective,
            )
        except NoModelToRegister as e:
            self.store.annotate(ref, {schema.REGISTERED: str(e)})
            return replace(result, status=Status.FAILED, reason=str(e))
        self.store.annotate(ref, tags)
        return result

    def _finish_stage(self, result: StageResult) -> None:
        self._results[result.name] = result
        self.progress.stage_finished(result.name, status=result.status)

    def _lookup(self, ref: Reference) -> Any:
        best = self._results[ref.stage].best
        if best is None:
            raise StageInputError(f"{ref.text}: stage '{ref.stage}' has no best run")
        if ref.kind == "run_id":
            return best.cached_from or best.run_id  # the run that computed it: its model and files are there
        if ref.kind == "artifacts":
            if ref.key in best.artifacts:
                return best.outputs[ref.key]
            have = ", ".join(sorted(best.artifacts)) or "none: it returned no path"
            raise StageInputError(
                f"{ref.text}: the best run of stage '{ref.stage}' has no artifact '{ref.key}' (it has: {have})"
            )
        source = {"params": best.params, "metrics": best.metrics, "outputs": best.outputs}[ref.kind]
        try:
            return lookup(source, ref.key)
        except KeyError:
            have = ", ".join(sorted(flatten(dict(source)))) or "nothing"
            raise StageInputError(
                f"{ref.text}: the best run of stage '{ref.stage}' has no {ref.kind} key '{ref.key}' (it has: {have})"
            ) from None

    # ---- parents -----------------------------------------------------------------------------------------------

    def _parent(
        self,
        stage: StageRun,
        up: OpenParent | None,
        point: Point | None,
        slot: Slot,
        name: str,
        level: str,
        params: dict[str, Any],
        levels: tuple[SweepSpec, ...],
        tags: Mapping[str, Any],
    ) -> OpenParent:
        spec = levels[0]
        seed = _parent_seed(spec, name, slot.record)
        sampler = new_sampler(spec if seed is None else replace(spec, seed=seed), objective=stage.spec.objective)
        if sampler.learns and slot.origin is not Origin.EXECUTED:
            sampler.replay(self.identity.points_under(slot.ref.run_id))
        child_tags = {**tags, **spec.tags, schema.LEVEL: spec.level, schema.ROOT_RUN_ID: stage.slot.ref.run_id}
        changed = slot.origin is not Origin.REUSED
        parent = OpenParent(stage, up, point, slot, name, level, params, levels, child_tags, sampler, changed)
        if seed is not None:
            parent.own_tags = schema.seed_tag(seed)
        if slot.record is not None and spec.time_budget_s is not None:
            parent.draw_limit = schema.points_drawn(slot.record.tags)
        return parent

    def _open_parent(self, parent: OpenParent, point: Point, below: tuple[SweepSpec, ...]) -> None:
        name, params, key = self.identity.child_identity(parent, point)
        slot = self.identity.child_slot(parent, name, key, point, own=_seed_tag(below, name)).result()
        child = self._parent(
            parent.stage,
            parent,
            point,
            slot,
            name,
            parent.levels[0].level,
            params,
            below,
            parent.child_tags,
        )
        if child.changed:
            self._reopen(parent)
        self._open.append(child)

    def _close_parent(self, parent: OpenParent) -> None:
        """Record a parent whose children have all ended, then tell its own parent (or end its stage)."""
        self._open.remove(parent)
        objective = parent.stage.spec.objective
        how = parent.levels[0].aggregate
        if how:
            result = aggregated(objective, parent, how)
            candidates = parent.replicates
            best = result if result is not None and objective.eligible([result]) else None
            passed_up = [result] if result is not None else []
            front: list[LeafResult] = []
            self.progress.aggregated(parent.stage.spec.name, objective=result.objective if best else None)
        else:
            candidates = parent.candidates
            best = result = objective.select_one(candidates)
            passed_up = candidates
            front = objective.front(candidates) if objective.multi else []
        up_told = telling(objective, result.values if result else None, result.metrics if result else {})
        if parent.changed or parent.slot.record is None or parent.slot.record.status != Status.FINISHED:
            self.store.flush()
            self.store.finish(parent.slot.ref, parent_write(parent, result, up_told, front))
            parent.changed = True
        node = NodeResult(
            parent.slot.ref.run_id,
            parent.name,
            parent.level,
            tuple(parent.leaves),
            best,
            tuple(parent.children),
            parent.changed,
            parent.slot.ref.artifact_uri,
            candidates=tuple(candidates),
            front=tuple(front),
        )
        if self._painter is not None:
            self._painter.parent(node, objective)
            self._store_pictures(self._painter.drawn())
        up = parent.up
        if up is None:
            self._stage_ended(parent.stage, node)
            return
        if node.changed:
            self._reopen(up)
        up.children.append(node)
        up.leaves.extend(node.leaves)
        up.candidates.extend(passed_up)
        up.replicates.append(result if result is not None else _failed(node))
        up.sampler.tell(parent.point, up_told)
        up.open_children -= 1
        if up.done:
            self._close_parent(up)

    def _reopen(self, parent: OpenParent) -> None:
        """A parent reused so far gets a child that runs: it is RUNNING again, and so are its own parents."""
        while parent is not None and not parent.changed:
            self.store.reopen(parent.slot.ref)
            parent.changed = True
            if parent.up is None and not parent.slot.created:
                self._record_environment(parent.slot.ref, parent.slot.record)
            parent = parent.up

    def _record_environment(self, ref: RunRef, earlier: RunRecord | None) -> None:
        """On a stage run as soon as it is created, so one that ends KILLED or FAILED has them too; on an earlier
        execution's stage run that runs something again, under `environment/resumed-<UTC time>/` and only if the
        `runtree.environment` digest it recorded differs (the files it holds stay as they were).
        A store that refuses them is a warning: provenance never fails a run."""
        files = self._environment
        if not files:
            return
        digest = self._invocation[ENVIRONMENT]
        if earlier is not None:
            if earlier.tags.get(ENVIRONMENT) == digest:
                return
            files = resumed_files(files, self._began)
        try:
            self.store.attach(ref, files)
            if earlier is not None:
                self.store.annotate(ref, {ENVIRONMENT: digest})
        except TrackingFailed as e:
            log.warning("could not store the environment of %s: %s", ref.name, e)

    # ---- leaves ------------------------------------------------------------------------------------------------

    def _new_leaf(self, parent: OpenParent, point: Point) -> LeafJob:
        name, params, key = self.identity.child_identity(parent, point)
        return LeafJob(parent.stage, parent, point, name, params, self.identity.child_slot(parent, name, key, point))

    def _create_ahead(self, parent: OpenParent) -> None:
        """Against a server, create the next runs while this one works; never for a sampler that learns.

        A run's recorded start is when it was created, so only short leaves get runs ahead, and only as many as
        start at most `AHEAD_SECONDS` early: enough to hide the round trips behind leaves of a few milliseconds,
        invisible in their durations. Longer leaves would gain nothing from it.
        """
        stage = parent.stage
        seconds, interval = stage.leaf_seconds, stage.submit_interval
        leaves_only = not parent.levels[1:] and not any(p.below for p in parent.levels[0].points)
        if parent.sampler.learns or not leaves_only or seconds is None or seconds >= AHEAD_SECONDS:
            return
        depth = min(self.store.prefetch, int(AHEAD_SECONDS / max(seconds, interval or 0.0, 0.001)))
        while len(parent.ahead) < depth and (point := self._ask(parent)) is not None:
            parent.ahead.append(self._new_leaf(parent, point))

    def _ask(self, parent: OpenParent) -> Point | None:
        """The parent's next point, unless its drawing is over: its sampler is exhausted, its level's time budget
        is spent, or a resume found the budget spent before and redraws only the points drawn then."""
        if parent.drawing_over:
            return None
        budget = None if parent.draw_limit is not None else parent.levels[0].time_budget_s
        if budget is not None and parent.first_asked is not None and time.monotonic() - parent.first_asked >= budget:
            parent.budget_spent = True
            self.store.annotate(parent.slot.ref, schema.budget_tags(drawn=parent.drawn))
            return None
        point = parent.sampler.ask()
        if point is not None:
            parent.drawn += 1
            parent.open_children += 1
            if parent.first_asked is None:
                parent.first_asked = time.monotonic()
        return point

    def _drop_ahead(self, stage: StageRun) -> None:
        """`on_failure: stop`: runs created ahead that will now never run are removed, not left KILLED."""
        for parent in [p for p in self._open if p.stage is stage]:
            while parent.ahead:
                self._discard(parent.ahead.popleft())
                parent.open_children -= 1
        for parent in [p for p in reversed(self._open) if p.stage is stage]:
            if parent in self._open and parent.done:
                self._close_parent(parent)

    def _discard(self, leaf: LeafJob) -> None:
        slot = leaf.slot.result()
        if slot.created:
            self.store.discard(slot.ref)
        elif slot.origin is Origin.REDONE:
            self.store.finish(slot.ref, Write(Status.KILLED, tags={schema.ERROR: "not run: the stage stopped first"}))

    # ---- around the loop ---------------------------------------------------------------------------------------

    def _preempt(self) -> None:
        """SIGTERM: the running leaves are told (`Preempted` from their next `report` or `save_checkpoint`, SIGTERM to
        programs) and get `preempt_grace_s` to save a checkpoint and end; their runs then end KILLED like any other
        interrupted run, and `resume=` continues each from its newest checkpoint."""
        if not self._running or not self.plan.preempt_grace_s:
            return
        grace = self.plan.preempt_grace_s
        log.warning("SIGTERM: %d running leaves get up to %g s to save a checkpoint", len(self._running), grace)
        deadline = time.monotonic() + grace
        with contextlib.suppress(Exception):
            self.executor.preempt()
            while self._running and time.monotonic() < deadline and pending() is None:  # a Ctrl-C cuts it short
                done, _ = wait(list(self._running), timeout=min(0.1, max(0.0, deadline - time.monotonic())))
                for future in done:
                    self._running.pop(future, None)

    def _stop(self, status: str) -> int:
        """Stop the workers so nothing writes after the runs are ended; runs created ahead are removed."""
        try:
            self.executor.close()
            for parent in self._open:
                for leaf in parent.ahead:
                    with contextlib.suppress(Exception):
                        slot = leaf.slot.result()
                        if slot.created:
                            self.store.discard(slot.ref)
            with contextlib.suppress(Exception):
                self.store.flush()
        finally:
            killed = self.store.end_open_runs(status)
        return killed

    def _draw(self) -> None:
        """Store the pictures still out: each parent's were drawn as it closed, and stored as they came back while
        the tree was recorded; the DAG (which shows how every stage ended) is drawn now."""
        if self._painter is None:
            return
        edges = [(dep, s.name) for s in self.plan.stages.values() for dep in s.depends_on]
        status = {name: result.status for name, result in self._results.items()}
        for name, result in self._results.items():
            if result.node is not None:
                self._painter.dag(result.node, edges, self.plan.order, highlight=name, status=status)
        self._store_pictures(self._painter.pictures())

    def _store_pictures(self, pictures: Iterable[tuple[NodeResult, dict[str, bytes]]]) -> None:
        for node, files in pictures:
            try:
                self.store.attach(self._ref(node), files)
            except TrackingFailed as e:
                log.warning("could not store the plots of %s: %s", node.name, e)

    def _ref(self, node: NodeResult) -> RunRef:
        return RunRef(node.run_id, self.store.experiment_id, self.store.uri, node.name, node.artifact_uri)


def _resolve_points(level: SweepSpec, lookup_fn: Callable[[Reference], Any]) -> SweepSpec:
    """Explicit points may hold `${best:...}` too, a variant's own space included; resolve them once the upstream
    results exist."""
    if not level.points:
        return level
    points = tuple(
        replace(
            p,
            params=substitute(dict(p.params), lookup_fn),
            below=None if p.below is None else tuple(_resolve_points(own, lookup_fn) for own in p.below),
        )
        for p in level.points
    )
    return replace(level, points=points)


def _registered_before(slot: Slot) -> bool:
    """A stage run reused as it was, which registered its model then: registering again could move the alias back
    to it after another pipeline moved it on."""
    record = slot.record
    reused = slot.origin is Origin.REUSED and not slot.cached
    return reused and record is not None and schema.REGISTERED_VERSION in record.tags


def _seed_tag(levels: tuple[SweepSpec, ...], name: str) -> dict[str, str]:
    """The seed a new parent's study will have, recorded when its run is created, for a resume to draw with."""
    seed = _parent_seed(levels[0], name, None) if levels else None
    return schema.seed_tag(seed) if seed is not None else {}


def _parent_seed(spec: SweepSpec, name: str, record: RunRecord | None) -> int | None:
    """A new parent's study is seeded from its level's seed and its name; a resumed one draws with the seed it
    recorded, and one recorded before seeds were per parent (no seed tag) with its level's own, so that its points
    replay as they were drawn. None where the level draws nothing seeded."""
    derived = study_seed(spec, name)
    if derived is None or record is None:
        return derived
    recorded = schema.recorded_seed(record.tags)
    return spec.seed if recorded is None else recorded


def _below(parent: OpenParent, point: Point) -> tuple[SweepSpec, ...]:
    """The levels under a child: a variant's own space, else the parent's remaining levels (none: a leaf)."""
    return parent.levels[1:] if point.below is None else point.below


def _prunes(plan: Plan) -> bool:
    """Whether any level of the plan has a pruner, a variant's own space included: only then is a desk opened."""
    return any(level.pruner is not None for stage in plan.stages.values() for level in stage.all_levels)


def _failed(node: NodeResult) -> LeafResult:
    """A child parent with no result, as one of its parent's replicates: counted, never aggregated."""
    return LeafResult(node.run_id, node.name, {}, {}, {}, Status.FAILED)


def new_painter(plan: Plan) -> Painter | None:
    """A painter when the plan has something to picture: several stages (the DAG), or a stage that sweeps."""
    pictured = len(plan.order) > 1 or any(s.sweeps and s.objective.metric for s in plan.stages.values())
    return Painter(warmup=picture_warmup(plan)) if pictured else None


def picture_warmup(plan: Plan) -> dict[str, Any]:
    """What the painter draws once before the first parent (see `plots.warm`), read from the plan: how many params
    vary among each kind of parent's children (the stage's: those of all its levels; a variant's: those of the
    level below it), whether some parent may rank its params (enough leaves, two swept params) and whether some
    stage has a Pareto front to draw."""
    from runtree_pipeline.reports.importance import MIN_ROWS

    widths: set[int] = set()
    importance = pareto = False
    for spec in plan.stages.values():
        if not spec.sweeps or not spec.objective.metric:
            continue
        swept = {k for level in spec.all_levels for k in level.keys}
        widths.add(len(swept))
        if spec.variants is not None and spec.variants.points:
            widths.update(len(below[0].keys) for below in map(spec.below, spec.variants.points) if below)
        elif spec.variants is not None and spec.subvariants is not None:
            widths.add(len(spec.subvariants.keys))
        importance = importance or (spec.leaf_count() >= MIN_ROWS and len(swept) >= 2)
        pareto = pareto or len(spec.objective.goals) == 2
    kept = sorted(w for w in widths if 0 < w <= WIDEST_WARM)
    return {"widths": kept[-WARM_WIDTHS:], "importance": importance, "pareto": pareto}
