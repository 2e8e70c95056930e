"""Channel maps: which producing neuron feeds each channel of a tensor.

Neuron death needs to know, for every input channel of a synaptic layer, which neurons of earlier
layers it reads. A `ChannelMap` answers that for one tensor: a list of sources, each mapping the
tensor's channels to neurons of one producing layer (or to "always alive" for network inputs and
anything we cannot see through). A channel is dead iff every source that feeds it is dead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Source:
    """Channel i of the tensor reads neuron ``index[i]`` of ``producer`` (-1: not fed by it).

    Index tensors always live on the CPU, whatever default device is active while tracing.

    ``producer=None`` marks neurons evopop never kills (network inputs, opaque operations).
    """

    producer: str | None
    index: torch.Tensor  # int64, one entry per channel


@dataclass
class ChannelMap:
    dim: int  # the tensor dimension that holds channels / features
    size: int
    sources: list[Source] = field(default_factory=list)
    # channels viewed over several dimensions (``x.view(b, g, c // g, h, w)``, a channel shuffle): their
    # sizes, from ``dim`` on, in row-major order; None for channels on ``dim`` alone
    block: tuple[int, ...] | None = None
    # every dead channel holds an exact zero (what a layer norm's statistics need to drop it); False after
    # an operation that maps zero elsewhere (a sigmoid, a norm without weights)
    zero_when_dead: bool = True

    def fits(self, shape) -> bool:
        """True iff a tensor of ``shape`` holds these channels where this map says."""
        dims = self.block or (self.size,)
        return shape is not None and tuple(shape[self.dim : self.dim + len(dims)]) == tuple(dims)

    def reordered(self, order: torch.Tensor, dim: int, block: tuple[int, ...] | None) -> ChannelMap:
        """Channel i of the result is channel ``order[i]`` of this one (a transpose inside the block)."""
        sources = [Source(s.producer, s.index[order]) for s in self.sources]
        return ChannelMap(dim, self.size, sources, block if block and len(block) > 1 else None, self.zero_when_dead)

    @staticmethod
    def always_alive(dim: int, size: int) -> ChannelMap:
        return ChannelMap(dim, size, [Source(None, torch.arange(size, device="cpu"))])

    @staticmethod
    def of_layer(name: str, dim: int, size: int) -> ChannelMap:
        return ChannelMap(dim, size, [Source(name, torch.arange(size, device="cpu"))])

    def alive(self, neurons: dict[str, torch.Tensor]) -> torch.Tensor:
        """Bool per channel: fed by at least one living neuron (or an always-alive source).

        A producer missing from ``neurons`` is not decided yet (a reused layer reading a later
        one, i.e. a cycle in the cascade): its channels count as alive, which is always safe.
        """
        alive = torch.zeros(self.size, dtype=torch.bool, device="cpu")
        for src in self.sources:
            fed = src.index >= 0
            if src.producer is None or src.producer not in neurons:
                alive |= fed
            else:
                alive |= fed & neurons[src.producer][src.index.clamp(min=0)].cpu()
        return alive

    def flatten(self, spatial: int) -> ChannelMap:
        """(N, C, *S) flattened to (N, C*prod(S)): each channel becomes ``spatial`` features."""
        sources = [Source(s.producer, s.index.repeat_interleave(spatial)) for s in self.sources]
        return ChannelMap(1, self.size * spatial, sources, zero_when_dead=self.zero_when_dead)


def concatenate(maps: list[ChannelMap], dim: int) -> ChannelMap:
    """Channel map of ``torch.cat(tensors, dim)`` along the channel dimension.

    Sources of one producer share an index tensor where their parts do not overlap (keeping
    DenseNet-style chains of concatenations compact); a part fed twice by the same producer
    (e.g. after ``p + p[perm]``) keeps both sources.
    """
    total = sum(m.size for m in maps)
    merged: list[Source] = []
    offset = 0
    for m in maps:
        for src in m.sources:
            fed = src.index >= 0
            target = next(
                (
                    s.index
                    for s in merged
                    if s.producer == src.producer and bool((s.index[offset : offset + m.size][fed] < 0).all())
                ),
                None,
            )
            if target is None:
                target = torch.full((total,), -1, dtype=torch.int64, device="cpu")
                merged.append(Source(src.producer, target))
            target[offset : offset + m.size][fed] = src.index[fed]
        offset += m.size
    return ChannelMap(dim, total, merged, zero_when_dead=all(m.zero_when_dead for m in maps))


def union(maps: list[ChannelMap]) -> ChannelMap:
    """Channel map of an elementwise combination (add, mul) of equally shaped tensors."""
    first = maps[0]
    sources = [src for m in maps for src in m.sources]
    return ChannelMap(first.dim, first.size, sources, zero_when_dead=all(m.zero_when_dead for m in maps))
