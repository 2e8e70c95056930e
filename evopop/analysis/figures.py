"""Figures of a run (matplotlib, Agg canvas: no display, no pyplot global state).

Each ``figure_*`` function takes a loaded `Run` and returns a `matplotlib.figure.Figure`, or raises
`MissingData` saying what is not recorded yet; `render` turns a figure into PNG bytes.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from ..records.ids import natural_key
from ..records.schema import FAILED, OK, STOPPED
from .diversity import NETWORK
from .loading import Run
from .tables import parents_of

LINEAGE_COLOR = "#d62728"
SELECTED_COLOR = "#1f77b4"
OTHER_COLOR = "#9e9e9e"


class MissingData(Exception):
    """The data a figure needs is not recorded (yet); the message says what is missing."""


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def render(fig: Figure, fmt: str = "png") -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt)
    return buffer.getvalue()


def _ok(run: Run) -> pd.DataFrame:
    pop = run.population
    if pop.empty or "status" not in pop:
        return pop.iloc[0:0] if not pop.empty else pd.DataFrame()
    return pop[pop["status"] == OK]


def _metric_label(run: Run) -> str:
    better = "higher" if run.direction == "max" else "lower"
    return f"{run.metric} ({better} is better)"


def _plain_log_axis(axis, suffix: str = "") -> None:
    """Log-scale ticks as plain numbers (1,000 / 2.5×), with minor ticks labelled when few majors show."""

    def fmt(value, _pos=None):
        if value >= 1000:
            return f"{value:,.0f}{suffix}"
        return f"{value:.3g}{suffix}"

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(fmt))
    axis.set_minor_formatter(NullFormatter())


def _integer_generations(ax, generations) -> None:
    values = sorted({int(g) for g in generations})
    if not values:
        return
    if len(values) <= 20:
        ax.set_xticks(values)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlim(values[0] - 0.5, values[-1] + 0.5)


def _plot_lineage(ax, lineage: pd.DataFrame, column: str, label_last: str | None) -> None:
    """The followed lineage as a red line over the individuals, its last point labelled."""
    ax.plot(
        lineage["generation"],
        lineage[column],
        "-o",
        color=LINEAGE_COLOR,
        lw=2,
        ms=5,
        label="followed lineage",
        zorder=4,
    )
    if label_last is not None:
        last = lineage.iloc[-1]
        ax.annotate(
            label_last,
            (last["generation"], last[column]),
            textcoords="offset points",
            xytext=(6, 6),
            color=LINEAGE_COLOR,
            fontsize=9,
        )


# -- 1. synapses, MACs and efficiency per generation ------------------------------------------------
def figure_compression(run: Run) -> Figure:
    """Synapses, MACs and efficiency of every successful individual per generation (log scales)."""
    ok = _ok(run)
    if ok.empty:
        raise MissingData("no successful individual recorded yet")
    panels = [
        ("synapses", "living synapses (count, log scale)", "Synapses"),
        ("macs", "synaptic MACs per sample (count, log scale)", "Multiply-accumulates (nominal)"),
        ("efficiency", "efficiency (ancestor synapses / own, ×, log scale)", "Efficiency"),
    ]
    panels = [p for p in panels if p[0] in ok and ok[p[0]].notna().any()]
    fig = new_figure(4.2 * len(panels), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    lineage = run.lineage
    selected = ok["selected"].fillna(False).astype(bool)
    rng = np.random.default_rng(0)
    for ax, (column, ylabel, title) in zip(axes, panels):
        jitter = rng.uniform(-0.12, 0.12, len(ok))
        ax.scatter(
            ok["generation"] + jitter, ok[column], s=18, color=OTHER_COLOR, alpha=0.8, label="individual", zorder=2
        )
        chosen = ok[selected]
        ax.scatter(chosen["generation"], chosen[column], s=36, color=SELECTED_COLOR, label="selected", zorder=3)
        if not lineage.empty and column in lineage:
            last = lineage.iloc[-1]
            text = f"{last[column]:.2f}×" if column == "efficiency" else f"{int(last[column]):,}"
            _plot_lineage(ax, lineage, column, text)
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis, "×" if column == "efficiency" else "")
        ax.margins(y=0.12)
        ax.set_xlabel("generation (1 = ancestor)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        _integer_generations(ax, ok["generation"])
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle(f"Compression per generation: {run.run_id}")
    return fig


# -- 2. metric vs efficiency with the Pareto front ------------------------------------------------
def pareto_front(points: pd.DataFrame, x: str, y: str, y_direction: str = "max") -> pd.DataFrame:
    """Rows not dominated in (higher ``x``, better ``y``), sorted by ``x``."""
    data = points[[x, y]].dropna()
    if data.empty:
        return points.iloc[0:0]
    sign = 1.0 if y_direction == "max" else -1.0
    order = data.assign(_y=sign * data[y]).sort_values([x, "_y"], ascending=[False, False])
    keep, best = [], -math.inf
    for index, row in order.iterrows():
        if row["_y"] > best:
            keep.append(index)
            best = row["_y"]
    return points.loc[keep].sort_values(x)


def _metric_vs_efficiency_axes(ax, run: Run, title: str) -> None:
    """Efficiency on a log x axis against the selection metric: the Pareto and baselines figures."""
    ax.set_xscale("log")
    _plain_log_axis(ax.xaxis, "×")
    ax.margins(x=0.08, y=0.1)
    ax.set_xlabel("efficiency (ancestor synapses / own synapses, ×, log scale)")
    ax.set_ylabel(_metric_label(run))
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)


def figure_pareto(run: Run) -> Figure:
    ok = _ok(run)
    if ok.empty or not run.metric or run.metric not in ok or ok[run.metric].isna().all():
        raise MissingData(f"no successful individual with {run.metric} recorded yet")
    ok = ok.dropna(subset=["efficiency", run.metric])
    fig = new_figure(7.5, 5.0)
    ax = fig.subplots()
    generations = sorted(ok["generation"].unique())
    cmap = colormaps["viridis"]
    norm = Normalize(vmin=min(generations), vmax=max(max(generations), min(generations) + 1))
    sc = ax.scatter(
        ok["efficiency"],
        ok[run.metric],
        c=ok["generation"],
        cmap=cmap,
        norm=norm,
        s=30,
        edgecolors="none",
        alpha=0.85,
        zorder=2,
    )
    front = pareto_front(ok, "efficiency", run.metric, run.direction)
    ax.step(
        front["efficiency"],
        front[run.metric],
        where="post" if run.direction == "min" else "pre",
        color=LINEAGE_COLOR,
        lw=1.5,
        zorder=3,
    )
    ax.scatter(
        front["efficiency"], front[run.metric], s=90, facecolors="none", edgecolors=LINEAGE_COLOR, lw=1.8, zorder=4
    )
    for _, row in front.iterrows():
        ax.annotate(
            row["individual_id"],
            (row["efficiency"], row[run.metric]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
            color=LINEAGE_COLOR,
        )
    _metric_vs_efficiency_axes(ax, run, f"{run.metric} vs efficiency: {len(front)} individuals on the Pareto front")
    cbar = fig.colorbar(sc, ax=ax)
    cbar.set_label("generation")
    cbar.locator = MaxNLocator(integer=True)
    cbar.update_ticks()
    ax.legend(
        handles=[Line2D([], [], color=LINEAGE_COLOR, marker="o", mfc="none", label="Pareto front")],
        loc="best",
        fontsize=8,
    )
    return fig


# -- 3. the lineage tree -----------------------------------------------------------------------------
def tree_layout(population: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """(x = generation, y) per individual: children ordered under their parents, generations centred."""
    pos: dict[str, tuple[float, float]] = {}
    for generation in sorted(population["generation"].unique()):
        group = population[population["generation"] == generation].copy()
        group["_parent_y"] = group["parent_id"].map(lambda p: pos.get(p, (0, 0))[1] if isinstance(p, str) else 0.0)
        group["_index"] = group["offspring_index"].fillna(0) if "offspring_index" in group else 0
        group = group.sort_values(["_parent_y", "_index"], ascending=[False, True])
        n = len(group)
        for i, individual_id in enumerate(group["individual_id"]):
            pos[individual_id] = (float(generation), (n - 1) / 2.0 - i)
    return pos


def figure_lineage_tree(run: Run) -> Figure:
    pop = run.population
    if pop.empty:
        raise MissingData("no individual recorded yet")
    pos = tree_layout(pop)
    generations = sorted(pop["generation"].unique())
    widest = int(pop.groupby("generation").size().max())
    fig = new_figure(max(6.0, 1.6 * len(generations) + 2.5), max(3.5, 0.42 * widest + 1.8))
    ax = fig.subplots()
    on_line = set(run.lineage["individual_id"]) if not run.lineage.empty else set()
    mated = 0
    for _, row in pop.iterrows():
        for i, parent in enumerate(parents_of(row)):  # every parent of a multi-parent offspring; the first solid
            if parent not in pos:
                continue
            (x0, y0), (x1, y1) = pos[parent], pos[row["individual_id"]]
            followed = i == 0 and parent in on_line and row["individual_id"] in on_line
            mated += i > 0
            ax.plot(
                [x0, x1],
                [y0, y1],
                color=LINEAGE_COLOR if followed else "#bdbdbd",
                lw=2.8 if followed else 0.9,
                ls="-" if i == 0 else ":",
                zorder=3 if followed else 1,
            )
    ok = pop[pop["status"] == OK]
    failed = pop[pop["status"] == FAILED]
    stopped = pop[pop["status"] == STOPPED]
    metric = run.metric if run.metric in pop else None
    xy = np.array([pos[i] for i in ok["individual_id"]]) if len(ok) else np.zeros((0, 2))
    if metric and len(ok) and ok[metric].notna().any():
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=ok[metric], cmap="viridis", s=110, zorder=4, edgecolors="white")
        fig.colorbar(sc, ax=ax).set_label(_metric_label(run))
    elif len(ok):
        ax.scatter(xy[:, 0], xy[:, 1], color=SELECTED_COLOR, s=110, zorder=4)
    chosen = pop[pop["selected"].fillna(False).astype(bool)]
    if len(chosen):
        cxy = np.array([pos[i] for i in chosen["individual_id"]])
        ax.scatter(cxy[:, 0], cxy[:, 1], s=230, facecolors="none", edgecolors="black", lw=1.6, zorder=5)
    if len(failed):
        fxy = np.array([pos[i] for i in failed["individual_id"]])
        ax.scatter(fxy[:, 0], fxy[:, 1], marker="X", color="#b71c1c", s=120, zorder=5)
    if len(stopped):  # successive halving stopped them early: trained less, never selected
        sxy = np.array([pos[i] for i in stopped["individual_id"]])
        ax.scatter(sxy[:, 0], sxy[:, 1], marker="o", facecolors="white", edgecolors=OTHER_COLOR, s=70, zorder=4)
    if len(pop) <= 60:
        for individual_id, (x, y) in pos.items():
            ax.annotate(individual_id, (x, y), textcoords="offset points", xytext=(11, 4), fontsize=8, zorder=6)
    ax.set_xlabel("generation (1 = ancestor)")
    ax.set_ylabel("individuals (grouped by parent)")
    ax.set_yticks([])
    ax.set_xticks(generations)
    ax.set_xlim(min(generations) - 0.4, max(generations) + 0.7)
    ax.set_ylim(-(widest - 1) / 2 - 0.8, (widest - 1) / 2 + 0.8)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    handles = [
        Line2D([], [], color=LINEAGE_COLOR, lw=2.8, label="followed lineage"),
        Line2D([], [], color="#bdbdbd", lw=0.9, label="parent → offspring"),
        Line2D([], [], marker="o", ls="none", mfc="none", mec="black", ms=12, label="selected"),
        Line2D([], [], marker="X", ls="none", color="#b71c1c", ms=9, label=f"failed ({len(failed)})"),
    ]
    if mated:
        handles.insert(2, Line2D([], [], color="#bdbdbd", lw=0.9, ls=":", label="another parent (mating)"))
    if len(stopped):
        label = f"stopped early ({len(stopped)})"
        handles.append(Line2D([], [], marker="o", ls="none", mfc="white", mec=OTHER_COLOR, ms=8, label=label))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    ax.set_title(f"Lineage tree: {len(pop)} individuals, {len(failed)} failed")
    return fig


# -- 4. sibling diversity heatmaps --------------------------------------------------------------------
def jaccard_matrix(pairs: pd.DataFrame, generation: int, scope: str = NETWORK, value: str = "jaccard"):
    """(ids, n x n matrix) of one generation's pairs in one scope (diagonal 0)."""
    sel = pairs[(pairs["generation"] == generation) & (pairs["scope"] == scope)]
    ids = sorted(set(sel["a"]) | set(sel["b"]), key=natural_key)
    index = {i: k for k, i in enumerate(ids)}
    m = np.zeros((len(ids), len(ids)))
    for a, b, v in zip(sel["a"], sel["b"], sel[value]):
        m[index[a], index[b]] = m[index[b], index[a]] = v
    return ids, m


