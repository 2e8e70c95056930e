"""Statistics of offspring synthesis: empirical keep rates against the probability model.

Tolerances. Given the parent mask and the weights, synapse k survives independently with
probability q_k (q_k = C * exp(|w_k|/Z - 1) in "scale" mode, min(1, s * exp(|w_k|/Z - 1)) in
"budget" mode). Over D draws with different seeds the kept count K is a sum of independent
Bernoullis: E[K] = D * sum_k q_k and Var[K] = D * sum_k q_k (1 - q_k). We accept
|K - E[K]| <= 5 * sqrt(Var[K]); a correct implementation fails that with probability < 1e-6 (normal
approximation, n >> 1), and every seed below is fixed, so the outcome is deterministic. Wrong
formulas (no "-1", no |.|, wrong normalizer, wrong C) are off by far more than 5 SD at these sizes,
which each test asserts where it matters, so that the tests can fail.

The expected probabilities are computed here in float64 from the weights, not with evopop's
probability helpers.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from evopop.synthesis import (
    Environment,
    Genome,
    Schedule,
    budget_scale,
    count,
    normalizers,
    synaptic_probability,
    synaptic_weights,
    synthesize,
    trace_architecture,
)
from evopop.synthesis.clusters import cluster_probability

N_SD = 5.0  # acceptance band in standard deviations (see module docstring)


def p_model(weight: torch.Tensor, z: float) -> torch.Tensor:
    """P(s_k | w_k) = exp(|w_k| / Z - 1), float64, computed independently of evopop."""
    w = weight.detach().double().abs()
    if z == 0:
        return torch.ones_like(w)
    return torch.exp(w / z - 1.0)


def assert_within(kept: int, q: torch.Tensor, draws: int, what: str) -> float:
    """|kept - E| <= N_SD * SD for a sum of independent Bernoulli(q) over ``draws`` draws."""
    q = q.double()
    expected = draws * float(q.sum())
    sd = math.sqrt(draws * float((q * (1 - q)).sum()))
    tol = N_SD * sd
    assert abs(kept - expected) <= tol, f"{what}: kept {kept}, expected {expected:.1f} +- {tol:.1f} ({N_SD} SD)"
    return tol


def linear_net(widths: list[int], seed: int = 0, scales: list[float] | None = None) -> nn.Module:
    """fc1 -> relu -> fc2 -> ... without biases; weights randn * scale (seeded)."""
    torch.manual_seed(seed)
    mods = OrderedDict()
    for i in range(len(widths) - 1):
        fc = nn.Linear(widths[i], widths[i + 1], bias=False)
        with torch.no_grad():
            fc.weight.copy_(torch.randn_like(fc.weight) * (scales[i] if scales else 1.0))
        mods[f"fc{i + 1}"] = fc
        if i < len(widths) - 2:
            mods[f"act{i + 1}"] = nn.ReLU()
    return nn.Sequential(mods)


def setup(model, in_features):
    arch = trace_architecture(model, torch.randn(1, in_features))
    return arch, synaptic_weights(model, arch)


# ---------------------------------------------------------------- scale mode: one large layer
@pytest.mark.parametrize("c", [0.2, 0.5, 1.0])
def test_scale_keep_rate_matches_model(c):
    model = linear_net([256, 512], seed=1)  # one layer, 131072 synapses: no cascade possible
    arch, weights = setup(model, 256)
    parent = Genome.full(arch)
    w = weights["fc1"]
    q = c * p_model(w, float(w.abs().max()))
    draws = 6
    kept = sum(
        synthesize(arch, weights, parent, Environment(c), seed=s).masks["fc1"].sum().item() for s in range(draws)
    )
    tol = assert_within(int(kept), q.reshape(-1), draws, f"C={c}")
    # Discriminating: the model without "-1" or with P = C would be far outside the band.
    assert abs(draws * c * w.numel() - draws * float(q.sum())) > 3 * tol
    assert draws * float(q.sum()) * (math.e - 1) > 3 * tol


def test_scale_keep_rate_by_weight_magnitude():
    """Keep rate per decile of |w|/Z follows C * exp(|w|/Z - 1), and depends on |w|, not w."""
    c = 0.6
    model = linear_net([256, 512], seed=2)
    arch, weights = setup(model, 256)
    parent = Genome.full(arch)
    w = weights["fc1"].reshape(-1)
    z = float(w.abs().max())
    q = c * p_model(w, z)
    draws = 6
    kept = torch.zeros(w.numel(), dtype=torch.int64)
    for s in range(draws):
        kept += synthesize(arch, weights, parent, Environment(c), seed=100 + s).masks["fc1"].reshape(-1)
    x = w.abs() / z
    edges = torch.quantile(x.double(), torch.linspace(0, 1, 11, dtype=torch.float64))
    edges[-1] += 1  # include the maximum
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (x >= lo) & (x < hi)
        assert_within(int(kept[sel].sum()), q[sel], draws, f"|w|/Z in [{float(lo):.3f}, {float(hi):.3f})")
    # Sign does not matter: positive and negative weights of similar magnitude keep alike.
    for sign_sel in (w > 0, w < 0):
        assert_within(int(kept[sign_sel].sum()), q[sign_sel], draws, "sign subset")


def test_normalizer_uses_living_synapses_only():
    """Z is the max |w| over *living* synapses: a huge dead weight must not lower everyone's P."""
    c = 0.5
    model = linear_net([256, 256], seed=3)
    with torch.no_grad():
        model.fc1.weight[0, 0] = 1000.0
    arch, weights = setup(model, 256)
    g = torch.Generator().manual_seed(0)
    parent_mask = torch.rand(256, 256, generator=g) < 0.7
    parent_mask[0, 0] = False  # the huge weight is dead
    parent = Genome({"fc1": parent_mask})
    w = weights["fc1"]
    z_living = float((w.abs() * parent_mask).max())
    assert normalizers(weights, parent.masks)["fc1"] == pytest.approx(z_living, rel=1e-7)
    q = (c * p_model(w, z_living))[parent_mask]
    draws = 6
    kept = 0
    for s in range(draws):
        child = synthesize(arch, weights, parent, Environment(c), seed=s)
        assert not bool((child.masks["fc1"] & ~parent_mask).any()), "offspring gained a synapse"
        kept += int(child.masks["fc1"].sum())
    tol = assert_within(kept, q, draws, "partial parent")
    q_wrong = (c * p_model(w, 1000.0))[parent_mask]  # what Z over all synapses would give
    assert draws * float(q.sum() - q_wrong.sum()) > 3 * tol


