"""Neuron death.

- Forward (the method's rule, `kill_orphans`): a neuron with no incoming synapses dies, and its
  outgoing synapses with it. This defines the genome the method synthesizes and inherits.
- Backward (`kill_unused`): a neuron none of whose outputs reaches the network's output is dead too,
  and its incoming synapses with it. `effective_genome` applies both until nothing more dies: the
  synapses that can influence the output. evopop records counts of both (``synapses`` as the paper
  counts them, ``effective_synapses``) and keeps inheriting the method's genome, so that runs stay
  comparable with the paper's table and every genome stays re-synthesizable bit for bit; the
  effective genome is a pure function of it.
"""

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


def kill_unused(arch: Architecture, genome: Genome) -> dict[str, torch.Tensor]:
    """In place: the backward cascade. A neuron none of whose outputs reaches the network's output is
    dead, and its incoming synapses with it; returns the living neurons per layer.

    A neuron is used iff something other than synapses reads it (`Architecture.sinks`: the output,
    an operation evopop cannot see through) or a used neuron of a later layer reads it through a
    living synapse. One pass in reverse topological order suffices: a layer's consumers are final
    before it is visited. A layer read by an earlier one (a reused layer: a cycle in the cascade) is
    kept whole, as is every layer of a network that could not be traced: the safe side.
    """
    if not arch.traced:
        return {layer.name: genome.neurons(layer).cpu() for layer in arch.layers}
    position = {layer.name: i for i, layer in enumerate(arch.layers)}
    used = {name: sink.clone() for name, sink in arch.sinks.items()}
    for layer in arch.layers:
        if layer.name not in arch.inputs:  # never called as a module: how it is used is unknown
            used[layer.name][:] = True
    for layer in arch.layers:
        for m in arch.inputs.get(layer.name, []):
            for src in m.sources:
                if src.producer is not None and position[src.producer] >= position[layer.name]:
                    used[src.producer][:] = True
    neurons: dict[str, torch.Tensor] = {}
    for layer in reversed(arch.layers):
        mask = genome.masks[layer.name]
        alive = layer.living_neurons(mask).cpu() & used[layer.name]
        layer.keep_neurons(mask, alive.to(mask.device))
        neurons[layer.name] = alive
        reads = layer.used_inputs(mask).cpu()
        for m in arch.inputs.get(layer.name, []):
            for src in m.sources:
                if src.producer is not None:
                    fed = src.index >= 0
                    used[src.producer][src.index[fed & reads]] = True
    return {layer.name: neurons[layer.name] for layer in arch.layers}


def effective_genome(arch: Architecture, genome: Genome) -> Genome:
    """The genome without the synapses that cannot influence the network's output (a copy).

    Forward (a neuron without incoming synapses) and backward (a neuron whose outputs reach nothing)
    cascades, repeated until neither removes anything more: a neuron left without inputs by the
    backward pass kills its outgoing synapses in turn.
    """
    out = Genome({name: mask.clone() for name, mask in genome.masks.items()})
    before = None
    while before != (now := sum(int(torch.count_nonzero(m)) for m in out.masks.values())):
        before = now
        kill_orphans(arch, out)
        kill_unused(arch, out)
    return out
