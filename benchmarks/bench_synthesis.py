#!/usr/bin/env python
"""Speed, scaling and memory of evopop's offspring synthesis, against a bare Bernoulli baseline.

The baseline is the least any synthesis can do: one uniform per synapse compared with a
probability that is already known, ``torch.rand_like(w) < p`` with p = C * exp(|w|/Z - 1)
computed outside the timed region. ``synthesize`` also has to find Z, compute p, keep the draw
reproducible (a seeded CPU generator per layer) and cascade neuron death, so the ratio
synthesize / baseline is the price of all that.

    python -m benchmarks.bench_synthesis                      # VGG16 + 1e6/1e7/1e8 + memory
    python -m benchmarks.bench_synthesis --quick              # CI smoke run, seconds
    python -m benchmarks.bench_synthesis --json results.json  # also write the summary as JSON (alone: results/)
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import subprocess
import sys
from pathlib import Path

import torch
import torchvision
from torch import nn

from benchmarks.harness import RunClock, arguments, print_summary, proc_status, take_turns, timed, write_json
from evopop.synthesis import Environment, Genome, synaptic_weights, synthesize, trace_architecture

ROOT = Path(__file__).resolve().parents[1]
C = 0.4
SEED = 1234
MODES = ("scale", "budget", "network")  # network: configs/efficient.yaml's (one budget, sharpness 5)
SHARPNESS = {"network": 5.0}


# -- networks ----------------------------------------------------------------------------------
def tiny_cnn() -> nn.Module:
    """A small VGG-style net for --quick runs (~0.3M synapses, 32x32 inputs)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def build_network(quick: bool, device: torch.device):
    """(name, architecture, synaptic weights) of VGG16, or of a tiny CNN in quick mode.

    Tracing only needs shapes, so it runs on a meta-device copy (no 224x224 forward pass);
    synthesis needs the real, randomly initialised weights.
    """
    if quick:
        make, name, shape = tiny_cnn, "tiny_cnn", (1, 3, 32, 32)
    else:
        make, name, shape = torchvision.models.vgg16, "vgg16", (1, 3, 224, 224)
    with torch.device("meta"):
        skeleton = make()
    # Trace outside the meta context: the architecture's own index tensors must live on the CPU.
    arch = trace_architecture(skeleton, torch.zeros(shape, device="meta"))
    torch.manual_seed(0)
    model = make().to(device)
    return name, arch, synaptic_weights(model, arch)


