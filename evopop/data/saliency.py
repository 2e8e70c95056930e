"""Saliency data sets on disk: an image folder and a mask folder whose files pair by stem.

Layouts (see shared REFERENCE.md):

- generic (DUTS, ECSSD, PASCAL-S, ...): `SaliencyFolder(images_dir, masks_dir)`;
- MSRA-B: `msra_b(root, split)` with ``root/image/*.jpg``, ``root/annotation/*.png`` and the split
  lists ``root/{train,valid,test}_cvpr2013.txt`` (one name a line, extension optional);
- HKU-IS: `hku_is(root)` with ``root/imgs/*.png``, ``root/gt/*.png``.

Everything that can be checked cheaply is checked when a data set is built, before any training,
and reported as ONE `DatasetError` naming every bad file (up to a limit): a missing folder or split
list, an image without a mask and the reverse, an image or mask PIL cannot identify, and a mask of
another size than its image. These checks read file headers only; damage past the header (a
truncated JPEG) is found when the item is loaded, and is also reported as a `DatasetError` naming
the file. Masks are 0..255 grayscale; a pixel is salient iff its value is > 128.

Evaluation sets keep each mask at its original size (``original_masks=True``), as the field's
evaluation code does: the image is resized for the network, the mask is not, and the metric resizes
the prediction to the mask. Such items do not stack into a batch; the data set's `collate_fn`
(`collate_original_masks`) stacks the images and keeps the masks as a list.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2.functional import pil_to_tensor

from .transforms import SaliencyTransform, binarize_mask

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS = (".png", ".bmp", ".gif", ".jpg", ".jpeg", ".tif", ".tiff")
MSRA_B_SPLITS = {
    "train": "train_cvpr2013.txt",
    "valid": "valid_cvpr2013.txt",
    "val": "valid_cvpr2013.txt",
    "test": "test_cvpr2013.txt",
}
MAX_LISTED_PROBLEMS = 20

PathLike = str | os.PathLike


class DatasetError(ValueError):
    """A data set on disk is missing, incomplete or unreadable; the message names the files."""


def _raise_problems(label: str, problems: list[str]) -> None:
    if not problems:
        return
    shown = "\n  - ".join(problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    raise DatasetError(f"{label}: {len(problems)} problem(s) found before training:\n  - {shown}{tail}")


def _index_folder(folder: Path, extensions: Sequence[str], what: str, problems: list[str]) -> dict[str, Path]:
    """{stem: file} of the files in ``folder`` with one of ``extensions`` (case-insensitive)."""
    if not folder.is_dir():
        problems.append(f"{what} folder {folder} does not exist")
        return {}
    by_stem: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in extensions or not path.is_file():
            continue
        if path.stem in by_stem:
            problems.append(f"{what}s {by_stem[path.stem]} and {path} share the stem {path.stem!r}")
        by_stem[path.stem] = path
    return by_stem


def strip_extension(name: str) -> str:
    """A split-list entry without its image/mask extension, if it has one."""
    suffix = Path(name).suffix
    return name[: -len(suffix)] if suffix.lower() in IMAGE_EXTENSIONS + MASK_EXTENSIONS else name


def read_name_list(path: PathLike) -> list[str]:
    """Names of a split list (one a line; blank lines skipped; extensions stripped)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"split list {path} does not exist")
    lines = path.read_text().splitlines()
    return [strip_extension(line.strip()) for line in lines if line.strip()]


