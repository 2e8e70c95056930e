"""Coupling groups: neurons that must live or die together for an offspring to be physically smaller.

A network's neurons are not independent once it is to be compacted. Channel i of ``a + b`` is one
position of one tensor: the neuron feeding it in ``a`` can only leave the network with the one
feeding it in ``b``. The traced wiring (`Architecture`) says which positions are shared:

- operands of elementwise sums and products (residual branches, gates, squeeze-excitation);
- a grouped convolution's structure: either whole groups (its output neurons and the neurons feeding
  its input channels; a depthwise convolution's group is one channel: the filter and the neuron it
  reads), and it stays a grouped convolution with fewer groups; or, where groups are wider than they
  are many, the same channels of every group (output j of every group, input i of every group), and
  it keeps its groups, each thinner (`thins_groups`);
- a GroupNorm's group: its statistics read every channel of the group, so the group goes whole;
- the channels a reshape must keep in step: the groups of a channel shuffle (``view`` into groups,
  ``transpose``, ``view`` back) keep the same channels, or the shuffle would interleave others
  (`Architecture.position_ties`);
- concatenations, transposes and flattening need nothing here: `ChannelMap` already maps their indices.

A *group* is the transitive closure of these ties: a set of (layer, neuron) members. It survives or
dies as one in the cluster encoding (`evopop.synthesis.clusters`), and compaction keeps or removes it
as one, so the genome's living neurons are the ones compaction keeps. A group is *pinned* when a
member is (`Architecture.pinned`: read where its channel cannot be removed, such as the network's
output or an operation evopop cannot see through): it never dies as a cluster, so the genome never
promises what compaction cannot deliver.

Groups of the same shape, that is with members in the same layers (the 256 channels of a ResNet
stage's residual stream, the channels of one depthwise-separable block), form a *family*: the unit
the cluster encoding normalises and applies its environment to, as it does to the neurons of one
layer. A network without couplings has one family per layer, whose groups are the layer's neurons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the architecture module builds the groups; importing it here would be circular
    from .architecture import Architecture


@dataclass(frozen=True)
class Family:
    """Groups with members in the same layers: normalised together, one environment, one random stream."""

    name: str  # its layers joined by "+": a layer's own name for a family of uncoupled neurons
    layers: tuple[str, ...]  # in topological order; the first names the family for per-layer settings
    groups: torch.Tensor  # int64 ids of its groups, ascending


@dataclass(frozen=True)
class Coupling:
    """Every neuron's group, and the groups' families."""

    offsets: dict[str, int]  # layer -> index of its first neuron in the network-wide numbering
    sizes: dict[str, int]  # layer -> neurons
    group: torch.Tensor  # int64 per neuron (network-wide): its group id, 0 .. groups - 1
    pinned: torch.Tensor  # bool per group: a member cannot be removed
    families: tuple[Family, ...]

    @property
    def groups(self) -> int:
        return int(self.pinned.numel())

    def of_layer(self, name: str) -> torch.Tensor:
        """Group id of each neuron of layer ``name``."""
        start = self.offsets[name]
        return self.group[start : start + self.sizes[name]]

    def members(self) -> torch.Tensor:
        """Neurons per group (int64)."""
        return torch.bincount(self.group, minlength=self.groups)

    def any_member(self, per_neuron: dict[str, torch.Tensor]) -> torch.Tensor:
        """Bool per group: true for at least one of its members in ``per_neuron`` (layer -> bool per neuron)."""
        hits = torch.zeros(self.groups, dtype=torch.int64)
        for name, values in per_neuron.items():
            hits.index_add_(0, self.of_layer(name), values.cpu().long())
        return hits > 0

    def sum_members(self, per_neuron: dict[str, torch.Tensor]) -> torch.Tensor:
        """Float64 per group: the sum of its members' values in ``per_neuron`` (layer -> value per neuron)."""
        total = torch.zeros(self.groups, dtype=torch.float64)
        for name, values in per_neuron.items():
            total.index_add_(0, self.of_layer(name), values.cpu().double())
        return total

    def spread(self, per_group: torch.Tensor) -> dict[str, torch.Tensor]:
        """Layer -> each neuron's value of its group in ``per_group``."""
        return {name: per_group[self.of_layer(name)] for name in self.offsets}


