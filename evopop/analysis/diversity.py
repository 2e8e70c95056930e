"""Mutation diversity: how different are the individuals of a generation, and siblings in particular?

Structural diversity compares genomes (which synapses and neurons live), functional diversity compares
what the networks predict on one fixed held-out batch, and metric spread compares their measurements.

- Masks are bit-packed into int64 words (64 synapses a word, `pack_mask`); pairwise intersections are
  popcounts of ``a & b`` over the words (`pairwise_intersections`), processed in cache-sized chunks.
  Union, Hamming distance and Jaccard distance all follow from the intersections and each individual's
  own popcount: ``|A u B| = |A| + |B| - |A n B|``, ``hamming = |A| + |B| - 2 |A n B|``. No Python loop
  runs over synapses; one runs over individuals (n of them, for n x n matrices).
- Distances are given for the whole network (scope ``"network"``) and per synaptic layer (scope = the
  layer's name). Jaccard *distance* is ``1 - |A n B| / |A u B|`` (0 = identical, 1 = disjoint; two
  empty sets are identical). ``hamming`` counts the synapses alive in exactly one of the two;
  ``hamming_fraction`` divides it by the dense synapse count of the scope.
- A neuron (output channel / unit) is alive iff it has an incoming synapse (`Genome.neurons`);
  ``neuron_jaccard`` and ``neuron_hamming`` are the same distances over living-neuron sets.
- Functional disagreement of two networks: the fraction of predictions (per sample for a classifier,
  per pixel for dense outputs such as N x 2 x H x W saliency maps) whose argmax differs.

Pure functions over tensors, plus `generation_diversity` / `write_generation_diversity`, which read a
generation's checkpoints through `RunRecords` and write ``RUN_DIR/diversity/generation=G/part-0.parquet``
(pairs) and ``RUN_DIR/diversity_summary/generation=G/part-0.parquet`` (summary). No Ray.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import yaml

from ..records.ids import natural_key
from ..records.schema import DIVERSITY_PAIR_FIELDS, DIVERSITY_SUMMARY_FIELDS, EVOLVED_KINDS
from ..synthesis.genome import Genome
from ..synthesis.layers import SynapticLayer
from ..tasks.registry import built_task

NETWORK = "network"  # the scope of whole-network figures

PAIR_QUANTITIES = (
    "jaccard",
    "hamming",
    "hamming_fraction",
    "neuron_jaccard",
    "neuron_hamming",
    "functional_disagreement",
)


# -- bit packing and popcounts ---------------------------------------------------------------------
_SHIFTS = torch.arange(8, dtype=torch.uint8)
_M1, _M2, _M4, _H01 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101
_CHUNK_WORDS = 1 << 16  # 512 KiB of words per operand: the temporaries stay in cache


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask (any shape) as int64 words, 64 synapses each, zero-padded (flattened in C order)."""
    flat = mask.detach().reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 64
    if pad or flat.numel() == 0:
        flat = torch.nn.functional.pad(flat, (0, pad if flat.numel() else 64))
    shifts = _SHIFTS.to(flat.device)
    packed = (flat.view(-1, 8) << shifts).sum(dim=1, dtype=torch.uint8)
    return packed.view(torch.int64)


