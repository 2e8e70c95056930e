"""Synaptic probability model: P(s_k | w_k) = exp(k (|w_k| / Z - 1)) over living synapses.

k is the model's sharpness. The paper's model is k = 1: the strongest synapse has only e = 2.7 times
the weakest's chance to survive, so synthesis is close to random pruning. A larger k moves it towards
magnitude pruning (the strongest has e^k times the weakest's chance) while keeping it stochastic.

Every function here walks the weights in fixed-size chunks, so that temporaries stay in cache and
memory beyond the weights and masks is a few MB, whatever the layer's size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

CHUNK = 1 << 20  # elements per chunk: ~4 MB of float32 temporaries, measured fastest on CPU


def chunks(n: int, size: int = CHUNK) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def living_max_abs(name: str, weight: torch.Tensor, mask: torch.Tensor) -> float:
    """max |w| over living synapses; raises on NaN/inf weights, naming the layer.

    One fused pass (amax propagates NaN and inf, so the finiteness check is one test at the end).
    """
    w, m = weight.detach().reshape(-1), mask.to(weight.device).reshape(-1)
    z = torch.zeros((), dtype=torch.float32, device=weight.device)
    for s in chunks(w.numel()):
        z = torch.maximum(z, w[s].abs().float().mul_(m[s]).amax())
    z = float(z)
    if not math.isfinite(z):
        bad = w[~torch.isfinite(w)][0].item()
        raise ValueError(f"layer {name!r} has a non-finite weight ({bad}); cannot compute synaptic probabilities")
    return z


def normalizers(
    weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], kind: str = "layer"
) -> dict[str, float]:
    """Z per layer: the layer's own max |w| of living synapses ("layer") or the network's ("global")."""
    if kind not in ("layer", "global"):
        raise ValueError(f"normalizer must be 'layer' or 'global', got {kind!r}")
    per_layer = {name: living_max_abs(name, weights[name], masks[name]) for name in masks}
    if kind == "global":
        z = max(per_layer.values())
        return {name: z for name in per_layer}
    return per_layer


def probability_chunk(
    weight_chunk: torch.Tensor, z: float, log_scale: float = 0.0, sharpness: float = 1.0
) -> torch.Tensor:
    """scale * exp(k (|w|/Z - 1)) for one chunk, computed as exp(k |w|/Z - k + log(scale)) in float32.

    Z = 0 (every living weight is zero) means every synapse is as strong as the strongest: p = 1.
    """
    p = weight_chunk.abs().float()
    if z > 0:
        p.mul_(sharpness / z).add_(log_scale - sharpness)
    else:
        p.fill_(log_scale)
    return p.exp_()


def synaptic_probability(weight: torch.Tensor, mask: torch.Tensor, z: float, sharpness: float = 1.0) -> torch.Tensor:
    """P(s_k | w_k) for a whole layer (float32, 0 for dead synapses). For analysis and tests;
    sampling never materialises it."""
    return probability_chunk(weight.detach(), z, sharpness=sharpness) * mask


def probability_moments(
    weight: torch.Tensor, mask: torch.Tensor, z: float, sharpness: float = 1.0
) -> tuple[int, float, float]:
    """(living synapses, sum of P, max of P) over the living synapses of one layer."""
    w, m = weight.detach().reshape(-1), mask.to(weight.device).reshape(-1)
    total, top = 0.0, 0.0
    for s in chunks(w.numel()):
        p = probability_chunk(w[s], z, sharpness=sharpness).mul_(m[s])  # dead synapses: P = 0, no compaction needed
        total += float(p.sum(dtype=torch.float64))
        top = max(top, float(p.amax()))
    return int(torch.count_nonzero(m)), total, top


Part = tuple[torch.Tensor, torch.Tensor, float]  # (weights or strengths, living mask, Z) of one layer


def budget_scale(
    weight: torch.Tensor, mask: torch.Tensor, z: float, fraction: float, bins: int = 1 << 14, sharpness: float = 1.0
) -> float:
    """The scale s with sum_k min(1, s * P_k) = fraction * living synapses of one layer, exactly."""
    return shared_budget_scale([(weight, mask, z)], fraction, bins, sharpness)


def shared_budget_scale(parts: Sequence[Part], fraction: float, bins: int = 1 << 14, sharpness: float = 1.0) -> float:
    """The one scale s with sum_k min(1, s * P_k) = fraction * living synapses over all ``parts``
    (layers, each with its own Z), exactly.

    Without clipping s = fraction * n / sum(P). With clipping the expected count
    f(t) = #{P >= t} + (1/t) * sum_{P < t} P, t = 1/s, is piecewise smooth and decreasing in t:
    a histogram of P brackets the solution to one bin, whose few values are then solved exactly.
    The bins are equal in log P (that is, in |w|/Z), so that a sharp model, whose P spans many orders
    of magnitude, does not crowd the weak synapses into one bin.
    """
    moments = [probability_moments(w, m, z, sharpness) for w, m, z in parts]
    n = sum(m[0] for m in moments)
    total = sum(m[1] for m in moments)
    top = max((m[2] for m in moments), default=0.0)
    if n == 0:
        return 1.0
    target = fraction * n
    if target >= n:
        return math.inf  # keep every living synapse
    scale = target / total
    if scale * top <= 1.0:
        return scale
    counts, sums, lo, hi = _histogram(parts, bins, sharpness)
    above = torch.flip(torch.cumsum(torch.flip(counts, [0]), 0), [0])  # count of P in bins >= j
    below = torch.cumsum(sums, 0) - sums  # sum of P in bins < j
    width = (hi - lo) / bins
    edges = torch.exp(lo + width * torch.arange(bins + 1, dtype=torch.float64))  # in P

    def f_at_edge(j: int) -> float:
        count_above = float(above[j]) if j < bins else 0.0
        sum_below = float(below[j]) if j < bins else float(sums.sum())
        return count_above + sum_below / float(edges[j])

    # f decreases with t: find the bin j with f(edge_j) >= target > f(edge_{j+1}).
    lo_j, hi_j = 0, bins
    while hi_j - lo_j > 1:
        mid = (lo_j + hi_j) // 2
        if f_at_edge(mid) >= target:
            lo_j = mid
        else:
            hi_j = mid
    j = lo_j
    values = _values_in_bin(parts, j, bins, lo, hi, sharpness)
    values, _ = torch.sort(values.double())
    count_above_bin = float(above[j + 1]) if j + 1 < bins else 0.0
    sum_below_bin = float(below[j])
    m = values.numel()
    prefix = 0.0
    # t in [v_i, v_{i+1}): the i smallest values in the bin contribute v/t, the rest count 1.
    bounds = [0.0] + values.tolist() + [math.inf]
    for i in range(m + 1):
        if i > 0:
            prefix += float(values[i - 1])
        ones = count_above_bin + (m - i)
        if target > ones:
            t = (sum_below_bin + prefix) / (target - ones)
            if bounds[i] <= t <= bounds[i + 1]:
                return 1.0 / t
    return 1.0 / float(edges[j])  # numerically at an edge


def _bin_of(p: torch.Tensor, bins: int, lo: float, hi: float) -> torch.Tensor:
    """The bin of each P among ``bins`` equal bins of log P over [lo, hi]."""
    return ((p.log() - lo) * (bins / (hi - lo))).long().clamp_(0, bins - 1)


def _living_probabilities(parts: Sequence[Part], sharpness: float) -> Iterator[torch.Tensor]:
    for weight, mask, z in parts:
        w, m = weight.detach().reshape(-1), mask.to(weight.device).reshape(-1)
        for s in chunks(w.numel()):
            yield probability_chunk(w[s], z, sharpness=sharpness)[m[s]]


def _histogram(parts: Sequence[Part], bins: int, sharpness: float):
    """Counts and sums of living P in ``bins`` equal bins of log P over [-k, 0] (the range of log P)."""
    lo, hi = -sharpness, 0.0
    counts = torch.zeros(bins, dtype=torch.float64)
    sums = torch.zeros(bins, dtype=torch.float64)
    for p in _living_probabilities(parts, sharpness):
        idx = _bin_of(p, bins, lo, hi).cpu()
        counts += torch.bincount(idx, minlength=bins).double()
        sums += torch.bincount(idx, weights=p.double().cpu(), minlength=bins)
    return counts, sums, lo, hi


def _values_in_bin(parts: Sequence[Part], j: int, bins: int, lo: float, hi: float, sharpness: float) -> torch.Tensor:
    """The living P that ``_histogram`` put in bin j (same arithmetic, so the same assignment)."""
    found = [p[_bin_of(p, bins, lo, hi) == j].cpu() for p in _living_probabilities(parts, sharpness)]
    return torch.cat(found) if found else torch.empty(0)
