"""Cluster-driven synthesis (`evopop.synthesis.clusters`): whole filters / units survive first, then
the synapses inside the survivors, and the config / spec plumbing of ``evolution.encoding: cluster``.

Tolerances. Given the parent genome and the weights, cluster c survives independently with
probability q_c (q_c = C_c * exp(S_c/Z_c - 1) in "scale" mode, min(1, s * exp(S_c/Z_c - 1)) in
"budget" mode). Over D draws with different seeds its survival count is Binomial(D, q_c); we accept
|K - D q_c| <= 4.5 * sqrt(D q_c (1 - q_c)) (a correct implementation fails one such check with
probability < 1e-5; every seed below is fixed, so the outcome is deterministic). Where it matters the
tests assert that plausible wrong models (no "-1", dead synapses counted in S_c, the wrong normalizer,
the wrong C) lie far outside that band, so that they can fail.

Expected strengths, normalizers, probabilities and budget scales are computed here in float64 with
per-neuron indexing written out by hand (a ConvTranspose neuron o of group g reads
``weight[g*in_pg:(g+1)*in_pg, o - g*out_pg]``), not with evopop's helpers.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from evopop.config import Config, ConfigError, load_config
from evopop.engine.plan import plan_run
from evopop.engine.policy.specs import offspring_specs, schedule_of
from evopop.records.schema import IndividualRecord
from evopop.synthesis import (
    Environment,
    Genome,
    count,
    derive_seed,
    kill_orphans,
    normalizers,
    sample_layer,
    synaptic_weights,
    synthesize,
    trace_architecture,
)
from evopop.synthesis.clusters import (
    cluster_normalizers,
    cluster_probability,
    cluster_strengths,
    sample_clusters,
    surviving_clusters,
)

N_SD = 4.5  # acceptance band in standard deviations (see module docstring)
DRAWS = 2000


# ------------------------------------------------------------------------------ independent model
def neuron_index(module: nn.Module, o: int) -> tuple:
    """Index into ``module.weight`` of neuron o's incoming synapses, written out per layer type."""
    if isinstance(module, nn.ConvTranspose2d):  # weight (in, out/groups, kh, kw)
        in_pg, out_pg = module.weight.shape[0] // module.groups, module.weight.shape[1]
        group, j = divmod(o, out_pg)
        return (slice(group * in_pg, (group + 1) * in_pg), j)
    return (o,)  # Conv2d (out, in/groups, kh, kw), Linear (out, in)


def out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.ConvTranspose2d):
        return module.weight.shape[1] * module.groups
    return module.weight.shape[0]


