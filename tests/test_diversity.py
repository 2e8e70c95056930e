"""Mutation diversity against hand-computed masks: packing, Jaccard/Hamming per layer and network,
neuron overlap, functional disagreement, spread, and one generation read from records."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from evopop.analysis.diversity import (
    NETWORK,
    functional_disagreement,
    hamming_distance,
    jaccard_distance,
    living_fraction_spread,
    neuron_distances,
    pack_genomes,
    pack_mask,
    pairwise_intersections,
    popcount,
    predictions,
    spread,
    synapse_distances,
)
from evopop.analysis.generation_diversity import TaskProbe, generation_diversity, write_generation_diversity
from evopop.records.checkpoints import Checkpoint, GenomeFile
from evopop.records.run import RunRecords
from evopop.records.schema import IndividualRecord, population_schema
from evopop.synthesis import Genome, SynapticLayer

FC = SynapticLayer("fc", "linear", (2, 3))
CONV = SynapticLayer("conv", "conv", (2, 1, 2, 2))
LAYERS = [FC, CONV]


def genome(fc_on: list[int], conv_on: list[int]) -> dict[str, torch.Tensor]:
    fc, conv = torch.zeros(6, dtype=torch.bool), torch.zeros(8, dtype=torch.bool)
    fc[fc_on], conv[conv_on] = True, True
    return {"fc": fc.view(2, 3), "conv": conv.view(2, 1, 2, 2)}


# fc synapses (flat index): A {0,1}, B {0,3,4}, C {};  neurons (rows): A {0}, B {0,1}, C {}
# conv synapses: A {0,1,2,3}, B {0,4}, C {4,5,6,7};     neurons: A {0}, B {0,1}, C {1}
A, B, C = genome([0, 1], [0, 1, 2, 3]), genome([0, 3, 4], [0, 4]), genome([], [4, 5, 6, 7])


def test_pack_and_popcount_match_numpy_on_odd_sizes():
    g = torch.Generator().manual_seed(0)
    for n in (1, 7, 63, 64, 65, 130, 1000, 4099):
        masks = torch.rand(5, n, generator=g) < torch.rand(5, 1, generator=g)
        words = torch.stack([pack_mask(m) for m in masks])
        assert words.dtype == torch.int64 and words.shape[1] == -(-n // 64)
        assert popcount(words).tolist() == masks.sum(dim=1).tolist()
        expected = (masks[:, None, :] & masks[None, :, :]).sum(dim=2)
        assert torch.equal(pairwise_intersections(words), expected)


def test_popcount_of_sign_bit_and_full_words():
    words = torch.tensor([[-1, 0, -(2**63), 2**63 - 1, 12345]], dtype=torch.int64).T
    assert popcount(words).tolist() == [64, 0, 1, 63, bin(12345).count("1")]


def test_synapse_distances_per_layer_and_network_by_hand():
    d = synapse_distances(pack_genomes([A, B, C], LAYERS, ids=["A", "B", "C"]))
    assert list(d) == [NETWORK, "fc", "conv"]
    fc, conv, net = d["fc"], d["conv"], d[NETWORK]
    assert fc.intersection.tolist() == [[2, 1, 0], [1, 3, 0], [0, 0, 0]]
    assert torch.allclose(fc.jaccard, torch.tensor([[0, 0.75, 1], [0.75, 0, 1], [1, 1, 0]], dtype=torch.float64))
    assert fc.hamming.tolist() == [[0, 3, 2], [3, 0, 3], [2, 3, 0]]
    assert torch.allclose(fc.hamming_fraction[0], torch.tensor([0, 3 / 6, 2 / 6], dtype=torch.float64))
    assert torch.allclose(conv.jaccard, torch.tensor([[0, 0.8, 1], [0.8, 0, 0.8], [1, 0.8, 0]], dtype=torch.float64))
    assert conv.hamming.tolist() == [[0, 4, 8], [4, 0, 4], [8, 4, 0]]
    assert net.dense == 14 and net.sizes.tolist() == [6, 5, 4]
    assert torch.allclose(
        net.jaccard, torch.tensor([[0, 7 / 9, 1], [7 / 9, 0, 7 / 8], [1, 7 / 8, 0]], dtype=torch.float64)
    )
    assert net.hamming.tolist() == [[0, 7, 10], [7, 0, 7], [10, 7, 0]]
    assert net.union.tolist() == [[6, 9, 10], [9, 5, 8], [10, 8, 4]]
    assert torch.allclose(net.hamming_fraction, net.hamming.double() / 14)
    # the convenience wrappers agree
    assert torch.equal(jaccard_distance([A, B, C], LAYERS), net.jaccard)
    assert torch.equal(hamming_distance([Genome(A), Genome(B), Genome(C)], LAYERS), net.hamming)
    assert torch.allclose(hamming_distance([A, B, C], LAYERS, normalized=True), net.hamming_fraction)


def test_neuron_overlap_by_hand():
    d = neuron_distances(pack_genomes([A, B, C], LAYERS))
    assert torch.allclose(d["fc"].jaccard, torch.tensor([[0, 0.5, 1], [0.5, 0, 1], [1, 1, 0]], dtype=torch.float64))
    assert torch.allclose(
        d["conv"].jaccard, torch.tensor([[0, 0.5, 1], [0.5, 0, 0.5], [1, 0.5, 0]], dtype=torch.float64)
    )
    assert torch.allclose(
        d[NETWORK].jaccard, torch.tensor([[0, 0.5, 1], [0.5, 0, 0.75], [1, 0.75, 0]], dtype=torch.float64)
    )
    assert d[NETWORK].hamming.tolist() == [[0, 2, 3], [2, 0, 3], [3, 3, 0]]
    assert d[NETWORK].dense == 4


def test_identical_and_empty_genomes_are_at_distance_zero():
    empty = genome([], [])
    d = synapse_distances(pack_genomes([A, A, empty, empty], LAYERS))
    assert d[NETWORK].jaccard[0, 1] == 0 and d[NETWORK].hamming[0, 1] == 0
    assert d[NETWORK].jaccard[2, 3] == 0  # two empty sets are identical
    assert d[NETWORK].jaccard[0, 2] == 1


def test_neurons_of_a_transposed_convolution_follow_its_output_dimension():
    up = SynapticLayer("up", "deconv", (2, 3, 1, 1))  # (in, out, k, k): neurons along dimension 1
    m1 = torch.zeros(2, 3, 1, 1, dtype=torch.bool)
    m1[1, 0] = True  # output neuron 0 alive
    m2 = torch.zeros(2, 3, 1, 1, dtype=torch.bool)
    m2[0, 2] = True  # output neuron 2 alive
    packed = pack_genomes([{"up": m1}, {"up": m2}], [up])
    assert packed.neurons["up"].tolist() == [[True, False, False], [False, False, True]]
    assert neuron_distances(packed)["up"].jaccard[0, 1] == 1


def test_living_fraction_spread():
    frame = living_fraction_spread(pack_genomes([A, B, C], LAYERS)).set_index("scope")
    fc = frame.loc["fc"]  # 2/6, 3/6, 0/6
    assert fc["count"] == 3 and fc["min"] == 0 and fc["max"] == pytest.approx(0.5)
    assert fc["mean"] == pytest.approx(5 / 18) and fc["std"] == pytest.approx(np.std([2 / 6, 3 / 6, 0]))
    assert frame.loc[NETWORK, "range"] == pytest.approx(6 / 14 - 4 / 14)


def test_spread_ignores_missing_values():
    s = spread([0.5, None, 0.7, float("nan")])
    assert s["count"] == 2 and s["mean"] == pytest.approx(0.6)
    assert s["std"] == pytest.approx(0.1) and s["range"] == pytest.approx(0.2)
    assert spread([])["count"] == 0


def _logits(labels: list[int], classes: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), classes).float() * 5 - 1


def test_functional_disagreement_of_classifiers_by_hand():
    outs = [_logits([0, 1, 2, 0]), _logits([0, 1, 1, 1]), _logits([2, 1, 2, 0])]
    d = functional_disagreement(outs)
    assert torch.allclose(d, torch.tensor([[0, 0.5, 0.25], [0.5, 0, 0.75], [0.25, 0.75, 0]], dtype=torch.float64))


def test_functional_disagreement_of_dense_maps_is_per_pixel():
    # N=2 maps of 2 x 2 pixels with 2 channels (background, foreground): 8 pixels in all
    fg1 = torch.tensor([[[1, 1], [0, 0]], [[1, 0], [1, 0]]], dtype=torch.float32)
    fg2 = torch.tensor([[[1, 0], [0, 0]], [[1, 0], [1, 1]]], dtype=torch.float32)  # 2 pixels differ
    maps = [torch.stack([1 - f, f], dim=1) for f in (fg1, fg2)]
    assert maps[0].shape == (2, 2, 2, 2)
    assert predictions(maps[0]).tolist() == fg1.reshape(-1).long().tolist()
    assert functional_disagreement(maps)[0, 1].item() == pytest.approx(2 / 8)
    # one logit channel: thresholded at 0
    single = [torch.tensor([[1.0], [-1.0], [2.0]]), torch.tensor([[1.0], [1.0], [-2.0]])]
    assert functional_disagreement(single)[0, 1].item() == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="same shape"):
        functional_disagreement([torch.zeros(2, 3), torch.zeros(3, 3)])


# -- one generation from records (no Ray: rows and checkpoints written by hand) ---------------------
METRICS = ["val_loss", "val_accuracy"]


def write_generation(
    run_dir, genomes: dict, parents: dict, metrics: dict, failed=(), generation: int = 2, probes: dict | None = None
):
    records = RunRecords(str(run_dir))
    records.write_config("run: {name: hand, seed: 1}\ntask: {name: not-a-task}\nselection: {metric: val_accuracy}\n")
    schema = population_schema(METRICS, ["fc", "conv"])
    for individual_id, masks in {**genomes, **{f: None for f in failed}}.items():
        ok = individual_id not in failed
        if ok:
            records.write_checkpoint(individual_id, Checkpoint({}, masks))
            if probes:  # as a trainer stores them: beside the bit-packed masks
                described = {"probe": {"eval_set": "val", "size": 4, "requested": 4}}
                records.write_genome(individual_id, GenomeFile(masks, described, probes[individual_id]))
        row = {
            "run_id": "hand",
            "individual_id": individual_id,
            "parent_id": parents.get(individual_id),
            "lineage": [individual_id],
            "status": "ok" if ok else "failed",
            "synapses": int(sum(int(m.sum()) for m in masks.values())) if ok else None,
            "val_accuracy": metrics.get(individual_id),
            "error": None if ok else "RuntimeError: boom",
        }
        records.write_individual(generation, IndividualRecord.from_row(row, METRICS), [], schema)
    return records


def test_generation_diversity_from_records(tmp_path):
    outs = {"g2-0": _logits([0, 1, 2, 0]), "g2-1": _logits([0, 1, 1, 1]), "g2-2": _logits([2, 1, 2, 0])}
    records = write_generation(
        tmp_path / "run",
        {"g2-0": A, "g2-1": B, "g2-2": C},
        {"g2-0": "p", "g2-1": "p", "g2-2": "q", "g2-3": "q"},
        {"g2-0": 0.5, "g2-1": 0.7, "g2-2": 0.9},
        failed=("g2-3",),
        probes=outs,  # as a trainer stores them beside the weights
    )
    probe = TaskProbe(task=None, size=4)  # the stored outputs serve: no task needed
    pairs, summary = generation_diversity(records, 2, LAYERS, ["val_accuracy"], outputs=probe)
    assert probe.computed == 0 and probe.note == "argmax disagreement on val[:4]"
    assert (pairs["generation"] == 2).all()
    assert len(pairs) == 3 * 3  # 3 pairs x (network + 2 layers); the failed individual is left out
    net = pairs[pairs["scope"] == NETWORK].set_index(["a", "b"])
    assert net.loc[("g2-0", "g2-1"), "jaccard"] == pytest.approx(7 / 9)
    assert net.loc[("g2-0", "g2-2"), "hamming"] == 10
    assert net.loc[("g2-1", "g2-2"), "hamming_fraction"] == pytest.approx(0.5)
    assert net.loc[("g2-1", "g2-2"), "neuron_jaccard"] == pytest.approx(0.75)
    assert net.loc[("g2-1", "g2-2"), "functional_disagreement"] == pytest.approx(0.75)
    assert net["siblings"].tolist() == [True, False, False]
    conv = pairs[pairs["scope"] == "conv"].set_index(["a", "b"])
    assert conv.loc[("g2-0", "g2-1"), "jaccard"] == pytest.approx(0.8)
    assert conv["functional_disagreement"].isna().all()

    s = summary.set_index(["group", "parent_id", "scope", "quantity"]).sort_index()
    sib = s.loc[("siblings", "p", NETWORK)]
    assert sib.loc["jaccard", "count"] == 1 and sib.loc["jaccard", "mean"] == pytest.approx(7 / 9)
    assert sib.loc["val_accuracy", "std"] == pytest.approx(0.1)
    assert sib.loc["val_accuracy", "range"] == pytest.approx(0.2)
    assert sib.loc["functional_disagreement", "mean"] == pytest.approx(0.5)
    assert s.loc[("siblings", "q", NETWORK, "jaccard"), "count"] == 0  # an only child has no sibling pairs
    gen = summary[(summary["group"] == "generation") & (summary["scope"] == NETWORK)].set_index("quantity")
    assert gen.loc["jaccard", "count"] == 3
    assert gen.loc["living_fraction", "min"] == pytest.approx(4 / 14)
    assert gen.loc["synapses", "max"] == 6


def test_write_generation_diversity_round_trips_through_parquet(tmp_path):
    records = write_generation(tmp_path / "run", {"g2-0": A, "g2-1": B}, {"g2-0": "p", "g2-1": "p"}, {})
    assert not records.has_diversity(2)
    pairs, summary = write_generation_diversity(records, 2, LAYERS, note="none")
    assert records.has_diversity(2)
    on_disk = pd.read_parquet(tmp_path / "run" / "diversity")
    assert len(on_disk) == len(pairs) == 3
    assert on_disk["generation"].astype(int).eq(2).all()
    assert set(on_disk.columns) == set(pairs.columns)
    summary_disk = pd.read_parquet(tmp_path / "run" / "diversity_summary")
    assert len(summary_disk) == len(summary)
    # without arch, layers come from the masks (conv/linear semantics) and give the same numbers
    with pytest.warns(UserWarning, match="reading layers off the masks"):
        inferred, _ = generation_diversity(records, 2)
    pd.testing.assert_frame_equal(
        inferred.sort_values(["scope", "a"]).reset_index(drop=True),
        pairs.sort_values(["scope", "a"]).reset_index(drop=True),
    )


def test_generation_without_individuals_gives_empty_frames(tmp_path):
    records = RunRecords(str(tmp_path / "run"))
    records.write_config("run: {name: empty}\n")
    pairs, summary = generation_diversity(records, 3, LAYERS)
    assert pairs.empty and summary.empty
    assert "jaccard" in pairs and "quantity" in summary


@pytest.mark.slow
def test_the_driver_runs_no_network_and_reads_no_checkpoint_for_diversity(ray_cluster, tmp_path, monkeypatch):
    """The trainers store each individual's masks and outputs on the held-out batch in a genome file:
    the driver's diversity step reads those, no checkpoint, and computes nothing (issue 12, part 5)."""
    import importlib
    from collections import Counter
    from pathlib import Path

    from evopop.api import evolve
    from evopop.config import load_config
    from evopop.tasks.registry import build_task
    from evopop.training.probe import held_out_batch

    gd = importlib.import_module("evopop.analysis.generation_diversity")  # the package exports a function by its name

    def no_network(*args, **kwargs):
        raise AssertionError("the driver ran a network for the functional probe")

    reads = Counter()
    read_checkpoint = RunRecords.read_checkpoint

    def counted(self, individual_id):
        reads[individual_id] += 1
        return read_checkpoint(self, individual_id)

    monkeypatch.setattr(gd, "checkpoint_outputs", no_network)  # only the driver: trainers are other processes
    monkeypatch.setattr(RunRecords, "read_checkpoint", counted)
    config = load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml", ["diversity.functional_batch=16"])
    run_dir = tmp_path / "run"
    RunRecords(str(run_dir)).write_config(config.to_yaml())
    population = evolve(config, str(run_dir))

    records = RunRecords(str(run_dir))
    pairs = records.diversity_pairs()
    assert pairs[pairs["scope"] == NETWORK]["functional_disagreement"].notna().all()
    parents = set(population["parent_id"].dropna())
    for individual_id in population["individual_id"]:
        # only parents' checkpoints are read (in the next generation, to make their offspring)
        expected = int(individual_id in parents)
        assert reads[individual_id] == expected, (individual_id, reads[individual_id], expected)
        genome = records.read_genome(individual_id)
        assert genome.probe.shape[0] == 16, "the diversity read the genome file instead"

    # what the trainer stored is what the network computes
    monkeypatch.undo()
    task = build_task(config.task.name, config.task.args)
    batch = held_out_batch(task, 16)
    genome, checkpoint = records.read_genome("g2-0"), records.read_checkpoint("g2-0")
    assert genome.probe_batch == {"eval_set": batch.eval_set, "size": len(batch.inputs), "requested": 16}
    for name, mask in checkpoint.masks.items():
        assert torch.equal(genome.masks[name], mask.bool()), "bit-packing loses nothing"
    recomputed = gd.checkpoint_outputs(task, batch)(checkpoint)
    torch.testing.assert_close(genome.probe, recomputed, rtol=1e-4, atol=1e-5)

    # a run recorded before genome files (or with them lost): the checkpoints serve, the driver computes
    import shutil

    shutil.rmtree(run_dir / "genomes")
    probe = gd.TaskProbe(task, 16)
    pairs_again, _ = generation_diversity(records, 3, outputs=probe)
    assert probe.computed == 3 and probe.note == f"argmax disagreement on {batch.eval_set}[:16]"
    recorded = pairs[(pairs["generation"] == 3)].reset_index(drop=True)
    np.testing.assert_allclose(
        pairs_again["functional_disagreement"].to_numpy(float), recorded["functional_disagreement"].to_numpy(float)
    )
    assert pairs_again["jaccard"].tolist() == recorded["jaccard"].tolist()

    # the recorder's background thread never builds a network (it would race the random state that
    # seeds training): such a generation is handed back to the driver's thread
    from evopop.analysis.diversity_hook import DiversityRecorder
    from evopop.engine.hooks import Batch

    shutil.rmtree(run_dir / "diversity" / "generation=3")
    recorder = DiversityRecorder(config, records, records.metadata().metric_columns)
    recorder.batch_started(Batch(3, 3, 0))
    recorder.generation_developed(3)
    recorder.run_finished(completed=True)
    assert records.has_diversity(3) and recorder._probe.computed == 3, "computed in the driver's thread"


def test_diversity_is_recorded_in_the_background_and_awaited_when_the_run_ends(tmp_path, monkeypatch):
    """Selection and the next generation do not wait for a generation's diversity; the run's end does."""
    import threading
    import time
    from pathlib import Path

    from evopop.analysis.diversity_hook import DiversityRecorder
    from evopop.config import load_config
    from evopop.engine.hooks import Batch

    config = load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml")
    recorder = DiversityRecorder(config, RunRecords(str(tmp_path / "run")), [])
    started, release, recorded = threading.Event(), threading.Event(), []

    def slow_record(generation, built, background):
        started.set()
        release.wait(10)
        recorded.append((generation, threading.current_thread().name, background))

    monkeypatch.setattr(recorder, "_record", slow_record)
    recorder.batch_started(Batch(2, 3, 0))
    t0 = time.perf_counter()
    recorder.generation_developed(2)
    assert time.perf_counter() - t0 < 1.0 and started.wait(10), "handed to the background at once"
    assert recorded == []
    release.set()
    recorder.run_finished(completed=True)
    assert [g for g, _, _ in recorded] == [2] and recorded[0][1].startswith("evopop-diversity") and recorded[0][2]
