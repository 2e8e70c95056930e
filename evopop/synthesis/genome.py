"""The genome: which synapses of a network are alive.

One bool mask per synaptic layer, shaped like the layer's weight (1 byte per synapse; a VGG16-sized
genome is 138 MB beside 553 MB of float32 weights). Living neurons are derived from the masks, so
they can never disagree with them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from .architecture import Architecture
from .layers import SynapticLayer


@dataclass
class Genome:
    masks: dict[str, torch.Tensor]  # layer name -> bool tensor of the weight's shape

    @staticmethod
    def full(arch: Architecture, device: torch.device | str = "cpu") -> Genome:
        """Every synapse alive: the genome of an ancestor trained without masks."""
        return Genome({l.name: torch.ones(l.weight_shape, dtype=torch.bool, device=device) for l in arch.layers})

    def neurons(self, layer: SynapticLayer) -> torch.Tensor:
        """Bool per neuron (output channel / unit) of ``layer``: alive iff it has an incoming synapse."""
        return layer.living_neurons(self.masks[layer.name])

    def living_neurons(self, arch: Architecture) -> dict[str, torch.Tensor]:
        return {layer.name: self.neurons(layer) for layer in arch.layers}

    def synapses(self) -> int:
        return sum(int(torch.count_nonzero(m)) for m in self.masks.values())

    def to(self, device: torch.device | str) -> Genome:
        return Genome({k: m.to(device) for k, m in self.masks.items()})

    def digest(self) -> str:
        """A content hash of the masks: equal digests mean bit-identical genomes."""
        h = hashlib.blake2b(digest_size=16)
        for name in sorted(self.masks):
            mask = self.masks[name].detach().to("cpu").contiguous()
            h.update(name.encode())
            h.update(str(tuple(mask.shape)).encode())
            h.update(mask.view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def validate(self, arch: Architecture) -> None:
        """Raise ValueError naming the first layer whose mask is missing or misshapen."""
        expected = {l.name: l.weight_shape for l in arch.layers}
        for name in self.masks:
            if name not in expected:
                raise ValueError(f"genome has a mask for {name!r}, which is not a synaptic layer of the network")
        for name, shape in expected.items():
            if name not in self.masks:
                raise ValueError(f"genome has no mask for synaptic layer {name!r}")
            mask = self.masks[name]
            if tuple(mask.shape) != shape:
                raise ValueError(
                    f"mask of layer {name!r} has shape {tuple(mask.shape)}, but its weight has shape {shape}"
                )
            if mask.dtype != torch.bool:
                raise ValueError(f"mask of layer {name!r} has dtype {mask.dtype}; masks are torch.bool")

    def is_subset_of(self, other: Genome) -> bool:
        """True iff every synapse alive here is alive in ``other`` (heredity)."""
        return all(not bool((m & ~other.masks[k]).any()) for k, m in self.masks.items())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: m.detach().cpu() for k, m in self.masks.items()}

    @staticmethod
    def from_state_dict(state: dict[str, torch.Tensor]) -> Genome:
        return Genome({k: v.to(torch.bool) for k, v in state.items()})
