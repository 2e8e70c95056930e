"""One table of every benchmark's headline figures, generated from the JSON results in benchmarks/results/.

    python -m benchmarks.table            # (re)write benchmarks/results/TABLE.md
    python -m benchmarks.table --check    # exit 1 if TABLE.md is not what the JSON results give

A row per headline figure: the benchmark, the figure, its value, its ratio to the baseline measured in the same
run, the command that reproduces it and, where the JSON records it (``run.measured``), when it was measured
(with the machine's 1-minute load average at the start and end of the run, where the JSON has it).
A JSON without a headline function here is listed as such, so that a new benchmark's result is not missed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TABLE = RESULTS / "TABLE.md"

Row = tuple  # figure, value, against the baseline[, the benchmark's arguments that reproduce it]


# == headline figures, per benchmark ================================================================
def cluster(d: dict) -> list[Row]:
    s = d["summary"]
    rows = [
        (
            "generation wall time, 1 trainer (steady generations)",
            f"{s['generation_s_trainers_1']:.2f} s",
            f"{s['ray_1_trainer_vs_local']:.3f}x the same offspring in process ({s['generation_s_local']:.2f} s)",
        )
    ]
    for n in sorted(int(k.rsplit("_", 1)[1]) for k in s if k.startswith("generation_s_trainers_")):
        if n > 1:
            rows.append(
                (
                    f"generation wall time, {n} trainers",
                    f"{s[f'generation_s_trainers_{n}']:.2f} s",
                    f"efficiency T1/(n Tn) {s[f'efficiency_trainers_{n}']:.2f}, T1/(min(n, cores) Tn) "
                    f"{s[f'efficiency_cores_trainers_{n}']:.2f}",
                )
            )
    rows.append(
        (
            "driver CPU per individual",
            f"{s['driver_cpu_ms_per_individual']:.1f} ms",
            f"at most {s['max_dispatch_per_s']:.0f} individuals/s per driver core; record writes "
            f"{s['driver_record_writes_share']:.0%} of it",
        )
    )
    for where, name in (("local", "local disk"), ("s3", "S3 (moto, loopback)")):
        if f"record_writes_per_s_{where}" not in s:
            continue
        requests = f"; {s[f'requests_per_record_{where}']} requests each" if f"requests_per_record_{where}" in s else ""
        rows.append(
            (
                f"record writes, {name}",
                f"{s[f'record_writes_per_s_{where}']:.0f}/s",
                f"{s[f'record_time_vs_bare_files_{where}']:.2f}x the time of bare Parquet writes{requests}",
            )
        )
        rows.append(
            (
                f"checkpoint writes, {name}",
                f"{s[f'checkpoint_writes_per_s_{where}']:.1f}/s",
                f"{s[f'checkpoint_time_vs_bare_{where}']:.2f}x the time of one plain write",
            )
        )
    return rows


def compaction(rows: list[dict]) -> list[Row]:
    batch = max(r["batch"] for r in rows)
    return [
        (
            f"cluster encoding, generation {r['generation']}, batch {batch}: compacted offspring's speed-up",
            f"{r['speedup']:.2f}x",
            f"{r['speedup_per_mac_reduction']:.2f} of its {r['macs_reduction']:.1f}x MAC reduction (goal >= 0.5)",
        )
        for r in rows
        if r["encoding"] == "cluster" and r["batch"] == batch
    ]


def diversity(d: dict) -> list[Row]:
    rows = [
        (
            f"genome file, {name} ({r['synapses'] / 1e6:.1f} M synapses)",
            f"{r['genome_mb']:.1f} MB",
            f"{r['checkpoint_mb'] / r['genome_mb']:.1f}x smaller than its checkpoint ({r['checkpoint_mb']:.1f} MB)",
        )
        for name, r in d["sizes"].items()
    ]
    for r in d["generations"]:
        checkpoints = f"; reading checkpoints {r['read_checkpoints_s']:.1f} s" if "read_checkpoints_s" in r else ""
        rows.append(
            (
                f"diversity of a generation, {r['individuals']} individuals ({r['synapses'] / 1e6:.0f} M synapses)",
                f"{r['diversity_s']:.1f} s",
                f"{r['diversity_vs_read']:.1f}x the bare read of their genome files{checkpoints}",
            )
        )
    rows.append(("peak memory of the benchmark", f"{d['peak_rss_gb']:.1f} GB", ""))
    return rows


def driver_memory(d: dict) -> list[Row]:
    return [
        (
            f"driver memory growth per generation ({d['individuals']} individuals, {d['generations']} generations)",
            f"{d['growth_per_generation_kb']:.1f} KB",
            f"RSS {d['rss_gen2_mb']:.1f} MB at generation 2, {d['rss_second_last_mb']:.1f} MB at generation "
            f"{d['generations'] - 1}; records on storage {d['parquet_records_kb']:.0f} KB",
        )
    ]


def engine(d: dict) -> list[Row]:
    tp, g = d["throughput"], d["generations"]
    m = tp["median"]
    rows = [
        (
            f"training throughput, {side}",
            f"{m[side]['samples_per_second']:.0f} samples/s",
            f"{tp[f'throughput_ratio_{side}_vs_bare']:.3f}x bare PyTorch ({m['bare']['samples_per_second']:.0f})",
        )
        for side in ("local", "ray")
    ]
    rows.append(
        (
            "an offspring end to end through Ray",
            f"{m['ray']['end_to_end_seconds']:.2f} s",
            f"{tp['end_to_end_ray_vs_bare_train']:.3f}x the bare training time",
        )
    )
    for gen, speedup in g["speedup"].items():
        one, two = (g["generation_seconds"][f"trainers={n}"][gen] for n in (1, 2))
        rows.append(
            (
                f"generation {gen} wall time, 2 trainers",
                f"{two:.1f} s",
                f"{speedup:.2f}x faster than 1 trainer ({one:.1f} s); scheduling efficiency "
                f"{g['scheduling_efficiency'][gen]:.2f}",
            )
        )
    return rows


def halving(d: dict) -> list[Row]:
    rows = []
    for name, r in d.items():
        if name == "run":
            continue
        if name == "tiny":
            arguments = "--quick --json"
        elif r["halving"] != "{eta: 2, min_epochs: 1}":
            arguments = shlex.join(["--configs", name.split()[0], "--halving", r["halving"]])
        else:
            arguments = None
        rungs = r["same_parent"]
        total = {
            k: sum(x[k] for x in rungs) for k in ("epochs_halving", "epochs_full", "train_s_halving", "train_s_full")
        }
        best = sum(x["pick_rank"] == 1 for x in rungs)
        rows += [
            (
                f"{name}, halving {r['halving']}: epochs of all offspring",
                f"{total['epochs_halving']} of {total['epochs_full']}",
                f"{total['epochs_halving'] / total['epochs_full']:.2f}x full training",
                arguments,
            ),
            (
                f"{name}, halving {r['halving']}: training seconds",
                f"{total['train_s_halving']:.0f} s",
                f"{total['train_s_halving'] / total['train_s_full']:.2f}x full training "
                f"({total['train_s_full']:.0f} s)",
                arguments,
            ),
            (
                f"{name}, halving {r['halving']}: its pick among the siblings trained fully",
                f"the best in {best} of {len(rungs)} generations",
                "ranks " + ", ".join(f"{x['pick_rank']} of {x['offspring']}" for x in rungs),
                arguments,
            ),
        ]
    return rows


def images(d: dict) -> list[Row]:
    s = d["summary"]
    what = f"{s['model']} at {s['image_size']} px, {s['images']} JPEGs, batch {s['batch']}, {s['workers']} workers"
    return [
        (
            f"training images/s of the images task ({what})",
            f"{s['evopop_images_per_s']:.1f}/s",
            f"{s['ratio_evopop_vs_bare']:.3f}x a bare ImageFolder loop ({s['bare_images_per_s']:.1f}/s; goal >= 0.9); "
            f"the data alone {s['data_only_images_per_s']:.0f}/s",
        )
    ]


def images_on_gpu(d: dict) -> list[Row]:
    rows = images(d)
    return [(f"{figure} on {d['summary'].get('device', 'cuda')}", *rest) for figure, *rest in rows]


def gpu_check(d: dict) -> list[Row]:
    s, gpu = d["summary"], d.get("machine", {}).get("name", "GPU")
    rows = []
    for mode in ("fp32", "bf16"):
        rows.append(
            (
                f"{gpu}: trainer images/s, {mode} (resnet18, 64 px, batch 128)",
                f"{s[f'throughput_{mode}_evopop_images_per_s']:,.0f}/s",
                f"{s[f'throughput_{mode}_evopop_vs_bare']:.3f}x a bare PyTorch loop; channels_last (no evopop option) "
                f"would give {s[f'throughput_channels_last_gap_{mode}']:.2f}x",
            )
        )
    for n in (2, 4):
        rows.append(
            (
                f"{gpu}: {n} trainers packed on one GPU (gpus_per_trainer {1 / n:g})",
                f"{s[f'packing_trainers_{n}_generation_speedup']:.2f}x",
                f"generation wall time against 1 trainer ({s['packing_trainers_1_generation_s']:.2f} s -> "
                f"{s[f'packing_trainers_{n}_generation_s']:.2f} s); peak memory "
                f"{s[f'memory_trainers_{n}_peak_mib_max']:.0f} MiB per trainer",
            )
        )
    for model in ("resnet18", "resnet50"):
        rows.append(
            (
                f"{gpu}: compacted {model} (clusters 0.5) latency, batch 64, 224 px",
                f"{s[f'compaction_{model}_compact_ms']:.2f} ms",
                f"{s[f'compaction_{model}_speedup']:.2f}x the dense ({s[f'compaction_{model}_dense_ms']:.2f} ms); "
                f"{s[f'compaction_{model}_macs_reduction']:.2f}x fewer MACs",
            )
        )
    rows.append(
        (
            f"{gpu}: VGG16 offspring synthesis (budget C=0.5), weights on the GPU",
            f"{s['synthesis_budget_gpu_s']:.2f} s",
            f"{s['synthesis_budget_gpu_speedup']:.2f}x on the CPU ({s['synthesis_budget_cpu_s']:.2f} s); "
            f"{s['synthesis_budget_decisions_differing']} synapse decisions differ",
        )
    )
    return rows


def masked_training(d: dict) -> list[Row]:
    return [
        (
            f"{opt.upper() if opt == 'sgd' else opt.title()} step, masked offspring",
            f"{d[f'{opt}_masked_ms']:.2f} ms",
            f"{d[f'{opt}_ratio']:.3f}x plain training ({d[f'{opt}_plain_ms']:.2f} ms)",
        )
        for opt in ("sgd", "adam")
        if f"{opt}_ratio" in d
    ]


def population(d: dict) -> list[Row]:
    """Per N offspring a generation: the figures of the latest label (``after``, else ``before``), with
    the ``before`` ones beside them where both were measured."""
    labels = [label for label in ("before", "after") if label in d]
    now, then = d[labels[-1]]["summary"], d["before"]["summary"] if "before" in d else {}
    rows = []
    sizes = sorted({int(k.rsplit("_", 1)[1]) for k in now if k.startswith("driver_cpu_ms_per_offspring_local_")})

    def was(key: str, fmt: str) -> str:
        return f"; before: {format(then[key], fmt)}" if labels[-1] != "before" and key in then else ""

    for n in sizes:
        key = f"driver_cpu_ms_per_offspring_local_{n}"
        rows.append(
            (
                f"{labels[-1]}: driver CPU per offspring, {n:,} offspring a generation",
                f"{now[key]:.2f} ms",
                f"peak RSS {now[f'driver_peak_rss_mb_local_{n}']:.0f} MB, {now[f'files_per_generation_local_{n}']:,} "
                f"files a generation, the run's table in {now[f'load_population_s_local_{n}']:.2f} s"
                + was(key, ".2f")
                + was(f"files_per_generation_local_{n}", ",")
                + was(f"load_population_s_local_{n}", ".2f"),
            )
        )
        requests = f"s3_requests_per_generation_s3_{n}"
        if requests in now:
            rows.append(
                (
                    f"{labels[-1]}: S3 requests a generation, {n:,} offspring (moto)",
                    f"{now[requests]:,}",
                    f"the run's table in {now[f'load_population_s_s3_{n}']:.2f} s" + was(requests, ",")
                    + was(f"load_population_s_s3_{n}", ".2f"),
                )
            )  # fmt: skip
    return rows


def scheduling(d: dict) -> list[Row]:
    """T1 / (capacity x Tn) at 4 trainers, per workload and trainer speeds, longest first against as listed."""
    rows = []
    for name, table in d["tables"].items():
        jobs = d["workloads"][name]["offspring_per_parent"] * len(d["parent_c"])
        for kind in ("identical", "heterogeneous"):
            first, listed = table.get(f"{kind}/4/longest_first"), table.get(f"{kind}/4/as_listed")
            if first is None:
                continue
            speeds = ", ".join(f"{s:g}" for s in first["speeds"])
            rows.append(
                (
                    f"scheduling efficiency T1 / (capacity x T4), {jobs} offspring of very different sizes, "
                    f"4 trainers ({speeds})",
                    f"{first['efficiency']:.3f}",
                    f"handed out as listed: {listed['efficiency']:.3f}; the best any order could do: "
                    f"{first['best_efficiency']:.3f}",
                )
            )
    return rows


def procedural_data(d: dict) -> list[Row]:
    return [
        (
            f"an epoch through a DataLoader ({d['n']} items of {d['size']}x{d['size']}, {d['workers']} {d['context']} "
            "workers)",
            f"{d['loader_epoch_s']:.3f} s",
            f"{d['ratio']:.1f}x the bare loop ({d['bare_epoch_s']:.3f} s); the loader's floor {d['floor_ratio']:.1f}x",
        ),
        (f"first render of {d['n']} items", f"{d['first_render_s']:.3f} s", ""),
    ]


def synthesis(d: dict) -> list[Row]:
    rows = [
        (
            f"synthesize, {mode} mode, {d['model']} ({d['model_synapses'] / 1e6:.1f} M synapses)",
            f"{d[f'{mode}_s']:.3f} s",
            f"{d[f'{mode}_ratio']:.2f}x the bare Bernoulli draw ({d['baseline_s']:.3f} s)",
        )
        for mode in ("scale", "budget", "network")
    ]
    for key in d:
        if key.startswith("linear_") and key.endswith("_scale_ns_per_synapse"):
            n = int(key.split("_")[1])
            rows.append(
                (
                    f"synthesize per synapse, one Linear layer of {n:,} synapses",
                    f"{d[key]:.2f} ns",
                    f"{d[f'linear_{n}_ratio']:.2f}x the bare draw ({d[f'linear_{n}_baseline_ns_per_synapse']:.2f} ns)",
                )
            )
    rows += [
        (
            f"extra peak memory of one call, {mode} mode",
            f"{d[f'{mode}_extra_peak_bytes'] / 2**20:.0f} MiB",
            f"{d[f'{mode}_extra_over_weights']:.2f}x the weights' bytes ({d['weight_bytes'] / 2**20:.0f} MiB)",
        )
        for mode in ("scale", "budget", "network")
    ]
    return rows


def zoo(rows: list[dict]) -> list[Row]:
    out = []
    for r in rows:
        spec = r["model"]  # a failed row names the spec itself
        if ":" not in spec:
            timm = spec.endswith(" (timm)")
            spec = f"timm:{spec.removesuffix(' (timm)')}" if timm else f"torchvision:{spec}"
        if "error" in r:
            out.append((f"{r['model']}: compaction", "failed", r["error"], f"--models {spec}"))
            continue
        tp = (
            f"Torch-Pruning at the same parameters {r['tp_macs_x']:.2f}x" if "tp_macs_x" in r else "Torch-Pruning fails"
        )
        out.append(
            (
                f"{r['model']}: fewer MACs, 50% offspring compacted",
                f"{r['evo50_macs_x']:.2f}x",
                f"speed-up {r['evo50_speedup']:.2f}x over the dense model; {tp}",
                f"--models {spec}",
            )
        )
    return out


HEADLINES: dict[str, Callable] = {
    "bench_cluster": cluster,
    "bench_compaction": compaction,
    "bench_diversity": diversity,
    "bench_driver_memory": driver_memory,
    "bench_engine": engine,
    "bench_halving": halving,
    "bench_images": images,
    "bench_images_gpu": images_on_gpu,
    "gpu_check": gpu_check,
    "bench_masked_training": masked_training,
    "bench_population": population,
    "bench_procedural_data": procedural_data,
    "bench_scheduling": scheduling,
    "bench_synthesis": synthesis,
    "bench_zoo": zoo,
}


# == commands =======================================================================================
def command(name: str, data, arguments: str | None) -> str:
    """The command that reproduces a figure: the benchmark's ``arguments`` for it, else the command the JSON
    records, else the benchmark's full run."""
    if arguments is None and isinstance(data, dict) and "run" in data:
        return data["run"]["command"]
    return f"python -m benchmarks.{name} {arguments or '--json'}"


