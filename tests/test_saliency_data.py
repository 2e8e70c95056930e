"""Saliency data: folder loaders and their up-front checks, transforms, the procedural data set."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evopop.data import procedural
from evopop.data.procedural import ProceduralSaliency
from evopop.data.saliency import DatasetError, SaliencyFolder, hku_is, msra_b, read_name_list
from evopop.data.transforms import IMAGENET_MEAN, IMAGENET_STD, SaliencyTransform


def write_image(path: Path, size=(20, 16), seed=0) -> None:
    """An RGB image of ``size`` = (width, height)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_mask(path: Path, size=(20, 16)) -> None:
    """A 0/255 mask whose left half is salient."""
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[:, : size[0] // 2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


def make_msra_b(root: Path, splits=None) -> Path:
    splits = splits or {"train": ["a", "b.jpg", "c"], "valid": ["d"], "test": ["e.png", "f"]}
    for names in splits.values():
        for name in names:
            stem = Path(name).stem
            write_image(root / "image" / f"{stem}.jpg")
            write_mask(root / "annotation" / f"{stem}.png")
    for split, names in splits.items():
        (root / f"{split}_cvpr2013.txt").write_text("\n".join(names) + "\n\n")
    return root


# -- valid layouts --------------------------------------------------------------------------------
def test_msra_b_loads_splits(tmp_path):
    root = make_msra_b(tmp_path / "MSRA-B")
    train = msra_b(root, "train", size=32)
    assert [name for name, _, _ in train.items] == ["a", "b", "c"]
    assert len(msra_b(root, "valid")) == 1 and len(msra_b(root, "test")) == 2
    image, mask = train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert mask.shape == (1, 32, 32) and set(mask.unique().tolist()) <= {0.0, 1.0}


def test_items_are_normalised_and_masks_binarised_at_128(tmp_path):
    write_image(tmp_path / "imgs" / "x.png", size=(4, 2))
    mask = np.array([[0, 128, 129, 255], [255, 129, 128, 0]], dtype=np.uint8)
    (tmp_path / "gt").mkdir()
    Image.fromarray(mask).save(tmp_path / "gt" / "x.png")
    data = hku_is(tmp_path, size=None)
    image, binary = data[0]
    assert binary[0].tolist() == [[0, 0, 1, 1], [1, 1, 0, 0]]
    raw = torch.from_numpy(np.array(Image.open(tmp_path / "imgs" / "x.png"))).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(image, (raw - mean) / std, atol=1e-5)


def test_generic_folder_pairs_by_stem(tmp_path):
    for stem in ("one", "two"):
        write_image(tmp_path / "Image" / f"{stem}.jpg")
        write_mask(tmp_path / "Mask" / f"{stem}.png")
    data = SaliencyFolder(tmp_path / "Image", tmp_path / "Mask", size=(8, 12))
    assert len(data) == 2
    assert data[1][0].shape == (3, 8, 12) and data[1][1].shape == (1, 8, 12)


def test_split_list_names_lose_their_extensions(tmp_path):
    (tmp_path / "list.txt").write_text("0_1.jpg\n  0_2.png \n\n0_3\n")
    assert read_name_list(tmp_path / "list.txt") == ["0_1", "0_2", "0_3"]


def test_joint_flip_keeps_image_and_mask_aligned():
    image = torch.zeros(3, 4, 6, dtype=torch.uint8)
    image[:, :, :3] = 255  # bright left half ...
    mask = torch.zeros(1, 4, 6, dtype=torch.uint8)
    mask[:, :, :3] = 255  # ... is the salient half
    transform = SaliencyTransform(size=None, hflip=True)
    torch.manual_seed(0)
    flips = 0
    for _ in range(20):
        out_image, out_mask = transform(image, mask)
        bright = out_image[0] > 0
        assert torch.equal(bright, out_mask[0].bool())
        flips += int(bool(out_mask[0, 0, -1]))
    assert 0 < flips < 20


# -- bad inputs: one DatasetError naming the file ---------------------------------------------------
def test_missing_split_list(tmp_path):
    root = make_msra_b(tmp_path / "MSRA-B")
    (root / "test_cvpr2013.txt").unlink()
    with pytest.raises(DatasetError, match="test_cvpr2013.txt"):
        msra_b(root, "test")


def test_listed_image_without_mask(tmp_path):
    root = make_msra_b(tmp_path / "MSRA-B")
    (root / "annotation" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"b\.jpg has no mask"):
        msra_b(root, "train")


def test_image_without_mask(tmp_path):
    write_image(tmp_path / "imgs" / "lonely.png")
    write_image(tmp_path / "imgs" / "ok.png")
    write_mask(tmp_path / "gt" / "ok.png")
    with pytest.raises(DatasetError, match=r"lonely\.png has no mask"):
        hku_is(tmp_path)


def test_mask_without_image(tmp_path):
    write_image(tmp_path / "imgs" / "ok.png")
    write_mask(tmp_path / "gt" / "ok.png")
    write_mask(tmp_path / "gt" / "orphan.png")
    with pytest.raises(DatasetError, match=r"orphan\.png has no image"):
        hku_is(tmp_path)


def test_mask_of_another_size(tmp_path):
    root = make_msra_b(tmp_path / "MSRA-B")
    write_mask(root / "annotation" / "c.png", size=(10, 16))
    with pytest.raises(DatasetError, match=r"c\.png is 10x16 but its image .*c\.jpg is 20x16"):
        msra_b(root, "train")


def test_corrupt_image(tmp_path):
    root = make_msra_b(tmp_path / "MSRA-B")
    (root / "image" / "a.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(DatasetError, match=r"cannot read image .*a\.jpg"):
        msra_b(root, "train")
    assert issubclass(DatasetError, ValueError)


def test_problems_are_reported_together(tmp_path):
    root = make_msra_b(tmp_path / "MSRA-B")
    (root / "annotation" / "a.png").unlink()
    (root / "annotation" / "c.png").unlink()
    with pytest.raises(DatasetError, match="2 problem") as info:
        msra_b(root, "train")
    assert "a.jpg" in str(info.value) and "c.jpg" in str(info.value)


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        SaliencyFolder(tmp_path / "nope", tmp_path / "nada")


def test_damage_past_the_header_is_reported_when_loaded(tmp_path):
    root = make_msra_b(tmp_path / "MSRA-B")
    path = root / "image" / "a.jpg"
    path.write_bytes(path.read_bytes()[:-20])  # a valid header, truncated data
    data = msra_b(root, "train")
    with pytest.raises(DatasetError, match=r"a\.jpg"):
        data[0]


# -- procedural ------------------------------------------------------------------------------------
def test_procedural_items_are_deterministic_and_independent_of_order():
    data = ProceduralSaliency(12, size=32, seed=3)
    again = ProceduralSaliency(12, size=32, seed=3)
    image, mask = again[7]  # first access of `again` is item 7; of `data`, item 0
    assert torch.equal(data[0][0], again[0][0])
    assert torch.equal(data[7][0], image) and torch.equal(data[7][1], mask)
    single_image, single_mask = data.render([7])
    batch_image, batch_mask = data.render(range(12))
    assert torch.equal(single_image[0], batch_image[7]) and torch.equal(single_mask[0], batch_mask[7])


def test_procedural_seeds_differ():
    a, b = ProceduralSaliency(4, size=32, seed=0), ProceduralSaliency(4, size=32, seed=1)
    for i in range(4):
        assert not torch.equal(a[i][0], b[i][0])
    # Item i+1 of seed s is not item i of seed s+1 (seeds are hashed, not added to the index).
    assert not torch.equal(a[1][0], b[0][0])


def test_procedural_format_and_coverage():
    data = ProceduralSaliency(200, size=64, seed=0)
    image, mask = data[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert mask.shape == (1, 64, 64) and set(mask.unique().tolist()) == {0.0, 1.0}
    coverage = torch.stack([data[i][1].mean() for i in range(len(data))])
    assert coverage.min() >= 0.05 and coverage.max() <= 0.6
    assert 0.1 < coverage.mean() < 0.35


def test_procedural_salient_pixels_stand_out_but_not_trivially():
    images, masks = ProceduralSaliency(64, size=64, seed=5).render(range(64))
    images = images.float() / 255
    inside = (images * masks).sum((2, 3)) / masks.sum((2, 3))
    outside = (images * ~masks).sum((2, 3)) / (~masks).sum((2, 3))
    contrast = (inside - outside).abs().sum(1)
    assert contrast.median() > 0.3  # learnable: the objects differ in colour from the background
    # Not a fixed colour: no single colour (per channel) is salient in every image.
    assert inside.std(0).min() > 0.1


def test_procedural_pickles_without_pixels():
    data = ProceduralSaliency(8, size=32)
    first = data[0][0]
    payload = pickle.dumps(data)
    assert len(payload) < data._images.numel()  # the recipe, not the 8 x 3 x 32 x 32 pixels
    clone = pickle.loads(payload)
    assert clone._images is data._images and torch.equal(clone[0][0], first)  # this process's pixels


def test_procedural_renders_once_per_process(monkeypatch):
    renders = []
    render_all = procedural._render_all
    monkeypatch.setattr(procedural, "_RENDERED", {})
    monkeypatch.setattr(procedural, "_render_all", lambda *recipe: renders.append(recipe) or render_all(*recipe))
    data = ProceduralSaliency(6, size=32, seed=11)
    assert renders == [(6, 32, 11)]  # rendered when built, not on first access
    again, clone = ProceduralSaliency(6, size=32, seed=11), pickle.loads(pickle.dumps(data))
    assert again._images is data._images and clone._masks is data._masks
    ProceduralSaliency(6, size=32, seed=12)
    assert renders == [(6, 32, 11), (6, 32, 12)]


def test_procedural_unpickles_in_a_fresh_process_to_the_same_items(monkeypatch):
    data = ProceduralSaliency(6, size=32, seed=11)
    payload = pickle.dumps(data)
    monkeypatch.setattr(procedural, "_RENDERED", {})  # as in a spawned DataLoader worker
    clone = pickle.loads(payload)
    assert clone._images is None  # rendered on first access, not while unpickling
    assert torch.equal(clone[5][0], data[5][0])
    assert torch.equal(clone._images, data._images) and torch.equal(clone._masks, data._masks)
    assert pickle.loads(payload)._images is clone._images  # and only once
