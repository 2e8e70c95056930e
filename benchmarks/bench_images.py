#!/usr/bin/env python
"""Training images/s of the built-in ``images`` task on a folder of image files, against a bare loop.

A folder of JPEGs is written (``--classes`` x ``--per-class`` images, ``--size`` pixels; or ``--root`` a
folder of your own). Both sides train the same network (``--model``, random weights) for one epoch
on the same files, with the same transforms (random-resized crop, flip, normalisation at
``--image-size``), batch and DataLoader worker count, one after the other in turns:

- *bare*: torchvision's ``ImageFolder`` and a plain PyTorch loop (SGD, cross-entropy), nothing of evopop;
- *evopop*: the task's own data sets through `evopop.training.loop.train_and_evaluate` (masked training
  with the full genome's masks, evaluation off), its images/s as a run records them.

The ratio evopop / bare is what the task's data path and the training loop cost (goal >= 0.9).
Also reported: images/s of the data alone (the same loader, no network), the ceiling of both.

    python -m benchmarks.bench_images                 # 10 classes x 80 JPEGs, resnet18 at 64 px, 2 workers
    python -m benchmarks.bench_images --quick         # smoke run
    python -m benchmarks.bench_images --json          # also write the figures to benchmarks/results/
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from benchmarks.harness import RunClock, arguments, median, print_summary, take_turns, write_json
from evopop.synthesis import Genome, parameter_masks, trace_architecture
from evopop.tasks.images import ImagesTask
from evopop.training.loop import Recipe, train_and_evaluate


def write_folder(root: Path, classes: int, per_class: int, size: int) -> None:
    """``per_class`` JPEGs of ``size`` pixels per class, each class its own colour under noise."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True)
        colour = rng.integers(0, 256, 3)
        for i in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 50, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)


def loader(dataset, batch: int, workers: int, seed: int, pin: bool = False) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def bare_epoch(task: ImagesTask, root: str, batch: int, workers: int, seed: int, device: str = "cpu") -> float:
    """Images/s of one epoch of a plain loop over torchvision's ImageFolder with the task's transforms (on a
    GPU: pinned memory and non-blocking copies, as a careful bare loop does)."""
    torch.manual_seed(seed)
    model = task.build_model().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    data = loader(ImageFolder(root, transform=task.transforms.train()), batch, workers, seed, device != "cpu")
    model.train()
    start, seen = time.perf_counter(), 0
    for inputs, targets in data:
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        seen += inputs.shape[0]
    if device != "cpu":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def evopop_epoch(task: ImagesTask, masks: dict, batch: int, workers: int, seed: int, device: str = "cpu") -> float:
    """Images/s of one epoch of evopop's training loop on the task's own data sets, as a run records it."""
    torch.manual_seed(seed)
    model = task.build_model()
    recipe = Recipe(epochs=1, batch_size=batch, lr=0.01, schedule="constant", num_workers=workers)
    result = train_and_evaluate(model, _TrainOnly(task), recipe, seed, masks, torch.device(device))
    return result.samples_per_second


class _TrainOnly:
    """The task without its evaluation sets: the benchmark times training."""

    def __init__(self, task: ImagesTask):
        self._task = task

    def __getattr__(self, name):
        return getattr(self._task, name)

    def eval_sets(self) -> dict:
        return {}


def data_only_epoch(task: ImagesTask, batch: int, workers: int, seed: int) -> float:
    """Images/s of the task's training data through the same loader, no network: the data path's ceiling."""
    start, seen = time.perf_counter(), 0
    for inputs, _ in loader(task.train_set(), batch, workers, seed):
        seen += inputs.shape[0]
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = arguments(__name__, __doc__.splitlines()[0], quick="3 classes x 16 images, 2 rounds: a smoke run")
    parser.add_argument("--root", help="a folder of class subfolders of your own (default: one written here)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=80)
    parser.add_argument("--size", type=int, default=96, help="side of the written images")
    parser.add_argument("--image-size", type=int, default=64, help="the task's crop size")
    parser.add_argument("--model", default="torchvision:resnet18")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--rounds", type=int, default=5, help="epochs per side (median reported)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: the GPU (then the data path is what is tested)")
    args = parser.parse_args()
    classes, per_class, rounds = (3, 16, 2) if args.quick else (args.classes, args.per_class, args.rounds)
    clock = RunClock()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or str(Path(scratch) / "images")
        if args.root is None:
            write_folder(Path(root), classes, per_class, args.size)
        # the whole folder trains: a val split is not timed, so hold out as little as the task allows
        task = ImagesTask(root, model=args.model, image_size=args.image_size, val_fraction=0.01)
        task.validate()
        arch = trace_architecture(task.build_model(), task.example_input())
        masks = parameter_masks(arch, Genome.full(arch))  # every synapse alive: the masking's cost alone
        sides = {
            "bare": lambda r: bare_epoch(task, root, args.batch, args.workers, r, args.device),
            "evopop": lambda r: evopop_epoch(task, masks, args.batch, args.workers, r, args.device),
            "data": lambda r: data_only_epoch(task, args.batch, args.workers, r),
        }
        rates = take_turns(sides, rounds, warmup=1)
    bare, evopop, data = (median(rates[side]) for side in ("bare", "evopop", "data"))
    summary = {
        "model": args.model,
        "device": args.device,
        "images": len(task.train_set()),
        "image_size": args.image_size,
        "batch": args.batch,
        "workers": args.workers,
        "rounds": rounds,
        "bare_images_per_s": round(bare, 1),
        "evopop_images_per_s": round(evopop, 1),
        "ratio_evopop_vs_bare": round(evopop / bare, 3),
        "data_only_images_per_s": round(data, 1),
        "goal_met": evopop / bare >= 0.9,
        **clock.figures(),
    }
    print()
    print_summary(summary)
    write_json(args.json, {"summary": summary, "rates": rates}, __name__)


if __name__ == "__main__":
    main()
