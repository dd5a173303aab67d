"""The one-screen report at the end of a run, and the same facts as `summary.json` for scripts."""

from __future__ import annotations

import json
from pathlib import Path

from .plan import Plan
from .results import PipelineResult
from .sweep import format_value


def render(result: PipelineResult, plan: Plan, *, where: str) -> str:
    facts = result.to_dict()
    lines = [
        f"runtree pipeline {result.pipeline_id} — experiment '{result.experiment}' "
        f"({'ok' if result.ok else 'FAILED'})"
    ]
    for name, stage in facts["stages"].items():
        objective = plan.stages[name].objective
        head = f"  {name:<12} {stage['status']:<8} {stage['runs']:>4} runs"
        if stage["failed_leaves"]:
            head += f", {stage['failed_leaves']} failed"
        best = stage["best"]
        if best is None:
            lines.append(f"{head}  — {stage['reason']}")
            continue
        value = best["metrics"].get(objective.metric) if objective.metric else None
        score = f"{objective.metric}={format_value(value)} ({objective.mode})" if value is not None else "done"
        lines.append(f"{head}  best {score}  run {best['run_id']}")
        params = ", ".join(f"{k}={format_value(v)}" for k, v in _flat(best["params"]).items())
        if params:
            lines.append(f"  {'':<12} params: {_clip(params)}")
    lines.append(f"look: {where}")
    return "\n".join(lines)


def write_json(result: PipelineResult, path: Path) -> Path:
    path.write_text(json.dumps(result.to_dict(), indent=2, sort_keys=False, default=str), encoding="utf-8")
    return path


def _flat(params: dict) -> dict:
    from .params import flatten

    return flatten(params)


def _clip(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
