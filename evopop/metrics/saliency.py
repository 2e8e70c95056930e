"""Saliency metrics as the field's standard evaluation code computes them, batched on the tensors' device.

The reference is PySODMetrics (``py_sod_metrics`` 1.6, itself a port of the MATLAB code of the
salient-object-detection literature); the tests check agreement with it to 1e-4. Inputs: a saliency
map S in [0, 1] per pixel and a binary ground truth G (a {0, 1} float or bool tensor; G = G > 0.5,
the 0..255 mask read as > 128), both (N, H, W) or (N, 1, H, W): N images. Every quantity is computed
per image in float64 and averaged over images.

Preparation (`SaliencyMetric`, ``normalize=True``, as PySODMetrics' ``prepare_data``): each map is
min-max normalised, S = (S - min) / (max - min), when max > min (a constant map is left as it is),
before every metric; the map is evaluated at its mask's size (a map of another size is resized
bilinearly, ``align_corners=False``, to the mask first). evopop reads the network's float map, not a
PNG of it: the field's ``uint8(255 * S)`` rounding of saved maps is not applied before normalising.

- MAE: mean |S - G|.
- F-beta = (1 + b2) P R / (b2 P + R), b2 = beta^2 = 0.3:
  - adaptive: threshold = min(2 * mean(S), 1), salient iff S >= threshold;
  - curve: S quantised to q = floor(255 * S) in 0..255 (truncation, as ``(S * 255).astype(uint8)``),
    salient iff q >= t, for each of the 256 thresholds t = 0..255; the F per image per threshold is
    averaged over images per threshold; max F-beta is the maximum of that mean curve, mean F-beta
    its mean.
- S-measure (Fan et al., ICCV 2017), alpha = 0.5: ``alpha * S_object + (1 - alpha) * S_region``,
  clipped at 0; 1 - mean(S) for an empty G and mean(S) for an all-ones G. S_object compares the map
  on G and 1 - S off G through ``2 m / (m^2 + 1 + sd + eps)`` (sd with ddof 1), weighted by G's
  coverage; S_region splits both maps into 4 blocks at G's centroid (``round(mean index) + 1``,
  half to even, as numpy) and sums each block's SSIM-like score weighted by its area.
- E-measure (Fan et al., IJCAI 2018): the enhanced alignment of the binarised map with G, from the
  four confusion counts; adaptive (threshold min(2 * mean(S), 1), S >= threshold) and the curve over
  the same 256 quantised thresholds as F-beta (mean over images per threshold; max and mean of it).
  An empty G scores the predicted-background count, an all-ones G the predicted-foreground count,
  over (pixels - 1 + eps).

eps is float64's machine epsilon (numpy's ``np.spacing(1)``), where PySODMetrics uses it.

Edge cases, as PySODMetrics defines them, so that every quantity is a number:
- no pixel predicted salient: precision 0/0 := 0; empty ground truth: recall := 0, so F = 0 for that
  image at every threshold (its MAE, S- and E-measure are still meaningful); P = R = 0: F := 0.
- An all-zero map has adaptive threshold min(2 * 0, 1) = 0, so *every* pixel counts as salient
  (P = coverage of G, R = 1); on the curve it is salient only at t = 0.
- One deviation: an S-measure block that is empty (G's centroid on the last row or column) scores 0
  (it has weight 0); PySODMetrics returns NaN for that image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import Metric

BETA2 = 0.3
ALPHA = 0.5  # S-measure's object / region balance
LEVELS = 256
EPS = float(torch.finfo(torch.float64).eps)  # numpy's np.spacing(1), as PySODMetrics uses it
METRIC_NAMES = (
    "mae",
    "fbeta_adaptive",
    "fbeta_max",
    "fbeta_mean",
    "smeasure",
    "emeasure_adaptive",
    "emeasure_max",
    "emeasure_mean",
)
_PER_IMAGE = ("mae", "fbeta_adaptive", "smeasure", "emeasure_adaptive")  # summed over images
_CURVES = ("fbeta", "emeasure")  # (256,) curves summed over images


def _maps(saliency: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) float64 saliency and bool ground truth."""
    if saliency.dim() == 4:
        saliency = saliency[:, 0]
    if truth.dim() == 4:
        truth = truth[:, 0]
    if saliency.shape != truth.shape or saliency.dim() != 3:
        raise ValueError(f"saliency map of shape {tuple(saliency.shape)} vs ground truth {tuple(truth.shape)}")
    return saliency.double(), truth > 0.5


