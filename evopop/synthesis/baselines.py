"""Baselines at matched sparsity: deterministic magnitude pruning and random pruning of a parent to
exactly given per-layer synapse counts (those of a synthesized offspring), so that a run can answer
whether stochastic synthesis beats them.

Unlike synthesis, no neuron-death cascade is applied: the counts match the offspring's exactly, as in
magnitude pruning (Han et al. 2015), where a neuron without inputs keeps its bias.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .architecture import Architecture
from .genome import Genome
from .seeding import derive_seed

# one-shot, from the evolved offspring's own parent: "magnitude" (Han et al. 2015) and "random"
ONE_SHOT_KINDS = ("magnitude", "random")
# iterative magnitude pruning along a lineage of its own: each generation prunes the previous
# generation's IMP network by magnitude to the followed lineage's counts, then trains it on from its
# weights ("imp", as Han et al.) or from the ancestor's initial weights ("imp_rewind", lottery tickets)
IMP, IMP_REWIND = "imp", "imp_rewind"
LINEAGE_KINDS = (IMP, IMP_REWIND)
KINDS = ONE_SHOT_KINDS + LINEAGE_KINDS


def _keep_top(scores: torch.Tensor, living: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the k highest-scoring living entries (ties broken by position, deterministically)."""
    flat_living = living.reshape(-1)
    if k >= int(torch.count_nonzero(flat_living)):
        return living.clone()
    candidates = torch.nonzero(flat_living).squeeze(1)
    chosen = candidates[torch.topk(scores.reshape(-1)[candidates], k, sorted=False).indices]
    keep = torch.zeros_like(flat_living)
    keep[chosen] = True
    return keep.view(living.shape)


def matched_genome(
    kind: str,
    arch: Architecture,
    weights: Mapping[str, torch.Tensor],
    parent: Genome,
    counts: Mapping[str, int],
    seed: int = 0,
) -> Genome:
    """``parent`` pruned to ``counts[layer]`` living synapses per layer: the largest |w| (every kind
    but "random"), or a uniformly random subset of the living synapses ("random", seeded)."""
    if kind not in KINDS:
        raise ValueError(f"baseline kind must be one of {KINDS}, got {kind!r}")
    parent.validate(arch)
    masks = {}
    for layer in arch.layers:
        living = parent.masks[layer.name].cpu()
        k = int(counts[layer.name])
        if k < 0:
            raise ValueError(f"layer {layer.name!r}: cannot keep {k} synapses")
        if kind != "random":  # magnitude, and iterative magnitude pruning's step
            scores = weights[layer.name].detach().abs().float().cpu()
        else:
            generator = torch.Generator().manual_seed(derive_seed(int(seed), "random-baseline", layer.name))
            scores = torch.rand(living.shape, generator=generator)
        masks[layer.name] = _keep_top(scores, living, k)
    return Genome(masks)