def figure_sibling_heatmaps(run: Run, max_panels: int = 8) -> Figure:
    pairs = run.diversity.pairs
    if pairs.empty:
        raise MissingData(
            "no diversity records (RUN_DIR/diversity/) for any generation with two or more successful individuals"
        )
    generations = sorted(int(g) for g in pairs["generation"].unique())[-max_panels:]
    net = pairs[pairs["scope"] == NETWORK]
    vmax = float(np.ceil(net["jaccard"].max() * 10) / 10) if len(net) else 1.0
    cols = min(4, len(generations))
    rows = math.ceil(len(generations) / cols)
    fig = new_figure(3.8 * cols + 1.0, 3.6 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for ax in axes.flat[len(generations) :]:
        ax.set_visible(False)
    for ax, generation in zip(axes.flat, generations):
        ids, m = jaccard_matrix(pairs, generation)
        shown = m.copy()
        np.fill_diagonal(shown, np.nan)  # self-distance: grey, not data
        cmap = colormaps["magma"].with_extremes(bad="#e0e0e0")
        image = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=max(vmax, 1e-6))
        ax.set_xticks(range(len(ids)), ids, rotation=90, fontsize=7 if len(ids) > 8 else 8)
        ax.set_yticks(range(len(ids)), ids, fontsize=7 if len(ids) > 8 else 8)
        if len(ids) <= 10:
            for i in range(len(ids)):
                for j in range(len(ids)):
                    if i != j:
                        ax.text(
                            j,
                            i,
                            f"{m[i, j]:.2f}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if m[i, j] < 0.6 * vmax else "black",
                        )
        sib = net[(net["generation"] == generation) & net["siblings"]]
        mean = f", sibling mean {sib['jaccard'].mean():.3f}" if len(sib) else ""
        ax.set_title(f"generation {generation} ({len(ids)} individuals{mean})", fontsize=9)
        ax.set_xlabel("individual")
        ax.set_ylabel("individual")
    if image is not None:
        cbar = fig.colorbar(image, ax=axes, shrink=0.85)
        cbar.set_label("Jaccard distance of living synapses\n(0 = identical, 1 = disjoint)")
    fig.suptitle("Pairwise structural diversity within each generation (whole network)")
    return fig