def popcount(words: torch.Tensor) -> torch.Tensor:
    """Set bits per row of int64 ``words`` (..., W) -> (...) int64 (SWAR popcount, no lookups).

    The right shifts are arithmetic on int64, but every mask below clears the bits they smear in,
    and the final byte sum is at most 64: the sign bit never matters.
    """
    x = words - ((words >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    return ((x * _H01) >> 56).sum(dim=-1)  # the multiply wraps mod 2^64: the top byte is the sum


def pairwise_intersections(words: torch.Tensor) -> torch.Tensor:
    """|A n B| for every pair of rows of packed ``words`` (n, W): a symmetric (n, n) int64 matrix."""
    n, width = words.shape
    out = torch.zeros(n, n, dtype=torch.int64, device=words.device)
    for start in range(0, width, _CHUNK_WORDS):
        block = words[:, start : start + _CHUNK_WORDS]
        for i in range(n):
            out[i, i:] += popcount(block[i] & block[i:])
    return out + torch.triu(out, diagonal=1).T


# -- genomes as packed sets ------------------------------------------------------------------------
@dataclass
class PackedGenomes:
    """n genomes, bit-packed per layer, with their living neurons."""

    ids: list[str]
    layers: list[SynapticLayer]
    words: dict[str, torch.Tensor]  # layer -> (n, W) int64
    synapses: dict[str, torch.Tensor]  # layer -> (n,) living synapses
    neurons: dict[str, torch.Tensor]  # layer -> (n, out_channels) bool

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def __len__(self) -> int:
        return len(self.ids)


def infer_layers(masks: Mapping[str, torch.Tensor]) -> list[SynapticLayer]:
    """Layers read off mask shapes alone: 2-D = linear, else conv (neurons along dimension 0).

    Right for Linear and Conv*; a ConvTranspose (neurons along dimension 1) needs the real
    `SynapticLayer` from `trace_architecture` or `find_synaptic_layers`.
    """
    return [SynapticLayer(name, "linear" if m.dim() == 2 else "conv", tuple(m.shape)) for name, m in masks.items()]


def _masks_of(genome) -> Mapping[str, torch.Tensor]:
    return genome.masks if isinstance(genome, Genome) else genome


class GenomePacker:
    """Packs genomes one at a time (so n checkpoints never sit in memory at once), then `.done()`."""

    def __init__(self, layers: Sequence[SynapticLayer] | None = None):
        self.layers = list(layers) if layers is not None else None
        self.ids: list[str] = []
        self._words: dict[str, list] = {}
        self._neurons: dict[str, list] = {}

    def add(self, genome: Genome | Mapping[str, torch.Tensor], individual_id: str | None = None) -> None:
        masks = _masks_of(genome)
        if self.layers is None:
            self.layers = infer_layers(masks)
        for layer in self.layers:
            if layer.name not in masks:
                raise ValueError(f"genome {individual_id or len(self.ids)} has no mask for layer {layer.name!r}")
            mask = masks[layer.name].to(torch.bool)
            if tuple(mask.shape) != tuple(layer.weight_shape):
                raise ValueError(f"mask of layer {layer.name!r} has shape {tuple(mask.shape)}, "
                                 f"expected {tuple(layer.weight_shape)}")  # fmt: skip
            self._words.setdefault(layer.name, []).append(pack_mask(mask))
            self._neurons.setdefault(layer.name, []).append(layer.living_neurons(mask))
        self.ids.append(individual_id if individual_id is not None else str(len(self.ids)))

    def done(self) -> PackedGenomes:
        layers = self.layers or []
        words = {l.name: torch.stack(self._words[l.name]) if self.ids else torch.zeros(0, 1, dtype=torch.int64)
                 for l in layers}  # fmt: skip
        neurons = {l.name: torch.stack(self._neurons[l.name]) if self.ids
                   else torch.zeros(0, l.out_channels, dtype=torch.bool) for l in layers}  # fmt: skip
        synapses = {name: popcount(w) for name, w in words.items()}
        return PackedGenomes(list(self.ids), list(layers), words, synapses, neurons)


def pack_genomes(genomes: Sequence[Genome | Mapping[str, torch.Tensor]], layers: Sequence[SynapticLayer] | None = None,
                 ids: Sequence[str] | None = None) -> PackedGenomes:  # fmt: skip
    """Pack n genomes (Genome or dict layer -> bool mask). ``layers`` gives the order and neuron
    semantics (from `trace_architecture(...).layers`); without it they are read off the mask shapes."""
    packer = GenomePacker(layers)
    for i, genome in enumerate(genomes):
        packer.add(genome, None if ids is None else ids[i])
    return packer.done()


# -- pairwise distances ----------------------------------------------------------------------------
@dataclass
class SetDistances:
    """Pairwise set comparisons of n individuals (n x n matrices) within one scope."""

    sizes: torch.Tensor  # (n,) |A|
    intersection: torch.Tensor  # (n, n) |A n B|
    dense: int  # size of the universe (dense synapses or neurons of the scope)

    @property
    def union(self) -> torch.Tensor:
        return self.sizes[:, None] + self.sizes[None, :] - self.intersection

    @property
    def hamming(self) -> torch.Tensor:
        return self.sizes[:, None] + self.sizes[None, :] - 2 * self.intersection

    @property
    def hamming_fraction(self) -> torch.Tensor:
        return self.hamming.double() / max(1, self.dense)

    @property
    def jaccard(self) -> torch.Tensor:
        """Jaccard distance 1 - |A n B| / |A u B|; 0 where both sets are empty."""
        union = self.union
        similarity = torch.where(union > 0, self.intersection.double() / union.clamp(min=1).double(),
                                 torch.ones((), dtype=torch.float64))  # fmt: skip
        return 1.0 - similarity

    def __add__(self, other: "SetDistances") -> "SetDistances":
        return SetDistances(self.sizes + other.sizes, self.intersection + other.intersection, self.dense + other.dense)


def synapse_distances(packed: PackedGenomes) -> dict[str, SetDistances]:
    """Synapse-set distances per layer and for the whole network (key ``"network"``, first)."""
    per_layer = {}
    for layer in packed.layers:
        per_layer[layer.name] = SetDistances(
            packed.synapses[layer.name], pairwise_intersections(packed.words[layer.name]), layer.numel
        )
    return _with_network(per_layer, len(packed))


def neuron_distances(packed: PackedGenomes) -> dict[str, SetDistances]:
    """Living-neuron-set distances per layer and for the whole network (key ``"network"``, first)."""
    per_layer = {}
    for layer in packed.layers:
        alive = packed.neurons[layer.name]
        words = torch.stack([pack_mask(row) for row in alive]) if len(alive) else torch.zeros(0, 1, dtype=torch.int64)
        per_layer[layer.name] = SetDistances(alive.sum(dim=1), pairwise_intersections(words), layer.out_channels)
    return _with_network(per_layer, len(packed))


def _with_network(per_layer: dict[str, SetDistances], n: int) -> dict[str, SetDistances]:
    total = SetDistances(torch.zeros(n, dtype=torch.int64), torch.zeros(n, n, dtype=torch.int64), 0)
    for d in per_layer.values():
        total = total + d
    return {NETWORK: total, **per_layer}


def jaccard_distance(genomes, layers: Sequence[SynapticLayer] | None = None) -> torch.Tensor:
    """Whole-network Jaccard distance of living synapses, n x n (float64)."""
    return synapse_distances(pack_genomes(genomes, layers))[NETWORK].jaccard


def hamming_distance(genomes, layers: Sequence[SynapticLayer] | None = None, normalized: bool = False) -> torch.Tensor:
    """Whole-network Hamming distance (differing synapses), n x n; ``normalized``: / dense synapses."""
    d = synapse_distances(pack_genomes(genomes, layers))[NETWORK]
    return d.hamming_fraction if normalized else d.hamming


# -- living fractions and spread -------------------------------------------------------------------
def living_fractions(packed: PackedGenomes) -> dict[str, torch.Tensor]:
    """Living fraction of synapses per individual (n,), per scope ("network" first, then layers)."""
    dense_total = sum(layer.numel for layer in packed.layers)
    total = sum((packed.synapses[l.name] for l in packed.layers), torch.zeros(len(packed), dtype=torch.int64))
    out = {NETWORK: total.double() / max(1, dense_total)}
    for layer in packed.layers:
        out[layer.name] = packed.synapses[layer.name].double() / max(1, layer.numel)
    return out


def neuron_fractions(packed: PackedGenomes) -> dict[str, torch.Tensor]:
    """Living fraction of neurons per individual (n,), per scope ("network" first, then layers)."""
    dense_total = sum(layer.out_channels for layer in packed.layers)
    counts = {l.name: packed.neurons[l.name].sum(dim=1) for l in packed.layers}
    total = sum(counts.values(), torch.zeros(len(packed), dtype=torch.int64))
    out = {NETWORK: total.double() / max(1, dense_total)}
    for layer in packed.layers:
        out[layer.name] = counts[layer.name].double() / max(1, layer.out_channels)
    return out


def spread(values) -> dict[str, float]:
    """count, mean, std (ddof=0: the spread of exactly these individuals), min, max, range; NaN ignored."""
    v = np.asarray(pd.to_numeric(pd.Series(np.asarray(values, dtype=object).ravel()), errors="coerce"), dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"count": 0, "mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "range": math.nan}
    return {"count": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "max": float(v.max()), "range": float(v.max() - v.min())}  # fmt: skip


def living_fraction_spread(packed: PackedGenomes) -> pd.DataFrame:
    """Per scope: spread of the living fraction across the individuals (count, mean, std, min, max, range)."""
    rows = [{"scope": scope, **spread(v.numpy())} for scope, v in living_fractions(packed).items()]
    return pd.DataFrame(rows)


# -- functional diversity --------------------------------------------------------------------------
def predictions(output: torch.Tensor, kind: str = "auto") -> torch.Tensor:
    """Discrete predictions of one network's output, flattened to one label per sample (or pixel).

    - ``argmax`` over dimension 1: classifier logits (N, K) -> N labels; dense logits (N, K, H, W) ->
      N*H*W labels (e.g. saliency maps with 2 channels: per-pixel foreground/background).
    - ``threshold``: a single logit channel (N,), (N, 1) or (N, 1, H, W): label = logit > 0.
    - ``auto``: argmax when dimension 1 has more than one channel, threshold otherwise.
    """
    out = output.detach()
    if kind == "auto":
        kind = "argmax" if out.dim() >= 2 and out.shape[1] > 1 else "threshold"
    if kind == "argmax":
        if out.dim() < 2:
            raise ValueError(f"argmax predictions need a class dimension 1, got shape {tuple(out.shape)}")
        return out.argmax(dim=1).reshape(-1)
    if kind == "threshold":
        return (out > 0).reshape(-1).to(torch.int64)
    raise ValueError(f"unknown prediction kind {kind!r}: use 'auto', 'argmax' or 'threshold'")


def functional_disagreement(outputs: Sequence[torch.Tensor], kind: str = "auto") -> torch.Tensor:
    """Pairwise disagreement (n x n, float64) of n networks' outputs on the same batch.

    Entry (i, j) is the fraction of samples (classification) or pixels (dense outputs) whose
    prediction differs between network i and network j (see `predictions`); the diagonal is 0.
    """
    n = len(outputs)
    if n == 0:
        return torch.zeros(0, 0, dtype=torch.float64)
    shapes = {tuple(o.shape) for o in outputs}
    if len(shapes) != 1:
        raise ValueError(f"outputs must all have the same shape (one batch), got {sorted(shapes)}")
    preds = torch.stack([predictions(o, kind) for o in outputs])  # (n, M)
    out = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        out[i, i:] = (preds[i] != preds[i:]).double().mean(dim=1)
    return out + torch.triu(out, diagonal=1).T


# -- outputs of recorded individuals on a held-out batch -------------------------------------------
def held_out_batch(task, size: int = 32, eval_set: str | None = None) -> torch.Tensor:
    """The first ``size`` inputs of the task's first (or named) evaluation set, stacked: a fixed batch."""
    sets = task.eval_sets()
    name = eval_set or next(iter(sets))
    dataset = sets[name]
    n = min(int(size), len(dataset))
    return torch.stack([torch.as_tensor(dataset[i][0]) for i in range(n)])


def checkpoint_outputs(records, task, batch: torch.Tensor, device: str | torch.device = "cpu",
                       ) -> Callable[[str], torch.Tensor]:  # fmt: skip
    """``f(individual_id) -> outputs`` of the recorded individual on ``batch`` (eval mode, float32, CPU).

    One model is built (under a forked RNG: the caller's random state is untouched) and reloaded
    with each checkpoint's weights; dead synapses are exactly zero in them, so the outputs are those
    of the masked network that was measured.
    """
    with torch.random.fork_rng(devices=[]):
        model = task.build_model()
    device = torch.device(device)
    model.to(device).eval()
    batch = batch.to(device)

    @torch.no_grad()
    def outputs(individual_id: str) -> torch.Tensor:
        weights = records.read_checkpoint(individual_id)["weights"]
        model.load_state_dict(weights, strict=True)
        return model(batch).float().cpu()

    return outputs


# -- one generation from the records ---------------------------------------------------------------


def _none_if_na(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA else v


def layers_of_run(records) -> list[SynapticLayer] | None:
    """The run's synaptic layers, from its config's task (None if the task cannot be built here)."""
    try:
        config = yaml.safe_load(records.read_config())
        return list(built_task(config["task"]["name"], config["task"].get("args")).arch.layers)
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
    outputs: Callable[[str], torch.Tensor] | None = None,
    kind: str = "auto",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Diversity of the successful individuals of one generation: (pairs, summary) DataFrames.

    records: a `RunRecords`. arch: an `Architecture` or list of `SynapticLayer` (layer order and
    neuron semantics); None builds it from the run's config (falling back to mask shapes).
    metric_columns: metrics whose spread to summarise (default: all the run's metric columns).
    outputs: optional ``f(individual_id) -> tensor`` on one fixed batch (see `checkpoint_outputs`);
    it adds ``functional_disagreement`` to the network-scope pairs. kind: see `predictions`.

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
    ok = population[population["status"] == "ok"]
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
        if not records.has_checkpoint(individual_id):
            warnings.warn(f"{individual_id}: recorded ok but its checkpoint is missing; left out of the diversity",
                          stacklevel=2)  # fmt: skip
            continue
        payload = records.read_checkpoint(individual_id)
        packer.add(payload["masks"], individual_id)
        del payload
        if outputs is not None:
            outs.append(outputs(individual_id))
        kept.append(row)
    ok = pd.DataFrame(kept).reset_index(drop=True) if kept else ok.iloc[0:0]
    packed = packer.done()
    parents = [(_none_if_na(p)) for p in ok["parent_id"]] if len(ok) else []
    disagreement = functional_disagreement(outs, kind) if outputs is not None else None

    pairs = _pairs_frame(packed, parents, disagreement)
    pairs.insert(0, "generation", np.int32(generation))
    summary = _summary_frame(packed, ok, parents, pairs, list(metric_columns))
    summary.insert(0, "generation", np.int32(generation))
    return pairs, summary


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
        func = (pick(disagreement) if disagreement is not None and scope == NETWORK
                else np.full(len(a), np.nan))  # fmt: skip
        frames.append(pd.DataFrame({
            "a": a, "b": b, "parent_a": pa_, "parent_b": pb_, "siblings": siblings, "scope": scope,
            "jaccard": pick(d.jaccard), "hamming": pick(d.hamming), "hamming_fraction": pick(d.hamming_fraction),
            "shared_synapses": pick(d.intersection), "union_synapses": pick(d.union),
            "dense_synapses": np.full(len(a), d.dense, dtype=np.int64),
            "neuron_jaccard": pick(nd.jaccard), "neuron_hamming": pick(nd.hamming),
            "functional_disagreement": func,
        }))  # fmt: skip
    return pd.concat(frames, ignore_index=True)[columns]


def _empty(fields) -> pd.DataFrame:
    return pa.schema(fields).empty_table().to_pandas()


def _summary_frame(packed: PackedGenomes, ok: pd.DataFrame, parents: list, pairs: pd.DataFrame,
                   metric_columns: list[str]) -> pd.DataFrame:  # fmt: skip
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
                rows.append({"group": group, "parent_id": parent, "scope": scope, "quantity": quantity,
                             **spread(values)})  # fmt: skip
            for quantity, table in (("living_fraction", fractions), ("neuron_fraction", neuron_fr),
                                    ("synapses", synapses)):  # fmt: skip
                rows.append({"group": group, "parent_id": parent, "scope": scope, "quantity": quantity,
                             **spread(table[scope].numpy()[members])})  # fmt: skip
        for metric in metric_columns:
            if metric in ok:
                rows.append({"group": group, "parent_id": parent, "scope": NETWORK, "quantity": metric,
                             **spread(ok[metric].to_numpy()[members])})  # fmt: skip
    frame = pd.DataFrame(rows, columns=[name for name, _ in DIVERSITY_SUMMARY_FIELDS])
    frame["count"] = frame["count"].astype("int64")
    return frame


def write_generation_diversity(
    records,
    generation: int,
    arch=None,
    metric_columns: Sequence[str] | None = None,
    outputs: Callable[[str], torch.Tensor] | None = None,
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


def task_probe(task, records, batch_size: int = 32, device: str | torch.device = "cpu"):
    """(outputs callable, note) for `write_generation_diversity`: ``task``'s network on the first
    ``batch_size`` items of its first evaluation set."""
    batch = held_out_batch(task, batch_size)
    name = next(iter(task.eval_set_names()), "eval")
    return checkpoint_outputs(records, task, batch, device), f"argmax disagreement on {name}[:{len(batch)}]"
