"""Pictures stored with the runs, for the MLflow UI: each parent's children against their params, and the DAG.

Plain functions of plain data, so that they can be drawn in another process while the tree is still being
recorded (see `execution.painter`).

A sweep of 2,000 small parents asks for 4,000 of these, and the painter's CPU is what pictures cost when the
machine has no idle core. So each is drawn once, on a bare Agg figure kept per layout and redrawn with the next
parent's data (no pyplot; no new axes and ticks per picture), with margins fixed in inches rather than found by
`bbox_inches="tight"`, which draws the whole figure a second time to measure it. A parent's two pictures take
2.5-2.8x less CPU than with a new pyplot figure each (40 ms instead of 112 ms for 10 leaves and one param).
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from runtree_pipeline.plan.objective import Goal, Objective
from runtree_pipeline.plan.params import flatten
from runtree_pipeline.reports.importance import MAX_ROWS, MIN_ROWS, param_importances
from runtree_pipeline.results import LeafResult
from runtree_pipeline.states import Status

log = logging.getLogger(__name__)

OBJECTIVE_PLOT = "plots/objective_vs_params.png"
PARALLEL_PLOT = "plots/parallel_coordinates.png"
DAG_PLOT = "plots/dag.png"
IMPORTANCE_PLOT = "plots/param_importances.png"
PARETO_PLOT = "plots/pareto_front.png"
IMPORTANCE_ARTIFACT = "importance.json"
DPI = 100


def warm(*, widths: Sequence[int] = (2,), importance: bool = False, pareto: bool = False) -> None:
    """Draw a throwaway parent for each layout a pipeline will ask for, ahead of its first real parent. A process's
    first drawing imports and loads fonts and fills caches (about 0.2 s on top of the 0.2 s a parent takes), and the
    first figure of each layout (a number of varying params, the Pareto chart) costs 0.1-0.15 s more than the next;
    the painter forks every later drawing from the process that did this, so the last stage's pictures, waited for
    at the end of a pipeline, are drawn warm. `widths`: how many params vary among a parent's children; with
    `importance`, each throwaway parent is large enough to rank its params, which imports scikit-learn (about a
    second) now rather than at the first real parent; with `pareto`, a two-objective parent is drawn too."""
    rows = MIN_ROWS if importance else MIN_ROWS - 1
    goals = Objective((Goal("loss"), Goal("size"))) if pareto else Objective.of("loss")
    for width in sorted(set(widths)) or [2]:
        leaves = [
            LeafResult(
                f"warm{i}",
                f"warm{i}",
                {f"p{k}": f"c{(i + k) % 3}" if k % 2 else ((i + k) % rows) / rows for k in range(width)},
                {},
                {},
                "FINISHED",
                objective=(i * 7 % rows) / rows,
                values=((i * 7 % rows) / rows, float(i % 4)) if pareto else None,
            )
            for i in range(rows)
        ]
        parent_plots(leaves, objective=goals, best_run_id="warm0", front=["warm0"])


def _figure(width: float, height: float, *, margins: tuple[float, float, float, float], **space: float) -> Any:
    """A figure of `width` x `height` inches whose axes leave `margins` (left, right, bottom, top) in inches free
    for labels; `space` is `wspace`/`hspace` between subplots."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    left, right, bottom, top = margins
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(
        left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height, **space
    )
    return fig


def _png(fig: Any) -> bytes:
    """zlib's fastest level: at the default one, compressing was a tenth of a picture's time; files are about 10%
    larger."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def _axis_values(values: Sequence[Any]) -> tuple[list[float], list[str] | None]:
    """Numbers stay numbers; anything else becomes evenly spaced categories (labels returned)."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], None
    labels = sorted({str(v) for v in values})
    return [float(labels.index(str(v))) for v in values], labels


