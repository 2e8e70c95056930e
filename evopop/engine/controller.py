"""The evolution controller: runs a run generation after generation. It asks the policy
(`evopop.engine.policy`: pure functions, Ray Tune's schedulers and nevergrad's ask/tell) what to
develop and who survives, hands the jobs to an `Executor` (`LocalExecutor` in this process,
`RayExecutor` on a cluster), and records every individual and every decision (`RunRecords`) as it
is made; `Hook`s watch (progress output, diversity). Nothing here imports Ray.

The controller keeps no population in memory: every individual goes to storage as it finishes, and
each generation's ancestors are read back from the records. That is also what makes a run
resumable: `run` skips every individual that already has a record, except those the
infrastructure failed in a generation not yet decided (`EvolutionController.retryable`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd

from ..config import Config
from ..records.run import RunRecords
from ..records.schema import (
    FAILED,
    OFFSPRING,
    STOPPED,
    IndividualRecord,
    PromotionRecord,
    SelectionRecord,
    is_baseline,
    population_schema,
)
from ..synthesis.baselines import LINEAGE_KINDS
from .executors.base import Executor
from .failures import INFRASTRUCTURE, RunStopped
from .hooks import Batch, Hook
from .jobs import PARENT_SEPARATOR, ParentState, Spec
from .plan import Plan
from .policy.adaptation import Adaptation
from .policy.halving import promote
from .policy.order import longest_first
from .policy.selection import LatencyRule, select
from .policy.specs import ROOT_ID, baseline_specs, offspring_specs, root_spec


class EvolutionFailed(RunStopped):
    """A generation in which no individual succeeded: the run stops, its records stay intact."""


class InfrastructureFailed(EvolutionFailed):
    """Individuals the infrastructure still failed after their retries: their generation is not
    decided, and ``evopop resume`` runs them again (``resources.on_infrastructure_failure: stop``)."""


class EvolutionController:
    """One run: generation 1 (the ancestor), then offspring of the selected, generation after generation."""

    def __init__(self, config: Config, records: RunRecords, plan: Plan, executor: Executor, hooks: Sequence[Hook] = ()):
        self.config, self.records, self.plan, self.executor = config, records, plan, executor
        self.hooks = list(hooks)
        self.schema = population_schema(plan.metric_columns, plan.layer_names, (plan.metric, plan.direction))

    def run(self) -> pd.DataFrame:
        """Run (or finish) every generation; returns the population records."""
        with self.records.lock(self.config.storage.lock_lease_s) as lease:
            self.executor.start(lease.token)
            completed = False
            try:
                ancestors: list[IndividualRecord] = []
                for generation in range(1, self.config.evolution.generations + 1):
                    ancestors = self.generation(generation, ancestors)
                    if generation == 1:
                        root = ancestors[0]
                    elif generation < self.config.evolution.generations and self.stop_if_due(
                        generation, root, ancestors[0]
                    ):  # the last generation ends the run anyway
                        break
                completed = True
            finally:
                try:
                    self.executor.shutdown()
                finally:
                    self._notify("run_finished", completed)
            if completed and self.config.storage.checkpoints == "lineage":
                self.drop_checkpoints(generation)  # the hooks are done with the last generation
        return self.records.population()

    def generation(self, generation: int, ancestors: list[IndividualRecord]) -> list[IndividualRecord]:
        """Develop, record and select one generation; returns its selected individuals, best first."""
        if generation == 1:
            specs = [root_spec(self.config)]
        else:
            specs = offspring_specs(self.config, generation, ancestors, self.adapted_factors(generation, ancestors))
        halving = self.plan.rungs is not None and generation > 1
        if halving:
            self.develop_in_rungs(generation, specs, ancestors)
        else:
            self.stop_on_infrastructure_failures(generation, self.develop_and_record(generation, specs, ancestors))
        self._notify("generation_developed", generation)
        selected = self.record_selection(generation, [s.individual_id for s in specs])
        if halving:  # decided: no offspring of this generation trains on
            self.records.delete_training_states(s.individual_id for s in specs)
        if self.config.baselines.enabled and generation > 1:
            chains = self.lineage_baseline_parents(generation, ancestors)
            baselines = baseline_specs(self.config, generation, selected, chains)
            parents = ancestors + list(chains.values())
            self.stop_on_infrastructure_failures(
                generation, self.develop_and_record(generation, baselines, parents, baselines=True)
            )
        self.records.consolidate(generation)  # decided: its records fold into one file per dataset
        if self.config.storage.checkpoints == "lineage" and generation > 1:
            # a generation late: what still reads the previous generation's checkpoints in the background
            # (its diversity study) has had a generation's time to finish
            self.drop_checkpoints(generation - 1)
        return selected

    def drop_checkpoints(self, generation: int) -> None:
        """Under ``storage.checkpoints: lineage``, delete the checkpoints of the decided generation's
        offspring that no later step reads: neither selected (a parent, and an ancestor of all that
        follows) nor among its best ``keep_top``. Their records, genome files and diversity stay.
        The hooks first finish what reads them (`Hook.releasing`)."""
        self._notify("releasing", generation)
        keep_top = self.config.storage.keep_top
        ranks = self.records.ranks(generation)
        dropped = []
        for record in self.records.individuals(generation):
            rank = ranks.get(record.individual_id)
            kept = record.selected or (rank is not None and rank < keep_top)
            if record.kind == OFFSPRING and record.checkpoint and not kept:
                dropped.append(record.individual_id)
        self.records.delete_checkpoints(dropped)

    def adapted_factors(self, generation: int, ancestors: list[IndividualRecord]) -> dict[str, float] | None:
        """Ancestor id -> its offspring's C where ``evolution.environment.adapt`` is set, else None."""
        adaptation = Adaptation.of(self.config.evolution.environment.adapt)
        if adaptation is None:
            return None
        parents = {r.individual_id: r for r in self.records.individuals(generation - 2)} if generation > 2 else {}
        base_c = self.config.evolution.environment.c
        return adaptation.factors(ancestors, parents, base_c, self.plan.metric, self.plan.direction)

    def lineage_baseline_parents(
        self, generation: int, ancestors: list[IndividualRecord]
    ) -> dict[tuple[str, str], IndividualRecord]:
        """(parent id, kind) -> the parent of the iterative baseline (imp, imp_rewind) of each offspring
        of that parent: the same kind's baseline of the parent (its own lineage, pruned generation after
        generation), or the root ancestor at generation 2 and wherever that baseline failed (the chain
        restarts from the root, pruning to the current counts)."""
        kinds = [kind for kind in self.config.baselines.kinds if kind in LINEAGE_KINDS]
        if not kinds or not ancestors:
            return {}
        root = self.records.individuals(1)[0] if generation > 2 else ancestors[0]
        previous = {r.individual_id: r for r in self.records.individuals(generation - 1)} if generation > 2 else {}
        chains = {}
        for parent in ancestors:
            for kind in kinds:
                member = previous.get(f"{parent.individual_id}-{kind}")
                chains[(parent.individual_id, kind)] = member if member is not None and member.ok else root
        return chains

    def develop_in_rungs(self, generation: int, specs: list[Spec], ancestors: list[IndividualRecord]) -> None:
        """Successive halving (`evopop.engine.policy.halving`): the offspring train rung by rung, the best
        of each rung continuing; those that stop are recorded ``stopped`` as the rung is decided."""
        rungs, selection = self.plan.rungs, self.config.selection
        recorded = self.records.recorded_ids(generation)
        if self.records.has_selection(generation) or (
            {s.individual_id for s in specs} <= recorded and not self.retryable(generation)
        ):  # nothing left to train: every offspring has its final record (a resumed, decided generation)
            batch = Batch(generation, len(specs), len(specs))
            self._notify("batch_started", batch)
            self._notify("batch_finished", batch)
            return
        needed = selection.candidates_needed
        teaches = self.config.evolution.distill.weight > 0  # a later rung reads its parents only to learn from them
        alive = list(specs)
        for rung, epochs in enumerate(rungs.epochs):
            until = epochs if rung < rungs.last else None  # the last rung trains to the end
            ship = rung == 0 or teaches
            jobs = [dataclasses.replace(s, rung=rung, train_until=until, parent_needed=ship) for s in alive]
            self.stop_on_infrastructure_failures(
                generation, self.develop_and_record(generation, jobs, ancestors, rung=rung)
            )
            if rung < rungs.last:
                alive = self.record_promotion(generation, rung, alive, rungs.kept(len(alive), needed))

    def record_promotion(self, generation: int, rung: int, alive: list[Spec], kept: int) -> list[Spec]:
        """Decide which of a rung's offspring continue (the recorded decision, where a resumed run
        has one), record the others as stopped; returns the specs that continue."""
        results = {r.individual_id: r for r in self.records.rung_records(generation, rung)}
        decision = self.records.promotion(generation, rung)
        if decision is None:
            candidates = [results[s.individual_id] for s in alive if s.individual_id in results]
            ranking, promoted = promote(candidates, kept, self.plan.metric, self.plan.direction)
            rank_of = {individual_id: i for i, individual_id in enumerate(ranking)}
            if not promoted:  # raised before a decision is recorded: a resumed run tries the rung again
                raise EvolutionFailed(
                    f"every offspring of generation {generation} failed at rung {rung} of successive halving "
                    f"(see the 'error' column: evopop show {self.records.uri}); the records so far are intact"
                )
            decision = [
                PromotionRecord(s.individual_id, rung, s.individual_id in promoted, rank_of.get(s.individual_id))
                for s in alive
            ]
            self.records.write_promotion(generation, rung, decision)  # before it is acted on
        promoted = [d.individual_id for d in sorted(decision, key=_by_rank) if d.promoted]
        recorded = self.records.recorded_ids(generation)
        stopped = []
        for d in decision:
            result = results.get(d.individual_id)
            if d.promoted or result is None or d.individual_id in recorded:
                continue
            record = dataclasses.replace(result, status=STOPPED) if result.ok else result
            self.records.write_individual(generation, record, [], self.schema)  # its layers: with its rung
            self._notify("recorded", record)
            stopped.append(d.individual_id)
        # what no rung will continue from any more: the previous rung's states, and the stopped ones'
        if rung > 0:
            self.records.delete_training_states([d.individual_id for d in decision], rung - 1)
        self.records.delete_training_states([d.individual_id for d in decision if not d.promoted], rung)
        self._notify("promoted", generation, rung, promoted, stopped)
        return [s for s in alive if s.individual_id in set(promoted)]

    def develop_and_record(
        self,
        generation: int,
        specs: list[Spec],
        parents: list[IndividualRecord],
        baselines: bool = False,
        rung: int | None = None,
    ) -> list[IndividualRecord]:
        """Develop every spec without a record, or whose record is a failure of the infrastructure
        that may still be retried (`retryable`), writing each record as its result arrives. Returns
        the records of those the infrastructure failed (after their retries).

        ``rung``: the rung of successive halving the specs train; a rung before the last records
        its results in rungs/ only (they decide who continues), the last in the population too."""
        interim = rung is not None and rung < self.plan.rungs.last
        if interim:
            recorded, retry = self.rung_status(generation, rung)
        else:
            recorded = {r.individual_id for r in self.records.individuals(generation)}  # kept as it is written
            retry = self.retryable(generation, baselines) if recorded else {}
        pending = [s for s in specs if s.individual_id not in recorded or s.individual_id in retry]
        epochs = (specs[0].train_until or specs[0].epochs) if rung is not None and specs else None
        retrying = len({s.individual_id for s in pending} & set(retry))
        batch = Batch(generation, len(specs), len(specs) - len(pending), baselines, retrying, rung, epochs)
        self._notify("batch_started", batch)
        parent_of = {p.individual_id: p for p in parents}
        infrastructure_failed = []
        for result in self.executor.run(longest_first(pending, parent_of), self._load_parent):
            spec = result.spec
            earlier = retry.get(spec.individual_id, 0)
            record = result.record(
                self.records.run_id, self.plan.metric_columns, parent_of.get(spec.parent_id), earlier
            )
            layers = list(result.outcome.layers)
            if result.outcome.layers_written:  # by its trainer: the driver only notes them, for the fold
                self.records.note_layers(generation, spec.individual_id, layers)
                layers = []
            if rung is not None:
                self.records.write_rung(generation, record, layers, self.schema)
            if interim:
                self._notify("rung_recorded", record)
            else:
                self.records.write_individual(generation, record, layers, self.schema)
                self._notify("recorded", record)
            if record.failure == INFRASTRUCTURE:
                infrastructure_failed.append(record)
        self._notify("batch_finished", batch)
        return infrastructure_failed

    def rung_status(self, generation: int, rung: int) -> tuple[set[str], dict[str, int]]:
        """(ids with a result at ``rung`` or a final record, id -> attempts of those the infrastructure
        failed at ``rung``, to run again while the rung is undecided: once its decision is recorded, it stands)."""
        results = self.records.rung_records(generation, rung)
        decided = self.records.promotion(generation, rung) is not None
        final = self.records.recorded_ids(generation)  # stopped, failed or finished: never trained again
        retry = {
            r.individual_id: r.attempts
            for r in results
            if not decided and r.status == FAILED and r.failure == INFRASTRUCTURE
        }
        return {r.individual_id for r in results} | final, retry

    def stop_if_due(self, generation: int, root: IndividualRecord, best: IndividualRecord) -> bool:
        """Whether ``evolution.stop`` ends the run after ``generation``; if so, records the stop
        (``stop.json``) and tells the hooks."""
        rule = self.plan.stop
        reason = rule.reason(root, best) if rule is not None and generation > 1 else None
        if reason is None:
            return False
        self.records.write_stop(generation, reason)
        self._notify("stopped", generation, reason)
        return True

    def stop_on_infrastructure_failures(self, generation: int, failed: list[IndividualRecord]) -> None:
        """Stop before deciding a generation the infrastructure failed individuals of (after their
        retries), so that ``evopop resume`` runs them again; unless configured to go on without them."""
        if not failed or self.config.resources.on_infrastructure_failure == "continue":
            return
        first = failed[0]
        reason = (first.error or "unknown").strip().splitlines()[0][:300]
        ids = ", ".join(r.individual_id for r in failed[:8]) + (", ..." if len(failed) > 8 else "")
        raise InfrastructureFailed(
            f"generation {generation}: the infrastructure failed {len(failed)} individual(s) after their retries "
            f"({ids}; {first.individual_id}: {reason}). The records are intact and the generation is not decided: "
            f"once the cause is fixed, `evopop resume {self.records.uri}` runs them again "
            "(resources.on_infrastructure_failure: continue goes on without them)"
        )

    def retryable(self, generation: int, baselines: bool = False) -> dict[str, int]:
        """Individual id -> attempts so far, of the generation's individuals that the infrastructure
        failed (a resumed run runs them again). Once a generation's selection is recorded, its
        offspring are final: later generations descend from that selection, and running one again
        could change it. Baselines select nothing: theirs are always run again."""
        if not baselines and self.records.has_selection(generation):
            return {}
        return {
            r.individual_id: r.attempts
            for r in self.records.individuals(generation)
            if r.status == FAILED and r.failure == INFRASTRUCTURE and is_baseline(r.kind) == baselines
        }

    def latency_rule(self) -> tuple[LatencyRule | None, float | None]:
        """``selection.latency`` as a rule, with the root ancestor's latency its budget is relative to."""
        wanted = self.config.selection.latency
        if wanted is None:
            return None, None
        rule = LatencyRule(f"latency_{wanted.measure}_ms", wanted.budget, wanted.pareto)
        root = next((r for r in self.records.individuals(1) if r.individual_id == ROOT_ID), None)
        return rule, rule.latency(root) if root is not None else None

    def record_selection(self, generation: int, ids: list[str]) -> list[IndividualRecord]:
        """Decide and record which of ``ids`` survive into the next generation; EvolutionFailed if none can."""
        wanted = set(ids)
        candidates = [r for r in self.records.individuals(generation) if r.individual_id in wanted]
        s = self.config.selection
        latency, reference = self.latency_rule()
        ranking, selected = select(candidates, s.rule, s.k, self.plan.metric, self.plan.direction, latency, reference)
        if not selected:
            errors = [str(r.error).strip().splitlines()[0] for r in candidates if r.error and str(r.error).strip()]
            first = f"; the first error: {errors[0][:300]}" if errors else ""
            raise EvolutionFailed(
                f"every individual of generation {generation} failed{first} (see the 'error' column: "
                f"evopop show {self.records.uri}); the records so far are intact"
            )
        rank_of = {individual_id: i for i, individual_id in enumerate(ranking)}
        decisions = [
            SelectionRecord(r.individual_id, r.individual_id in selected, rank_of.get(r.individual_id))
            for r in candidates
        ]
        self.records.write_selection(generation, decisions)
        self._notify("selected", generation, selected)
        by_id = {r.individual_id: r for r in candidates}
        return [by_id[i] for i in selected]

    def _load_parent(self, key: str) -> ParentState:
        """The state of a spec's parents (``Spec.parent_key``): one parent, or the first with its mates."""
        first, *mates = key.split(PARENT_SEPARATOR)
        state = ParentState.from_checkpoint(self.records.read_checkpoint(first))
        if not mates:
            return state
        others = tuple(ParentState.from_checkpoint(self.records.read_checkpoint(m)) for m in mates)
        return dataclasses.replace(state, mates=others)

    def _notify(self, event: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, event)(*args)


def _by_rank(decision: PromotionRecord) -> tuple[int, int]:
    return (decision.rank is None, decision.rank or 0)
