"""Which run a node of the tree is: the one question resume, the cache and the scheduler's loop all ask.

A node's content key decides it. On resume the previous execution's run with the same key is reused as it was, or
redone in place when it failed or was cut off; with `cache: true` a finished leaf of any other execution stands in
for running it; otherwise a new run is created. Kept apart from the loop in `scheduler.py`, which decides what
runs when, so that whatever else has to know which run is which asks this one object.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from runtree_pipeline.errors import ExecutionTaken, UnknownPipeline
from runtree_pipeline.execution.keys import content_key
from runtree_pipeline.execution.tree import OpenParent, Slot
from runtree_pipeline.futures import run_now
from runtree_pipeline.plan.params import merge
from runtree_pipeline.plan.stages import Plan, StageSpec
from runtree_pipeline.plan.sweeps import Point
from runtree_pipeline.states import Origin, Status
from runtree_pipeline.tracking import tags as schema
from runtree_pipeline.tracking.heartbeat import holder
from runtree_pipeline.tracking.index import PreviousPoint, RunIndex, is_kept
from runtree_pipeline.tracking.records import RunRecord
from runtree_pipeline.tracking.store import RunStore


class RunIdentity:
    """The execution's id, the previous execution's runs on resume and the cacheable leaves of the others: which
    run each stage, parent and leaf of this execution is, created, reopened or taken as it was."""

    def __init__(self, plan: Plan, store: RunStore) -> None:
        self.plan = plan
        self.store = store
        self.pipeline_id = str(plan.resume) if plan.resume and plan.resume != "last" else uuid.uuid4().hex[:12]
        self.previous = RunIndex()
        self._cache: dict[str, dict[str, RunRecord]] = {}

    def load_previous(self) -> None:
        """On resume, the previous execution's runs: read when the run starts, where a signal is handled like any
        other."""
        resume = self.plan.resume
        if not resume:
            return
        if resume == "last":
            self.pipeline_id = self.store.latest_pipeline_id() or ""
        runs = self.store.pipeline_runs(self.pipeline_id) if self.pipeline_id else []
        if not runs:
            raise UnknownPipeline(
                f"resume={resume}: no pipeline execution {'at all' if resume == 'last' else resume!r} "
                f"in experiment '{self.store.experiment}'"
            )
        stage_runs = [r for r in runs if r.tags.get(schema.LEVEL) == "stage"]
        driver = holder(stage_runs, stale_after_s=self.plan.stale_after_s)
        if driver is not None:
            raise ExecutionTaken(
                f"resume={resume}: execution {self.pipeline_id} is being run by another driver ({driver.describe()}):"
                " wait for it to end, or stop it first"
            )
        self.previous = RunIndex(runs)

    # ---- stages ------------------------------------------------------------------------------------------------

    def stage_key(self, spec: StageSpec, params: Mapping[str, Any], code: str | None) -> str:
        """A stage run's content key, with its target's code fingerprint when `cache.code` is on; the key without
        it where the resumed execution was recorded before keys held the code: its runs are still its runs."""
        key = content_key(stage=spec.name, params=params, **spec.target.key_parts(code))
        if code and self.previous.stage_run(spec.name, key) is None:
            legacy = content_key(stage=spec.name, params=params, **spec.target.key_parts(None))
            if self._written_before_code(spec.name, legacy):
                key = legacy
        return key

    def stage_slot(self, spec: StageSpec, key: str, tags: Mapping[str, Any], own: Mapping[str, Any]) -> Slot:
        """The stage's run: the previous execution's on resume, else a cached one, else a new one. Earlier stage
        runs of the same name that it replaces are marked superseded by it."""
        name = spec.name
        if self.plan.cache.enabled:
            self._cache[name] = self._cacheable(spec)
        found = self.previous.stage_run(name, key)
        cached = self._cache.get(name, {}).get(key) if found is None else None
        if cached is not None:
            origin = {schema.KEY: key, schema.CACHED_FROM: schema.computed_by(cached.tags, cached.run_id)}
            ref = self.store.create(name=name, tags={**tags, **own, **origin})
            slot = Slot(ref, key, Origin.REUSED, cached, cached=True)
        elif found is None:
            slot = Slot(self.store.create(name=name, tags={**tags, **own, schema.KEY: key}), key, Origin.EXECUTED)
        else:
            slot = self.existing_slot(found, key)
        # Also when the current run already exists: an interruption may have come before the old one was marked.
        # A found run that was itself superseded (the inputs went back to earlier values) must not hide the others.
        if found is None or schema.SUPERSEDED_BY not in found.tags:
            for stale in self.previous.stale_stages(name, key):
                self.store.annotate(stale.ref(self.store.uri), {schema.SUPERSEDED_BY: slot.ref.run_id})
        return slot

    def _written_before_code(self, name: str, key: str) -> bool:
        found = self.previous.stage_run(name, key)
        return found is not None and schema.CODE not in found.tags

    # ---- children ----------------------------------------------------------------------------------------------

    def child_identity(self, parent: OpenParent, point: Point) -> tuple[str, dict[str, Any], str]:
        """A child's name, its params (the parent's with the point's over them) and its content key."""
        params = merge(parent.params, point.params)
        # A variant with a space of its own may become a leaf or a parent between executions: not the same run.
        shape = {} if point.below is None else {"leaf": not point.below}
        return (
            f"{parent.name}/{point.name}",
            params,
            content_key(parent=parent.slot.key, name=point.name, params=params, **shape),
        )

    def child_slot(
        self, parent: OpenParent, name: str, key: str, point: Point, *, own: Mapping[str, str] | None = None
    ) -> Future[Slot]:
        """The previous execution's run for this child on resume, else a new one (with `own` tags, those of a child
        that is a parent), created where a round trip can overlap other work (see `RunStore.create_later`)."""
        if parent.slot.origin is not Origin.EXECUTED and (found := self.previous.child(parent.slot.ref.run_id, key)):
            return run_now(self.existing_slot, found, key, prunes=parent.levels[0].pruner is not None)
        tags = {**parent.child_tags, schema.KEY: key, **self._point_tag(parent, point), **(own or {})}
        cached = self._cache.get(parent.stage.spec.name, {}).get(key)
        if cached is not None:
            tags[schema.CACHED_FROM] = schema.computed_by(cached.tags, cached.run_id)
        creating = self.store.create_later(name=name, tags=tags, parent_id=parent.slot.ref.run_id)
        if cached is not None:
            return _chain(creating, lambda ref: Slot(ref, key, Origin.REUSED, cached, cached=True))
        return _chain(creating, lambda ref: Slot(ref, key, Origin.EXECUTED))

    def existing_slot(self, found: RunRecord, key: str, *, prunes: bool = False) -> Slot:
        """Reused when its result stands (see `_stands`); else redone in the same run, without what an earlier
        pruning said."""
        ref = found.ref(self.store.uri)
        if _stands(found, prunes=prunes):
            return Slot(ref, key, Origin.REUSED, found)
        self.store.reopen(ref, clear_tags=schema.PRUNING_TAGS if is_kept(found) else ())
        return Slot(ref, key, Origin.REDONE, found)

    def points_under(self, run_id: str) -> list[PreviousPoint]:
        """The points an earlier execution drew under this parent run, for a learning sampler to replay."""
        return self.previous.points_under(run_id)

    def _cacheable(self, stage: StageSpec) -> dict[str, RunRecord]:
        """`cache: true`: the finished (or pruned) leaves of this stage in the experiment's other executions, by
        content key; one search per stage. A leaf is a run that recorded what its target returned; the oldest such
        run of a key is the one taken, so every cached copy points at the run that really computed it."""
        finished: dict[str, RunRecord] = {}
        pruned: dict[str, RunRecord] = {}
        for run in sorted(self.store.stage_history(stage.name), key=lambda r: r.start_time or 0):
            tags = run.tags
            key = tags.get(schema.KEY)
            if key is None or schema.RETURNED not in tags or tags.get(schema.PIPELINE_ID) == self.pipeline_id:
                continue
            if run.status == Status.FINISHED:
                finished.setdefault(key, run)
            elif _stands(run, prunes=stage.prunes):
                pruned.setdefault(key, run)
        return {**pruned, **finished}  # never a pruned result over a finished one

    def _point_tag(self, parent: OpenParent, point: Point) -> dict[str, str]:
        """Kept on every child in a stage with a learning sampler, so it can replay its points on resume; with
        where it was asked, as the replay must ask and tell in the original order (its tell is recorded when it
        ends, see `tree.told`)."""
        replays = any(level.learns for level in parent.stage.spec.all_levels)
        if not replays:
            return {}
        return schema.point_tag(point.params, index=point.index, asked_after=parent.sampler.asked_after(point))


def _stands(run: RunRecord, *, prunes: bool) -> bool:
    """Whether an earlier leaf's result is taken rather than run again: a finished one always; a pruned one only
    where a pruner still decides, as a pruner is not in the content key."""
    return run.status == Status.FINISHED or (prunes and is_kept(run))


def _chain(future: Future[Any], then: Callable[[Any], Any]) -> Future[Any]:
    """A future for `then(result)`, completed when `future` is (on whichever thread completes it)."""
    chained: Future[Any] = Future()

    def done(f: Future[Any]) -> None:
        try:
            chained.set_result(then(f.result()))
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits for the chained future
            chained.set_exception(e)

    future.add_done_callback(done)
    return chained