def expected_strengths(module: nn.Module, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """S_c = sum of |w| over the living incoming synapses of each neuron (float64)."""
    living = weight.detach().double().abs() * mask
    sums = [float(living[neuron_index(module, o)].sum()) for o in range(out_channels(module))]
    return torch.tensor(sums, dtype=torch.float64)


def p_cluster(strengths: torch.Tensor, z: float) -> torch.Tensor:
    """P(s_c | W_c) = exp(S_c / Z_c - 1) (float64; 1 when Z_c = 0)."""
    if z == 0:
        return torch.ones_like(strengths, dtype=torch.float64)
    return torch.exp(strengths.double() / z - 1.0)


def solve_budget(p: torch.Tensor, fraction: float) -> float:
    """s with sum_c min(1, s * P_c) = fraction * n (bisection in float64; inf when fraction = 1)."""
    target = fraction * p.numel()
    if target >= p.numel():
        return math.inf
    lo, hi = 0.0, 1.0 / float(p.min())  # f(hi) = n > target
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float((mid * p).clamp(max=1.0).sum()) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def assert_binomial(kept: int, q: float, draws: int, what: str) -> float:
    expected = draws * q
    tol = N_SD * math.sqrt(draws * q * (1 - q)) + 1e-9
    assert abs(kept - expected) <= tol, f"{what}: kept {kept}, expected {expected:.1f} +- {tol:.1f}"
    return tol


def assert_sum_of_bernoullis(kept: int, q: torch.Tensor, draws: int, what: str) -> float:
    q = q.double()
    expected = draws * float(q.sum())
    tol = N_SD * math.sqrt(draws * float((q * (1 - q)).sum())) + 1e-9
    assert abs(kept - expected) <= tol, f"{what}: kept {kept}, expected {expected:.1f} +- {tol:.1f}"
    return tol


# ------------------------------------------------------------------------------ networks
def layer_under_test(kind: str) -> tuple[nn.Module, torch.Tensor]:
    """(network, example input): the layer under test is module "0", read by a 1x1 conv / linear
    "2", so that none of its neurons is an output (a sink) of the network."""
    if kind == "conv":
        model = nn.Sequential(nn.Conv2d(6, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 1))
        x = torch.randn(1, 6, 6, 6)
    elif kind == "conv_g2":
        model = nn.Sequential(nn.Conv2d(6, 16, 3, groups=2), nn.ReLU(), nn.Conv2d(16, 4, 1))
        x = torch.randn(1, 6, 6, 6)
    elif kind == "deconv":
        model = nn.Sequential(nn.ConvTranspose2d(6, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 1))
        x = torch.randn(1, 6, 4, 4)
    elif kind == "deconv_g2":
        model = nn.Sequential(nn.ConvTranspose2d(6, 16, 3, groups=2), nn.ReLU(), nn.Conv2d(16, 4, 1))
        x = torch.randn(1, 6, 4, 4)
    else:
        model = nn.Sequential(nn.Linear(20, 24), nn.ReLU(), nn.Linear(24, 3))
        x = torch.randn(1, 20)
    return model, x


def prepared_layer(kind: str, seed: int = 0):
    """The layer with per-neuron weight scales in [0.05, 1] (shuffled, so that a wrong neuron mapping
    is caught), and a parent that is 75% alive, with neuron 1 dead and a huge weight on a dead
    synapse of neuron 2 (a strength counting dead synapses would be dominated by it)."""
    g = torch.Generator().manual_seed(seed)
    model, x = layer_under_test(kind)
    module = model[0]
    n = out_channels(module)
    factors = torch.linspace(0.05, 1.0, n)[torch.randperm(n, generator=g)]
    with torch.no_grad():
        module.weight.copy_(torch.randn(module.weight.shape, generator=g))
        for o in range(n):
            module.weight[neuron_index(module, o)] *= factors[o]
    arch = trace_architecture(model, x)
    weights = synaptic_weights(model, arch)
    parent = Genome.full(arch)
    mask = torch.rand(module.weight.shape, generator=g) < 0.75
    mask[neuron_index(module, 1)] = False
    dead_spot = neuron_index(module, 2) + (0,) * (mask.dim() - len(neuron_index(module, 2)))
    if isinstance(module, nn.ConvTranspose2d):  # first input channel of neuron 2's group
        dead_spot = (neuron_index(module, 2)[0].start,) + dead_spot[1:]
    mask[dead_spot] = False
    with torch.no_grad():
        module.weight[dead_spot] = 100.0
    parent.masks["0"] = mask
    return model, module, arch, weights, parent


def mlp(widths: list[int], seed: int = 0, scales: list[float] | None = None) -> nn.Module:
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


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 8, 3, padding=1),
            bn1=nn.BatchNorm2d(8),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(8, 12, 3, padding=1),
            relu2=nn.ReLU(),
            up=nn.ConvTranspose2d(12, 8, 2, stride=2, groups=2),
            relu3=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(2),
            flat=nn.Flatten(),
            fc=nn.Linear(32, 10),
        )
    )


@pytest.fixture(scope="module")
def cnn():
    model = small_cnn()
    arch = trace_architecture(model, torch.randn(1, 3, 8, 8))
    return model, arch, synaptic_weights(model, arch)


def partial_parent(arch, seed: int, keep: float = 0.8, dead_neurons: dict[str, list[int]] | None = None) -> Genome:
    """A random parent (``keep`` of the synapses alive) with some neurons dead, closed under death."""
    g = torch.Generator().manual_seed(seed)
    parent = Genome({l.name: torch.rand(l.weight_shape, generator=g) < keep for l in arch.layers})
    for name, neurons in (dead_neurons or {}).items():
        layer = arch.layer(name)
        alive = torch.ones(layer.out_channels, dtype=torch.bool)
        alive[neurons] = False
        layer.keep_neurons(parent.masks[name], alive)
    kill_orphans(arch, parent)
    return parent


def synapse_level_before_cascade(arch, weights, parent, env, seed, normalizer="layer") -> dict[str, torch.Tensor]:
    """Each layer's synapse-level draw from ``parent`` (scale mode), before neuron death cascades."""
    z = normalizers(dict(weights), parent.masks, normalizer)
    return {
        l.name: sample_layer(
            weights[l.name], parent.masks[l.name], z[l.name], env.factor(l.name), derive_seed(seed, l.name)
        )
        for l in arch.layers
    }