def figure_diversity_trends(run: Run) -> Figure:
    """Sibling diversity per generation: whole-network distances (left), per layer (right)."""
    summary = run.diversity.summary
    if summary.empty:
        raise MissingData("no diversity summary (RUN_DIR/diversity_summary/) recorded yet")
    sib = summary[(summary["group"] == "siblings") & (summary["count"] > 0)]
    if sib.empty:
        raise MissingData("no generation has two or more successful siblings yet")
    net = sib[sib["scope"] == NETWORK]
    fig = new_figure(11.5, 4.2)
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.2])
    labels = {
        "jaccard": "synapse Jaccard distance",
        "hamming_fraction": "Hamming distance / dense synapses",
        "neuron_jaccard": "neuron Jaccard distance",
        "functional_disagreement": "prediction disagreement",
    }
    for quantity, label in labels.items():
        rows = net[net["quantity"] == quantity]
        if rows.empty or rows["mean"].isna().all():
            continue
        agg = rows.groupby("generation").agg(mean=("mean", "mean"), lo=("min", "min"), hi=("max", "max"))
        left.errorbar(
            agg.index,
            agg["mean"],
            yerr=[agg["mean"] - agg["lo"], agg["hi"] - agg["mean"]],
            marker="o",
            capsize=3,
            label=label,
        )
    left.set_xlabel("generation")
    left.set_ylabel("distance between siblings (fraction, 0–1)")
    left.set_title("Sibling diversity (mean, bars: min–max)")
    left.set_ylim(bottom=0)
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    _integer_generations(left, net["generation"])
    per_layer = sib[(sib["scope"] != NETWORK) & (sib["quantity"] == "jaccard")]
    table = per_layer.groupby(["scope", "generation"])["mean"].mean().unstack("generation")
    order = [l for l in run.layer_names if l in table.index] + [l for l in table.index if l not in run.layer_names]
    table = table.loc[order]
    image = right.imshow(table.to_numpy(), aspect="auto", cmap="magma", vmin=0, vmax=1)
    right.set_xticks(range(table.shape[1]), [str(g) for g in table.columns])
    right.set_yticks(range(table.shape[0]), table.index, fontsize=8)
    if table.size <= 200:
        for (i, j), v in np.ndenumerate(table.to_numpy()):
            if np.isfinite(v):
                right.text(
                    j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black"
                )
    right.set_xlabel("generation")
    right.set_ylabel("synaptic layer")
    right.set_title("Mean sibling Jaccard distance per layer")
    fig.colorbar(image, ax=right).set_label("Jaccard distance (0 = identical, 1 = disjoint)")
    return fig


