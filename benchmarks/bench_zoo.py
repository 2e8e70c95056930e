"""The networks users bring: torchvision's (and timm's) families against Torch-Pruning, in one run.

For each model (random weights made to behave like trained ones: batch norms calibrated, zero-initialised
layers given small weights; nothing downloads; small inputs):
- evopop: trace; one cluster-encoded offspring at two survival levels (an expected 70% and 50% of the
  coupling groups, every synapse of a survivor kept); compact; the share of neurons alive in the genome
  against the share compaction keeps; the share that can never die beyond the network's outputs;
- parameters and MACs of the dense and the compacted network by an independent counter, PyTorch's own
  ``torch.utils.flop_counter.FlopCounterMode`` (it counts at the aten level, so it sees every matmul,
  convolution and attention product; MACs = FLOPs / 2);
- CPU latency at batch 8 (the fastest of several passes, dense and compacted timed alternately in the
  same run: the ratio is the figure), and an export round trip (torch.export, reloaded, relative error);
- the 50% offspring again with every layer's channels a multiple of 8 (``clusters.multiple``): MACs, speed;
- Torch-Pruning 1.6 (MagnitudePruner, L1 importance, the classifier ignored): at its plain 50% channel
  ratio, and at the ratio whose parameter count matches evopop's 50% offspring (bisection).

    python -m benchmarks.bench_zoo                      # the README's table (about 15 minutes on 2 cores)
    python -m benchmarks.bench_zoo --models resnet18,mobilenet_v2 --json out.json
    python -m benchmarks.bench_zoo --quick              # smoke run: resnet18 only
    python -m benchmarks.bench_zoo --json               # the rows to benchmarks/results/bench_zoo.json
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.harness import arguments, take_turns, write_json
from evopop.compaction import latency_ms
from evopop.compaction.compact import relative_error
from evopop.compaction.export import export_program
from evopop.synthesis import trace_architecture
from evopop.synthesis.inspection import inspect_architecture
from evopop.toolkit import compact, load_model, offspring

# (spec, input side, constructor arguments)
MODELS = [
    ("torchvision:resnet18", 64, {}),
    ("torchvision:resnet50", 64, {}),
    ("torchvision:resnext50_32x4d", 64, {}),
    ("torchvision:wide_resnet50_2", 64, {}),
    ("torchvision:regnet_x_400mf", 64, {}),
    ("torchvision:regnet_y_400mf", 64, {}),
    ("torchvision:mobilenet_v2", 64, {}),
    ("torchvision:mobilenet_v3_small", 64, {}),
    ("torchvision:efficientnet_b0", 64, {}),
    ("torchvision:shufflenet_v2_x1_0", 64, {}),
    ("torchvision:squeezenet1_0", 64, {}),
    ("torchvision:densenet121", 64, {}),
    ("torchvision:googlenet", 64, {"aux_logits": False, "init_weights": True}),
    ("torchvision:inception_v3", 96, {"aux_logits": False, "init_weights": True}),
    ("torchvision:convnext_tiny", 64, {}),
    ("torchvision:vit_b_16", 64, {"image_size": 64}),
    ("torchvision:swin_t", 64, {}),
    ("torchvision:fcn_resnet50", 64, {"weights_backbone": None, "aux_loss": False}),
    ("torchvision:deeplabv3_mobilenet_v3_large", 64, {"weights_backbone": None, "aux_loss": False}),
    ("timm:resnet26d", 64, {}),
    ("timm:efficientnet_b0", 64, {}),
    ("timm:convnext_atto", 64, {}),
    ("timm:vit_tiny_patch16_224", 64, {"img_size": 64}),
]
# models Torch-Pruning is not run on, and why (measured here: it would take the machine down)
TP_SKIP = {"torchvision:swin_t": "not run: its shape inference took 23 GB of memory and did not finish"}
LEVELS = (0.7, 0.5)
BATCH = 8


def counted(module: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(parameters, MACs of one sample) by PyTorch's FlopCounterMode."""
    counter = FlopCounterMode(display=False)
    # with gradients on and the math kernel of scaled_dot_product_attention: in inference mode
    # nn.MultiheadAttention takes a fused fast path, and on CPU attention a flash kernel, that the counter
    # does not see (it then misses attention's products: 0.7 of 17.6 GMACs on ViT-B/16 at 224)
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        module(x)
    return sum(p.numel() for p in module.parameters()), counter.get_total_flops() // 2


