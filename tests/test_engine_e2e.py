"""End-to-end runs of the population engine on a local Ray cluster (shared session fixture)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from evopop.api import evolve
from evopop.config import load_config
from evopop.engine.policy.specs import offspring_specs
from evopop.records.run import RunRecords
from evopop.synthesis import Genome, synthesize, trace_architecture
from evopop.tasks.registry import build_task

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def run_config(tmp_path, *overrides: str):
    config = load_config(CONFIGS / "tiny.yaml", list(overrides))
    run_dir = str(tmp_path / "run")
    RunRecords(run_dir).write_config(config.to_yaml())
    population = evolve(config, run_dir)
    return config, run_dir, population


def assert_lineages_valid(population: pd.DataFrame):
    by_id = population.set_index("individual_id")
    for _, row in population.iterrows():
        lineage = list(row["lineage"])
        assert lineage[-1] == row["individual_id"]
        assert lineage[0] == "g1-0"
        assert len(lineage) == row["generation"]
        if row["generation"] == 1:
            assert pd.isna(row["parent_id"])
            continue
        parent = by_id.loc[row["parent_id"]]
        assert parent["generation"] == row["generation"] - 1
        assert bool(parent["selected"]), "offspring must descend from a selected individual"
        assert list(parent["lineage"]) == lineage[:-1]
        # heredity: strictly fewer synapses than the parent, counted consistently
        assert row["synapses"] < parent["synapses"]
        assert row["parent_synapses"] == parent["synapses"]
        assert row["efficiency"] == pytest.approx(row["ancestor_synapses"] / row["synapses"])


def test_best_lineage_run(ray_cluster, tmp_path):
    config, run_dir, population = run_config(tmp_path)
    # 1 ancestor + 2 generations x 3 offspring of the single best
    assert len(population) == 1 + 3 + 3
    assert population["individual_id"].is_unique
    assert (population["status"] == "ok").all(), population["error"].dropna().tolist()
    assert_lineages_valid(population)

    # selection: exactly the best (max val_accuracy, ties by id) of each generation
    for _, group in population.groupby("generation"):
        chosen = group[group["selected"].astype(bool)]
        assert len(chosen) == 1
        best = group.sort_values(["val_accuracy", "individual_id"], ascending=[False, True]).iloc[0]
        assert chosen.iloc[0]["individual_id"] == best["individual_id"]

    # readable by plain pandas and, where installed, DuckDB
    raw = pd.read_parquet(Path(run_dir) / "population")
    assert len(raw) == 7 and set(raw["individual_id"]) == set(population["individual_id"])
    duckdb = pytest.importorskip("duckdb")
    n = duckdb.sql(f"select count(*) from read_parquet('{run_dir}/population/*/*.parquet', hive_partitioning=true)")
    assert n.fetchall()[0][0] == 7

    # every record points at a checkpoint that loads with weights_only and matches the counts
    records = RunRecords(run_dir)
    for _, row in population.iterrows():
        payload = records.read_checkpoint(row["individual_id"])
        genome = Genome.from_state_dict(payload.masks)
        assert genome.synapses() == row["synapses"]
        assert genome.digest() == row["mask_digest"]
        for name, mask in payload.masks.items():  # dead synapses are exactly zero in the weights
            assert not payload.weights[f"{name}.weight"][~mask].any()


def test_offspring_resynthesize_bit_identically(ray_cluster, tmp_path):
    """Any offspring can be re-synthesized later from its parent's checkpoint and its spec."""
    config, run_dir, population = run_config(tmp_path)
    records = RunRecords(run_dir)
    task = build_task(config.task.name, config.task.args)
    arch = trace_architecture(task.build_model(), task.example_input())
    root = records.individuals(1)[0]
    parent = records.read_checkpoint("g1-0")
    weights = {l.name: parent.weights[f"{l.name}.weight"] for l in arch.layers}
    for spec in offspring_specs(config, 2, [root]):
        child = synthesize(arch, weights, Genome.from_state_dict(parent.masks), spec.environment, spec.seed)
        recorded = population.set_index("individual_id").loc[spec.individual_id]
        assert child.digest() == recorded["mask_digest"]


