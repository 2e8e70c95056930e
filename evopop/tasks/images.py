"""``task.name: images``: image classification on the user's own images, with a model by name.

    task:
      name: images
      args:
        root: /data/flowers           # root/<class>/... (split by val_fraction), or root/{train,val[,test]}/<class>/...
        model: torchvision:resnet18   # torchvision:NAME, timm:NAME, or package.module:callable
        image_size: 160

The number of classes comes from the data, and the model is built with that many outputs. Metrics:
top-1 (``accuracy``) and top-5 (``top5``) accuracy, and the loss, on ``val`` (and ``test`` where the
folder has one: never read by selection). ``dataset: CIFAR10`` (any torchvision classification data
set class) reads that data set's files from ``root`` instead; nothing downloads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from ..data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetError,
    ImageFiles,
    ImageTransforms,
    class_names,
    dataset_classes,
    has_split_folders,
    held_out,
    image_folder_splits,
    torchvision_dataset,
    torchvision_splits,
)
from ..metrics.base import Metric
from ..models.by_name import head_parameters, model_by_name
from .classification import ClassificationTask


class TopKAccuracy(Metric):
    """Top-1 (``accuracy``) and top-``k`` accuracy of logits (N, classes) against class indices."""

    def __init__(self, k: int = 5):
        self.k, self.top1, self.topk, self.total = k, 0, 0, 0

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        k = min(self.k, output.shape[1])
        best = output.topk(k, dim=1).indices
        hits = best == target.view(-1, 1)
        self.top1 += int(hits[:, 0].sum())
        self.topk += int(hits.any(dim=1).sum())
        self.total += target.numel()

    def compute(self) -> dict[str, float]:
        if not self.total:
            return {"accuracy": float("nan"), f"top{self.k}": float("nan")}
        return {"accuracy": self.top1 / self.total, f"top{self.k}": self.topk / self.total}


class ImagesTask(ClassificationTask):
    def __init__(
        self,
        root: str,
        model: str = "torchvision:resnet18",
        model_args: Mapping[str, Any] | None = None,
        dataset: str | None = None,
        image_size: int = 224,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        flip: bool = True,
        check_images: bool = True,
    ):
        if int(image_size) < 8:
            raise ValueError(f"task.args.image_size must be >= 8, got {image_size}")
        if not 0 < float(val_fraction) < 1:
            raise ValueError(f"task.args.val_fraction must be in (0, 1), got {val_fraction}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError("task.args.mean and std: three values each (RGB), std > 0")
        self.root, self.model, self.model_args, self.dataset = str(root), model, dict(model_args or {}), dataset
        self.image_size, self.val_fraction, self.split_seed = int(image_size), float(val_fraction), int(split_seed)
        self.check_images = bool(check_images)
        self.transforms = ImageTransforms(self.image_size, tuple(mean), tuple(std), tuple(crop_scale), flip=flip)
        self._splits = None
        self._sets: dict[str, Dataset] | None = None
        self._num_classes: int | None = None

    # -- the network -------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """From the data: the class folders (their names only; nothing is read), or the data set's."""
        if self._num_classes is None:
            if self.dataset is not None:
                self._num_classes = dataset_classes(self._data_sets()["train"])
            else:
                with _naming_the_root():
                    folder = os.path.join(self.root, "train") if has_split_folders(self.root) else self.root
                    self._num_classes = len(class_names(folder))
        return self._num_classes

    def build_model(self) -> torch.nn.Module:
        return model_by_name(self.model, self.num_classes, **self.model_args)

    def network(self) -> dict:
        return {"model": self.model, "num_classes": self.num_classes, "model_args": self.model_args}

    def head_parameters(self) -> list[str]:
        """The state-dict keys of the classifier head, sized for this data's classes."""
        return head_parameters(self.model, self.num_classes, **self.model_args)

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, 3, self.image_size, self.image_size)

    # -- the data ----------------------------------------------------------------------------------
    def validate(self) -> None:
        """Every file check (missing root, empty class folders, unreadable images) before training: on
        the driver, once (trainers read the folder's names only)."""
        self._sets = None
        sets = self._data_sets(check_headers=self.check_images)
        if self._splits is not None:
            print(f"images: {self.root}: {self._splits.describe()}", flush=True)
        else:
            print(f"images: torchvision {self.dataset} at {self.root}: {self._describe(sets)}", flush=True)

    def train_set(self) -> Dataset:
        return self._data_sets()["train"]

    def eval_sets(self) -> dict[str, Dataset]:
        return {name: data for name, data in self._data_sets().items() if name != "train"}

    def eval_set_names(self) -> list[str]:
        if self.dataset is not None:
            return ["val", "test"] if torchvision_splits(self.dataset)[2] is not None else ["val"]
        if has_split_folders(self.root) and os.path.isdir(os.path.join(self.root, "test")):
            return ["val", "test"]
        return ["val"]

    def metrics(self) -> Metric:
        return TopKAccuracy(5)

    def metric_names(self) -> list[str]:
        return ["accuracy", "top5"]

    def _data_sets(self, check_headers: bool = False) -> dict[str, Dataset]:
        if self._sets is None:
            with _naming_the_root():
                self._sets = self._build_sets(check_headers)
        return self._sets

    def _build_sets(self, check_headers: bool) -> dict[str, Dataset]:
        train, evaluate = self.transforms.train(), self.transforms.eval()
        if self.dataset is not None:
            return self._torchvision_sets(train, evaluate)
        splits = image_folder_splits(self.root, self.val_fraction, self.split_seed, check_headers)
        self._splits = splits
        sets = {
            "train": ImageFiles(splits.train, splits.classes, train),
            "val": ImageFiles(splits.val, splits.classes, evaluate),
        }
        if splits.test is not None:
            sets["test"] = ImageFiles(splits.test, splits.classes, evaluate)
        return sets

    def _torchvision_sets(self, train, evaluate) -> dict[str, Dataset]:
        """The data set's own validation split, else a seeded val_fraction held out of its training split;
        its test split as ``test`` (never read by selection)."""
        train_split, val_split, test_split = torchvision_splits(self.dataset)
        training = torchvision_dataset(self.dataset, self.root, train_split, train)
        if val_split is None:
            kept, held = held_out(len(training), self.val_fraction, self.split_seed)
            viewed = torchvision_dataset(self.dataset, self.root, train_split, evaluate)
            sets = {"train": Subset(training, kept), "val": Subset(viewed, held)}
        else:
            sets = {"train": training, "val": torchvision_dataset(self.dataset, self.root, val_split, evaluate)}
        if test_split is not None:
            sets["test"] = torchvision_dataset(self.dataset, self.root, test_split, evaluate)
        return sets

    @staticmethod
    def _describe(sets: Mapping[str, Dataset]) -> str:
        return ", ".join(f"{name} {len(data)}" for name, data in sets.items()) + " images"


@contextmanager
def _naming_the_root():
    """A data set's error, as the config field it comes from."""
    try:
        yield
    except DatasetError as exc:
        raise DatasetError(f"task.args.root: {exc}") from None


def images(**kwargs) -> ImagesTask:
    return ImagesTask(**kwargs)