def paired_latency(a: nn.Module, b: nn.Module, x: torch.Tensor, rounds: int = 3) -> tuple[float, float]:
    """The fastest of ``rounds`` alternated measurements of each (milliseconds at batch ``BATCH``)."""
    sides = {"a": lambda _: latency_ms(a, x, BATCH, repeats=3, seconds=5)}
    sides["b"] = lambda _: latency_ms(b, x, BATCH, repeats=3, seconds=5)
    ms = take_turns(sides, rounds)
    return min(ms["a"]), min(ms["b"])


def export_error(module: nn.Module, x: torch.Tensor) -> float:
    program = export_program(module, x)
    batch = x.expand(3, *x.shape[1:]).contiguous()
    with torch.no_grad():
        return relative_error(_first(program.module()(batch)), _first(module(batch)))


def _first(out):
    if isinstance(out, dict):
        out = out["out"]
    return out[0] if isinstance(out, (tuple, list)) else out


def _classifier(model: nn.Module) -> list[nn.Module]:
    """The layers Torch-Pruning must leave alone: the ones producing the network's outputs."""
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return last[-1:]


def torch_pruning(model: nn.Module, x: torch.Tensor, ratio: float) -> nn.Module:
    import torch_pruning as tp

    pruned = copy.deepcopy(model)
    pruner = tp.pruner.MagnitudePruner(
        pruned,
        x,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=_classifier(pruned),
    )
    pruner.step()
    return pruned.eval()


def tp_matching(model: nn.Module, x: torch.Tensor, params: int, steps: int = 7) -> tuple[nn.Module, float]:
    """Torch-Pruning at the ratio whose parameter count is closest to ``params`` (bisection)."""
    lo, hi, best = 0.0, 0.95, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        pruned = torch_pruning(model, x, mid)
        have = sum(p.numel() for p in pruned.parameters())
        if best is None or abs(have - params) < abs(best[2] - params):
            best = (pruned, mid, have)
        lo, hi = (mid, hi) if have > params else (lo, mid)
    return best[0], best[1]


@torch.no_grad()
def like_trained(model: nn.Module, side: int) -> nn.Module:
    """Random weights that behave like trained ones, so that comparing outputs means something: layers
    initialised to zero (ViT's head) get small random weights, and batch norms get running statistics of
    the activations they see (with its initial statistics a randomly initialised GoogLeNet's output does
    not depend on its input)."""
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, (nn.Linear, nn.Conv2d)) and weight is not None and not bool(weight.any()):
            weight.normal_(0.0, 0.02)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the calibration batches
    model.train()
    for _ in range(4):
        model(torch.randn(8, 3, side, side))
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()


def input_dependence(module: nn.Module, side: int) -> float:
    """How much the output changes between two inputs, relative to its size: 0 means a constant network."""
    with torch.no_grad():
        out = _first(module(torch.randn(2, 3, side, side)))
    return relative_error(out[0], out[1])


