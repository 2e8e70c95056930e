#!/usr/bin/env python
"""What the driver's diversity study costs per generation, at the reference experiment's scale.

Each trainer writes its individual's genome file (bit-packed masks + outputs on the held-out probe
batch, `RunRecords.write_genome`); after a generation the driver's `DiversityRecorder` reads those
and computes every pair's distances (`generation_diversity`), in a background thread. Measured here:

1. Sizes: the genome file against the checkpoint, for the reference network (configs/msra_b_vgg16.yaml,
   built without its ImageNet weights) and the saliency quickstart's, all synapses alive.
2. Time: `generation_diversity` over N individuals of S synapses (random masks, 40 % alive, eight
   conv layers; outputs of 32 x 2 x 224 x 224 as the reference's probe), against the bare read
   of the same genome files (the I/O floor) and against reading N checkpoints of that network,
   what the driver read before genome files existed (it also ran every network on its CPU then).

    python -m benchmarks.bench_diversity                     # 65 M synapses, N = 8 and 64: ~3 min on 2 cores
    python -m benchmarks.bench_diversity --quick             # smoke run, seconds
    python -m benchmarks.bench_diversity --json out.json     # --json alone: benchmarks/results/bench_diversity.json
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.harness import arguments, proc_status, timed, write_json
from evopop.analysis.generation_diversity import TaskProbe, generation_diversity
from evopop.config import load_config
from evopop.records.checkpoints import Checkpoint, GenomeFile
from evopop.records.run import RunRecords
from evopop.records.schema import IndividualRecord, population_schema
from evopop.synthesis import Genome, SynapticLayer
from evopop.tasks.registry import built_task

ROOT = Path(__file__).resolve().parents[1]
PROBE = {"probe": {"eval_set": "val", "size": 32, "requested": 32}}


def file_sizes(config_path: Path, overrides: list[str]) -> dict:
    """Bytes of a full genome's checkpoint and genome file for the network of ``config_path``."""
    config = load_config(config_path, overrides)
    built = built_task(config.task.name, dict(config.task.args))
    model, genome = built.task.build_model(), Genome.full(built.arch)
    size = int(config.task.args.get("size", 64))
    outputs = torch.zeros(config.diversity.functional_batch, 2, size, size)
    checkpoint = len(Checkpoint(model.state_dict(), genome.state_dict()).to_bytes())
    genome_file = len(GenomeFile(genome.state_dict(), PROBE, outputs).to_bytes())
    return {"synapses": built.arch.synapses, "checkpoint_mb": checkpoint / 1e6, "genome_mb": genome_file / 1e6}


def layers_of(synapses: int) -> list[SynapticLayer]:
    per_layer = max(1, synapses // 8 // (64 * 9))
    return [SynapticLayer(f"conv{i}", "conv", (per_layer, 64, 3, 3)) for i in range(8)]


def write_generation(run_dir: Path, layers, n: int, probe_side: int, checkpoints: bool) -> RunRecords:
    records = RunRecords(str(run_dir))
    records.write_config("run: {name: bench, seed: 1}\ntask: {name: not-a-task}\n")
    schema = population_schema(["val_accuracy"], [layer.name for layer in layers])
    generator = torch.Generator().manual_seed(0)
    for i in range(n):
        individual_id = f"g2-{i}"
        masks = {layer.name: torch.rand(layer.weight_shape, generator=generator) < 0.4 for layer in layers}
        outputs = torch.randn(32, 2, probe_side, probe_side, generator=generator)
        records.write_genome(individual_id, GenomeFile(masks, PROBE, outputs))
        if checkpoints:  # the weights a checkpoint carries besides the masks
            weights = {layer.name: torch.randn(layer.weight_shape, generator=generator) for layer in layers}
            records.write_checkpoint(individual_id, Checkpoint(weights, masks))
        row = {"run_id": "bench", "individual_id": individual_id, "parent_id": "g1-0", "lineage": [individual_id]}
        row.update(status="ok", val_accuracy=0.5)
        records.write_individual(2, IndividualRecord.from_row(row, ["val_accuracy"]), [], schema)
    return records


def measure(workdir: Path, synapses: int, n: int, probe_side: int, checkpoints: bool) -> dict:
    layers = layers_of(synapses)
    run_dir = workdir / f"run-{n}"
    records = write_generation(run_dir, layers, n, probe_side, checkpoints)
    ids = [f"g2-{i}" for i in range(n)]
    row = {"individuals": n, "synapses": sum(layer.numel for layer in layers)}
    row["read_genomes_s"] = timed(lambda: [records.read_genome(i) for i in ids])[1]
    probe = TaskProbe(None, 32)
    row["diversity_s"] = timed(lambda: generation_diversity(records, 2, layers, ["val_accuracy"], probe))[1]
    assert probe.computed == 0, "every output came from the genome files"
    row["diversity_vs_read"] = row["diversity_s"] / row["read_genomes_s"]
    if checkpoints:
        row["read_checkpoints_s"] = timed(lambda: [records.read_checkpoint(i) for i in ids])[1]
    shutil.rmtree(run_dir)
    return row


def main(argv=None) -> int:
    parser = arguments(__name__, __doc__, quick="smoke run: 1 M synapses, 4 individuals")
    parser.add_argument("--synapses", type=float, default=65e6)
    parser.add_argument("--individuals", default="8,64", help="generation sizes, comma-separated")
    args = parser.parse_args(argv)
    synapses, sizes, side = int(args.synapses), [int(n) for n in args.individuals.split(",")], 224
    if args.quick:
        synapses, sizes, side = 1_000_000, [4], 32

    figures: dict = {"sizes": {}}
    figures["sizes"]["saliency_quickstart"] = file_sizes(ROOT / "configs" / "saliency_quickstart.yaml", [])
    if not args.quick:
        reference = ["task.args.pretrained=null"]
        figures["sizes"]["reference"] = file_sizes(ROOT / "configs" / "msra_b_vgg16.yaml", reference)
    print("1. genome file against checkpoint, every synapse alive")
    for name, row in figures["sizes"].items():
        ratio = row["checkpoint_mb"] / row["genome_mb"]
        print(
            f"   {name:20s} {row['synapses'] / 1e6:7.1f} M synapses: checkpoint {row['checkpoint_mb']:7.1f} MB, "
            f"genome file {row['genome_mb']:6.1f} MB ({ratio:.1f}x smaller)"
        )

    print(f"2. one generation's diversity, {synapses / 1e6:.0f} M synapses, outputs 32 x 2 x {side} x {side}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-diversity-"))
    try:
        figures["generations"] = []
        for n in sizes:
            row = measure(workdir, synapses, n, side, checkpoints=n <= 8)
            figures["generations"].append(row)
            extra = (
                f", reading their checkpoints instead {row['read_checkpoints_s']:.1f} s"
                if "read_checkpoints_s" in row
                else ""
            )
            print(
                f"   {n:3d} individuals: diversity {row['diversity_s']:.1f} s ({row['diversity_s'] / n:.2f} s each), "
                f"{row['diversity_vs_read']:.0f}x the bare read of their genome files "
                f"({row['read_genomes_s']:.2f} s){extra}"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    figures["peak_rss_gb"] = proc_status("VmHWM") / 1e9
    print(f"   peak memory of this process {figures['peak_rss_gb']:.1f} GB (writing the generation included)")
    print("   the files are on local disk, read warm: from object storage, add their transfer")
    write_json(args.json, figures, __name__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
