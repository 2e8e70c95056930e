"""Architecture H = (N, S) of a network: its synaptic layers and how their neurons are wired.

`trace_architecture(model, example_input)` follows the data flow once with torch.fx, so that neuron
death can cascade (a dead neuron's outgoing synapses die with it) and multiply-accumulates can be
counted. It sees through:

- synaptic layers: Linear, Conv1d/2d/3d (any groups), ConvTranspose1d/2d/3d, and the packed Q/K/V
  projection of ``nn.MultiheadAttention`` (a layer named ``<attention>.in_proj``);
- channel-preserving operations: normalisation (layer norms over the channels too), activations, dropout,
  pooling, upsampling, interpolation and spatial padding, means over other dimensions, ``x[:, 0]``;
- ``torch.cat`` along the channels (and along tokens, which ties the parts), ``chunk``, elementwise
  ``+ - * /`` of aligned tensors (residual and gated branches) and of per-channel parameters (layer
  scales, position embeddings), flattening into a Linear, views that split or merge the channels (a
  channel shuffle) or only the dimensions behind them (patches into tokens), permutes;
- attention: ``nn.MultiheadAttention``, timm's ``Attention`` and torchvision's Swin window attention,
  whose heads are coupling groups.

Anything else (reshapes that mix channels, softmax over channels, custom leaf modules) is a barrier: the
layers after it treat their inputs as always alive. That is safe: it only means fewer synapses die by
cascade, never that a living one does. A model that cannot be
traced at all (data-dependent control flow) falls back to "no cascade", with a warning that says which
operation, in which module and on which line, stopped the tracer (`evopop.synthesis.tracing`).
"""

from __future__ import annotations

import math
import operator
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import fx, nn

from .attention import (
    AttentionHeads,
    AttentionTracing,
    is_packed_attention,
    is_window_attention,
    is_window_attention_function,
)
from .coupling import Coupling, coupling_groups
from .inputs import Inputs
from .layers import SYNAPTIC_TYPES, SynapticLayer, find_synaptic_layers
from .nodes import LAYER_NORM_ARGUMENTS, arguments, first_input, qualified_name
from .tracing import Untraceable, shaped_graph
from .wiring import ChannelMap, Source, concatenate, union

# Modules whose per-channel parameters belong to the neurons that feed them: they die with them.
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm)
_PER_CHANNEL_PARAM_MODULES = (*_NORMS, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.PReLU)
_ACTIVATIONS = (
    *(nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish),
    *(nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus),
)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)
_POOLS = (
    *(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d),
    *(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d),
    *(nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d),
)
_RESIZES = (
    *(nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d),
    *(nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d),
    *(nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d),
)
# Activations that map zero to something else: a dead channel is no longer zero after them.
_NONZERO_AT_ZERO_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)
_NONZERO_AT_ZERO = {F.sigmoid, torch.sigmoid, F.hardsigmoid, F.softplus, "sigmoid"}
# Modules that keep channel k of their input in channel k of their output: neuron death passes through them.
_PRESERVING_MODULES = (*_PER_CHANNEL_PARAM_MODULES, *_ACTIVATIONS, *_DROPOUTS, *_POOLS, *_RESIZES)
_PRESERVING_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.softplus,
    F.sigmoid,
    F.tanh,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    F.interpolate,
    F.upsample,
    F.pad,
    F.batch_norm,
    F.instance_norm,
    torch.clone,
    torch.nn.functional.relu_,
}
_PRESERVING_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "tanh",
    "contiguous",
    "clone",
    "float",
    "to",
    "type_as",
    "clamp",
    "clamp_min",
    "detach",
}
_ELEMENTWISE = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.mul,
    operator.imul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
}
_ELEMENTWISE_METHODS = {"add", "add_", "sub", "mul", "mul_", "div"}
_PRODUCTS = {operator.mul, operator.imul, torch.mul, operator.truediv, torch.div, "mul", "mul_", "div"}
_DIVISIONS = {operator.truediv, torch.div, "div"}
_RESHAPES_FUNCTIONS = {torch.flatten, torch.reshape}
_RESHAPES_METHODS = {"flatten", "view", "reshape"}
_CAT = {torch.cat, torch.concat}
_TRANSPOSES = {torch.transpose, torch.permute, "transpose", "permute"}
_REDUCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin, "mean", "sum", "amax", "amin"}
# channel-preserving functions of other libraries, by module and name (importing them here would make
# them dependencies): torchvision's stochastic depth drops whole samples, never channels
_PRESERVING_BY_NAME = {("torchvision.ops.stochastic_depth", "stochastic_depth")}


@dataclass(frozen=True)
class Attachment:
    """Per-channel parameters of a module fed by neurons: channel c dies when its inputs do."""

    module: str
    params: tuple[str, ...]  # full parameter names, e.g. ("features.1.weight", "features.1.bias")
    inputs: ChannelMap
    buffers: tuple[str, ...] = ()  # per-channel buffers (running statistics): compaction slices them too
    # a GroupNorm's groups, whose channels live and die together (see `coupling`); 0: per-channel state
    groups: int = 0


@dataclass(frozen=True)
class ChannelParameter:
    """A parameter read directly (a layer scale multiplied in, a functional layer norm's weight) whose
    dimension ``dim`` holds the channels of ``inputs``: it is zero where they are dead, and compaction
    slices it."""

    name: str
    dim: int
    shape: tuple[int, ...]
    inputs: ChannelMap


@dataclass(frozen=True)
class LayerNormUse:
    """A layer norm over the channels of ``inputs`` (the last dimension). Its statistics read every
    channel, the dead ones as the zeros they are: compaction keeps dividing by the original ``width``
    (`evopop.compaction.norms`), so removing a dead channel changes nothing."""

    node: str  # the graph node that normalises
    module: str | None  # the ``nn.LayerNorm`` called, None for ``F.layer_norm``
    inputs: ChannelMap
    eps: float

    @property
    def width(self) -> int:
        return self.inputs.size


