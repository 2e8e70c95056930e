"""True counts: evopop's dense MACs and parameters against an independent counter, PyTorch's own
``FlopCounterMode`` (aten-level: every convolution, matmul and attention product; MACs = FLOPs / 2)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from evopop.synthesis import Genome, count, trace_architecture


def independent_macs(model: nn.Module, x: torch.Tensor) -> int:
    """With gradients on and attention's math kernel: the fused inference paths hide their products."""
    counter = FlopCounterMode(display=False)
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(x)
    return counter.get_total_flops() // 2


MODELS = [
    ("resnet18", {}, 32),
    ("mobilenet_v3_small", {}, 32),
    ("regnet_x_400mf", {}, 32),
    ("densenet121", {}, 32),
    ("vit_b_16", {"image_size": 32}, 32),
    ("swin_t", {}, 32),  # its attention is a function padding to whole windows: counted as it computes
]


@pytest.mark.parametrize("name,kwargs,side", MODELS, ids=[m[0] for m in MODELS])
def test_dense_macs_and_parameters_agree_with_an_independent_count(name, kwargs, side):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs).eval()
    x = torch.randn(1, 3, side, side)
    arch = trace_architecture(model, x)
    counts = count(arch, Genome.full(arch))
    assert counts.dense_macs == pytest.approx(independent_macs(model, x), rel=0.02)
    assert counts.dense_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_counts_its_projections_and_products(batch_first):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(8, 32)
            self.attention = nn.MultiheadAttention(32, 4, batch_first=batch_first)
            self.head = nn.Linear(32, 3)

        def forward(self, x):
            x = self.embed(x)
            return self.head(self.attention(x, x, x, need_weights=False)[0])

    model = Block().eval()
    x = torch.randn(1, 10, 8) if batch_first else torch.randn(10, 1, 8)
    arch = trace_architecture(model, x)
    counts = count(arch, Genome.full(arch))
    tokens, e = 10, 32
    expected = tokens * 8 * e + 3 * tokens * e * e + 2 * tokens * tokens * e + tokens * e * e + tokens * e * 3
    # the packed input projection is a synaptic layer (its entries are synapses), used once per token
    assert arch.layer("attention.in_proj").numel == 3 * e * e and counts.dense_synapses == 8 * e + 4 * e * e + e * 3
    assert arch.macs_per_synapse["attention.in_proj"] == arch.macs_per_synapse["attention.out_proj"] == tokens
    assert sum(arch.other_macs.values()) == 2 * tokens * tokens * e  # QK^T and AV
    assert counts.dense_params == sum(p.numel() for p in model.parameters())
    if batch_first:  # (evopop reads dimension 0 as the batch: a sequence-first Linear counts one token)
        assert counts.dense_macs == expected == independent_macs(model, x)


@pytest.mark.parametrize("stacked", [False, True], ids=["layer", "encoder"])
def test_a_transformer_encoder_evopop_cannot_see_into_is_still_counted(stacked):
    """``nn.TransformerEncoder(Layer)`` is a torch.fx leaf: kept whole, but its MACs are counted."""

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(8, 16)
            layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True)
            self.body = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False) if stacked else layer
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.body(self.embed(x)))

    model = Encoder().eval()
    x = torch.randn(1, 10, 8)
    arch = trace_architecture(model, x)
    counts = count(arch, Genome.full(arch))
    assert counts.dense_macs == independent_macs(model, x)
    assert counts.dense_params == sum(p.numel() for p in model.parameters())
    assert all(bool(arch.pinned[layer.name].all()) for layer in arch.layers if layer.name.startswith("body"))
