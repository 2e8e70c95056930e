"""Cluster-driven synthesis (Shafiee, Barshan & Wong, arXiv 1609.01360; "Evolution in Groups",
arXiv 1704.02081): whole clusters of synapses survive or die, then synapses inside survivors.

The offspring's architecture is drawn from

    P(H_g) = prod_c [ F_c(E) P(s_c | W_c) * prod_{j in c} F_s(E) P(s_j | w_j) ]

- A cluster c is one neuron's incoming synapses: a conv or deconv filter (one output channel, all
  its kernels), a linear output unit. Dropping a cluster removes a whole filter, which is what a
  compacted network can turn into speed (`evopop.compaction`); scattered synapses cannot.
- The cluster's strength is the sum of the magnitudes of its living synapses, S_c = sum_{j in c}
  |w_j| (the papers write the sum of "truncated" weights; we read the truncation as the magnitude,
  which keeps S_c from cancelling between signs), and P(s_c | W_c) = exp(k (S_c / Z_c - 1)) with Z_c
  the largest S_c among the layer's living clusters (or the network's, with ``normalizer: global``),
  exactly as the synaptic model normalises |w_k| by the largest living weight; k is the cluster
  environment's sharpness (1, the papers' model, by default), as for synapses.
- Neurons the network's output reads directly (``Architecture.sinks``: a classifier's class units,
  a segmentation head's class maps) are not clusters that can die: losing one would remove a class,
  not a feature. Their synapses are still sampled.
- The cluster term has its own environment F_c(E) (``scale``: C_c * P; ``budget``: an expected
  fraction C_c of the living clusters survives, solved like the synaptic budget); the synaptic term
  keeps its environment F_s(E) and Z (the parent's largest living |w| per layer), applied only to
  the synapses of surviving clusters (``budget``: C_s of *their* synapses in expectation).
- Uniforms: the synapses use the very stream the synapse-level encoding uses (``derive_seed(seed,
  layer)``), the clusters a stream of their own (``derive_seed(seed, "clusters", layer)``): seeded
  and bit-identical on re-synthesis, and a cluster-encoded offspring whose clusters all survive has
  the synapse-level offspring's genome.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .architecture import Architecture
from .environment import Environment
from .genome import Genome
from .layers import SynapticLayer
from .seeding import derive_seed


def cluster_strengths(layer: SynapticLayer, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """S_c per neuron of ``layer``: the sum of |w| over its living incoming synapses (float64)."""
    living = weight.detach().abs().double() * mask.to(weight.device)
    return layer.neuron_view(living).sum(dim=1).cpu()


def cluster_normalizers(strengths: Mapping[str, torch.Tensor], kind: str = "layer") -> dict[str, float]:
    """Z_c per layer: the largest cluster strength of the layer ("layer") or of the network ("global")."""
    if kind not in ("layer", "global"):
        raise ValueError(f"normalizer must be 'layer' or 'global', got {kind!r}")
    per_layer = {name: float(s.max()) if s.numel() else 0.0 for name, s in strengths.items()}
    if kind == "global":
        z = max(per_layer.values(), default=0.0)
        return {name: z for name in per_layer}
    return per_layer


def cluster_probability(strengths: torch.Tensor, alive: torch.Tensor, z: float, sharpness: float = 1.0) -> torch.Tensor:
    """P(s_c | W_c) = exp(k (S_c / Z_c - 1)) per cluster, k the sharpness (0 for dead clusters; 1 for all
    when Z_c = 0)."""
    p = torch.ones_like(strengths) if z <= 0 else torch.exp(sharpness * (strengths / z - 1.0))
    return p * alive


def sample_clusters(
    strengths: torch.Tensor,
    alive: torch.Tensor,
    z: float,
    env: Environment,
    layer: str,
    seed: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Bool per neuron: the clusters that survive into the offspring (a subset of ``alive``).
    ``scale``: the factor multiplying P, where it was solved for several layers at once (``network``)."""
    if env.is_frozen(layer):
        return alive.clone()
    if scale is None:
        scale = env.scale(layer, strengths.float(), alive, z)
    generator = torch.Generator(device="cpu").manual_seed(derive_seed(seed, "clusters", layer))
    uniforms = torch.rand(strengths.numel(), generator=generator, dtype=torch.float64)
    if math.isinf(scale):
        return alive.clone()
    return (scale * cluster_probability(strengths, alive, z, env.sharpness) >= uniforms) & alive