def linear_layer(synapses: int, device: torch.device, fan_in: int = 1000):
    """Architecture and weight of one Linear layer with exactly ``synapses`` synapses."""
    out = max(1, synapses // fan_in)
    skeleton = nn.Linear(fan_in, out, bias=False, device="meta")
    arch = trace_architecture(skeleton, torch.zeros(1, fan_in, device="meta"))
    torch.manual_seed(0)
    bound = 1 / math.sqrt(fan_in)  # nn.Linear's default init range
    weight = torch.empty(out, fan_in, device=device).uniform_(-bound, bound)
    return arch, {arch.layers[0].name: weight}


# -- the two things being timed ------------------------------------------------------------------
def baseline_probabilities(weights: dict[str, torch.Tensor], c: float) -> dict[str, torch.Tensor]:
    """p = C * exp(|w|/Z - 1), Z = the layer's max |w|: precomputed, so the baseline only samples."""
    probs = {}
    for name, w in weights.items():
        a = w.abs().float()
        probs[name] = (a / a.max() - 1).exp_().mul_(c)
    return probs


def baseline(weights: dict[str, torch.Tensor], probs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: torch.rand_like(w) < probs[name] for name, w in weights.items()}


def synthesis(arch, weights, mode: str):
    """A no-argument call of synthesize from the ancestor (every synapse alive)."""
    parent = Genome.full(arch, device=next(iter(weights.values())).device)
    env = Environment(c=C, mode=mode, sharpness=SHARPNESS.get(mode, 1.0))
    return lambda: synthesize(arch, weights, parent, env, SEED)


# -- timing --------------------------------------------------------------------------------------
def best_times(fns: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Best-of-``repeats`` seconds per function after one warm-up call each.

    The functions take turns within each repeat, so slow drifts of the machine hit all alike.
    """

    def synced(fn) -> None:
        sync(device)
        fn()  # the result is dropped at once: memory stays at one call's worth
        sync(device)

    seconds = take_turns({name: lambda _, fn=fn: timed(synced, fn)[1] for name, fn in fns.items()}, repeats, warmup=1)
    return {name: min(s) for name, s in seconds.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_network(quick: bool, repeats: int, device: torch.device) -> dict:
    name, arch, weights = build_network(quick, device)
    probs = baseline_probabilities(weights, C)
    fns = {"baseline": lambda: baseline(weights, probs)}
    fns.update({mode: synthesis(arch, weights, mode) for mode in MODES})
    best = best_times(fns, repeats, device)
    result = {"model": name, "synapses": arch.synapses, "baseline_s": best["baseline"]}
    for mode in MODES:
        result[f"{mode}_s"] = best[mode]
        result[f"{mode}_ratio"] = best[mode] / best["baseline"]
        result[f"{mode}_kept_fraction"] = fns[mode]().synapses() / arch.synapses  # sanity: what was timed
    return result


def bench_scaling(sizes: list[int], repeats: int, device: torch.device) -> list[dict]:
    rows = []
    for size in sizes:
        arch, weights = linear_layer(size, device)
        probs = baseline_probabilities(weights, C)
        fns = {"baseline": lambda w=weights, p=probs: baseline(w, p), "scale": synthesis(arch, weights, "scale")}
        best = best_times(fns, repeats, device)
        n = arch.synapses
        rows.append(
            {
                "synapses": n,
                "scale_s": best["scale"],
                "scale_ns_per_synapse": best["scale"] / n * 1e9,
                "baseline_ns_per_synapse": best["baseline"] / n * 1e9,
                "ratio": best["scale"] / best["baseline"],
            }
        )
        del arch, weights, probs, fns
        gc.collect()
    return rows


# -- memory --------------------------------------------------------------------------------------
def release_freed_memory() -> None:
    """Return freed heap pages to the OS, so that resident memory counts only live tensors."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_probe(mode: str, quick: bool, device: torch.device) -> dict:
    """Runs in a fresh process: peak memory of one synthesize call beyond model, weights and parent.

    One warm-up call first, so that torch's one-time setup (thread pools, kernels) is not counted.
    """
    _, arch, weights = build_network(quick, device)
    call = synthesis(arch, weights, mode)
    weight_bytes = sum(w.numel() * w.element_size() for w in weights.values())
    call()
    release_freed_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        child = call()
        peak, after = torch.cuda.max_memory_allocated(device), torch.cuda.memory_allocated(device)
        exact = True
    else:
        exact = reset_peak()  # else the peak may predate the call: a lower bound only
        before = proc_status("VmRSS")
        child = call()
        peak, after = proc_status("VmHWM"), proc_status("VmRSS")
    mask_bytes = sum(m.numel() * m.element_size() for m in child.masks.values())
    return {
        "weight_bytes": weight_bytes,
        "child_mask_bytes": mask_bytes,
        "extra_peak_bytes": peak - before,
        "retained_bytes": after - before,
        "peak_is_exact": exact,
    }


def bench_memory(quick: bool, device: torch.device) -> dict:
    """One fresh interpreter per mode, so that no earlier allocation hides in the peak."""
    result = {}
    for mode in MODES:
        cmd = [sys.executable, "-m", "benchmarks.bench_synthesis", "--probe", mode, "--device", str(device)]
        cmd += ["--threads", str(torch.get_num_threads())] + (["--quick"] if quick else [])
        probe = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout)
        result.setdefault("weight_bytes", probe["weight_bytes"])
        result.setdefault("child_mask_bytes", probe["child_mask_bytes"])
        result[f"{mode}_extra_peak_bytes"] = probe["extra_peak_bytes"]
        result[f"{mode}_extra_over_weights"] = probe["extra_peak_bytes"] / probe["weight_bytes"]
        result[f"{mode}_retained_bytes"] = probe["retained_bytes"]
        result["peak_is_exact"] = result.get("peak_is_exact", True) and probe["peak_is_exact"]
    return result


# -- reporting -----------------------------------------------------------------------------------
def summary(net: dict, rows: list[dict], memory: dict, goals: bool) -> dict:
    """Flat key: value figures; ``goals`` adds the pass/fail flags (meaningless for --quick sizes)."""
    out = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": net["model"],
        "model_synapses": net["synapses"],
        "baseline_s": round(net["baseline_s"], 4),
    }
    for mode in MODES:
        out[f"{mode}_s"] = round(net[f"{mode}_s"], 4)
        out[f"{mode}_ratio"] = round(net[f"{mode}_ratio"], 3)
        out[f"{mode}_kept_fraction"] = round(net[f"{mode}_kept_fraction"], 4)
    if goals:
        out["scale_ratio_goal_1.5_met"] = net["scale_ratio"] <= 1.5
    for row in rows:
        key = f"linear_{row['synapses']}"
        out[f"{key}_scale_ns_per_synapse"] = round(row["scale_ns_per_synapse"], 3)
        out[f"{key}_baseline_ns_per_synapse"] = round(row["baseline_ns_per_synapse"], 3)
        out[f"{key}_ratio"] = round(row["ratio"], 3)
    out.update({k: round(v, 3) if isinstance(v, float) else v for k, v in memory.items()})
    if goals:
        out["memory_goal_2x_met"] = all(memory[f"{m}_extra_over_weights"] <= 2.0 for m in MODES)
    return out