def parent_plots(
    leaves: Sequence[LeafResult],
    *,
    objective: Objective,
    best_run_id: str | None,
    front: Sequence[str] = (),
) -> dict[str, bytes]:
    """The objective against every param that varies among the parent's children, and across all of them at once;
    from 10 children and two varying params on, how much each param mattered (`importance.json` and its chart); with
    two objectives, the children on both with the Pareto front (`front`, run ids).

    `objective.metric` must be set.
    """
    files: dict[str, bytes] = {}
    if len(objective.goals) == 2:
        files.update(_pareto(leaves, objective, best_run_id, set(front)))
    scored = [leaf for leaf in leaves if leaf.objective is not None]
    if len(scored) < 2:
        return files
    rows = [flatten(dict(leaf.params)) for leaf in scored]
    keys = [k for k in sorted({k for r in rows for k in r}) if len({repr(r.get(k)) for r in rows}) > 1]
    if not keys:
        return files
    values = [leaf.objective for leaf in scored]
    best = [leaf.run_id == best_run_id for leaf in scored]
    files[OBJECTIVE_PLOT] = _objective_vs_params(rows, keys, values, best, objective)
    files[PARALLEL_PLOT] = _parallel(rows, keys, values, best, objective)
    if len(scored) >= MIN_ROWS and len(keys) >= 2:
        try:
            importances = param_importances(rows, values, mode=objective.mode)
        except Exception as e:  # noqa: BLE001 - a ranking that fails costs its own chart, not the parent's pictures
            log.warning("no param importances: %s", e)
            importances = None
        if importances:
            record = {
                "metric": objective.metric,
                "children": len(scored),
                "ranked_on": min(sum(math.isfinite(v) for v in values), MAX_ROWS),
                "importances": importances,
            }
            files[IMPORTANCE_ARTIFACT] = json.dumps(record, indent=2).encode()
            files[IMPORTANCE_PLOT] = importance_plot(importances, objective.metric)
    return files


def _pareto(
    leaves: Sequence[LeafResult], objective: Objective, best_run_id: str | None, front: set[str]
) -> dict[str, bytes]:
    valued = [leaf for leaf in leaves if leaf.values is not None and leaf.finished]
    if not valued:
        return {}
    chosen = next((i for i, leaf in enumerate(valued) if leaf.run_id == best_run_id), None)
    picture = pareto_plot(
        [(leaf.values[0], leaf.values[1]) for leaf in valued],
        [leaf.run_id in front for leaf in valued],
        [leaf.feasible for leaf in valued],
        chosen,
        (objective.goals[0].metric, objective.goals[1].metric),
        (objective.goals[0].mode, objective.goals[1].mode),
    )
    return {PARETO_PLOT: picture}


def _objective_vs_params(rows, keys, values, best, objective: Objective) -> bytes:
    cols = min(len(keys), 3)
    grid = _canvas(("objective", math.ceil(len(keys) / cols), cols), _ScatterGrid)
    plain = [i for i, b in enumerate(best) if not b]
    top = [i for i, b in enumerate(best) if b]
    for n, ax in enumerate(grid.axes):
        ax.set_visible(n < len(keys))
    for ax, (others, stars), key in zip(grid.axes, grid.points, keys, strict=False):
        xs, labels = _axis_values([r.get(key) for r in rows])
        others.set_offsets(_points([xs[i] for i in plain], [values[i] for i in plain]))
        stars.set_offsets(_points([xs[i] for i in top], [values[i] for i in top]))
        ax.set_xlim(*_span(xs))
        ax.set_ylim(*_span(values))
        if labels:
            ax.set_xticks(range(len(labels)), [lbl[:12] for lbl in labels])
        else:
            from matplotlib.ticker import AutoLocator, ScalarFormatter

            ax.xaxis.set_major_locator(AutoLocator())
            ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.tick_params(axis="x", labelrotation=30 if labels else 0)
        ax.set_xlabel(key)
        ax.set_ylabel(objective.metric)
    grid.title.set_text(f"{objective.metric} ({objective.mode}) over {len(rows)} runs")
    return _png(grid.fig)