# ------------------------------------------------------------------------------ 1. survival statistics
KINDS = ["conv", "conv_g2", "deconv", "deconv_g2", "linear"]
# a grouped layer's neurons live and die with their group (tests/test_coupling.py); on the network's
# input, as here, its groups cannot go at all: per-neuron statistics are for ungrouped layers
UNGROUPED = [kind for kind in KINDS if not kind.endswith("_g2")]


@pytest.mark.parametrize("kind", KINDS)
def test_cluster_strengths_and_normalizer_match_model(kind):
    _, module, arch, weights, parent = prepared_layer(kind)
    layer = arch.layer("0")
    s = cluster_strengths(layer, weights["0"], parent.masks["0"])
    expected = expected_strengths(module, weights["0"], parent.masks["0"])
    assert s.dtype == torch.float64
    torch.testing.assert_close(s, expected, rtol=1e-12, atol=1e-12)
    assert float(s[1]) == 0.0  # the dead cluster
    assert float(s.max()) < 100.0  # the huge dead weight is not counted
    z = cluster_normalizers({"0": s, "2": torch.tensor([0.5], dtype=torch.float64)})
    assert z["0"] == pytest.approx(float(expected.max()), rel=1e-12) and z["2"] == 0.5
    p = cluster_probability(s, parent.neurons(layer), z["0"])
    alive = parent.neurons(layer)
    torch.testing.assert_close(p, p_cluster(expected, z["0"]) * alive)
    assert float(p[1]) == 0.0 and float(p.max()) == pytest.approx(1.0)


@pytest.mark.parametrize("kind", UNGROUPED)
@pytest.mark.parametrize("mode,c", [("scale", 0.7), ("budget", 0.5), ("budget", 0.9)])
def test_cluster_survival_frequencies(kind, mode, c):
    _, module, arch, weights, parent = prepared_layer(kind, seed=KINDS.index(kind))
    assert not bool(arch.sinks["0"].any()), "the layer under test must not feed the output directly"
    layer = arch.layer("0")
    alive = parent.neurons(layer)
    assert not bool(alive[1]) and int(alive.sum()) == out_channels(module) - 1
    s = expected_strengths(module, weights["0"], parent.masks["0"])
    p = p_cluster(s, float(s.max()))[alive]
    if mode == "scale":
        q = c * p
    else:
        scale = solve_budget(p, c)
        q = (scale * p).clamp(max=1.0)
        assert float(q.sum()) == pytest.approx(c * p.numel(), rel=1e-9)
    env = Environment(c, mode)
    draws = DRAWS // 2 if c == 0.9 else DRAWS  # budget_scale's clipped solution costs ~0.5 ms a call
    survived = torch.zeros(out_channels(module), dtype=torch.int64)
    total = 0
    for d in range(draws):
        sv = surviving_clusters(arch, weights, parent, env, seed=d)["0"]
        assert sv.dtype == torch.bool and sv.shape == alive.shape
        survived += sv
        total += int(sv.sum())
    assert int(survived[1]) == 0, "a dead cluster survived"
    kept = survived[alive]
    for i, (k, qi) in enumerate(zip(kept.tolist(), q.tolist())):
        if qi >= 1.0 - 1e-9:
            assert k == draws, f"cluster {i} (s * P >= 1) missed a draw"
        else:
            assert_binomial(k, qi, draws, f"{kind} {mode} C={c}, living cluster {i}")
    tol = assert_sum_of_bernoullis(total, q, draws, f"{kind} {mode} C={c}: surviving clusters")
    if mode == "budget":  # the mean number of survivors is C of the living clusters
        assert abs(total / draws - c * p.numel()) <= tol / draws
        if c == 0.9:
            assert bool((q >= 1.0 - 1e-9).any()), "C=0.9 should clip the strongest clusters"
    # Discriminating: wrong models are far outside the band.
    if mode == "scale":  # P = C without exp(S/Z - 1); exp(S/Z) without the -1
        assert draws * float(c * p.numel() - q.sum()) > 3 * tol
        assert draws * float(q.sum()) * (math.e - 1) > 3 * tol
    else:  # budget mode read as scale mode (C * P) keeps far fewer
        assert draws * float(q.sum() - c * p.sum()) > 3 * tol


