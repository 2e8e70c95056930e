"""Networks whose forward takes several inputs or a dict of them, and networks evopop cannot trace.

A task's example input may be a tensor, a tuple of tensors (positional arguments) or a dict (keyword
arguments); everything that runs a network (tracing, training, probes, compaction, latency, export)
must work on each. A network that torch.fx cannot trace must say where, in seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn
from user_tasks import BagOfTokens

from evopop import toolkit
from evopop.compaction.latency import latency_ms
from evopop.records.checkpoints import NetworkCard
from evopop.synthesis import trace_architecture
from evopop.synthesis.inputs import call, description, placeholder_arguments
from evopop.synthesis.tracing import Untraceable, symbolic_trace


class ImageAndFeatures(nn.Module):
    """Two positional inputs: an image through convolutions, a feature vector through a Linear, joined."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.features = nn.Linear(5, 8)
        self.head = nn.Linear(16, 4)

    def forward(self, image, extra):
        pooled = torch.relu(self.conv(image)).mean(dim=(2, 3))
        return self.head(torch.cat([pooled, torch.relu(self.features(extra))], dim=1))


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class DictBatch(ImageAndFeatures):
    """One argument, a dict read by key inside: ``forward(self, batch)`` (detection and multi-modal code)."""

    def forward(self, batch):
        return super().forward(batch["image"], batch["extra"])


TUPLE = (torch.randn(1, 3, 8, 8), torch.randn(1, 5))
KEYWORDS = {"input_ids": torch.zeros(1, 12, dtype=torch.long), "attention_mask": torch.ones(1, 12)}
WHOLE = {"image": TUPLE[0], "extra": TUPLE[1]}


@pytest.mark.parametrize(
    "model, example",
    [(ImageAndFeatures, TUPLE), (BagOfTokens, KEYWORDS), (DictBatch, WHOLE)],
    ids=["positional", "keywords", "one dict"],
)
def test_several_inputs_trace_shrink_compact_time_and_export(model, example, tmp_path):
    torch.manual_seed(0)
    net = model().eval()
    arch = toolkit.trace(net, example)
    assert arch.traced, arch.note
    assert all(arch.macs_per_synapse.values()), "MACs are counted from the traced shapes"
    genome = toolkit.offspring(net, arch, clusters=0.5, seed=1)
    compacted = toolkit.compact(net, arch, genome, example)
    assert compacted.params < sum(p.numel() for p in net.parameters())
    assert compacted.max_error <= 1e-4
    assert latency_ms(compacted.module, example, batch=4, repeats=2) > 0
    path = toolkit.export(compacted.module, example, str(tmp_path / "net.pt2"))
    program = torch.export.load(path).module()
    if example is KEYWORDS:
        batch = {"input_ids": torch.randint(0, 40, (3, 12)), "attention_mask": torch.ones(3, 12)}
    else:
        batch = (torch.randn(3, 3, 8, 8), torch.randn(3, 5))
        batch = {"image": batch[0], "extra": batch[1]} if example is WHOLE else batch
    with torch.no_grad():
        assert torch.allclose(call(program, batch), call(compacted.module, batch), atol=1e-5)


@pytest.mark.parametrize("example", [torch.zeros(1, 3, 4, 4), TUPLE, KEYWORDS], ids=["tensor", "tuple", "dict"])
def test_the_network_card_records_every_input_shape_and_dtype(example):
    card = NetworkCard.from_json(NetworkCard.of(example, {"model": "torchvision:resnet18"}).to_json())
    rebuilt = card.example()
    assert description(rebuilt) == description(example)
    assert card.model == {"model": "torchvision:resnet18"}


def test_a_card_written_before_several_inputs_still_reads():
    old = '{"example_input": {"shape": [1, 3, 32, 32], "dtype": "float32"}, "model": null}'
    example = NetworkCard.from_json(old).example()
    assert isinstance(example, torch.Tensor) and example.shape == (1, 3, 32, 32)


