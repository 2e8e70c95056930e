"""What evopop can remove from a network, before any run: its coupling groups, which neurons can never
die and why, and its dense size.

    print(inspect_architecture(trace_architecture(model, example_input)))
"""

from __future__ import annotations

from dataclasses import dataclass

from .architecture import Architecture


@dataclass(frozen=True)
class PinnedLayer:
    """A layer with neurons that can never die as clusters, and why."""

    name: str
    pinned: int  # neurons of the layer in pinned groups
    neurons: int
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Inspection:
    traced: bool
    note: str
    layers: int
    neurons: int
    synapses: int
    other_params: int
    dense_macs: int  # multiply-accumulates of one sample (`Counts.dense_macs`)
    groups: int
    coupled_groups: int  # groups of more than one neuron
    largest_group: int
    families: int
    pinned_neurons: int  # in pinned groups: never die as clusters, never removed by compaction
    output_neurons: int  # read by the network's output (a class, say): pinned by design
    pinned_layers: tuple[PinnedLayer, ...]
    attentions: int = 0  # attentions whose heads are followed: each head is one coupling group
    heads: int = 0

    @property
    def removable_fraction(self) -> float:
        return 1.0 - self.pinned_neurons / self.neurons if self.neurons else 0.0

    @property
    def never_die_fraction(self) -> float:
        """Neurons that can never die, beyond the network's own outputs, as a fraction of all."""
        return (self.pinned_neurons - self.output_neurons) / self.neurons if self.neurons else 0.0

    def __str__(self) -> str:
        lines = [
            f"{self.layers} synaptic layers, {self.neurons:,} neurons, {self.synapses:,} synapses, "
            f"{self.synapses + self.other_params:,} parameters, {self.dense_macs:,} MACs per sample",
        ]
        if not self.traced:
            return "\n".join([*lines, f"not traced: {self.note}; nothing can be compacted"])
        lines.append(
            f"{self.groups:,} coupling groups in {self.families} families "
            f"({self.coupled_groups:,} of several neurons, the largest {self.largest_group})"
        )
        if self.attentions:
            lines.append(f"{self.attentions} attentions followed: their {self.heads} heads live and die whole")
        lines.append(
            f"{self.removable_fraction:.1%} of the neurons can die; {self.output_neurons:,} are the network's "
            f"outputs; {self.never_die_fraction:.1%} more can never die:"
        )
        for layer in self.pinned_layers:
            lines.append(f"  {layer.name}: {layer.pinned} of {layer.neurons} neurons, {'; '.join(layer.reasons)}")
        return "\n".join(lines)


OUTPUT = "the network's output"


def inspect_architecture(arch: Architecture) -> Inspection:
    coupling = arch.groups
    sizes = coupling.members()
    pinned_neuron = coupling.pinned[coupling.group]
    layers, outputs = [], 0
    for layer in arch.layers:
        start = coupling.offsets[layer.name]
        pinned = pinned_neuron[start : start + layer.out_channels]
        count = int(pinned.sum())
        reasons = tuple(arch.pin_reasons.get(layer.name, ()))
        if OUTPUT in reasons and len(reasons) == 1:
            outputs += count
            continue
        if count:
            layers.append(PinnedLayer(layer.name, count, layer.out_channels, reasons or ("tied to a pinned neuron",)))
    return Inspection(
        traced=arch.traced,
        note=arch.note,
        layers=len(arch.layers),
        neurons=sum(layer.out_channels for layer in arch.layers),
        synapses=arch.synapses,
        other_params=sum(arch.other_params.values()),
        dense_macs=sum(layer.numel * arch.macs_per_synapse.get(layer.name, 0) for layer in arch.layers)
        + sum(arch.other_macs.values()),
        groups=coupling.groups,
        coupled_groups=int((sizes > 1).sum()),
        largest_group=int(sizes.max()) if sizes.numel() else 0,
        families=len(coupling.families),
        pinned_neurons=int(pinned_neuron.sum()),
        output_neurons=outputs,
        pinned_layers=tuple(layers),
        attentions=len(arch.attention),
        heads=sum(heads.heads for heads in arch.attention),
    )
