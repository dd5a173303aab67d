"""Walks the plan's DAG and grows the run tree: stage run → variant runs → sub-variant runs, best results flowing up.

One scheduling loop serves every executor: each parent asks its sampler for points while the executor has free
workers, and tells it each result as it completes (Optuna's ask/tell), so `tpe` works on a pool as well as inline.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import replace
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

import yaml

from . import schema
from .executors import Executor, LocalExecutor
from .leaf import LeafOutcome, LeafTask, objective_value
from .params import flatten, lookup, merge
from .plan import Plan, StageSpec
from .references import Reference, substitute
from .results import LeafResult, NodeResult, PipelineResult, StageResult, select_best
from .sweep import SweepSpec
from .tracking import TrackingWriter

log = logging.getLogger(__name__)


class StageInputError(ValueError):
    """A `${best:...}` reference that has no value in the upstream stage's best run."""


class Runner:
    def __init__(self, plan: Plan, *, writer: TrackingWriter, executor: Executor | None = None) -> None:
        self.plan = plan
        self.writer = writer
        self.executor = executor or LocalExecutor()
        self.pipeline_id = uuid.uuid4().hex[:12]
        self._results: dict[str, StageResult] = {}

    def run(self) -> PipelineResult:
        try:
            for name in self.plan.order:
                self._results[name] = self._run_stage(self.plan.stages[name])
        except KeyboardInterrupt:
            self.writer.end_open_runs("KILLED")
            raise
        except BaseException:
            self.writer.end_open_runs("FAILED")
            raise
        finally:
            self.executor.close()
        return PipelineResult(
            pipeline_id=self.pipeline_id,
            experiment=self.plan.experiment,
            experiment_id=self.writer.experiment_id,
            tracking_uri=self.writer.uri,
            stages=dict(self._results),
        )

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
        run = self.writer.start(name=stage.name, tags=tags)
        stage_tags = {schema.ROOT_RUN_ID: run.info.run_id}
        try:
            params = substitute(dict(stage.params), self._lookup)
            levels = tuple(_resolve_points(level, self._lookup) for level in stage.levels)
        except (StageInputError, ValueError) as e:
            self.writer.finish(run, status="FAILED", tags={**stage_tags, schema.ERROR: str(e)})
            log.error("stage %s failed: %s", stage.name, e)
            return StageResult(stage.name, "FAILED", reason=str(e), upstream=upstream)
        config = {**self.plan.config, "stages": {stage.name: {**self.plan.config["stages"][stage.name], "params": params}}}
        artifacts = {schema.CONFIG_ARTIFACT: yaml.safe_dump(config, sort_keys=False)}

        log.info("stage %s: started (run %s)", stage.name, run.info.run_id)
        tree = _Tree(self, stage, root_id=run.info.run_id)
        if levels:
            node = tree.parent(run, stage.name, "stage", params, levels, tags, extra_tags=stage_tags, artifacts=artifacts)
        else:
            leaf = tree.leaf_now(run, stage.name, params, extra_tags=stage_tags, artifacts=artifacts)
            node = NodeResult(run.info.run_id, stage.name, "stage", (leaf,), leaf if leaf.status == "FINISHED" else None)
        if node.best is None:
            first = next((leaf.error for leaf in node.leaves if leaf.error), "no leaf had a finite objective value")
            reason = f"no successful leaf ({node.failed} of {len(node.leaves)} failed; first error: {first})"
            log.error("stage %s failed: %s", stage.name, reason)
            return StageResult(stage.name, "FAILED", node=node, reason=reason, upstream=upstream)
        log.info(
            "stage %s: %d leaves, %d failed, best %s",
            stage.name,
            len(node.leaves),
            node.failed,
            node.best.name,
        )
        return StageResult(stage.name, "FINISHED", node=node, upstream=upstream)

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
        self.runner = runner
        self.writer = runner.writer
        self.executor = runner.executor
        self.stage = stage
        self.root_id = root_id
        self.stopped = False

    def parent(
        self,
        run: Any,
        name: str,
        level: str,
        params: Mapping[str, Any],
        levels: tuple[SweepSpec, ...],
        tags: Mapping[str, str],
        *,
        extra_tags: Mapping[str, str] | None = None,
        artifacts: Mapping[str, str] | None = None,
    ) -> NodeResult:
        spec, below = levels[0], levels[1:]
        sampler = spec.new_sampler(direction=self.stage.objective.mode)
        child_tags = {**tags, **spec.tags, schema.LEVEL: spec.level, schema.ROOT_RUN_ID: self.root_id}
        leaves: list[LeafResult] = []
        children: list[NodeResult] = []
        pending: dict[Future[LeafOutcome], tuple[Any, Any, str, dict[str, Any]]] = {}
        while True:
            while not self.stopped and len(pending) < self.executor.workers:
                point = sampler.ask()
                if point is None:
                    break
                child_name = f"{name}/{point.name}"
                child_params = merge(params, point.params)
                child = self.writer.start(name=child_name, tags=child_tags, parent_id=run.info.run_id)
                if below:
                    node = self.parent(child, child_name, spec.level, child_params, below, child_tags)
                    children.append(node)
                    leaves.extend(node.leaves)
                    sampler.tell(point, node.best.objective if node.best else None)
                else:
                    pending[self._submit(child, child_params)] = (point, child, child_name, child_params)
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                point, child, child_name, child_params = pending.pop(future)
                leaf = self._record(child, child_name, child_params, future.result())
                leaves.append(leaf)
                sampler.tell(point, leaf.objective)

        best = select_best(leaves, mode=self.stage.objective.mode)
        failed_leaves = sum(leaf.status != "FINISHED" for leaf in leaves)
        failed_children = sum(node.best is None for node in children) if below else failed_leaves
        result_tags = {
            **(extra_tags or {}),
            schema.CHILDREN: len(children) if below else len(leaves),
            schema.FAILED_CHILDREN: failed_children,
            schema.FAILED_LEAVES: failed_leaves,
        }
        metrics: dict[str, float] = {}
        if best is not None:
            result_tags[schema.BEST_RUN_ID] = best.run_id
            result_tags.update({schema.BEST_PARAM + k: v for k, v in flatten(dict(best.params)).items()})
            metrics = {schema.BEST_METRIC + k: v for k, v in best.metrics.items()}
        else:
            result_tags[schema.ERROR] = f"no successful leaf among {len(leaves)}"
        self.writer.finish(
            run,
            status="FINISHED" if best is not None else "FAILED",
            params=flatten(dict(params)),
            metrics=metrics,
            tags=result_tags,
            artifacts=artifacts,
        )
        return NodeResult(run.info.run_id, name, level, tuple(leaves), best, tuple(children))

    def leaf_now(
        self,
        run: Any,
        name: str,
        params: Mapping[str, Any],
        *,
        extra_tags: Mapping[str, str] | None = None,
        artifacts: Mapping[str, str] | None = None,
    ) -> LeafResult:
        """A stage without sweeps: its own run is the leaf."""
        outcome = self._submit(run, params, require_objective=False).result()
        return self._record(run, name, params, outcome, extra_tags=extra_tags, artifacts=artifacts)

    def _submit(self, run: Any, params: Mapping[str, Any], *, require_objective: bool = True) -> Future[LeafOutcome]:
        task = LeafTask(
            target=self.stage.target,
            kwargs=params,
            run=run,
            tracking_uri=self.writer.uri,
            objective=self.stage.objective.metric if require_objective else None,
        )
        return self.executor.submit(task)

    def _record(
        self,
        run: Any,
        name: str,
        params: Mapping[str, Any],
        outcome: LeafOutcome,
        *,
        extra_tags: Mapping[str, str] | None = None,
        artifacts: Mapping[str, str] | None = None,
    ) -> LeafResult:
        tags = dict(extra_tags or {})
        files = dict(artifacts or {})
        if outcome.outputs:
            files[schema.OUTPUTS_ARTIFACT] = json.dumps(outcome.outputs, indent=2, sort_keys=True)
        if outcome.error:
            tags[schema.ERROR] = outcome.error
            if outcome.traceback:
                files[schema.TRACEBACK_ARTIFACT] = outcome.traceback
            log.warning("run %s failed: %s", name, outcome.error)
            if self.stage.on_failure == "stop":
                self.stopped = True
        status = "FINISHED" if outcome.ok else "FAILED"
        self.writer.finish(
            run, status=status, params=flatten(dict(params)), metrics=outcome.metrics, tags=tags, artifacts=files
        )
        return LeafResult(
            run_id=run.info.run_id,
            name=name,
            params=params,
            metrics=outcome.metrics,
            outputs=outcome.outputs,
            status=status,
            error=outcome.error,
            objective=objective_value(outcome, self.stage.objective.metric),
        )


def _resolve_points(level: SweepSpec, lookup_fn: Any) -> SweepSpec:
    """Explicit points may hold `${best:...}` too; resolve them once the upstream results exist."""
    if not level.points:
        return level
    points = tuple(replace(p, params=substitute(dict(p.params), lookup_fn)) for p in level.points)
    return replace(level, points=points)
