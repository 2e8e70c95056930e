"""Compaction (`evopop.compaction.compact`) computes the masked network's function with smaller layers.

The masked network of a genome is a copy of the model whose parameters are multiplied by
``parameter_masks(arch, genome)``, in eval mode. For every network here the compacted module must
give its outputs on fresh random inputs (batch 3, never the example input compaction checks itself
on), be no larger than the dense network, and keep exactly the neurons `kept_neurons` names:

1. the built-in models and the user tasks' models, over four generations of offspring synthesized
   from their own (random) weights, under both encodings and both environment modes;
2. small hand-built networks, one per piece of wiring compaction must follow (residual sums,
   ``torch.cat``, ConvTranspose, flatten -> Linear, grouped convolutions, parameters multiplied
   in, PReLU, GroupNorm, a layer without living neurons), with the neurons each must keep;
3. an independent implementation: Torch-Pruning, told to remove exactly the neurons evopop
   removes, must give a network of the same size that computes the same function;
4. the full genome: nothing removed, every count equal to the dense one, no error at all.

Bugs found: three cases of part 2 raised CompactionError until evopop fixed them (marked there), and a
layer resized to a tensor's shape was kept whole (the last tests of part 2).
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from evopop.compaction import CompactionError, compact, kept_neurons
from evopop.compaction.compact import relative_error
from evopop.compaction.export import export_program
from evopop.compaction.norms import layer_norm_of_width
from evopop.models.saliency import SaliencyNet
from evopop.models.small import SmallConvNet
from evopop.synthesis import (
    Environment,
    Genome,
    count,
    effective_genome,
    kill_orphans,
    parameter_masks,
    synaptic_weights,
    synthesize,
    trace_architecture,
)

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # max |got - expected| / max |expected|: relative, so that small outputs hide nothing
SYNAPTIC = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


# -- helpers -------------------------------------------------------------------------------------
@torch.no_grad()
def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights that keep activations O(1), nonzero biases, and per-channel state that is not
    the identity (BatchNorm running statistics and affine parameters, GroupNorm, PReLU): a compactor
    that mis-slices any of them changes the outputs."""
    g = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    for m in model.modules():
        if isinstance(m, SYNAPTIC):
            fan_in = (
                m.weight[0].numel() if not isinstance(m, nn.modules.conv._ConvTransposeNd) else m.weight[:, 0].numel()
            )
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            if m.bias is not None:
                uniform(m.bias, -0.1, 0.1)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            uniform(m.running_mean, -0.3, 0.3)
            uniform(m.running_var, 0.5, 2.0)
            if m.affine:
                uniform(m.weight, 0.5, 1.5)
                uniform(m.bias, -0.3, 0.3)
        elif isinstance(m, nn.GroupNorm) and m.affine:
            uniform(m.weight, 0.5, 1.5)
            uniform(m.bias, -0.3, 0.3)
        elif isinstance(m, nn.PReLU):
            uniform(m.weight, -0.5, 0.5)
    return model.eval()


def _masked(model: nn.Module, arch, genome: Genome) -> nn.Module:
    """The masked network of ``genome``: a copy of ``model`` with its masked parameters zeroed."""
    masked = copy.deepcopy(model)
    params = dict(masked.named_parameters())
    with torch.no_grad():
        for name, mask in parameter_masks(arch, genome).items():
            params[name].mul_(mask.to(params[name].dtype))
    return masked.eval()


def _inputs(example: torch.Tensor, n: int = 3, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((3, *example.shape[1:]), generator=g) for _ in range(n)]


@torch.no_grad()
def _assert_same_function(got: nn.Module, expected: nn.Module, example: torch.Tensor) -> float:
    """``got`` computes what ``expected`` does on fresh random inputs; returns the largest |output|."""
    scale = 0.0
    for x in _inputs(example):
        e, o = expected(x), got(x)
        assert o.shape == e.shape
        assert relative_error(o, e) <= TOLERANCE, f"max |difference| {(o - e).abs().max():.3g}"
        scale = max(scale, float(e.abs().max()))
    return scale


def _dense_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _present(arch, name: str, keep: dict[str, torch.Tensor]) -> torch.Tensor:
    return arch.inputs[name][0].alive(keep)


def _kept_dense_genome(arch, keep: dict[str, torch.Tensor]) -> Genome:
    """Every synapse from a present input channel to a kept neuron alive: the compacted network's
    synapses, as a genome of the dense network (so `count` can count them)."""
    masks = {}
    for layer in arch.layers:
        mask = torch.ones(layer.weight_shape, dtype=torch.bool)
        layer.keep_neurons(mask, keep[layer.name])
        if layer.name in arch.inputs:
            layer.keep_inputs(mask, _present(arch, layer.name, keep))
        masks[layer.name] = mask
    return Genome(masks)


