"""Genome: heredity over generations, seeded reproducibility, digests, validation, state dicts."""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from evopop.synthesis import (
    Environment,
    Genome,
    derive_seed,
    kill_orphans,
    offspring_seed,
    synaptic_weights,
    synthesize,
    trace_architecture,
)


def small_convnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 8, 3, padding=1),
            bn1=nn.BatchNorm2d(8),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(8, 8, 3, padding=1),
            relu2=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(2),
            flat=nn.Flatten(),
            fc=nn.Linear(32, 10),
        )
    )


@pytest.fixture(scope="module")
def net():
    model = small_convnet()
    arch = trace_architecture(model, torch.randn(1, 3, 8, 8))
    return model, arch, synaptic_weights(model, arch)


def assert_closed_under_death(child: Genome) -> None:
    """Independent check of the cascade for this sequential net."""
    dead1 = ~child.masks["conv1"].reshape(8, -1).any(dim=1)
    assert not bool(child.masks["conv2"][:, dead1].any()), "conv2 reads a dead conv1 filter"
    dead2 = ~child.masks["conv2"].reshape(8, -1).any(dim=1)
    assert not bool(child.masks["fc"][:, dead2.repeat_interleave(4)].any()), "fc reads a dead conv2 filter"


# ------------------------------------------------------------------------------ heredity
def test_offspring_are_subsets_over_generations(net):
    _, arch, weights = net
    parent = Genome.full(arch)
    history = [parent.synapses()]
    for generation in range(1, 6):
        child = synthesize(arch, weights, parent, Environment(0.7), seed=offspring_seed(1, generation, "a", 0))
        child.validate(arch)
        for name, mask in child.masks.items():
            assert mask.dtype == torch.bool
            assert not bool((mask & ~parent.masks[name]).any()), f"gen {generation}: {name} gained a synapse"
        assert child.is_subset_of(parent)
        assert_closed_under_death(child)
        history.append(child.synapses())
        parent = child
    assert all(b < a for a, b in zip(history, history[1:])), history
    assert history[-1] > 0


def test_is_subset_of_detects_a_gained_synapse(net):
    _, arch, _ = net
    parent = Genome.full(arch)
    parent.masks["conv2"][1, 2, 0, 0] = False
    child = Genome({k: v.clone() for k, v in parent.masks.items()})
    assert child.is_subset_of(parent) and parent.is_subset_of(Genome.full(arch))
    child.masks["conv2"][1, 2, 0, 0] = True
    assert not child.is_subset_of(parent)


def test_synthesis_output_is_closed_under_neuron_death(net):
    """Low C on small fan-in: neurons die, and their outgoing synapses are gone in the result."""
    _, arch, weights = net
    deaths = 0
    for s in range(5):
        child = synthesize(arch, weights, Genome.full(arch), Environment(0.08), seed=s)
        assert_closed_under_death(child)
        again = Genome({k: v.clone() for k, v in child.masks.items()})
        kill_orphans(arch, again)
        assert again.digest() == child.digest()  # already final: a second pass changes nothing
        deaths += int((~child.masks["conv1"].reshape(8, -1).any(dim=1)).sum())
    assert deaths > 0  # the cascade was actually exercised