def test_topk_selection_and_fractional_gpus(ray_cluster, tmp_path):
    # fake GPUs (scheduling only): two trainers packed at half a GPU each
    config, run_dir, population = run_config(
        tmp_path, "selection.rule=topk", "selection.k=2", "evolution.offspring=2", "resources.gpus_per_trainer=0.5"
    )
    counts = population.groupby("generation").size().to_dict()
    assert counts == {1: 1, 2: 2, 3: 4}  # generation 3: 2 offspring of each of the top 2
    assert population[population["generation"] == 2]["selected"].astype(bool).all()
    assert_lineages_valid(population)


def test_user_task_by_import_path(ray_cluster, tmp_path):
    config, run_dir, population = run_config(
        tmp_path,
        "task.name=user_tasks:regression",
        "task.args={hidden: 12}",
        "selection.metric=holdout_mae",
        "evolution.generations=2",
    )
    assert len(population) == 1 + 3
    assert "holdout_mae" in population and population["holdout_mae"].notna().all()
    chosen = population[(population["generation"] == 2) & population["selected"].astype(bool)]
    assert chosen.iloc[0]["holdout_mae"] == population[population["generation"] == 2]["holdout_mae"].min()


def test_resume_skips_recorded_individuals(ray_cluster, tmp_path):
    config, run_dir, population = run_config(tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in (Path(run_dir) / "population").rglob("*.parquet")}
    again = evolve(config, run_dir)  # nothing left to do: no record rewritten
    after = {p.name: p.stat().st_mtime_ns for p in (Path(run_dir) / "population").rglob("*.parquet")}
    assert before == after
    assert len(again) == len(population)


def test_baselines_at_matched_sparsity(ray_cluster, tmp_path):
    config, run_dir, population = run_config(
        tmp_path, "baselines.enabled=true", "baselines.kinds=[magnitude, random]", "evolution.offspring=2"
    )
    kinds = population.groupby("kind").size().to_dict()
    assert kinds == {"ancestor": 1, "offspring": 4, "magnitude": 2, "random": 2}
    records = RunRecords(run_dir)
    layers = records.layers().set_index(["individual_id", "layer"])
    for _, row in population[population["kind"].isin(["magnitude", "random"])].iterrows():
        offspring_id = row["individual_id"].rsplit("-", 1)[0]
        offspring = population.set_index("individual_id").loc[offspring_id]
        assert bool(offspring["selected"]) and not bool(row["selected"])
        assert row["parent_id"] == offspring["parent_id"] and row["train_seed"] == offspring["train_seed"]
        # exactly the offspring's per-layer synapse counts, but other synapses
        for layer in [l for (i, l) in layers.index if i == offspring_id]:
            assert (
                layers.loc[(row["individual_id"], layer), "synapses"] == layers.loc[(offspring_id, layer), "synapses"]
            )
        assert row["mask_digest"] != offspring["mask_digest"]
    # magnitude pruning keeps the strongest synapses of the parent
    parent = records.read_checkpoint(population.set_index("individual_id").loc["g2-0", "parent_id"])
    magnitude = records.read_checkpoint(population[population["kind"] == "magnitude"].iloc[0]["individual_id"])
    w = parent.weights["classifier.1.weight"].abs()
    kept = magnitude.masks["classifier.1"]
    assert w[kept].min() >= w[parent.masks["classifier.1"] & ~kept].max()
    # the lineage never goes through a baseline
    assert set(population[population["selected"].astype(bool)]["kind"]) <= {"ancestor", "offspring"}
    # and the report answers the question
    from evopop.analysis.loading import load_run
    from evopop.analysis.report import baseline_table, build_report

    table = baseline_table(load_run(run_dir))
    assert list(table["offspring"]) == list(
        population[(population["kind"] == "offspring") & population["selected"].astype(bool)]["individual_id"]
    )
    assert "Baselines at matched sparsity" in build_report(run_dir).read_text()