# == the table ======================================================================================
def cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def when(data) -> str:
    """When the JSON says it was measured, with the machine's 1-minute load average then, where it has them."""
    if not isinstance(data, dict) or "run" not in data:
        return ""
    load = (data.get("loadavg_1min_start"), data.get("loadavg_1min_end"))
    return data["run"]["measured"] + (f", load {load[0]} -> {load[1]}" if None not in load else "")


def table(results: Path = RESULTS) -> str:
    lines = [
        "# Benchmark headline figures",
        "",
        "Generated by `python -m benchmarks.table` from the JSON results in this folder: do not edit it by hand;",
        "`python -m benchmarks.table --check` (run by tests/test_benchmarks.py) fails when it is out of date.",
        "Ratios are against the baseline each benchmark measures in the same run. Run the commands from the",
        "repository root; a bare `--json` writes to this folder.",
        "",
        "| benchmark | figure | value | ratio / baseline | command | measured |",
        "|---|---|---|---|---|---|",
    ]
    for path in sorted(results.glob("*.json")):
        data = json.loads(path.read_text())
        measured = when(data)
        headlines = HEADLINES.get(path.stem)
        if headlines is None:
            lines.append(f"| {cell(path.stem)} | no headline figures defined in benchmarks/table.py | | | | |")
            continue
        for figure, value, versus, *arguments in headlines(data):
            run = f"`{command(path.stem, data, arguments[0] if arguments else None)}`"
            lines.append("| " + " | ".join(cell(c) for c in (path.stem, figure, value, versus, run, measured)) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if TABLE.md is not up to date")
    args = parser.parse_args(argv)
    text = table()
    if args.check:
        if not TABLE.exists() or TABLE.read_text() != text:
            print(f"{TABLE} is out of date with the JSON results: run `python -m benchmarks.table`", file=sys.stderr)
            return 1
        print(f"{TABLE.name} is up to date")
        return 0
    TABLE.write_text(text)
    print(f"wrote {TABLE} ({text.count(chr(10)) - 9} figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
