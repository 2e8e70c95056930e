"""Inputs to run a network on, shaped like a task's example input (`evopop.synthesis.inputs`)."""

from __future__ import annotations

import torch

from ..synthesis.inputs import Inputs, map_tensors


def input_batch(example_input: Inputs, batch: int) -> Inputs:
    """``batch`` inputs of the example's shapes: seeded random ones for float inputs (an all-zero example,
    as tasks often give, would exercise no weight of the first layer, and speed may depend on values
    through ReLU sparsity), copies of the example for integer and boolean ones (token ids, masks)."""
    generator = torch.Generator().manual_seed(0)

    def one(example: torch.Tensor) -> torch.Tensor:
        shape = (batch, *example.shape[1:])
        if example.is_floating_point():
            return torch.randn(shape, generator=generator).to(example.dtype)
        return example[:1].expand(shape).clone()

    return map_tensors(example_input, one)
