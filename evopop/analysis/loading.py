"""Load a run directory, finished or in progress, into DataFrames for analysis.

    run = load_run("runs/tiny-...")
    run.population      one row per recorded individual, ``selected`` filled where decided (else <NA>),
                        ``rank`` the selection rank (0 = best of its generation; <NA> failed or undecided)
    run.layers          per-layer counts of each individual
    run.diversity.pairs / run.diversity.summary     empty where not recorded (yet)
    run.lineage         the followed lineage (evopop.analysis.tables.followed_lineage)
    run.config          the resolved config, a dict

A run in progress is read as it stands: generations still running, a last generation without a
selection, no diversity yet. Nothing is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import yaml

from ..records.run import RunRecords
from ..records.schema import PARTITIONING
from .diversity import DIVERSITY_PAIR_FIELDS, DIVERSITY_SUMMARY_FIELDS, population_metadata
from .tables import followed_lineage


@dataclass
class Diversity:
    pairs: pd.DataFrame
    summary: pd.DataFrame

    @property
    def empty(self) -> bool:
        return self.pairs.empty and self.summary.empty

    def generations(self) -> list[int]:
        return sorted(int(g) for g in self.pairs.get("generation", pd.Series(dtype=int)).unique())


@dataclass
class Run:
    run_dir: str
    config: dict
    population: pd.DataFrame
    layers: pd.DataFrame
    diversity: Diversity
    lineage: pd.DataFrame
    metric_columns: list[str] = field(default_factory=list)
    layer_names: list[str] = field(default_factory=list)
    metric: str | None = None  # the selection metric
    direction: str = "max"  # of the selection metric

    @property
    def run_id(self) -> str:
        return self.run_dir.rstrip("/").rsplit("/", 1)[-1]

    @property
    def planned_generations(self) -> int | None:
        return (self.config.get("evolution") or {}).get("generations")

    def generations(self) -> list[int]:
        """Generations with at least one record."""
        if self.population.empty:
            return []
        return sorted(int(g) for g in self.population["generation"].unique())

    def decided_generations(self) -> list[int]:
        """Generations whose selection is recorded (their every individual has finished)."""
        if self.population.empty or "selected" not in self.population:
            return []
        decided = self.population.groupby("generation")["selected"].apply(lambda s: s.notna().all())
        return sorted(int(g) for g, d in decided.items() if d)

    @property
    def finished(self) -> bool:
        planned = self.planned_generations
        return bool(planned) and self.decided_generations() == list(range(1, planned + 1))

    def progress(self) -> str:
        """One line: finished, or where the run stands."""
        planned = self.planned_generations
        gens, decided = self.generations(), self.decided_generations()
        if not gens:
            return "no individual recorded yet"
        if self.finished:
            return f"finished: {planned} generations, {len(self.population)} individuals"
        last = gens[-1]
        rows = self.population[self.population["generation"] == last]
        recorded = len(rows)
        expected = self.expected_individuals(last)
        if expected and recorded >= expected and (rows["status"] != "ok").all():
            return f"stopped: every individual of generation {last} failed ({recorded} of {recorded})"
        of = f" of {expected}" if expected else ""
        state = "selection recorded" if last in decided else "selection pending"
        return (f"in progress: generation {last} of {planned or '?'}, {recorded}{of} individuals recorded, "
                f"{state}")  # fmt: skip

    def expected_individuals(self, generation: int) -> int | None:
        """How many individuals ``generation`` will have: 1 for the root, else offspring x selected parents."""
        if generation == 1:
            return 1
        offspring = (self.config.get("evolution") or {}).get("offspring")
        previous = self.population[self.population["generation"] == generation - 1]
        if not offspring or previous.empty or previous["selected"].isna().any():
            return None
        return int(offspring) * int(previous["selected"].fillna(False).astype(bool).sum())


def load_run(run_dir: str) -> Run:
    """Everything recorded in ``run_dir`` so far (a local path or a pyarrow.fs URI)."""
    records = RunRecords(str(run_dir))
    if not records.exists():
        raise FileNotFoundError(f"{run_dir}: no evopop run here (config.yaml missing)")
    config = yaml.safe_load(records.read_config()) or {}
    population = _population(records)
    metric_columns, layer_names = population_metadata(records)
    if not metric_columns and not population.empty:
        metric_columns = [c for c in population.columns if c in _metric_like(population)]
    layers = records.layers()
    if not layers.empty:
        layers["generation"] = layers["generation"].astype("int32")
        if not layer_names:
            layer_names = list(dict.fromkeys(layers["layer"]))
    metric, direction = _selection_metric(config, metric_columns)
    pairs = _read(records, "diversity", DIVERSITY_PAIR_FIELDS)
    summary = _read(records, "diversity_summary", DIVERSITY_SUMMARY_FIELDS)
    lineage = followed_lineage(best_first(population)) if not population.empty else population
    return Run(str(run_dir), config, population, layers, Diversity(pairs, summary), lineage.reset_index(drop=True),
               metric_columns, layer_names, metric, direction)  # fmt: skip


def _population(records: RunRecords) -> pd.DataFrame:
    population = records.population()
    if population.empty:
        return population
    population["generation"] = population["generation"].astype("int32")
    selected = population["selected"] if "selected" in population else pd.Series([None] * len(population))
    population["selected"] = pd.array([None if pd.isna(v) else bool(v) for v in selected], dtype="boolean")
    selection = records.selection()
    rank = {}
    if not selection.empty and "rank" in selection:
        rank = {(int(g), i): r
                for g, i, r in zip(selection["generation"], selection["individual_id"], selection["rank"])}
    population["rank"] = pd.array([None if pd.isna(rank.get((int(g), i))) else int(rank[(int(g), i)])
                                   for g, i in zip(population["generation"], population["individual_id"])],
                                  dtype="Int32")  # fmt: skip
    return population


def best_first(population: pd.DataFrame) -> pd.DataFrame:
    """The population with each generation's individuals in selection-rank order (best first).

    `followed_lineage` follows the first selected individual of the last decided generation: in
    this order that is the best one, also under the ``topk`` and ``all`` rules.
    """
    if population.empty or "rank" not in population:
        return population
    return population.sort_values(["generation", "rank"], na_position="last", kind="stable")


def _metric_like(population: pd.DataFrame) -> set[str]:
    from ..records.schema import POPULATION_FIELDS

    known = {name for name, _ in POPULATION_FIELDS} | {"generation"}
    return {c for c in population.columns if c not in known and population[c].dtype.kind == "f"}


def _selection_metric(config: dict, metric_columns: list[str]) -> tuple[str | None, str]:
    """The selection metric and direction, resolved as the engine does (evopop.engine.plan.plan_run)."""
    selection = config.get("selection") or {}
    default_metric, default_direction = None, "max"
    try:  # the task's defaults; building a task object loads no data
        from ..tasks.registry import build_task

        task_cfg = config.get("task") or {}
        task = build_task(task_cfg["name"], task_cfg.get("args"))
        default_metric, default_direction = task.default_metric, task.default_direction
    except Exception:  # the task is not importable here: guess from the recorded columns
        default_metric = next((c for c in metric_columns if not c.endswith("_loss")),
                              metric_columns[0] if metric_columns else None)  # fmt: skip
    metric = selection.get("metric") or default_metric
    direction = selection.get("direction") or ("min" if metric and metric.endswith("_loss") else default_direction)
    return metric, direction


def _read(records: RunRecords, dataset: str, fields) -> pd.DataFrame:
    """A hive-partitioned dataset of the run with its declared schema; empty (typed) if absent."""
    schema = pa.schema(list(fields) + [(f.name, f.type) for f in PARTITIONING])
    if not records.storage.exists(dataset):
        frame = schema.empty_table().to_pandas()
    else:
        data = ds.dataset(
            records.storage.path(dataset), schema=schema, format="parquet", filesystem=records.storage.fs,
            partitioning=ds.partitioning(PARTITIONING, flavor="hive"),
            exclude_invalid_files=True, ignore_prefixes=[".tmp-", "."],
        )  # fmt: skip
        frame = data.to_table().to_pandas()
    cols = ["generation"] + [c for c in frame.columns if c != "generation"]
    frame = frame[cols]
    frame["generation"] = frame["generation"].astype("int32")
    return frame.sort_values(["generation"], kind="stable").reset_index(drop=True)
