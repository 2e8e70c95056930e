"""Inputs to run a network on, shaped like a task's example input."""

from __future__ import annotations

import torch


def input_batch(example_input: torch.Tensor, batch: int) -> torch.Tensor:
    """``batch`` inputs of the example's shape: seeded random ones for float inputs (an all-zero example,
    as tasks often give, would exercise no weight of the first layer, and speed may depend on values
    through ReLU sparsity), copies of the example for integer ones (token ids, indices)."""
    shape = (batch, *example_input.shape[1:])
    if example_input.is_floating_point():
        return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(example_input.dtype)
    return example_input[:1].expand(shape).clone()
