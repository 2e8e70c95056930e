"""The weights a worker loads: an ancestor's file (an evopop checkpoint or a plain state dict),
a parent's state into a network of the task, the root ancestor's initial weights, and networks built
aside without touching the caller's random state. Errors say which file does not fit which network."""

from __future__ import annotations

import torch

from ...config import Config
from ...records.checkpoints import read_weights_file
from ...records.storage import read_uri
from ...synthesis import Genome, MaskedParameters, genome_from_weights, parameter_masks
from ..policy.specs import ROOT_ID, train_seed


def built_aside(task, seed: int | None = None) -> torch.nn.Module:
    """A new network of ``task`` (seeded with ``seed`` where given), built without drawing from or
    reseeding the caller's random state, on the CPU or any GPU."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        return task.build_model()


def initial_weights(config: Config, task, arch) -> dict[str, torch.Tensor]:
    """The weights the root ancestor started from: its seeded initialisation, as `_develop` seeds it,
    or the loaded ancestor (masked by its genome) when it was not trained here."""
    if config.ancestor.checkpoint:
        model = built_aside(task)
        load_ancestor(config.ancestor.checkpoint, model, arch)
        return model.state_dict()
    return built_aside(task, train_seed(config.run.seed, ROOT_ID)).state_dict()


def load_ancestor(path: str, model: torch.nn.Module, arch) -> Genome:
    """Load an ancestor checkpoint into ``model``, masked by its genome: an evopop checkpoint (weights
    + masks) or a plain state_dict (its zero weights become dead synapses, then neuron death).
    Raises ValueError saying what does not fit."""
    try:
        data = read_uri(path)
    except OSError as exc:
        raise ValueError(f"cannot read ancestor checkpoint {path}: {exc}") from None
    try:
        weights, masks = read_weights_file(data)
    except ValueError as exc:
        raise ValueError(f"ancestor checkpoint {path} {exc}") from None
    load_weights(model, weights, f"ancestor checkpoint {path}")
    if not masks:
        genome = genome_from_weights(arch, model)
    else:
        genome = Genome.from_state_dict(masks)
        try:
            genome.validate(arch)
        except ValueError as exc:
            raise ValueError(f"ancestor checkpoint {path}: {exc}") from None
    # what the genome says is dead is zero before the ancestor is measured: a neuron that died of an
    # all-zero filter still passes its norm's bias on, and the synapses it feeds are nonzero
    MaskedParameters(model, parameter_masks(arch, genome))
    return genome


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict with an error that says which checkpoint does not fit which network."""
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[:4]
        raise ValueError(
            f"{what} does not fit the task's network ({type(model).__name__}): {' '.join(first)}"
        ) from None
