"""evopop on one's own model, from Python, without a run: trace, inspect, synthesize, compact, export.

    import torchvision, evopop.toolkit as evo
    model, x = torchvision.models.resnet50(), torch.randn(1, 3, 224, 224)
    arch = evo.trace(model, x)                          # warns once about what can never be removed
    print(evo.inspect(arch))                            # groups, pinned layers and why, dense MACs
    genome = evo.offspring(model, arch, clusters=0.5, seed=0)   # about half the clusters survive
    small = evo.compact(model, arch, genome, x)         # a smaller dense network: .module, .macs, .params
    evo.export(small.module, x, "resnet50-half.pt2")    # runs without evopop (.onnx: ONNX)

A model can also be named: ``load_model("torchvision:resnet50", num_classes=10)``, ``"timm:convnext_atto"``
(timm installed) or ``"my.package:build"`` (any callable that returns an ``nn.Module``). Nothing is
downloaded: models are built with random weights, and a user loads their own.
"""

from __future__ import annotations

import os
import warnings

from torch import nn

from .compaction import Compacted
from .compaction import compact as _compact
from .compaction.export import exported_bytes
from .models.by_name import model_by_name
from .synthesis import Architecture, Environment, Genome, synaptic_weights, synthesize, trace_architecture
from .synthesis.inputs import Inputs
from .synthesis.inspection import OUTPUT, Inspection, inspect_architecture


def trace(model: nn.Module, example_input: Inputs) -> Architecture:
    """The architecture of ``model``: its layers, wiring and coupling groups. One warning names the layers
    whose neurons can never be removed (beyond the network's outputs), and why."""
    arch = trace_architecture(model, example_input)
    pinned = inspect_architecture(arch).pinned_layers
    if pinned:
        shown = "; ".join(f"{p.name} ({p.pinned}/{p.neurons}: {p.reasons[0]})" for p in pinned[:5])
        more = f" and {len(pinned) - 5} more layers" if len(pinned) > 5 else ""
        warnings.warn(
            f"{type(model).__name__}: some neurons can never be removed: {shown}{more} (evopop inspect shows all)",
            stacklevel=2,
        )
    return arch


def inspect(arch: Architecture) -> Inspection:
    """What evopop can remove from the traced network; ``print`` it for a report."""
    return inspect_architecture(arch)


def offspring(
    model: nn.Module,
    arch: Architecture,
    clusters: float,
    synapses: float = 1.0,
    seed: int = 0,
    parent: Genome | None = None,
    sharpness: float = 1.0,
    multiple: int = 1,
) -> Genome:
    """One offspring genome of ``model`` (its weights are the parent's DNA): an expected fraction
    ``clusters`` of the living coupling groups survives (the cluster ``budget``), then ``synapses`` of the
    survivors' synapses (1: all of them); ``multiple``: each layer keeps a multiple of that many channels."""
    parent = parent or Genome.full(arch)
    cluster_env = Environment(clusters, "budget", sharpness=sharpness, multiple=multiple)
    return synthesize(
        arch, synaptic_weights(model, arch), parent, Environment(synapses, "budget"), seed, clusters=cluster_env
    )


def compact(model: nn.Module, arch: Architecture, genome: Genome, example_input: Inputs) -> Compacted:
    """``model`` under ``genome`` as a physically smaller dense network, checked against the masked one."""
    return _compact(model, arch, genome, example_input)


def export(module: nn.Module, example_input: Inputs, path: str, fmt: str | None = None) -> str:
    """Write ``module`` as a standalone program: ``pt2`` (torch.export) or ``onnx``, by ``fmt`` or the
    file's extension; returns ``path``."""
    fmt = fmt or os.path.splitext(path)[1].lstrip(".") or "pt2"
    data = exported_bytes(module, example_input, fmt)
    with open(path, "wb") as f:
        f.write(data)
    return path


def load_model(spec: str, **kwargs) -> nn.Module:
    """A model by name, with random weights: ``torchvision:NAME``, ``timm:NAME`` or ``package.module:callable``."""
    return model_by_name(spec, **kwargs)


__all__ = ["trace", "inspect", "offspring", "compact", "export", "load_model", "trace_architecture", "OUTPUT"]
