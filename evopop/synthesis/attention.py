"""How attention wires neurons: the part of `evopop.synthesis.architecture`'s tracer that follows
``nn.MultiheadAttention``, timm's ``Attention`` and torchvision's Swin window attention.

A followed self-attention's packed Q/K/V projection is a synaptic layer whose units come in heads; a
head's Q, K and V units are one coupling group (a dead head adds nothing to the output, so compaction
can remove it: `evopop.compaction.attention`), the scores read the Q and K units (used, though no
synapse reads them), and the output projection reads the V units. An attention it cannot follow
(called twice, cross-attention, a mask per head, ...) is counted and kept whole.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
from torch import fx, nn

from .nodes import arguments, default, first_input, qualified_name
from .wiring import ChannelMap, Source


@dataclass(frozen=True)
class AttentionHeads:
    """The heads of an attention evopop follows (``nn.MultiheadAttention``, timm's, Swin's): ``projection``
    (its packed input projection, a synaptic layer) holds Q, K and V units of ``heads`` heads; a head
    lives while any of its units does, and its products (QK^T and AV, ``macs`` for all heads) go with it."""

    module: str
    projection: str
    heads: int
    macs: int

    def living(self, units: torch.Tensor) -> torch.Tensor:
        """Bool per head, from a bool per unit of the projection."""
        return units.view(3, self.heads, -1).any(dim=2).any(dim=0)

    def removed_products(self, kept_heads: int) -> int:
        """The products' MACs of the heads beyond ``kept_heads``."""
        return self.macs - self.macs * kept_heads // self.heads


def is_window_attention(m: nn.Module) -> bool:
    """torchvision's Swin attention (``ShiftedWindowAttention``; not V2's cosine attention): ``qkv`` and
    ``proj`` Linears around windowed attention with a relative position bias per head."""
    return (
        type(m).__name__ == "ShiftedWindowAttention"
        and isinstance(getattr(m, "qkv", None), nn.Linear)
        and isinstance(getattr(m, "proj", None), nn.Linear)
        and "relative_position_bias_table" in m._parameters  # (not getattr: fx proxies it while tracing)
        and not hasattr(m, "logit_scale")
    )


def is_packed_attention(m: nn.Module) -> bool:
    """timm's ``Attention`` and its look-alikes: a ``qkv`` Linear making Q, K and V for ``num_heads`` heads
    of ``head_dim`` channels, scaled dot-product attention, and a ``proj`` Linear reading the heads with
    nothing in between (no ``norm`` over the heads, no gate). Its ``num_heads`` sizes its reshapes, so a
    compacted one is the same module with fewer heads; the compaction check catches any look-alike that
    computes otherwise."""
    qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
    heads, head_dim = getattr(m, "num_heads", None), getattr(m, "head_dim", None)
    if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)):
        return False
    if not (isinstance(heads, int) and isinstance(head_dim, int)):
        return False
    if not isinstance(getattr(m, "norm", nn.Identity()), nn.Identity) or getattr(m, "gate", None) is not None:
        return False
    # nothing else of its own: look-alikes with extra biases or position terms (timm's EvaAttention, ...)
    # compute otherwise; and its reshapes must be sized by its heads (``attn_dim``), not by its input
    if any(p is not None for p in m._parameters.values()) or set(m._modules) - _PACKED_ATTENTION_PARTS:
        return False
    if m._buffers or (type(m).forward.__module__, type(m).forward.__qualname__) != _TIMM_ATTENTION_FORWARD:
        return False  # timm's own forward (a subclass may inherit it), not a look-alike's (AttentionRope, ...)
    for norm in (getattr(m, "q_norm", None), getattr(m, "k_norm", None)):
        if not (
            norm is None or isinstance(norm, nn.Identity) or tuple(getattr(norm, "normalized_shape", ())) == (head_dim,)
        ):
            return False
    width = heads * head_dim
    return getattr(m, "attn_dim", None) == width and qkv.out_features == 3 * width and proj.in_features == width


_TIMM_ATTENTION_FORWARD = ("timm.layers.attention", "Attention.forward")
_PACKED_ATTENTION_PARTS = {"qkv", "q_norm", "k_norm", "attn_drop", "norm", "proj", "proj_drop"}


def is_window_attention_function(target) -> bool:
    return qualified_name(target) == ("torchvision.models.swin_transformer", "shifted_window_attention")


