"""Coupling groups (`evopop.synthesis.coupling`): neurons tied by the wiring live and die together, in
the genome and in the compacted network, on hand-built graphs and on torchvision's models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evopop.compaction import compact
from evopop.compaction.compact import CompactionError, relative_error
from evopop.synthesis import Environment, Genome, effective_genome, synaptic_weights, synthesize, trace_architecture
from evopop.synthesis.clusters import cluster_strengths, surviving_clusters
from evopop.synthesis.inspection import inspect_architecture


def members(arch, layer: str, neuron: int) -> set[tuple[str, int]]:
    """The (layer, neuron) members of the group of ``neuron`` of ``layer``."""
    coupling = arch.groups
    group = int(coupling.of_layer(layer)[neuron])
    return {
        (name, int(i))
        for name in coupling.offsets
        for i in (coupling.of_layer(name) == group).nonzero().flatten().tolist()
    }


def group_sizes(arch) -> list[int]:
    return sorted(arch.groups.members().tolist())


# ------------------------------------------------------------------------------ hand-built graphs
class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.a = nn.Conv2d(6, 4, 1)
        self.b = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = x + self.b(F.relu(self.a(x)))
        return self.head(x)


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Conv2d(8, 2, 1)
        self.fc2 = nn.Conv2d(2, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = F.relu(self.conv(x))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.head(x * gate)


def depthwise_separable() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 1),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, 4, 1),
    )


def grouped() -> nn.Module:
    """Two groups of four channels: wider than they are many, so each group gets thinner."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(), nn.Conv2d(8, 2, 1)
    )


def many_groups() -> nn.Module:
    """Four groups of two channels (ResNeXt's shape): whole groups go."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.ReLU(), nn.Conv2d(8, 2, 1)
    )


def group_norm() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 2, 1))


class CatOfSums(nn.Module):
    """cat([a, b]) + cat([c, d]): a's channel i is tied to c's, b's to d's."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Conv2d(3, 4, 1) for _ in range(4))
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], 1) + torch.cat([self.c(x), self.d(x)], 1))


class InputResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.head(x + self.conv(x))


