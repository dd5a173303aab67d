"""The one-screen report at the end of a run, and the same facts as `summary.json` for scripts.

Every stage line carries what this execution did with its leaves (`executed`, `reused`, `redone`, `failed`; see
`NodeResult.counts`), so a resume that ran nothing says so instead of looking like a fresh run.
"""

from __future__ import annotations

import json
from pathlib import Path

from runtree_pipeline.plan.stages import Plan
from runtree_pipeline.plan.sweeps import format_value
from runtree_pipeline.results import LEAF_COUNTS, PipelineResult
from runtree_pipeline.states import Status


def render(result: PipelineResult, plan: Plan, *, where: str) -> str:
    facts = result.to_dict()
    lines = [
        f"runtree pipeline {result.pipeline_id} — experiment '{result.experiment}' "
        f"({'ok' if result.ok else Status.FAILED})"
    ]
    for name, stage in facts["stages"].items():
        objective = plan.stages[name].objective
        counts = " ".join(f"{key}={stage[key]}" for key in LEAF_COUNTS if key != "pruned" or stage[key])
        runs = f"{stage['runs']:>4} run" + ("s" if stage["runs"] != 1 else " ")
        lines.append(f"  {name:<12} {stage['status']:<8} {runs}  {counts}")
        indent = f"  {'':<12} "
        best = stage["best"]
        if best is None:
            lines.append(f"{indent}{stage['reason']}")
            continue
        value = best["metrics"].get(objective.metric) if objective.metric else None
        score = f"{objective.metric}={format_value(value)} ({objective.mode})" if value is not None else "done"
        lines.append(f"{indent}best {score}  run {best['run_id']}")
        params = ", ".join(f"{k}={format_value(v)}" for k, v in _flat(best["params"]).items())
        if params:
            lines.append(f"{indent}params: {_clip(params)}")
    lines.append(f"look: {where}")
    return "\n".join(lines)


def write_json(result: PipelineResult, path: Path) -> Path:
    path.write_text(json.dumps(result.to_dict(), indent=2, sort_keys=False, default=str), encoding="utf-8")
    return path


def _flat(params: dict) -> dict:
    from runtree_pipeline.plan.params import flatten

    return flatten(params)


def _clip(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
