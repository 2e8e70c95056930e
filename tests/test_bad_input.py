"""Bad input is refused with a ValueError that says what and where."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from evopop.synthesis import (
    Environment,
    Genome,
    count,
    find_synaptic_layers,
    parameter_masks,
    synaptic_weights,
    synthesize,
    trace_architecture,
)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(3, 4, 3),
            relu=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            fc1=nn.Linear(4, 8),
            relu2=nn.ReLU(),
            fc2=nn.Linear(8, 2),
        )
    )
    arch = trace_architecture(model, torch.randn(1, 3, 6, 6))
    return model, arch, synaptic_weights(model, arch)


def test_model_without_synaptic_layers():
    model = nn.Sequential(nn.BatchNorm1d(3), nn.ReLU())
    for call in (lambda: find_synaptic_layers(model), lambda: trace_architecture(model, torch.randn(2, 3))):
        with pytest.raises(ValueError, match=r"Sequential has no synaptic layers.*Linear.*Conv"):
            call()


@pytest.mark.parametrize("c", [0, 0.0, -0.1, 1.5, 1.0000001, math.nan, math.inf, -math.inf])
def test_c_outside_unit_interval(c):
    with pytest.raises(ValueError, match=r"C must be in \(0, 1\]"):
        Environment(c)


@pytest.mark.parametrize("c", [1e-9, 0.5, 1, 1.0])
def test_c_inside_unit_interval_is_accepted(c):
    assert Environment(c).c == c


@pytest.mark.parametrize("c", [0, 2.0, math.nan])
def test_bad_per_layer_c_names_the_pattern(c):
    with pytest.raises(ValueError, match=r"C for layers 'fc\*' must be in \(0, 1\]"):
        Environment(0.5, layer_c=(("fc*", c),))


def test_unknown_mode():
    with pytest.raises(ValueError, match=r"mode.*'bogus'"):
        Environment(0.5, mode="bogus")


def test_unknown_normalizer(net):
    _, arch, weights = net
    with pytest.raises(ValueError, match=r"normalizer.*'median'"):
        synthesize(arch, weights, Genome.full(arch), Environment(0.5), seed=0, normalizer="median")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("mode", ["scale", "budget"])
def test_non_finite_weight_names_the_layer(net, bad, mode):
    _, arch, weights = net
    w = {k: v.clone() for k, v in weights.items()}
    w["fc1"][3, 1] = bad
    with pytest.raises(ValueError, match=r"layer 'fc1' has a non-finite weight"):
        synthesize(arch, w, Genome.full(arch), Environment(0.5, mode=mode), seed=0, normalizer="global")


def test_weight_of_wrong_shape_names_the_layer(net):
    _, arch, weights = net
    w = dict(weights, fc1=torch.randn(8, 5))
    with pytest.raises(ValueError, match=r"weight of layer 'fc1' has shape \(8, 5\), expected \(8, 4\)"):
        synthesize(arch, w, Genome.full(arch), Environment(0.5), seed=0)
    w = dict(weights, conv=torch.randn(4, 3, 3))
    with pytest.raises(ValueError, match=r"'conv'"):
        synthesize(arch, w, Genome.full(arch), Environment(0.5), seed=0)


def test_mask_of_wrong_shape_names_the_layer(net):
    _, arch, weights = net
    bad = Genome({**Genome.full(arch).masks, "fc2": torch.ones(2, 7, dtype=torch.bool)})
    for call in (
        lambda: synthesize(arch, weights, bad, Environment(0.5), seed=0),
        lambda: count(arch, bad),
        lambda: parameter_masks(arch, bad),
    ):
        with pytest.raises(ValueError, match=r"mask of layer 'fc2' has shape \(2, 7\)"):
            call()


def test_mask_of_wrong_dtype_names_the_layer(net):
    _, arch, weights = net
    bad = Genome({**Genome.full(arch).masks, "conv": torch.ones(4, 3, 3, 3, dtype=torch.int64)})
    with pytest.raises(ValueError, match=r"mask of layer 'conv' has dtype torch.int64"):
        synthesize(arch, weights, bad, Environment(0.5), seed=0)


def test_missing_weight_names_the_layer(net):
    _, arch, weights = net
    w = {k: v for k, v in weights.items() if k != "fc2"}
    with pytest.raises((KeyError, ValueError), match="fc2"):
        synthesize(arch, w, Genome.full(arch), Environment(0.5), seed=0)


def test_c_given_as_string_is_converted_or_refused(net):
    _, arch, weights = net
    try:
        env = Environment("0.5")
    except (TypeError, ValueError):
        return  # refusing up front is fine too
    assert isinstance(env.c, float)
    synthesize(arch, weights, Genome.full(arch), env, seed=0)
