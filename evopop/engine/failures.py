"""Whose fault a failure is: the individual's own, or the infrastructure's it ran on.

The two are treated differently (issue 12). An individual's own failure (a diverged loss, a
network that does not fit in its share of the GPU, a broken user model) is a result: it is
recorded failed and never run again, since running it again gives the same failure. A failure
of the infrastructure (a trainer process that died, a lost node, a hang past
``resources.timeout_s``, a storage error, a broken CUDA context, an out-of-memory caused by a
neighbour on a shared GPU) says nothing about the individual: the executor runs it again on
another trainer up to ``resources.max_retries`` times, and ``evopop resume`` runs it again later.

A CUDA error other than out-of-memory leaves the process's CUDA context unusable (every later
kernel fails), so the trainer that met it is replaced, whoever's fault it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..records.locks import RunFencedError

INDIVIDUAL, INFRASTRUCTURE = "individual", "infrastructure"

# how CUDA errors read (torch raises most as RuntimeError, or AcceleratorError since torch 2.8)
_CUDA_MARKERS = ("cuda error", "cublas_status", "cudnn_status", "cudnn error", "cuda driver", "nccl", "no cuda gpus")
# CUDA errors that are out-of-memory by another name: the context survives them
_CUDA_OUT_OF_MEMORY = ("out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed")
_ALLOCATION = re.compile(r"tried to allocate ([\d.]+) ?([kmgt]?i?b)", re.IGNORECASE)
# what a process holds on its GPU outside PyTorch's allocator (CUDA context, kernels, fragmentation)
CUDA_OVERHEAD = 2**30
_UNITS = {"b": 1, "kib": 2**10, "kb": 2**10, "mib": 2**20, "mb": 2**20, "gib": 2**30, "gb": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class Failure:
    """Whose fault (``cause``: INDIVIDUAL | INFRASTRUCTURE), and whether the trainer must be replaced."""

    cause: str
    replace_trainer: bool = False

    @property
    def retried(self) -> bool:
        return self.cause == INFRASTRUCTURE


OWN = Failure(INDIVIDUAL)


@dataclass(frozen=True)
class GpuShare:
    """This trainer's GPU memory when it failed: the most it had reserved (bytes), the GPU's total,
    and the fraction of the GPU it was given (``resources.gpus_per_trainer``, at most 1)."""

    peak_reserved: int
    total: int
    fraction: float

    @property
    def share(self) -> float:
        return min(1.0, self.fraction) * self.total


class StorageError(OSError):
    """Writing the individual's checkpoint failed: the storage's fault, not the individual's."""


class RunStopped(RuntimeError):
    """The run stopped with its records intact; ``evopop resume`` goes on from them."""


def classify(exc: BaseException, gpu: GpuShare | None = None) -> Failure:
    """Whose fault ``exc``, raised while developing an individual, is.

    - `StorageError` (the checkpoint could not be written): the infrastructure's.
    - CUDA out of memory (or a CUDA library's failed allocation): the individual's own when it
      asked for more than its share of the GPU (what it had reserved at its peak, plus the
      allocation that failed, plus `CUDA_OVERHEAD`, against ``gpus_per_trainer`` x the GPU's
      memory); a neighbour's (the infrastructure's) when it stayed within its share of a shared
      GPU. On a GPU of its own, or without GPU figures (``gpu`` None), its own.
    - Any other CUDA error: the trainer is replaced; the infrastructure's, unless it is a device-side
      assert (the program's own bug).
    - Everything else: the individual's own.
    """
    if isinstance(exc, (StorageError, RunFencedError)):  # fenced: the run is another driver's now
        return Failure(INFRASTRUCTURE)
    text = str(exc).lower()
    cuda = _is_cuda_error(exc, text)
    if isinstance(exc, torch.cuda.OutOfMemoryError) or cuda and any(m in text for m in _CUDA_OUT_OF_MEMORY):
        return _out_of_memory(exc, gpu)
    if cuda:
        if "device-side assert" in text:
            return Failure(INDIVIDUAL, replace_trainer=True)
        return Failure(INFRASTRUCTURE, replace_trainer=True)
    return OWN


def _out_of_memory(exc: BaseException, gpu: GpuShare | None) -> Failure:
    """A neighbour's (the infrastructure's) only on a shared GPU, and only if this trainer stayed
    within its share; its own otherwise (on a GPU of its own, nobody else is there to blame)."""
    if gpu is None or gpu.total <= 0 or gpu.fraction >= 1:
        return OWN
    within_share = gpu.peak_reserved + requested_bytes(str(exc)) + CUDA_OVERHEAD <= gpu.share
    return Failure(INFRASTRUCTURE) if within_share else OWN


def requested_bytes(message: str) -> int:
    """The allocation an out-of-memory message says failed ("Tried to allocate 2.00 GiB"); 0 if none."""
    match = _ALLOCATION.search(message)
    if not match:
        return 0
    return int(float(match.group(1)) * _UNITS.get(match.group(2).lower(), 1))


def _is_cuda_error(exc: BaseException, text: str) -> bool:
    accelerator_error = getattr(torch, "AcceleratorError", None)  # CUDA errors since torch 2.8
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return isinstance(exc, RuntimeError) and any(marker in text for marker in _CUDA_MARKERS)


def gpu_share(device: torch.device, fraction: float) -> GpuShare | None:
    """This process's GPU memory figures on ``device`` (None off CUDA, or if CUDA cannot say)."""
    if device.type != "cuda":
        return None
    try:
        _, total = torch.cuda.mem_get_info(device)
        return GpuShare(torch.cuda.max_memory_reserved(device), total, fraction)
    except Exception:  # a broken context cannot say: the error is classified without figures
        return None
