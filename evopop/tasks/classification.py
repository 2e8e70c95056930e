"""Image classification on the built-in procedural shapes: the engine's quickstart task."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..data.shapes import ProceduralShapes
from ..models.small import SmallConvNet
from .base import Metric, Task


class Accuracy(Metric):
    def __init__(self):
        self.correct = 0
        self.total = 0

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        self.correct += int((output.argmax(dim=1) == target).sum())
        self.total += target.numel()

    def compute(self) -> dict[str, float]:
        return {"accuracy": self.correct / self.total if self.total else float("nan")}


class ClassificationTask(Task):
    """What every classifier shares: cross-entropy on logits, judged by accuracy (``val_accuracy``).
    A subclass supplies the network, the example input and the data."""

    default_metric = "val_accuracy"
    default_direction = "max"

    def loss(self, output, target):
        return F.cross_entropy(output, target)

    def metrics(self) -> Metric:
        return Accuracy()

    def metric_names(self) -> list[str]:
        return ["accuracy"]


class ShapesTask(ClassificationTask):
    def __init__(
        self,
        train_size: int = 3000,
        val_size: int = 1000,
        image_size: int = 32,
        num_classes: int = 6,
        widths=(16, 32, 64),
        hidden: int = 128,
        seed: int = 0,
        test_size: int = 0,
    ):
        for name, value in (("train_size", train_size), ("val_size", val_size), ("image_size", image_size)):
            if int(value) < 1:
                raise ValueError(f"task.args.{name} must be >= 1, got {value}")
        if int(test_size) < 0:
            raise ValueError(f"task.args.test_size must be >= 0, got {test_size}")
        self.train_size, self.val_size, self.image_size = train_size, val_size, image_size
        self.test_size = int(test_size)
        self.num_classes, self.widths, self.hidden, self.seed = num_classes, tuple(widths), hidden, seed
        self._train = self._val = self._test = None

    def build_model(self) -> nn.Module:
        return SmallConvNet(3, self.num_classes, self.widths, self.hidden)

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, 3, self.image_size, self.image_size)

    def train_set(self):
        if self._train is None:
            self._train = ProceduralShapes(self.train_size, self.image_size, self.seed, self.num_classes)
        return self._train

    def eval_sets(self):
        if self._val is None:  # a different seed: no overlap with the training images
            self._val = ProceduralShapes(self.val_size, self.image_size, self.seed + 7919, self.num_classes)
        if self._test is None and self.test_size:  # never read by training or selection
            self._test = ProceduralShapes(self.test_size, self.image_size, self.seed + 15485, self.num_classes)
        return {"val": self._val, **({"test": self._test} if self.test_size else {})}

    def eval_set_names(self) -> list[str]:
        return ["val", "test"] if self.test_size else ["val"]


def shapes(**kwargs) -> ShapesTask:
    return ShapesTask(**kwargs)
