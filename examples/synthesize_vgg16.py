"""The method as a library: synthesize offspring genomes of a VGG16 and look at what changed.

    python examples/synthesize_vgg16.py

No Ray, no files: evopop.synthesis is pure PyTorch. (Random weights here; load your trained ones.)
"""

from __future__ import annotations

import time

import torch
import torchvision

from evopop.synthesis import (
    Environment,
    Genome,
    count,
    offspring_seed,
    synaptic_weights,
    synthesize,
    trace_architecture,
)

torch.manual_seed(0)
model = torchvision.models.vgg16()  # ~138M synapses
arch = trace_architecture(model, torch.zeros(1, 3, 224, 224))
weights = synaptic_weights(model, arch)
ancestor = Genome.full(arch)
print(
    f"ancestor: {arch.synapses:,} synapses in {len(arch.layers)} layers, {count(arch, ancestor).macs / 1e9:.2f} GMACs"
)

for mode in ("scale", "budget"):
    env = Environment(c=0.4, mode=mode)
    start = time.perf_counter()
    child = synthesize(
        arch,
        weights,
        ancestor,
        env,
        seed=offspring_seed(run_seed=0, generation=2, ancestor_id="g1-0", offspring_index=0),
    )
    seconds = time.perf_counter() - start
    c = count(arch, child)
    print(
        f"\n{mode} C=0.4: {c.synapses:,} synapses ({arch.synapses / c.synapses:.2f}x fewer), "
        f"{c.neurons:,}/{c.dense_neurons:,} neurons, {c.macs / 1e9:.2f} GMACs, synthesized in {seconds:.2f}s"
    )
    for layer in c.layers[:3] + c.layers[-3:]:
        print(
            f"  {layer.name:14s} {layer.kind:6s} living {layer.living_fraction:6.1%}  "
            f"neurons {layer.neurons}/{layer.dense_neurons}"
        )
