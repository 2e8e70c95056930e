"""A task is what an individual is trained and measured on: data + model factory + loss + metrics.

Built-in tasks are looked up by name; a user's own task is a factory named by import path
(``"package.module:factory"``) that returns a `Task`. Tasks know nothing of Ray or storage.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.data import Dataset

from ..metrics.base import Metric
from ..synthesis.inputs import Inputs


class Task(ABC):
    #: metric the population is selected on by default, as "<eval set>_<metric>"
    default_metric: str = "val_accuracy"
    default_direction: str = "max"

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised network (initialised from torch's global RNG)."""

    @abstractmethod
    def example_input(self) -> Inputs:
        """One input batch of size 1, used to trace the network's wiring and count MACs: a tensor, or for
        a network whose ``forward`` takes several inputs, a tuple of them (positional) or a dict of them
        (by argument name). The training and evaluation sets then yield ``(inputs, target)`` items whose
        inputs have the same form; the network is called as ``model(x)``, ``model(*x)`` or ``model(**x)``."""

    @abstractmethod
    def train_set(self) -> Dataset: ...

    @abstractmethod
    def eval_sets(self) -> Mapping[str, Dataset]:
        """Named evaluation sets; each metric becomes a record column ``<name>_<metric>``."""

    @abstractmethod
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def metrics(self) -> Metric:
        """A fresh metric accumulator for one pass over one evaluation set."""

    def eval_set_names(self) -> list[str]:
        """Names of the evaluation sets; override to avoid building the data just to name it."""
        return list(self.eval_sets())

    def metric_names(self) -> list[str]:
        """Names of the values ``metrics().compute()`` returns, fixing the record schema up front.

        The evaluation loop always adds ``loss`` (the mean of ``self.loss`` over the set)."""
        return []

    def network(self) -> dict | None:
        """How to build the network without the task (its data, its code): ``{"model": "torchvision:NAME",
        "num_classes": n, "model_args": {...}}`` for a model by name (`evopop.models.by_name`); None where
        only the task can build it. Recorded with the run: `evopop export` then needs neither."""
        return None

    def head_parameters(self) -> list[str]:
        """The state-dict keys of the output layer that the data sizes (a classifier's head): an ancestor
        file whose head was sized for other classes loads without them, and they start fresh."""
        return []

    def validate(self) -> None:  # noqa: B027 (optional hook: most tasks have nothing to check)
        """Check the task's inputs (files, sizes) and raise one clear error before any training."""
