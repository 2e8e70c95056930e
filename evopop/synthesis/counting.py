"""Counting: synapses, neurons, other parameters and multiply-accumulates, dense vs. living.

MACs count the multiply-accumulates of one sample: each living synapse of a conv is used once per
output position, of a deconv once per input position, of a linear once per token; attention adds
its two products per head (`Architecture.other_macs`), which go with their head. These are
*nominal* figures for the masked network; the realised speed-up needs compaction into smaller dense
layers. A network that could not be
traced (see `Architecture.traced`) has no MACs figures: they are reported as 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .architecture import Architecture
from .genome import Genome
from .masking import parameter_masks


@dataclass(frozen=True)
class LayerCount:
    name: str
    kind: str
    synapses: int
    dense_synapses: int
    neurons: int
    dense_neurons: int
    macs: int
    dense_macs: int

    @property
    def living_fraction(self) -> float:
        return self.synapses / self.dense_synapses if self.dense_synapses else 0.0


@dataclass(frozen=True)
class Counts:
    layers: tuple[LayerCount, ...]
    other_params: int  # living non-synaptic parameters (biases, norms, ...)
    dense_other_params: int
    other_macs: int = 0  # MACs no synaptic layer performs (attention's products), of living heads
    dense_other_macs: int = 0

    @property
    def synapses(self) -> int:
        return sum(l.synapses for l in self.layers)

    @property
    def dense_synapses(self) -> int:
        return sum(l.dense_synapses for l in self.layers)

    @property
    def neurons(self) -> int:
        return sum(l.neurons for l in self.layers)

    @property
    def dense_neurons(self) -> int:
        return sum(l.dense_neurons for l in self.layers)

    @property
    def macs(self) -> int:
        return sum(l.macs for l in self.layers) + self.other_macs

    @property
    def dense_macs(self) -> int:
        return sum(l.dense_macs for l in self.layers) + self.dense_other_macs

    @property
    def params(self) -> int:
        return self.synapses + self.other_params

    @property
    def dense_params(self) -> int:
        return self.dense_synapses + self.dense_other_params


def count(arch: Architecture, genome: Genome) -> Counts:
    masks = parameter_masks(arch, genome)
    layers = []
    for layer in arch.layers:
        synapses = int(torch.count_nonzero(genome.masks[layer.name]))
        per_synapse = arch.macs_per_synapse.get(layer.name, 0)
        layers.append(
            LayerCount(
                name=layer.name,
                kind=layer.kind,
                synapses=synapses,
                dense_synapses=layer.numel,
                neurons=int(torch.count_nonzero(genome.neurons(layer))),
                dense_neurons=layer.out_channels,
                macs=synapses * per_synapse,
                dense_macs=layer.numel * per_synapse,
            )
        )
    dense_other = sum(arch.other_params.values())
    dead_other = sum(
        masks[name].numel() - int(torch.count_nonzero(masks[name])) for name in arch.other_params if name in masks
    )
    dense_other_macs = sum(arch.other_macs.values())
    other_macs = dense_other_macs - sum(
        heads.removed_products(int(heads.living(genome.neurons(arch.layer(heads.projection)).cpu()).sum()))
        for heads in arch.attention
    )
    return Counts(tuple(layers), dense_other - dead_other, dense_other, other_macs, dense_other_macs)


def efficiency(ancestor_synapses: int, synapses: int) -> float:
    """Architectural efficiency of the method: ancestor synapses / offspring synapses."""
    return ancestor_synapses / synapses if synapses else float("inf")
