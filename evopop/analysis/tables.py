"""Tables of a run: the population so far, and the paper-style table of the followed lineage."""

from __future__ import annotations

import pandas as pd

from ..records.ids import natural_key

_BASE = [
    "generation",
    "individual_id",
    "parent_id",
    "status",
    "epochs",
    "synapses",
    "efficiency",
    "effective_synapses",
    "effective_efficiency",
    "neurons",
    "macs",
]


def metrics_first(metric: str, metric_columns: list[str]) -> list[str]:
    """The selection metric first, then every other measured column."""
    return [metric] + [c for c in metric_columns if c != metric]


def population_table(population: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One line per individual: counts, the selection metric, and whether it was selected."""
    cols = [c for c in _BASE if c in population] + [metric, "train_seconds", "selected"]
    table = population[[c for c in cols if c in population]].copy()
    if "parent_id" in table:
        table["parent_id"] = table["parent_id"].fillna("-")
        if "parent_ids" in population:  # every parent of a multi-parent offspring, the first first
            table["parent_id"] = [
                "+".join(many) if many is not None and len(many) > 1 else one
                for many, one in zip(population["parent_ids"], table["parent_id"])
            ]
    return _format(table)


def parents_of(row) -> list[str]:
    """Every parent of a population row: ``parent_ids`` (multi-parent synthesis), else ``parent_id``."""
    many = row.get("parent_ids")
    if many is not None and not isinstance(many, float) and len(many) > 0:
        return [str(p) for p in many]
    parent = row.get("parent_id")
    return [parent] if isinstance(parent, str) else []


def ancestry(population: pd.DataFrame, individual_id: str) -> list[str]:
    """Every ancestor of ``individual_id`` through all of its parents (``lineage`` follows first
    parents only), nearest generations first, each once: under multi-parent synthesis a lineage is
    a graph, and this is all of it that leads to the individual."""
    by_id = population.drop_duplicates("individual_id").set_index("individual_id")
    seen, frontier, out = {individual_id}, [individual_id], []
    while frontier:
        nearer = []
        for current in frontier:
            if current not in by_id.index:
                continue
            for parent in parents_of(by_id.loc[current]):
                if parent not in seen:
                    seen.add(parent)
                    nearer.append(parent)
        out += sorted(nearer, key=natural_key)
        frontier = nearer
    return out


def followed_lineage(population: pd.DataFrame) -> pd.DataFrame:
    """The best lineage: from the best selected individual of the last decided generation back to the root."""
    if population.empty or "selected" not in population:
        return population.iloc[0:0]
    chosen = population[population["selected"].fillna(False).astype(bool)]
    if chosen.empty:
        return population.iloc[0:0]
    last_generation = chosen[chosen["generation"] == chosen["generation"].max()]
    if "rank" in last_generation and last_generation["rank"].notna().any():
        last_generation = last_generation.sort_values("rank")  # topk / all: follow the best one
    last = last_generation.iloc[0]
    ids = list(last["lineage"])
    by_id = population.set_index("individual_id")
    return by_id.loc[[i for i in ids if i in by_id.index]].reset_index()


def lineage_table(population: pd.DataFrame, metric_columns: list[str]) -> pd.DataFrame:
    """The paper-style table: generation, synapses, efficiency and each metric along the followed lineage."""
    line = followed_lineage(population)
    if line.empty:
        return pd.DataFrame({"generation": []})
    line = with_delivered(line)
    cols = ["generation", "individual_id", "synapses", "efficiency", "effective_efficiency", "neurons"]
    cols += ["compact_macs_x", "speedup_b32"] + list(metric_columns)
    return _format(line[[c for c in cols if c in line]].copy())


def with_delivered(line: pd.DataFrame) -> pd.DataFrame:
    """Add what compaction delivers along a lineage: ``compact_macs_x`` (dense MACs / compacted MACs) and
    ``speedup_b32`` (the root's measured CPU batch-32 latency / own), where recorded."""
    line = line.copy()
    if "compact_macs" in line and line["compact_macs"].notna().any():
        line["compact_macs_x"] = line["dense_macs"] / line["compact_macs"]
    if "latency_cpu_b32_ms" in line and line["latency_cpu_b32_ms"].notna().any():
        line["speedup_b32"] = line["latency_cpu_b32_ms"].iloc[0] / line["latency_cpu_b32_ms"]
    return line


def _format(table: pd.DataFrame) -> pd.DataFrame:
    for col in ("efficiency", "effective_efficiency", "compact_macs_x", "speedup_b32"):
        if col in table:
            table[col] = table[col].map(lambda v: f"{v:.2f}x" if pd.notna(v) else "-")
    for col in ("synapses", "effective_synapses", "neurons", "macs"):
        if col in table:
            table[col] = table[col].map(lambda v: f"{int(v):,}" if pd.notna(v) else "-")
    for col in table.columns:
        if table[col].dtype.kind == "f":
            table[col] = table[col].map(lambda v: f"{v:.4f}" if pd.notna(v) else "-")
    return table