def test_zero_weights_keep_with_probability_c():
    """Z = 0 (all living weights zero): every synapse is as strong as the strongest, P = 1."""
    c = 0.3
    model = linear_net([128, 256], seed=0)
    with torch.no_grad():
        model.fc1.weight.zero_()
    arch, weights = setup(model, 128)
    kept = sum(
        int(synthesize(arch, weights, Genome.full(arch), Environment(c), seed=s).masks["fc1"].sum()) for s in range(4)
    )
    assert_within(kept, torch.full((128 * 256,), c), 4, "zero weights")


def test_strongest_synapse_always_survives_at_c_1():
    model = linear_net([64, 64], seed=4)
    arch, weights = setup(model, 64)
    idx = int(weights["fc1"].abs().argmax())
    for s in range(50):
        child = synthesize(arch, weights, Genome.full(arch), Environment(1.0), seed=s)
        assert bool(child.masks["fc1"].reshape(-1)[idx])


# ---------------------------------------------------------------- budget mode
def heavy_tailed(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) ** 3


@pytest.mark.parametrize("normalizer_factor", [1.0, 2.5])  # layer Z, or a larger (global-like) Z
@pytest.mark.parametrize("c", [0.1, 0.4, 0.7, 0.9, 0.99])
def test_budget_scale_expected_fraction_is_exact(c, normalizer_factor):
    n = 20000
    w = heavy_tailed(n, seed=11)
    mask = torch.rand(n, generator=torch.Generator().manual_seed(12)) < 0.8
    z = float((w.abs() * mask).max()) * normalizer_factor
    s = budget_scale(w, mask, z, c)
    p = p_model(w, z)[mask]
    fraction = float((s * p).clamp(max=1.0).sum()) / p.numel()
    assert fraction == pytest.approx(c, rel=1e-6)
    if c >= 0.7:
        # These C force clipping: some synapses have s * P > 1, and the unclipped solution
        # s = C n / sum(P) would miss C by far more than the 1e-6 tolerance.
        assert float(s * p.max()) > 1.0
        naive = c * p.numel() / float(p.sum())
        assert float((naive * p).clamp(max=1.0).sum()) / p.numel() < c * (1 - 2e-6)