def _check_compacted(model, arch, genome: Genome, example: torch.Tensor):
    """Compact ``genome`` and check it against its masked network; returns (compacted, masked output scale)."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compacted = compact(model, arch, genome, example)
    for k, v in model.state_dict().items():  # the model is untouched
        assert torch.equal(v, before[k]), k
    assert isinstance(compacted.module, fx.GraphModule)
    scale = _assert_same_function(compacted.module, _masked(model, arch, genome), example)
    assert 0.0 <= compacted.max_error <= TOLERANCE

    keep = kept_neurons(arch, effective_genome(arch, genome))
    assert compacted.neurons == {name: int(k.sum()) for name, k in keep.items()}
    modules = dict(compacted.module.named_modules())
    for layer in arch.layers:
        if layer.name not in arch.inputs:  # applied by an attention evopop does not follow: kept whole
            assert compacted.neurons[layer.name] == layer.out_channels
            continue
        present = _present(arch, layer.name, keep)
        if layer.name not in modules:  # attention's packed input projection: a parameter of the attention
            weight = compacted.module.get_parameter(layer.weight_name)
            assert tuple(weight.shape) == (compacted.neurons[layer.name], int(present.sum())), layer.name
            continue
        module = modules[layer.name]
        out_n = module.out_features if layer.kind == "linear" else module.out_channels
        in_n = module.in_features if layer.kind == "linear" else module.in_channels
        assert out_n == compacted.neurons[layer.name] >= 1, layer.name
        assert in_n == int(present.sum()), layer.name
        if module.bias is not None:
            assert module.bias.numel() == out_n

    assert compacted.params == sum(p.numel() for p in compacted.module.parameters())
    assert compacted.params <= _dense_params(model)
    counts = count(arch, genome)
    assert compacted.macs <= counts.dense_macs
    # MACs are counted as `count` counts them, for the synapses the compacted layers hold
    assert compacted.macs == count(arch, _kept_dense_genome(arch, keep)).macs
    return compacted, scale


# -- 1. the built-in models and the user tasks' models, over generations ------------------------
def _blobs_mlp():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from my_task import BlobsTask
    finally:
        sys.path.remove(str(ROOT / "examples"))
    task = BlobsTask(n=10)
    return task.build_model(), task.example_input()


def _regression_mlp():
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from user_tasks import Regression
    finally:
        sys.path.remove(str(ROOT / "tests"))
    task = Regression(n=10)
    return task.build_model(), task.example_input()


MODELS = {
    "SmallConvNet": lambda: (SmallConvNet(), torch.randn(1, 3, 32, 32)),
    "SaliencyNet": lambda: (SaliencyNet(width=0.125), torch.randn(1, 3, 64, 64)),
    "SaliencyNet-bn": lambda: (SaliencyNet(width=0.125, batch_norm=True), torch.randn(1, 3, 64, 64)),
    "BlobsTask-mlp": _blobs_mlp,  # examples/my_task.py; its example input is zeros
    "Regression-mlp": _regression_mlp,  # tests/user_tasks.py
}

# encoding -> (synaptic environment, cluster environment or None)
ENCODINGS = {
    "synapse-scale": (Environment(0.4), None),
    "synapse-budget": (Environment(0.4, mode="budget"), None),
    "cluster-scale": (Environment(0.7), Environment(0.6)),
    "cluster-budget": (Environment(0.7, mode="budget"), Environment(0.6, mode="budget")),
}


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("model_name", list(MODELS))
def test_offspring_compact_to_their_masked_networks(model_name, encoding):
    torch.manual_seed(0)
    model, example = MODELS[model_name]()
    _randomize(model)
    arch = trace_architecture(model, example)
    weights = synaptic_weights(model, arch)
    env, clusters = ENCODINGS[encoding]
    dense = count(arch, Genome.full(arch))
    genome, removed, scales = Genome.full(arch), 0, []
    for generation in range(1, 5):
        genome = synthesize(arch, weights, genome, env, seed=100 * generation + 7, clusters=clusters)
        compacted, scale = _check_compacted(model, arch, genome, example)
        scales.append(scale)
        removed = max(removed, _dense_params(model) - compacted.params)
        if model_name == "SmallConvNet" and clusters is not None and generation >= 3:
            assert compacted.macs < dense.dense_macs  # whole filters die: the compacted net is faster
    assert removed > 0, "no generation removed a neuron: the check is vacuous"
    assert scales[0] > 1e-2, "the first offspring's outputs are ~0: the check is vacuous"


# -- 2. hand-built wiring ----------------------------------------------------------------------
class ResidualSum(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        return self.c(torch.relu(self.a(x) + self.b(x)))


class InputResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.c = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.c(torch.relu(x + self.conv(x)))


class CatInto1x1(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 5, 3, padding=1)
        self.c = nn.Conv2d(9, 2, 1)

    def forward(self, x):
        return self.c(torch.relu(torch.cat([self.a(x), self.b(x)], dim=1)))


class DeconvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Conv2d(3, 5, 3, padding=1)
        self.d = nn.ConvTranspose2d(5, 6, 4, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.c = nn.Conv2d(6, 2, 3, padding=1)

    def forward(self, x):
        return self.c(torch.relu(self.bn(self.d(torch.relu(self.p(x))))))


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(4 * 2 * 2, 6), nn.Linear(6, 3)

    def forward(self, x):  # x: (N, 3, 4, 4)
        h = torch.flatten(F.max_pool2d(torch.relu(self.a(x)), 2), 1)
        return self.fc2(torch.relu(self.fc1(h)))


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.g = nn.Conv2d(4, 6, 1, groups=2)
        self.c = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.c(torch.relu(self.g(torch.relu(self.dw(torch.relu(self.a(x)))))))


class ParameterProduct(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Conv2d(3, 5, 1)
        self.a = nn.Conv2d(5, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.randn(1, 4, 1, 1))
        self.c = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.c(torch.relu(self.a(torch.relu(self.p(x))) * self.scale))


class ConvNeXtLike(nn.Module):
    """A ConvNeXt block as torchvision writes it: depthwise conv, channels-last ``nn.LayerNorm`` and MLP,
    a (C, 1, 1) layer scale multiplied in, a residual sum."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.norm = nn.LayerNorm(4)
        self.pw1, self.pw2 = nn.Linear(4, 8), nn.Linear(8, 4)
        self.scale = nn.Parameter(torch.randn(4, 1, 1))
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        s = self.stem(x)
        y = self.norm(self.dw(s).permute(0, 2, 3, 1))
        y = self.pw2(F.gelu(self.pw1(y))).permute(0, 3, 1, 2)
        return self.head(s + self.scale * y)


