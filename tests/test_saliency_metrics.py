"""Saliency metrics against hand-computed values and against PySODMetrics, the field's reference code."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from evopop.data.procedural import ProceduralSaliency
from evopop.metrics.saliency import (
    METRIC_NAMES,
    SaliencyMetric,
    fbeta_adaptive,
    fbeta_curve,
    image_scores,
    mae,
    normalize_maps,
    quantize,
)
from evopop.tasks.saliency import SaliencyTask
from evopop.training.loop import Recipe, evaluate

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
    assert torch.allclose(curve[1:], torch.ones(255, dtype=torch.float64))
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
    assert torch.allclose(curve[:128], torch.full((128,), f_all, dtype=torch.float64))  # t <= 127: every pixel salient
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
    expected = torch.tensor(expected_desc[::-1], dtype=torch.float64)
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
    assert list(a) == list(METRIC_NAMES)
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-6)
    normalized = normalize_maps(saliency)
    per_image_curve = fbeta_curve(normalized, truth)
    assert a["fbeta_max"] == pytest.approx(per_image_curve.mean(0).max().item(), abs=1e-5)
    assert a["mae"] == pytest.approx(mae(normalized, truth).mean().item(), abs=1e-6)


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


def test_normalisation_is_per_image_min_max():
    maps = torch.tensor([[[0.2, 0.4], [0.3, 0.6]], [[0.5, 0.5], [0.5, 0.5]]])
    normalized = normalize_maps(maps)
    assert torch.allclose(normalized[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]], dtype=torch.float64))
    assert torch.equal(normalized[1], maps[1].double())  # a constant map is left as it is
    truth = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]] * 2)
    on, off = SaliencyMetric(), SaliencyMetric(normalize=False)
    on.update_maps(maps, truth)
    off.update_maps(maps, truth)
    expected_on = (mae(normalized[:1], truth[:1]) + mae(maps[1:], truth[1:])).item() / 2
    assert on.compute()["mae"] == pytest.approx(expected_on)
    assert off.compute()["mae"] == pytest.approx(mae(maps, truth).mean().item())


# -- agreement with PySODMetrics ----------------------------------------------------------------

AGREEMENT = 1e-4


def reference(preds, gts, normalize=True) -> dict[str, float]:
    """PySODMetrics' values of evopop's metric names; preds/gts as its users feed it: uint8 0..255
    (``normalize=False``: float maps in [0, 1] and bool masks)."""
    import py_sod_metrics  # a test dependency: its absence fails the test, never skips it

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure announces FmeasureV2; both compute the same
        fm, mae_, sm, em = (
            py_sod_metrics.Fmeasure(),
            py_sod_metrics.MAE(),
            py_sod_metrics.Smeasure(),
            py_sod_metrics.Emeasure(),
        )
        fm2 = py_sod_metrics.FmeasureV2({"f": py_sod_metrics.FmeasureHandler(with_dynamic=True, with_adaptive=True)})
        for pred, gt in zip(preds, gts):
            for metric in (fm, fm2, mae_, sm, em):
                metric.step(pred, gt, normalize=normalize)
    f, e, f2 = fm.get_results()["fm"], em.get_results()["em"], fm2.get_results()["f"]
    assert np.allclose(f["curve"], f2["dynamic"]) and np.isclose(f["adp"], f2["adaptive"])
    return {
        "mae": mae_.get_results()["mae"],
        "fbeta_adaptive": f["adp"],
        "fbeta_max": f["curve"].max(),
        "fbeta_mean": f["curve"].mean(),
        "smeasure": sm.get_results()["sm"],
        "emeasure_adaptive": e["adp"],
        "emeasure_max": e["curve"].max(),
        "emeasure_mean": e["curve"].mean(),
    }


def evopop_scores(preds, gts, normalize=True) -> dict[str, float]:
    """SaliencyMetric on the same uint8 maps read as pred / 255 (float64) and masks > 128, one image
    at a time (sizes differ)."""
    metric = SaliencyMetric(normalize=normalize)
    for pred, gt in zip(preds, gts):
        metric.update_maps(torch.from_numpy(pred / 255)[None], [torch.from_numpy(gt > 128).float()[None]])
    return metric.compute()


def blur(mask: np.ndarray, radius: int) -> np.ndarray:
    kernel = torch.ones(1, 1, 2 * radius + 1, 2 * radius + 1) / (2 * radius + 1) ** 2
    return F.conv2d(torch.from_numpy(mask).float()[None, None], kernel, padding=radius)[0, 0].numpy()


def to_uint8(saliency: np.ndarray) -> np.ndarray:
    """How the field saves a float map: ``(S * 255).astype(uint8)``."""
    return (np.clip(saliency, 0, 1) * 255).astype(np.uint8)


def random_case(rng):
    h, w = rng.integers(12, 70, 2)
    return to_uint8(rng.random((h, w))), (rng.random((h, w)) > rng.uniform(0.3, 0.9)).astype(np.uint8) * 255


def procedural_case(rng):
    data = ProceduralSaliency(12, 48, seed=7)  # rendered once per process
    mask = data[int(rng.integers(len(data)))][1][0].numpy()
    noisy = blur(mask, int(rng.integers(1, 4))) * 0.8 + rng.normal(0, 0.1, mask.shape) + 0.1
    return to_uint8(noisy), (mask * 255).astype(np.uint8)


def low_contrast_case(rng):
    """A map whose values span a few levels: min-max normalisation stretches it."""
    h, w = rng.integers(16, 60, 2)
    mask = np.zeros((h, w))
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    mask[y : y + h // 2, x : x + w // 3] = 1
    faint = 0.45 + 0.06 * blur(mask, 2) + rng.normal(0, 0.01, (h, w))
    return to_uint8(faint), (mask * 255).astype(np.uint8)


def ellipse_case(rng):
    """An ellipse of any size and place in an image of any size (the centroid moves the S-measure's blocks)."""
    h, w = rng.integers(20, 90, 2)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx, ry, rx = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, h / 2), rng.uniform(2, w / 2)
    mask = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(float)
    if not mask.any():
        mask[int(cy), int(cx)] = 1
    soft = np.clip(blur(mask, 3) + rng.normal(0, 0.15, (h, w)), 0, 1) ** rng.uniform(0.5, 2)
    return to_uint8(soft), (mask * 255).astype(np.uint8)