class ChannelShuffle(nn.Module):
    """torchvision's ShuffleNet shuffle: view into groups (sizes read from the tensor), transpose, view back."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = F.relu(self.a(x))
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.b(x)


class ChannelsLast(nn.Module):
    """ConvNeXt's pattern without its LayerNorm: permute to channels-last, an MLP, permute back, residual."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.conv(x)
        y = self.fc2(F.gelu(self.fc1(x.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
        return self.head(x + y)


class VisionTransformer(nn.Module):
    """torchvision's ViT in small: patches as tokens (a reshape naming the width), a class token, a position
    embedding, pre-norm blocks of ``nn.MultiheadAttention`` and an MLP on one residual stream, the class
    token's features read by the head."""

    def __init__(self, width=16, heads=4, blocks=2):
        super().__init__()
        self.width = width
        self.patches = nn.Conv2d(3, width, 4, stride=4)
        self.class_token = nn.Parameter(torch.randn(1, 1, width))
        self.position = nn.Parameter(torch.randn(1, 5, width))
        self.blocks = nn.ModuleList(TransformerBlock(width, heads) for _ in range(blocks))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        x = self.patches(x).reshape(x.shape[0], self.width, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.position
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


class TransformerBlock(nn.Module):
    def __init__(self, width, heads, packed=False):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.packed = packed
        self.attention = (
            PackedAttention(width, heads) if packed else nn.MultiheadAttention(width, heads, batch_first=True)
        )
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, x):
        h = self.norm1(x)
        x = x + (self.attention(h) if self.packed else self.attention(h, h, h, need_weights=False)[0])
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def PackedAttention(width, heads):
    """timm's ``Attention``: one ``qkv`` Linear, heads by reshape, fused attention."""
    layers = pytest.importorskip("timm.layers")
    return layers.Attention(width, num_heads=heads, qkv_bias=True)


def packed_vision_transformer():
    model = VisionTransformer()
    model.blocks = nn.ModuleList(TransformerBlock(16, 4, packed=True) for _ in range(2))
    return model


X = torch.randn(1, 3, 8, 8)


def test_a_residual_sum_ties_the_channels_of_both_operands():
    arch = trace_architecture(Residual(), X)
    for c in range(6):
        assert members(arch, "stem", c) == {("stem", c), ("b", c)}
    assert members(arch, "a", 0) == {("a", 0)}  # inside the branch nothing is tied


def test_a_gate_ties_its_units_to_the_channels_it_scales():
    arch = trace_architecture(SqueezeExcite(), X)
    for c in range(8):
        assert members(arch, "conv", c) == {("conv", c), ("fc2", c)}
    assert members(arch, "fc1", 1) == {("fc1", 1)}
    assert not bool(arch.pinned["conv"].any()), "the mean over space is channel-preserving, not a barrier"


def test_a_depthwise_filter_is_tied_to_the_neuron_it_reads():
    arch = trace_architecture(depthwise_separable(), X)
    for c in range(8):
        assert members(arch, "0", c) == {("0", c), ("3", c)}
    assert not bool(arch.pinned["3"].any()), "a depthwise convolution is no longer pinned"


def test_a_grouped_convolution_with_many_groups_goes_by_whole_groups():
    arch = trace_architecture(many_groups(), X)
    group1 = {("0", 2), ("0", 3), ("2", 2), ("2", 3)}
    assert members(arch, "0", 2) == group1 and members(arch, "2", 3) == group1
    assert group_sizes(arch) == [1, 1, 4, 4, 4, 4]


def test_a_grouped_convolution_with_wide_groups_thins_every_group_alike():
    arch = trace_architecture(grouped(), X)
    assert members(arch, "0", 1) == {("0", 1), ("0", 5)}  # input channel 1 of both groups
    assert members(arch, "2", 6) == {("2", 2), ("2", 6)}  # output 2 of both groups
    assert group_sizes(arch) == [1, 1] + [2] * 8


def test_a_group_norm_of_one_group_ties_every_channel():
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.GroupNorm(1, 6), nn.ReLU(), nn.Conv2d(6, 2, 1)).eval()
    arch = trace_architecture(model, X)
    assert members(arch, "0", 0) == {("0", c) for c in range(6)}
    weights = synaptic_weights(model, arch)
    for seed in range(4):  # the group lives or dies whole, and compaction stays exact
        child = synthesize(
            arch, weights, Genome.full(arch), Environment(1.0, "budget"), seed, clusters=Environment(0.5)
        )
        assert int(child.neurons(arch.layer("0")).sum()) in (0, 6)
        assert compact(model, arch, child, X).max_error <= 1e-4


def test_a_group_norm_group_goes_whole():
    arch = trace_architecture(group_norm(), X)
    assert members(arch, "0", 1) == {("0", c) for c in range(4)}
    assert members(arch, "0", 6) == {("0", c) for c in range(4, 8)}


def test_concatenations_map_the_ties_to_each_part():
    arch = trace_architecture(CatOfSums(), X)
    for i in range(4):
        assert members(arch, "a", i) == {("a", i), ("c", i)}
        assert members(arch, "b", i) == {("b", i), ("d", i)}


def test_a_channel_shuffle_is_a_permutation_that_ties_nothing():
    """Compacted, a shuffle becomes one index_select of the kept channels: its groups need not stay equal."""
    arch = trace_architecture(ChannelShuffle(), X)
    for i in range(8):
        assert members(arch, "a", i) == {("a", i)}
    assert not bool(arch.pinned["a"].any()), "the shuffle is followed, not a barrier"
    assert [p.order.tolist() for p in arch.permutations] == [[0, 4, 1, 5, 2, 6, 3, 7]]


class ShuffleBlock(nn.Module):
    """ShuffleNetV2's block: half the channels pass through a chunk, the other half through a branch, then
    a shuffle; compacted, the chunk splits the kept channels of each half, however many they are."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU())
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x1, x2 = F.relu(self.stem(x)).chunk(2, dim=1)
        x = torch.cat((x1, self.branch(x2)), dim=1)
        n, c, h, w = x.size()
        return self.head(x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w))


def test_a_chunk_splits_the_kept_channels_of_each_part():
    torch.manual_seed(0)
    model = ShuffleBlock().eval()
    arch = trace_architecture(model, X)
    genome = Genome.full(arch)
    arch.layer("stem").keep_neurons(genome.masks["stem"], torch.tensor([True, False, False, True] + [True] * 4))
    small = compact(model, arch, genome, X)
    assert small.neurons["stem"] == 6 and small.max_error <= 1e-4
    split = next(n for n in small.module.graph.nodes if n.target is torch.split)
    assert split.args[1] == [2, 4]


def test_channels_last_and_back_is_followed():
    arch = trace_architecture(ChannelsLast(), X)
    for c in range(8):
        assert members(arch, "conv", c) == {("conv", c), ("fc2", c)}
    assert members(arch, "fc1", 3) == {("fc1", 3)}
    assert not any(bool(arch.pinned[name].any()) for name in ("conv", "fc1", "fc2"))


def test_a_head_is_one_group_and_the_residual_stream_another_per_channel():
    arch = trace_architecture(VisionTransformer(), X)
    projection = "blocks.0.attention.in_proj"
    for head in range(4):
        units = [part * 16 + head * 4 + i for part in range(3) for i in range(4)]  # its Q, K and V units
        assert members(arch, projection, units[0]) == {(projection, u) for u in units}
    stream = {"patches"} | {f"blocks.{b}.{layer}" for b in range(2) for layer in ("attention.out_proj", "fc2")}
    for c in range(16):
        assert members(arch, "patches", c) == {(layer, c) for layer in stream}
    assert not any(bool(arch.pinned[layer.name].any()) for layer in arch.layers if layer.name != "head")
    report = inspect_architecture(arch)
    assert (report.attentions, report.heads, report.never_die_fraction) == (2, 8, 0.0)
    assert "2 attentions followed: their 8 heads live and die whole" in str(report)


def test_a_packed_attention_ties_its_heads_and_compacts_to_fewer():
    torch.manual_seed(0)
    model = packed_vision_transformer().eval()
    arch = trace_architecture(model, X)
    projection = "blocks.1.attention.qkv"
    units = [part * 16 + 8 + i for part in range(3) for i in range(4)]  # head 2
    assert members(arch, projection, units[0]) == {(projection, u) for u in units}
    genome = Genome.full(arch)
    arch.layer(projection).keep_neurons(genome.masks[projection], ~torch.isin(torch.arange(48), torch.tensor(units)))
    small = compact(model, arch, genome, X)
    assert small.module.get_submodule("blocks.1.attention").num_heads == 3
    assert small.neurons[projection] == 36 and small.max_error <= 1e-4


def test_a_channel_added_to_the_network_input_is_pinned():
    arch = trace_architecture(InputResidual(), X)
    assert bool(arch.groups.pinned[arch.groups.of_layer("conv")].all())


def test_an_uncoupled_network_has_one_family_per_layer_of_single_neurons():
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 36, 4))
    arch = trace_architecture(model, X)
    assert [(f.name, f.groups.tolist()) for f in arch.groups.families] == [("0", [0, 1, 2, 3, 4]), ("3", [5, 6, 7, 8])]


# ------------------------------------------------------------------------------ synthesis and compaction
HAND_BUILT = [
    ShuffleBlock,
    VisionTransformer,
    packed_vision_transformer,
    Residual,
    SqueezeExcite,
    depthwise_separable,
    grouped,
    many_groups,
    group_norm,
    CatOfSums,
    ChannelShuffle,
    ChannelsLast,
]


@pytest.mark.parametrize("factory", HAND_BUILT, ids=lambda f: f.__name__)
def test_groups_live_and_die_whole_and_compaction_removes_them_everywhere(factory):
    """The cluster draw keeps or kills whole groups; compaction keeps exactly the groups with an
    effectively living member (neuron death may still kill members of a surviving group: a gate whose
    inputs all died), and computes what the masked network computes."""
    torch.manual_seed(0)
    model = factory().eval()
    arch = trace_architecture(model, X)
    weights = synaptic_weights(model, arch)
    every_synapse = Environment(1.0, "budget")
    removed, checked = 0, 0
    for seed in range(12):
        drawn = surviving_clusters(arch, weights, Genome.full(arch), Environment(0.6), seed)
        whole = arch.groups.spread(arch.groups.any_member(drawn))
        for layer in arch.layers:
            assert torch.equal(drawn[layer.name], whole[layer.name]), layer.name
        child = synthesize(arch, weights, Genome.full(arch), every_synapse, seed, clusters=Environment(0.6))
        living = effective_genome(arch, child).living_neurons(arch)
        expected = arch.groups.spread(arch.groups.any_member(living) | arch.groups.pinned)
        small = compact(model, arch, child, X)
        assert small.max_error <= 1e-4
        if all(bool(e.any()) for e in expected.values()):  # (an emptied layer keeps a neuron: see compaction)
            checked += 1
            for layer in arch.layers:
                assert not bool((expected[layer.name] & ~drawn[layer.name]).any()), "a dead cluster was kept"
                assert small.neurons[layer.name] == int(expected[layer.name].sum()), layer.name
            removed += sum(layer.out_channels for layer in arch.layers) - sum(small.neurons.values())
    assert checked >= 3 and removed > 0


def test_a_grouped_convolution_compacts_to_fewer_groups():
    torch.manual_seed(0)
    model = many_groups().eval()
    arch = trace_architecture(model, X)
    genome = Genome.full(arch)
    arch.layer("0").keep_neurons(genome.masks["0"], torch.tensor([True] * 6 + [False] * 2))
    small = compact(model, arch, genome, X)
    conv = dict(small.module.named_modules())["2"]
    assert (conv.groups, conv.in_channels, conv.out_channels) == (3, 6, 6)


def test_a_grouped_convolution_compacts_to_thinner_groups():
    torch.manual_seed(0)
    model = grouped().eval()
    arch = trace_architecture(model, X)
    genome = Genome.full(arch)
    arch.layer("0").keep_neurons(genome.masks["0"], torch.tensor([True, False, True, True] * 2))
    small = compact(model, arch, genome, X)
    conv = dict(small.module.named_modules())["2"]
    assert (conv.groups, conv.in_channels, conv.out_channels) == (2, 6, 8)
    assert tuple(conv.weight.shape) == (8, 3, 3, 3)


def test_a_group_norm_compacts_to_fewer_groups():
    torch.manual_seed(0)
    model = group_norm().eval()
    arch = trace_architecture(model, X)
    genome = Genome.full(arch)
    arch.layer("0").keep_neurons(genome.masks["0"], torch.tensor([False] * 4 + [True] * 4))
    small = compact(model, arch, genome, X)
    norm = dict(small.module.named_modules())["1"]
    assert (norm.num_groups, norm.num_channels) == (1, 4)


# ------------------------------------------------------------------------------ statistics
def test_groups_survive_with_the_probability_of_their_summed_strength():
    """Group G of a family survives with probability C exp(S_G / Z_F - 1), S_G the sum of its members'
    cluster strengths and Z_F the largest S_G of the family (every group drawn once)."""
    torch.manual_seed(3)
    model = depthwise_separable().eval()
    with torch.no_grad():  # strengths spread over [0.1, 1] so that the exponent matters
        for layer in (model[0], model[3]):
            layer.weight.mul_(torch.linspace(0.1, 1.0, 8)[torch.randperm(8)].view(8, 1, 1, 1))
    arch = trace_architecture(model, X)
    weights = synaptic_weights(model, arch)
    parent = Genome.full(arch)
    s = sum(cluster_strengths(arch.layer(n), weights[n], parent.masks[n]) for n in ("0", "3"))  # by hand: 0[c] + 3[c]
    q = 0.8 * torch.exp(s / s.max() - 1)
    draws = 1500
    survived = torch.zeros(8)
    for seed in range(draws):
        kept = surviving_clusters(arch, weights, parent, Environment(0.8), seed)
        assert torch.equal(kept["0"], kept["3"])
        survived += kept["0"].double()
    for c in range(8):
        tol = 4.5 * math.sqrt(draws * q[c] * (1 - q[c]))
        assert abs(float(survived[c]) - draws * float(q[c])) <= tol, c
    # discriminating: drawn by the depthwise filter's strength alone, some group would be far off
    alone = cluster_strengths(arch.layer("3"), weights["3"], parent.masks["3"])
    q_alone = 0.8 * torch.exp(alone / alone.max() - 1)
    off = (survived - draws * q_alone).abs() / (4.5 * torch.sqrt(draws * q_alone * (1 - q_alone)))
    assert float(off.max()) > 3


# ------------------------------------------------------------------------------ the relative check
def test_the_compaction_check_is_relative_to_the_output():
    small = torch.full((4,), 1e-6)
    assert relative_error(small * 1.5, small) == pytest.approx(0.5)  # an absolute 1e-4 would pass this
    assert relative_error(small, small) == 0.0
    assert relative_error(torch.tensor([float("nan")]), torch.tensor([1.0])) == math.inf


def test_a_wrong_compaction_of_a_network_with_tiny_outputs_is_caught():
    from evopop.compaction.compact import _max_difference

    class Tiny(nn.Module):
        def __init__(self, factor):
            super().__init__()
            self.factor = factor

        def forward(self, x):
            return x * self.factor

    with pytest.raises(CompactionError, match="another function"):
        _max_difference(Tiny(1e-6), Tiny(2e-6), X)
    assert _max_difference(Tiny(1e-6), Tiny(1e-6), X) == 0.0


# ------------------------------------------------------------------------------ torchvision's models
ZOO = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf", "resnext50_32x4d", "swin_t"]


@pytest.mark.parametrize("name", ZOO)
def test_torchvision_offspring_compact_exactly_and_deliver_their_genome(name):
    """Half the clusters drawn dead: compacted == masked (relative error), and compaction keeps the
    neurons the genome keeps, give or take the odd neuron whose synapses all died."""
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    arch = trace_architecture(model, x)
    weights = synaptic_weights(model, arch)
    child = synthesize(arch, weights, Genome.full(arch), Environment(1.0), 0, clusters=Environment(0.5))
    small = compact(model, arch, child, x)
    assert small.max_error <= 1e-4
    with torch.no_grad():  # the check means something: the output depends on the input
        out = small.module(torch.randn(2, 3, 32, 32))
    assert relative_error(out[0], out[1]) > 0.01
    total = sum(layer.out_channels for layer in arch.layers)
    alive = sum(int(child.neurons(layer).sum()) for layer in arch.layers)
    assert alive / total < 0.7, "about half the clusters should die"
    assert abs(sum(small.neurons.values()) - alive) / total <= 0.02
    dense = compact(model, arch, Genome.full(arch), x)
    assert dense.macs / small.macs > 2.0


TIMM = [("vit_tiny_patch16_224", {"img_size": 32}), ("convnext_atto", {})]


@pytest.mark.parametrize("name, kwargs", TIMM, ids=[t[0] for t in TIMM])
def test_timm_transformers_and_convnexts_can_lose_every_part_but_their_outputs(name, kwargs):
    """Heads, the residual stream under its layer norms, layer scales, position embeddings: all can die,
    and a half-dead offspring compacts exactly to what its genome keeps."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    with torch.no_grad():  # timm zero-initialises some heads: the check must see an output that varies
        for module in model.modules():
            if isinstance(module, nn.Linear) and not bool(module.weight.any()):
                nn.init.normal_(module.weight, std=0.02)
    x = torch.randn(1, 3, 32, 32)
    arch = trace_architecture(model, x)
    outputs = arch.layers[-1].name
    assert [layer.name for layer in arch.layers if bool(arch.pinned[layer.name].any())] == [outputs]
    assert not bool(arch.groups.pinned[arch.groups.of_layer(arch.layers[0].name)].any())
    child = synthesize(
        arch, synaptic_weights(model, arch), Genome.full(arch), Environment(1.0), 0, clusters=Environment(0.5)
    )
    small = compact(model, arch, child, x)
    assert small.max_error <= 1e-4
    total = sum(layer.out_channels for layer in arch.layers)
    alive = sum(int(child.neurons(layer).sum()) for layer in arch.layers)
    assert abs(sum(small.neurons.values()) - alive) / total <= 0.02
    assert compact(model, arch, Genome.full(arch), x).macs / small.macs > 2.0


# ------------------------------------------------------------------------------ channel multiples
def test_channel_counts_are_rounded_to_multiples_without_bias():
    """clusters.multiple: every layer (the classes aside) keeps a multiple of 8 channels, and the
    rounding is stochastic, so that the mean number of survivors stays what the budget asks."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    arch = trace_architecture(model, x)
    weights = synaptic_weights(model, arch)
    parent = Genome.full(arch)
    plain, rounded = [], []
    for seed in range(60):
        kept = surviving_clusters(arch, weights, parent, Environment(0.5, "budget", multiple=8), seed)
        for name, k in kept.items():
            if name != "fc":
                assert int(k.sum()) % 8 == 0, (name, int(k.sum()))
        rounded.append(sum(int(k.sum()) for k in kept.values()))
        plain.append(
            sum(
                int(k.sum())
                for k in surviving_clusters(arch, weights, parent, Environment(0.5, "budget"), seed).values()
            )
        )
    mean_plain, mean_rounded = sum(plain) / len(plain), sum(rounded) / len(rounded)
    assert abs(mean_rounded - mean_plain) < 0.02 * mean_plain  # unbiased: ~1,450 neurons either way
    assert rounded != plain


def test_a_grouped_family_rounds_in_whole_groups():
    """Groups of 2 channels per layer: a multiple of 8 channels is 4 groups."""
    from evopop.synthesis.clusters import family_step

    arch = trace_architecture(many_groups(), X)
    family = next(f for f in arch.groups.families if "2" in f.layers)  # groups of 2 channels in each layer
    assert family_step(arch.groups, family, 8) == 4 and family_step(arch.groups, family, 2) == 1


def test_rounding_never_empties_a_family_that_has_survivors():
    from evopop.synthesis.clusters import round_to_multiple

    candidates = torch.ones(20, dtype=torch.bool)
    drawn = torch.zeros(20, dtype=torch.bool)
    drawn[[3, 7]] = True  # 2 survivors, step 8: lo = 0, which would kill the family
    p = torch.linspace(0.1, 1.0, 20)
    for uniform in (0.0, 0.5, 0.99):
        kept = round_to_multiple(drawn, candidates, torch.zeros(20, dtype=torch.bool), p, 8, uniform)
        assert int(kept.sum()) == 8 and bool(kept[[3, 7]].all())
        assert bool(kept[-6:].all()), "the strongest undrawn groups are revived"
