"""Masks on parameters: dead synapses (and the biases and per-channel normalisation parameters of dead
neurons) are zero, and stay exactly zero through training: weights, gradients and optimizer state.
"""

from __future__ import annotations

import torch
from torch import nn

from .architecture import Architecture
from .death import kill_orphans
from .genome import Genome
from .layers import layer_weight
from .wiring import ChannelMap


def parameter_masks(arch: Architecture, genome: Genome) -> dict[str, torch.Tensor]:
    """Bool mask per masked parameter name: weights, biases of dead neurons, dead-channel norm params.

    Only parameters with at least one dead entry are included.
    """
    genome.validate(arch)
    neurons = {l.name: genome.neurons(l).cpu() for l in arch.layers}
    masks: dict[str, torch.Tensor] = {}
    for layer in arch.layers:
        mask = genome.masks[layer.name]
        if not bool(mask.all()):
            masks[layer.weight_name] = mask
        if layer.has_bias and not bool(neurons[layer.name].all()):
            masks[layer.bias_name] = neurons[layer.name]
    # a module called several times keeps a channel's parameters while any call feeds it
    attached: dict[str, torch.Tensor] = {}
    for att in arch.attachments:
        alive = att.inputs.alive(neurons)
        for param in att.params:
            attached[param] = attached[param] | alive if param in attached else alive
    masks.update({param: alive for param, alive in attached.items() if not bool(alive.all())})
    # parameters read directly (layer scales, a functional norm's weight): their channel dimension
    scaled: dict[str, torch.Tensor] = {}
    for read in arch.channel_parameters:
        view = [1] * len(read.shape)
        view[read.dim] = -1
        alive = read.inputs.alive(neurons).view(view).expand(read.shape)
        scaled[read.name] = scaled[read.name] | alive if read.name in scaled else alive
    masks.update({param: alive.clone() for param, alive in scaled.items() if not bool(alive.all())})
    return masks


class MaskedParameters:
    """Keeps masked entries of a model's parameters at exactly zero while it trains.

    Gradients are masked in place as they are accumulated (so optimizer state never sees a dead
    entry), and weights are re-masked after every optimizer step, which also covers optimizers
    that would move a zero with a zero gradient.
    """

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]):
        params = dict(model.named_parameters())
        unknown = sorted(set(masks) - set(params))
        if unknown:
            raise ValueError(f"masks name parameters the model does not have: {unknown[:5]}")
        self.pairs: list[tuple[nn.Parameter, torch.Tensor]] = []
        for name, mask in masks.items():
            param = params[name]
            if tuple(mask.shape) != tuple(param.shape):
                raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, parameter has {tuple(param.shape)}")
            self.pairs.append((param, mask.to(param.device, torch.bool)))
        self._handles: list = []
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every masked entry of the weights (and of gradients present)."""
        for param, mask in self.pairs:
            param.mul_(mask)
            if param.grad is not None:
                param.grad.mul_(mask)

    @torch.no_grad()
    def _mask_weights(self) -> None:
        """After a step: gradients were masked as they accumulated, only weights need it."""
        for param, mask in self.pairs:
            param.mul_(mask)

    def attach(self, optimizer: torch.optim.Optimizer) -> MaskedParameters:
        for param, mask in self.pairs:
            self._handles.append(param.register_post_accumulate_grad_hook(_grad_masker(mask)))
        self._handles.append(optimizer.register_step_post_hook(lambda *_: self._mask_weights()))
        clean_optimizer_state(optimizer, self.pairs)
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _grad_masker(mask: torch.Tensor):
    def hook(param: torch.Tensor) -> None:
        if param.grad is not None:
            param.grad.mul_(mask)

    return hook


@torch.no_grad()
def clean_optimizer_state(optimizer: torch.optim.Optimizer, pairs) -> None:
    """Zero the dead entries of every per-parameter optimizer state tensor (momenta, moments)."""
    for param, mask in pairs:
        for value in optimizer.state.get(param, {}).values():
            if torch.is_tensor(value) and value.shape == param.shape:
                value.mul_(mask)


def genome_from_weights(arch: Architecture, model: nn.Module) -> Genome:
    """The genome a model's weights imply: nonzero entries alive, then neuron death applied.

    For ancestors loaded from elsewhere (e.g. a magnitude-pruned network).
    """
    genome = Genome({l.name: layer_weight(model, l).detach() != 0 for l in arch.layers})
    kill_orphans(arch, genome)
    return genome


__all__ = ["parameter_masks", "MaskedParameters", "clean_optimizer_state", "genome_from_weights", "ChannelMap"]