CASES = {
    "random": random_case,
    "procedural": procedural_case,
    "low_contrast": low_contrast_case,
    "ellipse": ellipse_case,
}


def build_cases(kind: str, n: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    preds, gts = zip(*(CASES[kind](rng) for _ in range(n)))
    return list(preds), list(gts)


def assert_agree(ours: dict, theirs: dict) -> None:
    assert list(ours) == list(METRIC_NAMES)
    differences = {name: abs(ours[name] - float(theirs[name])) for name in METRIC_NAMES}
    assert max(differences.values()) < AGREEMENT, differences


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("normalize", [True, False])
def test_agrees_with_pysodmetrics(kind, normalize):
    preds, gts = build_cases(kind)
    if normalize:
        theirs = reference(preds, gts)
    else:  # PySODMetrics then takes float maps in [0, 1] and bool masks, as evopop does
        theirs = reference([p / 255 for p in preds], [g > 128 for g in gts], normalize=False)
    assert_agree(evopop_scores(preds, gts, normalize), theirs)


def test_normalisation_matters_on_low_contrast_maps():
    preds, gts = build_cases("low_contrast")
    on, off = evopop_scores(preds, gts), evopop_scores(preds, gts, normalize=False)
    assert on["mae"] < off["mae"] - 0.1  # a map that never leaves ~0.45 is far from its mask until stretched
    assert on["smeasure"] > off["smeasure"]


def test_edge_cases_agree_with_pysodmetrics():
    rng = np.random.default_rng(1)
    shape = (24, 31)
    square = np.zeros(shape, np.uint8)
    square[5:15, 8:20] = 255
    preds = [
        to_uint8(rng.random(shape)),  # empty ground truth
        to_uint8(rng.random(shape)),  # all-ones ground truth
        np.zeros(shape, np.uint8),  # all-zero map (not normalised: max == min)
        np.full(shape, 77, np.uint8),  # constant map
        square.copy(),  # perfect map
        255 - square,  # inverted map
    ]
    gts = [np.zeros(shape, np.uint8), np.full(shape, 255, np.uint8), square, square, square, square]
    for pred, gt in zip(preds, gts):  # each alone, and all together
        assert_agree(evopop_scores([pred], [gt]), reference([pred], [gt]))
    assert_agree(evopop_scores(preds, gts), reference(preds, gts))


def test_batched_and_per_image_updates_agree():
    preds, gts = build_cases("ellipse", n=6)
    preds, gts = [p[:20, :20] for p in preds], [g[:20, :20] for g in gts]
    maps = torch.from_numpy(np.stack(preds) / 255)
    masks = torch.from_numpy(np.stack(gts) > 128).float()
    batched, listed = SaliencyMetric(), SaliencyMetric()
    batched.update_maps(maps, masks[:, None])
    listed.update_maps(maps, list(masks))
    scores = image_scores(normalize_maps(maps), masks)
    a, b = batched.compute(), listed.compute()
    for name in METRIC_NAMES:
        assert a[name] == pytest.approx(b[name], abs=1e-12)
    assert a["smeasure"] == pytest.approx(scores["smeasure"].mean().item(), abs=1e-12)
    assert a["emeasure_max"] == pytest.approx(scores["emeasure"].mean(0).max().item(), abs=1e-12)


# -- evaluation at the masks' original size, end to end --------------------------------------------


def write_folder(root, sizes, seed=0):
    """An image folder and a mask folder: one ellipse image per (height, width) in ``sizes``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        mask = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 3) / (w / 4)) ** 2 <= 1
        image = rng.integers(0, 100, (h, w, 3)).astype(np.uint8)
        image[mask] += 120
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"im{i}.png")
    return {"images": str(root / "images"), "masks": str(root / "masks")}


def test_task_evaluates_at_the_masks_original_size(tmp_path):
    sizes = [(40, 56), (33, 47), (40, 56), (64, 30), (25, 25)]
    spec = write_folder(tmp_path / "val", sizes)
    task = SaliencyTask(dataset="folder", folders={"train": spec, "val": spec}, size=32, width=0.125)
    val = task.eval_sets()["val"]
    assert [tuple(val[i][1].shape) for i in range(len(sizes))] == [(1, h, w) for h, w in sizes]
    assert all(val[i][0].shape == (3, 32, 32) for i in range(len(sizes)))
    torch.manual_seed(0)
    model = task.build_model().eval()
    results = evaluate(model, task, Recipe(eval_batch_size=len(sizes)), torch.device("cpu"))

    # By hand: the prediction at 32 x 32, upsampled (bilinear, align_corners=False) to its mask, then
    # scored by PySODMetrics on the float map (normalised here, as evopop does, then normalize=False).
    preds, gts, losses = [], [], []
    with torch.no_grad():  # one batch, as evaluate's: an untrained map is flat, and normalising it magnifies noise
        outputs = model(torch.stack([val[i][0] for i in range(len(sizes))]))
        for i in range(len(sizes)):
            mask = val[i][1]
            logits = F.interpolate(outputs[i : i + 1], size=mask.shape[-2:], mode="bilinear", align_corners=False)
            losses.append(F.cross_entropy(logits, mask.long()).item())
            small = outputs[i : i + 1].softmax(1)[:, 1:]  # the map is upsampled, not the logits
            saliency = F.interpolate(small, size=mask.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            preds.append(normalize_maps(saliency)[0].numpy())
            gts.append(mask[0].numpy() > 0.5)
    theirs = reference(preds, gts, normalize=False)
    assert_agree({name: results[f"val_{name}"] for name in METRIC_NAMES}, theirs)
    assert results["val_loss"] == pytest.approx(np.mean(losses), rel=1e-5)

    # eval_original_size=False: masks at the network's size, as training sees them.
    resized = SaliencyTask(
        dataset="folder", folders={"train": spec, "val": spec}, size=32, width=0.125, eval_original_size=False
    )
    assert resized.eval_sets()["val"][0][1].shape == (1, 32, 32)
    resized_results = evaluate(model, resized, Recipe(eval_batch_size=2), torch.device("cpu"))
    assert resized_results["val_mae"] != results["val_mae"]


def test_task_args_for_the_metric_options():
    task = SaliencyTask(train_n=4, val_n=4, test_n=4, normalize_maps=False)
    assert task.metrics().normalize is False
    assert SaliencyTask(train_n=4, val_n=4, test_n=4).metrics().normalize is True
    assert task.metric_names() == list(METRIC_NAMES)
