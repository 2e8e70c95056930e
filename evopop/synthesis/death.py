"""Neuron death: a neuron with no incoming synapses dies, and its outgoing synapses with it."""

from __future__ import annotations

import torch

from .architecture import Architecture
from .genome import Genome


def input_liveness(arch: Architecture, name: str, neurons: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Bool per input channel of layer ``name``: fed by a living neuron in at least one of its calls."""
    maps = arch.inputs.get(name)
    if not maps:
        return None
    alive = maps[0].alive(neurons)
    for m in maps[1:]:
        alive |= m.alive(neurons)
    return alive


def kill_orphans(arch: Architecture, genome: Genome) -> dict[str, torch.Tensor]:
    """In place: cascade neuron death through ``genome``; returns living neurons per layer.

    One pass in topological order suffices: a layer's producers are final before it is visited.
    """
    neurons: dict[str, torch.Tensor] = {}
    for layer in arch.layers:
        mask = genome.masks[layer.name]
        alive_in = input_liveness(arch, layer.name, neurons)
        if alive_in is not None and not bool(alive_in.all()):
            layer.keep_inputs(mask, alive_in.to(mask.device))
        neurons[layer.name] = layer.living_neurons(mask).cpu()
    return neurons
