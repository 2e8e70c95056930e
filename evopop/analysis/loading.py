"""Load a run directory, finished or in progress, into DataFrames for analysis.

    run = load_run("runs/tiny-...")
    run.population      one row per recorded individual, ``selected`` filled where decided (else <NA>),
                        ``rank`` the selection rank (0 = best of its generation; <NA> failed or undecided)
    run.layers          per-layer counts of each individual
    run.diversity.pairs / run.diversity.summary     empty where not recorded (yet)
    run.lineage         the followed lineage (evopop.analysis.tables.followed_lineage)
    run.rungs           successive halving: every offspring's result at every rung it trained (else empty)
    run.config          the resolved config, a dict

A run in progress is read as it stands: generations still running, a last generation without a
selection, no diversity yet. Nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import yaml

from ..engine.plan import selection_metric
from ..records.run import RunRecords
from ..records.schema import FAILED, POPULATION_FIELDS
from ..tasks.registry import build_task
from .tables import ancestry, followed_lineage, metrics_first


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
    stop: dict | None = None  # {"generation", "reason"} of a run evolution.stop ended early
    rungs: pd.DataFrame = field(default_factory=pd.DataFrame)  # selection.halving's rung results

    @property
    def run_id(self) -> str:
        return RunRecords(self.run_dir).run_id

    def ancestry(self, individual_id: str) -> list[str]:
        """Every ancestor of an individual through all of its parents (`evopop.analysis.tables.ancestry`)."""
        return ancestry(self.population, individual_id)

    @property
    def ordered_metrics(self) -> list[str]:
        """The selection metric first, then every other measured column."""
        return metrics_first(self.metric, self.metric_columns) if self.metric else list(self.metric_columns)

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
        last = self.stop["generation"] if self.stop else self.planned_generations
        return bool(last) and self.decided_generations() == list(range(1, last + 1))

    def progress(self) -> str:
        """One line: finished, or where the run stands."""
        planned = self.planned_generations
        gens, decided = self.generations(), self.decided_generations()
        if not gens:
            return "no individual recorded yet"
        if self.finished and self.stop:
            g = self.stop["generation"]
            return f"stopped after generation {g} of {planned}: {self.stop['reason']}"
        if self.finished:
            return f"finished: {planned} generations, {len(self.population)} individuals"
        last = gens[-1]
        rows = self.population[self.population["generation"] == last]
        recorded = len(rows)
        expected = self.expected_individuals(last)
        if expected and recorded >= expected and (rows["status"] == FAILED).all():
            return f"stopped: every individual of generation {last} failed ({recorded} of {recorded})"
        of = f" of {expected}" if expected else ""
        state = "selection recorded" if last in decided else "selection pending"
        return f"in progress: generation {last} of {planned or '?'}, {recorded}{of} individuals recorded, {state}"

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
    """Everything recorded in ``run_dir`` so far (a local path or a pyarrow.fs URI). Reads records
    only: the run's task, data and cluster are not needed."""
    records = RunRecords(str(run_dir))
    if not records.exists():
        raise FileNotFoundError(f"{run_dir}: no evopop run here (config.yaml missing)")
    config = yaml.safe_load(records.read_config()) or {}
    population = records.population()
    meta = records.metadata()
    metric_columns, layer_names = meta.metric_columns, meta.layer_names
    if not metric_columns and not population.empty:
        metric_columns = [c for c in population.columns if c in _metric_like(population)]
    layers = records.layers()
    if not layer_names and not layers.empty:
        layer_names = list(dict.fromkeys(layers["layer"]))
    metric, direction = meta.metric, meta.direction
    if metric is None:  # records written without the engine's resolution (by hand, in tests)
        metric, direction = _configured_metric(config, metric_columns)
    diversity = Diversity(
        records.diversity_pairs().reset_index(drop=True), records.diversity_summary().reset_index(drop=True)
    )
    lineage = followed_lineage(best_first(population)) if not population.empty else population
    return Run(
        str(run_dir),
        config,
        population,
        layers,
        diversity,
        lineage.reset_index(drop=True),
        metric_columns,
        layer_names,
        metric,
        direction,
        records.read_stop(),
        records.rungs(),
    )


def best_first(population: pd.DataFrame) -> pd.DataFrame:
    """The population with each generation's individuals in selection-rank order (best first).

    `followed_lineage` follows the first selected individual of the last decided generation: in
    this order that is the best one, also under the ``topk`` and ``all`` rules.
    """
    if population.empty or "rank" not in population:
        return population
    return population.sort_values(["generation", "rank"], na_position="last", kind="stable")


def _metric_like(population: pd.DataFrame) -> set[str]:
    known = {name for name, _ in POPULATION_FIELDS} | {"generation", "rank"}
    return {c for c in population.columns if c not in known and population[c].dtype.kind == "f"}


def _configured_metric(config: dict, metric_columns: list[str]) -> tuple[str | None, str]:
    """The selection metric of a run whose records do not name it (written by hand, or before schema 2):
    resolved from its config as the engine resolves it, with the task's defaults when the task can be
    built here (building loads no data), else the first measured non-loss column."""
    selection = config.get("selection") or {}
    try:
        task_config = config.get("task") or {}
        task = build_task(task_config["name"], task_config.get("args"), task_config.get("paths", ()))
        defaults = (task.default_metric, task.default_direction)
    except Exception:  # the task is not importable here
        first = next((c for c in metric_columns if not c.endswith("_loss")), None)
        defaults = (first or (metric_columns[0] if metric_columns else None), "max")
    if defaults[0] is None and not selection.get("metric"):
        return None, "max"
    return selection_metric(selection.get("metric"), selection.get("direction"), *defaults)
