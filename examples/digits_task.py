"""A real data set without a download: scikit-learn's handwritten digits (UCI ML, 1,797 8x8 images,
shipped inside the scikit-learn package), classified by the quickstart's small CNN.

    pip install scikit-learn
    evopop run configs/efficient.yaml task.name=digits_task:digits "task.paths=[examples]"

The images are split once, by a seeded permutation, into train / val / test (1,000 / 397 / 400):
selection reads ``val``, and ``test`` is never seen by training or selection, so it is the number
to compare.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from evopop.models.small import SmallConvNet
from evopop.tasks.classification import ClassificationTask

TRAIN, VAL = 1000, 397  # the rest (400) is the test set


class DigitsTask(ClassificationTask):
    def __init__(self, widths=(32, 64), hidden: int = 128, split_seed: int = 0):
        from sklearn.datasets import load_digits  # a task dependency, not evopop's

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # 0..16 -> 0..1
        labels = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
        parts = order[:TRAIN], order[TRAIN : TRAIN + VAL], order[TRAIN + VAL :]
        train = images[parts[0]]
        images = (images - train.mean()) / train.std()  # the training images' statistics only
        self.train, self.val, self.test = (TensorDataset(images[p], labels[p]) for p in parts)
        self.widths, self.hidden = tuple(widths), hidden

    def build_model(self) -> nn.Module:
        return SmallConvNet(1, 10, self.widths, self.hidden, pooled=2)

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, 1, 8, 8)

    def train_set(self):
        return self.train

    def eval_sets(self):
        return {"val": self.val, "test": self.test}

    def eval_set_names(self) -> list[str]:
        return ["val", "test"]


def digits(**kwargs) -> DigitsTask:
    return DigitsTask(**kwargs)
