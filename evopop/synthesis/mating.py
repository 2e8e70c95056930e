"""Multi-parent synthesis: an offspring drawn from m parents ("mating", Chung, Shafiee, Fieguth & Wong,
arXiv 1709.02043; m-parent "polyploidism", doi 10.15353/vsnl.v3i1.161; the rule as their arXiv
1811.07966 restates it, Eq. 1-2):

    P(H_g | H_1..H_m) = prod_c [ F_c(E) P(s_c | M_c) * prod_{j in c} F_s(E) P(s_j | M_s,j) ]
    M_s,j = prod_k alpha_s,k |w_k,j|        M_c = prod_k alpha_c,k S_k,c

the parents' synaptic strengths multiplied, synapse by synapse (and cluster by cluster, S_k,c the sum
of |w| over cluster c's living synapses in parent k), then normalised and exponentiated exactly as
one parent's |w| is (`evopop.synthesis.probability`, `evopop.synthesis.clusters`). Consequences and
the choices the papers leave open:

- Intersection ("an intersection-based mating policy"): a product with a dead parent's zero is zero,
  so a synapse, or a cluster, can live in the offspring only where it lives in every parent. The
  genome synthesis starts from is the parents' intersection, neuron death applied to it.
- The mixing weights alpha cancel: Z is the largest strength of the layer (or network), so
  M / Z is the same for any constant alpha. evopop takes alpha = 1 and has no option for it.
- A product rewards agreement: a synapse strong in every parent keeps a high P, one that is strong
  in one parent and weak in another falls towards the weakest's. With m = 1 it is the paper's model
  (the engine then never calls this module: single-parent records stay bit-identical).
- The offspring's starting weights (the papers do not say): the mean of its parents' weights. Every
  parent descends from one ancestor through inherited weights, so they lie in one basin, where
  averaging fine-tuned relatives works (Wortsman et al., "model soups", 2022); dead synapses of the
  intersection are zero whatever the mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .architecture import Architecture
from .clusters import cluster_strengths
from .death import kill_orphans
from .genome import Genome


@dataclass(frozen=True)
class Mated:
    """What m parents give synthesis: the strengths that stand for one parent's |w| and S_c, and
    the genome (the parents' intersection) that stands for one parent's."""

    strengths: dict[str, torch.Tensor]  # M_s per layer, the shape of the layer's weight (float32, >= 0)
    cluster_strengths: dict[str, torch.Tensor]  # M_c per layer, one per neuron (float64)
    genome: Genome


def mate(arch: Architecture, parents: Sequence[tuple[Mapping[str, torch.Tensor], Genome]]) -> Mated:
    """The mated strengths and intersection genome of ``parents``: (synaptic weights by layer, genome)."""
    if not parents:
        raise ValueError("mating needs at least one parent")
    for _, genome in parents:
        genome.validate(arch)
    masks = {}
    for layer in arch.layers:
        alive = parents[0][1].masks[layer.name].clone()
        for _, genome in parents[1:]:
            alive &= genome.masks[layer.name].to(alive.device)
        masks[layer.name] = alive
    genome = Genome(masks)
    kill_orphans(arch, genome)
    # each parent's magnitudes over its network's largest: a constant per parent, which cancels against
    # Z (layer or global), keeps a product of many small weights from underflowing
    scales = [_largest(weights) if len(parents) > 1 else 1.0 for weights, _ in parents]
    strengths, clusters = {}, {}
    for layer in arch.layers:
        name = layer.name
        product, cluster_product = None, None
        for (weights, parent), scale in zip(parents, scales):
            magnitude = weights[name].detach().abs().double().cpu() / scale
            product = magnitude if product is None else product.mul_(magnitude)
            strength = cluster_strengths(layer, weights[name], parent.masks[name]) / scale
            cluster_product = strength if cluster_product is None else cluster_product.mul_(strength)
        strengths[name] = product.mul_(genome.masks[name].cpu()).float()
        # a cluster dead in the intersection has no strength: it must not set Z_c for the living ones
        clusters[name] = cluster_product * genome.neurons(layer).cpu()
    return Mated(strengths, clusters, genome)


def _largest(weights: Mapping[str, torch.Tensor]) -> float:
    largest = max(float(w.detach().abs().max()) for w in weights.values() if w.numel())
    return largest if largest > 0 else 1.0


def mean_weights(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The parents' state dicts averaged entry by entry (floating point entries; others, such as a
    batch norm's step count, are the first parent's): the offspring's starting weights."""
    first = states[0]
    out = {}
    for key, value in first.items():
        if torch.is_floating_point(value):
            total = value.detach().double().clone()
            for state in states[1:]:
                total += state[key].detach().double()
            out[key] = (total / len(states)).to(value.dtype)
        else:
            out[key] = value.detach().clone()
    return out
