"""Saliency metrics against hand-computed values."""

import math

import pytest
import torch

from evopop.metrics.saliency import SaliencyMetric, fbeta_adaptive, fbeta_curve, mae, quantize

B2 = 0.3


def f_beta(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else (1 + B2) * precision * recall / (B2 * precision + recall)


def square_truth(size=8, side=4) -> torch.Tensor:
    """(1, size, size) ground truth: a side x side salient square (coverage side^2 / size^2)."""
    truth = torch.zeros(1, size, size)
    truth[:, :side, :side] = 1
    return truth


def logits_for(saliency: torch.Tensor) -> torch.Tensor:
    """2-class logits (N, 2, H, W) whose softmax channel 1 is ``saliency`` (N, H, W)."""
    logit = torch.logit(saliency.clamp(1e-6, 1 - 1e-6))
    return torch.stack([torch.zeros_like(logit), logit], dim=1)


def test_perfect_map():
    truth = square_truth()  # coverage 1/4
    coverage = 0.25
    assert mae(truth, truth).item() == 0
    assert fbeta_adaptive(truth, truth).item() == pytest.approx(1)
    curve = fbeta_curve(truth, truth)[0]
    # t = 0 takes every pixel (P = coverage, R = 1); every t >= 1 takes exactly the salient ones.
    assert curve[0].item() == pytest.approx(f_beta(coverage, 1))
    assert torch.allclose(curve[1:], torch.ones(255))
    assert curve.max().item() == pytest.approx(1)


def test_all_zero_map():
    truth = square_truth()
    zero = torch.zeros_like(truth)
    f_all = f_beta(0.25, 1)  # every pixel called salient
    assert mae(zero, truth).item() == pytest.approx(0.25)
    # Adaptive threshold min(2 * 0, 1) = 0: S >= 0 holds everywhere.
    assert fbeta_adaptive(zero, truth).item() == pytest.approx(f_all)
    curve = fbeta_curve(zero, truth)[0]
    assert curve[0].item() == pytest.approx(f_all)
    assert torch.all(curve[1:] == 0)  # nothing predicted: precision 0/0 := 0, so F = 0


def test_constant_half_map():
    truth = square_truth()
    half = torch.full_like(truth, 0.5)
    f_all = f_beta(0.25, 1)
    assert mae(half, truth).item() == pytest.approx(0.5)
    assert fbeta_adaptive(half, truth).item() == 0  # threshold min(2 * 0.5, 1) = 1: nothing salient
    curve = fbeta_curve(half, truth)[0]
    assert quantize(half).unique().tolist() == [127]
    assert torch.allclose(curve[:128], torch.full((128,), f_all))  # t <= 127: every pixel salient
    assert torch.all(curve[128:] == 0)
    metric = SaliencyMetric()
    metric.update(logits_for(half), truth[:, None])
    result = metric.compute()
    assert result["fbeta_max"] == pytest.approx(f_all)
    assert result["fbeta_mean"] == pytest.approx(f_all / 2)


def test_small_precision_recall_example_by_hand():
    # Six pixels, three salient. Levels floor(255 * S): 229, 178, 127, 76, 25, 0.
    saliency = torch.tensor([[[0.9, 0.7, 0.5], [0.3, 0.1, 0.0]]])
    truth = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])
    assert quantize(saliency).flatten().tolist() == [229, 178, 127, 76, 25, 0]
    # (number of thresholds, true positives, predicted) as t goes from 255 down to 0.
    table = [(26, 0, 0), (51, 1, 1), (51, 2, 2), (51, 2, 3), (51, 3, 4), (25, 3, 5), (1, 3, 6)]
    assert sum(n for n, _, _ in table) == 256
    expected_desc = []
    for n, tp, predicted in table:
        precision = tp / predicted if predicted else 0.0
        expected_desc += [f_beta(precision, tp / 3)] * n
    expected = torch.tensor(expected_desc[::-1])
    curve = fbeta_curve(saliency, truth)[0]
    assert torch.allclose(curve, expected, atol=1e-6)
    assert curve.max().item() == pytest.approx(f_beta(1, 2 / 3))
    # Adaptive: mean 2.5 / 6, threshold 0.8333: only the 0.9 pixel (P = 1, R = 1/3).
    assert fbeta_adaptive(saliency, truth).item() == pytest.approx(f_beta(1, 1 / 3))
    assert mae(saliency, truth).item() == pytest.approx((0.1 + 0.3 + 0.5 + 0.7 + 0.1 + 0.0) / 6)


def test_empty_ground_truth_gives_zero_f():
    truth = torch.zeros(1, 4, 4)
    saliency = torch.rand(1, 4, 4)
    assert mae(saliency, truth).item() == pytest.approx(saliency.mean().item())
    assert fbeta_adaptive(saliency, truth).item() == 0
    assert torch.all(fbeta_curve(saliency, truth) == 0)


def test_metric_averages_per_image_over_batches():
    torch.manual_seed(0)
    saliency = torch.rand(5, 6, 7)
    truth = (torch.rand(5, 6, 7) > 0.6).float()
    whole, split = SaliencyMetric(), SaliencyMetric()
    whole.update(logits_for(saliency), truth[:, None])
    split.update(logits_for(saliency[:2]), truth[:2, None])
    split.update(logits_for(saliency[2:]), truth[2:])  # masks without the channel dim work too
    a, b = whole.compute(), split.compute()
    assert set(a) == {"mae", "fbeta_adaptive", "fbeta_max", "fbeta_mean"}
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-6)
    per_image_curve = fbeta_curve(saliency, truth)
    assert a["fbeta_max"] == pytest.approx(per_image_curve.mean(0).max().item(), abs=1e-6)
    assert a["mae"] == pytest.approx(mae(saliency, truth).mean().item(), abs=1e-6)


def test_metric_of_perfect_logits_and_empty_metric():
    truth = square_truth()[:, None]
    logits = torch.cat([1 - truth, truth], dim=1) * 40 - 20  # softmax ~ exactly the mask
    metric = SaliencyMetric()
    metric.update(logits, truth)
    result = metric.compute()
    assert result["mae"] == pytest.approx(0, abs=1e-6)
    assert result["fbeta_adaptive"] == pytest.approx(1)
    assert result["fbeta_max"] == pytest.approx(1)
    assert all(math.isnan(v) for v in SaliencyMetric().compute().values())


def test_map_is_resized_to_the_mask():
    truth = square_truth(8, 4)[:, None]
    small = torch.cat([1 - truth, truth], dim=1)[:, :, ::2, ::2] * 40 - 20  # (1, 2, 4, 4)
    metric = SaliencyMetric()
    metric.update(small, truth)
    assert metric.compute()["fbeta_max"] > 0.9
