#!/usr/bin/env python
"""Overhead of training a synthesized offspring with MaskedParameters, against plain training.

The same VGG-style CNN (6 conv + BN, 2 linears, 32x32 inputs, batch 64) is trained with SGD
(momentum) and with Adam, once plain and once with dead entries held at zero by
``MaskedParameters(model, parameter_masks(arch, genome)).attach(optimizer)``, where ``genome`` is a
synthesized offspring (C = 0.4) of the network. The masked model computes the same dense FLOPs,
so any difference is the masking: gradient hooks and the post-step re-masking.

    python -m benchmarks.bench_masked_training            # full run
    python -m benchmarks.bench_masked_training --quick    # CI smoke run
    python -m benchmarks.bench_masked_training --json     # also write the summary to benchmarks/results/
"""

from __future__ import annotations

import copy
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.harness import RunClock, arguments, median, print_summary, take_turns, write_json
from evopop.synthesis import (
    Environment,
    Genome,
    MaskedParameters,
    count,
    parameter_masks,
    synaptic_weights,
    synthesize,
    trace_architecture,
)

C = 0.4
BATCH = 64
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3),
}


def vgg_style_cnn(num_classes: int = 10) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(3, 32),
        *block(32, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        *block(64, 64),
        nn.MaxPool2d(2),
        *block(64, 128),
        *block(128, 128),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 4 * 4, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, num_classes),
    )


def offspring_masks(model: nn.Module, seed: int):
    """Parameter masks of one synthesized offspring of ``model`` (C = 0.4, scale mode)."""
    arch = trace_architecture(model, torch.zeros(1, 3, 32, 32))
    genome = synthesize(arch, synaptic_weights(model, arch), Genome.full(arch), Environment(c=C), seed)
    return parameter_masks(arch, genome), count(arch, genome)


class Trainer:
    """One model + optimizer, trained step by step."""

    def __init__(self, model: nn.Module, optimizer_name: str, masks: dict | None):
        self.model = model.train()
        self.optimizer = OPTIMIZERS[optimizer_name](model.parameters())
        self.masked = MaskedParameters(model, masks).attach(self.optimizer) if masks is not None else None

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start

    def run(self, batches, steps: int) -> list[float]:
        """The seconds of each of ``steps`` steps."""
        return [self.step(*batches[i % len(batches)]) for i in range(steps)]


def dead_entries_are_zero(trainer: Trainer) -> tuple[bool, int]:
    """(every masked entry of weights, gradients and optimizer state is exactly 0, dead entries)."""
    ok, dead = True, 0
    for param, mask in trainer.masked.pairs:
        dead += int((~mask).sum())
        tensors = [param.detach(), param.grad] + list(trainer.optimizer.state.get(param, {}).values())
        for t in tensors:
            if torch.is_tensor(t) and t.shape == param.shape:
                ok &= bool((t[~mask] == 0).all())
    return ok, dead


def bench_optimizer(name: str, model: nn.Module, masks: dict, batches, steps: int, rounds: int) -> dict:
    """Plain and masked take turns for ``rounds`` rounds of ``steps`` steps (order alternating)."""
    plain = Trainer(copy.deepcopy(model), name, None)
    masked = Trainer(copy.deepcopy(model), name, masks)
    for trainer in (plain, masked):
        trainer.run(batches, 3)  # warm-up: optimizer state, allocator, kernels
    turns = take_turns(
        {"plain": lambda _: plain.run(batches, steps), "masked": lambda _: masked.run(batches, steps)}, rounds
    )
    times = {side: [t for turn in turns[side] for t in turn] for side in turns}
    zero, dead = dead_entries_are_zero(masked)
    plain_ms = median(times["plain"]) * 1e3
    masked_ms = median(times["masked"]) * 1e3
    return {
        "optimizer": name,
        "plain_ms": plain_ms,
        "masked_ms": masked_ms,
        "ratio": masked_ms / plain_ms,
        "dead_zero": zero,
        "dead_entries": dead,
        "steps_each": len(times["plain"]),
    }


def fixed_batches(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, 3, 32, 32, generator=g), torch.randint(0, 10, (BATCH,), generator=g)) for _ in range(n)]


def main() -> None:
    parser = arguments(__name__, __doc__.splitlines()[0], quick="a few steps only: a smoke run")
    parser.add_argument("--steps", type=int, default=10, help="steps per round per variant")
    parser.add_argument("--rounds", type=int, default=20, help="plain/masked turns (short: load bursts hit both)")
    args = parser.parse_args()
    steps, rounds = (3, 2) if args.quick else (args.steps, args.rounds)
    clock = RunClock()

    torch.manual_seed(0)
    model = vgg_style_cnn()
    masks, counts = offspring_masks(model, seed=1)
    batches = fixed_batches(4, seed=0)
    print(
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, batch {BATCH}, "
        f"{rounds} rounds x {steps} steps per variant"
    )
    print(
        f"offspring: {counts.synapses:,} of {counts.dense_synapses:,} synapses, "
        f"{counts.neurons} of {counts.dense_neurons} neurons, {len(masks)} masked parameters"
    )

    results = [bench_optimizer(name, model, masks, batches, steps, rounds) for name in OPTIMIZERS]
    print(f"\n{'optimizer':>9s} {'plain ms':>9s} {'masked ms':>10s} {'ratio':>6s}  dead entries exactly zero")
    for r in results:
        print(
            f"{r['optimizer']:>9s} {r['plain_ms']:9.2f} {r['masked_ms']:10.2f} {r['ratio']:6.3f}  "
            f"{r['dead_zero']} ({r['dead_entries']:,} entries)"
        )

    summary = {"threads": torch.get_num_threads(), "synapses": counts.synapses, "dense_synapses": counts.dense_synapses}
    for r in results:
        for key in ("plain_ms", "masked_ms", "ratio"):
            summary[f"{r['optimizer']}_{key}"] = round(r[key], 3)
        summary[f"{r['optimizer']}_dead_zero"] = r["dead_zero"]
    if not args.quick:  # a few steps say nothing about the goal
        summary["ratio_goal_1.15_met"] = all(r["ratio"] <= 1.15 for r in results)
    summary.update(clock.figures())
    print_summary(summary)
    write_json(args.json, summary, __name__)
    if not all(r["dead_zero"] for r in results):
        sys.exit("dead entries moved away from zero")


if __name__ == "__main__":
    main()
