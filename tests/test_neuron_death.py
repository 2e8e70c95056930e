"""Neuron death on hand-built networks whose answer is known: which synapses and per-channel
parameters die when a neuron loses all its incoming synapses."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from evopop.synthesis import (
    Environment,
    Genome,
    kill_orphans,
    parameter_masks,
    synaptic_weights,
    synthesize,
    trace_architecture,
)


def traced(model: nn.Module, shape=(1, 3, 8, 8)):
    torch.manual_seed(0)
    arch = trace_architecture(model, torch.randn(*shape))
    assert arch.traced
    return arch


def alive_inputs(mask: torch.Tensor, dim: int) -> list[int]:
    """Input channels with at least one living synapse (dim 1 for conv/linear, 0 for deconv)."""
    other = [d for d in range(mask.dim()) if d != dim]
    return mask.any(dim=tuple(other)).nonzero().flatten().tolist() if other else mask.nonzero().flatten().tolist()


def full_except(arch, **dead_rows) -> Genome:
    g = Genome.full(arch)
    for name, rows in dead_rows.items():
        g.masks[name][rows] = False
    return g


# ---------------------------------------------------------------------------- (a) conv-bn-relu-conv
class ConvBnConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 3)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


def test_dead_filter_kills_outgoing_synapses_bias_and_bn():
    arch = traced(ConvBnConv())
    g = full_except(arch, conv1=2)
    neurons = kill_orphans(arch, g)
    assert neurons["conv1"].tolist() == [True, True, False, True]
    assert neurons["conv2"].all()
    expected2 = torch.ones(5, 4, 3, 3, dtype=torch.bool)
    expected2[:, 2] = False
    assert torch.equal(g.masks["conv2"], expected2)
    pm = parameter_masks(arch, g)
    assert set(pm) == {"conv1.weight", "conv1.bias", "bn.weight", "bn.bias", "conv2.weight"}
    for p in ("conv1.bias", "bn.weight", "bn.bias"):
        assert pm[p].tolist() == [True, True, False, True], p
    assert torch.equal(pm["conv2.weight"], expected2)
    assert "conv2.bias" not in pm  # every conv2 neuron lives


def test_partially_dead_filter_lives():
    arch = traced(ConvBnConv())
    g = Genome.full(arch)
    g.masks["conv1"][2, :, :2] = False  # filter 2 keeps some synapses
    kill_orphans(arch, g)
    assert bool(g.masks["conv2"].all())
    assert "bn.weight" not in parameter_masks(arch, g)


# ---------------------------------------------------------------------------- (b) cascade
def test_cascade_over_three_layers():
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU(), nn.Conv2d(3, 3, 1), nn.ReLU(), nn.Conv2d(3, 2, 1))
    arch = traced(model, (1, 2, 4, 4))
    g = Genome.full(arch)
    g.masks["2"][0, 2] = False  # layer-2 filter 0 reads only layer-1 filters 0 and 1
    g.masks["0"][[0, 1]] = False  # ... which die
    neurons = kill_orphans(arch, g)
    assert neurons["0"].tolist() == [False, False, True]
    assert neurons["2"].tolist() == [False, True, True]  # filter 0 died by cascade
    assert neurons["4"].tolist() == [True, True]
    assert g.masks["2"][:, :, 0, 0].tolist() == [[False, False, False], [False, False, True], [False, False, True]]
    assert g.masks["4"][:, :, 0, 0].tolist() == [[False, True, True], [False, True, True]]
    pm = parameter_masks(arch, g)
    assert pm["0.bias"].tolist() == [False, False, True]
    assert pm["2.bias"].tolist() == [False, True, True]


# ---------------------------------------------------------------------------- (c) concat
class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 2, 1)
        self.b = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(5)
        self.out = nn.Conv2d(5, 4, 1)

    def forward(self, x):
        return self.out(self.bn(torch.cat([self.a(x), torch.relu(self.b(x))], dim=1)))


def test_concat_channel_offsets():
    arch = traced(Concat())
    g = full_except(arch, b=1)
    kill_orphans(arch, g)
    assert alive_inputs(g.masks["out"], 1) == [0, 1, 2, 4]  # b's filter 1 is channel 2 + 1 = 3
    assert parameter_masks(arch, g)["bn.weight"].tolist() == [True, True, True, False, True]
    g = full_except(arch, a=0)
    kill_orphans(arch, g)
    assert alive_inputs(g.masks["out"], 1) == [1, 2, 3, 4]


def test_concat_with_network_input_keeps_input_channels():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 2, 1)
            self.out = nn.Conv2d(5, 2, 1)

        def forward(self, x):
            return self.out(torch.cat([x, self.a(x)], 1))

    arch = traced(M())
    g = full_except(arch, a=[0, 1])
    kill_orphans(arch, g)
    assert alive_inputs(g.masks["out"], 1) == [0, 1, 2]


# ---------------------------------------------------------------------------- (d) ConvTranspose2d
class DeconvNet(nn.Module):
    def __init__(self, groups=1):
        super().__init__()
        self.pre = nn.Conv2d(3, 4, 1)
        self.up = nn.ConvTranspose2d(4, 6, 2, stride=2, groups=groups)  # weight (4, 6/groups, 2, 2)
        self.post = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.post(torch.relu(self.up(torch.relu(self.pre(x)))))


def test_deconv_as_producer():
    arch = traced(DeconvNet())
    g = Genome.full(arch)
    g.masks["up"][:, 1] = False  # every synapse into output channel 1 of the deconv
    neurons = kill_orphans(arch, g)
    assert neurons["up"].tolist() == [True, False, True, True, True, True]
    assert alive_inputs(g.masks["post"], 1) == [0, 2, 3, 4, 5]
    assert parameter_masks(arch, g)["up.bias"].tolist() == [True, False, True, True, True, True]


def test_deconv_as_consumer():
    arch = traced(DeconvNet())
    g = full_except(arch, pre=2)
    kill_orphans(arch, g)
    assert alive_inputs(g.masks["up"], 0) == [0, 1, 3]  # deconv input channels are dim 0
    assert not bool(g.masks["up"][2].any())
    assert int(g.masks["up"].sum()) == 3 * 6 * 4
    assert bool(g.masks["post"].all())  # every deconv output still has inputs


def test_grouped_deconv_neurons_read_their_group():
    arch = traced(DeconvNet(groups=2))  # up weight (4, 3, 2, 2); group 0 = inputs 0,1 -> outputs 0,1,2
    g = full_except(arch, pre=[0, 1])
    neurons = kill_orphans(arch, g)
    assert neurons["up"].tolist() == [False, False, False, True, True, True]
    assert alive_inputs(g.masks["post"], 1) == [3, 4, 5]


# ---------------------------------------------------------------------------- (e) residual add
class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 1)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.conv3 = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.conv1(x)
        return self.conv3(torch.relu(y + self.conv2(torch.relu(y))))


def test_residual_channel_dead_only_if_dead_in_both_branches():
    arch = traced(Residual())
    g = Genome.full(arch)
    g.masks["conv1"][[0, 1]] = False  # dead in the skip branch
    g.masks["conv2"][[1, 2]] = False  # dead in the residual branch
    neurons = kill_orphans(arch, g)
    assert alive_inputs(g.masks["conv2"], 1) == [2, 3]  # conv2 reads conv1 directly
    assert neurons["conv2"].tolist() == [True, False, False, True]
    # Sum channel c is dead iff conv1 filter c and conv2 filter c are both dead: only c = 1.
    assert alive_inputs(g.masks["conv3"], 1) == [0, 2, 3]


# ---------------------------------------------------------------------------- (f) pool + flatten
class PoolFlatten(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(16, 5)
        self.how = how

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x)))
        if self.how == "module":
            x = self.flat(x)
        elif self.how == "function":
            x = torch.flatten(x, 1)
        elif self.how == "method":
            x = x.flatten(1)
        else:
            x = x.view(x.size(0), -1)
        return self.fc(x)


@pytest.mark.parametrize("how", ["module", "function", "method", "view"])
def test_flatten_kills_the_spatial_block_of_a_dead_filter(how):
    arch = traced(PoolFlatten(how))
    g = full_except(arch, conv=1)
    kill_orphans(arch, g)
    expected = torch.ones(5, 16, dtype=torch.bool)
    expected[:, 4:8] = False
    assert torch.equal(g.masks["fc"], expected)


def test_linear_chain_with_dead_unit():
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Dropout(), nn.Linear(5, 3))
    arch = traced(model, (2, 6))
    g = full_except(arch, **{"0": 3})
    kill_orphans(arch, g)
    assert alive_inputs(g.masks["4"], 1) == [0, 1, 2, 4]
    assert parameter_masks(arch, g)["1.bias"].tolist() == [True, True, True, False, True]


# ---------------------------------------------------------------------------- (g) grouped / depthwise
def test_grouped_conv_consumer():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, groups=2))  # weight (6, 2, 3, 3)
    arch = traced(model)
    g = full_except(arch, **{"0": 3})  # input channel 3 = group 1, in-group index 1
    kill_orphans(arch, g)
    expected = torch.ones(6, 2, 3, 3, dtype=torch.bool)
    expected[3:, 1] = False
    assert torch.equal(g.masks["2"], expected)


def test_grouped_conv_neuron_dies_when_its_group_dies():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 1, groups=2), nn.ReLU(), nn.Conv2d(6, 2, 1))
    arch = traced(model)
    g = full_except(arch, **{"0": [0, 1]})  # group 0 of the grouped conv loses every input
    neurons = kill_orphans(arch, g)
    assert neurons["2"].tolist() == [False, False, False, True, True, True]
    assert alive_inputs(g.masks["4"], 1) == [3, 4, 5]


def test_depthwise_cascade():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4),
        nn.BatchNorm2d(4),
        nn.ReLU(),  # depthwise
        nn.Conv2d(4, 2, 1),
    )
    arch = traced(model)
    g = full_except(arch, **{"0": 2})
    neurons = kill_orphans(arch, g)
    assert neurons["3"].tolist() == [True, True, False, True]  # depthwise filter 2 lost its only input
    assert alive_inputs(g.masks["6"], 1) == [0, 1, 3]
    pm = parameter_masks(arch, g)
    for p in ("1.weight", "4.weight", "4.bias", "3.bias"):
        assert pm[p].tolist() == [True, True, False, True], p


# ---------------------------------------------------------------------------- (h) untraceable
class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.conv2 = nn.Conv2d(4, 2, 3)

    def forward(self, x):
        x = self.conv1(x)
        if x.sum() > 0:
            x = torch.relu(x)
        return self.conv2(x)


def test_untraceable_model_warns_and_synthesizes_without_cascade():
    model = DataDependent()
    with pytest.warns(
        UserWarning, match=r"DataDependent cannot be traced, at tests/test_neuron_death.py:\d+: `if x.sum\(\) > 0:`"
    ):
        arch = trace_architecture(model, torch.randn(1, 3, 8, 8))
    assert not arch.traced
    assert "DataDependent" in arch.note
    assert arch.names == ["conv1", "conv2"]
    g = full_except(arch, conv1=1)
    kill_orphans(arch, g)
    assert bool(g.masks["conv2"].all())  # no cascade without a traced graph
    weights = synaptic_weights(model, arch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        child = synthesize(arch, weights, Genome.full(arch), Environment(0.5), seed=0)
    child.validate(arch)
    assert child.is_subset_of(Genome.full(arch))
    assert 0 < child.synapses() < Genome.full(arch).synapses()


# ---------------------------------------------------------------------------- (i) opaque operations
class WithOp(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 1)
        self.conv2 = nn.Conv2d(4, 2, 1)
        self.op = op

    def forward(self, x):
        x = self.conv1(x)
        if self.op == "permute":
            x = x.permute(0, 1, 3, 2)
        elif self.op == "softmax":
            x = torch.softmax(x, dim=1)
        elif self.op == "transpose_back":
            x = x.transpose(1, 2).transpose(1, 2)
        elif self.op == "relu":
            x = torch.relu(x)
        elif self.op == "mix":  # channels merged with rows, then split again: evopop does not follow it
            n, c, h, w = x.size()
            x = x.view(n, c // 2, 2 * h, w).view(n, c, h, w)
        return self.conv2(x)


@pytest.mark.parametrize("op", ["softmax", "mix"])
def test_opaque_operation_is_a_barrier(op):
    arch = traced(WithOp(op))
    g = full_except(arch, conv1=1)
    kill_orphans(arch, g)
    assert bool(g.masks["conv2"].all())


@pytest.mark.parametrize("op", ["relu", "permute", "transpose_back"])
def test_transparent_operation_in_same_net_does_cascade(op):
    """Contrast for the barrier test: the same net with relu, a permute of the spatial dimensions or a
    transpose of the channels there and back does cascade (channel k stays channel k)."""
    arch = traced(WithOp(op))
    g = full_except(arch, conv1=1)
    kill_orphans(arch, g)
    assert alive_inputs(g.masks["conv2"], 1) == [0, 2, 3]


# ---------------------------------------------------------------------------- found bugs, now fixed
class SharedBlock(nn.Module):
    """One block (a -> b) applied twice: the second call of ``a`` reads ``b``."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 1)
        self.b = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        for _ in range(2):
            x = self.b(torch.relu(self.a(x)))
        return self.head(x)


