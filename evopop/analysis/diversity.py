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

Pure functions over tensors: no files, no Ray. `evopop.analysis.generation_diversity` applies them to
one recorded generation; `evopop.analysis.diversity_hook` records that after every generation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..synthesis.genome import Genome
from ..synthesis.layers import SynapticLayer

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
                raise ValueError(
                    f"mask of layer {layer.name!r} has shape {tuple(mask.shape)}, expected {tuple(layer.weight_shape)}"
                )
            self._words.setdefault(layer.name, []).append(pack_mask(mask))
            self._neurons.setdefault(layer.name, []).append(layer.living_neurons(mask))
        self.ids.append(individual_id if individual_id is not None else str(len(self.ids)))

    def done(self) -> PackedGenomes:
        layers = self.layers or []
        words = {
            l.name: torch.stack(self._words[l.name]) if self.ids else torch.zeros(0, 1, dtype=torch.int64)
            for l in layers
        }
        neurons = {
            l.name: torch.stack(self._neurons[l.name]) if self.ids else torch.zeros(0, l.out_channels, dtype=torch.bool)
            for l in layers
        }
        synapses = {name: popcount(w) for name, w in words.items()}
        return PackedGenomes(list(self.ids), list(layers), words, synapses, neurons)


def pack_genomes(
    genomes: Sequence[Genome | Mapping[str, torch.Tensor]],
    layers: Sequence[SynapticLayer] | None = None,
    ids: Sequence[str] | None = None,
) -> PackedGenomes:
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
        similarity = torch.where(
            union > 0, self.intersection.double() / union.clamp(min=1).double(), torch.ones((), dtype=torch.float64)
        )
        return 1.0 - similarity

    def __add__(self, other: SetDistances) -> SetDistances:
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
    return {
        "count": int(v.size),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        "max": float(v.max()),
        "range": float(v.max() - v.min()),
    }


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
    shapes = {tuple(o.shape) for o in outputs}
    if len(shapes) > 1:
        raise ValueError(f"outputs must all have the same shape (one batch), got {sorted(shapes)}")
    return prediction_disagreement([compact_labels(predictions(o, kind)) for o in outputs])


def compact_labels(labels: torch.Tensor) -> torch.Tensor:
    """``labels`` in the smallest integer type that holds them (uint8 for up to 256 classes): a
    generation's predictions on a dense batch are held at once (64 saliency maps of 32 x 224 x 224)."""
    if labels.numel() == 0 or (labels.min() >= 0 and labels.max() < 256):
        return labels.to(torch.uint8)
    return labels


def prediction_disagreement(labels: Sequence[torch.Tensor]) -> torch.Tensor:
    """Pairwise disagreement (n x n, float64) of n networks' flat predictions (`predictions`)."""
    n = len(labels)
    if n == 0:
        return torch.zeros(0, 0, dtype=torch.float64)
    if len({tuple(x.shape) for x in labels}) != 1:
        raise ValueError("predictions must all have the same length (one batch)")
    preds = torch.stack(list(labels))  # (n, M)
    out = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        out[i, i:] = (preds[i] != preds[i:]).double().mean(dim=1)
    return out + torch.triu(out, diagonal=1).T