class LayerNorm2dLike(nn.LayerNorm):
    """timm's and torchvision's LayerNorm2d: a subclass, traced through to ``F.layer_norm``."""

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtLike2d(nn.Module):
    """A ConvNeXt block as timm writes it: LayerNorm2d, 1x1 convs, ``x.mul(gamma.reshape(1, -1, 1, 1))``."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.norm = LayerNorm2dLike(4)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.pw1, self.pw2 = nn.Conv2d(4, 8, 1), nn.Conv2d(8, 4, 1)
        self.gamma = nn.Parameter(torch.randn(4))
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        s = self.norm(self.stem(x))
        y = self.pw2(F.gelu(self.pw1(self.dw(s))))
        return self.head(s + y.mul(self.gamma.reshape(1, -1, 1, 1)))


class MaskedAttention(nn.Module):
    """Sequence-first ``nn.MultiheadAttention`` with a causal mask, a padding mask and a per-head bias."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attention = nn.MultiheadAttention(16, 4)
        self.register_buffer("bias", torch.tensor([-3.0, 0.0, -0.5, 2.0]))  # a slope per head
        self.head = nn.Linear(16, 3)

    def forward(self, x):  # (tokens, batch, features)
        h = self.embed(x)
        first = x[:, 0, 0]
        distance = (first[:, None] - first[None, :]).abs()  # (tokens, tokens)
        causal = torch.ones_like(distance, dtype=torch.bool).triu(1)
        padding = x[:, :, 0].t() > 2.5
        per_head = (distance * self.bias.view(4, 1, 1)).masked_fill(causal, float("-inf"))
        per_head = per_head.repeat(x.shape[1], 1, 1)  # (batch * heads, tokens, tokens)
        return self.head(h + self.attention(h, h, h, key_padding_mask=padding, attn_mask=per_head)[0])


class SharedLayerNorm(nn.Module):
    """One LayerNorm called on two tensors (shared weights): its calls are not followed."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.norm(self.a(x)) + self.norm(self.b(x)))


class SharedAttention(nn.Module):
    """One nn.MultiheadAttention applied twice."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attention = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.attention(h, h, h, need_weights=False)[0]
        return self.head(h + self.attention(h, h, h, need_weights=False)[0])


class CrossAttention(nn.Module):
    """Queries from one tensor, keys and values from another: counted, not followed."""

    def __init__(self):
        super().__init__()
        self.q, self.kv = nn.Linear(6, 16), nn.Linear(6, 16)
        self.attention = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        memory = self.kv(x.flip(1))
        return self.head(self.attention(self.q(x), memory, memory, need_weights=False)[0])