def _header(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    with Image.open(path) as image:
        return image.size


def _read(path: Path, mode: str) -> torch.Tensor:
    with Image.open(path) as image:
        return pil_to_tensor(image.convert(mode))


def collate_original_masks(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list]:
    """A batch of ``(image, mask)`` items with masks of any sizes: (stacked images, list of masks)."""
    images, masks = zip(*batch)
    return torch.stack(images), list(masks)


class SaliencyFolder(Dataset):
    """Images in ``images_dir`` paired by stem with 0..255 masks in ``masks_dir``.

    ``names`` restricts (and orders) the items, e.g. a split list; without it every image is an
    item and every image and mask must have its partner. Items are ``(image, mask)`` as described in
    `evopop.data.transforms` at ``size`` (int or (height, width); None keeps each file's size),
    randomly flipped when ``hflip``. ``check=False`` skips the header checks of `validate`.
    ``original_masks`` (evaluation): the mask stays at the file's size, float (1, H, W) in {0, 1},
    while the image is resized; a DataLoader then needs ``collate_fn=dataset.collate_fn``.
    """

    def __init__(
        self,
        images_dir: PathLike,
        masks_dir: PathLike,
        names: Sequence[str] | None = None,
        size: int | tuple[int, int] | None = 224,
        hflip: bool = False,
        transform=None,
        check: bool = True,
        label: str | None = None,
        original_masks: bool = False,
    ):
        if original_masks and hflip:
            raise ValueError("original_masks is for evaluation: it cannot be combined with hflip")
        self.images_dir, self.masks_dir = Path(images_dir), Path(masks_dir)
        self.label = label or f"saliency data {self.images_dir} + {self.masks_dir}"
        self.transform = transform or SaliencyTransform(size, hflip=hflip)
        self.original_masks = original_masks
        self.collate_fn = collate_original_masks if original_masks else None
        self.items = self._pair(names)
        if check:
            self.validate()

    def _pair(self, names: Sequence[str] | None) -> list[tuple[str, Path, Path]]:
        problems: list[str] = []
        images = _index_folder(self.images_dir, IMAGE_EXTENSIONS, "image", problems)
        masks = _index_folder(self.masks_dir, MASK_EXTENSIONS, "mask", problems)
        _raise_problems(self.label, problems)  # without both folders, pairing means nothing
        if names is None:
            names = sorted(images)
            problems += [f"mask {masks[s]} has no image in {self.images_dir}" for s in sorted(set(masks) - set(images))]
        names = [strip_extension(n) for n in names]
        for name in names:
            if name not in images:
                problems.append(f"no image named {name!r} in {self.images_dir}")
            elif name not in masks:
                problems.append(f"image {images[name]} has no mask in {self.masks_dir} (expected {name}.png)")
        if not names:
            problems.append(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {self.images_dir}")
        _raise_problems(self.label, problems)
        return [(name, images[name], masks[name]) for name in names]

    def validate(self) -> None:
        """Check every pair from its file headers: readable image and mask of the same size."""
        problems: list[str] = []
        for _, image_path, mask_path in self.items:
            sizes = []
            for path, what in ((image_path, "image"), (mask_path, "mask")):
                try:
                    sizes.append(_header(path))
                except Exception as exc:  # PIL raises several types for unreadable files
                    problems.append(f"cannot read {what} {path} ({type(exc).__name__}: {exc})")
            if len(sizes) == 2 and sizes[0] != sizes[1]:
                (iw, ih), (mw, mh) = sizes
                problems.append(f"mask {mask_path} is {mw}x{mh} but its image {image_path} is {iw}x{ih}")
        _raise_problems(self.label, problems)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, image_path, mask_path = self.items[index]
        image = self._load(image_path, "RGB")
        mask = self._load(mask_path, "L")
        if image.shape[-2:] != mask.shape[-2:]:
            (mh, mw), (ih, iw) = mask.shape[-2:], image.shape[-2:]
            raise DatasetError(f"mask {mask_path} is {mw}x{mh} but its image {image_path} is {iw}x{ih}")
        if self.original_masks:
            return self.transform(image, mask)[0], binarize_mask(mask)
        return self.transform(image, mask)

    @staticmethod
    def _load(path: Path, mode: str) -> torch.Tensor:
        try:
            return _read(path, mode)
        except Exception as exc:
            raise DatasetError(f"cannot read {path} ({type(exc).__name__}: {exc})") from exc


def msra_b(
    root: PathLike,
    split: str,
    size: int | tuple[int, int] | None = 224,
    hflip: bool | None = None,
    check: bool = True,
    original_masks: bool = False,
) -> SaliencyFolder:
    """MSRA-B ``split`` ("train", "valid"/"val", "test"); flipped at random when training by default.
    ``original_masks``: see `SaliencyFolder`."""
    if split not in MSRA_B_SPLITS:
        raise ValueError(f"MSRA-B split must be one of {sorted(MSRA_B_SPLITS)}, got {split!r}")
    root = Path(root)
    names = read_name_list(root / MSRA_B_SPLITS[split])
    hflip = split == "train" if hflip is None else hflip
    return SaliencyFolder(
        root / "image",
        root / "annotation",
        names,
        size=size,
        hflip=hflip,
        check=check,
        label=f"MSRA-B {split} ({root})",
        original_masks=original_masks,
    )


def hku_is(
    root: PathLike, size: int | tuple[int, int] | None = 224, check: bool = True, original_masks: bool = False
) -> SaliencyFolder:
    """HKU-IS, whole (a test set). ``original_masks``: see `SaliencyFolder`."""
    root = Path(root)
    label = f"HKU-IS ({root})"
    return SaliencyFolder(
        root / "imgs", root / "gt", size=size, check=check, label=label, original_masks=original_masks
    )
