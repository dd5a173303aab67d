"""The one-screen report at the end of a run, and the same facts as `summary.json` for scripts.

Every stage says what this execution did with its leaves (`executed`, `reused`, `redone`, `failed`; see
`NodeResult.counts`), so a resume that ran nothing says so instead of looking like a fresh run.

The report is read in a terminal, so every line fits its width and never exceeds 80 columns: a line longer than the
terminal wraps at the terminal's edge, not at a word, and reads as garbage next to the aligned ones. The one exception
is what a user copies from the `look:` lines: no word there is cut, so the `mlflow ui ...` command stands whole on a
line of its own, however long its URI, and a store URI longer than a line stands whole on its own line too. A long
param value may be cut at the width, as summary.json has it whole.
"""

from __future__ import annotations

import itertools
import json
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runtree_pipeline.plan.objective import Objective
from runtree_pipeline.plan.stages import Plan
from runtree_pipeline.plan.sweeps import format_value
from runtree_pipeline.reports.progress import terminal_columns
from runtree_pipeline.results import LEAF_COUNTS, PipelineResult
from runtree_pipeline.states import Status

MAX_WIDTH = 80
PARAM_LINES = 4


def render(result: PipelineResult, plan: Plan, *, where: str, width: int | None = None) -> str:
    """`width` defaults to the terminal's columns, at most `MAX_WIDTH`; `summary.json` keeps everything unwrapped."""
    width = width or summary_width()
    facts = result.to_dict()
    lines = _wrap(
        f"runtree pipeline {result.pipeline_id} — experiment '{result.experiment}' "
        f"({'ok' if result.ok else Status.FAILED})",
        width,
        "",
        "  ",
    )
    stages = facts["stages"]
    name_width = min(max((len(name) for name in stages), default=0), 24)
    runs_width = max((len(str(stage["runs"])) for stage in stages.values()), default=1)
    for name, stage in stages.items():
        objective = plan.stages[name].objective
        runs = _glued(f"{stage['runs']:>{runs_width}} run" + ("s" if stage["runs"] != 1 else ""))
        lines += _wrap(f"{name:<{name_width}}  {stage['status']:<8}  {runs}", width, "  ", "      ")
        counts = " ".join(f"{key}={stage[key]}" for key in LEAF_COUNTS if key != "pruned" or stage[key])
        lines += _wrap(f"leaves: {counts}", width, "    ", "      ")
        best = stage["best"]
        if best is None:
            lines += _wrap(str(stage["reason"]), width, "    ", "      ")
            continue
        score = _score(objective, best)
        lines += _wrap(f"best {score}  {_glued('run ' + best['run_id'])}", width, "    ", "      ")
        params = [f"{k}={format_value(v)}" for k, v in _flat(best["params"]).items()]
        if params:
            lines += _params(params, width)
    first, *rest = where.split(" — ")
    lines += _look(f"look: {first}", width, "", "  ")
    for part in rest:
        lines += _look(part, width, "  ", "  ")
    return "\n".join(lines)


def _score(objective: Objective, best: Mapping[str, Any]) -> str:
    """`loss=0.12 (min)`; for the aggregate of replicates `mean_loss=0.12 ± 0.01 (5) (min)`; with several
    objectives each of them, the selected one first."""
    metrics = best["metrics"]
    if not objective.metric or objective.metric not in metrics:
        return "done"
    aggregate = best.get("aggregate")
    shown = []
    for metric in sorted(objective.metrics, key=lambda m: m != objective.metric):
        if aggregate is None:
            shown.append(f"{metric}={format_value(metrics[metric])}")
            continue
        std = metrics.get(f"std_{metric}")
        spread = f" ± {format_value(std)}" if std is not None else ""
        shown.append(f"{aggregate['how']}_{metric}={format_value(metrics[metric])}{spread} ({aggregate['replicates']})")
    return f"{', '.join(shown)} ({objective.mode})" if not objective.multi else ", ".join(shown)


def summary_width() -> int:
    """The columns of the terminal stdout shows on, measured as the bars measure theirs (80 when there is no
    terminal), never more than `MAX_WIDTH`."""
    return max(min(terminal_columns(sys.stdout) or MAX_WIDTH, MAX_WIDTH), 20)


def write_json(result: PipelineResult, path: Path) -> Path:
    path.write_text(json.dumps(result.to_dict(), indent=2, sort_keys=False, default=str), encoding="utf-8")
    return path


def _flat(params: dict) -> dict:
    from runtree_pipeline.plan.params import flatten

    return flatten(params)


def _glued(text: str) -> str:
    """Words `_wrap` keeps on one line: a count and its noun, `run` and its id."""
    return text.replace(" ", _NBSP)


def _params(params: list[str], width: int) -> list[str]:
    """At most `PARAM_LINES` lines of whole params; a cut says how many are left out, so a reader knows the list
    goes on and where to find the rest."""
    fits = sum(1 for used in itertools.accumulate(len(p) + 2 for p in params) if used <= PARAM_LINES * width)
    for shown in range(fits, 0, -1):
        lines = _wrap("params: " + _more(params, shown), width, "    ", "      ")
        if len(lines) <= PARAM_LINES:
            return lines
    return _wrap("params: " + _more(params, 0), width, "    ", "      ")


def _more(params: list[str], shown: int) -> str:
    left = len(params) - shown
    return ", ".join(params[:shown] + ([_glued(f"… {left} more") + ", all in summary.json"] if left else []))


def _look(text: str, width: int, indent: str, hanging: str) -> list[str]:
    """No word is cut: a URI longer than a line stands whole on its own line, and a command in backticks is put on a
    line of its own, whole and without the backticks, so that copying the line copies the command."""
    lines: list[str] = []
    for i, piece in enumerate(text.split("`")):
        if i % 2:
            lines.append(f"{hanging}  {piece}")
        elif piece.strip():
            lines += _wrap(piece.strip(), width, hanging if lines else indent, hanging, cut_words=False)
    return lines


def _wrap(text: str, width: int, indent: str, hanging: str | None = None, *, cut_words: bool = True) -> list[str]:
    """Breaks between words; a word longer than a whole line (a path in a param) is cut unless `cut_words` is
    false, as the width is a promise."""
    lines = textwrap.wrap(
        text,
        width,
        initial_indent=indent,
        subsequent_indent=indent if hanging is None else hanging,
        break_on_hyphens=False,
        break_long_words=cut_words,
    )
    return [line.replace(_NBSP, " ") for line in lines]


_NBSP = "\u00a0"  # not a place to break for textwrap, which breaks only at ASCII whitespace
