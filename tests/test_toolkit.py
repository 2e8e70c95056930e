"""evopop on one's own model from Python (`evopop.toolkit`) and `evopop inspect`, on torchvision's models."""

from __future__ import annotations

import pytest
import torch
import torchvision

import evopop.toolkit as evo
from evopop.cli import main
from evopop.compaction.compact import relative_error


def test_trace_inspect_synthesize_compact_export_a_torchvision_model(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    arch = evo.trace(model, x)
    report = evo.inspect(arch)
    assert report.output_neurons == 10 and report.never_die_fraction == 0.0
    assert report.dense_macs > 0 and "coupling groups" in str(report)
    genome = evo.offspring(model, arch, clusters=0.5, seed=1)
    small = evo.compact(model, arch, genome, x)
    assert small.params < 0.7 * sum(p.numel() for p in model.parameters())
    path = evo.export(small.module, x, str(tmp_path / "small.pt2"))
    program = torch.export.load(path).module()
    batch = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert relative_error(program(batch), small.module(batch)) <= 1e-5
    again = evo.offspring(model, arch, clusters=0.5, seed=1)
    assert again.digest() == genome.digest()  # seeded: the same offspring again


class RunningSum(torch.nn.Module):
    """A cumulative sum across the channels: an operation evopop cannot see through."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.b(torch.cumsum(self.a(x), dim=1))


def test_trace_warns_once_naming_the_layers_that_can_never_be_removed():
    with pytest.warns(UserWarning, match=r"can never be removed: a \(4/4: read by cumsum\(\), which evopop cannot"):
        evo.trace(RunningSum(), torch.randn(1, 3, 8, 8))


def test_inspect_command_prints_what_can_be_removed(capsys):
    assert main(["inspect", "torchvision:resnet18", "--input", "3,32,32", "--arg", "num_classes=7"]) == 0
    out = capsys.readouterr().out
    assert "coupling groups" in out and "7 are the network's outputs" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["inspect", "resnet18"], "expected torchvision:NAME"),
        (["inspect", "torchvision:resnet18", "--input", "3,x"], "--input"),
        (["inspect", "torchvision:resnet18", "--arg", "num_classes"], "--arg"),
        (["inspect", "torch.nn:Identity", "--input", "4"], "no synaptic layers"),
        (["inspect", "no.such.module:build"], "no.such"),
    ],
)
def test_inspect_refuses_bad_input_with_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
