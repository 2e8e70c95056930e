"""Image classification data on the user's disk: an image folder (one subfolder per class), or a
torchvision data set class by name over a local root. Nothing downloads.

Folder layouts (`image_folder_splits`):

- ``root/train/<class>/...`` and ``root/val/<class>/...``, optionally ``root/test/<class>/...`` (a test
  set that selection never reads);
- or ``root/<class>/...`` alone, split into train and val per class by a seeded ``val_fraction``.

Everything cheap to check is checked before any training, and reported as one `DatasetError`: a missing
root, a class folder without images, an image whose header PIL cannot read, val classes that train
lacks. Files that are not images by their extension (a README, a .DS_Store) are skipped and counted.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2

from .saliency import IMAGE_EXTENSIONS, DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_LISTED = 8  # bad files named in one message


@dataclass(frozen=True)
class ImageTransforms:
    """The standard classification transforms: random-resized crop and flip for training; resize
    and centre crop for evaluation; both normalised (ImageNet's statistics by default)."""

    size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_scale: tuple[float, float] = (0.08, 1.0)  # of the image's area, for the random-resized crop
    resize: float = 256 / 224  # evaluation: resize the short side to size x this, then crop size
    flip: bool = True

    def train(self) -> v2.Compose:
        steps = [v2.RGB(), v2.RandomResizedCrop(self.size, scale=tuple(self.crop_scale), antialias=True)]
        steps += [v2.RandomHorizontalFlip()] if self.flip else []
        return v2.Compose(steps + self._to_tensor())

    def eval(self) -> v2.Compose:
        short_side = max(self.size, round(self.size * self.resize))
        steps = [v2.RGB(), v2.Resize(short_side, antialias=True), v2.CenterCrop(self.size)]
        return v2.Compose(steps + self._to_tensor())

    def _to_tensor(self) -> list:
        return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.mean), list(self.std))]


class ImageFiles(Dataset):
    """(image, class index) of a list of files, each image transformed on reading."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str], transform=None):
        self.samples, self.classes, self.transform = list(samples), list(classes), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                image.load()
        except OSError as exc:  # damage past the header: found only when the image is decoded
            raise DatasetError(f"cannot read image {path}: {exc}") from None
        return (self.transform(image) if self.transform else image), label


@dataclass
class FolderScan:
    """What is under one folder of classes: the images per class, and what was left out."""

    classes: list[str]
    samples: list[tuple[str, int]]
    skipped: list[str] = field(default_factory=list)  # files that are not images by their extension


def class_names(folder: str | Path) -> list[str]:
    """The class subfolders of ``folder``, sorted (their index is the class index); hidden ones aside."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist (or is not a folder)")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"image folder {folder} has no class subfolders: expected {folder}/<class>/<image>")
    return classes


def scan_folder(folder: str | Path, classes: Sequence[str] | None = None, check_headers: bool = True) -> FolderScan:
    """Every image under ``folder/<class>/`` (recursively), with ``classes`` fixing the class indices
    (default: the folder's own). DatasetError naming every empty class folder and unreadable image."""
    folder = Path(folder)
    own = class_names(folder)
    classes = list(classes) if classes is not None else own
    unknown = sorted(set(own) - set(classes))
    if unknown:
        raise DatasetError(f"{folder} has classes the training set lacks: {', '.join(unknown[:MAX_LISTED])}")
    samples, skipped, empty, unreadable = [], [], [], []
    for index, name in enumerate(classes):
        if name not in own:
            continue
        found = 0
        for root, dirs, files in os.walk(folder / name, followlinks=True):  # as torchvision's ImageFolder
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for file in sorted(files):
                path = os.path.join(root, file)
                if file.startswith(".") or not file.lower().endswith(IMAGE_EXTENSIONS):  # macOS's ._name.jpg too
                    skipped.append(path)
                    continue
                if check_headers and not _readable_header(path):
                    unreadable.append(path)
                    continue
                samples.append((path, index))
                found += 1
        if not found:
            empty.append(str(folder / name))
    problems = [f"class folder without images: {p}" for p in empty[:MAX_LISTED]]
    problems += [f"not a readable image: {p}" for p in unreadable[:MAX_LISTED]]
    if problems:
        more = len(empty) + len(unreadable) - len(problems)
        tail = f" (and {more} more)" if more > 0 else ""
        raise DatasetError(f"image folder {folder}: " + "; ".join(problems) + tail)
    return FolderScan(classes, samples, skipped)


def _readable_header(path: str) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except Exception:  # PIL raises many kinds for a file it cannot identify or that is damaged
        return False


def split_by_class(samples: Sequence[tuple[str, int]], fraction: float, seed: int):
    """(train, val) of ``samples``: a seeded ``fraction`` of each class held out (at least one image of
    a class with two or more), so every class is in both where it can be."""
    by_class: dict[int, list[tuple[str, int]]] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    train, val = [], []
    for label in sorted(by_class):
        members = sorted(by_class[label])
        random.Random(f"{seed}:{label}").shuffle(members)
        held = min(len(members) - 1, max(1, round(len(members) * fraction))) if len(members) > 1 else 0
        val += members[:held]
        train += members[held:]
    return train, val


@dataclass
class FolderSplits:
    """An image folder's splits: training, val, optional test, and files skipped."""

    classes: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    test: list[tuple[str, int]] | None = None
    skipped: list[str] = field(default_factory=list)

    def describe(self) -> str:
        test = f", test {len(self.test)}" if self.test is not None else ""
        skipped = f"; skipped {len(self.skipped)} files that are not images" if self.skipped else ""
        return f"{len(self.classes)} classes: train {len(self.train)}, val {len(self.val)}{test} images{skipped}"


SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


def has_split_folders(root: str | Path) -> bool:
    """Whether ``root`` holds train/ and val/ folders (else its subfolders are the classes); DatasetError
    where it holds some split folders but not that layout (a train/ and test/ alone, a Val/), rather
    than taking the split folders for classes."""
    root = Path(root)
    if not root.is_dir():
        return False
    if (root / "train").is_dir() and (root / "val").is_dir():
        return True
    splits = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name.lower() in SPLIT_NAMES)
    if splits:
        raise DatasetError(
            f"{root} has split folders ({', '.join(splits)}) but not the layout evopop reads: train/<class>/ and "
            "val/<class>/ (and an optional test/<class>/); or one folder of class folders, split by val_fraction"
        )
    return False


def image_folder_splits(root: str | Path, val_fraction: float = 0.2, seed: int = 0, check_headers: bool = True):
    """The splits of an image folder in either layout (see the module's docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist (or is not a folder)")
    if has_split_folders(root):
        train = scan_folder(root / "train", check_headers=check_headers)
        val = scan_folder(root / "val", train.classes, check_headers)
        test = scan_folder(root / "test", train.classes, check_headers) if (root / "test").is_dir() else None
        skipped = train.skipped + val.skipped + (test.skipped if test else [])
        return FolderSplits(train.classes, train.samples, val.samples, test.samples if test else None, skipped)
    scan = scan_folder(root, check_headers=check_headers)
    train, val = split_by_class(scan.samples, val_fraction, seed)
    if not val:
        raise DatasetError(f"image folder {root}: no class has two images, so nothing is left to validate on")
    return FolderSplits(scan.classes, train, val, None, scan.skipped)


# The splits of torchvision's classification data sets: (training, validation, test), as each class names
# them (True / False: its ``train`` argument). No validation split: a seeded val_fraction of the training
# split is held out. A data set not listed is refused rather than validated on the wrong split.
TORCHVISION_SPLITS: dict[str, tuple] = {
    **{
        name: (True, None, False)
        for name in ("MNIST", "FashionMNIST", "KMNIST", "QMNIST", "CIFAR10", "CIFAR100", "USPS")
    },
    **{name: ("train", None, "test") for name in ("SVHN", "STL10", "GTSRB", "Food101", "StanfordCars", "FER2013")},
    **{name: ("train", "val", "test") for name in ("Flowers102", "DTD", "FGVCAircraft", "PCAM")},
    "OxfordIIITPet": ("trainval", None, "test"),
    "Country211": ("train", "valid", "test"),
    "ImageNet": ("train", "val", None),
    "Imagenette": ("train", "val", None),
    "Places365": ("train-standard", "val", None),
}


def torchvision_splits(name: str) -> tuple:
    """(training, validation, test) split of torchvision's data set ``name``; DatasetError if unknown."""
    if name not in TORCHVISION_SPLITS:
        known = ", ".join(sorted(TORCHVISION_SPLITS))
        raise DatasetError(
            f"torchvision data set {name!r}: evopop does not know its train / val / test splits (it knows {known}); "
            "use an image folder for it"
        )
    return TORCHVISION_SPLITS[name]


def torchvision_dataset(name: str, root: str | Path, split, transform=None) -> Dataset:
    """torchvision's data set class ``name``, its ``split`` (a split name, or True / False for the classes
    that take ``train``), over the files already in ``root`` (never downloads); DatasetError saying how to
    get them where they are missing."""
    import inspect

    import torchvision

    cls = getattr(torchvision.datasets, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Dataset)):
        raise DatasetError(f"torchvision has no data set class {name!r} (torchvision.datasets.{name})")
    params = inspect.signature(cls).parameters
    kwargs = {"transform": transform, **({"download": False} if "download" in params else {})}
    kwargs.update({"train": split} if isinstance(split, bool) else {"split": split})
    try:
        return cls(str(root), **kwargs)
    except (RuntimeError, FileNotFoundError, OSError, ValueError) as exc:
        raise DatasetError(
            f"{root} lacks the files of torchvision.datasets.{name} ({_without_download_hint(exc)}): evopop "
            f"never downloads; fetch them once where there is internet, e.g. "
            f"`python -c \"import torchvision; torchvision.datasets.{name}('{root}', download=True)\"`, "
            "and copy the folder here"
        ) from None


def _without_download_hint(exc: Exception) -> str:
    """torchvision's own message, less its "You can use download=True" (evopop says what to do instead)."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return first.split(" You can use download=True")[0].strip()[:160]


def held_out(size: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, validation) indices of ``size`` items: a seeded ``fraction`` held out (at least one)."""
    order = list(range(size))
    random.Random(f"{seed}:held-out").shuffle(order)
    held = min(size - 1, max(1, round(size * fraction)))
    return sorted(order[held:]), sorted(order[:held])


def dataset_classes(dataset: Dataset) -> int:
    """The number of classes of a torchvision classification data set (or of a part of one)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    classes = getattr(dataset, "classes", None)
    if classes:
        return len(classes)
    targets = getattr(dataset, "targets", None)
    targets = getattr(dataset, "labels", None) if targets is None else targets
    if targets is None:
        raise DatasetError(f"cannot tell how many classes {type(dataset).__name__} has: use an image folder instead")
    return int(max(int(t) for t in targets)) + 1