def parse_sizes(text: str) -> list[int]:
    return [int(float(s)) for s in text.split(",") if s.strip()]


def main() -> None:
    parser = arguments(__name__, __doc__.splitlines()[0], quick="tiny sizes and a tiny CNN: a smoke run")
    parser.add_argument("--sizes", default="1e6,1e7,1e8", help="synapse counts of the scaling runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda where available")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--probe", choices=MODES, help=argparse.SUPPRESS)  # internal: memory subprocess
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "cuda" or torch.cuda.is_available() else "cpu")
    if args.probe:
        print(json.dumps(memory_probe(args.probe, args.quick, device)))
        return
    sizes, repeats = (parse_sizes("1e4,1e5"), 1) if args.quick else (parse_sizes(args.sizes), args.repeats)
    clock = RunClock()
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, best of {repeats}")

    net = bench_network(args.quick, repeats, device)
    print(f"\n{net['model']} ({net['synapses']:,} synapses), C={C}")
    print(f"  baseline rand<p   {net['baseline_s']:8.3f} s")
    for mode in MODES:
        print(
            f"  synthesize {mode:6s} {net[f'{mode}_s']:8.3f} s   {net[f'{mode}_ratio']:.2f}x baseline"
            f"   (keeps {net[f'{mode}_kept_fraction']:.3f} of synapses)"
        )

    rows = bench_scaling(sizes, repeats, device)
    print("\nscaling, one Linear layer, mode=scale")
    print(f"  {'synapses':>12s} {'synth s':>9s} {'synth ns/syn':>13s} {'base ns/syn':>12s} {'ratio':>6s}")
    for r in rows:
        print(
            f"  {r['synapses']:12,d} {r['scale_s']:9.4f} {r['scale_ns_per_synapse']:13.2f} "
            f"{r['baseline_ns_per_synapse']:12.2f} {r['ratio']:6.2f}"
        )

    memory = bench_memory(args.quick, device)
    print(f"\nmemory of one synthesize call on {net['model']} (fresh process per mode)")
    mib = {key: memory[key] / 2**20 for key in ("weight_bytes", "child_mask_bytes")}
    print(f"  weights {mib['weight_bytes']:.0f} MiB, child masks {mib['child_mask_bytes']:.0f} MiB")
    for mode in MODES:
        print(
            f"  {mode:6s} extra peak {memory[f'{mode}_extra_peak_bytes'] / 2**20:8.1f} MiB"
            f" = {memory[f'{mode}_extra_over_weights']:.3f}x weights"
        )

    result = summary(net, rows, memory, goals=not args.quick)
    result.update(clock.figures())
    print_summary(result)
    write_json(args.json, result, __name__)


if __name__ == "__main__":
    main()