# -- 5. per-layer living fractions along the followed lineage ---------------------------------------
def lineage_layer_fractions(run: Run) -> pd.DataFrame:
    """Living fraction, layers x generations, along the followed lineage."""
    line = run.lineage
    if line.empty:
        return pd.DataFrame()
    if not run.layers.empty:
        rows = run.layers[run.layers["individual_id"].isin(set(line["individual_id"]))]
        table = rows.pivot_table(index="layer", columns="generation", values="living_fraction", aggfunc="first")
    elif run.layer_names and "layer_fractions" in line:
        data = {
            int(r["generation"]): list(r["layer_fractions"])
            for _, r in line.iterrows()
            if r["layer_fractions"] is not None
        }
        table = pd.DataFrame(data, index=run.layer_names[: len(next(iter(data.values()), []))])
    else:
        return pd.DataFrame()
    order = [l for l in run.layer_names if l in table.index] + [l for l in table.index if l not in run.layer_names]
    return table.loc[order]


def figure_layer_fractions(run: Run) -> Figure:
    table = lineage_layer_fractions(run)
    if table.empty:
        raise MissingData("no followed lineage yet (no generation's selection is recorded) or no per-layer counts")
    ids = dict(zip(run.lineage["generation"], run.lineage["individual_id"]))
    fig = new_figure(max(5.5, 1.0 * table.shape[1] + 3.5), max(3.0, 0.38 * table.shape[0] + 1.8))
    ax = fig.subplots()
    image = ax.imshow(table.to_numpy(dtype=float), aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(table.shape[1]), [f"{g}\n{ids.get(g, '')}" for g in table.columns], fontsize=8)
    ax.set_yticks(range(table.shape[0]), table.index, fontsize=8)
    if table.size <= 300:
        for (i, j), v in np.ndenumerate(table.to_numpy(dtype=float)):
            if np.isfinite(v):
                ax.text(
                    j,
                    i,
                    f"{100 * v:.0f}%",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v < 0.55 else "black",
                )
    ax.set_xlabel("generation / individual of the followed lineage")
    ax.set_ylabel("synaptic layer (input → output)")
    ax.set_title("Living synapses per layer along the followed lineage")
    fig.colorbar(image, ax=ax).set_label("living fraction of the layer's synapses (0–1)")
    return fig


