"""The weights a worker loads: an ancestor's file (an evopop checkpoint or a plain state dict),
a parent's state into a network of the task, the root ancestor's initial weights, and networks built
aside without touching the caller's random state. Errors say which file does not fit which network."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    if config.ancestor.checkpoint:  # seeded as the root's: a head left fresh starts where the root's did
        model = built_aside(task, train_seed(config.run.seed, ROOT_ID))
        load_ancestor(config.ancestor.checkpoint, model, arch, task.head_parameters())
        return model.state_dict()
    return built_aside(task, train_seed(config.run.seed, ROOT_ID)).state_dict()


@dataclass(frozen=True)
class LoadedAncestor:
    """An ancestor file loaded into a network: its genome, and the head parameters left fresh (the file's
    head was sized for other classes), which the ancestor then trains for (``ancestor.epochs``)."""

    genome: Genome
    loaded: int  # tensors loaded from the file
    total: int  # tensors of the network
    fresh: tuple[str, ...] = ()
    classes: tuple[int, int] | None = None  # (in the file, here) where the head is fresh

    def describe(self) -> str:
        text = f"loaded {self.loaded} of the network's {self.total} tensors"
        if self.fresh:
            sizes = f": {self.classes[0]} classes in the file, {self.classes[1]} here" if self.classes else ""
            text += f"; the head starts fresh ({', '.join(self.fresh)}{sizes}) and trains with the ancestor"
        return text


def load_ancestor(path: str, model: torch.nn.Module, arch, head: Sequence[str] = ()) -> LoadedAncestor:
    """Load an ancestor file into ``model``, masked by its genome: an evopop checkpoint (weights + masks)
    or a state dict however saved (`read_weights_file`; its zero weights become dead synapses, then
    neuron death). Where only ``head`` parameters differ from the network's (a 1000-class head against
    a folder of 10 classes), the rest loads and the head stays fresh. ValueError saying what does not fit."""
    try:
        data = read_uri(path)
    except OSError as exc:
        raise ValueError(f"cannot read ancestor checkpoint {path}: {exc}") from None
    try:
        weights, masks = read_weights_file(data)
    except ValueError as exc:
        raise ValueError(f"ancestor checkpoint {path} {exc}") from None
    own = model.state_dict()
    weights = _named_as(weights, own)
    # a batch norm counts its own steps: files saved before torch kept the count lack it, and need not have it
    counts = {k for k in own if k.endswith("num_batches_tracked") and k not in weights}
    differ = [k for k in own if k not in counts and (k not in weights or weights[k].shape != own[k].shape)]
    fresh = tuple(differ) if differ and set(differ) <= set(head) and set(weights) <= set(own) else ()
    classes = (weights[fresh[0]].shape[0], own[fresh[0]].shape[0]) if fresh and fresh[0] in weights else None
    what = f"ancestor checkpoint {path}"
    if differ and not fresh:  # not only the head: strict, so that the error names what does not fit
        load_weights(model, weights, what)
    load_weights(model, {**own, **{k: v for k, v in weights.items() if k not in fresh}}, what)
    # (own's values fill what the file lacks: the head that starts fresh, and step counts)
    genome = _genome_of(arch, model, masks, fresh, path)
    # what the genome says is dead is zero before the ancestor is measured: a neuron that died of an
    # all-zero filter still passes its norm's bias on, and the synapses it feeds are nonzero
    MaskedParameters(model, parameter_masks(arch, genome))
    return LoadedAncestor(genome, len(own) - len(fresh), len(own), fresh, classes)


def _named_as(weights: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` with the prefix a wrapper added to every name ("module." of DataParallel, "model." of
    a Lightning module) taken off, where that makes the names the network's."""
    if set(weights) & set(own):
        return weights
    for prefix in ("module.", "model.", "net."):
        stripped = {k.removeprefix(prefix): v for k, v in weights.items()}
        if set(stripped) & set(own):
            return stripped
    return weights


def _genome_of(arch, model, masks, fresh: tuple[str, ...], path: str) -> Genome:
    if not masks:
        return genome_from_weights(arch, model)
    full = Genome.full(arch).masks
    head = {layer.name for layer in arch.layers if layer.weight_name in fresh}
    genome = Genome.from_state_dict({name: full[name] if name in head else m for name, m in masks.items()})
    try:
        genome.validate(arch)
    except ValueError as exc:
        raise ValueError(f"ancestor checkpoint {path}: {exc}") from None
    return genome


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict with an error that says which checkpoint does not fit which network: how many
    keys are missing, unexpected or of another shape, with the first few of each (not all ninety)."""
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError:
        why = misfit(model, weights)
        raise ValueError(f"{what} does not fit the task's network ({type(model).__name__}): {why}") from None


def misfit(model: torch.nn.Module, weights: dict[str, torch.Tensor], shown: int = 3) -> str:
    """What differs between ``model``'s state dict and ``weights``, in counts and a few names."""
    own = model.state_dict()
    kinds = {
        "missing": [k for k in own if k not in weights],
        "unexpected": [k for k in weights if k not in own],
        "of another shape": [
            f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
            for k in own
            if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)
        ],
    }
    parts = []
    for kind, keys in kinds.items():
        if keys:
            more = f", ... ({len(keys) - shown} more)" if len(keys) > shown else ""
            parts.append(f"{len(keys)} {kind} ({', '.join(keys[:shown])}{more})")
    return "; ".join(parts) or "the weights do not load"