@dataclass(frozen=True)
class SizedView:
    """A reshape that names the number of channels of ``inputs`` as a constant (``x.reshape(n, 768, -1)``):
    compaction writes the kept number in its place."""

    node: str
    position: int  # among the sizes the reshape asks for
    inputs: ChannelMap


@dataclass(frozen=True)
class ChannelPermutation:
    """Views and transposes that only reorder channels (a channel shuffle: split the channels into groups,
    transpose, merge): channel i of ``node``'s output is channel ``order[i]`` of ``source``'s. Compaction
    replaces them by one ``index_select`` of the kept channels, so the groups need not keep equal numbers."""

    node: str
    source: str
    dim: int
    inputs: ChannelMap  # the channels of ``source``
    order: torch.Tensor


@dataclass(frozen=True)
class ChannelSplit:
    """``x.chunk(parts, dim)`` along the channels: compaction splits the kept channels of each part."""

    node: str
    dim: int
    inputs: ChannelMap
    parts: int


@dataclass
class Architecture:
    """The synaptic layers of a network and the wiring between their neurons."""

    layers: list[SynapticLayer]  # topological order
    inputs: dict[str, list[ChannelMap]] = field(default_factory=dict)  # per call of the layer
    attachments: list[Attachment] = field(default_factory=list)
    macs_per_synapse: dict[str, int] = field(default_factory=dict)  # per sample
    other_params: dict[str, int] = field(default_factory=dict)  # non-synaptic param -> numel
    # per layer, bool per neuron: read by something other than synapses (the network's output, an
    # operation evopop cannot see through); such a neuron is used whatever its consumers' synapses
    sinks: dict[str, torch.Tensor] = field(default_factory=dict)
    # per layer, bool per neuron: read where its channel cannot be removed from the tensor (a
    # parameter multiplied in, a functional norm's statistics, a grouped convolution); a superset of
    # ``sinks``. Effective liveness ignores it; compaction keeps these channels physically.
    pinned: dict[str, torch.Tensor] = field(default_factory=dict)
    # maps of tensors made by elementwise operations: channel i of every operand is the same
    # position of one tensor, so compaction keeps or removes the neurons feeding it together
    couplings: list[ChannelMap] = field(default_factory=list)
    traced: bool = True
    note: str = ""
    # per layer: why some of its neurons are pinned, in words (shown by `evopop inspect`)
    pin_reasons: dict[str, list[str]] = field(default_factory=dict)
    # (channels, position of each channel): channels given one position must live and die together for a
    # reshape to stay valid once some are removed (the groups of a channel shuffle)
    position_ties: list[tuple[ChannelMap, torch.Tensor]] = field(default_factory=list)
    # multiply-accumulates of one sample that no synaptic layer performs: attention's two products (QK^T,
    # AV), and the projections of an attention evopop does not follow, per module
    other_macs: dict[str, int] = field(default_factory=dict)
    channel_parameters: list[ChannelParameter] = field(default_factory=list)
    layer_norms: list[LayerNormUse] = field(default_factory=list)
    attention: list[AttentionHeads] = field(default_factory=list)
    sized_views: list[SizedView] = field(default_factory=list)
    permutations: list[ChannelPermutation] = field(default_factory=list)
    splits: list[ChannelSplit] = field(default_factory=list)
    groups: Coupling | None = None  # neurons that live and die together (`evopop.synthesis.coupling`)

    def __post_init__(self):
        if self.groups is None:
            self.groups = coupling_groups(self)

    def layer(self, name: str) -> SynapticLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no synaptic layer named {name!r}")

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def synapses(self) -> int:
        return sum(layer.numel for layer in self.layers)


def trace_architecture(model: nn.Module, example_input: Inputs) -> Architecture:
    """Find the synaptic layers of ``model`` and, by tracing one forward pass on ``example_input`` (a
    tensor, a tuple of them or a dict of them: `evopop.synthesis.inputs`), their wiring."""
    layers = find_synaptic_layers(model)
    weights = {layer.weight_name for layer in layers}
    other = {n: p.numel() for n, p in model.named_parameters() if n not in weights}
    try:
        graph = shaped_graph(model, example_input)
    except Untraceable as exc:  # tracing is best effort: cascade is an optimisation of the genome
        note = f"{exc}; neuron death will not cascade between layers, and offspring cannot be compacted"
        warnings.warn(note, stacklevel=2)
        return Architecture(layers, {}, [], {}, other, {}, {}, traced=False, note=note)
    return _Tracer(model, layers, graph, other).run()


