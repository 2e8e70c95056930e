"""The Ray driver: generations, dispatch, records, selection, resume.

The driver keeps no population in memory: every individual goes to storage as it finishes, and
each generation's ancestors are read back from the records. That is also what makes a run
resumable: `run` skips every individual that already has a record.
"""
from __future__ import annotations

import os
import posixpath
import warnings

import pandas as pd
import ray

from ..analysis.diversity import has_generation_diversity, task_probe, write_generation_diversity
from ..config import Config, ConfigError
from ..records.run import RunRecords
from ..records.schema import population_schema
from ..synthesis import trace_architecture
from ..tasks.registry import build_task
from .develop import Spec, to_numpy
from .plan import Plan, plan_run
from .pool import TrainerPool
from .progress import Progress
from .selection import select
from .specs import baseline_specs, offspring_specs, root_spec


class EvolutionFailed(RuntimeError):
    """A generation in which no individual succeeded: the run stops, its records stay intact."""


def connect() -> None:
    """Join the cluster named by RAY_ADDRESS (``ray job submit`` sets it), else start a local one."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    # workers of a local cluster must import the user's modules (task import paths) as we do
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
    # address="local": always a cluster of our own, never one that happens to run on this machine
    ray.init(address="local", include_dashboard=False, dashboard_host="127.0.0.1")


def check_resources(config: Config) -> None:
    """Refuse trainers the cluster can never place (instead of waiting forever)."""
    total = ray.cluster_resources()
    r = config.resources
    if r.cpus_per_trainer > total.get("CPU", 0):
        raise ConfigError(f"resources.cpus_per_trainer: {r.cpus_per_trainer} CPUs per trainer, "
                          f"but the cluster has {total.get('CPU', 0):g} CPUs")
    if r.gpus_per_trainer > total.get("GPU", 0):
        raise ConfigError(f"resources.gpus_per_trainer: {r.gpus_per_trainer} GPUs per trainer, "
                          f"but the cluster has {total.get('GPU', 0):g} GPUs")
    for name, amount in r.custom.items():
        if amount > total.get(name, 0):
            raise ConfigError(f"resources.custom.{name}: {amount} per trainer, but the cluster has "
                              f"{total.get(name, 0):g}")


class Driver:
    def __init__(self, config: Config, run_dir: str, plan: Plan | None = None, stream=None):
        self.config = config
        self.run_dir = run_dir
        self.records = RunRecords(run_dir)
        self.plan = plan or plan_run(config)
        self.schema = population_schema(self.plan.metric_columns, self.plan.layer_names)
        self.run_id = posixpath.basename(run_dir.rstrip("/"))
        self.progress = Progress(self.plan.metric, self.plan.direction, stream)
        self._probe = None  # (arch, outputs, note) for diversity, built on first use

    def run(self) -> pd.DataFrame:
        """Run (or finish) every generation; returns the population records."""
        with self.records.lock():
            connect()
            check_resources(self.config)
            pool = TrainerPool(self.config, self.run_dir)
            try:
                ancestors = self._generation(1, [], pool)
                for generation in range(2, self.config.evolution.generations + 1):
                    ancestors = self._generation(generation, ancestors, pool)
            finally:
                pool.shutdown()
        return self.records.population()

    # -- one generation --------------------------------------------------------------------
    def _generation(self, generation: int, ancestors: list[dict], pool: TrainerPool) -> list[dict]:
        specs = [root_spec(self.config)] if generation == 1 else offspring_specs(self.config, generation, ancestors)
        pending = self._develop_all(generation, specs, ancestors, pool)
        if self.config.diversity.enabled and (pending or not has_generation_diversity(self.records, generation)):
            self._record_diversity(generation)
        selected = self._select(generation, [s.individual_id for s in specs])
        if self.config.baselines.enabled and generation > 1:
            self._develop_all(generation, baseline_specs(self.config, generation, selected), ancestors, pool,
                              label="baselines at matched sparsity")  # fmt: skip
        return selected

    def _develop_all(self, generation: int, specs: list[Spec], ancestors: list[dict], pool: TrainerPool,
                     label: str = "") -> list[Spec]:  # fmt: skip
        """Develop every spec without a record, writing each record as it arrives; returns those run."""
        recorded = self.records.recorded_ids(generation)
        pending = [s for s in specs if s.individual_id not in recorded]
        self.progress.start(generation, len(specs), len(specs) - len(pending), label)
        parents = self._ship_parents(ancestors, pending)
        by_id = {a["individual_id"]: a for a in ancestors}
        jobs = [(spec, parents.get(spec.parent_id)) for spec in pending]
        for spec, outcome, attempts in pool.run(jobs):
            row = self._row(spec, outcome, attempts, by_id.get(spec.parent_id))
            self.records.write_individual(generation, row, outcome.get("layers") or [], self.schema)
            self.progress.update(row)
        del parents, jobs  # release the parents' weights from the object store
        if label:
            self.progress.close()
        return pending

    def _record_diversity(self, generation: int) -> None:
        """Sibling diversity of the generation (masks, neurons, predictions) into RUN_DIR/diversity/."""
        try:
            if self._probe is None:
                task = build_task(self.config.task.name, self.config.task.args)
                arch = trace_architecture(task.build_model(), task.example_input())
                batch = self.config.diversity.functional_batch
                outputs, note = task_probe(task, self.records, batch) if batch else (None, "")
                self._probe = (arch, outputs, note)
            arch, outputs, note = self._probe
            write_generation_diversity(self.records, generation, arch, self.plan.metric_columns, outputs, note=note)
        except Exception as exc:  # an analysis must never fail the run it analyses
            warnings.warn(f"diversity of generation {generation} not recorded: {type(exc).__name__}: {exc}")

    def _ship_parents(self, ancestors: list[dict], pending: list[Spec]) -> dict:
        """Each parent's weights and masks go into the object store once, for all its offspring."""
        needed = {spec.parent_id for spec in pending}
        refs = {}
        for ancestor in ancestors:
            if ancestor["individual_id"] in needed:
                payload = self.records.read_checkpoint(ancestor["individual_id"])
                refs[ancestor["individual_id"]] = ray.put(
                    {"weights": to_numpy(payload["weights"]), "masks": to_numpy(payload["masks"])}
                )
        return refs

    def _select(self, generation: int, ids: list[str]) -> list[dict]:
        rows = [r for r in self._rows(generation) if r["individual_id"] in set(ids)]
        s = self.config.selection
        ranking, selected = select(rows, s.rule, s.k, self.plan.metric, self.plan.direction)
        if not selected:
            raise EvolutionFailed(
                f"every individual of generation {generation} failed (see the 'error' column: "
                f"evopop show {self.run_dir}); the records so far are intact"
            )
        rank_of = {individual_id: i for i, individual_id in enumerate(ranking)}
        self.records.write_selection(
            generation,
            [{"individual_id": r["individual_id"], "selected": r["individual_id"] in selected,
              "rank": rank_of.get(r["individual_id"])} for r in rows],
        )  # fmt: skip
        self.progress.finish(selected)
        by_id = {r["individual_id"]: r for r in rows}
        return [by_id[i] for i in selected]

    def _rows(self, generation: int) -> list[dict]:
        return self.records.population(generation).to_dict("records")

    # -- one record --------------------------------------------------------------------------
    def _row(self, spec: Spec, outcome: dict, attempts: int, parent: dict | None) -> dict:
        ok = outcome.get("status") == "ok"
        synapses = outcome.get("synapses") if ok else None
        ancestor_synapses = parent["ancestor_synapses"] if parent else synapses
        env = spec.environment
        row = {
            "run_id": self.run_id,
            "individual_id": spec.individual_id,
            "kind": spec.kind,
            "parent_id": spec.parent_id,
            "lineage": list(spec.lineage),
            "offspring_index": spec.offspring_index,
            "seed": spec.seed,
            "train_seed": spec.train_seed,
            "env_mode": env.mode if env else None,
            "env_factor": env.c if env else None,
            "synapses": synapses,
            "parent_synapses": parent["synapses"] if parent else None,
            "ancestor_synapses": ancestor_synapses,
            "efficiency": ancestor_synapses / synapses if ok and synapses else None,
            "neurons": outcome.get("neurons"),
            "params": outcome.get("params"),
            "macs": outcome.get("macs"),
            "dense_macs": outcome.get("dense_macs"),
            "layer_fractions": [l["living_fraction"] for l in outcome.get("layers") or []] or None,
            "train_seconds": outcome.get("train_seconds"),
            "samples_per_second": outcome.get("samples_per_second"),
            "node_id": outcome.get("node_id"),
            "worker_id": outcome.get("worker_id"),
            "attempts": attempts,
            "status": outcome.get("status", "failed"),
            "error": outcome.get("error"),
            "checkpoint": outcome.get("checkpoint"),
            "mask_digest": outcome.get("mask_digest"),
            "selected": None,
        }
        for column in self.plan.metric_columns:
            row[column] = (outcome.get("metrics") or {}).get(column)
        return row