def bench_model(spec: str, side: int, kwargs: dict) -> dict:
    torch.manual_seed(0)
    model = like_trained(load_model(spec, **kwargs), side)
    x = torch.randn(1, 3, side, side)
    row: dict = {"model": spec.split(":", 1)[1] + (" (timm)" if spec.startswith("timm:") else "")}
    row["input_dependence"] = input_dependence(model, side)  # the compaction check means something only if > 0
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arch = trace_architecture(model, x)
    inspection = inspect_architecture(arch)
    row["never_die"] = inspection.never_die_fraction
    dense_params, dense_macs = counted(model, x)
    row["params_M"], row["macs_M"] = dense_params / 1e6, dense_macs / 1e6
    row["evopop_macs_vs_own_count"] = inspection.dense_macs / dense_macs if dense_macs else math.nan
    neurons = inspection.neurons
    for level in LEVELS:
        key = f"evo{int(level * 100)}"
        genome = offspring(model, arch, clusters=level, seed=0)
        small = compact(model, arch, genome, x)
        params, macs = counted(small.module, x)
        row[f"{key}_genome"] = sum(int(genome.neurons(layer).sum()) for layer in arch.layers) / neurons
        row[f"{key}_kept"] = sum(small.neurons.values()) / neurons
        row[f"{key}_params_x"] = dense_params / params
        row[f"{key}_macs_x"] = dense_macs / macs
        row[f"{key}_error"] = small.max_error
        if level == LEVELS[-1]:
            dense_ms, small_ms = paired_latency(model, small.module, x)
            row[f"{key}_speedup"] = dense_ms / small_ms
            row[f"{key}_export_error"] = export_error(small.module, x)
            evo_params = params
            # the same offspring's draw with every layer's channels a multiple of 8
            rounded = compact(model, arch, offspring(model, arch, clusters=level, seed=0, multiple=8), x)
            _, macs = counted(rounded.module, x)
            dense_ms, rounded_ms = paired_latency(model, rounded.module, x)
            row[f"{key}_m8_macs_x"], row[f"{key}_m8_speedup"] = dense_macs / macs, dense_ms / rounded_ms
    row["evopop_s"] = time.perf_counter() - started
    if spec in TP_SKIP:
        row["tp_error"] = TP_SKIP[spec]
        return row
    try:
        tp50 = torch_pruning(model, x, 0.5)
        params, macs = counted(tp50, x)
        row["tp50_params_x"], row["tp50_macs_x"] = dense_params / params, dense_macs / macs
        matched, ratio = tp_matching(model, x, evo_params)
        params, macs = counted(matched, x)
        row["tp_ratio"], row["tp_params_x"], row["tp_macs_x"] = ratio, dense_params / params, dense_macs / macs
        dense_ms, tp_ms = paired_latency(model, matched, x)
        row["tp_speedup"] = dense_ms / tp_ms
    except Exception as exc:  # Torch-Pruning cannot prune every model: say so in the table
        row["tp_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
    return row


def table(rows: list[dict]) -> str:
    head = (
        "| model | params M | MACs M | never die | genome 50% → kept | evopop params / MACs / speed (50%) "
        "| evopop MACs / speed, channels x8 | evopop MACs (70%) | TP same params: MACs / speed | TP 50%: MACs |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error']} |")
            continue
        tp = (
            f"{r['tp_macs_x']:.2f}x / {r['tp_speedup']:.2f}x"
            if "tp_macs_x" in r
            else f"fails ({r.get('tp_error', '')[:40]})"
        )
        tp50 = f"{r['tp50_macs_x']:.2f}x" if "tp50_macs_x" in r else "fails"
        lines.append(
            f"| {r['model']} | {r['params_M']:.1f} | {r['macs_M']:.0f} | {r['never_die']:.0%} "
            f"| {r['evo50_genome']:.0%} → {r['evo50_kept']:.0%} "
            f"| {r['evo50_params_x']:.2f}x / **{r['evo50_macs_x']:.2f}x** / {r['evo50_speedup']:.2f}x "
            f"| {r['evo50_m8_macs_x']:.2f}x / {r['evo50_m8_speedup']:.2f}x | {r['evo70_macs_x']:.2f}x | {tp} | {tp50} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = arguments(__name__, __doc__, quick="smoke run: resnet18 only")
    parser.add_argument("--models", help="comma-separated names (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    wanted = {"resnet18"} if args.quick else set(args.models.split(",")) if args.models else None
    rows = []
    for spec, side, kwargs in MODELS:
        if wanted and spec.split(":", 1)[1] not in wanted and spec not in wanted:
            continue
        try:
            row = bench_model(spec, side, kwargs)
        except Exception as exc:
            row = {"model": spec, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_json(args.json, rows, __name__, indent=1)  # after every model: a long run keeps what it measured
    print(table(rows))


if __name__ == "__main__":
    main()