def test_reused_layer_reading_a_later_layer():
    arch = traced(SharedBlock(), (1, 4, 4, 4))
    g = Genome.full(arch)
    kill_orphans(arch, g)  # KeyError: 'b'
    assert bool(g.masks["a"].all())  # a's first call reads the (alive) network input


class SameProducerTwiceInOneChannel(nn.Module):
    """Channel 1 of ``w`` is p[1] + p[0]: alive while either neuron of ``a`` lives."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 2, 1)
        self.d = nn.Conv2d(3, 1, 1)
        self.e = nn.Conv2d(3, 1, 1)
        self.out = nn.Conv2d(7, 2, 1)

    def forward(self, x):
        p = self.a(x)
        w = torch.cat([p, p], 1) + torch.cat([self.d(x), p, self.e(x)], 1)
        return self.out(torch.cat([w, x], 1))


def test_concat_after_add_of_same_producer_keeps_living_channel():
    arch = traced(SameProducerTwiceInOneChannel(), (1, 3, 4, 4))
    g = full_except(arch, a=0)
    kill_orphans(arch, g)
    # w = [a0+d0, a1+a0, a0+a1, a1+e0]: every channel still has a living source.
    assert bool(g.masks["out"].all())


class SharedBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 2, 1)
        self.b = nn.Conv2d(3, 2, 1)
        self.bn = nn.BatchNorm2d(2)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.out(torch.cat([self.bn(self.a(x)), self.bn(self.b(x))], 1))


def test_shared_norm_params_masked_only_if_dead_in_every_call():
    arch = traced(SharedBatchNorm(), (2, 3, 4, 4))
    g = full_except(arch, b=0)
    kill_orphans(arch, g)
    pm = parameter_masks(arch, g)
    assert "bn.weight" not in pm and "bn.bias" not in pm
