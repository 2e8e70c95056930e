"""The metric interface: accumulate batches on the training device, then compute floats."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class Metric(ABC):
    """Accumulates batches of (output, target) on the training device; ``compute`` gives floats."""

    @abstractmethod
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None: ...

    @abstractmethod
    def compute(self) -> dict[str, float]: ...
