"""The functional probe: a trained network's outputs on one fixed held-out batch.

Siblings' functional diversity compares these outputs (`evopop.analysis.diversity`). The trainer
computes them right after evaluation, on its own device, and stores them in the individual's genome
file, so the driver never runs a network (8 full-width saliency offspring are ~8.9 TMAC a generation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import default_collate

from ..synthesis.inputs import Inputs, batch_size, call, normalised, split, to_device


@dataclass(frozen=True)
class ProbeBatch:
    """The first ``batch_size(inputs)`` items of evaluation set ``eval_set``; ``requested``: the size
    asked for (``diversity.functional_batch``; the set may hold fewer)."""

    inputs: Inputs
    eval_set: str
    requested: int

    def describe(self) -> dict:
        """What the checkpoint records about the batch its probe outputs were computed on."""
        return {"eval_set": self.eval_set, "size": batch_size(self.inputs), "requested": self.requested}


def held_out_batch(task, size: int = 32, eval_set: str | None = None) -> ProbeBatch:
    """The first ``size`` inputs of the task's first (or named) evaluation set, batched as a data loader
    batches them: a fixed batch (the same in every trainer and in the driver)."""
    sets = task.eval_sets()
    name = eval_set or next(iter(sets))
    dataset = sets[name]
    n = min(int(size), len(dataset))
    return ProbeBatch(normalised(default_collate([dataset[i][0] for i in range(n)])), name, int(size))


@torch.no_grad()
def probe_outputs(model: torch.nn.Module, inputs: Inputs, step: int | None = None) -> torch.Tensor:
    """``model``'s outputs on ``inputs`` (eval mode, on the model's device, full precision), as float32
    on CPU; ``step`` inputs at a time (the evaluation's batch size: no more memory than it)."""
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    chunks = split(inputs, step or batch_size(inputs) or 1)
    return torch.cat([call(model, to_device(chunk, device)).float().cpu() for chunk in chunks])