def coupling_groups(arch: Architecture) -> Coupling:
    """The coupling groups of ``arch`` (every neuron alone where it was not traced)."""
    offsets, sizes, total = {}, {}, 0
    for layer in arch.layers:
        offsets[layer.name], sizes[layer.name] = total, layer.out_channels
        total += layer.out_channels
    ties = _Ties(total, offsets)
    if arch.traced:
        for channels in arch.couplings:
            ties.tie_channels(channels, torch.arange(channels.size))
        for channels, positions in arch.position_ties:
            ties.tie_channels(channels, positions)
        for layer in arch.layers:
            if layer.groups > 1 and len(arch.inputs.get(layer.name, ())) == 1:
                ties.tie_conv_groups(layer, arch.inputs[layer.name][0])
        for attachment in arch.attachments:
            if 0 < attachment.groups < attachment.inputs.size:  # GroupNorm(1, C) ties every channel
                per_group = attachment.inputs.size // attachment.groups
                ties.tie_channels(attachment.inputs, torch.arange(attachment.inputs.size) // per_group)
    labels = ties.components()
    # a component's label is its smallest neuron (neurons are numbered before positions): groups are
    # numbered by their first member, so that an uncoupled layer's groups are its neurons in order
    group = torch.unique(labels[:total], return_inverse=True)[1]
    n_groups = int(group.max()) + 1 if total else 0
    pinned = torch.zeros(n_groups, dtype=torch.bool)
    for layer in arch.layers:
        start = offsets[layer.name]
        mark = arch.pinned.get(layer.name)
        if mark is not None:
            pinned[group[start : start + layer.out_channels][mark]] = True
    pinned[group[torch.isin(labels[:total], ties.fixed_labels(labels))]] = True  # tied to a network input
    return Coupling(offsets, sizes, group, pinned, _families(arch, offsets, group, n_groups))


def _families(arch: Architecture, offsets: dict[str, int], group: torch.Tensor, n_groups: int) -> tuple[Family, ...]:
    """Groups by the layers their members are in, in order of each family's first group."""
    order = {layer.name: i for i, layer in enumerate(arch.layers)}
    in_layer = torch.zeros((n_groups, len(arch.layers)), dtype=torch.bool)
    for layer in arch.layers:
        start = offsets[layer.name]
        in_layer[group[start : start + layer.out_channels], order[layer.name]] = True
    signatures, family_of = torch.unique(in_layer, dim=0, return_inverse=True)
    families = []
    for f in range(signatures.shape[0]):
        groups = (family_of == f).nonzero().flatten()
        layers = tuple(arch.layers[i].name for i in signatures[f].nonzero().flatten().tolist())
        families.append(Family("+".join(layers), layers, groups))
    families.sort(key=lambda family: int(family.groups[0]))
    return tuple(families)


def thins_groups(groups: int, in_per_group: int, out_per_group: int) -> bool:
    """True where a grouped convolution loses channels in every group rather than whole groups: where
    that gives more units to choose from (RegNet's 16-channel groups, say; not ResNeXt's 32 groups of 4)."""
    return min(in_per_group, out_per_group) > groups


class _Ties:
    """Union-find over neurons and *positions* (a coupled channel, a convolution group): every neuron
    tied to a position joins its component. Solved at once by label propagation on tensors."""

    def __init__(self, neurons: int, offsets: dict[str, int]):
        self.neurons, self.offsets = neurons, offsets
        self.positions = 0
        self.edges: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.fixed: list[torch.Tensor] = []  # positions something other than a neuron feeds (a network input)

    def new_positions(self, count: int) -> torch.Tensor:
        """``count`` new position nodes."""
        start = self.neurons + self.positions
        self.positions += count
        return torch.arange(start, start + count)

    def tie_channels(self, channels, position_of_channel: torch.Tensor) -> None:
        """Tie the neurons feeding channel c of ``channels`` (a `ChannelMap`) to new position
        ``position_of_channel[c]`` (channels given one position are tied together)."""
        count = int(position_of_channel.max()) + 1 if position_of_channel.numel() else 0
        self.tie(channels, self.new_positions(count)[position_of_channel])

    def tie(self, channels, positions: torch.Tensor) -> None:
        """Tie the neurons feeding channel c of ``channels`` to the position node ``positions[c]``."""
        for src in channels.sources:
            fed = src.index >= 0
            if src.producer is None:
                self.fixed.append(positions[fed])
            else:
                self.edges.append((self.offsets[src.producer] + src.index[fed], positions[fed]))

    def tie_conv_groups(self, layer, inputs) -> None:
        """A grouped convolution stays one with the same structure in every group, whichever is finer:
        - whole groups (as many units as groups; a depthwise convolution's only choice): group g's output
          neurons and the neurons feeding its input channels live and die together;
        - thinner groups (as many units as channels per group, when that is more): output j of every group
          is one unit, input channel i of every group another, and each group keeps the same ones."""
        g = layer.groups
        out_per_group, in_per_group = layer.out_channels // g, layer.in_channels // g
        outputs, inputs_ = torch.arange(layer.out_channels), torch.arange(layer.in_channels)
        if thins_groups(g, in_per_group, out_per_group):
            out_positions, in_positions = self.new_positions(out_per_group), self.new_positions(in_per_group)
            self.edges.append((self.offsets[layer.name] + outputs, out_positions[outputs % out_per_group]))
            self.tie(inputs, in_positions[inputs_ % in_per_group])
            return
        positions = self.new_positions(g)
        self.edges.append((self.offsets[layer.name] + outputs, positions[outputs // out_per_group]))
        self.tie(inputs, positions[inputs_ // in_per_group])

    def components(self) -> torch.Tensor:
        """Label per node (neurons, then positions): the smallest node of its component."""
        labels = torch.arange(self.neurons + self.positions)
        if not self.edges:
            return labels
        a = torch.cat([e[0] for e in self.edges])
        b = torch.cat([e[1] for e in self.edges])
        while True:
            low = torch.minimum(labels[a], labels[b])
            before = labels.clone()
            labels.scatter_reduce_(0, a, low, reduce="amin")
            labels.scatter_reduce_(0, b, low, reduce="amin")
            labels = labels[labels]  # pointer jumping: chains shorten geometrically
            if torch.equal(labels, before):
                return labels

    def fixed_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """The component labels of the fixed positions."""
        return labels[torch.cat(self.fixed)].unique() if self.fixed else torch.zeros(0, dtype=torch.int64)