def _parallel(rows, keys, values, best, objective: Objective) -> bytes:
    import matplotlib

    columns = []
    for key in keys:
        xs, labels = _axis_values([r.get(key) for r in rows])
        columns.append((key, xs, labels))
    columns.append((objective.metric, list(values), None))
    chart = _canvas(("parallel", len(columns)), _Parallel)
    norm = []
    for _, xs, _ in columns:
        lo, hi = min(xs), max(xs)
        norm.append([(x - lo) / (hi - lo) if hi > lo else 0.5 for x in xs])
    lo, hi = min(values), max(values)
    # Shades run from the lowest value to the highest; the map turns so that the best end is always the dark one.
    higher_is_better = objective.better(1.0, 0.0)
    cmap = matplotlib.colormaps["viridis_r" if higher_is_better else "viridis"]
    xs = list(range(len(columns)))
    others = [i for i in range(len(rows)) if not best[i]]
    shades = [(values[i] - lo) / (hi - lo) if hi > lo else 0.5 for i in others]
    chart.others.set_segments([list(zip(xs, [column[i] for column in norm], strict=True)) for i in others])
    chart.others.set_color([cmap(shade) for shade in shades])
    top = [i for i in range(len(rows)) if best[i]][:1]
    chart.best.set_data(xs if top else [], [column[top[0]] for column in norm] if top else [])
    chart.legend.set_visible(bool(top))
    chart.ax.set_xticks(xs, [c[0] for c in columns])
    for (low_text, high_text), (_, column, labels) in zip(chart.ends, columns, strict=True):
        low, high = (labels[0], labels[-1]) if labels else (f"{min(column):.3g}", f"{max(column):.3g}")
        low_text.set_text(low)
        high_text.set_text(high)
    chart.ax.set_title(f"parameters → {objective.metric} ({objective.mode}); darker is better", fontsize=10)
    return _png(chart.fig)


_CANVASES: dict[tuple[Any, ...], Any] = {}


def _canvas(layout: tuple[Any, ...], make: Any) -> Any:
    """One figure per layout, redrawn with each parent's data: making the axes and their ticks anew cost about
    as much as drawing them."""
    if layout not in _CANVASES:
        _CANVASES[layout] = make(*layout[1:])
    return _CANVASES[layout]


def _points(xs: Sequence[float], ys: Sequence[float]) -> Any:
    import numpy as np

    return np.column_stack([xs, ys]) if xs else np.empty((0, 2))


def _span(values: Sequence[float]) -> tuple[float, float]:
    """Matplotlib's own default limits: the data and 5% on either side."""
    finite = [v for v in values if math.isfinite(v)] or [0.0]
    lo, hi = min(finite), max(finite)
    pad = (hi - lo) * 0.05 if hi > lo else abs(lo) * 0.05 or 0.5
    return lo - pad, hi + pad


class _ScatterGrid:
    """`lines` x `cols` scatter plots of the objective against one param each, the best run starred."""

    def __init__(self, lines: int, cols: int) -> None:
        self.fig = _figure(4.2 * cols, 3.4 * lines, margins=(0.75, 0.2, 0.85, 0.45), wspace=0.35, hspace=0.55)
        self.axes = list(self.fig.subplots(lines, cols, squeeze=False).flat)
        self.points = []
        for ax in self.axes:
            others = ax.scatter([], [], s=22, alpha=0.7, color="#4C72B0")
            stars = ax.scatter([], [], s=160, marker="*", color="#D62728", label="best")
            ax.grid(alpha=0.3)
            self.points.append((others, stars))
        self.axes[0].legend(loc="best", fontsize=8)
        self.title = self.fig.suptitle("")