class _Tracer(AttentionTracing):
    def __init__(self, model, layers, gm: fx.GraphModule, other_params):
        self.modules = dict(gm.named_modules())
        # a module called more than once (shared weights) is compacted once: its calls are not followed
        self.calls = Counter(node.target for node in gm.graph.nodes if node.op == "call_module")
        self.by_name = {layer.name: layer for layer in layers}
        self.layers = layers
        self.gm = gm
        self.other_params = other_params
        self.maps: dict[fx.Node, ChannelMap | None] = {}
        self.inputs: dict[str, list[ChannelMap]] = {}
        self.order: list[str] = []
        self.attachments: list[Attachment] = []
        self.macs: dict[str, int] = {}
        self.parameters: set[fx.Node] = set()  # get_attr nodes, and views of them
        self.parameter_names: dict[fx.Node, str] = {}  # those nodes -> the parameter's full name
        self.parameter_shapes = {name: tuple(p.shape) for name, p in gm.named_parameters()}
        # for each dimension of those nodes, the parameter's dimension it holds (None: a size-1 one)
        self.parameter_dims: dict[fx.Node, list[int | None]] = {}
        self.channel_parameters: list[ChannelParameter] = []
        self.channel_readers: dict[str, set[fx.Node]] = {}  # parameter name -> the nodes reading it per channel
        self.layer_norms: list[LayerNormUse] = []
        self.attention: list[AttentionHeads] = []
        self.sized_views: list[SizedView] = []
        self.permutations: list[ChannelPermutation] = []
        self.splits: list[ChannelSplit] = []
        self.parts: dict[fx.Node, list[ChannelMap]] = {}  # chunk nodes -> their parts' maps
        # nodes holding channels split over several dimensions -> (the tensor before the split, its map,
        # the split's position tie, which of its channels each channel is)
        self.shuffles: dict[fx.Node, tuple[fx.Node, ChannelMap, int, torch.Tensor]] = {}
        self.attention_outputs: dict[fx.Node, ChannelMap] = {}  # attention nodes -> their output's map
        self.sinks = {layer.name: torch.zeros(layer.out_channels, dtype=torch.bool, device="cpu") for layer in layers}
        self.pinned = {name: sink.clone() for name, sink in self.sinks.items()}
        self.couplings: list[ChannelMap] = []
        self.reasons: dict[str, list[str]] = {}
        self.position_ties: list[tuple[ChannelMap, torch.Tensor]] = []
        self.other_macs: dict[str, int] = {}

    def run(self) -> Architecture:
        for node in self.gm.graph.nodes:
            self.maps[node] = self._visit(node)
        self._read_elsewhere()
        unused = [layer for layer in self.layers if layer.name not in self.order]
        ordered = [self.by_name[name] for name in self.order] + unused
        return Architecture(
            ordered,
            self.inputs,
            self.attachments,
            self.macs,
            self.other_params,
            self.sinks,
            self.pinned,
            self.couplings,
            pin_reasons=self.reasons,
            position_ties=[tie for tie in self.position_ties if tie is not None],
            other_macs=self.other_macs,
            channel_parameters=self.channel_parameters,
            layer_norms=self.layer_norms,
            attention=self.attention,
            sized_views=self.sized_views,
            permutations=self.permutations,
            splits=self.splits,
        )

    def _sink(self, value, reason: str, pin: bool = True) -> None:
        """The neurons feeding ``value`` (a node, or a map) are read by something other than synapses;
        unless ``pin`` is False, their channels must also stay in the tensor, because of ``reason``."""
        self._mark(self.sinks, value)
        if pin:
            self._pin(value, reason)

    def _pin(self, value, reason: str) -> None:
        """The channels of ``value`` must all stay in the tensor (see `Architecture.pinned`)."""
        for layer in self._mark(self.pinned, value):
            self._reason(layer, reason)

    def _reason(self, layer: str, reason: str) -> None:
        reasons = self.reasons.setdefault(layer, [])
        if reason not in reasons:
            reasons.append(reason)

    def _mark(self, marks: dict[str, torch.Tensor], value) -> set[str]:
        m = self.maps.get(value) if isinstance(value, fx.Node) else value if isinstance(value, ChannelMap) else None
        marked = set()
        for src in m.sources if m is not None else ():
            if src.producer is not None:
                marks[src.producer][src.index[src.index >= 0]] = True
                marked.add(src.producer)
        return marked

    def _describe(self, node: fx.Node) -> str:
        """The operation of ``node`` in words, for the reasons of pinned neurons."""
        if node.op == "call_module":
            return f"{node.target} ({type(self.modules[node.target]).__name__})"
        if node.op == "call_method":
            return f".{node.target}()"
        return getattr(node.target, "__name__", str(node.target)) + "()"

    def _opaque(self, node: fx.Node) -> str:
        what = self._describe(node)
        if node.target is F.layer_norm or (
            node.op == "call_module" and isinstance(self.modules[node.target], nn.LayerNorm)
        ):
            return f"read by {what}: its statistics read every channel, so removing one changes the others"
        if node.target in ("chunk", torch.chunk, "split", torch.split):
            return f"read by {what}, whose parts evopop cannot follow (only chunks into equal parts)"
        return f"read by {what}, which evopop cannot see through"

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _shape(node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def _barrier(self, node) -> ChannelMap | None:
        """An operation evopop cannot see through: its inputs are used, its output always alive."""
        for arg in node.all_input_nodes:
            self._sink(arg, self._opaque(node))
        shape = self._shape(node)
        if shape is None or len(shape) < 2:
            return None
        return ChannelMap.always_alive(1, shape[1])

    def _input_map(self, node) -> ChannelMap | None:
        return self.maps.get(node) if isinstance(node, fx.Node) else None

    # -- dispatch ---------------------------------------------------------------------------
    def _visit(self, node: fx.Node) -> ChannelMap | None:
        if node.op == "placeholder":
            return self._barrier(node)
        if node.op == "get_attr":
            return self._parameter(node)
        if node.op == "call_module":
            result = self._module(node, self.modules[node.target])
        elif node.op in ("call_function", "call_method"):
            result = self._function(node)
        else:  # the output: whatever it returns is used
            for arg in node.all_input_nodes:
                self._sink(arg, "the network's output")
            return None
        if result is None and not _is_shape_query(node):
            for arg in node.all_input_nodes:  # a tensor the wiring cannot follow: its inputs are used
                self._sink(arg, self._opaque(node))
        if node.op == "call_method" and str(node.target).endswith("_") and node.args:
            self.maps[node.args[0]] = result  # in place: later readers of the tensor read this
        if result is not None and result.block is not None and node not in self.shuffles:
            if node.args and node.args[0] in self.shuffles:  # .contiguous() and the like
                self.shuffles[node] = self.shuffles[node.args[0]]
        return result

    def _parameter(self, node) -> ChannelMap | None:
        """A parameter or buffer read directly: alive, never a neuron. A synaptic layer's own weight
        read this way (weight tying, a subclass traced through) keeps that layer whole."""
        owner = str(node.target).rsplit(".", 1)[0]
        if owner in self.sinks:
            self.sinks[owner][:] = True
            self.pinned[owner][:] = True
            self._reason(
                owner, f"its weight is read directly ({node.target}: weight tying, or a subclass traced through)"
            )
        self.parameters.add(node)
        if str(node.target) in self.parameter_shapes:  # not a buffer
            self.parameter_names[node] = str(node.target)
            self.parameter_dims[node] = list(range(len(self.parameter_shapes[str(node.target)])))
        shape = self._shape(node)
        return ChannelMap.always_alive(1, shape[1]) if shape and len(shape) >= 2 else None

    def _module(self, node, module) -> ChannelMap | None:
        first = first_input(node)
        src = self._input_map(first)
        out_shape = self._shape(node)
        if isinstance(module, SYNAPTIC_TYPES):
            return self._synaptic(node, module, first, src, out_shape)
        if isinstance(module, nn.MultiheadAttention):
            return self._attention(node, module)
        if is_packed_attention(module):
            return self._packed_attention(node, module)
        if is_window_attention(module):
            return self._window_attention(node, module)
        if isinstance(module, (nn.TransformerEncoder, nn.TransformerEncoderLayer)):
            return self._transformer_layers(node, module)
        if type(module) is nn.LayerNorm and self.calls[node.target] == 1:  # (a subclass: traced through)
            params = [f"{node.target}.{p}" for p in ("weight", "bias") if getattr(module, p, None) is not None]
            shared = any(p not in self.parameter_shapes for p in params)  # another module's too (listed once)
            if not shared and self._layer_norm(
                node, node.target, src, module.normalized_shape, module.eps, params, out_shape
            ):
                return src
        if isinstance(module, nn.Flatten):
            return self._reshape(src, self._shape(first), out_shape, node)
        if isinstance(module, _PRESERVING_MODULES) and self._keeps_channels(src, out_shape, module):
            if isinstance(module, _PER_CHANNEL_PARAM_MODULES) and not self._attach(node.target, module, src):
                # per-channel state evopop cannot slice: keep every channel
                self._pin(src, f"feeds {self._describe(node)}, whose per-channel state evopop cannot slice")
            if isinstance(module, nn.GroupNorm) and module.num_groups < module.num_channels:
                # a group's statistics read every channel of the group: a dead channel is still used, and
                # the group goes whole (a coupling group), so nothing needs pinning
                self._sink(src, "", pin=False)
            unweighted = isinstance(module, _PER_CHANNEL_PARAM_MODULES) and getattr(module, "weight", None) is None
            shifted = isinstance(module, nn.Hardtanh) and not module.min_val <= 0 <= module.max_val
            if (
                unweighted or shifted or isinstance(module, _NONZERO_AT_ZERO_MODULES)
            ):  # a dead channel is no longer zero
                return replace(src, zero_when_dead=False)
            return src
        return self._barrier(node)

    def _function(self, node) -> ChannelMap | None:
        target = node.target
        out_shape = self._shape(node)
        first = self._input_map(node.args[0]) if node.args else None
        if target in _CAT:
            return self._cat(node, out_shape)
        if target is operator.getitem and node.args[0] in self.attention_outputs:
            return self.attention_outputs[node.args[0]]  # its output, not its weights: see `_attention`
        if target is operator.getitem and node.args[0] in self.parts:
            return self.parts[node.args[0]][node.args[1]]
        if target in ("chunk", torch.chunk) and first is not None:
            chunked = self._chunk(node, first)
            if chunked is not None:
                return chunked
        if target is operator.getitem and first is not None:
            indexed = self._index(node, first, out_shape)
            if indexed is not None:
                return indexed
        if _is_patch_merging(target) and first is not None and first.block is None:
            return concatenate([first] * 4, first.dim)  # four pixels' channels side by side
        if is_window_attention_function(target):
            self._count_window_attention(node)  # then a barrier: its heads are not followed
        if target is F.layer_norm and self._functional_layer_norm(node, first, out_shape):
            return first
        viewing = target in _RESHAPES_FUNCTIONS or target in _RESHAPES_METHODS or target == "expand"
        if viewing and node.args and node.args[0] in self.parameter_names:
            return self._parameter_view(node, out_shape)
        if target in _ELEMENTWISE or target in _ELEMENTWISE_METHODS:
            return self._elementwise(node, out_shape, product=target in _PRODUCTS)
        if target in _RESHAPES_FUNCTIONS or target in _RESHAPES_METHODS:
            return self._reshape(first, self._shape(node.args[0]), out_shape, node)
        if target in _TRANSPOSES:
            moved = self._transpose(node, first, out_shape)
            if moved is not None:
                return moved
        if target in _REDUCTIONS:
            reduced = self._reduction(node, first, out_shape)
            if reduced is not None:
                return reduced
        if target in _PRESERVING_FUNCTIONS or target in _PRESERVING_METHODS or _preserves_by_name(target):
            if self._keeps_channels(first, out_shape, target) and _pads_no_channels(node, out_shape):
                for arg in node.all_input_nodes[1:]:  # other tensors (clamp bounds, ...) are read too
                    if self._shape(arg) is None:
                        continue  # not a tensor: a size, a scale factor
                    why = f"sized by another tensor in {self._describe(node)}"
                    self._sink(arg, why)
                    self._pin(node.args[0], why)  # their sizes are fixed: so is the number of channels
                return replace(first, zero_when_dead=False) if _moves_zero(node) else first
        if _is_shape_query(node):
            return None
        return self._barrier(node)

    @staticmethod
    def _keeps_channels(src: ChannelMap | None, out_shape, op=None) -> bool:
        """``op`` maps channel k of its input to channel k of its output. Spatial operations (pooling,
        padding) must see channels on dimension 1 of a batched input of their rank: otherwise they
        would pool or pad across channels."""
        if src is None or out_shape is None or not src.fits(out_shape):
            return False
        rank = _spatial_rank(op)
        return rank is None or (src.dim == 1 and len(out_shape) == rank + 2)

    # -- node kinds -------------------------------------------------------------------------
    def _synaptic(self, node, module, first, src, out_shape) -> ChannelMap | None:
        name = node.target
        layer = self.by_name[name]
        in_shape = self._shape(first)
        if in_shape is None:
            return self._barrier(node)
        expected_dim = (len(in_shape) - 1) if layer.kind == "linear" else 1
        if src is None or src.dim != expected_dim or src.size != layer.in_channels or src.block is not None:
            self._sink(first, f"read by {name} in a way evopop cannot follow")
            src = ChannelMap.always_alive(expected_dim, layer.in_channels)
        self.inputs.setdefault(name, []).append(src)
        if len(self.inputs[name]) > 1:
            # compaction slices a layer's inputs once: keep them all (and a grouped layer's groups)
            for m in self.inputs[name]:
                self._pin(m, f"read by {name}, which is called {len(self.inputs[name])} times")
            if layer.groups > 1:
                self.pinned[name][:] = True
                self._reason(name, f"a grouped layer called {len(self.inputs[name])} times")
        if name not in self.order:
            self.order.append(name)
        self.macs[name] = self.macs.get(name, 0) + _uses_per_synapse(layer, in_shape, out_shape)
        if out_shape is None:
            return None
        out_dim = (len(out_shape) - 1) if layer.kind == "linear" else 1
        return ChannelMap.of_layer(name, out_dim, layer.out_channels)

    def _functional_layer_norm(self, node, src, out_shape) -> bool:
        """``F.layer_norm(x, shape, weight, bias, eps)`` (a layer norm subclass traced through)."""
        names = LAYER_NORM_ARGUMENTS
        given = arguments(node, names)
        params = [given.get(p) for p in ("weight", "bias") if given.get(p) is not None]
        if not all(p in self.parameter_names for p in params):
            return False  # weights computed from something: not ours to slice
        names_ = [self.parameter_names[p] for p in params]
        shape = given.get("normalized_shape")
        return self._layer_norm(node, None, src, shape, given.get("eps", 1e-5), names_, out_shape)

    def _layer_norm(self, node, module: str | None, src, normalized_shape, eps, params, out_shape) -> bool:
        """A layer norm over the channels alone (the last dimension): its statistics use every
        channel, so its neurons are used, but a dead one is a zero and can go (see `LayerNormUse`).
        False where it normalises anything else (several dimensions, or not the channels)."""
        shape = tuple(normalized_shape) if isinstance(normalized_shape, (tuple, list)) else (normalized_shape,)
        if src is None or src.block is not None or out_shape is None or not src.fits(out_shape):
            return False
        if shape != (src.size,) or src.dim != len(out_shape) - 1:
            return False
        if not src.zero_when_dead or not params or not params[0].endswith("weight"):
            return False  # a dead channel must be a zero in, and (its weight masked) a zero out
        if module is not None and any(use.module == module for use in self.layer_norms):
            return False  # called twice: compaction replaces a module once
        for name in params:
            self._channel_parameter(name, 0, src, node)
        self._sink(src, "", pin=False)
        self.layer_norms.append(LayerNormUse(node.name, module, src, float(eps)))
        return True

    def _channel_parameter(self, name: str, dim: int, src: ChannelMap, reader: fx.Node) -> None:
        """Record ``name`` as holding ``src``'s channels along ``dim`` where ``reader`` reads it; read with
        two maps, it keeps them all."""
        earlier = [p for p in self.channel_parameters if p.name == name]
        if earlier:
            for m in (*(p.inputs for p in earlier), src):
                self._pin(m, f"sized by {name}, which is read in {len(earlier) + 1} places")
        shape = self.parameter_shapes[name]
        self.channel_parameters.append(ChannelParameter(name, dim, shape, src))
        self.channel_readers.setdefault(name, set()).add(reader)

    def _read_elsewhere(self) -> None:
        """A per-channel parameter also read by anything else (an opaque operation, a sum over it) can be
        neither zeroed nor sliced where its channels die: its channels stay, and it stays whole."""
        readers: dict[str, set[fx.Node]] = {}
        for node in self.gm.graph.nodes:
            if node.op == "call_module":  # a module reads its own parameters
                for name in self.channel_readers:
                    if name.rsplit(".", 1)[0] == node.target:
                        readers.setdefault(name, set()).add(node)
            if node.op != "get_attr" or str(node.target) not in self.channel_readers:
                continue
            name, views = str(node.target), [node]
            while views:
                for user in views.pop().users:
                    if user in self.parameter_dims and self.parameter_names.get(user) == name:
                        views.append(user)  # a view of it: follow its readers
                    elif not _is_shape_query(user):
                        readers.setdefault(name, set()).add(user)
        for name in list(self.channel_readers):
            others = readers.get(name, set()) - self.channel_readers[name]
            if others:
                for read in [p for p in self.channel_parameters if p.name == name]:
                    self._pin(read.inputs, f"scaled by {name}, which {self._describe(next(iter(others)))} also reads")
                self.channel_parameters = [p for p in self.channel_parameters if p.name != name]
                del self.channel_readers[name]

    def _parameter_view(self, node, out_shape) -> ChannelMap | None:
        """A parameter reshaped by adding or dropping dimensions of size 1 (``gamma.view(1, -1, 1, 1)``), or
        expanded (``class_token.expand(n, -1, -1)``), is still that parameter as far as channels go;
        anything else computed from it is a tensor."""
        source = node.args[0]
        dims, shape = self.parameter_dims[source], self._shape(source)
        if shape is not None and out_shape is not None:
            larger = [i for i, d in enumerate(shape) if d != 1]
            if node.target == "expand" and len(out_shape) >= len(shape):
                lead = [None] * (len(out_shape) - len(shape))
                self.parameter_dims[node] = lead + [dims[i] if shape[i] != 1 else None for i in range(len(shape))]
            elif node.target != "expand" and [shape[i] for i in larger] == [d for d in out_shape if d != 1]:
                held = iter(dims[i] for i in larger)
                self.parameter_dims[node] = [next(held) if d != 1 else None for d in out_shape]
        if node in self.parameter_dims:
            self.parameters.add(node)
            self.parameter_names[node] = self.parameter_names[source]
        return ChannelMap.always_alive(1, out_shape[1]) if out_shape and len(out_shape) >= 2 else None

    def _parameter_channels(self, param: fx.Node, out_shape, channels: ChannelMap) -> int | None:
        """The dimension of the parameter behind ``param`` that holds ``channels`` once ``param`` is
        broadcast into ``out_shape`` (right-aligned); None where it has none (a value for every channel)."""
        shape = self._shape(param)
        if param not in self.parameter_dims or shape is None or channels.block is not None:
            return None
        at = channels.dim - (len(out_shape) - len(shape))
        if at < 0 or shape[at] != channels.size:
            return None
        return self.parameter_dims[param][at]

    def _attach(self, name: str, module: nn.Module, src: ChannelMap) -> bool:
        """Record ``module``'s per-channel parameters and buffers; False if it has state of another size."""
        earlier = [a.inputs for a in self.attachments if a.module == name]
        if earlier:  # called on several tensors: compaction slices a module once, so keep every channel
            for m in (*earlier, src):
                self._pin(m, f"feeds {name}, which is called {len(earlier) + 1} times")
        params = tuple(f"{name}.{p}" for p, t in module.named_parameters(recurse=False) if t.numel() == src.size)
        buffers = tuple(f"{name}.{b}" for b, t in module.named_buffers(recurse=False) if t is not None and t.dim() == 1)
        sizes = [t.numel() for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)) if t.dim()]
        if src.dim != 1 or src.block is not None or any(size not in (src.size, 1) for size in sizes):  # 1: shared
            return False
        # recorded even without state: compaction also sets the channel count (num_features, num_groups)
        groups = module.num_groups if isinstance(module, nn.GroupNorm) else 0
        self.attachments.append(Attachment(name, params, src, buffers, groups))
        return True

    def _cat(self, node, out_shape) -> ChannelMap | None:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if out_shape is None:
            return None
        dim = dim % len(out_shape)
        maps = [self._input_map(t) for t in tensors]
        if all(m is not None and m.dim == dim and m.block is None for m in maps):
            return concatenate(maps, dim)
        joined = self._join(node, tensors, dim, out_shape)
        return joined if joined is not None else self._barrier(node)

    def _join(self, node, tensors, dim: int, out_shape) -> ChannelMap | None:
        """A concatenation along another dimension than the channels' (a class token before the patch
        tokens): channel j of the result is channel j of every part, so the parts' channels are tied as
        by a sum; a parameter part (the class token) is one more per-channel parameter of them."""
        parts = [t for t in tensors if t not in self.parameters]
        maps = [self._input_map(t) for t in parts]
        if not maps or any(m is None or m.block is not None or m.dim == dim for m in maps):
            return None
        if len({m.dim for m in maps}) > 1 or any(len(self._shape(t) or ()) != len(out_shape) for t in parts):
            return None
        result = union(maps)
        if not result.fits(out_shape):
            return None
        everywhere = False
        for param in (t for t in tensors if t in self.parameters):
            everywhere |= not self._elementwise_parameter(node, param, out_shape, result, product=False)
        if everywhere:
            result = union([result, ChannelMap.always_alive(result.dim, result.size)])
        if len(result.sources) > 1:
            self.couplings.append(result)
        return result

    def _elementwise(self, node, out_shape, product: bool) -> ChannelMap | None:
        if out_shape is None or len(out_shape) < 2:
            return self._barrier(node)
        aligned, misaligned = [], False
        parameters = [arg for arg in node.all_input_nodes if arg in self.parameters]
        for arg in node.all_input_nodes:  # scalars are not neurons; keyword operands are
            if arg in self.parameters:
                continue
            m = self._input_map(arg)
            if (
                m is not None
                and m.block is None
                and m.fits(out_shape)
                and len(self._shape(arg) or ()) == len(out_shape)
            ):
                aligned.append(m)
            elif m is not None and m.sources:
                misaligned = True  # broadcast from living neurons over all channels
                self._sink(m, f"broadcast over every channel by {self._describe(node)}")
            elif m is None and not product:
                misaligned = True  # a number computed from the graph (a size, a norm): in every channel
        if not aligned or len({m.dim for m in aligned}) > 1:
            return self._barrier(node)
        result = union(aligned)
        # a summand with a value for every channel (a constant, a parameter that is no channel's own): none can die
        everywhere = not product and _adds_a_constant(node)
        for param in parameters:
            everywhere |= not self._elementwise_parameter(node, param, out_shape, result, product)
        if (misaligned or everywhere) and not product:
            result = union([result, ChannelMap.always_alive(result.dim, result.size)])
        if len(result.sources) > 1:
            self.couplings.append(result)
        return result

    def _elementwise_parameter(self, node, param, out_shape, result: ChannelMap, product: bool) -> bool:
        """A parameter multiplied or added in. With a value per channel (a layer scale, a position
        embedding) it is one more per-channel parameter of those channels, like a dead neuron's bias:
        zero where they are dead, sliced with them. Varying along the channels otherwise (a parameter
        evopop cannot slice) it fixes their number, and pins them. False: it is not a channel's own."""
        dim = self._parameter_channels(param, out_shape, result)
        divisor = node.target in _DIVISIONS and param is not node.args[0]  # zeroed, it would divide by zero
        if dim is not None and not divisor:
            self._channel_parameter(self.parameter_names[param], dim, result, node)
            return True
        shape = self._shape(param)
        at = result.dim - (len(out_shape) - len(shape)) if shape is not None else -1
        if at >= 0 and shape[at] > 1:
            verb = "multiplied" if product else "added"
            self._pin(result, f"{verb} by {self._describe(node)} with a parameter of fixed size")
        return False

    def _chunk(self, node, src: ChannelMap) -> ChannelMap | None:
        """``x.chunk(n, dim)``: along the channels, part i holds the i-th n-th of them (compaction splits
        the kept ones, `ChannelSplit`); along another dimension every part holds them all."""
        given = arguments(node, ("input", "chunks", "dim"))
        parts, dim, shape = given.get("chunks"), given.get("dim", 0), self._shape(node.args[0])
        if not isinstance(parts, int) or not isinstance(dim, int) or shape is None or src.block is not None:
            return None
        if dim % len(shape) != src.dim:
            self.parts[node] = [src] * parts
            return src
        if src.size % parts:
            return None
        size = src.size // parts
        self.parts[node] = [
            replace(
                src, size=size, sources=[Source(s.producer, s.index[i * size : (i + 1) * size]) for s in src.sources]
            )
            for i in range(parts)
        ]
        self.splits.append(ChannelSplit(node.name, src.dim, src, parts))
        return src

    def _index(self, node, src: ChannelMap, out_shape) -> ChannelMap | None:
        """``x[:, 0]`` and other basic indexing that takes every channel: channel k stays channel k (on
        the dimension it moves to); None for anything else (the channels indexed, ``...``, ``None``)."""
        index = node.args[1] if len(node.args) > 1 else None
        index = index if isinstance(index, tuple) else (index,)
        if src.block is not None or out_shape is None or any(not isinstance(i, (int, slice)) for i in index):
            return None
        if len(index) > src.dim and index[src.dim] != slice(None):  # (dimensions not indexed are taken whole)
            return None
        dim = src.dim - sum(isinstance(i, int) for i in index[: src.dim])
        if len(out_shape) <= dim or out_shape[dim] != src.size:
            return None
        return replace(src, dim=dim, sources=list(src.sources))

    def _reduction(self, node, src, out_shape) -> ChannelMap | None:
        """A mean, sum or max over dimensions other than the channels' (a global pooling written as
        ``x.mean((2, 3))``): channel k stays channel k; None where it reduces the channels too."""
        in_shape = self._shape(node.args[0]) if node.args else None
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if src is None or src.block is not None or in_shape is None or out_shape is None or dims is None:
            return None
        dims = [dims] if isinstance(dims, int) else list(dims)
        if not all(isinstance(d, int) for d in dims):
            return None
        dims = {d % len(in_shape) for d in dims}
        if src.dim in dims:
            return None
        dim = src.dim if keepdim else src.dim - sum(d < src.dim for d in dims)
        if len(out_shape) <= dim or out_shape[dim] != src.size:
            return None
        return replace(src, dim=dim, sources=list(src.sources))

    def _reshape(self, src, in_shape, out_shape, node) -> ChannelMap | None:
        if src is None or in_shape is None or out_shape is None:
            return self._barrier(node)
        if in_shape == out_shape:
            return src
        is_flatten = len(out_shape) == 2 and out_shape[0] == in_shape[0] and src.dim == 1 and src.block is None
        if is_flatten and len(in_shape) >= 2:
            spatial = 1
            for d in in_shape[2:]:
                spatial *= d
            return src.flatten(spatial)
        kept = self._reshape_behind_channels(src, in_shape, out_shape, node)
        if kept is not None:
            return kept
        moved = self._regroup(src, in_shape, out_shape, node)
        return moved if moved is not None else self._barrier(node)

    def _reshape_behind_channels(self, src, in_shape, out_shape, node) -> ChannelMap | None:
        """A reshape that merges or splits only the dimensions after the channels' (``x.flatten(2)``: the
        pixels of an image become tokens) leaves the channels where they are. Where it names their
        number as a constant, compaction writes the kept number in its place (`SizedView`)."""
        d = src.dim
        if src.block is not None or tuple(in_shape[: d + 1]) != tuple(out_shape[: d + 1]) or node.op == "call_module":
            return None
        if node.target in (torch.flatten, "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            return src if isinstance(start, int) and start % len(in_shape) > d else None
        sizes = _view_sizes(node)
        if sizes is None or len(sizes) != len(out_shape):
            return None
        if isinstance(sizes[d], int) and sizes[d] == src.size:
            self.sized_views.append(SizedView(node.name, d, src))
        elif not (sizes[d] == -1 or isinstance(sizes[d], fx.Node)):
            return None
        return src

    def _regroup(self, src, in_shape, out_shape, node) -> ChannelMap | None:
        """A view that splits the channel dimension into several, or merges them back, and leaves the
        other dimensions alone (a channel shuffle's two views). The split must have exactly one size
        computed from the tensor (the others are constants): that one shrinks when channels are removed,
        so the channels that differ only along the constant dimensions are tied together."""
        if node.op == "call_module":
            return None
        if all(s.producer is None for s in src.sources) and len(out_shape) >= 2:
            return ChannelMap.always_alive(1, out_shape[1])  # no neuron to follow (a barrier's output)
        d, block = src.dim, src.block or (src.size,)
        prefix, suffix = in_shape[:d], in_shape[d + len(block) :]
        end = len(out_shape) - len(suffix)
        middle = tuple(out_shape[d:end])
        if tuple(out_shape[:d]) != tuple(prefix) or tuple(out_shape[end:]) != tuple(suffix) or not middle:
            return None
        if math.prod(middle) != src.size:
            return None
        sizes = _view_sizes(node)
        if sizes is None or len(sizes) != len(out_shape):
            return None
        adaptive = [i for i, size in enumerate(sizes[d:end]) if not isinstance(size, int) or size == -1]
        if len(adaptive) != 1:
            return None  # a fixed size would not fit the compacted network; two would be ambiguous
        if len(middle) > 1:  # position of a channel: its index along the dimension that shrinks
            a = adaptive[0]
            along = torch.arange(middle[a]).view([-1 if i == a else 1 for i in range(len(middle))])
            self.position_ties.append((src, along.expand(middle).reshape(-1)))
            if src.block is None:
                self.shuffles[node] = (node.args[0], src, len(self.position_ties) - 1, torch.arange(src.size))
        elif src.block is not None:
            self._merged(node)
        return replace(src, dim=d, sources=list(src.sources), block=middle if len(middle) > 1 else None)

    def _merged(self, node) -> None:
        """Channels split over several dimensions are merged back: if nothing but reordering happened in
        between (each step read once), the whole is a permutation of the channels (`ChannelPermutation`),
        and the split's position tie is no longer needed."""
        shuffle = self.shuffles.get(node.args[0])
        if shuffle is None:
            return
        origin, channels, tie, order = shuffle
        step = node.args[0]
        while step is not origin:
            if len(step.users) != 1:
                return
            step = step.args[0]
        self.position_ties[tie] = None
        self.permutations.append(ChannelPermutation(node.name, origin.name, channels.dim, channels, order))

    def _transpose(self, node, src, out_shape) -> ChannelMap | None:
        """A transpose or permute: inside a channel block it reorders the channels; of the channel
        dimension alone it moves it (channels-last and back)."""
        in_shape = self._shape(node.args[0]) if node.args else None
        if src is None or in_shape is None or out_shape is None:
            return None
        if all(s.producer is None for s in src.sources) and len(out_shape) >= 2:
            return ChannelMap.always_alive(1, out_shape[1])  # no neuron to follow (a barrier's output)
        perm = _permutation(node, len(in_shape))
        if perm is None:
            return None
        block = src.block or (src.size,)
        region = range(src.dim, src.dim + len(block))
        if len(block) == 1:
            return replace(src, dim=perm.index(src.dim), sources=list(src.sources))
        if any((j in region) != (perm[j] in region) or (j not in region and perm[j] != j) for j in range(len(perm))):
            return None
        local = [perm[j] - src.dim for j in region]
        order = torch.arange(src.size).view(block).permute(local).reshape(-1)
        if node.args[0] in self.shuffles:
            origin, channels, tie, before = self.shuffles[node.args[0]]
            self.shuffles[node] = (origin, channels, tie, before[order])
        return src.reordered(order, src.dim, tuple(block[i] for i in local))


_SHAPE_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"}


def _is_shape_query(node: fx.Node) -> bool:
    """Reads a tensor's metadata, not its values: no neuron is used by it."""
    if node.op == "call_method":
        return node.target in ("size", "dim")
    return node.target is getattr and len(node.args) > 1 and node.args[1] in _SHAPE_ATTRIBUTES


def _view_sizes(node: fx.Node) -> list | None:
    """The sizes a view / reshape asks for: ints (constants, -1) or nodes (computed from a tensor)."""
    sizes = list(node.args[1:]) if node.op == "call_method" else list(node.args[1:2])
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = list(sizes[0])
    if node.op != "call_method" and not sizes:
        sizes = node.kwargs.get("shape")
    return sizes or None


def _permutation(node: fx.Node, rank: int) -> list[int] | None:
    """The dimension order of a transpose or permute: output dimension i is input dimension perm[i]."""
    args = list(node.args[1:])
    if node.target in (torch.transpose, "transpose"):
        if len(args) != 2 or not all(isinstance(a, int) for a in args):
            return None
        a, b = (x % rank for x in args)
        perm = list(range(rank))
        perm[a], perm[b] = perm[b], perm[a]
        return perm
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = list(args[0])
    if len(args) != rank or not all(isinstance(a, int) for a in args):
        return None
    return [a % rank for a in args]


def _preserves_by_name(target) -> bool:
    return qualified_name(target) in _PRESERVING_BY_NAME


def _moves_zero(node: fx.Node) -> bool:
    """The operation maps a zero elsewhere: a sigmoid, a clamp whose range excludes 0, a constant pad."""
    if node.target in _NONZERO_AT_ZERO:
        return True
    given = {**dict(enumerate(node.args)), **node.kwargs}
    if node.target is F.pad:
        return bool(given.get(3, given.get("value", 0)))
    if node.target in ("clamp", "clamp_min", F.hardtanh):
        low = given.get(1, given.get("min", given.get("min_val")))
        high = given.get(2, given.get("max", given.get("max_val")))
        return not isinstance(low, (int, float, type(None))) or (low or 0) > 0 or (high is not None and high < 0)
    return False


def _adds_a_constant(node: fx.Node) -> bool:
    """``x + 1``, ``1 - x``: a nonzero number added (``alpha=`` scales an operand, it adds nothing)."""
    operands = [*node.args, *(v for k, v in node.kwargs.items() if k != "alpha")]
    return any(isinstance(a, (int, float)) and not isinstance(a, bool) and a != 0 for a in operands)


def _is_patch_merging(target) -> bool:
    """torchvision's Swin ``_patch_merging_pad``: pads, then concatenates the channels of 2x2 pixels."""
    return qualified_name(target) == ("torchvision.models.swin_transformer", "_patch_merging_pad")


def _spatial_rank(op) -> int | None:
    """1, 2 or 3 for pooling and padding operations of that many spatial dimensions, else None."""
    name = op if isinstance(op, str) else getattr(op, "__name__", type(op).__name__)
    lowered = name.lower()
    if "pool" not in lowered and "pad" not in lowered:
        return None
    for rank in (1, 2, 3):
        if f"{rank}d" in lowered:
            return rank
    return None


def _pads_no_channels(node: fx.Node, out_shape) -> bool:
    """``F.pad`` pads the last dimensions first: it must stop before the channel dimension."""
    if node.target is not F.pad:
        return True
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad", ())
    return out_shape is not None and len(pad) <= 2 * (len(out_shape) - 2)


def _uses_per_synapse(layer: SynapticLayer, in_shape, out_shape) -> int:
    """How many multiply-accumulates each synapse performs for one sample."""
    if in_shape is None or out_shape is None:
        return 0
    if layer.kind == "conv":
        positions = out_shape[2:]
    elif layer.kind == "deconv":
        positions = in_shape[2:]
    else:
        positions = in_shape[1:-1]
    n = 1
    for d in positions:
        n *= d
    return n