def _per_image(saliency: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, pixels) float64 saliency and bool ground truth."""
    s, g = _maps(saliency, truth)
    return s.flatten(1), g.flatten(1)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, and 0 where the denominator is 0."""
    numerator, denominator = numerator.double(), denominator.double()
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1e-300), torch.zeros_like(numerator))


def normalize_maps(saliency: torch.Tensor) -> torch.Tensor:
    """Per-image min-max normalisation (N, ...) -> same shape, float64; a constant map is unchanged."""
    s = saliency.double()
    flat = s.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    span = high - low
    scaled = (flat - low[:, None]) / torch.where(span > 0, span, torch.ones_like(span))[:, None]
    return torch.where((span > 0)[:, None], scaled, flat).view_as(s)


def fbeta_from_counts(true_pos, predicted, positives, beta2: float = BETA2) -> torch.Tensor:
    """F-beta from counts (broadcastable tensors) with the edge cases of the module doc."""
    precision = _ratio(true_pos, predicted)
    recall = _ratio(true_pos, positives)
    return _ratio((1 + beta2) * precision * recall, beta2 * precision + recall)


def emeasure_from_counts(true_pos, predicted, positives, pixels) -> torch.Tensor:
    """E-measure from counts (broadcastable tensors): true positives, predicted-salient pixels,
    ground-truth-salient pixels, pixels."""
    true_pos, predicted, positives = true_pos.double(), predicted.double(), positives.double()
    pixels = torch.as_tensor(pixels, dtype=torch.float64, device=true_pos.device)
    false_pos = predicted - true_pos
    predicted_bg = pixels - predicted
    false_neg = positives - true_pos
    true_neg = predicted_bg - false_neg
    pred_fg, pred_bg = 1 - predicted / pixels, -predicted / pixels  # demeaned binary prediction values
    gt_fg, gt_bg = 1 - positives / pixels, -positives / pixels  # demeaned ground-truth values

    def enhanced(a, b):
        align = 2 * a * b / (a**2 + b**2 + EPS)
        return (align + 1) ** 2 / 4

    total = (
        true_pos * enhanced(pred_fg, gt_fg)
        + false_pos * enhanced(pred_fg, gt_bg)
        + false_neg * enhanced(pred_bg, gt_fg)
        + true_neg * enhanced(pred_bg, gt_bg)
    )
    total = torch.where(positives == 0, predicted_bg, torch.where(positives == pixels, predicted, total))
    return total / (pixels - 1 + EPS)