@pytest.mark.parametrize("kind", UNGROUPED)
def test_sample_clusters_uses_its_own_seeded_stream(kind):
    """Scale mode, written out: U_c ~ U(0,1) float64 from derive_seed(seed, "clusters", layer);
    the cluster survives iff it is alive and C * P_c >= U_c."""
    _, module, arch, weights, parent = prepared_layer(kind)
    layer = arch.layer("0")
    alive = parent.neurons(layer)
    s = expected_strengths(module, weights["0"], parent.masks["0"])
    q = 0.6 * p_cluster(s, float(s.max()))
    for seed in (0, 1, 12345, 2**62 + 7):
        g = torch.Generator().manual_seed(derive_seed(seed, "clusters", "0"))
        u = torch.rand(s.numel(), generator=g, dtype=torch.float64)
        expected = (q >= u) & alive
        got = sample_clusters(s, alive, float(s.max()), Environment(0.6), "0", seed)
        assert torch.equal(got, expected)
        assert torch.equal(surviving_clusters(arch, weights, parent, Environment(0.6), seed)["0"], expected)


def test_zero_strengths_survive_with_probability_c():
    """Z_c = 0 (every living weight zero): every cluster is as strong as the strongest, P = 1."""
    model, _ = layer_under_test("linear")
    with torch.no_grad():
        model[0].weight.zero_()
    arch = trace_architecture(model, torch.randn(1, 20))
    weights = synaptic_weights(model, arch)
    for env in (Environment(0.3), Environment(0.3, "budget")):
        total = sum(int(surviving_clusters(arch, weights, Genome.full(arch), env, d)["0"].sum()) for d in range(500))
        assert_sum_of_bernoullis(total, torch.full((24,), 0.3), 500, f"zero weights, {env.mode}")


# ------------------------------------------------------------------------------ 2. synapses of survivors
@pytest.mark.parametrize("kind", UNGROUPED)
def test_surviving_clusters_keep_exactly_their_synapses(kind):
    """With every synapse of the survivors kept (synaptic budget C = 1), neuron o of the offspring has
    exactly the parent's incoming synapses if its cluster survived, none otherwise (per-neuron indexing
    written out by hand: grouped and transposed convolutions included)."""
    _, module, arch, weights, parent = prepared_layer(kind)
    clusters = Environment(0.5)
    for seed in range(5):
        child = synthesize(arch, weights, parent, Environment(1.0, "budget"), seed, clusters=clusters)
        survivors = surviving_clusters(arch, weights, parent, clusters, seed)["0"]
        assert 0 < int(survivors.sum()) < int(parent.neurons(arch.layer("0")).sum())
        for o in range(out_channels(module)):
            idx = neuron_index(module, o)
            expected = parent.masks["0"][idx] if survivors[o] else torch.zeros_like(parent.masks["0"][idx])
            assert torch.equal(child.masks["0"][idx], expected), f"{kind}: neuron {o}"
        assert child.is_subset_of(parent)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("env", [Environment(0.5), Environment(0.6, "budget"), Environment(0.3, frozen=("fc",))])
def test_all_clusters_surviving_gives_the_synapse_level_genome(cnn, env, seed):
    _, arch, weights = cnn
    for parent in (Genome.full(arch), partial_parent(arch, seed, dead_neurons={"conv2": [0, 5], "up": [3]})):
        for normalizer in ("layer", "global"):
            synapse = synthesize(arch, weights, parent, env, seed, normalizer)
            cluster = synthesize(arch, weights, parent, env, seed, normalizer, clusters=Environment(1.0, "budget"))
            assert cluster.digest() == synapse.digest()


@pytest.mark.parametrize("seed", range(6))
def test_cluster_genome_is_synapse_draw_within_surviving_clusters(cnn, seed):
    """Same seed: the cluster-encoded genome = (synapse-level draw AND surviving-cluster rows), then
    neuron death; so it is a subset of the synapse-level offspring."""
    _, arch, weights = cnn
    env, clusters = Environment(0.6, layer_c=(("fc", 0.9),)), Environment(0.6)
    parent = partial_parent(arch, 100 + seed, keep=0.9, dead_neurons={"conv1": [2]})
    child = synthesize(arch, weights, parent, env, seed, clusters=clusters)
    survivors = surviving_clusters(arch, weights, parent, clusters, seed)
    draw = synapse_level_before_cascade(arch, weights, parent, env, seed)
    expected = {}
    for layer in arch.layers:
        mask = draw[layer.name].clone()
        layer.keep_neurons(mask, survivors[layer.name])
        expected[layer.name] = mask
    expected = Genome(expected)
    kill_orphans(arch, expected)
    assert child.digest() == expected.digest()
    assert child.is_subset_of(synthesize(arch, weights, parent, env, seed))
    assert child.is_subset_of(parent)
    some_died = False
    for layer in arch.layers:
        living = child.neurons(layer)
        assert not bool((living & ~survivors[layer.name]).any()), f"{layer.name}: a dropped cluster lives"
        some_died |= bool((parent.neurons(layer) & ~survivors[layer.name]).any())
    assert some_died