def test_iterative_magnitude_pruning_follows_a_lineage_of_its_own(tmp_path):
    config, run_dir, population = run_config(
        tmp_path,
        "resources.executor=local",
        "compaction.enabled=false",
        "evolution.generations=4",
        "evolution.offspring=2",
        "baselines.enabled=true",
        "baselines.kinds=[imp, imp_rewind]",
    )
    by_id = population.set_index("individual_id")
    best = {g: by_id[(by_id["generation"] == g) & by_id["selected"].astype(bool)].index[0] for g in (1, 2, 3, 4)}
    layers = RunRecords(run_dir).layers().set_index(["individual_id", "layer"])["synapses"]
    records = RunRecords(run_dir)
    for kind in ("imp", "imp_rewind"):
        chain = [f"{best[g]}-{kind}" for g in (2, 3, 4)]
        assert (by_id.loc[chain, "status"] == "ok").all()
        # each prunes the previous one of its kind (the root first), not the evolved parent
        assert list(by_id.loc[chain, "parent_id"]) == ["g1-0", chain[0], chain[1]]
        for g, individual_id in zip((2, 3, 4), chain):
            assert layers.loc[individual_id].equals(layers.loc[best[g]]), "the followed lineage's per-layer counts"
        # magnitude: what survives is the strongest of its parent's living synapses
        parent, child = records.read_checkpoint(chain[0]), records.read_checkpoint(chain[1])
        w, alive, kept = (
            parent.weights["classifier.1.weight"].abs(),
            parent.masks["classifier.1"],
            child.masks["classifier.1"],
        )
        assert w[kept].min() >= w[alive & ~kept].max()
    # both prune the root to the same mask; rewinding starts the training from the root's initial weights
    imp, rewind = records.read_checkpoint(f"{best[2]}-imp"), records.read_checkpoint(f"{best[2]}-imp_rewind")
    assert all(torch.equal(imp.masks[name], rewind.masks[name]) for name in imp.masks)
    assert not torch.equal(imp.weights["classifier.1.weight"], rewind.weights["classifier.1.weight"])
    # rewinding starts from the root's initialisation, as the root's own training started
    from evopop.engine.policy.specs import ROOT_ID, train_seed
    from evopop.engine.worker.weights import initial_weights

    torch.manual_seed(train_seed(config.run.seed, ROOT_ID))
    task = build_task(config.task.name, config.task.args)
    expected = task.build_model().state_dict()
    start = initial_weights(config, task, trace_architecture(task.build_model(), task.example_input()))
    assert all(torch.equal(start[name], expected[name]) for name in expected)
    # the report draws them against synthesis
    from evopop.analysis.report import build_report

    html = build_report(run_dir).read_text()
    assert '<img src="baselines.png"' in html and (Path(run_dir) / "report" / "baselines.png").stat().st_size > 0
    assert "imp_rewind" in html


def test_a_torchvision_network_evolves_into_a_smaller_faster_one(tmp_path, monkeypatch):
    """examples/torchvision_shapes.yaml, shrunk (local executor): a torchvision MobileNetV3 with the cluster
    encoding loses whole coupling groups every generation, and its compacted offspring computes fewer MACs."""
    monkeypatch.syspath_prepend(str(CONFIGS.parent / "examples"))
    config = load_config(
        CONFIGS.parent / "examples" / "torchvision_shapes.yaml",
        [
            "resources.executor=local",
            "task.args={model: mobilenet_v3_small, train_size: 128, val_size: 64, image_size: 32}",
            "ancestor.epochs=1",
            "evolution.epochs=1",
            "evolution.generations=3",
            "evolution.offspring=2",
            "compaction.repeats=2",
        ],
    )
    population = evolve(config, str(tmp_path / "run"))
    assert (population["status"] == "ok").all() and len(population) == 1 + 2 + 2
    best = population[population["selected"].astype(bool)].set_index("generation")
    macs = best["compact_macs"]
    assert macs[1] > macs[2] > macs[3]  # ~70% of the groups each generation: about half the MACs by generation 3
    assert macs[1] / macs[3] > 1.5
    assert (best["compact_neurons"] < best["neurons"] + 1).all()  # compaction keeps what the genome keeps