class ZeroBreakers(nn.Module):
    """What makes a dead channel nonzero before a layer norm: a sigmoid, a constant added, a norm without
    weights; and a post-norm LayerNorm without weights, and a division by a per-channel parameter."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(6, 8)
        self.norm_a, self.norm_b = nn.LayerNorm(8), nn.LayerNorm(8)
        self.plain = nn.LayerNorm(8, elementwise_affine=False)
        self.scale = nn.Parameter(torch.rand(8) + 0.5)
        self.head_a, self.head_b, self.head_c = nn.Linear(8, 3), nn.Linear(8, 3), nn.Linear(8, 3)

    def forward(self, x):
        a = self.norm_a(torch.sigmoid(self.a(x)))
        b = self.norm_b(self.b(x) + 1.0)
        c = self.plain(self.c(x) / self.scale)
        return self.head_a(a) + self.head_b(b) + self.head_c(c)


class MoreZeroBreakers(nn.Module):
    """A clamp above zero, a Hardtanh above zero and a size added before layer norms, two of which share
    their weight: none of them is followed, and nothing breaks."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(6, 8)
        self.norm_a, self.norm_b, self.norm_c = nn.LayerNorm(8), nn.LayerNorm(8), nn.LayerNorm(8)
        self.norm_c.weight = self.norm_b.weight
        self.bounded = nn.Hardtanh(0.1, 1.0)
        self.head_a, self.head_b, self.head_c = nn.Linear(8, 3), nn.Linear(8, 3), nn.Linear(8, 3)

    def forward(self, x):
        a = self.norm_a(self.a(x).clamp(min=0.5))
        b = self.norm_b(self.bounded(self.b(x)))
        c = self.c(x)
        return self.head_a(a) + self.head_b(b) + self.head_c(self.norm_c(c + c.size(-1)))


class NormWeightReadElsewhere(nn.Module):
    """A batch norm's weight also used as another branch's layer scale."""

    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.bn(self.a(x)) + self.c(x) * self.bn.weight.view(1, -1, 1, 1))


class ScaleReadTwice(nn.Module):
    """A layer scale also read by an operation evopop cannot see through: it stays whole."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)
        self.scale = nn.Parameter(torch.rand(1, 4, 1, 1) + 0.5)

    def forward(self, x):
        y = self.a(x) * self.scale
        return self.b(y) + torch.cumsum(self.scale, dim=1).sum()


def _head(*heads, width=16, per_head=4):
    """The Q, K and V units of ``heads`` in a packed input projection."""
    return [part * width + h * per_head + i for part in range(3) for h in heads for i in range(per_head)]


class WithPReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.act, self.c = nn.Conv2d(3, 4, 3, padding=1), nn.PReLU(num_parameters=4), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.c(self.act(self.a(x)))


class WithGroupNorm(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.a, self.gn, self.c = nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(groups, 4), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.c(torch.relu(self.gn(self.a(x))))


class StatelessNorms(nn.Module):
    """Norm layers without parameters or buffers: compaction must still set their channel counts."""

    def __init__(self):
        super().__init__()
        self.a, self.gn = nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(4, 4, affine=False)
        self.b, self.inorm, self.c = nn.Conv2d(4, 5, 3, padding=1), nn.InstanceNorm2d(5), nn.Conv2d(5, 2, 1)

    def forward(self, x):
        return self.c(torch.relu(self.inorm(self.b(torch.relu(self.gn(self.a(x)))))))


class AllDead(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b, self.bn = nn.Conv2d(4, 3, 3, padding=1), nn.BatchNorm2d(3, affine=True)
        self.e = nn.Conv2d(4, 3, 3, padding=1)
        self.c = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.c(torch.cat([torch.relu(self.bn(self.b(h))), torch.relu(self.e(h))], dim=1))


class GatedProduct(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.c(self.a(x) * torch.sigmoid(self.b(x)))


class TokenMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):  # x: (N, T, 6): features on the last dimension
        return self.fc2(F.gelu(self.fc1(x)))


class SharedBatchNorm(nn.Module):
    """One BatchNorm applied to two convs' outputs (called twice): compaction slices it once, so both keep all."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c(torch.relu(torch.cat([self.bn(self.a(x)), self.bn(self.b(x))], dim=1)))


class ParameterSum(nn.Module):
    """A 1-D parameter added to a Linear's (N, C) output: a second bias, which dies with its channel."""

    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Linear(5, 4), nn.Linear(4, 2)
        self.shift = nn.Parameter(torch.randn(4))

    def forward(self, x):
        return self.c(torch.relu(self.a(x) + self.shift))