def test_dead_clusters_never_revive_over_generations(cnn):
    _, arch, weights = cnn
    parent = partial_parent(arch, 7, keep=0.9, dead_neurons={"conv1": [0, 1], "conv2": [4], "up": [0, 7]})
    for generation in range(2, 7):
        for clusters in (Environment(1.0), Environment(1.0, "budget"), Environment(0.8, "budget")):
            child = synthesize(
                arch, weights, parent, Environment(0.9, "budget"), derive_seed("g", generation), clusters=clusters
            )
            child.validate(arch)
            assert child.is_subset_of(parent)
            for layer in arch.layers:
                assert not bool((child.neurons(layer) & ~parent.neurons(layer)).any()), layer.name
        # the next parent: 90% of the clusters and of their synapses in expectation
        env, clusters = Environment(0.9, "budget"), Environment(0.9, "budget")
        parent = synthesize(arch, weights, parent, env, generation, clusters=clusters)
        assert count_neurons(arch, parent) > 0
    assert parent.synapses() > 0


def count_neurons(arch, genome: Genome) -> int:
    return sum(int(genome.neurons(layer).sum()) for layer in arch.layers)


# ------------------------------------------------------------------------------ 3. sinks
def test_output_units_never_die_as_clusters():
    model = mlp([32, 256, 10], seed=3)
    arch = trace_architecture(model, torch.randn(1, 32))
    weights = synaptic_weights(model, arch)
    assert bool(arch.sinks["fc2"].all()) and not bool(arch.sinks["fc1"].any())
    parent = Genome.full(arch)
    parent.masks["fc2"][7] = False  # a class unit dead in the parent stays dead
    for clusters in (Environment(0.05), Environment(0.05, "budget")):
        hidden = 0
        for seed in range(300):
            survivors = surviving_clusters(arch, weights, parent, clusters, seed)
            expected_out = torch.ones(10, dtype=torch.bool)
            expected_out[7] = False
            assert torch.equal(survivors["fc2"], expected_out)
            hidden += int(survivors["fc1"].sum())
            if seed % 10 == 0:  # keep every synapse of the survivors: outputs live iff fed
                child = synthesize(arch, weights, parent, Environment(1.0, "budget"), seed, clusters=clusters)
                fed = bool(survivors["fc1"].any())
                assert torch.equal(child.neurons(arch.layer("fc2")), expected_out & fed)
        assert hidden < 0.06 * 256 * 300  # the hidden layer's clusters did die


# ------------------------------------------------------------------------------ 4. reproducibility
def test_resynthesis_is_bit_identical_and_seeds_differ(cnn):
    _, arch, weights = cnn
    parent = partial_parent(arch, 3, keep=0.85)
    env, clusters = Environment(0.7), Environment(0.7, "budget")
    digests = []
    for seed in range(6):
        rng = torch.get_rng_state()
        first = synthesize(arch, weights, parent, env, seed, clusters=clusters)
        assert torch.equal(torch.get_rng_state(), rng), "synthesis consumed the global RNG"
        again = synthesize(arch, weights, parent, env, seed, clusters=clusters)
        copy = Genome({k: v.clone() for k, v in parent.masks.items()})
        third = synthesize(arch, {k: v.clone() for k, v in weights.items()}, copy, env, seed, clusters=clusters)
        assert first.digest() == again.digest() == third.digest()
        assert torch.equal(copy.masks["conv2"], parent.masks["conv2"]), "synthesis modified the parent"
        digests.append(first.digest())
    assert len(set(digests)) == len(digests)


