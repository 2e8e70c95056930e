"""Multi-parent synthesis (``evolution.parents``, issue 14 part 1): the m-parent probability model
against its equation, the hereditary rule of combined masks, m = 1 as the single-parent method bit
for bit, and the engine's families, records, diversity and bad input.

The statistical tests use the band of `test_synthesis_statistics`: a kept count within 5 standard
deviations of a sum of independent Bernoullis (a correct implementation fails with p < 1e-6; every
seed is fixed), with the expected probabilities computed here in float64 from the parents' weights.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from test_policy import TINY
from test_synthesis_statistics import assert_within, linear_net, setup

from evopop.config import ConfigError, load_config
from evopop.records.run import RunRecords
from evopop.synthesis import Environment, Genome, mate, mean_weights, synthesize, trace_architecture
from evopop.synthesis.clusters import cluster_strengths, surviving_clusters


def two_parents(seed: int = 5, in_features: int = 128, out_features: int = 256):
    """Two relatives: the second parent is the first with its weights perturbed and a third of its
    synapses dead (as a sibling of the first would be)."""
    model = linear_net([in_features, out_features], seed=seed)
    arch, weights_a = setup(model, in_features)
    g = torch.Generator().manual_seed(seed)
    weights_b = {"fc1": weights_a["fc1"] * torch.exp(0.5 * torch.randn(weights_a["fc1"].shape, generator=g))}
    genome_a = Genome.full(arch)
    dead = torch.rand(weights_a["fc1"].shape, generator=g) < 1 / 3
    genome_b = Genome({"fc1": ~dead})
    return arch, (weights_a, genome_a), (weights_b, genome_b)


def test_the_mated_strength_is_the_product_of_the_parents_magnitudes_on_their_intersection():
    arch, (wa, ga), (wb, gb) = two_parents()
    mated = mate(arch, [(wa, ga), (wb, gb)])
    expected = (wa["fc1"].double().abs() * wb["fc1"].double().abs()) * (ga.masks["fc1"] & gb.masks["fc1"])
    expected /= float(wa["fc1"].abs().max()) * float(wb["fc1"].abs().max())  # constants that cancel against Z
    assert torch.allclose(mated.strengths["fc1"].double(), expected, rtol=1e-6, atol=0)
    assert torch.equal(mated.genome.masks["fc1"], ga.masks["fc1"] & gb.masks["fc1"])


def test_a_product_of_many_small_weights_does_not_underflow():
    arch, (wa, ga), _ = two_parents()
    tiny = {"fc1": wa["fc1"] * 1e-4}  # |w| ~ 1e-4: a product of 12 is 1e-48, below float32's range
    mated = mate(arch, [(tiny, ga)] * 12)
    assert int((mated.strengths["fc1"] > 0).sum()) > 0.9 * ga.masks["fc1"].numel()


def relatives(m: int, seed: int = 5):
    """m relatives: the first parent, and m - 1 more with its weights perturbed and a third of their
    synapses dead (as siblings of the first would be)."""
    arch, first, second = two_parents(seed)
    parents = [first, second]
    for k in range(2, m):
        g = torch.Generator().manual_seed(seed + k)
        w = first[0]["fc1"]
        noisy = {"fc1": w * torch.exp(0.5 * torch.randn(w.shape, generator=g))}
        parents.append((noisy, Genome({"fc1": torch.rand(w.shape, generator=g) >= 1 / 3})))
    return arch, parents[:m]


@pytest.mark.parametrize("m, c", [(2, 0.3), (2, 0.8), (3, 0.6)])
def test_m_parent_survival_follows_c_exp_of_the_normalised_product(m, c):
    arch, parents = relatives(m)
    mated = mate(arch, parents)
    product = torch.ones(parents[0][0]["fc1"].numel(), dtype=torch.float64)
    both = torch.ones_like(product, dtype=torch.bool)
    for weights, genome in parents:
        product *= weights["fc1"].double().abs().reshape(-1)
        both &= genome.masks["fc1"].reshape(-1)
    z = float(product[both].max())
    q = torch.where(both, c * torch.exp(product / z - 1.0), torch.zeros_like(product))
    draws = 8
    kept = torch.zeros(product.numel(), dtype=torch.int64)
    for s in range(draws):
        child = synthesize(arch, mated.strengths, mated.genome, Environment(c), seed=300 + s)
        kept += child.masks["fc1"].reshape(-1)
    tol = assert_within(int(kept.sum()), q, draws, f"m={m}, C={c}, all synapses")
    # per quintile of the mated strength: the shape of the model, not only its mean
    x = product / z
    edges = torch.quantile(x[both], torch.linspace(0, 1, 6, dtype=torch.float64))
    edges[-1] += 1
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = both & (x >= lo) & (x < hi)
        assert_within(int(kept[sel].sum()), q[sel], draws, f"M/Z in [{float(lo):.3f}, {float(hi):.3f})")
    # discriminating: the first parent's model alone (|w_1| / Z_1) expects far more or fewer
    alone = parents[0][0]["fc1"].double().abs().reshape(-1)
    q_alone = torch.where(both, c * torch.exp(alone / float(alone[both].max()) - 1.0), torch.zeros_like(alone))
    assert abs(draws * float(q_alone.sum()) - draws * float(q.sum())) > 3 * tol


def test_a_synapse_lives_in_the_offspring_only_where_it_lives_in_every_parent():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 6, 3), torch.nn.Flatten(), torch.nn.Linear(96, 5)
    )
    arch = trace_architecture(model, torch.randn(1, 3, 8, 8))
    weights = {layer.name: dict(model.named_modules())[layer.name].weight.detach() for layer in arch.layers}
    parents = []
    for k in range(3):  # three relatives, each missing synapses and a whole filter of its own
        g = torch.Generator().manual_seed(k)
        masks = {name: torch.rand(w.shape, generator=g) > 0.2 for name, w in weights.items()}
        masks["0"][k] = False  # filter k of the first conv is dead in parent k
        noisy = {name: w * (1 + 0.3 * torch.randn(w.shape, generator=g)) for name, w in weights.items()}
        parents.append((noisy, Genome(masks)))
    mated = mate(arch, parents)
    for seed in range(20):
        child = synthesize(arch, mated.strengths, mated.genome, Environment(0.9, "budget"), seed=seed)
        for name in weights:
            for _, parent in parents:
                assert not bool((child.masks[name] & ~parent.masks[name]).any()), f"{name}: outside a parent"
        # a neuron dead in any parent is dead in the offspring, and so are its outgoing synapses
        assert not bool(child.masks["0"][:3].any()) and not bool(child.masks["2"][:, :3].any())


def test_mated_cluster_strengths_multiply_and_only_common_clusters_survive():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    arch = trace_architecture(model, torch.randn(1, 3, 8, 8))
    layer = arch.layers[0]
    w = model[0].weight.detach()
    ga = Genome.full(arch)
    gb = Genome.full(arch)
    gb.masks["0"][5] = False  # filter 5 dead in the second parent
    wb = {"0": w * 2.0, "2": model[2].weight.detach()}
    wa = {"0": w.clone(), "2": model[2].weight.detach()}
    # filter 6 lives in both parents, on input channel 0 in one and on the others in the other: it dies
    # in the intersection, and must not set the layer's largest strength Z_c
    ga.masks["0"][6, 1:] = False
    gb.masks["0"][6, :1] = False
    wa["0"][6], wb["0"][6] = 100.0, 100.0
    mated = mate(arch, [(wa, ga), (wb, gb)])
    expected = cluster_strengths(layer, wa["0"], ga.masks["0"]) * cluster_strengths(layer, wb["0"], gb.masks["0"])
    expected[6] = 0.0
    largest = [max(float(v.abs().max()) for v in p.values()) for p in (wa, wb)]
    scale = largest[0] * largest[1]  # each parent over its largest |w|: constants that cancel in M / Z
    assert torch.allclose(mated.cluster_strengths["0"] * scale, expected, rtol=1e-12)
    assert mated.cluster_strengths["0"][5] == 0 and mated.cluster_strengths["0"][6] == 0
    for seed in range(10):
        survivors = surviving_clusters(
            arch, mated.strengths, mated.genome, Environment(1.0), seed, strengths=mated.cluster_strengths
        )
        assert not bool(survivors["0"][5])


def test_one_parent_mated_is_the_single_parent_method_bit_for_bit():
    model = linear_net([64, 96, 10], seed=3)
    arch, weights = setup(model, 64)
    parent = synthesize(arch, weights, Genome.full(arch), Environment(0.7), seed=1)
    mated = mate(arch, [(weights, parent)])
    for env, clusters in [(Environment(0.5), None), (Environment(0.6, "budget", sharpness=4.0), Environment(0.8))]:
        for seed in range(5):
            alone = synthesize(arch, weights, parent, env, seed, clusters=clusters)
            one = synthesize(arch, mated.strengths, mated.genome, env, seed, "layer", clusters, mated.cluster_strengths)
            assert alone.digest() == one.digest()


def test_the_offspring_starts_from_the_mean_of_its_parents_weights():
    a = {"w": torch.tensor([1.0, 3.0]), "steps": torch.tensor(7)}
    b = {"w": torch.tensor([3.0, 5.0]), "steps": torch.tensor(9)}
    mean = mean_weights([a, b])
    assert torch.equal(mean["w"], torch.tensor([2.0, 4.0])) and int(mean["steps"]) == 7


# -- the engine ----------------------------------------------------------------------------------
MATING = ["evolution.parents=2", "selection.rule=topk", "selection.k=2", "evolution.offspring=2"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["evolution.parents=2"], "selection.rule best selects 1"),
        (["evolution.parents=3", "selection.rule=topk", "selection.k=2"], "needs at least 3 selected"),
        (["evolution.parents=4", "selection.rule=all", "evolution.offspring=3"], "evolution.offspring is 3"),
        (
            ["evolution.parents=3", "selection.rule=topk", "selection.k=5", "evolution.offspring=2"],
            "generation 2 has 2 offspring",
        ),
        ([*MATING, "evolution.generations=2"], "needs evolution.generations >= 3"),
        (["evolution.parents=0"], "evolution.parents: Input should be greater than or equal to 1"),
    ],
)
def test_more_parents_than_selection_supplies_is_refused_before_any_work(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, overrides)


def test_the_command_line_refuses_too_many_parents_with_exit_2(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "evopop", "run", str(TINY), "evolution.parents=2", f"storage.path={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "evolution.parents (2)" in run.stderr
    assert not any(tmp_path.iterdir())


def test_each_selected_individual_mates_with_the_next_and_records_every_parent(tmp_path):
    from evopop.api import evolve

    config = load_config(TINY, [*MATING, "resources.executor=local", "compaction.enabled=false"])
    run_dir = str(tmp_path / "run")
    population = evolve(config, run_dir).set_index("individual_id")
    g2 = population[population["generation"] == 2]
    assert all(list(p) == ["g1-0"] for p in g2["parent_ids"]), "generation 2 has one ancestor to descend from"
    ranked = g2[g2["selected"].astype(bool)].sort_values("rank").index.tolist()
    g3 = population[population["generation"] == 3]
    families = [tuple(p) for p in g3["parent_ids"]]
    assert families == [tuple(ranked)] * 2 + [tuple(reversed(ranked))] * 2, "rank r mates with rank r + 1"
    assert g3["parent_id"].tolist() == [ranked[0]] * 2 + [ranked[1]] * 2
    records = RunRecords(run_dir)
    parents = [Genome.from_state_dict(records.read_checkpoint(p).masks) for p in ranked]
    for individual_id in g3.index:
        child = Genome.from_state_dict(records.read_checkpoint(individual_id).masks)
        for parent in parents:
            assert all(not bool((child.masks[n] & ~parent.masks[n]).any()) for n in child.masks)
    # diversity: offspring of one set of parents are siblings, whichever parent heads their family
    pairs = records.diversity_pairs()
    g3_pairs = pairs[(pairs["generation"] == 3) & (pairs["scope"] == "network")]
    assert g3_pairs["siblings"].all() and set(g3_pairs["parent_a"]) == {"+".join(sorted(ranked))}
    # the ancestry follows every parent; the population table names them
    from evopop.analysis.loading import load_run
    from evopop.analysis.tables import population_table

    run = load_run(run_dir)
    assert run.ancestry(g3.index[0]) == sorted(ranked, key=lambda i: int(i.split("-")[1])) + ["g1-0"]
    assert run.population.set_index("individual_id").loc[g3.index[0], "lineage"].tolist() == [
        "g1-0",
        ranked[0],
        g3.index[0],
    ], "lineage: through first parents"
    shown = population_table(run.population, "val_accuracy").set_index("individual_id")["parent_id"]
    assert shown[g3.index[0]] == "+".join(ranked)
    # the lineage tree draws both parents
    from evopop.analysis.report import build_report

    html = build_report(run_dir).read_text()
    assert '<img src="lineage_tree.png"' in html
    from evopop.analysis.figures import figure_lineage_tree

    dotted = [line for line in figure_lineage_tree(run).axes[0].get_lines() if line.get_linestyle() == ":"]
    assert len(dotted) == len(g3) + len(population[population["generation"] == 4]), "one per second parent"


def test_halving_and_mating_together(tmp_path):
    from evopop.api import evolve

    overrides = [*MATING, "evolution.offspring=4", "train.epochs=4", "selection.halving={eta: 2, min_epochs: 1}"]
    config = load_config(TINY, [*overrides, "resources.executor=local", "compaction.enabled=false"])
    population = evolve(config, str(tmp_path / "run"))
    g3 = population[population["generation"] == 3]
    assert all(len(p) == 2 for p in g3["parent_ids"])
    assert (g3["status"] == "stopped").sum() == 8 - 2 and (g3["status"] == "ok").sum() == 2, "8 -> 4 -> 2"


def test_single_parent_records_are_those_of_the_method_before_mating_existed(tmp_path):
    """evolution.parents: 1 (the default) records no mates and synthesizes as before: the same
    genomes as the paper's single-parent synthesis computed here from the recorded parents."""
    from evopop.api import evolve
    from evopop.engine.worker.develop import Developer

    config = load_config(TINY, ["resources.executor=local", "compaction.enabled=false", "evolution.parents=1"])
    run_dir = str(tmp_path / "run")
    population = evolve(config, run_dir)
    offspring = population[population["generation"] > 1]
    assert all(list(p) == [parent] for p, parent in zip(offspring["parent_ids"], offspring["parent_id"]))
    records, developer = RunRecords(run_dir), Developer(config, run_dir)
    for _, row in offspring.iterrows():
        parent = records.read_checkpoint(row["parent_id"])
        model = developer.task.build_model()
        model.load_state_dict(parent.weights)
        weights = {
            layer.name: dict(model.named_modules())[layer.name].weight.detach() for layer in developer.arch.layers
        }
        env = Environment(row["env_factor"], row["env_mode"])
        genome = synthesize(developer.arch, weights, Genome.from_state_dict(parent.masks), env, int(row["seed"]))
        assert genome.digest() == row["mask_digest"]
