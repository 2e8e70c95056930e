"""Measured latency: the fastest of several forward passes of a network at a given batch size.

The fastest, not the median: trainers share their machine (another trainer trains beside them), and
interference only ever adds time, so the minimum is the figure that repeats from run to run.
Absolute times still depend on the machine: compare latencies measured in one run, or use ratios.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from ..synthesis.inputs import Inputs, call, to_device
from .inputs import input_batch

WARMUP = 2  # passes before timing: lazy initialisation, allocator and cache warm-up


@torch.inference_mode()
def latency_ms(
    module: nn.Module,
    example_input: Inputs,
    batch: int,
    repeats: int = 10,
    device: str | torch.device = "cpu",
    seconds: float = math.inf,
) -> float:
    """Milliseconds of ``module``'s fastest forward pass (of ``repeats``) on a batch of ``batch`` inputs.

    Timing stops early once ``seconds`` have been spent (after at least one timed pass): a big network
    on one CPU thread must not cost its trainer minutes.
    """
    device = torch.device(device)
    x = to_device(input_batch(example_input, batch), device)
    module = module.to(device).eval()
    times: list[float] = []
    started = time.perf_counter()
    for i in range(WARMUP + repeats):
        _sync(device)
        start = time.perf_counter()
        call(module, x)
        _sync(device)
        if i >= WARMUP or time.perf_counter() - started > seconds:
            times.append(time.perf_counter() - start)
        if times and time.perf_counter() - started > seconds:
            break
    return min(times) * 1000.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