def test_synapse_level_genomes_unchanged_by_cluster_encoding(cnn):
    """clusters=None is the paper's encoding, bit for bit: the synapse stream written out by hand."""
    _, arch, weights = cnn
    parent = partial_parent(arch, 5)
    env = Environment(0.5)
    for seed in range(4):
        a = synthesize(arch, weights, parent, env, seed)
        b = synthesize(arch, weights, parent, env, seed, clusters=None)
        expected = Genome(synapse_level_before_cascade(arch, weights, parent, env, seed))
        kill_orphans(arch, expected)
        assert a.digest() == b.digest() == expected.digest()
        # a cluster-encoded draw in between does not disturb the next synapse-level one
        synthesize(arch, weights, parent, env, seed, clusters=Environment(0.3))
        assert synthesize(arch, weights, parent, env, seed).digest() == a.digest()
        assert derive_seed(seed, "clusters", "conv1") != derive_seed(seed, "conv1")


# ------------------------------------------------------------------------------ 5. frozen, per-layer C
def test_frozen_layers_keep_all_their_clusters(cnn):
    _, arch, weights = cnn
    parent = partial_parent(arch, 11, keep=0.9, dead_neurons={"conv1": [3]})
    clusters = Environment(0.05, frozen=("conv*",))
    lost_up = 0
    for seed in range(40):
        survivors = surviving_clusters(arch, weights, parent, clusters, seed)
        for name in ("conv1", "conv2"):
            assert torch.equal(survivors[name], parent.neurons(arch.layer(name))), name
        lost_up += int((parent.neurons(arch.layer("up")) & ~survivors["up"]).sum())
        child = synthesize(arch, weights, parent, Environment(1.0, "budget"), seed, clusters=clusters)
        assert torch.equal(child.masks["conv1"], parent.masks["conv1"])  # nothing upstream to die
        assert torch.equal(child.neurons(arch.layer("conv2")), parent.neurons(arch.layer("conv2")))
        # "up" is a grouped deconvolution with wide groups: output j of both groups lives or dies as one
        up, alive = survivors["up"].view(2, 4), parent.neurons(arch.layer("up")).view(2, 4)
        both = alive[0] & alive[1]
        assert torch.equal(up[0][both], up[1][both])
    assert lost_up > 0.8 * 40 * 8  # "up" is not frozen: at C=0.05 nearly all its clusters die
    for seed in range(5):  # budget mode too
        survivors = surviving_clusters(arch, weights, parent, Environment(0.05, "budget", frozen=("conv1",)), seed)
        assert torch.equal(survivors["conv1"], parent.neurons(arch.layer("conv1")))


def test_per_layer_c_overrides_apply_to_clusters():
    model = mlp([64, 128, 128, 16, 4], seed=5)
    arch = trace_architecture(model, torch.randn(1, 64))
    weights = synaptic_weights(model, arch)
    parent = Genome.full(arch)
    draws = 600
    cases = {
        "scale": (Environment(0.9, layer_c=(("fc[12]", 0.2), ("fc2", 0.7))), {"fc1": 0.2, "fc2": 0.2, "fc3": 0.9}),
        "budget": (Environment(0.9, "budget", layer_c=(("fc3", 0.25),)), {"fc1": 0.9, "fc2": 0.9, "fc3": 0.25}),
    }
    for mode, (env, factors) in cases.items():
        kept = {name: 0 for name in factors}
        for d in range(draws):
            survivors = surviving_clusters(arch, weights, parent, env, seed=d)
            assert bool(survivors["fc4"].all())  # the output: no C applies
            for name in factors:
                kept[name] += int(survivors[name].sum())
        for name, c in factors.items():
            module = dict(model.named_modules())[name]
            s = expected_strengths(module, weights[name], parent.masks[name])
            p = p_cluster(s, float(s.max()))
            q = c * p if mode == "scale" else (solve_budget(p, c) * p).clamp(max=1.0)
            tol = assert_sum_of_bernoullis(kept[name], q, draws, f"{mode} {name} C={c}")
            q_default = env.c * p if mode == "scale" else (solve_budget(p, env.c) * p).clamp(max=1.0)
            if c != env.c:  # the override is far from the default, by far more than noise
                assert draws * abs(float(q.sum() - q_default.sum())) > 3 * tol


