"""Stochastic synthesis of an offspring genome: s_k lives iff it lived in the parent and P(h_k) >= U(0,1).

Reproducibility: the uniforms of layer L come from a CPU ``torch.Generator`` seeded by
``derive_seed(offspring seed, L's name)`` (`evopop.synthesis.seeding`), drawn in a fixed order, so
the same (run seed, generation, ancestor id, offspring index) gives a bit-identical genome on any
machine, whatever device holds the weights and whatever else the network contains. The engine
synthesizes on CPU, where the weights arrive; on a GPU the decisions can differ in the last bit of
exp() for a handful of synapses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from .architecture import Architecture
from .clusters import surviving_clusters
from .death import kill_orphans
from .environment import Environment
from .genome import Genome
from .layers import layer_weight
from .probability import chunks, normalizers, probability_chunk
from .seeding import derive_seed


def synaptic_weights(model: nn.Module, arch: Architecture) -> dict[str, torch.Tensor]:
    return {layer.name: layer_weight(model, layer).detach() for layer in arch.layers}


def layer_scales(
    arch: Architecture,
    weights: Mapping[str, torch.Tensor],
    parent: Genome,
    env: Environment,
    z: Mapping[str, float],
) -> dict[str, float]:
    """The factor multiplying P(s_k | w_k) in each non-frozen layer (C, or the budget's solved s)."""
    parts = {
        layer.name: (weights[layer.name], parent.masks[layer.name], z[layer.name])
        for layer in arch.layers
        if not env.is_frozen(layer.name)
    }
    return env.scales(parts)


def sample_layer(
    weight: torch.Tensor, parent_mask: torch.Tensor, z: float, scale: float, seed: int, sharpness: float = 1.0
) -> torch.Tensor:
    """Offspring mask of one layer: parent_mask & (scale * exp(k (|w|/Z - 1)) >= U(0,1)), k the sharpness."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    w = weight.detach().reshape(-1)
    parent = parent_mask.to(weight.device).reshape(-1)
    child = torch.empty_like(parent)
    if math.isinf(scale):
        child.copy_(parent)
        return child.view(parent_mask.shape)
    log_scale = math.log(scale)
    uniforms = torch.empty(min(w.numel(), 1 << 20), dtype=torch.float32)
    for s in chunks(w.numel()):
        u = uniforms[: s.stop - s.start].uniform_(generator=generator)
        p = probability_chunk(w[s], z, log_scale, sharpness)
        torch.ge(p, u.to(p.device, non_blocking=True), out=child[s])
        child[s] &= parent[s]
    return child.view(parent_mask.shape)


def synthesize(
    arch: Architecture,
    weights: Mapping[str, torch.Tensor],
    parent: Genome,
    env: Environment,
    seed: int,
    normalizer: str = "layer",
    clusters: Environment | None = None,
    cluster_strengths: Mapping[str, torch.Tensor] | None = None,
) -> Genome:
    """One offspring genome of ``parent`` (whose trained weights are ``weights``) under ``env``.

    With a cluster environment ``clusters``, the encoding is cluster-driven (`evopop.synthesis.clusters`):
    whole filters / units survive under ``clusters`` first, and ``env`` samples the synapses of the
    survivors. Several parents: ``weights``, ``parent`` and ``cluster_strengths`` are what
    `evopop.synthesis.mating.mate` makes of them (the mated strengths and the parents' intersection).
    """
    parent.validate(arch)
    seed = int(seed)  # seeds are hashed by repr: a NumPy integer (read from a table) must draw as the int does
    for layer in arch.layers:
        shape = tuple(weights[layer.name].shape)
        if shape != layer.weight_shape:
            raise ValueError(f"weight of layer {layer.name!r} has shape {shape}, expected {layer.weight_shape}")
    z = normalizers(dict(weights), parent.masks, normalizer)
    if clusters is not None:
        parent = _within_surviving_clusters(
            arch, parent, surviving_clusters(arch, weights, parent, clusters, seed, normalizer, cluster_strengths)
        )
    scales = layer_scales(arch, weights, parent, env, z)
    masks = {}
    for layer in arch.layers:
        if layer.name not in scales:
            masks[layer.name] = parent.masks[layer.name].clone()
            continue
        layer_seed = derive_seed(seed, layer.name)
        masks[layer.name] = sample_layer(
            weights[layer.name], parent.masks[layer.name], z[layer.name], scales[layer.name], layer_seed, env.sharpness
        )
    child = Genome(masks)
    kill_orphans(arch, child)
    return child


def _within_surviving_clusters(arch: Architecture, parent: Genome, survivors: dict[str, torch.Tensor]) -> Genome:
    """The parent's genome without the clusters that did not survive: what the synapses are drawn from."""
    masks = {}
    for layer in arch.layers:
        mask = parent.masks[layer.name].clone()
        layer.keep_neurons(mask, survivors[layer.name].to(mask.device))
        masks[layer.name] = mask
    return Genome(masks)