class AttentionTracing:
    """The tracer's methods for attention (mixed into `architecture._Tracer`, whose state they use)."""

    def _attention(self, node, module: nn.MultiheadAttention) -> ChannelMap | None:
        """``nn.MultiheadAttention``: its packed input projection (a synaptic layer named ``<module>.in_proj``),
        its heads, its two products and its output projection (a Linear it applies itself, never called).

        Followed for self-attention whose output alone is read: the input projection reads the input's
        channels; a head's Q, K and V units are one coupling group (a dead head adds nothing to the output,
        so compaction removes it); the scores read the Q and K units (used, though no synapse reads them);
        channel j of the heads' output is V unit j, which the output projection reads. Otherwise (cross
        attention, separate Q, K, V weights, extra key/value biases, the attention weights read, a second
        call) it is counted, its projections are kept whole and its output is a barrier."""
        names = ("query", "key", "value")
        query, key, value = (arguments(node, names).get(n) for n in names)
        shape, key_shape = self._shape(query), self._shape(key if key is not None else query)
        if shape is None or len(shape) != 3 or key_shape is None:
            return self._barrier(node)
        seq = 1 if module.batch_first else 0
        lq, lk = shape[seq], key_shape[seq]
        in_proj, out_proj = (self.by_name.get(f"{node.target}.{p}") for p in ("in_proj", "out_proj"))
        why = self._unfollowable(node, module, query, key, value, in_proj, out_proj)
        if why:
            return self._keep_attention_whole(node, module, in_proj, out_proj, lq, lk, why)
        out = self._heads(node, query, in_proj, out_proj, module.num_heads, module.head_dim, lq, lk)
        self.attention_outputs[node] = out
        return out

    def _heads(self, node, query, projection, output, heads: int, head_dim: int, lq: int, lk: int) -> ChannelMap:
        """What a followed self-attention does to the wiring: ``projection`` (packed Q, K, V) reads the
        query's channels, a head's Q, K and V units are one coupling group, the scores read the Q and K
        units (used, though no synapse reads them), and ``output`` reads the V units."""
        shape, width = self._shape(query), heads * head_dim
        src, dim = self._input_map(query), len(shape) - 1
        if src is None or src.dim != dim or src.size != projection.in_channels or src.block is not None:
            self._sink(query, f"read by {node.target} in a way evopop cannot follow")
            src = ChannelMap.always_alive(dim, projection.in_channels)
        units = ChannelMap.of_layer(projection.name, dim, 3 * width)
        self.position_ties.append((units, (torch.arange(3 * width) % width) // head_dim))
        self._sink(ChannelMap(dim, 2 * width, [Source(projection.name, torch.arange(2 * width))]), "", pin=False)
        values = ChannelMap(dim, width, [Source(projection.name, torch.arange(2 * width, 3 * width))])
        for layer, inputs in ((projection, src), (output, values)):
            self.inputs[layer.name] = [inputs]
            self.order.append(layer.name)
            self.macs[layer.name] = lq  # each synapse once per token
        self.other_macs[node.target] = 2 * lq * lk * width  # QK^T and AV
        self.attention.append(AttentionHeads(node.target, projection.name, heads, 2 * lq * lk * width))
        return ChannelMap.of_layer(output.name, dim, output.out_channels)

    def _window_attention(self, node, module) -> ChannelMap | None:
        """torchvision's Swin attention on (batch, rows, columns, channels): followed like the others
        (`_heads`), over the tokens of the input padded to whole windows, each attending within its window;
        compaction replaces it by a `WindowHeadsAttention`."""
        first = first_input(node)
        shape = self._shape(first)
        qkv, proj = self.by_name[f"{node.target}.qkv"], self.by_name[f"{node.target}.proj"]
        window = module.window_size
        if shape is None or len(shape) != 4:
            return self._barrier(node)
        rows, cols = (math.ceil(size / w) * w for size, w in zip(shape[1:3], window))
        heads = module.num_heads
        if self.calls[node.target] > 1 or len(node.all_input_nodes) != 1:
            products = 2 * rows * cols * window[0] * window[1] * qkv.in_channels
            return self._keep_heads_whole(node, (qkv, proj), rows * cols, products)
        return self._heads(node, first, qkv, proj, heads, qkv.in_channels // heads, rows * cols, window[0] * window[1])

    def _count_window_attention(self, node) -> None:
        """torchvision's Swin attention, a function reading its projections' weights directly: those
        layers stay whole (see `_parameter`), but their MACs and the products are counted, over the
        input padded to whole windows as the function pads it."""
        shape = self._shape(node.args[0])
        weights = [a for a in node.args[1:3] if isinstance(a, fx.Node) and a.op == "get_attr"]
        window = node.args[4] if len(node.args) > 4 else node.kwargs.get("window_size")
        if shape is None or len(shape) != 4 or len(weights) != 2 or not isinstance(window, (list, tuple)):
            return
        rows, cols = (math.ceil(size / w) * w for size, w in zip(shape[1:3], window))
        tokens, per_window = rows * cols, window[0] * window[1]
        for weight in weights:
            layer = str(weight.target).rsplit(".", 1)[0]
            if layer in self.by_name:
                self.macs[layer] = self.macs.get(layer, 0) + tokens
        self.other_macs[node.name] = 2 * tokens * per_window * shape[3]  # QK^T and AV in every window

    def _packed_attention(self, node, module) -> ChannelMap | None:
        """timm's ``Attention`` (see `is_packed_attention`), called on one (batch, tokens, channels) tensor:
        followed like ``nn.MultiheadAttention`` (`_heads`); compaction lowers its ``num_heads``."""
        first = first_input(node)
        shape = self._shape(first)
        qkv, proj = self.by_name[f"{node.target}.qkv"], self.by_name[f"{node.target}.proj"]
        # a mask may be per head (and then would need slicing too): followed without one
        mask = default(node.kwargs.get("attn_mask", node.args[1] if len(node.args) > 1 else None))
        if shape is None or len(shape) != 3 or self.calls[node.target] > 1 or mask is not None:
            return self._keep_packed_attention_whole(node, module, qkv, proj, shape)
        return self._heads(node, first, qkv, proj, module.num_heads, module.head_dim, shape[1], shape[1])

    def _keep_packed_attention_whole(self, node, module, qkv, proj, shape) -> ChannelMap | None:
        tokens = shape[1] if shape is not None and len(shape) == 3 else 1
        products = 2 * tokens * tokens * module.num_heads * module.head_dim
        return self._keep_heads_whole(node, (qkv, proj), tokens, products)

    def _keep_heads_whole(
        self, node, layers, tokens: int, products: int, why: str = "called in a way evopop cannot follow"
    ) -> ChannelMap | None:
        """Count an attention module evopop does not follow (called twice, with a mask, on another
        shape); its projections' neurons stay, its output is a barrier."""
        self.other_macs[node.target] = self.other_macs.get(node.target, 0) + products
        for layer in layers:
            self.macs[layer.name] = self.macs.get(layer.name, 0) + tokens
            self.pinned[layer.name][:] = True
            self._reason(layer.name, f"applied by {self._describe(node)} itself, {why}")
        return self._barrier(node)

    def _transformer_layers(self, node, module: nn.Module) -> ChannelMap | None:
        """``nn.TransformerEncoder`` and ``nn.TransformerEncoderLayer``: torch.fx leaves evopop does not see
        into. Counted (each Linear once per token, attention's products) and kept whole."""
        shape = self._shape(first_input(node))
        blocks = list(module.layers) if isinstance(module, nn.TransformerEncoder) else [module]
        if shape is None or len(shape) != 3 or not blocks:
            return self._barrier(node)
        tokens = shape[1] if blocks[0].self_attn.batch_first else shape[0]
        owner = {id(m): name for name, m in module.named_modules()}
        layers, products = [], 0
        for block in blocks:
            prefix = f"{node.target}.{owner[id(block)]}".rstrip(".")
            names = ("self_attn.in_proj", "self_attn.out_proj", "linear1", "linear2")
            layers += [self.by_name[f"{prefix}.{n}"] for n in names if f"{prefix}.{n}" in self.by_name]
            products += 2 * tokens * tokens * block.self_attn.embed_dim
        return self._keep_heads_whole(node, layers, tokens, products, "a torch leaf evopop does not see into")

    def _unfollowable(self, node, module, query, key, value, in_proj, out_proj) -> str:
        """Why evopop cannot follow this call of an attention ('' where it can)."""
        if in_proj is None or out_proj is None:
            return "its Q, K and V projections are separate weights"
        if not (query is key is value):
            return "cross-attention (Q reads other tensors than K and V)"
        if module.bias_k is not None or module.add_zero_attn:
            return "extra key and value biases"
        if self.calls[node.target] > 1:
            return f"it is called {self.calls[node.target]} times"
        if any(u.target is not operator.getitem or (u.args[1] != 0 and u.users) for u in node.users):
            return "its attention weights are read"
        return ""

    def _keep_attention_whole(self, node, module, in_proj, out_proj, lq, lk, why: str) -> ChannelMap | None:
        """Count an attention evopop cannot follow; its projections' neurons stay, its output is a barrier."""
        e = module.embed_dim
        macs = 2 * lq * lk * e + lq * e * e + lk * e * (module.kdim + module.vdim)
        self.other_macs[node.target] = self.other_macs.get(node.target, 0) + macs
        for layer in (in_proj, out_proj):
            if layer is not None:
                self.pinned[layer.name][:] = True  # applied by the attention itself: not ours to slice
                self._reason(layer.name, f"applied by {self._describe(node)} itself: {why}")
        if out_proj is not None:
            self.macs[out_proj.name] = self.macs.get(out_proj.name, 0) + lq
        return self._barrier(node)