# ------------------------------------------------------------------------------ seeds
def reference_seed(*parts) -> int:
    """The documented derivation: blake2b-64 of the parts' reprs joined by US (0x1f), little
    endian, shifted right once (63 bits)."""
    text = "\x1f".join(repr(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def test_derive_seed_matches_documented_formula():
    for parts in [(), (0,), (1, "conv1"), (12345678901234, "features.0"), ("x", 2.5, None, (1, 2))]:
        seed = derive_seed(*parts)
        assert seed == reference_seed(*parts)
        assert 0 <= seed < 2**63
    assert derive_seed(1, "a") != derive_seed(1, "b") != derive_seed(2, "a")
    # Pin the exact bytes hashed, independent of repr(), for cross-machine reproducibility.
    text = "'offspring'\x1f7\x1f3\x1f'g2-1'\x1f4"
    pinned = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1
    assert offspring_seed(7, 3, "g2-1", 4) == pinned


def test_offspring_seed_normalises_argument_types():
    base = offspring_seed(7, 3, "g2-1", 4)
    assert offspring_seed(np.int64(7), np.int32(3), "g2-1", np.int64(4)) == base
    assert offspring_seed(7, 3, "g2-1", 5) != base
    assert offspring_seed(7, 4, "g2-1", 4) != base
    assert offspring_seed(7, 3, "g2-0", 4) != base
    assert offspring_seed(8, 3, "g2-1", 4) != base


def test_same_seed_same_genome_different_index_different_genome(net):
    _, arch, weights = net
    parent = Genome.full(arch)
    env = Environment(0.5)
    seeds = [offspring_seed(42, 1, "anc", i) for i in range(4)]
    a = synthesize(arch, weights, parent, env, seed=seeds[0])
    b = synthesize(arch, weights, parent, env, seed=seeds[0])
    assert a.digest() == b.digest()
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    digests = {synthesize(arch, weights, parent, env, seed=s).digest() for s in seeds}
    assert len(digests) == 4
    # Every layer differs between siblings, not just one.
    c = synthesize(arch, weights, parent, env, seed=seeds[1])
    assert all(not torch.equal(a.masks[k], c.masks[k]) for k in a.masks)


def test_mask_is_reproducible_from_documented_seed_derivation():
    """Layer L's uniforms are torch CPU uniforms from Generator(derive_seed(seed, L)), row-major,
    and a synapse lives iff C * exp(|w|/Z - 1) >= u (reimplemented here in float64)."""
    torch.manual_seed(3)
    model = nn.Sequential(OrderedDict(fc=nn.Linear(64, 48)))
    arch = trace_architecture(model, torch.randn(1, 64))
    weights = synaptic_weights(model, arch)
    parent = Genome.full(arch)
    parent.masks["fc"][::3] = False
    seed = offspring_seed(7, 3, "g2-1", 4)
    c = 0.6
    child = synthesize(arch, weights, parent, Environment(c), seed=seed)
    w = weights["fc"].double()
    z = float((w.abs() * parent.masks["fc"]).max())
    gen = torch.Generator().manual_seed(reference_seed(seed, "fc"))
    u = torch.rand(w.numel(), generator=gen, dtype=torch.float32).double().view_as(w)
    expected = parent.masks["fc"] & (c * torch.exp(w.abs() / z - 1) >= u)
    assert torch.equal(child.masks["fc"], expected)


def test_layer_mask_independent_of_other_layers():
    """Adding a layer after fc1/fc2 does not change their masks (per-layer seeds by name)."""
    torch.manual_seed(0)
    fc1, fc2, fc3 = nn.Linear(32, 64), nn.Linear(64, 64), nn.Linear(64, 10)
    small = nn.Sequential(OrderedDict(fc1=fc1, r1=nn.ReLU(), fc2=fc2))
    large = nn.Sequential(OrderedDict(fc1=fc1, r1=nn.ReLU(), fc2=fc2, r2=nn.ReLU(), fc3=fc3))
    masks = []
    for model in (small, large):
        arch = trace_architecture(model, torch.randn(1, 32))
        child = synthesize(arch, synaptic_weights(model, arch), Genome.full(arch), Environment(0.5), seed=99)
        masks.append(child.masks)
    assert torch.equal(masks[0]["fc1"], masks[1]["fc1"])
    assert torch.equal(masks[0]["fc2"], masks[1]["fc2"])


# ------------------------------------------------------------------------------ digest
def test_digest_changes_when_one_bit_flips(net):
    _, arch, _ = net
    g = Genome.full(arch)
    d0 = g.digest()
    assert Genome({k: v.clone() for k, v in g.masks.items()}).digest() == d0  # content, not identity
    for name, index in (("conv1", (0, 0, 0, 0)), ("conv2", (7, 7, 2, 2)), ("fc", (9, 31))):
        g.masks[name][index] = False
        d1 = g.digest()
        assert d1 != d0, name
        g.masks[name][index] = True
        assert g.digest() == d0
    # Same bits under another layer name, or another shape, hash differently.
    assert (
        Genome({"a": torch.ones(4, 2, dtype=torch.bool)}).digest()
        != Genome({"b": torch.ones(4, 2, dtype=torch.bool)}).digest()
    )
    assert (
        Genome({"a": torch.ones(4, 2, dtype=torch.bool)}).digest()
        != Genome({"a": torch.ones(2, 4, dtype=torch.bool)}).digest()
    )
    # Independent of dict insertion order and memory layout.
    t = torch.rand(6, 5) < 0.5
    a = Genome({"x": t, "y": ~t})
    b = Genome({"y": (~t).t().contiguous().t(), "x": t.clone()})
    assert a.digest() == b.digest()


# ------------------------------------------------------------------------------ validation
def test_validate_names_the_offending_layer(net):
    _, arch, _ = net
    good = Genome.full(arch)
    good.validate(arch)

    missing = Genome({k: v for k, v in good.masks.items() if k != "conv2"})
    with pytest.raises(ValueError, match="'conv2'"):
        missing.validate(arch)

    extra = Genome({**good.masks, "bogus.layer": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="'bogus.layer'"):
        extra.validate(arch)

    wrong_shape = Genome({**good.masks, "fc": torch.ones(10, 31, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"'fc'.*\(10, 31\).*\(10, 32\)"):
        wrong_shape.validate(arch)

    wrong_dtype = Genome({**good.masks, "conv1": torch.ones(8, 3, 3, 3, dtype=torch.uint8)})
    with pytest.raises(ValueError, match="'conv1'.*uint8"):
        wrong_dtype.validate(arch)


def test_synthesize_rejects_invalid_parent(net):
    _, arch, weights = net
    bad = Genome({**Genome.full(arch).masks, "conv1": torch.ones(8, 3, 3, 3)})  # float mask
    with pytest.raises(ValueError, match="'conv1'"):
        synthesize(arch, weights, bad, Environment(0.5), seed=0)


# ------------------------------------------------------------------------------ state dict
def test_state_dict_round_trip(net):
    _, arch, weights = net
    g = synthesize(arch, weights, Genome.full(arch), Environment(0.5), seed=5)
    buf = io.BytesIO()
    torch.save(g.state_dict(), buf)
    buf.seek(0)
    loaded = Genome.from_state_dict(torch.load(buf, weights_only=True))
    loaded.validate(arch)
    assert loaded.digest() == g.digest()
    assert set(loaded.masks) == set(g.masks)
    for k in g.masks:
        assert loaded.masks[k].dtype == torch.bool
        assert torch.equal(loaded.masks[k], g.masks[k])
    # Masks stored compactly as uint8 come back as bool with the same bits.
    as_uint8 = {k: v.to(torch.uint8) for k, v in g.state_dict().items()}
    assert Genome.from_state_dict(as_uint8).digest() == g.digest()