def test_budget_scale_edge_cases():
    w = heavy_tailed(1000, seed=5)
    mask = torch.ones(1000, dtype=torch.bool)
    z = float(w.abs().max())
    assert math.isinf(budget_scale(w, mask, z, 1.0))  # keep every living synapse
    assert budget_scale(w, torch.zeros(1000, dtype=torch.bool), z, 0.5) == 1.0  # nothing alive
    # Without clipping s is exactly C * n / sum(P).
    s = budget_scale(w, mask, z, 0.05)
    assert s == pytest.approx(0.05 * 1000 / float(p_model(w, z).sum()), rel=1e-6)


@pytest.mark.parametrize("c", [0.3, 0.7, 0.9, 0.99])
def test_budget_empirical_kept_fraction(c):
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(200, 300, bias=False)))
    with torch.no_grad():
        model.fc1.weight.copy_(torch.randn(300, 200) ** 3)
    arch, weights = setup(model, 200)
    w = weights["fc1"]
    z = float(w.abs().max())
    s = budget_scale(w, torch.ones_like(w, dtype=torch.bool), z, c)
    q = (s * p_model(w, z)).clamp(max=1.0).reshape(-1)
    assert float(q.mean()) == pytest.approx(c, rel=1e-6)
    draws = 5
    kept = sum(
        int(synthesize(arch, weights, Genome.full(arch), Environment(c, mode="budget"), seed=d).masks["fc1"].sum())
        for d in range(draws)
    )
    tol = assert_within(kept, q, draws, f"budget C={c}")
    # Scale mode would keep far fewer: C * mean(P) ~ C / 2 for these weights.
    assert draws * (float(q.sum()) - c * float(p_model(w, z).sum())) > 3 * tol


def test_budget_with_clipping_keeps_all_clipped_synapses():
    """Synapses with s * P >= 1 are kept in every draw."""
    torch.manual_seed(1)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(100, 100, bias=False)))
    with torch.no_grad():
        model.fc1.weight.copy_(torch.randn(100, 100) ** 3)
    arch, weights = setup(model, 100)
    w = weights["fc1"]
    z = float(w.abs().max())
    s = budget_scale(w, torch.ones_like(w, dtype=torch.bool), z, 0.9)
    sure = (s * p_model(w, z)) >= 1.0 + 1e-6
    assert int(sure.sum()) > 100
    for d in range(5):
        child = synthesize(arch, weights, Genome.full(arch), Environment(0.9, mode="budget"), seed=d)
        assert bool(child.masks["fc1"][sure].all())


# ---------------------------------------------------------------- normalizers, overrides, frozen
def three_layers():
    # Wide fan-in everywhere: a neuron dies only if all its >= 256 synapses drop, probability
    # < (1 - 0.2/e)^256 < 1e-8 here, so per-layer counts are pure sampling (asserted below).
    return linear_net([256, 256, 256, 128], seed=7, scales=[10.0, 1.0, 0.3])


