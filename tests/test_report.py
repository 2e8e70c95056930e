"""load_run and build_report on finished runs, runs in progress and empty runs.

Fast tests use a run written by hand (records, checkpoints and selections, no Ray); the slow ones a
real tiny run through the engine (`evopop.api.evolve`), with diversity recorded as the engine will record it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import forget_record

from evopop.analysis.diversity import NETWORK
from evopop.analysis.figures import FIGURES, pareto_front
from evopop.analysis.generation_diversity import TaskProbe, write_generation_diversity
from evopop.analysis.loading import load_run
from evopop.analysis.report import build_report
from evopop.records.checkpoints import Checkpoint
from evopop.records.run import RunRecords
from evopop.records.schema import IndividualRecord, LayerRecord, SelectionRecord, population_schema

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHAPES = {"fc": (4, 6), "conv": (6, 2, 3, 3)}
METRICS = ["val_loss", "val_accuracy"]
CONFIG = """run: {name: hand, seed: 1}
task: {name: not-a-task}
evolution: {generations: 3, offspring: 3, environment: {c: 0.6, mode: budget}}
selection: {rule: best, metric: val_accuracy}
"""


def _row(individual_id, generation, parent, lineage, masks, accuracy, ancestor=None, status="ok"):
    synapses = int(sum(int(m.sum()) for m in masks.values())) if masks else None
    ancestor = ancestor or synapses
    return {
        "run_id": "hand",
        "individual_id": individual_id,
        "parent_id": parent,
        "lineage": lineage,
        "offspring_index": int(individual_id.rsplit("-", 1)[1]) if generation > 1 else None,
        "status": status,
        "synapses": synapses,
        "ancestor_synapses": ancestor,
        "efficiency": ancestor / synapses if synapses else None,
        "macs": 10 * synapses if synapses else None,
        "effective_macs": 9 * synapses if synapses else None,
        "dense_macs": 10 * ancestor if synapses else None,
        "compact_macs": 10 * (ancestor + synapses) // 2 if synapses else None,
        "latency_cpu_b1_ms": 0.1 + synapses / ancestor if synapses else None,
        "latency_cpu_b32_ms": 2.0 + synapses / ancestor if synapses else None,
        "val_accuracy": accuracy,
        "val_loss": 1.0 - accuracy if accuracy is not None else None,
        "error": None if status == "ok" else "RuntimeError: loss diverged\ntraceback",
    }


def _layer_rows(individual_id, masks):
    return [LayerRecord(individual_id=individual_id, **r) for r in _layer_dicts(masks)]


def _layer_dicts(masks):
    return [
        {
            "layer": name,
            "kind": "linear" if m.dim() == 2 else "conv",
            "synapses": int(m.sum()),
            "dense_synapses": m.numel(),
            "neurons": int(m.reshape(m.shape[0], -1).any(1).sum()),
            "dense_neurons": m.shape[0],
            "macs": int(m.sum()),
            "living_fraction": float(m.float().mean()),
        }
        for name, m in masks.items()
    ]


def make_hand_run(run_dir: Path) -> RunRecords:
    """3 generations: g1-0 -> g2-{0,1,2} (g2-1 selected) -> g3-{0,1,2} (g3-2 failed, g3-0 selected)."""
    g = torch.Generator().manual_seed(0)
    records = RunRecords(str(run_dir))
    records.write_config(CONFIG)
    schema = population_schema(METRICS, list(SHAPES))

    def child(masks, keep):
        return {k: m & (torch.rand(m.shape, generator=g) < keep) for k, m in masks.items()}

    def add(generation, individual_id, parent, lineage, masks, accuracy, ancestor, status="ok"):
        if status == "ok":
            records.write_checkpoint(individual_id, Checkpoint({}, masks))
        row = _row(
            individual_id, generation, parent, lineage, masks if status == "ok" else None, accuracy, ancestor, status
        )
        layers = _layer_rows(individual_id, masks) if status == "ok" else []
        records.write_individual(generation, IndividualRecord.from_row(row, METRICS), layers, schema)

    root = {k: torch.ones(s, dtype=torch.bool) for k, s in SHAPES.items()}
    total = sum(m.numel() for m in root.values())
    add(1, "g1-0", None, ["g1-0"], root, 0.5, total)
    records.write_selection(1, [SelectionRecord("g1-0", True, 0)])
    gen2 = {f"g2-{i}": child(root, 0.6) for i in range(3)}
    for i, (iid, masks) in enumerate(gen2.items()):
        add(2, iid, "g1-0", ["g1-0", iid], masks, [0.55, 0.62, 0.58][i], total)
    records.write_selection(2, [SelectionRecord(i, i == "g2-1", r) for r, i in enumerate(["g2-1", "g2-2", "g2-0"])])
    for i, accuracy in enumerate([0.64, 0.6]):
        iid = f"g3-{i}"
        add(3, iid, "g2-1", ["g1-0", "g2-1", iid], child(gen2["g2-1"], 0.6), accuracy, total)
    add(3, "g3-2", "g2-1", ["g1-0", "g2-1", "g3-2"], {}, None, total, status="failed")
    records.write_selection(
        3, [SelectionRecord("g3-0", True, 0), SelectionRecord("g3-1", False, 1), SelectionRecord("g3-2", False, None)]
    )
    return records


def figure_files(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html)


def assert_report_complete(index: Path):
    html = index.read_text()
    files = figure_files(html)
    assert sorted(files) == sorted(f"{name}.png" for name in FIGURES), html
    for name in files:
        data = (index.parent / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert "Skipped" not in html
    return html


# -- fast: a run written by hand --------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:could not build the run's task")
def test_report_of_a_finished_run(tmp_path):
    make_hand_run(tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.finished and run.progress().startswith("finished")
    assert run.lineage["individual_id"].tolist() == ["g1-0", "g2-1", "g3-0"]
    assert run.metric == "val_accuracy" and run.direction == "max"
    assert run.metric_columns == ["val_loss", "val_accuracy"] and run.layer_names == ["fc", "conv"]
    assert run.diversity.pairs.empty and run.diversity.summary.empty

    index = build_report(tmp_path / "run")
    assert index == tmp_path / "run" / "report" / "index.html"
    html = assert_report_complete(index)
    assert "computed from the checkpoints" in html  # no diversity recorded: computed for the report
    assert "g3-2" in html and "loss diverged" in html  # the failed individual is listed
    assert not (tmp_path / "run" / "diversity").exists()  # the report never writes records


@pytest.mark.filterwarnings("ignore:could not build the run's task")
def test_load_run_and_report_on_a_run_in_progress(tmp_path):
    records = make_hand_run(tmp_path / "run")
    write_generation_diversity(records, 2)
    # generation 3 still running: no selection yet, one of its records not written yet
    records.storage.delete("selection/generation=3/part-0.parquet")
    records.storage.delete("population/generation=3/part-g3-1.parquet")
    run = load_run(tmp_path / "run")
    assert not run.finished
    assert run.decided_generations() == [1, 2]
    assert run.progress() == "in progress: generation 3 of 3, 2 of 3 individuals recorded, selection pending"
    gen3 = run.population[run.population["generation"] == 3]
    assert gen3["individual_id"].tolist() == ["g3-0", "g3-2"] and gen3["selected"].isna().all()
    assert run.population["selected"].dtype == "boolean"
    assert run.lineage["individual_id"].tolist() == ["g1-0", "g2-1"]  # up to the last decided generation
    assert run.diversity.generations() == [2] and len(run.diversity.summary)
    assert run.diversity.pairs["generation"].dtype == "int32"

    html = build_report(tmp_path / "run", out_dir=tmp_path / "elsewhere").read_text()
    assert "selection pending" in html
    assert sorted(figure_files(html)) == sorted(f"{name}.png" for name in FIGURES)
    assert "computed from the checkpoints" not in html  # generation 3 has one successful individual so far
    assert (tmp_path / "elsewhere" / "index.html").exists() and not (tmp_path / "run" / "report").exists()


def test_report_of_a_run_with_nothing_recorded_says_what_is_missing(tmp_path):
    RunRecords(str(tmp_path / "run")).write_config(CONFIG)
    run = load_run(tmp_path / "run")
    assert run.population.empty and run.lineage.empty and run.progress() == "no individual recorded yet"
    html = build_report(tmp_path / "run").read_text()
    assert figure_files(html) == []
    assert html.count("Skipped") == len(FIGURES)
    assert "No followed lineage yet" in html


@pytest.mark.filterwarnings("ignore:could not build the run's task")
def test_a_run_stopped_by_a_failed_generation_says_so(tmp_path):
    records = make_hand_run(tmp_path / "run")
    records.write_config(CONFIG.replace("generations: 3", "generations: 4"))
    schema = population_schema(METRICS, list(SHAPES))
    for i in range(3):
        row = _row(f"g4-{i}", 4, "g3-0", ["g1-0", "g2-1", "g3-0", f"g4-{i}"], None, None, status="failed")
        records.write_individual(4, IndividualRecord.from_row(row, METRICS), [], schema)
    run = load_run(tmp_path / "run")
    assert not run.finished and run.expected_individuals(4) == 3
    assert run.progress() == "stopped: every individual of generation 4 failed (3 of 3)"
    html = build_report(tmp_path / "run").read_text()
    assert "4 failed individual(s)" in html


def test_load_run_refuses_a_directory_without_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="no evopop run"):
        load_run(tmp_path)


def test_pareto_front():
    points = pd.DataFrame({"efficiency": [1.0, 2.0, 3.0, 3.0, 4.0], "acc": [0.9, 0.95, 0.8, 0.85, 0.7]})
    assert pareto_front(points, "efficiency", "acc").index.tolist() == [1, 3, 4]
    assert pareto_front(points, "efficiency", "acc", "min").index.tolist() == [4]


# -- slow: a real tiny run through the engine --------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(ray_cluster, tmp_path_factory):
    from evopop.api import evolve
    from evopop.config import load_config
    from evopop.synthesis import trace_architecture
    from evopop.tasks.registry import build_task

    config = load_config(CONFIGS / "tiny.yaml", ["evolution.generations=3", "evolution.offspring=2"])
    run_dir = str(tmp_path_factory.mktemp("tiny") / "run")
    records = RunRecords(run_dir)
    records.write_config(config.to_yaml())
    evolve(config, run_dir)
    # what the engine records after each generation
    task = build_task(config.task.name, config.task.args)
    arch = trace_architecture(task.build_model(), task.example_input())
    probe = TaskProbe(task, 32)
    for generation in records.generations():
        write_generation_diversity(records, generation, arch, outputs=probe, note=f"on {32} held-out inputs")
    return Path(run_dir)


@pytest.mark.slow
def test_report_of_a_real_tiny_run(tiny_run):
    run = load_run(tiny_run)
    assert run.finished and len(run.population) == 1 + 2 + 2
    assert run.diversity.generations() == [2, 3]
    net = run.diversity.pairs[run.diversity.pairs["scope"] == NETWORK]
    assert len(net) == 2 and net["siblings"].all()
    assert net["jaccard"].between(0, 1).all() and net["functional_disagreement"].between(0, 1).all()
    html = assert_report_complete(build_report(tiny_run))
    assert "computed from the checkpoints" not in html  # recorded diversity is used as is
    assert "prediction disagreement" in html


@pytest.mark.slow
def test_load_run_on_a_copy_of_a_real_run_in_progress(tiny_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("report", ".lock"))
    shutil.rmtree(copy / "selection" / "generation=3")
    shutil.rmtree(copy / "diversity" / "generation=3")
    shutil.rmtree(copy / "diversity_summary" / "generation=3")
    forget_record(str(copy), 3, "g3-1")
    run = load_run(copy)
    assert not run.finished and run.decided_generations() == [1, 2]
    assert run.progress() == "in progress: generation 3 of 3, 1 of 2 individuals recorded, selection pending"
    assert run.lineage["generation"].tolist() == [1, 2]
    assert run.diversity.generations() == [2]
    html = build_report(copy).read_text()
    assert "selection pending" in html
    assert sorted(figure_files(html)) == sorted(f"{name}.png" for name in FIGURES)
