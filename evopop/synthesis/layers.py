"""Synaptic layers: which parameters of a network are synapses, and how their axes map to neurons.

A synapse joins two neurons: one entry of a Conv*, ConvTranspose* or Linear weight. Biases and
normalisation parameters are not synapses. A layer's neurons are its output channels / units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SYNAPTIC_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


@dataclass(frozen=True)
class SynapticLayer:
    """Shape facts of one synaptic layer; enough to read neurons and fan-in from its weight mask."""

    name: str  # qualified module name, e.g. "features.0"
    kind: str  # "linear" | "conv" | "deconv"
    weight_shape: tuple[int, ...]
    groups: int = 1
    has_bias: bool = False
    # the weight's and bias's full parameter names where they are not "<name>.weight" and "<name>.bias":
    # attention's packed input projection is a parameter of the attention module, not a module of its own
    weight_param: str = ""
    bias_param: str = ""

    @property
    def weight_name(self) -> str:
        return self.weight_param or f"{self.name}.weight"

    @property
    def bias_name(self) -> str:
        return self.bias_param or f"{self.name}.bias"

    @property
    def numel(self) -> int:
        n = 1
        for d in self.weight_shape:
            n *= d
        return n

    @property
    def in_channels(self) -> int:
        if self.kind == "deconv":
            return self.weight_shape[0]
        return self.weight_shape[1] * self.groups

    @property
    def out_channels(self) -> int:
        if self.kind == "deconv":
            return self.weight_shape[1] * self.groups
        return self.weight_shape[0]

    def living_neurons(self, mask: torch.Tensor) -> torch.Tensor:
        """Bool per neuron of a weight-shaped ``mask``: alive iff it has an incoming synapse."""
        return self.neuron_view(mask).any(dim=1)

    def neuron_view(self, mask: torch.Tensor) -> torch.Tensor:
        """View (or copy, for deconv) of a weight-shaped tensor as (neurons, incoming synapses)."""
        if self.kind != "deconv":
            return mask.reshape(self.out_channels, -1)
        # ConvTranspose weight: (in, out/groups, *k); neuron o of group g reads inputs of group g.
        g, in_pg, out_pg = self.groups, self.weight_shape[0] // self.groups, self.weight_shape[1]
        k = mask.shape[2:]
        grouped = mask.reshape(g, in_pg, out_pg, *k).transpose(1, 2)
        return grouped.reshape(self.out_channels, -1)

    def used_inputs(self, mask: torch.Tensor) -> torch.Tensor:
        """Bool per input channel of a weight-shaped ``mask``: read by at least one living synapse."""
        if self.kind == "linear":
            return mask.any(dim=0)
        if self.kind == "deconv":  # (in, out/groups, *k): input channels lead
            return mask.reshape(mask.shape[0], -1).any(dim=1)
        g, in_pg = self.groups, self.weight_shape[1]
        grouped = mask.reshape(g, self.weight_shape[0] // g, in_pg, -1)  # input c = group * in_pg + i
        return grouped.any(dim=3).any(dim=1).reshape(-1)

    def keep_neurons(self, mask: torch.Tensor, alive: torch.Tensor) -> None:
        """In place: remove the incoming synapses of the neurons that are not ``alive``."""
        spatial = (1,) * (mask.dim() - 2)
        if self.kind != "deconv":
            mask &= alive.view(-1, *((1,) * (mask.dim() - 1)))
            return
        g, in_pg, out_pg = self.groups, self.weight_shape[0] // self.groups, self.weight_shape[1]
        grouped = mask.view(g, in_pg, out_pg, *mask.shape[2:])  # neuron group * out_pg + j
        grouped &= alive.view(g, 1, out_pg, *spatial)

    def keep_inputs(self, mask: torch.Tensor, alive_inputs: torch.Tensor) -> None:
        """In place: remove the synapses that read from dead input channels."""
        spatial = (1,) * (mask.dim() - 2)
        if self.kind == "linear":
            mask &= alive_inputs.view(1, -1)
        elif self.kind == "deconv":
            mask &= alive_inputs.view(-1, 1, *spatial)
        elif self.groups == 1:
            mask &= alive_inputs.view(1, -1, *spatial)
        else:
            g, in_pg = self.groups, self.weight_shape[1]
            grouped = mask.view(g, self.weight_shape[0] // g, in_pg, *mask.shape[2:])
            grouped &= alive_inputs.view(g, 1, in_pg, *spatial)


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return "deconv"
    return "conv"


def _input_projection(name: str, attention: nn.MultiheadAttention) -> SynapticLayer:
    """``nn.MultiheadAttention``'s packed Q, K, V projection: a linear layer of 3 * embed_dim units,
    named ``<attention>.in_proj`` (it multiplies activations like any Linear: its entries are synapses)."""
    prefix = f"{name}." if name else ""
    return SynapticLayer(
        name=f"{prefix}in_proj",
        kind="linear",
        weight_shape=tuple(attention.in_proj_weight.shape),
        has_bias=attention.in_proj_bias is not None,
        weight_param=f"{prefix}in_proj_weight",
        bias_param=f"{prefix}in_proj_bias",
    )


def layer_weight(model: nn.Module, layer: SynapticLayer) -> torch.Tensor:
    """The weight parameter of ``layer`` in ``model``."""
    return model.get_parameter(layer.weight_name)


def find_synaptic_layers(model: nn.Module) -> list[SynapticLayer]:
    """All synaptic layers of ``model`` in module order; raises if there are none."""
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            layers.append(_input_projection(name, module))
        if isinstance(module, SYNAPTIC_TYPES):
            layers.append(
                SynapticLayer(
                    name=name,
                    kind=_kind(module),
                    weight_shape=tuple(module.weight.shape),
                    groups=getattr(module, "groups", 1),
                    has_bias=module.bias is not None,
                )
            )
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no synaptic layers: evopop evolves the weights of "
            "Linear, Conv1d/2d/3d and ConvTranspose1d/2d/3d modules, and found none."
        )
    return layers