def test_global_vs_layer_normalizer():
    model = three_layers()
    arch, weights = setup(model, 256)
    parent = Genome.full(arch)
    per_layer = normalizers(weights, parent.masks, "layer")
    global_ = normalizers(weights, parent.masks, "global")
    for name, w in weights.items():
        assert per_layer[name] == pytest.approx(float(w.abs().max()), rel=1e-7)
    top = max(float(w.abs().max()) for w in weights.values())
    assert all(v == pytest.approx(top, rel=1e-7) for v in global_.values())

    c, draws = 0.5, 4
    for kind, zs in (("layer", per_layer), ("global", global_)):
        kept = {name: 0 for name in weights}
        for d in range(draws):
            child = synthesize(arch, weights, parent, Environment(c), seed=d, normalizer=kind)
            assert count(arch, child).neurons == count(arch, parent).neurons  # no cascade happened
            for name in weights:
                kept[name] += int(child.masks[name].sum())
        for name, w in weights.items():
            q = (c * p_model(w, zs[name])).reshape(-1)
            tol = assert_within(kept[name], q, draws, f"{kind} normalizer, {name}")
            if name != "fc1":  # small-weight layers: the two normalizers differ by far more than noise
                other = per_layer if kind == "global" else global_
                q_other = (c * p_model(w, other[name])).reshape(-1)
                assert draws * abs(float(q.sum() - q_other.sum())) > 3 * tol


def test_per_layer_c_overrides_first_match_wins():
    env = Environment(0.5, layer_c=(("fc[12]", 0.2), ("fc2", 0.9), ("nothing*", 0.1)))
    assert env.factor("fc1") == 0.2
    assert env.factor("fc2") == 0.2  # first matching pattern wins
    assert env.factor("fc3") == 0.5
    assert env.factor("xfc1") == 0.5  # globs match the whole name

    model = three_layers()
    arch, weights = setup(model, 256)
    parent = Genome.full(arch)
    z = normalizers(weights, parent.masks)
    draws = 4
    kept = {name: 0 for name in weights}
    for d in range(draws):
        child = synthesize(arch, weights, parent, env, seed=d)
        for name in weights:
            kept[name] += int(child.masks[name].sum())
    for name, c in (("fc1", 0.2), ("fc2", 0.2), ("fc3", 0.5)):
        q = (c * p_model(weights[name], z[name])).reshape(-1)
        assert_within(kept[name], q, draws, f"{name} with C={c}")


def test_budget_per_layer_c():
    model = linear_net([256, 256, 128], seed=9)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.pow_(3)
    arch, weights = setup(model, 256)
    env = Environment(0.9, mode="budget", layer_c=(("fc2", 0.3),))
    parent = Genome.full(arch)
    draws = 4
    kept = {name: 0 for name in weights}
    for d in range(draws):
        child = synthesize(arch, weights, parent, env, seed=d)
        for name in weights:
            kept[name] += int(child.masks[name].sum())
    for name, c in (("fc1", 0.9), ("fc2", 0.3)):
        w = weights[name]
        z = float(w.abs().max())
        s = budget_scale(w, parent.masks[name], z, c)
        q = (s * p_model(w, z)).clamp(max=1.0).reshape(-1)
        assert float(q.mean()) == pytest.approx(c, rel=1e-6)
        assert_within(kept[name], q, draws, f"budget {name} C={c}")


def test_frozen_first_layer_mask_copied_exactly():
    model = three_layers()
    arch, weights = setup(model, 256)
    g = torch.Generator().manual_seed(3)
    parent = Genome({n: torch.rand(m.shape, generator=g) < 0.6 for n, m in Genome.full(arch).masks.items()})
    env = Environment(0.2, frozen=("fc1",))
    for d in range(3):
        child = synthesize(arch, weights, parent, env, seed=d)
        assert torch.equal(child.masks["fc1"], parent.masks["fc1"])
        assert int(child.masks["fc2"].sum()) < 0.5 * int(parent.masks["fc2"].sum())  # fc2 did mutate


