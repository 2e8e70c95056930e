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
   output, opaque operations).
2. Coupled neurons stay together (`evopop.synthesis.coupling`): channel i of ``a + b`` is one
   position in both operands, a grouped convolution's group one unit, a GroupNorm's group one
   statistic, so a group with one member kept is kept whole (an operand that is not a neuron, e.g.
   the network input, pins its group).
3. Slicing: each synaptic layer keeps the rows of its kept neurons and the columns of the channels
   present in its input (a grouped convolution keeps its surviving groups, and has fewer of them);
   norm layers (and PReLU) keep the parameters and running statistics of the channels present in
   theirs (a GroupNorm its surviving groups); parameters read directly per channel (layer scales,
   position embeddings) are sliced; a layer norm that lost channels keeps dividing by its original
   width (`evopop.compaction.norms`); a reshape naming the number of channels names the kept number;
   an attention that lost heads computes with the survivors (`evopop.compaction.attention`).
4. Check: the compacted and the masked network are run on random inputs of the example's shape and
   must agree, relative to the size of the output (max |a - b| <= 1e-4 max |b|), or `CompactionError`
   says so; a wiring evopop misread can never silently change the function.

A layer with no neuron left keeps one (zero weights, zero bias): empty tensors are poorly
supported by exporters and runtimes, and one channel costs next to nothing.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten

from evopop.synthesis import Architecture, Genome, effective_genome, parameter_masks
from evopop.synthesis.architecture import (
    ChannelPermutation,
    ChannelSplit,
    LayerNormUse,
    SizedView,
)
from evopop.synthesis.attention import AttentionHeads, is_window_attention
from evopop.synthesis.inputs import Inputs, call, map_tensors
from evopop.synthesis.nodes import LAYER_NORM_ARGUMENTS, arguments
from evopop.synthesis.tracing import symbolic_trace
from evopop.synthesis.wiring import ChannelMap

from .attention import HeadsAttention, WindowHeadsAttention
from .inputs import input_batch
from .norms import LayerNormOfWidth, layer_norm_of_width

# float32 sums over thousands of products, reordered by smaller layers; relative to the output's largest
# magnitude, so that a network whose outputs are small cannot pass whatever its error
RELATIVE_TOLERANCE = 1e-4


class CompactionError(RuntimeError):
    """The network could not be compacted to an equivalent smaller one."""


@dataclass(frozen=True)
class Compacted:
    """A compacted individual: the network and what it kept."""

    module: fx.GraphModule
    neurons: dict[str, int]  # per synaptic layer: neurons kept
    params: int  # every parameter of the compacted network
    macs: int  # multiply-accumulates of one sample, as `Counts.macs` counts them
    max_error: float  # largest |compacted - masked| / largest |masked| on the check inputs


