"""The values that cross the engine's seams: what to develop (`Spec`, with its parent's `ParentState`)
and what came of it (`Outcome`, then `Result`), turned into the run's `IndividualRecord` in one place.

All are plain, picklable values: an executor may carry them to another process or machine.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..records.checkpoints import Checkpoint
from ..records.schema import FAILED, OFFSPRING, IndividualRecord, LayerRecord
from ..synthesis import Environment, efficiency
from .failures import INFRASTRUCTURE, OWN, Failure

PARENT_SEPARATOR = "+"  # never in an individual id (evopop.records.ids)
# an individual's sizes: fields of `Outcome` and columns of `IndividualRecord` alike
SIZES = ("synapses", "neurons", "params", "macs", "dense_macs")
EFFECTIVE_SIZES = ("effective_synapses", "effective_neurons", "effective_macs")  # `effective_genome`'s
# the compacted network's columns of `IndividualRecord` -> their fields of `Compaction`
COMPACT_COLUMNS = {
    "compact_params": "params",
    "compact_macs": "macs",
    "compact_neurons": "neurons",
    "latency_cpu_b1_ms": "cpu_b1_ms",
    "latency_cpu_b32_ms": "cpu_b32_ms",
    "latency_gpu_ms": "gpu_ms",
}


@dataclass(frozen=True)
class Spec:
    """Everything that determines an individual; a pure function of the run seed and its lineage."""

    generation: int
    individual_id: str
    parent_id: str | None
    lineage: tuple[str, ...]
    offspring_index: int | None
    seed: int | None  # synthesis seed; None for the root ancestor
    train_seed: int
    environment: Environment | None
    epochs: int
    kind: str = OFFSPRING  # ANCESTOR | OFFSPRING | a baseline kind ("magnitude", "random")
    match_id: str | None = None  # baselines: the offspring whose per-layer synapse counts they match
    clusters: Environment | None = None  # the cluster environment F_c(E) of cluster-driven synthesis
    # successive halving (`evopop.engine.policy.halving`): the rung this job trains, to ``train_until`` of
    # ``epochs`` (a later rung continues the training its previous rung stored)
    rung: int | None = None
    train_until: int | None = None
    # multi-parent synthesis (evolution.parents): every parent, ``parent_id`` first; empty: that one alone
    parent_ids: tuple[str, ...] = ()
    # whether the trainer needs the parents' state: a later rung continues its own stored training,
    # and reads its parent only to learn from it (evolution.distill)
    parent_needed: bool = True

    @property
    def parents(self) -> tuple[str, ...]:
        """Every parent's id, the first one's (``parent_id``) first; () for the root ancestor."""
        return self.parent_ids or ((self.parent_id,) if self.parent_id is not None else ())

    @property
    def parent_key(self) -> str | None:
        """What executors load and ship for this spec: one parent's id, or its parents' joined by "+";
        None when it needs none."""
        return (PARENT_SEPARATOR.join(self.parents) or None) if self.parent_needed else None


@dataclass(frozen=True)
class ParentState:
    """A parent's weights and masks as NumPy arrays: Ray shares those zero-copy, tensors not.
    ``mates``: the other parents of a multi-parent offspring (this one is the first)."""

    weights: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    mates: tuple[ParentState, ...] = ()

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> ParentState:
        return cls(_to_numpy(checkpoint.weights), _to_numpy(checkpoint.masks))

    def tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(weights, masks) as tensors sharing the arrays' memory."""
        return _from_numpy(self.weights), _from_numpy(self.masks)


