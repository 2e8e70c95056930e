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


def test_iterative_baselines_follow_each_selected_lineage_under_topk(tmp_path):
    """With two lineages followed (topk), each selected offspring's imp baseline prunes the imp
    baseline of that offspring's own parent, to that offspring's counts."""
    from pathlib import Path

    from evopop.api import evolve
    from evopop.config import load_config

    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    overrides = [
        "resources.executor=local",
        "compaction.enabled=false",
        "diversity.enabled=false",
        "evolution.generations=4",
        "selection.rule=topk",
        "selection.k=2",
        "baselines.enabled=true",
        "baselines.kinds=[imp]",
    ]
    population = evolve(load_config(tiny, overrides), str(tmp_path / "run")).set_index("individual_id")
    imp = population[population["kind"] == "imp"]
    selected = population[population["selected"].fillna(False).astype(bool) & (population["kind"] == "offspring")]
    assert len(imp) == len(selected) == 6  # 2 selected offspring in each of generations 2-4
    for offspring_id, offspring in selected.iterrows():
        baseline = imp.loc[f"{offspring_id}-imp"]
        assert baseline["synapses"] == offspring["synapses"]
        expected_parent = "g1-0" if offspring["generation"] == 2 else f"{offspring['parent_id']}-imp"
        assert baseline["parent_id"] == expected_parent
        assert list(baseline["lineage"])[-2] == expected_parent
