"""Develop one individual: synthesize its genome, train it, measure it, checkpoint it.

Plain Python (no Ray): a trainer actor holds one `Developer` and calls `develop` per individual,
and tests can call it directly. The individual's own failures (diverged loss, out of memory, a
broken user model) come back as ``status="failed"`` outcomes; only a dead process is retried.
"""
from __future__ import annotations

import time
import traceback
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..config import Config
from ..records.run import RunRecords, is_evopop_checkpoint, read_torch_bytes
from ..records.storage import read_uri
from ..synthesis import (
    Environment,
    Genome,
    count,
    genome_from_weights,
    matched_genome,
    parameter_masks,
    synaptic_weights,
    synthesize,
    trace_architecture,
)
from ..synthesis.baselines import KINDS as BASELINE_KINDS
from ..tasks.registry import build_task
from ..training.loop import Recipe, TrainResult, evaluate, train_and_evaluate


@dataclass(frozen=True)
class Spec:
    """Everything that determines an individual; a pure function of the run seed and its lineage."""

    generation: int
    individual_id: str
    parent_id: str | None
    lineage: tuple[str, ...]
    offspring_index: int | None
    seed: int | None  # synthesis seed; None for the root ancestor
    train_seed: int
    environment: Environment | None
    epochs: int
    kind: str = "offspring"  # "ancestor" | "offspring" | "magnitude" | "random" (baselines)
    match_id: str | None = None  # baselines: the offspring whose per-layer synapse counts they match


def recipe_of(config: Config, epochs: int) -> Recipe:
    t = config.train
    return Recipe(
        epochs=epochs, batch_size=t.batch_size, optimizer=t.optimizer, lr=t.lr, momentum=t.momentum,
        weight_decay=t.weight_decay, schedule=t.schedule, step_size=t.step_size, gamma=t.gamma,
        warmup_steps=t.warmup_steps, mixed_precision=t.mixed_precision,
        eval_batch_size=t.eval_batch_size, num_workers=t.num_workers,
    )  # fmt: skip


