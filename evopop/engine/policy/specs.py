"""Individual specs: ids, seeds and environments, all pure functions of the config and lineage."""

from __future__ import annotations

import dataclasses

from ...config import Config, EvolutionSection
from ...records.schema import ANCESTOR, OFFSPRING, IndividualRecord
from ...synthesis import Environment, Schedule, derive_seed, offspring_seed
from ...synthesis.baselines import LINEAGE_KINDS
from ..jobs import Spec

ROOT_ID = "g1-0"


def schedule_of(evolution: EvolutionSection, level: str = "synapses") -> Schedule:
    """The environment schedule of synapses (F_s) or of clusters (F_c, ``level="clusters"``).

    A layer frozen for synapses never mutates, so it is frozen for clusters too (it loses no filter).
    """
    synapses = evolution.environment
    env = synapses if level == "synapses" else evolution.clusters
    frozen = tuple(env.frozen) + tuple(p for p in synapses.frozen if p not in env.frozen)
    base = Environment(env.c, env.mode, tuple(env.layers.items()), frozen, env.sharpness, env.multiple)
    return Schedule(base, tuple(env.schedule.items()))


def cluster_environment(evolution: EvolutionSection, generation: int) -> Environment | None:
    """F_c(E) of ``generation`` under cluster-driven synthesis; None under the synapse-level encoding."""
    if evolution.encoding != "cluster":
        return None
    return schedule_of(evolution, "clusters").at(generation)


def train_seed(run_seed: int, individual_id: str) -> int:
    """The seed an individual trains with (its initialisation, data order, dropout)."""
    return derive_seed("train", run_seed, individual_id)


def root_spec(config: Config) -> Spec:
    epochs = config.ancestor_epochs
    return Spec(
        1, ROOT_ID, None, (ROOT_ID,), None, None, train_seed(config.run.seed, ROOT_ID), None, epochs, kind=ANCESTOR
    )


def offspring_specs(
    config: Config, generation: int, ancestors: list[IndividualRecord], factors: dict[str, float] | None = None
) -> list[Spec]:
    """Offspring of ``ancestors`` (ranked, each with individual_id and lineage) in generation G.

    Offspring i of the ancestor ranked r gets the id g<G>-<r * offspring + i>. ``factors``: the C of
    each ancestor's offspring where the environment adapts (`evopop.engine.policy.adaptation`).

    With ``evolution.parents`` m > 1, the ancestor ranked r heads a family whose offspring are
    synthesized from it and the next m - 1 ancestors in rank order, cyclically (ranks r, r + 1, ...,
    r + m - 1 mod the number of ancestors; fewer where fewer were selected): each selected individual
    mates with the next best, a generation keeps its size, and the family head is the offspring's
    ``parent_id`` (its id seeds the synthesis, as a single parent's does).
    """
    scheduled = schedule_of(config.evolution).at(generation)
    clusters = cluster_environment(config.evolution, generation)
    n = config.evolution.offspring
    epochs = config.offspring_epochs
    specs = []
    mates = min(config.evolution.parents, len(ancestors))
    for r, ancestor in enumerate(ancestors):
        c = (factors or {}).get(ancestor.individual_id)
        environment = scheduled if c is None else dataclasses.replace(scheduled, c=c)
        family = tuple(ancestors[(r + j) % len(ancestors)].individual_id for j in range(mates))
        for i in range(n):
            individual_id = f"g{generation}-{r * n + i}"
            specs.append(
                Spec(
                    generation=generation,
                    individual_id=individual_id,
                    parent_id=ancestor.individual_id,
                    lineage=tuple(ancestor.lineage) + (individual_id,),
                    offspring_index=i,
                    seed=offspring_seed(config.run.seed, generation, ancestor.individual_id, i),
                    train_seed=train_seed(config.run.seed, individual_id),
                    environment=environment,
                    epochs=epochs,
                    clusters=clusters,
                    parent_ids=family if mates > 1 else (),
                )
            )
    return specs


def baseline_specs(
    config: Config,
    generation: int,
    selected: list[IndividualRecord],
    lineage_parents: dict[tuple[str, str], IndividualRecord] | None = None,
) -> list[Spec]:
    """Baselines at matched sparsity for each selected offspring, each trained with the offspring's
    training seed and recipe to its per-layer synapse counts; ids "<offspring id>-<kind>".

    One-shot kinds (magnitude, random) prune the offspring's parent. Lineage kinds (imp, imp_rewind)
    prune ``lineage_parents[(offspring's parent id, kind)]``: the same kind's baseline of the
    offspring's parent (a lineage of its own beside the evolved one), or the root ancestor.
    """
    scheduled = schedule_of(config.evolution).at(generation)
    epochs = config.offspring_epochs
    specs = []
    for record in selected:
        if record.kind != OFFSPRING:
            continue
        # the environment of the offspring it matches (its C may have adapted): recorded, not used
        c = record.env_factor
        environment = scheduled if c is None else dataclasses.replace(scheduled, c=c)
        for kind in config.baselines.kinds:
            parent = (lineage_parents or {}).get((record.parent_id, kind)) if kind in LINEAGE_KINDS else None
            if kind in LINEAGE_KINDS and parent is None:
                continue
            individual_id = f"{record.individual_id}-{kind}"
            parent_id = parent.individual_id if parent else record.parent_id
            lineage = tuple(parent.lineage) if parent else tuple(record.lineage[:-1])
            specs.append(
                Spec(
                    generation=generation,
                    individual_id=individual_id,
                    parent_id=parent_id,
                    lineage=lineage + (individual_id,),
                    offspring_index=record.offspring_index,
                    seed=record.seed,
                    train_seed=record.train_seed,
                    environment=environment,
                    epochs=epochs,
                    kind=kind,
                    match_id=record.individual_id,
                )
            )
    return specs
