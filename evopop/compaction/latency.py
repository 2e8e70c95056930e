"""Measured latency: the median time of a network's forward pass at a given batch size.

Absolute times depend on the machine and on what else runs on it; compare latencies measured by the
same trainer (the ancestor's and its offspring's), or use ratios measured in one process.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

WARMUP = 2  # passes before timing: lazy initialisation, allocator and cache warm-up


@torch.inference_mode()
def latency_ms(
    module: nn.Module, example_input: torch.Tensor, batch: int, repeats: int = 10, device: str | torch.device = "cpu"
) -> float:
    """Median milliseconds of ``module``'s forward pass on a batch of ``batch`` copies of the example's shape."""
    device = torch.device(device)
    shape = (batch, *example_input.shape[1:])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=example_input.dtype).to(device)
    module = module.to(device).eval()
    times = []
    for i in range(WARMUP + repeats):
        _sync(device)
        start = time.perf_counter()
        module(x)
        _sync(device)
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
