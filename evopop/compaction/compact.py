"""Compaction: an individual -> a physically smaller dense network without its dead neurons.

A masked offspring is its ancestor's dense network with zeros in it; it runs as slowly as the
ancestor. `compact` removes every neuron (output channel, filter, unit) that cannot influence the
output, with all its parameters, and gives a plain ``torch.fx.GraphModule`` that computes the
masked network's function with smaller dense layers.

It is built on the wiring evopop already traces for neuron death (`Architecture`), so it follows
whatever that wiring follows (norms, activations, pooling, resizing, ``torch.cat``, residual and
gated sums, flatten -> linear, ConvTranspose) and keeps whole whatever it does not:

1. Which neurons stay: the living neurons of the *effective* genome (forward and backward death,
   `effective_genome`), plus ``Architecture.pinned`` (read where a channel cannot be removed: the
   output, opaque operations, grouped convolutions, parameters multiplied in).
2. Coupled channels stay together: channel i of ``a + b`` is one position in both operands, so the
   neurons feeding it in ``a`` and ``b`` are kept or removed together (a fixed point over
   ``Architecture.couplings``; an operand that is not a neuron, e.g. the network input, keeps it).
3. Slicing: each synaptic layer keeps the rows of its kept neurons and the columns of the channels
   present in its input; norm layers (and PReLU) keep the parameters and running statistics of
   the channels present in theirs.
4. Check: the compacted and the masked network are run on random inputs of the example's shape and must agree, or
   `CompactionError` says so; a wiring evopop misread can never silently change the function.

A layer with no neuron left keeps one (zero weights, zero bias): empty tensors are poorly
supported by exporters and runtimes, and one channel costs next to nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten

from evopop.synthesis import Architecture, Genome, effective_genome, parameter_masks
from evopop.synthesis.wiring import ChannelMap

from .inputs import input_batch

ATOL, RTOL = 1e-4, 1e-4  # float32 sums over thousands of products, reordered by smaller layers


class CompactionError(RuntimeError):
    """The network could not be compacted to an equivalent smaller one."""


@dataclass(frozen=True)
class Compacted:
    """A compacted individual: the network and what it kept."""

    module: fx.GraphModule
    neurons: dict[str, int]  # per synaptic layer: neurons kept
    params: int  # every parameter of the compacted network
    macs: int  # synaptic multiply-accumulates of one sample, as `Counts.macs` counts them
    max_error: float  # largest |compacted - masked| on the check inputs


def compact(
    model: nn.Module,
    arch: Architecture,
    genome: Genome,
    example_input: torch.Tensor,
    effective: Genome | None = None,
) -> Compacted:
    """The compacted network of ``model`` (trained weights) under ``genome``; ``model`` is untouched.
    ``effective``: ``effective_genome(arch, genome)``, where the caller has it already."""
    genome.validate(arch)
    if not arch.traced:
        raise CompactionError(f"cannot compact a network evopop could not trace: {arch.note}")
    effective = (effective or effective_genome(arch, genome)).to("cpu")
    masked = masked_network(model, arch, effective).eval()
    keep = kept_neurons(arch, effective)
    graph = fx.symbolic_trace(copy.deepcopy(masked))
    modules = dict(graph.named_modules())
    for layer in arch.layers:
        if layer.name in arch.inputs:
            present = _present(arch.inputs[layer.name][0], keep)
            _slice_synaptic(modules[layer.name], layer.kind, keep[layer.name], present)
    for attachment in arch.attachments:
        _slice_per_channel(modules[attachment.module], _present(attachment.inputs, keep))
    graph.recompile()
    graph.eval()
    error = _max_difference(masked, graph, example_input)
    macs = sum(
        modules[l.name].weight.numel() * arch.macs_per_synapse.get(l.name, 0) for l in arch.layers if l.name in modules
    )
    return Compacted(
        module=graph,
        neurons={name: int(k.sum()) for name, k in keep.items()},
        params=sum(p.numel() for p in graph.parameters()),
        macs=macs,
        max_error=error,
    )


def kept_neurons(arch: Architecture, effective: Genome) -> dict[str, torch.Tensor]:
    """Bool per neuron of each layer: kept by compaction (living, pinned, or coupled to a kept one)."""
    keep = {}
    for layer in arch.layers:
        if layer.name not in arch.inputs:  # never called as a module: its shape is not ours to change
            keep[layer.name] = torch.ones(layer.out_channels, dtype=torch.bool)
        else:
            keep[layer.name] = effective.neurons(layer).cpu() | arch.pinned[layer.name]
        if not bool(keep[layer.name].any()):
            keep[layer.name][0] = True  # see the module doc: no empty layers (before coupling: it couples too)
    changed = True
    while changed:  # coupled channels: one kept operand keeps them all; repeat until nothing changes
        changed = False
        for coupling in arch.couplings:
            present = _present(coupling, keep)
            for src in coupling.sources:
                if src.producer is None:
                    continue
                fed = present & (src.index >= 0)
                neurons = keep[src.producer]
                before = int(neurons.sum())
                neurons[src.index[fed]] = True
                changed |= int(neurons.sum()) != before
    return keep


def _present(channels: ChannelMap, keep: dict[str, torch.Tensor]) -> torch.Tensor:
    """Bool per channel of a tensor: still there once the neurons not in ``keep`` are removed."""
    return channels.alive(keep)


def masked_network(model: nn.Module, arch: Architecture, genome: Genome) -> nn.Module:
    masked = copy.deepcopy(model).cpu()
    params = dict(masked.named_parameters())
    with torch.no_grad():
        for name, mask in parameter_masks(arch, genome).items():
            params[name].mul_(mask.to(params[name].device))
    return masked


@torch.no_grad()
def _slice_synaptic(module: nn.Module, kind: str, out_keep: torch.Tensor, in_keep: torch.Tensor) -> None:
    """Keep the rows of the kept neurons and the columns of the present input channels, in place."""
    groups = getattr(module, "groups", 1)
    if groups > 1:
        if not (bool(out_keep.all()) and bool(in_keep.all())):
            raise CompactionError(f"grouped layer {type(module).__name__} would be sliced; it is pinned whole")
        return
    out_idx, in_idx = out_keep.nonzero().flatten(), in_keep.nonzero().flatten()
    weight = module.weight
    if kind == "deconv":  # (in, out, *k)
        sliced = weight.index_select(0, in_idx).index_select(1, out_idx)
    else:  # (out, in, *k)
        sliced = weight.index_select(0, out_idx).index_select(1, in_idx)
    module.weight = nn.Parameter(sliced.contiguous(), requires_grad=weight.requires_grad)
    if module.bias is not None:
        module.bias = nn.Parameter(module.bias.index_select(0, out_idx).contiguous())
    if kind == "linear":
        module.in_features, module.out_features = len(in_idx), len(out_idx)
    else:
        module.in_channels, module.out_channels = len(in_idx), len(out_idx)


@torch.no_grad()
def _slice_per_channel(module: nn.Module, present: torch.Tensor) -> None:
    """Keep the parameters and running statistics of the present channels of a norm layer or PReLU."""
    if bool(present.all()):
        return
    idx = present.nonzero().flatten()
    size = present.numel()
    for name, param in list(module.named_parameters(recurse=False)):
        if param.numel() == size:
            setattr(module, name, nn.Parameter(param.index_select(0, idx).contiguous()))
    for name, buffer in list(module.named_buffers(recurse=False)):
        if buffer is not None and buffer.dim() == 1 and buffer.numel() == size:
            setattr(module, name, buffer.index_select(0, idx).contiguous())
    n = len(idx)
    if isinstance(module, nn.GroupNorm):
        if module.num_groups != module.num_channels:
            raise CompactionError("a GroupNorm with several channels per group would be sliced; it is pinned whole")
        module.num_groups = module.num_channels = n
    elif isinstance(module, nn.PReLU):
        module.num_parameters = n
    elif hasattr(module, "num_features"):
        module.num_features = n


@torch.no_grad()
def _max_difference(masked: nn.Module, compacted: nn.Module, example_input: torch.Tensor) -> float:
    """Run both networks; raise `CompactionError` unless they agree within float tolerance."""
    x = input_batch(example_input.detach().cpu(), 2)
    expected, _ = tree_flatten(masked(x))
    try:
        got, _ = tree_flatten(compacted(x))
    except Exception as exc:  # a shape evopop's wiring did not foresee
        raise CompactionError(f"the compacted network does not run ({type(exc).__name__}: {exc})") from exc
    worst = 0.0
    for e, g in zip(expected, got, strict=True):
        if not torch.is_tensor(e):
            continue
        if e.shape != g.shape:
            raise CompactionError(f"the compacted network's output has shape {tuple(g.shape)}, not {tuple(e.shape)}")
        diff = (e.float() - g.float()).abs()
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
        if not torch.allclose(g.float(), e.float(), atol=ATOL, rtol=RTOL):
            raise CompactionError(f"the compacted network computes another function (max |difference| {worst:.3g})")
    return worst