def surviving_clusters(
    arch: Architecture,
    weights: Mapping[str, torch.Tensor],
    parent: Genome,
    env: Environment,
    seed: int,
    normalizer: str = "layer",
    strengths: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Per layer, bool per neuron: the clusters drawn to survive under the cluster environment ``env``.
    ``strengths``: S_c per layer where they are given (mated parents'), else of ``weights`` and ``parent``.

    Coupled neurons (`evopop.synthesis.coupling`) are drawn as one: a group's strength is the sum of its
    members' (the cluster term over the union of their synapses), normalised by the largest group of its
    family (groups with members in the same layers) and drawn once, with the environment of the family's
    first layer; a group with a pinned member never dies."""
    if strengths is None:
        strengths = {l.name: cluster_strengths(l, weights[l.name], parent.masks[l.name]) for l in arch.layers}
    coupling = arch.groups
    living = {layer.name: parent.neurons(layer).cpu() for layer in arch.layers}
    group_strength = coupling.sum_members(strengths)
    group_alive = coupling.any_member(living)
    candidate = group_alive & ~coupling.pinned
    families = {f.name: f for f in coupling.families}
    z = cluster_normalizers({name: group_strength[f.groups] for name, f in families.items()}, normalizer)
    frozen = {name for name, f in families.items() if any(env.is_frozen(layer) for layer in f.layers)}
    parts = {
        name: (group_strength[f.groups].float(), candidate[f.groups], z[name])
        for name, f in families.items()
        if name not in frozen
    }
    scales = env.scales(parts, settings={name: f.layers[0] for name, f in families.items()})
    survives = group_alive.clone()
    for name, f in families.items():
        if name in frozen:
            continue
        strength, candidates = group_strength[f.groups], candidate[f.groups]
        drawn = sample_clusters(strength, candidates, z[name], env, name, seed, scales[name])
        forced = group_alive[f.groups] & ~candidates
        if env.multiple > 1:
            step = family_step(coupling, f, env.multiple)
            p = cluster_probability(strength, candidates, z[name], env.sharpness)
            uniform = torch.rand(1, generator=torch.Generator().manual_seed(derive_seed(seed, "multiple", name)))
            drawn = round_to_multiple(drawn, candidates, forced, p, step, float(uniform))
        survives[f.groups] = drawn | forced
    return {name: kept & living[name] for name, kept in coupling.spread(survives).items()}


def family_step(coupling, family, multiple: int) -> int:
    """How many groups of ``family`` make a multiple of ``multiple`` channels in each of its layers."""
    step = 1
    for layer in family.layers:
        per_group = torch.bincount(coupling.of_layer(layer), minlength=coupling.groups)[family.groups]
        q = math.gcd(*per_group.tolist())
        need = multiple // math.gcd(multiple, q)
        step = step * need // math.gcd(step, need)
    return step


def round_to_multiple(
    drawn: torch.Tensor, candidates: torch.Tensor, forced: torch.Tensor, p: torch.Tensor, step: int, uniform: float
) -> torch.Tensor:
    """The drawn groups, their count (with the ``forced`` ones) rounded to a multiple of ``step``.

    Rounding is stochastic, so that synthesis stays unbiased: with n survivors between the multiples
    lo <= n < lo + step, the count becomes lo + step with probability (n - lo) / step, else lo (its
    expectation is n). The count is reached by dropping the weakest drawn candidates (lowest P) or
    reviving the strongest candidates not drawn; forced groups (pinned) stay whatever the count, the
    count never exceeds the living groups, and a family with survivors keeps at least one step of them
    (rounding it to nothing would cut the network in two; the expectation is then a little above n)."""
    n = int(drawn.sum()) + int(forced.sum())
    lo = n - n % step
    target = lo + step if uniform < (n - lo) / step else lo
    if target == 0 and n > 0:  # rounding a family to nothing would cut the network in two
        target = step
    target = min(target, int((candidates | forced).sum()))
    change = target - n
    out = drawn.clone()
    order = torch.argsort(p.double(), stable=True)  # weakest first, ties by index
    if change < 0:
        weakest = order[drawn[order]][: min(-change, int(drawn.sum()))]
        out[weakest] = False
    elif change > 0:
        strongest = order[(candidates & ~drawn)[order]].flip(0)[:change]
        out[strongest] = True
    return out