def compact(
    model: nn.Module,
    arch: Architecture,
    genome: Genome,
    example_input: Inputs,
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
    graph = symbolic_trace(copy.deepcopy(masked))
    modules = dict(graph.named_modules())
    for layer in arch.layers:
        if layer.name in arch.inputs and layer.name in modules:  # not attention's input projection
            present = _present(arch.inputs[layer.name][0], keep)
            _slice_synaptic(modules[layer.name], layer.kind, keep[layer.name], present)
    for attachment in arch.attachments:
        if attachment.module in modules:
            _slice_per_channel(modules[attachment.module], _present(attachment.inputs, keep))
    sliced = set()
    for read in arch.channel_parameters:
        if read.name not in sliced:  # read in several places: pinned, so the same channels each time
            sliced.add(read.name)
            _slice_parameter(graph, read.name, read.dim, _present(read.inputs, keep))
    for use in arch.layer_norms:
        _narrow_layer_norm(graph, use, _present(use.inputs, keep))
    for view in arch.sized_views:
        _resize_view(graph, view, int(_present(view.inputs, keep).sum()))
    for split in arch.splits:
        _split_kept(graph, split, _present(split.inputs, keep))
    for i, permutation in enumerate(arch.permutations):
        _select_in_order(graph, permutation, _present(permutation.inputs, keep), f"_evopop_order_{i}")
    removed_products = 0
    for heads in arch.attention:
        removed_products += _narrow_attention(graph, arch, heads, keep)
    graph.recompile()
    graph.eval()
    error = _max_difference(masked, graph, example_input)
    macs = (
        sum(
            graph.get_parameter(l.weight_name).numel() * arch.macs_per_synapse.get(l.name, 0)
            for l in arch.layers
            if arch.macs_per_synapse.get(l.name)  # (an attention applies some itself: not in `inputs`)
        )
        + sum(arch.other_macs.values())
        - removed_products
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
    # a group with one member kept is kept whole; a pinned group (tied to a network input, say) too
    keep = arch.groups.spread(arch.groups.any_member(keep) | arch.groups.pinned)
    if _keep_a_channel_of_empty_parts(arch, keep):
        keep = arch.groups.spread(arch.groups.any_member(keep))
    return keep


def _keep_a_channel_of_empty_parts(arch: Architecture, keep: dict[str, torch.Tensor]) -> bool:
    """A chunk's part with no channel left would be an empty tensor: like an emptied layer, it keeps one
    (a dead neuron's channel, all zeros). True if it changed ``keep``."""
    changed = False
    for split in arch.splits:
        size = split.inputs.size // split.parts
        for part, present in enumerate(split.inputs.alive(keep).view(split.parts, size)):
            if bool(present.any()):
                continue
            for source in split.inputs.sources:
                neuron = int(source.index[part * size])
                if source.producer is not None and neuron >= 0:
                    keep[source.producer][neuron] = changed = True
    return changed


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
    out_idx, in_idx = out_keep.nonzero().flatten(), in_keep.nonzero().flatten()
    weight = module.weight
    if getattr(module, "groups", 1) > 1:
        sliced = _slice_grouped(module, kind, out_keep, in_keep)
    elif kind == "deconv":  # (in, out, *k)
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


def _slice_grouped(module: nn.Module, kind: str, out_keep: torch.Tensor, in_keep: torch.Tensor) -> torch.Tensor:
    """A grouped layer's weight without the removed channels: whole groups (the layer gets fewer groups),
    or the same channels of every group (each group gets thinner); `CompactionError` for anything else."""
    g = module.groups
    outs, ins = out_keep.view(g, -1), in_keep.view(g, -1)
    weight = module.weight  # conv (out, in/g, *k); deconv (in, out/g, *k)
    whole = [torch.equal(k.all(dim=1), k.any(dim=1)) for k in (outs, ins)]
    if all(whole) and torch.equal(outs.any(dim=1), ins.any(dim=1)):
        module.groups = int(outs.any(dim=1).sum())
        rows = in_keep if kind == "deconv" else out_keep
        return weight.index_select(0, rows.nonzero().flatten())
    if all(bool((k == k[:1]).all()) for k in (outs, ins)):  # the same channels in every group
        out_idx, in_pos = out_keep.nonzero().flatten(), ins[0].nonzero().flatten()
        if kind == "deconv":
            return weight.index_select(0, in_keep.nonzero().flatten()).index_select(1, outs[0].nonzero().flatten())
        return weight.index_select(0, out_idx).index_select(1, in_pos)
    raise CompactionError(f"grouped layer {type(module).__name__} would keep neither whole groups nor equal ones")


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
        per_group = present.view(module.num_groups, -1)
        if not torch.equal(per_group.all(dim=1), per_group.any(dim=1)):
            raise CompactionError("a GroupNorm would lose part of a group")
        module.num_groups, module.num_channels = int(per_group.any(dim=1).sum()), n
    elif isinstance(module, nn.PReLU):
        module.num_parameters = n
    elif hasattr(module, "num_features"):
        module.num_features = n


@torch.no_grad()
def _slice_parameter(graph: fx.GraphModule, name: str, dim: int, present: torch.Tensor) -> None:
    """Keep the present channels of a parameter read directly (a layer scale, a norm's weight)."""
    if bool(present.all()):
        return
    owner, _, attr = name.rpartition(".")
    module = graph.get_submodule(owner)
    param = getattr(module, attr)
    kept = param.index_select(dim, present.nonzero().flatten()).contiguous()
    setattr(module, attr, nn.Parameter(kept, requires_grad=param.requires_grad))


def _narrow_layer_norm(graph: fx.GraphModule, use: LayerNormUse, present: torch.Tensor) -> None:
    """A layer norm that lost channels keeps dividing by its original width (`evopop.compaction.norms`)."""
    if bool(present.all()):
        return
    if use.module is not None:
        norm = graph.get_submodule(use.module)
        _replace_module(graph, use.module, LayerNormOfWidth(norm.weight, norm.bias, use.eps, use.width))
        return
    node = _node(graph, use.node)
    given = arguments(node, LAYER_NORM_ARGUMENTS)
    node.target = layer_norm_of_width
    node.args = (given["input"], given.get("weight"), given.get("bias"), use.eps, use.width)
    node.kwargs = {}


def _resize_view(graph: fx.GraphModule, view: SizedView, channels: int) -> None:
    """A reshape that names the number of channels as a constant asks for the kept number instead."""
    node = _node(graph, view.node)
    if node.op == "call_method" and not (len(node.args) == 2 and isinstance(node.args[1], (tuple, list))):
        args = list(node.args)
        args[1 + view.position] = channels
        node.args = tuple(args)
        return
    sizes = node.args[1] if len(node.args) > 1 else node.kwargs["shape"]
    sizes = type(sizes)(channels if i == view.position else size for i, size in enumerate(sizes))
    if len(node.args) > 1:
        node.args = (node.args[0], sizes, *node.args[2:])
    else:
        node.kwargs = {**node.kwargs, "shape": sizes}


def _split_kept(graph: fx.GraphModule, split: ChannelSplit, present: torch.Tensor) -> None:
    """``x.chunk(n, dim)`` becomes ``torch.split(x, kept per part, dim)``: the parts may now differ."""
    if bool(present.all()):
        return
    node = _node(graph, split.node)
    sizes = [int(part.sum()) for part in present.view(split.parts, -1)]
    node.op, node.target = "call_function", torch.split
    node.args, node.kwargs = (node.args[0], sizes), {"dim": split.dim}


def _select_in_order(graph: fx.GraphModule, permutation: ChannelPermutation, present: torch.Tensor, name: str) -> None:
    """A channel shuffle becomes one ``index_select`` of the kept channels in the shuffled order (the
    views it was made of would need equal groups)."""
    if bool(present.all()):
        return
    merged, source = _node(graph, permutation.node), _node(graph, permutation.source)
    rank = torch.cumsum(present.long(), 0) - 1  # a kept channel's index among the kept ones
    order = permutation.order
    graph.register_buffer(name, rank[order[present[order]]].contiguous())
    with graph.graph.inserting_before(merged):
        index = graph.graph.get_attr(name)
        selected = graph.graph.call_function(torch.index_select, (source, permutation.dim, index))
    merged.replace_all_uses_with(selected)
    graph.graph.eliminate_dead_code()


def _node(graph: fx.GraphModule, name: str) -> fx.Node:
    """The node called ``name`` in the network traced again (tracing the same modules names nodes alike)."""
    node = next((n for n in graph.graph.nodes if n.name == name), None)
    if node is None:
        raise CompactionError(f"the node {name!r} evopop traced is not in the network traced again")
    return node


@torch.no_grad()
def _narrow_attention(graph: fx.GraphModule, arch: Architecture, heads: AttentionHeads, keep) -> int:
    """An attention that lost heads or input channels (its projections' Linears are sliced already)
    computes with the surviving heads; returns the MACs of the removed heads' products."""
    units = keep[heads.projection]
    living = heads.living(units)
    head_dim = units.numel() // (3 * heads.heads)
    if not torch.equal(units, living.repeat_interleave(head_dim).repeat(3)):
        raise CompactionError(f"{heads.module} would lose part of a head")
    present = _present(arch.inputs[heads.projection][0], keep)
    if bool(living.all()) and bool(present.all()):
        return 0
    attention, kept = graph.get_submodule(heads.module), living.nonzero().flatten()
    if is_window_attention(attention):  # torchvision's function sizes a head by the input's width
        _replace_module(graph, heads.module, WindowHeadsAttention(attention, kept, head_dim))
    elif isinstance(attention, nn.MultiheadAttention):  # its width is its input's: another module
        _replace_module(graph, heads.module, _heads_attention(attention, units, present, kept))
    else:  # timm's sizes its reshapes by its heads
        attention.num_heads = int(kept.numel())
        attention.attn_dim = attention.num_heads * attention.head_dim
    return heads.removed_products(int(kept.numel()))


def _heads_attention(attention: nn.MultiheadAttention, units, present, kept) -> HeadsAttention:
    """``attention`` with the rows of its kept Q, K and V units and the columns of its present inputs."""
    rows, columns = units.nonzero().flatten(), present.nonzero().flatten()
    bias = attention.in_proj_bias
    return HeadsAttention(
        attention.in_proj_weight.index_select(0, rows).index_select(1, columns).contiguous(),
        bias.index_select(0, rows).contiguous() if bias is not None else None,
        attention.out_proj,
        kept,
        attention.head_dim,
        attention.batch_first,
        attention.dropout,
    )


def _replace_module(graph: fx.GraphModule, name: str, module: nn.Module) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(graph.get_submodule(owner), attr, module)


@torch.no_grad()
def _max_difference(masked: nn.Module, compacted: nn.Module, example_input: Inputs) -> float:
    """Run both networks; the largest |compacted - masked| relative to the largest |masked|.
    `CompactionError` unless it is within `RELATIVE_TOLERANCE`."""
    x = input_batch(map_tensors(example_input, lambda t: t.detach().cpu()), 2)
    expected, _ = tree_flatten(call(masked, x))
    try:
        got, _ = tree_flatten(call(compacted, x))
    except Exception as exc:  # a shape evopop's wiring did not foresee
        raise CompactionError(f"the compacted network does not run ({type(exc).__name__}: {exc})") from exc
    worst = 0.0
    for e, g in zip(expected, got, strict=True):
        if not torch.is_tensor(e):
            continue
        if e.shape != g.shape:
            raise CompactionError(f"the compacted network's output has shape {tuple(g.shape)}, not {tuple(e.shape)}")
        worst = max(worst, relative_error(g, e))
    if worst > RELATIVE_TOLERANCE:
        raise CompactionError(
            f"the compacted network computes another function (max |difference| / max |output| = {worst:.3g})"
        )
    return worst


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| / max |expected| (0 for empty outputs; the absolute error where expected is 0)."""
    if not expected.numel():
        return 0.0
    if not (torch.isfinite(got).all() and torch.isfinite(expected).all()):
        return 0.0 if torch.equal(got, expected) else math.inf
    diff = float((got.double() - expected.double()).abs().max())
    scale = float(expected.double().abs().max())
    return diff / scale if scale > 0 else diff
