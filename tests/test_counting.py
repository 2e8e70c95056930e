"""Counting synapses, neurons, other parameters and MACs: VGG16 reference numbers and a small
net whose counts are worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from evopop.synthesis import Genome, count, efficiency, kill_orphans, trace_architecture


def vgg16_macs_by_hand() -> int:
    """Conv: weight numel * output H*W (3x3, padding 1, stride 1); linear: weight numel."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    macs, c_in, side = 0, 3, 224
    for v in cfg:
        if v == "M":
            side //= 2
            continue
        macs += (v * c_in * 3 * 3) * side * side
        c_in = v
    assert (c_in, side) == (512, 7)
    for n_in, n_out in ((512 * 7 * 7, 4096), (4096, 4096), (4096, 1000)):
        macs += n_in * n_out
    return macs


def test_vgg16_reference_counts():
    with torch.device("meta"):
        model = torchvision.models.vgg16()
        example = torch.empty(1, 3, 224, 224)
    arch = trace_architecture(model, example)
    assert arch.traced
    assert len(arch.layers) == 16
    assert arch.synapses == 138_344_128
    assert arch.synapses + sum(arch.other_params.values()) == 138_357_544
    assert sum(p.numel() for p in model.parameters()) == 138_357_544
    assert vgg16_macs_by_hand() == 15_470_264_320

    counts = count(arch, Genome.full(arch))
    assert counts.synapses == counts.dense_synapses == 138_344_128
    assert counts.params == counts.dense_params == 138_357_544
    assert counts.dense_macs == counts.macs == 15_470_264_320
    assert counts.neurons == counts.dense_neurons == 2 * 64 + 2 * 128 + 3 * 256 + 6 * 512 + 4096 * 2 + 1000
    assert counts.layers[0].dense_macs == 64 * 3 * 9 * 224 * 224
    assert counts.layers[-1].dense_macs == 4096 * 1000


class Small(nn.Module):
    """conv (2->3, 3x3, pad 1) on 8x8 -> bn -> relu -> deconv (3->2, 2x2, stride 2) -> 16x16
    -> global avg pool -> flatten -> fc (2->4)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.deconv = nn.ConvTranspose2d(3, 2, 2, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 4)

    def forward(self, x):
        x = self.deconv(torch.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def test_small_net_hand_counts():
    arch = trace_architecture(Small(), torch.randn(1, 2, 8, 8))
    g = Genome.full(arch)
    g.masks["conv"][1] = False  # conv neuron 1 dies (18 synapses)
    g.masks["conv"][0, 0, 0, 0] = False  # one more synapse
    g.masks["deconv"][:, 0] = False  # deconv neuron 0 dies (3 * 4 = 12 synapses)
    g.masks["fc"][3] = False  # fc neuron 3 dies (2 synapses)
    kill_orphans(arch, g)
    # Cascade: deconv input channel 1 (conv neuron 1) -> deconv[1] dies (8, 4 already dead);
    # fc input 0 (deconv neuron 0) -> fc[:, 0] dies (4, 1 already dead).
    c = count(arch, g)
    by_name = {l.name: l for l in c.layers}

    conv, deconv, fc = by_name["conv"], by_name["deconv"], by_name["fc"]
    # conv: 54 synapses, each used at 8*8 output positions.
    assert (conv.dense_synapses, conv.synapses) == (54, 54 - 18 - 1)
    assert (conv.dense_neurons, conv.neurons) == (3, 2)
    assert (conv.dense_macs, conv.macs) == (54 * 64, 35 * 64)
    # deconv: weight (3, 2, 2, 2) = 24 synapses, each used at the 8*8 *input* positions.
    assert (deconv.dense_synapses, deconv.synapses) == (24, 24 - 12 - 8 + 4)
    assert (deconv.dense_neurons, deconv.neurons) == (2, 1)
    assert (deconv.dense_macs, deconv.macs) == (24 * 64, 8 * 64)
    # fc: 8 synapses, used once per sample.
    assert (fc.dense_synapses, fc.synapses) == (8, 8 - 2 - 4 + 1)
    assert (fc.dense_neurons, fc.neurons) == (4, 3)
    assert (fc.dense_macs, fc.macs) == (8, 3)
    assert fc.kind == "linear" and deconv.kind == "deconv" and conv.kind == "conv"
    assert conv.living_fraction == pytest.approx(35 / 54)

    # Other params: conv.bias 3, bn.weight 3, bn.bias 3, deconv.bias 2, fc.bias 4 = 15;
    # dead: conv.bias[1], bn.weight[1], bn.bias[1], deconv.bias[0], fc.bias[3] = 5.
    assert c.dense_other_params == 15
    assert c.other_params == 10
    assert c.synapses == 35 + 8 + 3
    assert c.dense_synapses == 86
    assert c.params == 46 + 10
    assert c.dense_params == 101
    assert (c.neurons, c.dense_neurons) == (6, 9)
    assert (c.macs, c.dense_macs) == (35 * 64 + 8 * 64 + 3, 54 * 64 + 24 * 64 + 8)


def test_linear_on_tokens_and_reused_layer_macs():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 3)  # on (N, 5, 8): 5 tokens
            self.shared = nn.Linear(3, 3)  # called twice

        def forward(self, x):
            return self.shared(self.shared(self.fc(x)))

    arch = trace_architecture(Tokens(), torch.randn(1, 5, 8))
    c = count(arch, Genome.full(arch))
    by_name = {l.name: l for l in c.layers}
    assert by_name["fc"].dense_macs == 24 * 5
    assert by_name["shared"].dense_macs == 9 * 5 * 2


def test_efficiency():
    assert efficiency(100, 25) == 4.0
    assert efficiency(138_344_128, 138_344_128) == 1.0
    assert math.isinf(efficiency(100, 0))
    arch = trace_architecture(Small(), torch.randn(1, 2, 8, 8))
    g = Genome.full(arch)
    g.masks["fc"][:2] = False
    c = count(arch, g)
    assert efficiency(arch.synapses, c.synapses) == pytest.approx(86 / 82)