class _Parallel:
    """Parallel coordinates over `columns` axes: every other run one line of a collection, the best one on top."""

    def __init__(self, columns: int) -> None:
        from matplotlib.collections import LineCollection

        self.fig = _figure(max(5.0, 1.6 * columns), 4.0, margins=(0.35, 0.35, 0.95, 0.55))
        self.ax = ax = self.fig.subplots()
        # One collection for all the other runs: a Line2D each made the picture cost a second per 40 parents.
        self.others = LineCollection([], linewidths=1.0, alpha=0.6)
        ax.add_collection(self.others)
        (self.best,) = ax.plot([], [], color="#D62728", linewidth=3.0, label="best", zorder=3)
        self.legend = ax.legend(loc="upper right", fontsize=8)
        ax.set_xlim(-0.2, columns - 0.8)
        ax.tick_params(axis="x", labelrotation=20)
        self.ends = []
        for x in range(columns):
            ax.axvline(x, color="grey", linewidth=0.8)
            low = ax.annotate("", (x, -0.04), ha="center", va="top", fontsize=7, annotation_clip=False)
            high = ax.annotate("", (x, 1.04), ha="center", va="bottom", fontsize=7, annotation_clip=False)
            self.ends.append((low, high))
        ax.set_yticks([])
        ax.set_ylim(-0.1, 1.1)


def dag_plot(
    edges: Sequence[tuple[str, str]], nodes: Sequence[str], *, highlight: str, status: Mapping[str, str]
) -> bytes:
    """The stage DAG left to right, this stage highlighted, each stage coloured by how it ended."""
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(nodes)
    graph.add_edges_from(edges)
    for layer, generation in enumerate(nx.topological_generations(graph)):
        for node in generation:
            graph.nodes[node]["layer"] = layer
    pos = nx.multipartite_layout(graph, subset_key="layer")
    colours = {Status.FINISHED: "#9BD69B", Status.FAILED: "#F2A0A0", Status.SKIPPED: "#DDDDDD"}
    width = max(4.0, 2.2 * (1 + max(graph.nodes[n]["layer"] for n in graph)))
    fig = _figure(width, 3.0, margins=(0.5, 0.5, 0.3, 0.45))
    ax = fig.subplots()
    nx.draw_networkx_edges(graph, pos, ax=ax, arrows=True, arrowsize=16, node_size=2600)
    nx.draw_networkx_nodes(
        graph,
        pos,
        ax=ax,
        node_size=2600,
        node_color=[colours.get(status.get(n, ""), "#FFFFFF") for n in graph],
        edgecolors=["#D62728" if n == highlight else "#555555" for n in graph],
        linewidths=[3.5 if n == highlight else 1.0 for n in graph],
    )
    nx.draw_networkx_labels(graph, pos, ax=ax, font_size=9)
    ax.set_title(f"stage '{highlight}' in its pipeline", fontsize=10)
    ax.axis("off")
    return _png(fig)


def dag_files(
    edges: Sequence[tuple[str, str]], nodes: Sequence[str], *, highlight: str, status: Mapping[str, str]
) -> dict[str, bytes]:
    """`dag_plot` under its artifact path, in the same form as `parent_plots`."""
    return {DAG_PLOT: dag_plot(edges, nodes, highlight=highlight, status=status)}


def importance_plot(importances: Mapping[str, float], metric: str) -> bytes:
    """How much each param mattered to `metric` (see `reports.importance`), the most important on top."""
    if not importances:
        raise ValueError("no importances to draw")
    ranked = sorted(importances.items(), key=lambda kv: -kv[1])
    chart = _canvas(("importance", len(ranked)), _Bars)
    top = max(v for _, v in ranked) or 1.0
    for (_, value), bar, text in zip(ranked, chart.bars, chart.texts, strict=True):
        bar.set_width(value)
        text.set_position((value + top * 0.02, bar.get_y() + bar.get_height() / 2))
        text.set_text(f"{value:.2f}")
    chart.ax.set_yticks(range(len(ranked)), [_short(key) for key, _ in ranked])
    chart.ax.set_xlim(0, top * 1.15)
    chart.ax.set_title(f"param importance for {metric} (fANOVA)", fontsize=10)
    return _png(chart.fig)


