#!/usr/bin/env python
"""Is an evolved network really faster? Dense ancestor vs masked vs compacted offspring, synapse-level
vs cluster-driven encoding, at several efficiency levels, measured in one process.

For each encoding, offspring are synthesized generation after generation from the ancestor's
weights (no training: speed depends on shapes, not on what the weights learned). Each generation's
offspring is timed three ways at each batch size, interleaved round by round so that machine noise
hits all alike:

- dense: the ancestor (the baseline, measured in the same run);
- masked: the offspring as evopop trains it, the dense network with zeros in it;
- compacted: `evopop.compaction.compact`, dead neurons physically removed.

It prints MAC reduction (dense MACs / compacted MACs), measured speedup (dense time / compacted
time) and their ratio. Goal (issue 11): a cluster-encoded offspring's measured speedup at batch 32
on CPU is at least half its MAC reduction; on a GPU, the same at batch 64.

    python -m benchmarks.bench_compaction                  # saliency net at width 1/4, 96x96: ~4 min on 2 cores
    python -m benchmarks.bench_compaction --quick          # CI smoke run: seconds
    python -m benchmarks.bench_compaction --device cuda --batches 64
    python -m benchmarks.bench_compaction --json           # also write the rows to benchmarks/results/
"""

from __future__ import annotations

import sys

import torch

from benchmarks.harness import arguments, median, take_turns, write_json
from evopop.compaction import compact, latency_ms
from evopop.compaction.compact import masked_network
from evopop.models.saliency import SaliencyNet
from evopop.models.small import SmallConvNet
from evopop.synthesis import Environment, Genome, count, synaptic_weights, synthesize, trace_architecture

SEED = 1234
ENCODINGS = {
    # the quickstarts' settings: ~2x fewer synapses per generation either way
    "synapse": dict(env=Environment(0.5, "budget"), clusters=None),
    "cluster": dict(env=Environment(0.7, "budget"), clusters=Environment(0.7, "budget")),
}


def build(quick: bool):
    if quick:
        return SmallConvNet(widths=(8, 16), hidden=32, num_classes=4).eval(), torch.randn(1, 3, 16, 16)
    return SaliencyNet(width=0.25).eval(), torch.randn(1, 3, 96, 96)


def measure(networks: dict, example: torch.Tensor, batch: int, rounds: int, device: str) -> dict[str, float]:
    """Per network: the median over ``rounds`` interleaved rounds of the fastest of 3 passes (ms)."""
    sides = {
        name: lambda _, net=net: latency_ms(net, example, batch, repeats=3, device=device)
        for name, net in networks.items()
    }
    return {name: median(t) for name, t in take_turns(sides, rounds).items()}


def main(argv=None) -> int:
    parser = arguments(__name__, __doc__, quick="CI smoke run: a small CNN, 2 generations, 2 rounds")
    parser.add_argument("--generations", type=int, default=4, help="offspring generations per encoding")
    parser.add_argument("--batches", default="1,32", help="batch sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.quick:
        args.generations, args.rounds = 2, 2
    device = args.device if args.device != "cuda" or torch.cuda.is_available() else "cpu"
    batches = [int(b) for b in args.batches.split(",")]

    torch.manual_seed(SEED)
    model, example = build(args.quick)
    arch = trace_architecture(model, example)
    weights = synaptic_weights(model, arch)
    ancestor = Genome.full(arch)
    dense = compact(model, arch, ancestor, example)  # the dense network, as a GraphModule like the others
    print(
        f"network: {type(model).__name__}, input {tuple(example.shape[1:])}, device {device}, threads "
        f"{torch.get_num_threads()}; dense: {dense.params:,} parameters, {dense.macs:,} MACs per sample"
    )

    rows = []
    for encoding, setting in ENCODINGS.items():
        genome = ancestor
        for generation in range(2, args.generations + 2):
            genome = synthesize(arch, weights, genome, setting["env"], SEED + generation, clusters=setting["clusters"])
            compacted = compact(model, arch, genome, example)
            masked = masked_network(model, arch, genome).eval()
            counts = count(arch, genome)
            for batch in batches:
                ms = measure(
                    {"dense": dense.module, "masked": masked, "compact": compacted.module},
                    example,
                    batch,
                    args.rounds,
                    device,
                )
                macs_reduction = dense.macs / compacted.macs
                speedup = ms["dense"] / ms["compact"]
                rows.append(
                    {
                        "encoding": encoding,
                        "generation": generation,
                        "batch": batch,
                        "synapse_efficiency": counts.dense_synapses / counts.synapses,
                        "nominal_macs_reduction": counts.dense_macs / max(counts.macs, 1),
                        "macs_reduction": macs_reduction,
                        "params_reduction": dense.params / compacted.params,
                        "dense_ms": ms["dense"],
                        "masked_ms": ms["masked"],
                        "compact_ms": ms["compact"],
                        "masked_speedup": ms["dense"] / ms["masked"],
                        "speedup": speedup,
                        "speedup_per_mac_reduction": speedup / macs_reduction,
                    }
                )

    header = (
        f"{'encoding':8} {'gen':>3} {'batch':>5} {'synapses':>9} {'nominal':>8} {'MACs':>7} "
        f"{'dense ms':>9} {'masked':>7} {'compact':>8} {'speedup':>8} {'/MACs':>6}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['encoding']:8} {r['generation']:>3} {r['batch']:>5} {r['synapse_efficiency']:>8.1f}x "
            f"{r['nominal_macs_reduction']:>7.1f}x {r['macs_reduction']:>6.1f}x {r['dense_ms']:>9.2f} "
            f"{r['masked_speedup']:>6.2f}x {r['compact_ms']:>8.2f} {r['speedup']:>7.2f}x "
            f"{r['speedup_per_mac_reduction']:>6.2f}"
        )
    goal_batch = 64 if device == "cuda" else 32
    cluster = [r for r in rows if r["encoding"] == "cluster" and r["batch"] == goal_batch]
    print("\nsummary:")
    for r in cluster:
        met = "yes" if r["speedup_per_mac_reduction"] >= 0.5 else "NO"
        print(
            f"  cluster gen {r['generation']} batch {goal_batch}: MACs {r['macs_reduction']:.1f}x fewer, "
            f"{r['speedup']:.2f}x faster, speedup/MAC reduction {r['speedup_per_mac_reduction']:.2f} (>= 0.5: {met})"
        )
    write_json(args.json, rows, __name__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