class DeadOperandOfCatSum(nn.Module):
    """cat([a, e]) + b: b's channel i is coupled to a's (i < 2) or e's. When every neuron of a dies, the
    one a keeps must keep its partner in b."""

    def __init__(self):
        super().__init__()
        self.a, self.e, self.b = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 3, 1), nn.Conv2d(3, 5, 1)
        self.c = nn.Conv2d(5, 2, 1)

    def forward(self, x):
        return self.c(torch.relu(torch.cat([self.a(x), self.e(x)], dim=1) + self.b(x)))


def _kill(**neurons):
    """Genome edit: remove every incoming synapse of the given neurons (layer=[indices])."""

    def edit(genome: Genome, arch) -> None:
        for name, idxs in neurons.items():
            layer = arch.layer(name)
            alive = torch.ones(layer.out_channels, dtype=torch.bool)
            alive[list(idxs)] = False
            layer.keep_neurons(genome.masks[name], alive)

    return edit


def _conv_in(x=None):
    return torch.randn(1, 3, 6, 6) if x is None else x


# (id, model factory, example input, genome edit, {layer: neurons kept})
WIRING = [
    ("residual sum: one operand's neuron dies, kept", ResidualSum, _conv_in(), _kill(a=[1]), {"a": 4, "b": 4}),
    ("residual sum: both operands' neuron dies, removed", ResidualSum, _conv_in(), _kill(a=[1, 2], b=[2]), {"a": 3}),
    ("x + conv(x): the conv's channels stay", InputResidual, _conv_in(), _kill(conv=[0, 2]), {"conv": 3}),
    ("cat of two convs into a 1x1 conv", CatInto1x1, _conv_in(), _kill(a=[0, 2]), {"a": 2, "b": 5}),
    ("cat: both operands lose neurons", CatInto1x1, _conv_in(), _kill(a=[3], b=[0, 4]), {"a": 3, "b": 3}),
    ("ConvTranspose2d -> BN -> conv", DeconvBN, _conv_in(), _kill(p=[1], d=[0, 3]), {"p": 4, "d": 4}),
    ("flatten -> Linear", FlattenLinear, torch.randn(1, 3, 4, 4), _kill(a=[1], fc1=[2]), {"a": 3, "fc1": 5}),
    ("grouped and depthwise convs kept whole", Grouped, _conv_in(), _kill(a=[1], dw=[2], g=[0]), {"dw": 4, "g": 6}),
    ("per-channel parameter multiplied in", ParameterProduct, _conv_in(), _kill(p=[0], a=[1]), {"p": 4, "a": 3}),
    ("PReLU(num_parameters=C)", WithPReLU, _conv_in(), _kill(a=[1]), {"a": 3}),
    (
        "attention: a head dies",
        MaskedAttention,
        torch.randn(5, 1, 6),
        _kill(**{"attention.in_proj": _head(2)}),
        {"attention.in_proj": 36, "attention.out_proj": 16},
    ),
    ("a layer norm called twice", SharedLayerNorm, torch.randn(1, 4, 6), _kill(a=[1], b=[1]), {"a": 8, "b": 8}),
    ("an attention called twice", SharedAttention, torch.randn(1, 5, 6), _kill(**{"embed": [1]}), {"embed": 16}),
    ("cross-attention: counted", CrossAttention, torch.randn(1, 5, 6), _kill(q=[1], kv=[2]), {"q": 16, "kv": 16}),
    (
        "zero breakers before layer norms",
        ZeroBreakers,
        torch.randn(1, 4, 6),
        _kill(a=[1], b=[2], c=[3]),
        {"a": 8, "b": 8, "c": 8},
    ),
    ("a layer scale read elsewhere", ScaleReadTwice, _conv_in(), _kill(a=[1]), {"a": 4}),
    (
        "more zero breakers, a shared norm weight",
        MoreZeroBreakers,
        torch.randn(1, 4, 6),
        _kill(a=[1], b=[2], c=[3]),
        {"a": 8, "b": 8, "c": 8},
    ),
    ("a norm's weight read elsewhere", NormWeightReadElsewhere, _conv_in(), _kill(c=[0, 1]), {"a": 4}),
    (
        "attention: heads and a stream channel die",
        MaskedAttention,
        torch.randn(5, 1, 6),
        _kill(**{"attention.in_proj": _head(0, 3), "embed": [1], "attention.out_proj": [1]}),
        {"attention.in_proj": 24, "embed": 15, "attention.out_proj": 15},
    ),
    # a layer norm's statistics read the dead channel as a zero: compacted, it keeps dividing by 4
    ("ConvNeXt block: a residual channel dies", ConvNeXtLike, _conv_in(), _kill(stem=[1], pw2=[1]), {"stem": 3}),
    ("ConvNeXt block: one producer's channel dies, kept", ConvNeXtLike, _conv_in(), _kill(pw2=[1]), {"stem": 4}),
    ("LayerNorm2d subclass, reshaped scale", ConvNeXtLike2d, _conv_in(), _kill(stem=[1], pw2=[1]), {"pw2": 3}),
    ("GroupNorm(C, C)", lambda: WithGroupNorm(4), _conv_in(), _kill(a=[1]), {"a": 3}),
    ("GroupNorm(2, C): groups kept whole", lambda: WithGroupNorm(2), _conv_in(), _kill(a=[1]), {"a": 4}),
    ("GroupNorm and InstanceNorm without state", StatelessNorms, _conv_in(), _kill(a=[1], b=[0, 3]), {"a": 3, "b": 3}),
    ("a layer whose every neuron dies keeps one", AllDead, _conv_in(), _kill(b=[0, 1, 2]), {"b": 1, "e": 3}),
    ("gated product: one factor's neuron dies, kept", GatedProduct, _conv_in(), _kill(a=[1]), {"a": 4, "b": 4}),
    ("gated product: both factors' neuron dies", GatedProduct, _conv_in(), _kill(a=[2], b=[2]), {"a": 3, "b": 3}),
    ("Linear on (N, T, F) tokens", TokenMLP, torch.randn(1, 5, 6), _kill(fc1=[2, 5]), {"fc1": 6}),
    # found by these tests, fixed in evopop since (8344760): each raised CompactionError
    ("a norm layer called on two producers", SharedBatchNorm, _conv_in(), _kill(a=[1], b=[2]), {"a": 4, "b": 4}),
    ("a 1-D parameter added to a Linear output", ParameterSum, torch.randn(1, 5), _kill(a=[1]), {"a": 3}),
    (
        "an emptied layer coupled through a cat",
        DeadOperandOfCatSum,
        _conv_in(),
        _kill(a=[0, 1], b=[0, 1]),
        {"a": 1, "b": 4, "e": 3},
    ),
]


