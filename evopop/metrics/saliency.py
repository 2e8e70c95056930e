"""Saliency metrics, as in the salient-object-detection literature, batched on the tensors' device.

Inputs: a saliency map S in [0, 1] per pixel and a binary ground truth G (a {0, 1} float or bool
tensor; G = G > 0.5), both (N, H, W) or (N, 1, H, W): N images.

- MAE: mean |S - G| per image, averaged over images.
- F-beta = (1 + b2) P R / (b2 P + R), b2 = beta^2 = 0.3, P and R computed per image:
  - adaptive: threshold = min(2 * mean(S), 1) per image, salient iff S >= threshold;
  - curve: S quantised to q = floor(255 * S + 1e-4) in 0..255 (the epsilon keeps a value stored as
    k/255 on level k despite float rounding), salient iff q >= t, for each of the 256 thresholds
    t = 0..255; the F per image per threshold is averaged over images per threshold; max F-beta is
    the maximum of that mean curve, mean F-beta its mean.

Edge cases, defined (as is common) so that every quantity is a number:
- no pixel predicted salient: precision 0/0 := 0;
- empty ground truth: recall 0/0 := 0, so F = 0 for that image at every threshold (its MAE is
  still meaningful);
- P = R = 0: F := 0.
- An all-zero map has adaptive threshold min(2 * 0, 1) = 0, so *every* pixel counts as salient
  (P = coverage of G, R = 1); on the curve it is salient only at t = 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Metric

BETA2 = 0.3
LEVELS = 256
METRIC_NAMES = ("mae", "fbeta_adaptive", "fbeta_max", "fbeta_mean")


def _per_image(saliency: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, pixels) float saliency and bool ground truth."""
    if saliency.shape != truth.shape:
        raise ValueError(f"saliency map of shape {tuple(saliency.shape)} vs ground truth {tuple(truth.shape)}")
    n = saliency.shape[0]
    return saliency.reshape(n, -1).float(), truth.reshape(n, -1) > 0.5


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, and 0 where the denominator is 0."""
    numerator, denominator = numerator.float(), denominator.float()
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1e-12), torch.zeros_like(numerator))


def fbeta_from_counts(true_pos, predicted, positives, beta2: float = BETA2) -> torch.Tensor:
    """F-beta from counts (broadcastable tensors) with the edge cases of the module doc."""
    precision = _ratio(true_pos, predicted)
    recall = _ratio(true_pos, positives)
    return _ratio((1 + beta2) * precision * recall, beta2 * precision + recall)


def mae(saliency: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image: (N,)."""
    s, g = _per_image(saliency, truth)
    return (s - g.float()).abs().mean(dim=1)


def fbeta_adaptive(saliency: torch.Tensor, truth: torch.Tensor, beta2: float = BETA2) -> torch.Tensor:
    """F-beta per image at the adaptive threshold min(2 * mean(S), 1): (N,)."""
    s, g = _per_image(saliency, truth)
    threshold = (2 * s.mean(dim=1, keepdim=True)).clamp(max=1)
    salient = s >= threshold
    return fbeta_from_counts((salient & g).sum(1), salient.sum(1), g.sum(1), beta2)


def quantize(saliency: torch.Tensor) -> torch.Tensor:
    """Saliency in [0, 1] as integer levels 0..255 (int64)."""
    return (saliency * (LEVELS - 1) + 1e-4).floor().clamp(0, LEVELS - 1).long()


def fbeta_curve(saliency: torch.Tensor, truth: torch.Tensor, beta2: float = BETA2) -> torch.Tensor:
    """F-beta per image at each threshold t = 0..255 (salient iff level >= t): (N, 256).

    One histogram of levels per image (all pixels, and ground-truth pixels); reversed cumulative
    sums give, for every threshold at once, the predicted and the true positive counts.
    """
    s, g = _per_image(saliency, truth)
    levels = quantize(s)
    n = levels.shape[0]
    empty = torch.zeros(n, LEVELS, dtype=torch.long, device=s.device)
    hist_all = empty.scatter_add(1, levels, torch.ones_like(levels))
    hist_true = empty.scatter_add(1, levels, g.long())
    at_or_above = lambda hist: hist.flip(1).cumsum(1).flip(1)  # noqa: E731  count of level >= t
    return fbeta_from_counts(at_or_above(hist_true), at_or_above(hist_all), g.sum(1, keepdim=True), beta2)


def saliency_from_logits(output: torch.Tensor) -> torch.Tensor:
    """(N, H, W) saliency from a network's output: softmax channel 1 of 2-class logits, or the
    sigmoid of a single logit channel."""
    if output.dim() != 4 or output.shape[1] not in (1, 2):
        raise ValueError(f"expected logits of shape (N, 2, H, W) or (N, 1, H, W), got {tuple(output.shape)}")
    if output.shape[1] == 1:
        return output[:, 0].float().sigmoid()
    return output.float().softmax(dim=1)[:, 1]


class SaliencyMetric(Metric):
    """Accumulates MAE, adaptive F-beta and the mean F-beta curve over batches of one eval set.

    ``update(output, target)``: network logits (N, 2, H, W) and masks (N, 1, H, W) or (N, H, W);
    a map of another size than its mask is resized (bilinear) to the mask's size first.
    ``compute()``: {"mae", "fbeta_adaptive", "fbeta_max", "fbeta_mean"} (NaN before any update).
    """

    def __init__(self, beta2: float = BETA2):
        self.beta2 = beta2
        self.count = 0
        self._mae = self._adaptive = self._curve = None

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        saliency = saliency_from_logits(output.detach())
        truth = target.detach()
        if truth.dim() == 4:
            truth = truth[:, 0]
        if saliency.shape[-2:] != truth.shape[-2:]:
            resized = F.interpolate(saliency[:, None], size=truth.shape[-2:], mode="bilinear", align_corners=False)
            saliency = resized[:, 0]
        batch_mae = mae(saliency, truth).sum()
        batch_adaptive = fbeta_adaptive(saliency, truth, self.beta2).sum()
        batch_curve = fbeta_curve(saliency, truth, self.beta2).sum(0)
        if self._curve is None:
            self._mae, self._adaptive, self._curve = batch_mae, batch_adaptive, batch_curve
        else:
            self._mae += batch_mae
            self._adaptive += batch_adaptive
            self._curve += batch_curve
        self.count += saliency.shape[0]

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {name: math.nan for name in METRIC_NAMES}
        curve = self._curve / self.count
        return {
            "mae": float(self._mae) / self.count,
            "fbeta_adaptive": float(self._adaptive) / self.count,
            "fbeta_max": float(curve.max()),
            "fbeta_mean": float(curve.mean()),
        }