def _to_numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _from_numpy(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():  # object-store arrays are read-only; nothing writes to them
        warnings.simplefilter("ignore", UserWarning)
        return {k: torch.from_numpy(v) for k, v in arrays.items()}


@dataclass(frozen=True)
class Compaction:
    """The compacted network of an individual (`evopop.compaction`): its size and measured latency."""

    params: int
    macs: int
    neurons: int
    cpu_b1_ms: float | None = None
    cpu_b32_ms: float | None = None
    gpu_ms: float | None = None  # at ``compaction.gpu_batch``, when the trainer has a GPU


@dataclass(frozen=True)
class Outcome:
    """What developing one individual produced: its measurements, or the error that stopped it."""

    individual_id: str
    status: str  # OK | FAILED
    error: str | None = None
    failure: str | None = None  # a failure's cause: INDIVIDUAL | INFRASTRUCTURE (`evopop.engine.failures`)
    replace_trainer: bool = False  # the trainer that met the failure cannot go on (a broken CUDA context)
    metrics: dict[str, float] = field(default_factory=dict)  # "<eval set>_<metric>" -> value
    synapses: int | None = None
    neurons: int | None = None
    params: int | None = None
    macs: int | None = None
    dense_macs: int | None = None
    effective_synapses: int | None = None  # see `evopop.synthesis.effective_genome`
    effective_neurons: int | None = None
    effective_macs: int | None = None
    compact: Compaction | None = None  # the compacted network's size and measured latency
    layers: tuple[LayerRecord, ...] = ()
    layers_written: bool = False  # the trainer wrote ``layers`` to the records itself (`RunRecords.write_layers`)
    epochs: int | None = None  # epochs trained (over every rung); None for a loaded ancestor
    train_loss: tuple[float, ...] = ()  # the mean training loss of each of those epochs
    train_seconds: float | None = None
    samples_per_second: float | None = None
    mask_digest: str | None = None
    checkpoint: str | None = None  # relative to the run directory
    node_id: str | None = None  # where it ran (set by the executor)
    worker_id: str | None = None
    wall_seconds: float | None = None

    @classmethod
    def failed(cls, individual_id: str, error: str, failure: Failure = OWN) -> Outcome:
        return cls(individual_id, FAILED, error=error, failure=failure.cause, replace_trainer=failure.replace_trainer)

    @property
    def retried(self) -> bool:
        """A failure of the infrastructure, not of the individual: it is run again."""
        return self.status == FAILED and self.failure == INFRASTRUCTURE


@dataclass(frozen=True)
class Result:
    """An outcome as the executor hands it back: with its spec and how many attempts it took."""

    spec: Spec
    outcome: Outcome
    attempts: int

    def record(
        self, run_id: str, metric_columns: list[str], parent: IndividualRecord | None, earlier_attempts: int = 0
    ) -> IndividualRecord:
        """The population row of this individual (the only place one is made from an outcome);
        ``earlier_attempts``: those of earlier drivers of the run (an infrastructure failure resumed)."""
        spec, out = self.spec, self.outcome
        ok = out.status != FAILED
        sizes = {name: getattr(out, name) for name in SIZES + EFFECTIVE_SIZES}  # None for a failure
        compact = {column: getattr(out.compact, name, None) for column, name in COMPACT_COLUMNS.items()}
        synapses, effective = sizes["synapses"], sizes["effective_synapses"]
        ancestor_synapses = parent.ancestor_synapses if parent else synapses
        ancestor_effective = parent.ancestor_effective_synapses if parent else effective
        env = spec.environment
        return IndividualRecord(
            run_id=run_id,
            individual_id=spec.individual_id,
            kind=spec.kind,
            parent_id=spec.parent_id,
            parent_ids=spec.parents,
            lineage=tuple(spec.lineage),
            offspring_index=spec.offspring_index,
            seed=spec.seed,
            train_seed=spec.train_seed,
            env_mode=env.mode if env else None,
            env_factor=env.c if env else None,
            encoding=("cluster" if spec.clusters else "synapse") if spec.kind == OFFSPRING else None,
            cluster_factor=spec.clusters.c if spec.clusters else None,
            **sizes,
            **compact,
            parent_synapses=parent.synapses if parent else None,
            ancestor_synapses=ancestor_synapses,
            efficiency=efficiency(ancestor_synapses, synapses) if ok and synapses else None,
            ancestor_effective_synapses=ancestor_effective,
            effective_efficiency=efficiency(ancestor_effective, effective)
            if effective and ancestor_effective
            else None,
            layer_fractions=tuple(layer.living_fraction for layer in out.layers) or None,
            epochs=out.epochs,
            train_loss=out.train_loss or None,
            rung=spec.rung,
            metrics={c: out.metrics[c] for c in metric_columns if c in out.metrics},
            train_seconds=out.train_seconds,
            samples_per_second=out.samples_per_second,
            node_id=out.node_id,
            worker_id=out.worker_id,
            attempts=earlier_attempts + self.attempts,
            status=out.status,
            error=out.error,
            failure=out.failure if not ok else None,
            checkpoint=out.checkpoint,
            mask_digest=out.mask_digest,
        )