def _build(factory, x, edit):
    torch.manual_seed(0)
    model = _randomize(factory())
    arch = trace_architecture(model, x)
    genome = Genome.full(arch)
    edit(genome, arch)
    kill_orphans(arch, genome)  # as synthesis leaves every genome
    return model, arch, genome


@pytest.mark.parametrize("factory, x, edit, expected", [c[1:] for c in WIRING], ids=[c[0] for c in WIRING])
def test_hand_built_wiring_compacts_exactly(factory, x, edit, expected):
    model, arch, genome = _build(factory, x, edit)
    compacted, _ = _check_compacted(model, arch, genome, x)
    for name, n in expected.items():
        assert compacted.neurons[name] == n, (name, compacted.neurons)
    if any(compacted.neurons[l.name] < l.out_channels for l in arch.layers):
        assert compacted.params < _dense_params(model)


def test_a_neuron_kept_by_its_coupling_keeps_zero_weights_and_bias():
    """Kept for its partner only (a residual sum): its row is the masked row, all zeros."""
    model, arch, genome = _build(ResidualSum, _conv_in(), _kill(a=[1]))
    compacted = compact(model, arch, genome, _conv_in())
    weight, bias = (
        compacted.module.get_submodule("a").weight.detach(),
        compacted.module.get_submodule("a").bias.detach(),
    )
    assert bool((weight[1] == 0).all()) and float(bias[1]) == 0.0
    assert bool((weight[0] != 0).any())


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = self.a(x)
        return self.c(h if h.sum() > 0 else -h)  # data-dependent control flow: torch.fx cannot trace it


def test_a_network_evopop_could_not_trace_is_refused():
    x = _conv_in()
    model = Untraceable().eval()
    # the warning names the operation torch refused and the line of the network's code that did it
    where = r"cannot be traced, at tests/test_compaction.py:\d+: `return self.c\(h if h.sum\(\) > 0 else -h\)"
    with pytest.warns(UserWarning, match=where + ".*TraceError: symbolically traced variables cannot be used"):
        arch = trace_architecture(model, x)
    with pytest.raises(CompactionError, match="could not trace"):
        compact(model, arch, Genome.full(arch), x)


