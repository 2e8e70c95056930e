"""An HTML report of a run, finished or in progress: RUN_DIR/report/index.html + one PNG per figure.

    build_report("runs/tiny-...")          # -> Path("runs/tiny-.../report/index.html")

The page is self-contained apart from the PNG files next to it (no scripts, no external styles).
Figures whose data is not recorded yet are skipped, and the page says why. Nothing in the run's
records is written: the report only reads them (and writes under ``out_dir``).
"""

from __future__ import annotations

import html
import warnings
from dataclasses import replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import pandas as pd

from ..records.ids import natural_key
from ..records.run import RunRecords
from ..records.schema import BASELINE_KINDS, FAILED, OK
from .diversity import NETWORK
from .generation_diversity import generation_diversity, layers_of_run
from .loading import Diversity, Run, best_first, load_run
from .tables import lineage_table, population_table


def build_report(
    run_dir: str | Path, out_dir: str | Path | None = None, compute_missing_diversity: bool = True
) -> Path:
    """Write the report of ``run_dir`` to ``out_dir`` (default RUN_DIR/report); returns index.html's path.

    compute_missing_diversity: for generations with two or more successful individuals but no
    diversity records, compute the structural diversity from their checkpoints for the report
    (in memory; the records are not written). Functional diversity is only shown where recorded.
    """
    run_dir = str(run_dir)
    run = load_run(run_dir)
    notes: list[str] = []
    if compute_missing_diversity:
        computed = fill_missing_diversity(run)
        if computed:
            notes.append(
                f"Structural diversity of generation(s) {', '.join(map(str, computed))} was computed from "
                "the checkpoints for this report (not recorded in RUN_DIR/diversity/)."
            )
    storage = RunRecords(run_dir).report_storage(None if out_dir is None else str(out_dir))
    sections = []
    from .figures import FIGURES, MissingData, figure_baselines, render

    evolved = _without_baselines(run)  # figures follow the method's individuals only
    for name, (make, title, caption) in FIGURES.items():
        try:
            fig = make(evolved)
        except MissingData as exc:
            sections.append(_missing(title, str(exc)))
            continue
        except Exception as exc:  # a broken figure must not cost the rest of the report
            warnings.warn(f"figure {name} failed: {type(exc).__name__}: {exc}", stacklevel=2)
            sections.append(_missing(title, f"could not be drawn ({type(exc).__name__}: {exc})"))
            continue
        storage.write_bytes(f"{name}.png", render(fig, "png"))
        sections.append(
            f'<section><h2>{_e(title)}</h2><figure><img src="{name}.png" alt="{_e(title)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure></section>"
        )
    from .figures import figure_rungs

    baselines_figure = _write_figure(storage, "baselines", lambda: figure_baselines(run))
    rungs_figure = _write_figure(storage, "rungs", lambda: figure_rungs(run))
    page = _page(run, sections, notes, baselines_figure, rungs_figure)
    storage.write_bytes("index.html", page.encode("utf-8"))
    target = storage.path("index.html")
    return Path(target) if storage.is_local else target  # type: ignore[return-value]


def fill_missing_diversity(run: Run) -> list[int]:
    """Add in-memory structural diversity for generations without records; returns those generations."""
    if run.population.empty:
        return []
    recorded = set(run.diversity.generations())
    ok = run.population[run.population["status"] == OK]
    counts = ok.groupby("generation").size()
    missing = [int(g) for g, n in counts.items() if n >= 2 and int(g) not in recorded]
    if not missing:
        return []
    records = RunRecords(run.run_dir)
    layers = layers_of_run(records)
    pairs, summaries = [run.diversity.pairs], [run.diversity.summary]
    done = []
    for generation in missing:
        try:
            p, s = generation_diversity(records, generation, layers, run.metric_columns)
        except Exception as exc:  # unreadable checkpoints: report without them
            warnings.warn(f"diversity of generation {generation}: {type(exc).__name__}: {exc}", stacklevel=2)
            continue
        pairs.append(p)
        summaries.append(s)
        done.append(generation)
    frames = [f for f in pairs if len(f)]
    sframes = [f for f in summaries if len(f)]
    if frames:
        merged = pd.concat(frames, ignore_index=True)
        merged["generation"] = merged["generation"].astype("int32")
        run.diversity = Diversity(merged, run.diversity.summary)
    if sframes:
        merged = pd.concat(sframes, ignore_index=True)
        merged["generation"] = merged["generation"].astype("int32")
        run.diversity = Diversity(run.diversity.pairs, merged)
    return done