def to_numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Parent weights for the object store: NumPy arrays are shared zero-copy by Ray, tensors not."""
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def from_numpy(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():  # object-store arrays are read-only; we never write to them
        warnings.simplefilter("ignore", UserWarning)
        return {k: torch.from_numpy(v) for k, v in arrays.items()}


class Developer:
    def __init__(self, config: Config, run_dir: str, device: str | None = None):
        self.config = config
        self.task = build_task(config.task.name, config.task.args)
        self.arch = trace_architecture(self.task.build_model(), self.task.example_input())
        self.records = RunRecords(run_dir)
        wants_gpu = config.resources.gpus_per_trainer > 0 and torch.cuda.is_available()
        self.device = torch.device(device or ("cuda" if wants_gpu else "cpu"))

    def develop(self, spec: Spec, parent: dict | None) -> dict:
        """Outcome of one individual: measurements on success, the error on failure."""
        start = time.perf_counter()
        try:
            outcome = self._develop(spec, parent)
        except Exception as exc:  # the individual's own failure: record it, the generation goes on
            outcome = {
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"[-4000:],
            }
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        outcome["individual_id"] = spec.individual_id
        outcome["wall_seconds"] = time.perf_counter() - start
        return outcome

    # -- the steps ---------------------------------------------------------------------------
    def _develop(self, spec: Spec, parent: dict | None) -> dict:
        torch.manual_seed(spec.train_seed)
        model = self.task.build_model()
        if parent is None:
            genome, trained = self._ancestor(model)
        else:
            genome, trained = self._offspring(model, spec, parent), False
        if trained:  # a loaded ancestor is measured as it is
            model.to(self.device)
            result = TrainResult(evaluate(model, self.task, recipe_of(self.config, 1), self.device), 0.0, 0.0,
                                 float("nan"), 0, float("nan"))  # fmt: skip
        else:
            masks = parameter_masks(self.arch, genome)
            recipe = recipe_of(self.config, spec.epochs)
            result = train_and_evaluate(model, self.task, recipe, spec.train_seed, masks, self.device)
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        checkpoint = self.records.write_checkpoint(
            spec.individual_id, weights, genome.state_dict(),
            {"generation": spec.generation, "parent_id": spec.parent_id, "lineage": list(spec.lineage)},
        )  # fmt: skip
        counts = count(self.arch, genome)
        return {
            "status": "ok",
            "error": None,
            "metrics": result.metrics,
            "synapses": counts.synapses,
            "neurons": counts.neurons,
            "params": counts.params,
            "macs": counts.macs,
            "dense_macs": counts.dense_macs,
            "layers": [
                {"layer": l.name, "kind": l.kind, "synapses": l.synapses, "dense_synapses": l.dense_synapses,
                 "neurons": l.neurons, "dense_neurons": l.dense_neurons, "macs": l.macs,
                 "living_fraction": l.living_fraction}
                for l in counts.layers
            ],  # fmt: skip
            "train_seconds": result.train_seconds,
            "samples_per_second": result.samples_per_second,
            "mask_digest": genome.digest(),
            "checkpoint": checkpoint,
        }

    def _ancestor(self, model) -> tuple[Genome, bool]:
        """Generation 1: a loaded checkpoint (already trained), or a fresh network to train."""
        path = self.config.ancestor.checkpoint
        if path is None:
            return Genome.full(self.arch), False
        return load_ancestor(path, model, self.arch), True

    def _offspring(self, model, spec: Spec, parent: dict) -> Genome:
        parent_weights = from_numpy(parent["weights"])
        parent_genome = Genome.from_state_dict(from_numpy(parent["masks"]))
        if self.config.evolution.init == "inherit":
            load_weights(model, parent_weights, f"parent {spec.parent_id}")
            weights = synaptic_weights(model, self.arch)
        else:  # the fresh initialisation (seeded by train_seed) is trained on the mask
            parent_model = self.task.build_model()
            load_weights(parent_model, parent_weights, f"parent {spec.parent_id}")
            weights = synaptic_weights(parent_model, self.arch)
        if spec.kind in BASELINE_KINDS:
            match = Genome.from_state_dict(self.records.read_checkpoint(spec.match_id)["masks"])
            counts = {name: int(torch.count_nonzero(mask)) for name, mask in match.masks.items()}
            return matched_genome(spec.kind, self.arch, weights, parent_genome, counts, spec.seed or 0)
        return synthesize(
            self.arch, weights, parent_genome, spec.environment, spec.seed, self.config.evolution.normalizer
        )


def load_ancestor(path: str, model: torch.nn.Module, arch) -> Genome:
    """Load an ancestor checkpoint into ``model``: an evopop checkpoint (weights + masks) or a plain
    state_dict (its zero weights become dead synapses). Raises ValueError saying what does not fit."""
    try:
        data = read_uri(path)
    except OSError as exc:
        raise ValueError(f"cannot read ancestor checkpoint {path}: {exc}") from None
    try:
        payload = read_torch_bytes(data)
    except ValueError as exc:
        raise ValueError(f"ancestor checkpoint {path} is {exc}") from None
    if is_evopop_checkpoint(payload):
        weights, masks = payload["weights"], payload["masks"]
    else:  # a plain state_dict
        weights, masks = payload, None
    if not isinstance(weights, dict):
        raise ValueError(f"ancestor checkpoint {path} holds a {type(weights).__name__}, not a state_dict")
    load_weights(model, weights, f"ancestor checkpoint {path}")
    if not masks:
        return genome_from_weights(arch, model)
    genome = Genome.from_state_dict(masks)
    try:
        genome.validate(arch)
    except ValueError as exc:
        raise ValueError(f"ancestor checkpoint {path}: {exc}") from None
    return genome


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict with an error that says which checkpoint does not fit which network."""
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[:4]
        raise ValueError(f"{what} does not fit the task's network ({type(model).__name__}): {' '.join(first)}") from None