# -- a bug found: compaction keeps more than it must (the function is right) -----------------------
class InterpolateToInputSize(nn.Module):
    """A strided conv resized back to the input's size, ``F.interpolate(h, size=x.shape[-2:])``
    (as SaliencyNet's ``_resize`` does): the size is a shape, not a tensor of channels."""

    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = F.interpolate(self.a(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.c(torch.relu(h))


def test_a_layer_resized_to_a_shape_loses_its_dead_neurons():
    x = _conv_in()
    model, arch, genome = _build(InterpolateToInputSize, x, _kill(a=[1]))
    compacted, _ = _check_compacted(model, arch, genome, x)
    assert compacted.neurons["a"] == 3  # the size argument is not a tensor: it pins nothing


def test_saliency_deconvolutions_lose_their_dead_neurons():
    """SaliencyNet's d1 and d2 are resized to c6's size before the concatenation (once pinned whole)."""
    model, arch, genome, example = _tp_case("SaliencyNet")
    effective = effective_genome(arch, genome)
    compacted, _ = _check_compacted(model, arch, genome, example)
    for name in ("d1.0", "d2.2"):
        living = int(effective.neurons(arch.layer(name)).sum())
        assert living < arch.layer(name).out_channels  # dead neurons there to remove
        assert compacted.neurons[name] == max(1, living), name


# -- 3. cross-check against Torch-Pruning -------------------------------------------------------
def _tp_pruned(masked: nn.Module, arch, keep: dict[str, torch.Tensor], example: torch.Tensor) -> nn.Module:
    """``masked`` (a copy) with every neuron not in ``keep`` pruned by Torch-Pruning's dependency graph."""
    tp = pytest.importorskip("torch_pruning")
    net = copy.deepcopy(masked).eval()
    modules = dict(net.named_modules())
    by_module = {id(modules[l.name]): l.name for l in arch.layers}
    out_fns = {tp.prune_conv_out_channels, tp.prune_linear_out_channels, tp.prune_depthwise_conv_out_channels}
    current = {l.name: list(range(l.out_channels)) for l in arch.layers}  # original index of each channel
    # built once: pruning keeps the graph's modules, and each group recomputes the index maps of
    # concatenations (`update_index_mapping`) from the channels left; ``current`` checks the result
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=(example,), verbose=False)
    for layer in arch.layers:
        idxs = [i for i, neuron in enumerate(current[layer.name]) if not bool(keep[layer.name][neuron])]
        if not idxs:
            continue
        fn = tp.prune_linear_out_channels if layer.kind == "linear" else tp.prune_conv_out_channels
        group = graph.get_pruning_group(modules[layer.name], fn, idxs=idxs)
        removed: dict[str, set[int]] = {}
        for dep, dep_idxs in group:  # coupled layers (residual sums) lose the same channels
            if dep.handler in out_fns and id(dep.target.module) in by_module:
                removed.setdefault(by_module[id(dep.target.module)], set()).update(int(i) for i in dep_idxs)
        group.prune()
        for name, gone in removed.items():
            current[name] = [neuron for i, neuron in enumerate(current[name]) if i not in gone]
    for layer in arch.layers:  # Torch-Pruning removed exactly the neurons evopop removes
        assert current[layer.name] == keep[layer.name].nonzero().flatten().tolist(), layer.name
    return net


TP_MODELS = ["SmallConvNet", "SaliencyNet", "SaliencyNet-bn"]


def _tp_case(name: str):
    """(model, arch, genome, example) of a built-in model or of a hand-built wiring case."""
    if name in MODELS:
        torch.manual_seed(0)
        model, example = MODELS[name]()
        _randomize(model)
        arch = trace_architecture(model, example)
        weights = synaptic_weights(model, arch)
        # synapses die scattered and whole filters die: neurons are removed in every layer kind
        genome = synthesize(arch, weights, Genome.full(arch), Environment(0.5), seed=3, clusters=Environment(0.5))
        return model, arch, genome, example
    factory, example, edit, _ = next(c[1:] for c in WIRING if c[0] == name)
    return (*_build(factory, example, edit), example)


TP_WIRING = [  # the hand-built cases where evopop removes neurons
    "residual sum: both operands' neuron dies, removed",
    "cat of two convs into a 1x1 conv",
    "cat: both operands lose neurons",
    "ConvTranspose2d -> BN -> conv",
    "flatten -> Linear",
    "per-channel parameter multiplied in",
    "PReLU(num_parameters=C)",
    pytest.param(
        "GroupNorm(C, C)",
        marks=pytest.mark.xfail(
            strict=True,
            raises=RuntimeError,
            reason="Torch-Pruning 1.6's GroupNormPruner removes channels but leaves num_groups at C: "
            "the pruned GroupNorm(4, 3) refuses to run",
        ),
    ),
    "a layer whose every neuron dies keeps one",
    "gated product: both factors' neuron dies",
    "Linear on (N, T, F) tokens",
]


@pytest.mark.parametrize("name", TP_MODELS + TP_WIRING)
def test_torch_pruning_removing_the_same_neurons_gives_the_same_network(name):
    model, arch, genome, example = _tp_case(name)
    compacted = compact(model, arch, genome, example)
    keep = kept_neurons(arch, effective_genome(arch, genome))
    assert any(not bool(k.all()) for k in keep.values()), "nothing to remove: the check is vacuous"
    if name.startswith("SaliencyNet"):  # a branch of the concatenation (c6) and a deconv (d2.0) lose neurons
        for layer in ("c6.0", "d2.0"):
            assert not bool(keep[layer].all()), layer

    masked = _masked(model, arch, genome)
    pruned = _tp_pruned(masked, arch, keep, example)
    assert _dense_params(pruned) == compacted.params
    pruned_modules, compacted_modules = dict(pruned.named_modules()), dict(compacted.module.named_modules())
    for layer in arch.layers:
        assert pruned_modules[layer.name].weight.shape == compacted_modules[layer.name].weight.shape, layer.name
    _assert_same_function(pruned, compacted.module, example)
    _assert_same_function(pruned, masked, example)


# -- 4. the full genome ---------------------------------------------------------------------------
@pytest.mark.parametrize("model_name", list(MODELS))
def test_the_full_genome_compacts_to_the_dense_network(model_name):
    torch.manual_seed(0)
    model, example = MODELS[model_name]()
    _randomize(model)
    arch = trace_architecture(model, example)
    genome = Genome.full(arch)
    compacted = compact(model, arch, genome, example)
    assert compacted.params == _dense_params(model)
    assert compacted.macs == count(arch, genome).dense_macs == count(arch, genome).macs
    assert compacted.max_error == 0.0
    assert compacted.neurons == {l.name: l.out_channels for l in arch.layers}
    with torch.no_grad():
        for x in _inputs(example):
            assert torch.equal(compacted.module(x), model(x))


# -- 5. latency ------------------------------------------------------------------------------------
def test_latency_is_measured_on_float_and_integer_inputs_within_its_time_budget():
    from evopop.compaction import latency_ms

    conv = nn.Conv2d(3, 4, 3)
    assert latency_ms(conv, torch.zeros(1, 3, 8, 8), batch=4, repeats=3) > 0
    tokens = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2))
    assert latency_ms(tokens, torch.tensor([[1, 2, 3]]), batch=5, repeats=3) > 0
    slow = nn.Sequential(*[nn.Conv2d(8, 8, 3, padding=1) for _ in range(8)])
    start = time.perf_counter()
    latency_ms(slow, torch.zeros(1, 8, 64, 64), batch=8, repeats=1000, seconds=0.2)
    assert time.perf_counter() - start < 2.0  # 1000 passes would take far longer: the budget stops it