def mae(saliency: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image: (N,)."""
    s, g = _per_image(saliency, truth)
    return (s - g.double()).abs().mean(dim=1)


def _adaptive_counts(s: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(true positives, predicted) per image at the adaptive threshold min(2 * mean(S), 1)."""
    threshold = (2 * s.mean(dim=1, keepdim=True)).clamp(max=1)
    salient = s >= threshold
    return (salient & g).sum(1), salient.sum(1)


def fbeta_adaptive(saliency: torch.Tensor, truth: torch.Tensor, beta2: float = BETA2) -> torch.Tensor:
    """F-beta per image at the adaptive threshold min(2 * mean(S), 1): (N,)."""
    s, g = _per_image(saliency, truth)
    true_pos, predicted = _adaptive_counts(s, g)
    return fbeta_from_counts(true_pos, predicted, g.sum(1), beta2)


def emeasure_adaptive(saliency: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """E-measure per image at the adaptive threshold min(2 * mean(S), 1): (N,)."""
    s, g = _per_image(saliency, truth)
    true_pos, predicted = _adaptive_counts(s, g)
    return emeasure_from_counts(true_pos, predicted, g.sum(1), s.shape[1])


def quantize(saliency: torch.Tensor) -> torch.Tensor:
    """Saliency in [0, 1] as integer levels floor(255 * S) in 0..255 (int64), as PySODMetrics'
    ``(S * 255).astype(np.uint8)``."""
    return (saliency.double() * (LEVELS - 1)).floor().clamp(0, LEVELS - 1).long()


def _curve_counts(s: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(true positives, predicted), each (N, 256): counts of level >= t for t = 0..255.

    One histogram of levels per image (all pixels, and ground-truth pixels); reversed cumulative
    sums give the counts for every threshold at once.
    """
    levels = quantize(s)
    empty = torch.zeros(levels.shape[0], LEVELS, dtype=torch.long, device=s.device)
    hist_all = empty.scatter_add(1, levels, torch.ones_like(levels))
    hist_true = empty.scatter_add(1, levels, g.long())
    at_or_above = lambda hist: hist.flip(1).cumsum(1).flip(1)  # noqa: E731
    return at_or_above(hist_true), at_or_above(hist_all)


def fbeta_curve(saliency: torch.Tensor, truth: torch.Tensor, beta2: float = BETA2) -> torch.Tensor:
    """F-beta per image at each threshold t = 0..255 (salient iff level >= t): (N, 256)."""
    s, g = _per_image(saliency, truth)
    true_pos, predicted = _curve_counts(s, g)
    return fbeta_from_counts(true_pos, predicted, g.sum(1, keepdim=True), beta2)


def _s_object(values: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """``2 m / (m^2 + 1 + sd + eps)`` of ``values`` (N, P) over the pixels ``inside`` (N, P): (N,)."""
    n = inside.sum(1).double()
    mean = (values * inside).sum(1) / n.clamp(min=1)
    squares = (((values - mean[:, None]) ** 2) * inside).sum(1)
    sd = torch.where(n > 1, (squares / (n - 1).clamp(min=1)).sqrt(), torch.zeros_like(n))
    return 2 * mean / (mean**2 + 1 + sd + EPS)


def _s_region(s: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Area-weighted SSIM of the 4 blocks split at the ground truth's centroid: (N,)."""
    n, height, width = s.shape
    gd = g.double()
    count = gd.sum((1, 2))
    rows = torch.arange(height, dtype=torch.float64, device=s.device)
    cols = torch.arange(width, dtype=torch.float64, device=s.device)
    has_fg = count > 0
    cy = torch.where(has_fg, (gd.sum(2) * rows).sum(1) / count.clamp(min=1), torch.full_like(count, height / 2))
    cx = torch.where(has_fg, (gd.sum(1) * cols).sum(1) / count.clamp(min=1), torch.full_like(count, width / 2))
    cy, cx = cy.round() + 1, cx.round() + 1  # the top block is rows < cy, the left one columns < cx
    top = rows[None] < cy[:, None]
    left = cols[None] < cx[:, None]
    row_sel = torch.stack([top, ~top], dim=2).double()  # (N, H, 2): top, bottom
    col_sel = torch.stack([left, ~left], dim=2).double()  # (N, W, 2): left, right

    def per_block(values: torch.Tensor) -> torch.Tensor:  # (N, H, W) -> (N, 4) sums: TL, TR, BL, BR
        return (row_sel.transpose(1, 2) @ values @ col_sel).flatten(1)

    def spread(block_values: torch.Tensor) -> torch.Tensor:  # (N, 4) -> (N, H, W), each pixel its block's
        return row_sel @ block_values.view(n, 2, 2) @ col_sel.transpose(1, 2)

    size = per_block(torch.ones_like(s))
    mean_x, mean_y = per_block(s) / size.clamp(min=1), per_block(gd) / size.clamp(min=1)
    dx, dy = s - spread(mean_x), gd - spread(mean_y)
    sigma_x, sigma_y, sigma_xy = (per_block(v) / (size - 1 + EPS) for v in (dx * dx, dy * dy, dx * dy))
    alpha = 4 * mean_x * mean_y * sigma_xy
    beta = (mean_x**2 + mean_y**2) * (sigma_x + sigma_y)
    score = torch.where(alpha != 0, alpha / (beta + EPS), (beta == 0).double())
    score = torch.where(size > 0, score, torch.zeros_like(score))
    area = height * width
    w_lt = cx * cy / area
    w_rt = cy * (width - cx) / area
    w_lb = (height - cy) * cx / area
    weights = torch.stack([w_lt, w_rt, w_lb, 1 - w_lt - w_rt - w_lb], dim=1)
    return (score * weights).sum(1)


def smeasure(saliency: torch.Tensor, truth: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """S-measure (structure measure) per image: (N,)."""
    s, g = _maps(saliency, truth)
    flat_s, flat_g = s.flatten(1), g.flatten(1)
    coverage = flat_g.double().mean(1)
    obj = _s_object(flat_s, flat_g) * coverage + _s_object(1 - flat_s, ~flat_g) * (1 - coverage)
    combined = (alpha * obj + (1 - alpha) * _s_region(s, g)).clamp(min=0)
    mean_s = flat_s.mean(1)
    return torch.where(coverage == 0, 1 - mean_s, torch.where(coverage == 1, mean_s, combined))


def image_scores(
    saliency: torch.Tensor, truth: torch.Tensor, beta2: float = BETA2, alpha: float = ALPHA
) -> dict[str, torch.Tensor]:
    """Every per-image quantity at once (the histograms and the adaptive counts shared):
    {"mae", "fbeta_adaptive", "smeasure", "emeasure_adaptive"}: (N,) and {"fbeta", "emeasure"}: (N, 256)."""
    s, g = _per_image(saliency, truth)
    pixels, positives = s.shape[1], g.sum(1)
    adaptive_tp, adaptive_predicted = _adaptive_counts(s, g)
    curve_tp, curve_predicted = _curve_counts(s, g)
    return {
        "mae": (s - g.double()).abs().mean(1),
        "fbeta_adaptive": fbeta_from_counts(adaptive_tp, adaptive_predicted, positives, beta2),
        "smeasure": smeasure(saliency, truth, alpha),
        "emeasure_adaptive": emeasure_from_counts(adaptive_tp, adaptive_predicted, positives, pixels),
        "fbeta": fbeta_from_counts(curve_tp, curve_predicted, positives[:, None], beta2),
        "emeasure": emeasure_from_counts(curve_tp, curve_predicted, positives[:, None], pixels),
    }


def saliency_from_logits(output: torch.Tensor) -> torch.Tensor:
    """(N, H, W) saliency from a network's output: softmax channel 1 of 2-class logits, or the
    sigmoid of a single logit channel."""
    if output.dim() != 4 or output.shape[1] not in (1, 2):
        raise ValueError(f"expected logits of shape (N, 2, H, W) or (N, 1, H, W), got {tuple(output.shape)}")
    if output.shape[1] == 1:
        return output[:, 0].float().sigmoid()
    return output.float().softmax(dim=1)[:, 1]


def _mask_2d(mask: torch.Tensor) -> torch.Tensor:
    if mask.dim() == 3 and mask.shape[0] == 1:
        return mask[0]
    if mask.dim() != 2:
        raise ValueError(f"expected a mask of shape (1, H, W) or (H, W), got {tuple(mask.shape)}")
    return mask


def same_size_groups(
    masks: torch.Tensor | Sequence[torch.Tensor],
) -> list[tuple[torch.Tensor | slice, torch.Tensor]]:
    """[(which items, their masks stacked (n, H, W))]: one group for a batched tensor, one per mask
    size for a sequence of masks of any sizes (each (1, H, W) or (H, W))."""
    if isinstance(masks, torch.Tensor):
        return [(slice(None), masks[:, 0] if masks.dim() == 4 else masks)]
    by_size: dict[tuple[int, int], list[int]] = {}
    masks = [_mask_2d(m) for m in masks]
    for i, mask in enumerate(masks):
        by_size.setdefault(tuple(mask.shape), []).append(i)
    return [
        (torch.tensor(items, device=masks[items[0]].device), torch.stack([masks[i] for i in items]))
        for items in by_size.values()
    ]


class SaliencyMetric(Metric):
    """Accumulates every metric of `METRIC_NAMES` over batches of one eval set.

    ``update(output, target)``: network logits (N, 2, H, W) (or (N, 1, H, W)) and masks, either
    batched, (N, 1, H, W) or (N, H, W), or a sequence of N masks (1, H, W) or (H, W) of any sizes
    (each image's original mask). A map of another size than its mask is resized (bilinear,
    ``align_corners=False``) to the mask's size, then min-max normalised per image when ``normalize``.
    ``compute()``: {name: value} for `METRIC_NAMES` (NaN before any update).
    """

    def __init__(self, beta2: float = BETA2, alpha: float = ALPHA, normalize: bool = True):
        self.beta2, self.alpha, self.normalize = beta2, alpha, normalize
        self.count = 0
        self._sums: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor | Sequence[torch.Tensor]) -> None:
        self.update_maps(saliency_from_logits(output.detach()), target)

    @torch.no_grad()
    def update_maps(self, saliency: torch.Tensor, target: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """`update` from saliency maps (N, H, W) in [0, 1] instead of logits (any float dtype)."""
        saliency = saliency.detach()
        if isinstance(target, torch.Tensor):
            target = target.detach()
        for items, truth in same_size_groups(target):
            maps = saliency[items]
            if maps.shape[-2:] != truth.shape[-2:]:
                maps = F.interpolate(maps[:, None], size=truth.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            if self.normalize:
                maps = normalize_maps(maps)
            for name, values in image_scores(maps, truth, self.beta2, self.alpha).items():
                total = values.sum(0)
                self._sums[name] = self._sums[name] + total if name in self._sums else total
        self.count += saliency.shape[0]

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {name: math.nan for name in METRIC_NAMES}
        result = {name: float(self._sums[name]) / self.count for name in _PER_IMAGE}
        for curve in _CURVES:
            mean_curve = self._sums[curve] / self.count
            result[f"{curve}_max"] = float(mean_curve.max())
            result[f"{curve}_mean"] = float(mean_curve.mean())
        return {name: result[name] for name in METRIC_NAMES}