def test_frozen_layer_downstream_loses_only_synapses_of_dead_inputs():
    """A frozen layer does not sample, but synapses reading neurons that died upstream still die
    (neuron death). Everything else is copied from the parent."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(16, 64), act=nn.ReLU(), fc2=nn.Linear(64, 8)))
    arch, weights = setup(model, 16)
    parent = Genome.full(arch)
    parent.masks["fc1"][:, 3:] = False  # fan-in 3: at C=0.1 most fc1 neurons die
    child = synthesize(arch, weights, parent, Environment(0.1, frozen=("fc2",)), seed=1)
    alive = child.masks["fc1"].any(dim=1)
    assert 0 < int(alive.sum()) < 64
    assert torch.equal(child.masks["fc2"], parent.masks["fc2"] & alive.view(1, -1))


def test_schedule_at():
    base = Environment(0.8, mode="budget", layer_c=(("fc1", 0.5),), frozen=("fc3",))
    sched = Schedule(base, steps=((5, 0.3), (2, 0.6)))  # unsorted on purpose
    assert [sched.at(g).c for g in (0, 1, 2, 3, 4, 5, 6, 100)] == [0.8, 0.8, 0.6, 0.6, 0.6, 0.3, 0.3, 0.3]
    env = sched.at(7)
    assert (env.mode, env.layer_c, env.frozen) == ("budget", (("fc1", 0.5),), ("fc3",))
    assert env.factor("fc1") == 0.5 and env.factor("fc2") == 0.3
    assert Schedule(base).at(9) == base
    with pytest.raises(ValueError, match="C"):
        Schedule(base, steps=((1, 1.5),)).at(1)


# ---- sharpness: P(s_k | w_k) = exp(k (|w_k| / Z - 1)) ------------------------------------------------


def p_sharp(weight: torch.Tensor, z: float, k: float) -> torch.Tensor:
    """The sharpened model in float64, independently of evopop."""
    return torch.exp(k * (weight.detach().double().abs() / z - 1.0))


@pytest.mark.parametrize("k", [0.5, 4.0, 12.0, 40.0])
@pytest.mark.parametrize("c", [0.1, 0.5, 0.9])
def test_budget_scale_is_exact_for_a_sharp_model(c, k):
    n = 20000
    w = heavy_tailed(n, seed=21)
    mask = torch.rand(n, generator=torch.Generator().manual_seed(22)) < 0.8
    z = float((w.abs() * mask).max())
    s = budget_scale(w, mask, z, c, sharpness=k)
    p = p_sharp(w, z, k)[mask]
    assert float((s * p).clamp(max=1.0).sum()) / p.numel() == pytest.approx(c, rel=1e-6)


@pytest.mark.parametrize("k", [1.0, 8.0])
def test_sharp_scale_mode_keeps_synapses_at_the_sharpened_probability(k):
    torch.manual_seed(3)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(200, 300, bias=False)))
    arch, weights = setup(model, 200)
    w = weights["fc1"]
    q = 0.9 * p_sharp(w, float(w.abs().max()), k).reshape(-1)
    draws = 5
    env = Environment(0.9, sharpness=k)
    kept = sum(int(synthesize(arch, weights, Genome.full(arch), env, seed=d).masks["fc1"].sum()) for d in range(draws))
    tol = assert_within(kept, q, draws, f"scale, k={k}")
    if k != 1.0:  # the paper's model would keep far more: it can fail
        paper = 0.9 * p_model(w, float(w.abs().max())).reshape(-1)
        assert draws * float(paper.sum() - q.sum()) > 3 * tol


def test_sharpness_moves_synthesis_towards_magnitude_pruning():
    """In budget mode at C = 0.5 the paper's model keeps about half of the strongest half; a sharp
    one keeps nearly exactly the strongest half, and the strongest synapse is e^k times likelier
    to survive than the weakest."""
    torch.manual_seed(4)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(300, 300, bias=False)))
    arch, weights = setup(model, 300)
    w = weights["fc1"].abs().reshape(-1)
    strongest_half = w >= w.median()

    def overlap(k: float) -> float:
        child = synthesize(arch, weights, Genome.full(arch), Environment(0.5, "budget", sharpness=k), seed=7)
        kept = child.masks["fc1"].reshape(-1)
        return float((kept & strongest_half).sum()) / float(kept.sum())

    assert 0.5 < overlap(1.0) < 0.7
    assert overlap(40.0) > 0.95
    p = synaptic_probability(weights["fc1"], torch.ones_like(weights["fc1"], dtype=torch.bool), float(w.max()), 6.0)
    assert float(p.max() / p.min()) == pytest.approx(math.exp(6.0) ** float((w.max() - w.min()) / w.max()), rel=1e-4)


def test_sharp_cluster_model():
    s = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    alive = torch.tensor([True, True, False])
    p = cluster_probability(s, alive, 4.0, sharpness=3.0)
    assert p.tolist() == pytest.approx([math.exp(3 * (0.25 - 1)), math.exp(3 * (0.5 - 1)), 0.0])


@pytest.mark.parametrize("bad", [0, -1, 50.5, "sharp"])
def test_sharpness_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="sharpness must be"):
        Environment(0.5, sharpness=bad)


def test_schedule_keeps_the_sharpness():
    env = Schedule(Environment(0.5, "budget", sharpness=6.0), ((3, 0.3),)).at(4)
    assert (env.c, env.mode, env.sharpness) == (0.3, "budget", 6.0)


# ---- network budget: one scale for the whole network ---------------------------------------------------


@pytest.mark.parametrize("k", [1.0, 10.0])
@pytest.mark.parametrize("c", [0.2, 0.8])
def test_network_budget_keeps_c_of_the_network_in_expectation(c, k):
    """One s for every layer: the expected kept count is C of the network's living synapses exactly,
    while the layers keep different fractions (a per-layer budget would give each exactly C)."""
    model = linear_net([64, 256, 512, 10], seed=5, scales=[3.0, 1.0, 0.2])
    arch, weights = setup(model, 64)
    parent = Genome.full(arch)
    env = Environment(c, "network", sharpness=k)
    z = normalizers(weights, parent.masks, "global")
    scales = env.scales({name: (weights[name], parent.masks[name], z[name]) for name in weights})
    assert len(set(scales.values())) == 1
    q = {name: (scales[name] * p_sharp(weights[name], z[name], k)).clamp(max=1.0) for name in weights}
    n = sum(w.numel() for w in weights.values())
    assert sum(float(v.sum()) for v in q.values()) == pytest.approx(c * n, rel=1e-6)
    fractions = {name: float(v.mean()) for name, v in q.items()}
    assert fractions["fc1"] > fractions["fc2"] > fractions["fc3"]  # the strong layer keeps more, the weak less
    if k > 1:
        assert fractions["fc1"] > c + 0.05 and fractions["fc3"] < c - 0.05
    draws = 3
    kept = {name: 0 for name in weights}
    for d in range(draws):
        child = synthesize(arch, weights, parent, env, seed=d, normalizer="global")
        for name in weights:
            kept[name] += int(child.masks[name].sum())
    # fc1's synapses can lose none of their outputs' readers (fc2 keeps some of every neuron's at these sizes)
    assert_within(kept["fc2"], q["fc2"].reshape(-1), draws, "network budget, fc2")


def test_network_budget_respects_layers_with_their_own_c():
    model = linear_net([64, 256, 128], seed=6)
    arch, weights = setup(model, 64)
    parent = Genome.full(arch)
    env = Environment(0.3, "network", layer_c=(("fc2", 0.9),))
    z = normalizers(weights, parent.masks)
    scales = env.scales({name: (weights[name], parent.masks[name], z[name]) for name in weights})
    q2 = (scales["fc2"] * p_model(weights["fc2"], z["fc2"])).clamp(max=1.0)
    assert float(q2.mean()) == pytest.approx(0.9, rel=1e-6)
    q1 = (scales["fc1"] * p_model(weights["fc1"], z["fc1"])).clamp(max=1.0)
    assert float(q1.mean()) == pytest.approx(0.3, rel=1e-6)  # the only layer left in the shared budget