# ------------------------------------------------------------------------------ 6. global normalizer
def test_global_normalizer_uses_the_networks_largest_cluster_strength():
    model = mlp([256, 64, 64, 8], seed=9, scales=[4.0, 1.0, 0.5])
    arch = trace_architecture(model, torch.randn(1, 256))
    weights = synaptic_weights(model, arch)
    parent = partial_parent(arch, 1, keep=0.9)
    modules = dict(model.named_modules())
    s = {l.name: expected_strengths(modules[l.name], weights[l.name], parent.masks[l.name]) for l in arch.layers}
    top = max(float(v.max()) for v in s.values())
    assert top == pytest.approx(float(s["fc1"].max()))  # the wide, large-weight layer
    strengths = {l.name: cluster_strengths(l, weights[l.name], parent.masks[l.name]) for l in arch.layers}
    z_global = cluster_normalizers(strengths, "global")
    z_layer = cluster_normalizers(strengths, "layer")
    for name in s:
        assert z_global[name] == pytest.approx(top, rel=1e-12)
        assert z_layer[name] == pytest.approx(float(s[name].max()), rel=1e-12)
    assert cluster_normalizers({}, "global") == {}
    with pytest.raises(ValueError, match="normalizer"):
        cluster_normalizers(strengths, "median")

    c, draws = 0.8, 500
    kept = {kind: {"fc1": 0, "fc2": 0} for kind in ("layer", "global")}
    for d in range(draws):
        for kind in ("layer", "global"):
            survivors = surviving_clusters(arch, weights, parent, Environment(c), d, normalizer=kind)
            for name in ("fc1", "fc2"):
                kept[kind][name] += int(survivors[name].sum())
    for name in ("fc1", "fc2"):
        q = {"layer": c * p_cluster(s[name], float(s[name].max())), "global": c * p_cluster(s[name], top)}
        for kind in ("layer", "global"):
            assert_sum_of_bernoullis(kept[kind][name], q[kind], draws, f"{kind} normalizer, {name}")
    q_fc2 = {kind: c * p_cluster(s["fc2"], z) for kind, z in (("layer", float(s["fc2"].max())), ("global", top))}
    tol = N_SD * math.sqrt(draws * float((q_fc2["global"] * (1 - q_fc2["global"])).sum()))
    assert draws * float(q_fc2["layer"].sum() - q_fc2["global"].sum()) > 3 * tol  # the two differ

    # synthesize passes its normalizer to the clusters: with every synapse of the survivors kept,
    # fc2's living neurons are exactly its surviving clusters (fed by fc1's many survivors)
    differs = False
    for seed in range(10):
        child = synthesize(arch, weights, parent, Environment(1.0, "budget"), seed, "global", clusters=Environment(c))
        global_ = surviving_clusters(arch, weights, parent, Environment(c), seed, "global")
        layer_ = surviving_clusters(arch, weights, parent, Environment(c), seed, "layer")
        assert torch.equal(child.neurons(arch.layer("fc2")), global_["fc2"])
        differs |= not torch.equal(global_["fc2"], layer_["fc2"])
    assert differs


# ------------------------------------------------------------------------------ config and specs
CLUSTER_CONFIG = {"evolution": {"encoding": "cluster", "clusters": {"c": 0.5, "mode": "budget"}}}


def test_config_accepts_cluster_encoding():
    for config in (load_config(CLUSTER_CONFIG), Config.model_validate(CLUSTER_CONFIG)):
        assert config.evolution.encoding == "cluster"
        assert (config.evolution.clusters.c, config.evolution.clusters.mode) == (0.5, "budget")
        # the synaptic environment is separate: not set, it keeps every synapse of a surviving cluster
        assert (config.evolution.environment.c, config.evolution.environment.mode) == (1.0, "budget")
    config = load_config(None, ["evolution.encoding=cluster", "evolution.clusters.c=0.25"])
    assert (config.evolution.encoding, config.evolution.clusters.c) == ("cluster", 0.25)
    assert load_config().evolution.encoding == "synapse"  # the paper's encoding by default
    config = load_config(CLUSTER_CONFIG, ["evolution.clusters.multiple=8"])
    assert schedule_of(config.evolution, "clusters").at(2).multiple == 8


@pytest.mark.parametrize(
    "evolution,message",
    [
        ({"encoding": "filters"}, "evolution.encoding: Input should be 'synapse' or 'cluster'"),
        ({"encoding": "cluster", "clusters": {"c": 0}}, "evolution.clusters.c: C must be in (0, 1]"),
        ({"clusters": {"c": 1.5}}, "evolution.clusters.c: C must be in (0, 1]"),
        ({"clusters": {"mode": "linear"}}, "evolution.clusters.mode: Input should be 'scale', 'budget' or 'network'"),
        ({"clusters": {"layers": {"fc*": 0}}}, "C of layers 'fc*' must be in (0, 1]"),
        ({"clusters": {"schedule": {1: 0.5}}}, "schedule generations start at 2"),
        ({"clusters": {"cc": 0.5}}, "evolution.clusters.cc: unknown key; did you mean 'c'?"),
        ({"encoding": "cluster", "clusters": {"multiple": 0}}, "evolution.clusters.multiple: Input should be"),
        ({"encoding": "cluster", "environment": {"multiple": 8}}, "set clusters.multiple"),
    ],
)
def test_config_rejects_bad_cluster_settings(evolution, message):
    with pytest.raises(ConfigError) as err:
        load_config({"evolution": evolution})
    assert message in str(err.value)


