"""Backward neuron death (effective liveness) on hand-built graphs: a branch that feeds nothing, a
concatenation whose consumer died, a head with no synapse left, reused layers, untraceable nets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evopop.synthesis import Environment, Genome, count, synaptic_weights, synthesize, trace_architecture
from evopop.synthesis.death import effective_genome, kill_unused


def living(genome: Genome) -> dict[str, int]:
    return {name: int(mask.sum()) for name, mask in genome.masks.items()}


class SideBranch(nn.Module):
    """``side`` is computed and thrown away: it feeds nothing."""

    def __init__(self):
        super().__init__()
        self.a, self.side = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 1)
        self.b, self.head = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        self.side(h)
        return self.head(torch.relu(self.b(h)))


def test_a_branch_that_feeds_nothing_is_dead_entirely():
    arch = trace_architecture(SideBranch(), torch.zeros(1, 3, 8, 8))
    effective = effective_genome(arch, Genome.full(arch))
    assert living(effective) == {"a": 4 * 3 * 9, "side": 0, "b": 4 * 4 * 9, "head": 2 * 4}
    assert count(arch, effective).synapses == count(arch, Genome.full(arch)).synapses - 4 * 2


class Concat(nn.Module):
    """``p`` and ``q`` are concatenated and read by ``c``, the only consumer of both."""

    def __init__(self):
        super().__init__()
        self.p, self.q, self.c = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 3, 1), nn.Conv2d(5, 4, 1)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        y = self.c(torch.relu(torch.cat([self.p(x), self.q(x)], dim=1)))
        return self.out(y.mean(dim=(2, 3)))


def test_channels_of_a_concat_that_no_living_synapse_reads_kill_their_producers():
    arch = trace_architecture(Concat(), torch.zeros(1, 3, 4, 4))
    genome = Genome.full(arch)
    genome.masks["c"][:, 2:] = False  # c no longer reads q's three channels (concat offset 2)
    genome.masks["c"][:, 1] = False  # nor p's second channel
    effective = effective_genome(arch, genome)
    assert living(effective)["q"] == 0  # every q neuron reaches nothing any more: all its synapses die
    assert effective.masks["p"][0].all() and not effective.masks["p"][1].any()
    assert living(effective)["c"] == living(genome)["c"]  # nothing downstream of c changed


class TwoHeads(nn.Module):
    """The saliency net's shape in small: two branches, each with a 1x1 head, summed at the output."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Conv2d(3, 4, 3, padding=1)
        self.local1, self.local2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.global1 = nn.Conv2d(4, 4, 3, padding=1)
        self.score_local, self.score_global = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = torch.relu(self.trunk(x))
        local = self.score_local(torch.relu(self.local2(torch.relu(self.local1(h)))))
        return local + self.score_global(torch.relu(self.global1(h)))


def test_a_head_with_no_synapse_left_takes_its_whole_branch_with_it():
    arch = trace_architecture(TwoHeads(), torch.zeros(1, 3, 8, 8))
    genome = Genome.full(arch)
    genome.masks["score_local"][:] = False
    effective = effective_genome(arch, genome)
    assert living(effective)["local1"] == living(effective)["local2"] == 0
    assert living(effective)["trunk"] == living(genome)["trunk"]  # still read by the global branch
    assert living(effective)["global1"] == living(genome)["global1"]
    # the method's genome is untouched: effective liveness is computed from it, never written into it
    assert living(genome)["local1"] == 4 * 4 * 9


def test_a_neuron_read_only_by_dead_neurons_dies_over_several_layers():
    arch = trace_architecture(TwoHeads(), torch.zeros(1, 3, 8, 8))
    genome = Genome.full(arch)
    genome.masks["score_local"][:, 3] = False  # local2's neuron 3 is read by nothing
    genome.masks["local2"][:3, 1] = False  # local1's neuron 1 is read only by local2's neuron 3
    effective = effective_genome(arch, genome)
    assert not effective.masks["local2"][3].any()
    assert not effective.masks["local1"][1].any()
    assert effective.masks["local1"][0].all() and effective.masks["local2"][0].any()


def test_neurons_read_by_an_opaque_operation_are_kept():
    class Opaque(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(h) + torch.softmax(h, dim=1).sum(dim=1, keepdim=True)  # softmax mixes channels

    arch = trace_architecture(Opaque(), torch.zeros(1, 4))
    genome = Genome.full(arch)
    genome.masks["b"][:] = False
    assert living(effective_genome(arch, genome))["a"] == 12


def test_a_reused_layer_is_kept_whole_where_the_cascade_has_a_cycle():
    class Reused(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.a(self.b(self.a(x)))  # a reads b, which reads a

    arch = trace_architecture(Reused(), torch.zeros(1, 4))
    genome = Genome.full(arch)
    neurons = kill_unused(arch, genome)
    assert arch.names == ["a", "b"]  # b comes after a, yet a's second call reads it
    assert bool(neurons["b"].all()) and bool(genome.masks["b"].all())


def test_untraceable_networks_keep_their_genome():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x) if x.sum() > 0 else x  # data-dependent control flow

    with pytest.warns(UserWarning, match="cannot be traced"):
        arch = trace_architecture(Branchy(), torch.zeros(1, 4))
    genome = Genome.full(arch)
    assert living(effective_genome(arch, genome)) == living(genome)


def test_effective_genome_is_a_subset_and_synthesis_is_unchanged():
    torch.manual_seed(0)
    model = TwoHeads()
    arch = trace_architecture(model, torch.zeros(1, 3, 8, 8))
    weights = synaptic_weights(model, arch)
    child = synthesize(arch, weights, Genome.full(arch), Environment(0.3), seed=11)
    digest = child.digest()
    effective = effective_genome(arch, child)
    assert effective.is_subset_of(child) and child.digest() == digest
    assert effective_genome(arch, effective).digest() == effective.digest()  # a fixed point


def test_the_saliency_networks_local_branch_dies_with_its_head():
    """The issue's case: once score_local has no synapse left, c6-c9, d1 and d2 feed nothing."""
    from evopop.models.saliency import SaliencyNet

    model = SaliencyNet(width=0.125, batch_norm=True)
    arch = trace_architecture(model, torch.zeros(1, 3, 64, 64))
    genome = Genome.full(arch)
    genome.masks["score_local"][:] = False
    effective = effective_genome(arch, genome)
    dead = {name for name in arch.names if living(effective)[name] == 0}
    assert dead == {"score_local", "c6.0", "c7.0", "d1.0", "c8.0", "d2.0", "d2.3", "c9.0"}
    assert all(living(effective)[n] == living(genome)[n] for n in arch.names if n not in dead)  # trunk, global
