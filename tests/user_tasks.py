"""A user's own task, loaded by import path ("user_tasks:regression") in the end-to-end tests."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from evopop.tasks.base import Metric, Task


class MeanError(Metric):
    def __init__(self):
        self.total, self.n = 0.0, 0

    def update(self, output, target):
        self.total += float((output - target).abs().sum())
        self.n += target.numel()

    def compute(self):
        return {"mae": self.total / max(1, self.n)}


class Regression(Task):
    default_metric = "holdout_mae"
    default_direction = "min"

    def __init__(self, features: int = 8, hidden: int = 16, n: int = 256):
        g = torch.Generator().manual_seed(0)
        self.features, self.hidden = features, hidden
        x = torch.randn(2 * n, features, generator=g)
        y = x[:, :2].sum(dim=1, keepdim=True) + 0.1 * torch.randn(2 * n, 1, generator=g)
        self._train, self._holdout = TensorDataset(x[:n], y[:n]), TensorDataset(x[n:], y[n:])

    def build_model(self):
        return nn.Sequential(nn.Linear(self.features, self.hidden), nn.Tanh(), nn.Linear(self.hidden, 1))

    def example_input(self):
        return torch.zeros(1, self.features)

    def train_set(self):
        return self._train

    def eval_sets(self):
        return {"holdout": self._holdout}

    def loss(self, output, target):
        return F.mse_loss(output, target)

    def metrics(self):
        return MeanError()

    def metric_names(self):
        return ["mae"]


def regression(**kwargs) -> Regression:
    return Regression(**kwargs)
