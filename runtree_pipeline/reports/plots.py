"""Pictures stored with the runs, for the MLflow UI: each parent's children against their params, and the DAG.

Plain functions of plain data, so that they can be drawn in another process while the tree is still being
recorded (see `execution.painter`).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from runtree_pipeline.plan.objective import Objective
from runtree_pipeline.plan.params import flatten
from runtree_pipeline.results import LeafResult
from runtree_pipeline.states import Status

log = logging.getLogger(__name__)

OBJECTIVE_PLOT = "plots/objective_vs_params.png"
PARALLEL_PLOT = "plots/parallel_coordinates.png"
DAG_PLOT = "plots/dag.png"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
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
) -> dict[str, bytes]:
    """The objective against every param that varies among the parent's leaves, and across all of them at once.

    `objective.metric` must be set.
    """
    judged = objective
    scored = [leaf for leaf in leaves if leaf.objective is not None]
    if len(scored) < 2:
        return {}
    rows = [flatten(dict(leaf.params)) for leaf in scored]
    keys = [k for k in sorted({k for r in rows for k in r}) if len({repr(r.get(k)) for r in rows}) > 1]
    if not keys:
        return {}
    values = [leaf.objective for leaf in scored]
    best = [leaf.run_id == best_run_id for leaf in scored]
    return {
        OBJECTIVE_PLOT: _objective_vs_params(rows, keys, values, best, judged),
        PARALLEL_PLOT: _parallel(rows, keys, values, best, judged),
    }


def _objective_vs_params(rows, keys, values, best, objective: Objective) -> bytes:
    plt = _pyplot()
    cols = min(len(keys), 3)
    fig, axes = plt.subplots(
        math.ceil(len(keys) / cols), cols, figsize=(4.2 * cols, 3.4 * math.ceil(len(keys) / cols)), squeeze=False
    )
    for ax, key in zip(axes.flat, keys, strict=False):
        xs, labels = _axis_values([r.get(key) for r in rows])
        plain = [i for i, b in enumerate(best) if not b]
        ax.scatter([xs[i] for i in plain], [values[i] for i in plain], s=22, alpha=0.7, color="#4C72B0")
        top = [i for i, b in enumerate(best) if b]
        ax.scatter([xs[i] for i in top], [values[i] for i in top], s=160, marker="*", color="#D62728", label="best")
        if labels:
            ax.set_xticks(range(len(labels)), [lbl[:12] for lbl in labels], rotation=30)
        ax.set_xlabel(key)
        ax.set_ylabel(objective.metric)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    axes.flat[0].legend(loc="best", fontsize=8)
    fig.suptitle(f"{objective.metric} ({objective.mode}) over {len(rows)} runs")
    return _png(fig)


def _parallel(rows, keys, values, best, objective: Objective) -> bytes:
    plt = _pyplot()
    columns = []
    for key in keys:
        xs, labels = _axis_values([r.get(key) for r in rows])
        columns.append((key, xs, labels))
    columns.append((objective.metric, list(values), None))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(columns)), 4.0))
    norm = []
    for _, xs, _ in columns:
        lo, hi = min(xs), max(xs)
        norm.append([(x - lo) / (hi - lo) if hi > lo else 0.5 for x in xs])
    lo, hi = min(values), max(values)
    # Shades run from the lowest value to the highest; the map turns so that the best end is always the dark one.
    higher_is_better = objective.better(1.0, 0.0)
    cmap = plt.get_cmap("viridis_r" if higher_is_better else "viridis")
    from matplotlib.collections import LineCollection

    # One collection for all the other runs: a Line2D each made the picture cost a second per 40 parents.
    xs = list(range(len(columns)))
    others = [i for i in range(len(rows)) if not best[i]]
    shades = [(values[i] - lo) / (hi - lo) if hi > lo else 0.5 for i in others]
    lines = [list(zip(xs, [column[i] for column in norm], strict=True)) for i in others]
    ax.add_collection(LineCollection(lines, colors=[cmap(shade) for shade in shades], linewidths=1.0, alpha=0.6))
    for i in (i for i in range(len(rows)) if best[i]):
        ax.plot(xs, [column[i] for column in norm], color="#D62728", linewidth=3.0, label="best", zorder=3)
    ax.set_xlim(-0.2, len(columns) - 0.8)
    ax.set_xticks(range(len(columns)), [c[0] for c in columns], rotation=20)
    for x, (_, xs, labels) in enumerate(columns):
        ax.axvline(x, color="grey", linewidth=0.8)
        low, high = (labels[0], labels[-1]) if labels else (f"{min(xs):.3g}", f"{max(xs):.3g}")
        ax.annotate(low, (x, -0.04), ha="center", va="top", fontsize=7, annotation_clip=False)
        ax.annotate(high, (x, 1.04), ha="center", va="bottom", fontsize=7, annotation_clip=False)
    ax.set_yticks([])
    ax.set_ylim(-0.1, 1.1)
    if any(best):
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"parameters → {objective.metric} ({objective.mode}); darker is better", fontsize=10)
    return _png(fig)


def dag_plot(
    edges: Sequence[tuple[str, str]], nodes: Sequence[str], *, highlight: str, status: Mapping[str, str]
) -> bytes:
    """The stage DAG left to right, this stage highlighted, each stage coloured by how it ended."""
    import networkx as nx

    plt = _pyplot()
    graph = nx.DiGraph()
    graph.add_nodes_from(nodes)
    graph.add_edges_from(edges)
    for layer, generation in enumerate(nx.topological_generations(graph)):
        for node in generation:
            graph.nodes[node]["layer"] = layer
    pos = nx.multipartite_layout(graph, subset_key="layer")
    colours = {Status.FINISHED: "#9BD69B", Status.FAILED: "#F2A0A0", Status.SKIPPED: "#DDDDDD"}
    fig, ax = plt.subplots(figsize=(max(4.0, 2.2 * (1 + max(graph.nodes[n]["layer"] for n in graph))), 3.0))
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
