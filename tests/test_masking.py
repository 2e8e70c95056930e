"""MaskedParameters: dead weights, their gradients and optimizer state stay exactly zero while
training; genome_from_weights; mask errors."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from evopop.synthesis import (
    Genome,
    MaskedParameters,
    genome_from_weights,
    kill_orphans,
    parameter_masks,
    trace_architecture,
)


def make_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 6, 3, padding=1),
            bn1=nn.BatchNorm2d(6),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(6, 5, 3, padding=1),
            relu2=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            fc=nn.Linear(5, 4),
        )
    )


def masked_genome(arch) -> Genome:
    g = Genome.full(arch)
    gen = torch.Generator().manual_seed(1)
    for m in g.masks.values():
        m &= torch.rand(m.shape, generator=gen) < 0.6
    g.masks["conv1"][2] = False  # a dead neuron: its bias and bn1 channel are masked too
    g.masks["fc"][1] = False  # fc neuron 1: its bias is masked
    kill_orphans(arch, g)
    return g


OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_dead_entries_stay_exactly_zero_while_training(opt_name):
    model = make_net()
    arch = trace_architecture(model, torch.randn(1, 3, 8, 8))
    pm = parameter_masks(arch, masked_genome(arch))
    assert {"conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "conv2.weight", "fc.weight", "fc.bias"} <= set(pm)
    params = dict(model.named_parameters())
    assert all(bool((params[n].detach()[~m] != 0).any()) for n, m in pm.items() if n.endswith("weight"))

    opt = OPTIMIZERS[opt_name](model.parameters())
    masked = MaskedParameters(model, pm).attach(opt)
    initial = {n: p.detach().clone() for n, p in params.items()}
    for n, m in pm.items():  # the constructor already zeroed the dead entries
        assert bool((params[n].detach()[~m] == 0).all()), n

    gen = torch.Generator().manual_seed(0)
    for step in range(20):
        x = torch.randn(8, 3, 8, 8, generator=gen)
        y = torch.randint(0, 4, (8,), generator=gen)
        opt.zero_grad(set_to_none=(step % 2 == 0))
        nn.functional.cross_entropy(model(x), y).backward()
        for n, m in pm.items():
            assert bool((params[n].grad[~m] == 0).all()), f"step {step}: gradient of dead {n}"
        opt.step()
        for n, m in pm.items():
            p = params[n]
            assert bool((p.detach()[~m] == 0).all()), f"step {step}: dead {n} moved"
            for key, state in opt.state[p].items():
                if torch.is_tensor(state) and state.shape == p.shape:
                    assert bool((state[~m] == 0).all()), f"step {step}: optimizer state {key} of {n}"
    # Living entries did train.
    for n, p in params.items():
        m = pm.get(n, torch.ones_like(p, dtype=torch.bool))
        changed = (p.detach()[m] != initial[n][m]).float().mean()
        assert changed > 0.9, f"{n}: only {float(changed):.2f} of living entries changed"
    masked.detach()


def test_attach_cleans_existing_optimizer_state_and_detach_stops_masking():
    model = make_net()
    arch = trace_architecture(model, torch.randn(1, 3, 8, 8))
    pm = parameter_masks(arch, masked_genome(arch))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # unmasked step: Adam moments are nonzero everywhere
    w = dict(model.named_parameters())["conv2.weight"]
    assert bool((opt.state[w]["exp_avg"][~pm["conv2.weight"]] != 0).any())
    masked = MaskedParameters(model, pm).attach(opt)
    assert bool((opt.state[w]["exp_avg"][~pm["conv2.weight"]] == 0).all())
    assert bool((opt.state[w]["exp_avg_sq"][~pm["conv2.weight"]] == 0).all())

    masked.detach()
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    assert bool((w.grad[~pm["conv2.weight"]] != 0).any())  # hooks removed


def test_genome_from_weights():
    model = make_net()
    with torch.no_grad():
        model.conv1.weight[4].zero_()  # filter 4 all zero: dead neuron
        model.conv2.weight[0, 1, 2, 2] = 0.0  # one zero synapse
    arch = trace_architecture(model, torch.randn(1, 3, 8, 8))
    g = genome_from_weights(arch, model)
    g.validate(arch)
    assert not bool(g.masks["conv1"][4].any()) and bool(g.masks["conv1"][:4].all())
    expected2 = torch.ones(5, 6, 3, 3, dtype=torch.bool)
    expected2[:, 4] = False  # cascade: reads dead filter 4, although these weights are nonzero
    expected2[0, 1, 2, 2] = False
    assert torch.equal(g.masks["conv2"], expected2)
    assert bool(g.masks["fc"].all())
    assert bool(model.conv2.weight[:, 4].ne(0).all())  # the model itself is untouched


def test_mask_errors():
    model = make_net()
    with pytest.raises(ValueError, match=r"'conv2.weight'.*\(5, 6\).*\(5, 6, 3, 3\)"):
        MaskedParameters(model, {"conv2.weight": torch.ones(5, 6, dtype=torch.bool)})
    with pytest.raises(ValueError, match="nope.weight"):
        MaskedParameters(model, {"nope.weight": torch.ones(1, dtype=torch.bool)})