def root_record() -> IndividualRecord:
    return IndividualRecord(run_id="r", individual_id="g1-0", lineage=("g1-0",))


def test_offspring_specs_carry_the_cluster_environment():
    config = load_config(
        {
            "evolution": {
                "encoding": "cluster",
                "offspring": 3,
                "environment": {"c": 0.7},
                "clusters": {"c": 0.5, "mode": "budget", "layers": {"fc*": 0.8}, "frozen": ["conv1"]},
            }
        }
    )
    specs = offspring_specs(config, 2, [root_record()])
    assert len(specs) == 3
    for spec in specs:
        assert isinstance(spec.clusters, Environment)
        assert spec.clusters == Environment(0.5, "budget", (("fc*", 0.8),), ("conv1",))
        assert spec.environment == Environment(0.7)
    with pytest.raises(ConfigError, match="clusters is set, but encoding is 'synapse'"):
        load_config({"evolution": {"clusters": {"c": 0.5, "mode": "budget"}}})
    for spec in offspring_specs(load_config(), 2, [root_record()]):
        assert spec.clusters is None
        assert spec.environment == Environment(0.4)
    # the cluster encoding changes nothing else of a spec (ids, seeds)
    plain = offspring_specs(load_config(), 2, [root_record()])
    cluster = offspring_specs(load_config(CLUSTER_CONFIG), 2, [root_record()])
    assert [(s.individual_id, s.seed, s.train_seed) for s in plain] == [
        (s.individual_id, s.seed, s.train_seed) for s in cluster
    ]


def test_cluster_schedule_follows_generations():
    config = load_config({"evolution": {"encoding": "cluster", "clusters": {"c": 0.8, "schedule": {3: 0.3}}}})
    assert offspring_specs(config, 2, [root_record()])[0].clusters.c == 0.8
    assert offspring_specs(config, 3, [root_record()])[0].clusters.c == 0.3
    assert offspring_specs(config, 9, [root_record()])[0].clusters.c == 0.3


@pytest.mark.parametrize("field", ["frozen=[head.*]", "layers={'fc*': 0.5}"])
def test_cluster_layer_patterns_are_checked_before_ray(field):
    config = load_config(None, ["evolution.encoding=cluster", f"evolution.clusters.{field}"])
    with pytest.raises(ConfigError, match=r"evolution\.clusters\.\w+: pattern .* matches no synaptic layer"):
        plan_run(config)


def test_clusters_alone_keep_every_synapse_of_a_surviving_cluster(cnn):
    """encoding: cluster with only the clusters set: the synapse level does nothing (budget 1.0), and
    what generation 2 keeps is said before any work starts."""
    from evopop.engine.plan import expected_survival

    config = load_config(CLUSTER_CONFIG)
    assert (config.evolution.environment.c, config.evolution.environment.mode) == (1.0, "budget")
    assert expected_survival(config.evolution) == (
        "generation 2 keeps about 50% of the clusters (filters / units) (budget); "
        "then every one of the synapses of a surviving cluster"
    )
    told = load_config({"evolution": {**CLUSTER_CONFIG["evolution"], "environment": {"c": 0.7}}})
    assert (told.evolution.environment.c, told.evolution.environment.mode) == (0.7, "scale"), "set: kept as set"
    assert load_config(None).evolution.environment.c == 0.4, "the synapse encoding keeps the paper's default"
    _, arch, weights = cnn
    spec = offspring_specs(config, 2, [root_record()])[0]
    child = synthesize(arch, weights, Genome.full(arch), spec.environment, 5, clusters=spec.clusters)
    for layer in arch.layers[:1]:  # the first layer's inputs never die: its surviving filters keep every synapse
        assert child.masks[layer.name][child.neurons(layer)].all()
    assert count(arch, child).synapses < count(arch, Genome.full(arch)).synapses, "whole clusters died"