def _short(label: str, width: int = 24) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


class _Bars:
    """`n` horizontal bars, the first on top, each with its value at its end."""

    def __init__(self, n: int) -> None:
        self.fig = _figure(6.0, 0.9 + 0.32 * n, margins=(2.2, 0.25, 0.45, 0.4))
        self.ax = ax = self.fig.subplots()
        self.bars = list(ax.barh(range(n), [0.0] * n, height=0.6, color="#4C72B0"))
        self.texts = [ax.text(0, 0, "", va="center", fontsize=8) for _ in range(n)]
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlabel("share of the objective's variance")
        ax.tick_params(axis="y", labelsize=9)
        ax.grid(axis="x", alpha=0.3)


def pareto_plot(
    values: Sequence[tuple[float, float]],
    on_front: Sequence[bool],
    feasible: Sequence[bool],
    chosen: int | None,
    metrics: tuple[str, str],
    modes: tuple[str, str],
) -> bytes:
    """Every child on the stage's two objectives: the Pareto front highlighted and joined by the staircase that
    bounds what it dominates, infeasible children as grey crosses, `chosen` (an index into `values`) starred.

    An infeasible child is drawn as infeasible even if `on_front` says otherwise."""
    if not len(values) == len(on_front) == len(feasible):
        raise ValueError("values, on_front and feasible differ in length")
    chart = _canvas(("pareto",), _Pareto)
    xs = [float(x) for x, _ in values]
    ys = [float(y) for _, y in values]
    front = sorted((i for i in range(len(values)) if on_front[i] and feasible[i]), key=lambda i: (xs[i], ys[i]))
    others = [i for i in range(len(values)) if feasible[i] and not on_front[i]]
    out = [i for i in range(len(values)) if not feasible[i]]
    for artist, members in ((chart.others, others), (chart.infeasible, out)):
        artist.set_offsets(_points([xs[i] for i in members], [ys[i] for i in members]))
    chart.front.set_data([xs[i] for i in front], [ys[i] for i in front])
    # The staircase turns on the side the front dominates: after each point when smaller x is better.
    chart.front.set_drawstyle("steps-post" if modes[0] == "min" else "steps-pre")
    star = [chosen] if chosen is not None else []
    chart.chosen.set_offsets(_points([xs[i] for i in star], [ys[i] for i in star]))
    chart.ax.set_xlim(*_span(xs))
    chart.ax.set_ylim(*_span(ys))
    chart.ax.set_xlabel(f"{metrics[0]} ({modes[0]})")
    chart.ax.set_ylabel(f"{metrics[1]} ({modes[1]})")
    shown = [(a, n) for a, n in zip(chart.handles, (front, others, out, star), strict=True) if n]
    chart.ax.legend([a for a, _ in shown], [a.get_label() for a, _ in shown], loc="best", fontsize=8)
    chart.ax.set_title(f"{len(front)} of {len(values)} runs on the Pareto front", fontsize=10)
    return _png(chart.fig)


class _Pareto:
    """One scatter of the children on two objectives, its artists emptied and refilled for each parent."""

    def __init__(self) -> None:
        self.fig = _figure(5.5, 4.5, margins=(0.85, 0.25, 0.65, 0.4))
        self.ax = ax = self.fig.subplots()
        self.others = ax.scatter([], [], s=22, alpha=0.6, color="#4C72B0", label="dominated")
        self.infeasible = ax.scatter([], [], s=28, marker="x", color="#999999", label="infeasible")
        (self.front,) = ax.plot(
            [], [], color="#DD8452", marker="o", markersize=6, linewidth=1.5, label="Pareto front", zorder=3
        )
        self.chosen = ax.scatter([], [], s=220, marker="*", color="#D62728", label="chosen", zorder=4)
        self.handles = (self.front, self.others, self.infeasible, self.chosen)
        ax.grid(alpha=0.3)
