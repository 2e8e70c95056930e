"""Measured latency: the fastest of several forward passes of a network at a given batch size.

The fastest, not the median: trainers share their machine (another trainer trains beside them), and
interference only ever adds time, so the minimum is the figure that repeats from run to run.
Absolute times still depend on the machine: compare latencies measured in one run, or use ratios.
"""

from __future__ import annotations

import time

import torch
from torch import nn

WARMUP = 2  # passes before timing: lazy initialisation, allocator and cache warm-up


@torch.inference_mode()
def latency_ms(
    module: nn.Module, example_input: torch.Tensor, batch: int, repeats: int = 10, device: str | torch.device = "cpu"
) -> float:
    """Milliseconds of ``module``'s fastest forward pass (of ``repeats``) on a random batch of ``batch``."""
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
    return min(times) * 1000.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