def test_a_layer_norm_of_width_is_the_full_norm_with_the_removed_channels_as_zeros():
    torch.manual_seed(0)
    kept = torch.tensor([0, 2, 3, 6])
    x, weight, bias = torch.randn(2, 5, 4) * 3 + 1, torch.randn(4), torch.randn(4)
    full = torch.zeros(2, 5, 7)
    full[..., kept] = x
    expected = F.layer_norm(full, (7,), torch.ones(7), torch.zeros(7), 1e-6)[..., kept] * weight + bias
    got = layer_norm_of_width(x, weight, bias, 1e-6, 7)
    assert relative_error(got, expected) < 1e-6
    assert relative_error(layer_norm_of_width(x, None, None, 1e-5, 4), F.layer_norm(x, (4,))) < 1e-6


def test_a_compacted_convnext_block_exports_and_runs_without_evopop_code(tmp_path):
    model, arch, genome = _build(ConvNeXtLike2d, _conv_in(), _kill(stem=[1, 3], pw2=[1, 3]))
    compacted = compact(model, arch, genome, _conv_in())
    assert compacted.neurons["stem"] == 2
    program = export_program(compacted.module, _conv_in())
    x = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        assert relative_error(program.module()(x), _masked(model, arch, genome)(x)) < TOLERANCE
    assert "evopop" not in str(program.graph_module.code)


class NormOverTwoDims(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.norm = nn.LayerNorm((6, 6))
        self.b = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.b(self.norm(self.a(x)))


def test_a_layer_norm_over_more_than_the_channels_keeps_them_and_says_why():
    arch = trace_architecture(NormOverTwoDims(), _conv_in())
    assert bool(arch.pinned["a"].all())
    assert any("statistics read every channel" in reason for reason in arch.pin_reasons["a"])


def test_a_parameter_read_per_channel_and_by_its_module_is_zeroed_for_neither():
    """Masking ``bn.weight`` where the scaled branch died would change the batch norm's living channels."""
    model, arch, genome = _build(NormWeightReadElsewhere, _conv_in(), _kill(c=[0, 1]))
    assert "bn.weight" not in parameter_masks(arch, genome)
