"""The diversity of one recorded generation: its genomes read from the run's checkpoints, the
mathematics of `evopop.analysis.diversity` applied, the result as (pairs, summary) DataFrames in the
records' schemas (`DiversityPair`, `DiversitySummary`), which `RunRecords.write_diversity` stores.

Functional diversity needs the networks' outputs on one fixed held-out batch: the trainers store
them in each individual's genome file (beside its bit-packed masks), and `TaskProbe` reads them
there (or computes them from the checkpoint where they are missing).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import yaml

from ..records.checkpoints import Checkpoint, GenomeFile
from ..records.ids import natural_key
from ..records.schema import DIVERSITY_PAIR_FIELDS, DIVERSITY_SUMMARY_FIELDS, EVOLVED_KINDS, MEASURED, OK, plain_value
from ..synthesis.layers import SynapticLayer
from ..tasks.registry import built_task
from ..training.probe import ProbeBatch, held_out_batch, probe_outputs
from .diversity import (
    NETWORK,
    PAIR_QUANTITIES,
    GenomePacker,
    PackedGenomes,
    compact_labels,
    living_fractions,
    neuron_distances,
    neuron_fractions,
    prediction_disagreement,
    predictions,
    spread,
    synapse_distances,
)

# -- outputs of recorded individuals on a held-out batch -------------------------------------------
Outputs = Callable[[Checkpoint | GenomeFile], torch.Tensor]  # a stored individual -> its outputs on one fixed batch


def checkpoint_outputs(task, batch: torch.Tensor | ProbeBatch, device: str | torch.device = "cpu") -> Outputs:
    """``f(checkpoint) -> outputs`` of a recorded individual's network on ``batch`` (eval mode,
    float32, CPU), computed here from the checkpoint's weights.

    One model is built (under a forked RNG: the caller's random state is untouched) and reloaded
    with each checkpoint's weights; dead synapses are exactly zero in them, so the outputs are those
    of the masked network that was measured.
    """
    inputs = batch.inputs if isinstance(batch, ProbeBatch) else batch
    with torch.random.fork_rng(devices=[]):
        model = task.build_model()
    model.to(torch.device(device))

    def outputs(checkpoint: Checkpoint) -> torch.Tensor:
        model.load_state_dict(checkpoint.weights, strict=True)
        return probe_outputs(model, inputs)

    return outputs


class OutputsMissing(LookupError):
    """A `TaskProbe` not allowed to run networks met an individual without stored outputs."""


class TaskProbe:
    """The outputs of each individual on the first ``size`` items of the task's first evaluation set
    (``diversity.functional_batch``), as `generation_diversity` wants them (``f(checkpoint)``).

    The trainers compute them, right after evaluation, and store them in the individual's genome file
    (`RunRecords.write_genome`); these are used as they are. Only where there are none (an older run,
    or another batch size) is the network run here, from the checkpoint, on the batch built on first
    need.
    """

    def __init__(self, task, size: int = 32, device: str | torch.device = "cpu"):
        self.task, self.size, self.device = task, int(size), device
        self.batch: dict | None = None  # what the outputs were computed on (`ProbeBatch.describe`)
        self.computed = 0  # outputs computed here, not by the trainers
        self.may_compute = True  # False: raise OutputsMissing instead (off the thread that seeds training)
        self._compute: Outputs | None = None

    def stored(self, stored: Checkpoint | GenomeFile) -> bool:
        """Whether ``stored`` is a genome file that holds outputs computed on this probe's batch."""
        if not isinstance(stored, GenomeFile) or stored.probe is None or not stored.probe_batch:
            return False
        return stored.probe_batch.get("requested") == self.size

    def __call__(self, stored: Checkpoint | GenomeFile) -> torch.Tensor:
        """The outputs stored in a genome file; else computed here from a checkpoint's weights."""
        if self.stored(stored):
            self.batch = stored.probe_batch
            return stored.probe.float()
        if not self.may_compute:
            raise OutputsMissing("no stored outputs on the probe's batch: the network must run here")
        if self._compute is None:
            batch = held_out_batch(self.task, self.size)
            self._compute, self.batch = checkpoint_outputs(self.task, batch, self.device), batch.describe()
        self.computed += 1
        return self._compute(stored)

    @property
    def note(self) -> str:
        """What the functional disagreement was measured on, for the diversity file's metadata."""
        if self.batch is None:
            return ""
        return f"argmax disagreement on {self.batch['eval_set']}[:{self.batch['size']}]"


# -- one generation from the records ---------------------------------------------------------------


def layers_of_run(records) -> list[SynapticLayer] | None:
    """The run's synaptic layers, from its config's task (None if the task cannot be built here)."""
    try:
        config = yaml.safe_load(records.read_config())
        return list(
            built_task(config["task"]["name"], config["task"].get("args"), config["task"].get("paths", ())).arch.layers
        )
    except Exception as exc:  # analysis must work without the user's task importable
        warnings.warn(
            f"could not build the run's task ({type(exc).__name__}: {exc}); reading layers off the "
            "masks (neurons along dimension 0: wrong for ConvTranspose layers)",
            stacklevel=2,
        )
        return None


def _layers_arg(arch) -> list[SynapticLayer] | None:
    if arch is None:
        return None
    if hasattr(arch, "layers"):
        return list(arch.layers)
    return list(arch)


def generation_diversity(
    records,
    generation: int,
    arch=None,
    metric_columns: Sequence[str] | None = None,
    outputs: Outputs | None = None,
    kind: str = "auto",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Diversity of the successful individuals of one generation: (pairs, summary) DataFrames.

    records: a `RunRecords`. arch: an `Architecture` or list of `SynapticLayer` (layer order and
    neuron semantics); None builds it from the run's config (falling back to mask shapes).
    metric_columns: metrics whose spread to summarise (default: all the run's metric columns).
    outputs: optional ``f(checkpoint) -> tensor`` on one fixed batch (`TaskProbe`, `checkpoint_outputs`);
    it adds ``functional_disagreement`` to the network-scope pairs. kind: see `predictions`. Each
    individual is read once: its genome file where it serves, else its checkpoint.

    pairs: one row per unordered pair (a < b) and scope ("network", then each layer) with the
    columns of `DIVERSITY_PAIR_FIELDS` plus ``generation``. summary: rows of
    `DIVERSITY_SUMMARY_FIELDS` plus ``generation``, for the whole generation and for each parent's
    offspring ("siblings"): pair distances, living fractions, synapses and metric spread.
    """
    population = records.population(generation)
    if population.empty or "status" not in population:
        empty_pairs, empty_summary = _empty(DIVERSITY_PAIR_FIELDS), _empty(DIVERSITY_SUMMARY_FIELDS)
        empty_pairs.insert(0, "generation", pd.Series(dtype="int32"))
        empty_summary.insert(0, "generation", pd.Series(dtype="int32"))
        return empty_pairs, empty_summary
    ok = population[population["status"].isin(MEASURED)]  # offspring halving stopped early have genomes too
    if "kind" in ok:  # baselines at matched sparsity are not offspring of the method
        ok = ok[ok["kind"].isin(EVOLVED_KINDS) | ok["kind"].isna()]
    ok = ok.sort_values("individual_id", key=lambda c: c.map(natural_key)).reset_index(drop=True)
    if metric_columns is None:
        metric_columns = records.metadata().metric_columns
    layers = _layers_arg(arch)
    if layers is None and len(ok):
        layers = layers_of_run(records)

    packer = GenomePacker(layers)
    kept, outs = [], []
    for _, row in ok.iterrows():
        individual_id = row["individual_id"]
        stored = _read_individual(records, individual_id, outputs)
        if stored is None:
            warnings.warn(
                f"{individual_id}: recorded ok but its checkpoint is missing; left out of the diversity", stacklevel=2
            )
            continue
        packer.add(stored.masks, individual_id)
        if outputs is not None:  # held as labels, not outputs: a generation's are held at once
            outs.append(compact_labels(predictions(outputs(stored), kind)))
        del stored
        kept.append(row)
    ok = pd.DataFrame(kept).reset_index(drop=True) if kept else ok.iloc[0:0]
    packed = packer.done()
    parents = [parent_set(row) for _, row in ok.iterrows()] if len(ok) else []
    disagreement = prediction_disagreement(outs) if outputs is not None else None

    pairs = _pairs_frame(packed, parents, disagreement)
    pairs.insert(0, "generation", np.int32(generation))
    summary = _summary_frame(packed, ok, parents, pairs, list(metric_columns))
    summary.insert(0, "generation", np.int32(generation))
    return pairs, summary


def _read_individual(records, individual_id: str, outputs: Outputs | None) -> Checkpoint | GenomeFile | None:
    """What the diversity of one individual needs, read once: its genome file (masks, probe outputs;
    a fraction of the checkpoint's size) where it has one that serves ``outputs``, else its
    checkpoint (weights, masks); None if it has neither."""
    if outputs is None or isinstance(outputs, TaskProbe):  # other outputs want the weights
        genome = records.read_genome(individual_id)
        if genome is not None and (outputs is None or outputs.stored(genome)):
            return genome
    if not records.has_checkpoint(individual_id):
        return None
    return records.read_checkpoint(individual_id)


def parent_set(row) -> str | None:
    """Who an individual descends from, as diversity groups siblings: its parent's id, or under
    multi-parent synthesis its parents' ids in natural order joined by "+" (offspring of one set of
    parents are siblings, whichever of them heads the family)."""
    many = plain_value(row.get("parent_ids")) or ()
    if len(many) > 1:
        return "+".join(sorted(many, key=natural_key))
    return plain_value(row.get("parent_id"))


def _pairs_frame(packed: PackedGenomes, parents: list, disagreement: torch.Tensor | None) -> pd.DataFrame:
    n = len(packed)
    columns = [name for name, _ in DIVERSITY_PAIR_FIELDS]
    if n < 2:
        return _empty(DIVERSITY_PAIR_FIELDS)
    syn = synapse_distances(packed)
    neu = neuron_distances(packed)
    ia, ib = torch.triu_indices(n, n, offset=1)
    ids = np.asarray(packed.ids, dtype=object)
    par = np.asarray(parents, dtype=object)
    a, b = ids[ia.numpy()], ids[ib.numpy()]
    pa_, pb_ = par[ia.numpy()], par[ib.numpy()]
    siblings = np.array([x is not None and x == y for x, y in zip(pa_, pb_)], dtype=bool)
    frames = []
    for scope, d in syn.items():
        nd = neu[scope]
        pick = lambda m: m[ia, ib].numpy()  # noqa: E731
        func = pick(disagreement) if disagreement is not None and scope == NETWORK else np.full(len(a), np.nan)
        frames.append(
            pd.DataFrame(
                {
                    "a": a,
                    "b": b,
                    "parent_a": pa_,
                    "parent_b": pb_,
                    "siblings": siblings,
                    "scope": scope,
                    "jaccard": pick(d.jaccard),
                    "hamming": pick(d.hamming),
                    "hamming_fraction": pick(d.hamming_fraction),
                    "shared_synapses": pick(d.intersection),
                    "union_synapses": pick(d.union),
                    "dense_synapses": np.full(len(a), d.dense, dtype=np.int64),
                    "neuron_jaccard": pick(nd.jaccard),
                    "neuron_hamming": pick(nd.hamming),
                    "functional_disagreement": func,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)[columns]


def _empty(fields) -> pd.DataFrame:
    return pa.schema(fields).empty_table().to_pandas()


def _summary_frame(
    packed: PackedGenomes, ok: pd.DataFrame, parents: list, pairs: pd.DataFrame, metric_columns: list[str]
) -> pd.DataFrame:
    n = len(packed)
    if n == 0:
        return _empty(DIVERSITY_SUMMARY_FIELDS)
    fractions = living_fractions(packed)
    neuron_fr = neuron_fractions(packed)
    synapses = {NETWORK: sum((packed.synapses[l.name] for l in packed.layers), torch.zeros(n, dtype=torch.int64))}
    synapses.update(packed.synapses)
    groups = [("generation", None, np.ones(n, dtype=bool))]
    for parent in sorted({p for p in parents if p is not None}, key=natural_key):
        groups.append(("siblings", parent, np.array([p == parent for p in parents])))
    rows = []
    ids = np.asarray(packed.ids, dtype=object)
    for group, parent, members in groups:
        member_ids = set(ids[members])
        if len(pairs):
            in_group = pairs["a"].isin(member_ids) & pairs["b"].isin(member_ids)
            group_pairs = pairs[in_group]
        else:
            group_pairs = pairs
        for scope in fractions:
            scope_pairs = group_pairs[group_pairs["scope"] == scope] if len(group_pairs) else group_pairs
            for quantity in PAIR_QUANTITIES:
                if quantity == "functional_disagreement" and scope != NETWORK:
                    continue
                values = scope_pairs[quantity].to_numpy(dtype=float) if len(scope_pairs) else np.array([])
                if quantity == "functional_disagreement" and not np.isfinite(values).any():
                    continue
                rows.append(
                    {"group": group, "parent_id": parent, "scope": scope, "quantity": quantity, **spread(values)}
                )
            for quantity, table in (
                ("living_fraction", fractions),
                ("neuron_fraction", neuron_fr),
                ("synapses", synapses),
            ):
                rows.append(
                    {
                        "group": group,
                        "parent_id": parent,
                        "scope": scope,
                        "quantity": quantity,
                        **spread(table[scope].numpy()[members]),
                    }
                )
        # metrics of offspring trained to the end only: one halving stopped early was measured at its rung
        trained = (ok["status"] == OK).to_numpy() if "status" in ok else np.ones(n, dtype=bool)
        for metric in metric_columns:
            if metric in ok:
                rows.append(
                    {
                        "group": group,
                        "parent_id": parent,
                        "scope": NETWORK,
                        "quantity": metric,
                        **spread(ok[metric].to_numpy()[members & trained]),
                    }
                )
    frame = pd.DataFrame(rows, columns=[name for name, _ in DIVERSITY_SUMMARY_FIELDS])
    frame["count"] = frame["count"].astype("int64")
    return frame


def write_generation_diversity(
    records,
    generation: int,
    arch=None,
    metric_columns: Sequence[str] | None = None,
    outputs: Outputs | None = None,
    kind: str = "auto",
    note: str = "",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`generation_diversity`, written to RUN_DIR/diversity/generation=G/part-0.parquet (pairs) and
    RUN_DIR/diversity_summary/generation=G/part-0.parquet (summary); returns (pairs, summary).

    ``note`` goes into the pairs file metadata (``evopop.diversity.functional``), e.g. which batch
    the functional disagreement was measured on.
    """
    pairs, summary = generation_diversity(records, generation, arch, metric_columns, outputs, kind)
    records.write_diversity(generation, pairs, summary, note)
    return pairs, summary
