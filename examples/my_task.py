"""Bring your own network and data: a task factory that evopop loads by import path.

    evopop run examples/my_task.yaml          # from the repository root

The config names the factory as ``task.name: "my_task:mlp_on_blobs"`` (this directory must be on
PYTHONPATH, or the module installed; ``ray job submit --working-dir .`` ships it to the cluster).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from evopop.tasks.base import Metric, Task


class Accuracy(Metric):
    def __init__(self):
        self.correct, self.total = 0, 0

    def update(self, output, target):
        self.correct += int((output.argmax(1) == target).sum())
        self.total += target.numel()

    def compute(self):
        return {"accuracy": self.correct / max(1, self.total)}


class BlobsTask(Task):
    """Gaussian blobs in 20 dimensions, classified by a 3-layer MLP."""

    default_metric = "val_accuracy"

    def __init__(self, classes: int = 5, hidden: int = 64, n: int = 2000, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        centres = torch.randn(classes, 20, generator=g) * 2
        labels = torch.randint(classes, (2 * n,), generator=g)
        points = centres[labels] + torch.randn(2 * n, 20, generator=g) * 3.0
        self.classes, self.hidden = classes, hidden
        self.train = TensorDataset(points[:n], labels[:n])
        self.val = TensorDataset(points[n:], labels[n:])

    def build_model(self):
        return nn.Sequential(
            nn.Linear(20, self.hidden),
            nn.ReLU(),
            nn.Linear(self.hidden, self.hidden),
            nn.ReLU(),
            nn.Linear(self.hidden, self.classes),
        )

    def example_input(self):
        return torch.zeros(1, 20)

    def train_set(self):
        return self.train

    def eval_sets(self):
        return {"val": self.val}

    def loss(self, output, target):
        return F.cross_entropy(output, target)

    def metrics(self):
        return Accuracy()

    def metric_names(self):
        return ["accuracy"]


def mlp_on_blobs(**kwargs) -> BlobsTask:
    return BlobsTask(**kwargs)