# -- 7. what evolution delivers: MACs counted three ways, and measured latency ------------------------
_MACS = (
    ("macs", "nominal (masked)", "-", "o"),
    ("effective_macs", "effective", "--", "s"),
    ("compact_macs", "compacted", "-", "D"),
)
_LATENCIES = (("latency_cpu_b1_ms", "CPU, batch 1"), ("latency_cpu_b32_ms", "CPU, batch 32"), ("latency_gpu_ms", "GPU"))


def figure_delivered(run: Run) -> Figure:
    """Nominal vs effective vs compacted MACs, and the compacted network's measured latency, per generation."""
    ok = _ok(run)
    if ok.empty or "compact_macs" not in ok or ok["compact_macs"].isna().all():
        raise MissingData("no compacted individual recorded (compaction.enabled was off, or the run predates it)")
    latencies = [(c, label) for c, label in _LATENCIES if c in ok and ok[c].notna().any()]
    fig = new_figure(4.6 * (1 + len(latencies)), 3.9)
    axes = fig.subplots(1, 1 + len(latencies), squeeze=False)[0]
    lineage = run.lineage
    rng = np.random.default_rng(0)
    jitter = rng.uniform(-0.1, 0.1, len(ok))
    ax = axes[0]
    colors = {"macs": OTHER_COLOR, "effective_macs": "#ff7f0e", "compact_macs": "#2ca02c"}
    for offset, (column, label, style, marker) in zip((-0.22, 0.0, 0.22), _MACS):
        if column not in ok or ok[column].isna().all():
            continue
        ax.scatter(
            ok["generation"] + offset + jitter * 0.5,
            ok[column],
            s=12,
            color=colors[column],
            alpha=0.45,
            marker=marker,
            zorder=2,
        )
        if not lineage.empty and column in lineage:
            ax.plot(
                lineage["generation"] + offset,
                lineage[column],
                style,
                marker=marker,
                color=colors[column],
                lw=2,
                ms=5,
                label=label,
                zorder=3,
            )
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
    ax.set_ylabel("synaptic MACs per sample (count, log scale)")
    ax.set_title("MACs: counted, effective, compacted")
    ax.legend(loc="lower left", fontsize=8)
    for ax, (column, label) in zip(axes[1:], latencies):
        ax.scatter(
            ok["generation"] + jitter, ok[column], s=18, color=OTHER_COLOR, alpha=0.8, label="individual", zorder=2
        )
        if not lineage.empty and column in lineage:
            first, last = lineage[column].iloc[0], lineage[column].iloc[-1]
            measured = first and last and not (math.isnan(first) or math.isnan(last))
            _plot_lineage(ax, lineage, column, f"{first / last:.2f}× faster" if measured else None)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("compacted network: ms per forward pass")
        ax.set_title(f"Measured latency: {label}")
        ax.legend(loc="lower left", fontsize=8)
    for ax in axes:
        ax.set_xlabel("generation (1 = ancestor)")
        ax.grid(True, which="both", alpha=0.3)
        _integer_generations(ax, ok["generation"])
    fig.suptitle(f"What the evolved networks deliver: {run.run_id}")
    return fig