def test_an_example_input_that_misses_or_misnames_an_argument_is_named():
    graph = symbolic_trace(BagOfTokens())
    with pytest.raises(ValueError, match="lacks 'attention_mask', which the network's forward needs"):
        placeholder_arguments(graph, {"input_ids": KEYWORDS["input_ids"]})
    with pytest.raises(ValueError, match="takes no argument mask .*it takes input_ids, attention_mask"):
        placeholder_arguments(graph, {**KEYWORDS, "mask": torch.ones(1, 12)})
    with pytest.raises(ValueError, match="lacks"):
        trace_architecture(BagOfTokens(), {"input_ids": KEYWORDS["input_ids"]})


class Gate(nn.Module):
    def forward(self, x):
        if x.mean() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return x
        return -x


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.blocks = nn.Sequential(nn.ReLU(), Gate())
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def test_an_untraceable_network_names_the_module_the_line_and_the_operation_in_seconds():
    started = time.perf_counter()
    with pytest.raises(Untraceable) as caught:
        symbolic_trace(Nested())
    assert time.perf_counter() - started < 5
    message = str(caught.value)
    assert message.startswith("Nested cannot be traced in blocks.1 (Gate), at tests/test_model_inputs.py:")
    assert "`if x.mean() > 0:" in message
    assert "TraceError: symbolically traced variables cannot be used as inputs to control flow" in message
    with pytest.warns(UserWarning, match=r"in blocks\.1 \(Gate\).*offspring cannot be compacted"):
        arch = trace_architecture(Nested(), torch.zeros(1, 3, 8, 8))
    assert not arch.traced and "blocks.1 (Gate)" in arch.note


def test_a_timm_vit_traces_with_what_timm_keeps_whole():
    timm = pytest.importorskip("timm")
    # its position embedding is resampled for a 64-pixel input by a function timm marks as not to be
    # traced (its branch on sizes stops torch.fx); traced again keeping it whole, the ViT is followed
    model = timm.create_model("test_vit", num_classes=5).eval()
    example = torch.randn(1, 3, 64, 64)
    arch = trace_architecture(model, example)
    assert arch.traced, arch.note
    genome = toolkit.offspring(model, arch, clusters=0.5, seed=0)
    assert toolkit.compact(model, arch, genome, example).max_error <= 1e-4


def test_a_keyword_input_network_evolves_on_ray_and_exports_from_its_run_directory(ray_cluster, tmp_path):
    from evopop.analysis.export import export_individual
    from evopop.api import evolve
    from evopop.config import load_config
    from evopop.records.run import RunRecords

    config = load_config(
        CONFIGS / "tiny.yaml",
        ["task.name=user_tasks:tokens", "task.args={n: 192}", "evolution.generations=2", "evolution.offspring=2"],
    )
    run_dir = str(tmp_path / "run")
    RunRecords(run_dir).write_config(config.to_yaml())
    population = evolve(config, run_dir)
    assert set(population["status"]) == {"ok"}, population[["individual_id", "status", "error"]]
    assert population["val_accuracy"].notna().all()
    offspring = population[population["generation"] == 2]
    assert (offspring["synapses"] < population["synapses"].max()).all()
    assert offspring["compact_params"].notna().all(), "compacted with its dict input"
    diversity = RunRecords(run_dir).diversity_pairs()
    assert diversity["functional_disagreement"].notna().any(), "the probe ran on the dict batch"
    best = offspring.sort_values("val_accuracy").iloc[-1]["individual_id"]
    exported = export_individual(run_dir, best, str(tmp_path / "best.pt2"))
    assert set(exported.metadata["inputs"]) == {"input_ids", "attention_mask"}
    program = torch.export.load(exported.path).module()
    out = program(input_ids=torch.randint(0, 40, (5, 12)), attention_mask=torch.ones(5, 12))
    assert out.shape == (5, 3)