# -- tables -----------------------------------------------------------------------------------------
def _sibling_stat(group: pd.DataFrame, quantity: str, column: str = "mean") -> float:
    """One quantity's ``column`` over a generation's sibling groups: summed counts, else averaged over parents."""
    values = group.loc[group["quantity"] == quantity, column]
    if values.empty:
        return float("nan")
    return values.sum() if column == "count" else values.mean()


def diversity_table(run: Run) -> pd.DataFrame:
    """Per generation: sibling diversity (whole network) and the spread of the selection metric."""
    summary = run.diversity.summary
    if summary.empty:
        return pd.DataFrame()
    sib = summary[(summary["group"] == "siblings") & (summary["scope"] == NETWORK)]
    rows = []
    for generation, group in sib.groupby("generation"):
        stat = partial(_sibling_stat, group)
        row = {
            "generation": int(generation),
            "siblings": int(stat("living_fraction", "count")),
            "parents": int((group["quantity"] == "living_fraction").sum()),
            "Jaccard distance": stat("jaccard"),
            "Hamming / dense": stat("hamming_fraction"),
            "neuron Jaccard": stat("neuron_jaccard"),
            "prediction disagreement": stat("functional_disagreement"),
            "living fraction std": stat("living_fraction", "std"),
        }
        if run.metric:
            row[f"{run.metric} std"] = stat(run.metric, "std")
            row[f"{run.metric} range"] = stat(run.metric, "range")
        rows.append(row)
    table = pd.DataFrame(rows)
    for col in table.columns[3:]:
        table[col] = table[col].map(lambda v: "-" if pd.isna(v) else f"{v:.4f}")
    return table


def _without_baselines(run: Run) -> Run:
    population = run.population
    if population.empty or "kind" not in population:
        return run
    return replace(run, population=population[~population["kind"].isin(BASELINE_KINDS)].reset_index(drop=True))


def baseline_table(run: Run) -> pd.DataFrame:
    """Each selected offspring beside the baselines at its per-layer synapse counts: does stochastic
    synthesis beat deterministic magnitude pruning and random pruning, trained with the same recipe?"""
    population, metric = run.population, run.metric
    if population.empty or "kind" not in population or not metric:
        return pd.DataFrame()
    baselines = population[population["kind"].isin(BASELINE_KINDS)]
    if baselines.empty:
        return pd.DataFrame()
    by_id = population.set_index("individual_id")
    rows = []
    for offspring_id, group in baselines.groupby(baselines["individual_id"].str.rsplit("-", n=1).str[0]):
        offspring = by_id.loc[offspring_id]
        row = {
            "generation": int(offspring["generation"]),
            "offspring": offspring_id,
            "synapses": f"{int(offspring['synapses']):,}",
            f"synthesis {metric}": offspring[metric],
        }
        for _, b in group.iterrows():
            row[f"{b['kind']} {metric}"] = b[metric]
            row[f"synthesis − {b['kind']}"] = offspring[metric] - b[metric]
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("generation")
    for col in table.columns[3:]:
        shown = "{:+.4f}" if "−" in col else "{:.4f}"  # differences carry their sign
        table[col] = table[col].map(lambda v, shown=shown: "-" if pd.isna(v) else shown.format(v))
    return table


