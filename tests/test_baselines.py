"""Baselines at matched sparsity: exact per-layer counts, magnitude order, seeded randomness, heredity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evopop.synthesis import Environment, Genome, matched_genome, synaptic_weights, synthesize, trace_architecture


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    arch = trace_architecture(model, torch.zeros(1, 20))
    weights = synaptic_weights(model, arch)
    parent = synthesize(arch, weights, Genome.full(arch), Environment(0.8, "budget"), seed=1)
    child = synthesize(arch, weights, parent, Environment(0.5, "budget"), seed=2)
    counts = {name: int(mask.sum()) for name, mask in child.masks.items()}
    return arch, weights, parent, counts


@pytest.mark.parametrize("kind", ["magnitude", "random"])
def test_counts_match_exactly_and_stay_within_the_parent(net, kind):
    arch, weights, parent, counts = net
    genome = matched_genome(kind, arch, weights, parent, counts, seed=3)
    assert {n: int(m.sum()) for n, m in genome.masks.items()} == counts
    assert genome.is_subset_of(parent)


def test_magnitude_keeps_the_strongest_living_synapses(net):
    arch, weights, parent, counts = net
    genome = matched_genome("magnitude", arch, weights, parent, counts)
    for name, kept in genome.masks.items():
        w = weights[name].abs()
        dropped = parent.masks[name] & ~kept
        assert w[kept].min() >= w[dropped].max()


def test_random_is_seeded(net):
    arch, weights, parent, counts = net
    a = matched_genome("random", arch, weights, parent, counts, seed=3)
    b = matched_genome("random", arch, weights, parent, counts, seed=3)
    c = matched_genome("random", arch, weights, parent, counts, seed=4)
    assert a.digest() == b.digest() != c.digest()


def test_bad_kind_and_more_than_living(net):
    arch, weights, parent, counts = net
    with pytest.raises(ValueError, match="baseline kind must be one of"):
        matched_genome("lottery", arch, weights, parent, counts)
    everything = {name: mask.numel() for name, mask in parent.masks.items()}
    assert matched_genome("magnitude", arch, weights, parent, everything).digest() == parent.digest()