# -- baselines at matched sparsity ------------------------------------------------------------------
BASELINE_STYLES = {
    "magnitude": ("#1f77b4", "s"),
    "random": ("#7f7f7f", "x"),
    "imp": ("#2ca02c", "^"),
    "imp_rewind": ("#9467bd", "v"),
}


def figure_rungs(run: Run, max_panels: int = 6) -> Figure:
    """Successive halving: each offspring's metric after each rung it trained, per generation (the
    last ``max_panels``); a line ends where its offspring stopped, the selected one is starred."""
    rungs = run.rungs
    if rungs.empty or not run.metric or run.metric not in rungs:
        raise MissingData("no rung recorded: the run does not use successive halving (selection.halving)")
    generations = sorted(rungs["generation"].unique())[-max_panels:]
    fig = new_figure(min(4.2 * len(generations), 15.0), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(generations), sharey=True, squeeze=False)[0])
    chosen = set(run.population.loc[run.population["selected"].fillna(False).astype(bool), "individual_id"])
    for ax, generation in zip(axes, generations):
        rows = rungs[(rungs["generation"] == generation) & (rungs["status"] == OK)]
        full = int(rows["epochs"].max())
        for individual_id, line in rows.groupby("individual_id", sort=False):
            line = line.sort_values("rung")
            reached = int(line["epochs"].iloc[-1]) == full
            color = LINEAGE_COLOR if individual_id in chosen else (SELECTED_COLOR if reached else OTHER_COLOR)
            ax.plot(line["epochs"], line[run.metric], color=color, lw=1.6 if reached else 0.9, marker="o", ms=3)
            end = line.iloc[-1]
            if individual_id in chosen:
                ax.scatter([end["epochs"]], [end[run.metric]], marker="*", s=160, color=LINEAGE_COLOR, zorder=5)
        epochs = sorted(rows["epochs"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(epochs, [str(int(e)) for e in epochs])
        ax.xaxis.set_minor_formatter(NullFormatter())
        offspring = rows["individual_id"].nunique()
        total = rows.sort_values("rung").groupby("individual_id")["epochs"].max().sum()
        ax.set_title(f"generation {generation}: {offspring} offspring, {int(total)} of {offspring * full} epochs")
        ax.set_xlabel("epochs trained (rung ends)")
    axes[0].set_ylabel(_metric_label(run))
    handles = [
        Line2D([], [], color=OTHER_COLOR, lw=0.9, marker="o", ms=3, label="stopped at a rung"),
        Line2D([], [], color=SELECTED_COLOR, lw=1.6, marker="o", ms=3, label="trained to the end"),
        Line2D([], [], color=LINEAGE_COLOR, marker="*", ls="none", ms=11, label="selected"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    return fig


def figure_baselines(run: Run) -> Figure:
    """Metric against efficiency: every evolved offspring, the followed lineage, and each baseline
    kind (a line through its individuals in efficiency order). ``run`` includes the baselines."""
    ok = _ok(run)
    if ok.empty or not run.metric or "kind" not in ok:
        raise MissingData("no baseline recorded yet")
    ok = ok.dropna(subset=["efficiency", run.metric])
    baselines = ok[~ok["kind"].isin(["ancestor", "offspring"])]
    if baselines.empty:
        raise MissingData("no successful baseline recorded yet")
    evolved = ok[ok["kind"].isin(["ancestor", "offspring"])]
    fig = new_figure(7.5, 5.0)
    ax = fig.subplots()
    ax.scatter(evolved["efficiency"], evolved[run.metric], s=22, color="#bbbbbb", label="offspring", zorder=2)
    lineage = run.lineage.dropna(subset=["efficiency", run.metric]) if not run.lineage.empty else run.lineage
    if not lineage.empty:
        ax.plot(
            lineage["efficiency"],
            lineage[run.metric],
            "-o",
            color=LINEAGE_COLOR,
            lw=2,
            ms=5,
            label="followed lineage (synthesis)",
            zorder=4,
        )
    for kind, group in baselines.groupby("kind"):
        color, marker = BASELINE_STYLES.get(kind, ("black", "d"))
        group = group.sort_values("efficiency")
        ax.plot(
            group["efficiency"],
            group[run.metric],
            ls="--",
            marker=marker,
            color=color,
            lw=1.2,
            ms=6,
            label=kind,
            zorder=3,
        )
    _metric_vs_efficiency_axes(ax, run, f"{run.metric} vs efficiency: synthesis and the baselines at matched sparsity")
    ax.legend(loc="best", fontsize=8)
    return fig


FIGURES = {
    "compression": (
        figure_compression,
        "Synapses, MACs and efficiency per generation",
        "Every successful individual (grey), the selected ones (blue) and the followed lineage (red). "
        "MACs are nominal (masked, not compacted).",
    ),
    "pareto": (
        figure_pareto,
        "Metric vs efficiency",
        "Successful individuals coloured by generation; the Pareto front (no individual is both more "
        "efficient and better) is circled and labelled.",
    ),
    "lineage_tree": (
        figure_lineage_tree,
        "Lineage tree",
        "Generations left to right; lines join parents to offspring; the followed lineage is red; "
        "selected individuals are ringed; failed ones are marked ✕.",
    ),
    "sibling_diversity": (
        figure_sibling_heatmaps,
        "Pairwise diversity within each generation",
        "Jaccard distance between the living-synapse sets of every pair of successful "
        "individuals of a generation (last 8 generations).",
    ),
    "diversity_trends": (
        figure_diversity_trends,
        "Sibling diversity across generations",
        "Mean distance between offspring of the same parent: structural (synapses, neurons) and "
        "functional (argmax disagreement on a fixed held-out batch, where recorded).",
    ),
    "layer_fractions": (
        figure_layer_fractions,
        "Living fraction per layer along the followed lineage",
        "Which layers the evolution thins out, generation by generation.",
    ),
    "delivered": (
        figure_delivered,
        "Nominal, effective and compacted MACs; measured latency",
        "Nominal MACs count the masked network's living synapses; effective ones only those that can reach "
        "the output; compacted ones are what the network without its dead neurons computes (what it costs "
        "to run). Latency is the compacted network's fastest forward pass of several, timed by its trainer "
        "(compare within a run: trainers share the machine).",
    ),
}