def _failures(run: Run) -> pd.DataFrame:
    pop = run.population
    if pop.empty:
        return pop
    failed = pop[pop["status"] == FAILED]  # offspring halving stopped early did not fail
    if failed.empty:
        return failed
    first = failed["error"].fillna("").map(lambda e: (e.strip().splitlines() or [""])[0][:200])
    return pd.DataFrame(
        {
            "generation": failed["generation"],
            "individual_id": failed["individual_id"],
            "attempts": failed.get("attempts"),
            "failure": failed["failure"] if "failure" in failed else None,  # whose fault; older runs lack it
            "error": first,
        }
    )


# -- HTML -------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#555} .state{font-weight:600}
table{border-collapse:collapse;font-size:.9em;margin:.6em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} td:nth-child(2),th:nth-child(2){text-align:left}
figure{margin:0} img{max-width:100%;height:auto;border:1px solid #eee} figcaption{color:#555;font-size:.9em}
.missing{color:#8a6d3b;background:#fcf8e3;border:1px solid #faebcc;padding:.5em .8em;border-radius:4px}
.note{color:#31708f;background:#d9edf7;border:1px solid #bce8f1;padding:.5em .8em;border-radius:4px}
details{margin:1em 0} code{background:#f5f5f5;padding:0 .2em}
"""


def _e(text) -> str:
    return html.escape(str(text))


def _missing(title: str, reason: str) -> str:
    return f'<section><h2>{_e(title)}</h2><p class="missing">Skipped: {_e(reason)}.</p></section>'


def _table(frame: pd.DataFrame, empty: str) -> str:
    if frame is None or frame.empty:
        return f'<p class="missing">{_e(empty)}</p>'
    return frame.to_html(index=False, border=0, na_rep="-", escape=True)


def _config_line(run: Run) -> str:
    c = run.config
    task = (c.get("task") or {}).get("name", "?")
    evo = c.get("evolution") or {}
    env = evo.get("environment") or {}
    sel = c.get("selection") or {}
    parts = [
        f"task <code>{_e(task)}</code>",
        f"{_e(evo.get('generations', '?'))} generations × {_e(evo.get('offspring', '?'))} offspring",
        f"environment C = {_e(env.get('c', '?'))} ({_e(env.get('mode', '?'))})",
        f"selection <code>{_e(sel.get('rule', '?'))}</code> on <code>{_e(run.metric)}</code> ({_e(run.direction)})",
        f"seed {_e((c.get('run') or {}).get('seed', '?'))}",
    ]
    return " · ".join(parts)


def _write_figure(storage, name: str, make) -> str | None:
    """Draw and store one figure; its file name, or None where there is nothing to draw (or it failed)."""
    from .figures import MissingData, render

    try:
        fig = make()
    except MissingData:
        return None
    except Exception as exc:  # a broken figure must not cost the rest of the report
        warnings.warn(f"figure {name} failed: {type(exc).__name__}: {exc}", stacklevel=2)
        return None
    storage.write_bytes(f"{name}.png", render(fig, "png"))
    return f"{name}.png"


def _page(
    run: Run,
    sections: list[str],
    notes: list[str],
    baselines_figure: str | None = None,
    rungs_figure: str | None = None,
) -> str:
    metrics = run.ordered_metrics
    lineage = lineage_table(best_first(run.population), metrics) if not run.population.empty else pd.DataFrame()
    population = run.population
    if not population.empty and run.metric:
        population = population_table(population, run.metric)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    note_html = "".join(f'<p class="note">{_e(n)}</p>' for n in notes)
    failures = _failures(run)
    failed_html = (
        f"<details><summary>{len(failures)} failed individual(s)</summary>{_table(failures, '')}</details>"
        if len(failures)
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>evopop report: {_e(run.run_id)}</title>
<style>{_CSS}</style></head><body>
<h1>evopop run <code>{_e(run.run_id)}</code></h1>
<p class="state">{_e(run.progress())}</p>
<p class="meta">{_config_line(run)}<br>report written {_e(now)} from <code>{_e(run.run_dir)}</code></p>
{note_html}
<section><h2>Followed lineage</h2>
<p class="meta">From the best selected individual of the last decided generation back to the ancestor
(efficiency = ancestor synapses / own synapses).</p>
{_table(lineage, "No followed lineage yet: no generation's selection is recorded.")}</section>
{"".join(sections)}
<section><h2>Sibling diversity per generation</h2>
<p class="meta">Offspring of the same parent, whole network: mean pairwise distances (averaged over parents
where several), and the spread (population std, max − min) of the selection metric among them.</p>
{_table(diversity_table(run), "No diversity recorded yet.")}</section>
{_halving_section(run, rungs_figure)}
{_baselines_section(run, baselines_figure)}
<section><h2>Population</h2>{failed_html}
<details><summary>All {len(run.population)} recorded individuals</summary>
{_table(population, "No individual recorded yet.")}</details></section>
</body></html>
"""


def halving_table(run: Run) -> pd.DataFrame:
    """Per generation and rung of successive halving: its epochs, how many offspring trained it and
    how many continued, the best metric; and the generation's epochs against full training of all."""
    rungs = run.rungs
    if rungs.empty or not run.metric:
        return pd.DataFrame()
    rows = []
    for generation, group in rungs.groupby("generation"):
        full = int(group["epochs"].max())
        trained = group.groupby("individual_id")["epochs"].max()
        by_rung = sorted(group.groupby("rung"), key=lambda item: item[0])
        for i, (rung, members) in enumerate(by_rung):
            following = set(by_rung[i + 1][1]["individual_id"]) if i + 1 < len(by_rung) else None
            continued = len(following) if following is not None else None
            stopped = sorted(set(members["individual_id"]) - following, key=natural_key) if following else []
            best = members[run.metric].max() if run.direction == "max" else members[run.metric].min()
            rows.append(
                {
                    "generation": int(generation),
                    "rung": int(rung),
                    "epochs": int(members["epochs"].max()),
                    "offspring": len(members),
                    "continued": "-" if continued is None else continued,
                    "stopped here": ", ".join(stopped) or "-",
                    f"best {run.metric}": f"{best:.4f}",
                    "generation's epochs": f"{int(trained.sum())} of {len(trained) * full}",
                }
            )
    return pd.DataFrame(rows)


def _halving_section(run: Run, figure: str | None = None) -> str:
    table = halving_table(run)
    if table.empty:
        return ""
    image = (
        f'<figure><img src="{figure}" alt="successive halving"><figcaption>Each offspring\'s metric after each '
        "rung it trained; a line ends where its offspring stopped, the selected one is starred.</figcaption></figure>"
        if figure
        else ""
    )
    return (
        '<section><h2>Successive halving: which offspring stopped where</h2><p class="meta">All of a '
        "generation's offspring train the first rung; the best 1/eta by the selection metric continue their "
        "training to the next, the others stop (recorded <code>stopped</code>, never selected).</p>"
        f"{image}{_table(table, '')}</section>"
    )


def _baselines_section(run: Run, figure: str | None = None) -> str:
    table = baseline_table(run)
    if table.empty:
        return ""
    image = (
        f'<figure><img src="{figure}" alt="synthesis and the baselines"><figcaption>Every evolved offspring '
        "(grey), the followed lineage (red) and each baseline kind at the same efficiency.</figcaption></figure>"
        if figure
        else ""
    )
    return (
        '<section><h2>Baselines at matched sparsity</h2><p class="meta">Each selected offspring beside networks '
        "pruned to its per-layer synapse counts, trained with the same recipe and seed: its parent pruned by "
        "magnitude and at random (one shot), and iterative magnitude pruning along a lineage of its own, "
        "fine-tuned (imp) or rewound to the ancestor's initial weights (imp_rewind). Positive differences: "
        "synthesis is better for a metric to maximise.</p>"
        f"{image}{_table(table, '')}</section>"
    )
