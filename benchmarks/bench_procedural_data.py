#!/usr/bin/env python
"""Epoch time of ProceduralSaliency through a DataLoader with worker processes, against a bare loop.

A training epoch hands a freshly built ``ProceduralSaliency(n, size)`` to a ``DataLoader`` with
``num_workers`` worker processes (batch 32, shuffled; new workers every epoch, as in
`evopop.training.loop`). The bare baseline, measured in the same run, does the least an epoch must
do: the same shuffled batches taken from the pre-rendered uint8/bool tensors in this process,
converted exactly as ``__getitem__`` does (float, /255, ImageNet normalisation). The ratio is the
loader's cost beyond that: worker start-up, inter-process transfer, and any re-rendering in the
workers. For reference, the floor of that cost: the same loader over a plain data set of the same
pre-rendered tensors (``Prerendered``), which cannot re-render anything. Also timed: the first
render of a data set in this process (build + first item; best of ``--repeats`` data sets of
other seeds, which this process has not rendered before).

    python benchmarks/bench_procedural_data.py            # n=1000, size 64, 2 workers, 10 epochs
    python benchmarks/bench_procedural_data.py --context spawn
    python benchmarks/bench_procedural_data.py --quick    # CI smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

try:
    import evopop  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evopop.data.procedural import ProceduralSaliency
from evopop.data.transforms import normalize_image


class Prerendered(Dataset):
    """The items of a ProceduralSaliency from tensors given up front, converted as its ``__getitem__`` does."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor):
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return normalize_image(self.images[index].float() / 255), self.masks[index].float()


def first_render_s(dataset_cls: type, n: int, size: int, seeds: range) -> float:
    """Best build + first item of data sets this process has not rendered yet (a lazy one renders on access)."""
    times = []
    for seed in seeds:
        start = time.perf_counter()
        dataset_cls(n, size, seed)[0]
        times.append(time.perf_counter() - start)
    return min(times)


def bare_epoch_s(images: torch.Tensor, masks: torch.Tensor, batch: int, seed: int) -> float:
    """One epoch of shuffled batches from pre-rendered tensors, converted as ``__getitem__`` does."""
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    for idx in order.split(batch):
        normalize_image(images[idx].float() / 255), masks[idx].float()
    return time.perf_counter() - start


def loader_epoch_s(dataset, batch: int, workers: int, context: str | None, seed: int) -> float:
    """One epoch through a new DataLoader iterator (so new worker processes), start-up included."""
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        multiprocessing_context=context if workers else None,
        generator=torch.Generator().manual_seed(seed),
    )
    start = time.perf_counter()
    for _batch in loader:
        pass
    return time.perf_counter() - start


def bench(
    dataset_cls: type, n: int, size: int, batch: int, workers: int, epochs: int, context: str | None, repeats: int = 3
) -> dict:
    """Figures of one data set class; the loader gets a fresh, untouched instance, as a task's would be."""
    render_s = first_render_s(dataset_cls, n, size, seeds=range(1, 1 + repeats))
    images, masks = dataset_cls(n, size, 0).render(range(n))  # the same pixels, for the bare loop
    loader_set = dataset_cls(n, size, 0)
    bare_epoch_s(images, masks, batch, seed=-1)  # warm-up: first calls of the conversion kernels
    bare, loader, floor = [], [], []
    for epoch in range(epochs):  # take turns, so that load bursts hit all three
        bare.append(bare_epoch_s(images, masks, batch, seed=epoch))
        loader.append(loader_epoch_s(loader_set, batch, workers, context, seed=epoch))
        floor.append(loader_epoch_s(Prerendered(images, masks), batch, workers, context, seed=epoch))
    bare_s, loader_s, floor_s = (statistics.median(t) for t in (bare, loader, floor))
    return {
        "first_render_s": render_s,
        "bare_epoch_s": bare_s,
        "loader_epoch_s": loader_s,
        "loader_first_epoch_s": loader[0],
        "ratio": loader_s / bare_s,
        "floor_epoch_s": floor_s,
        "floor_ratio": floor_s / bare_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="items in the data set")
    parser.add_argument("--size", type=int, default=64, help="image side")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per variant (median reported)")
    parser.add_argument("--repeats", type=int, default=3, help="first renders timed (best reported)")
    parser.add_argument("--context", choices=("fork", "spawn", "forkserver"), help="worker start (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="200 items, 2 epochs, 1 render: a smoke run")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    n, epochs, repeats = (200, 2, 1) if args.quick else (args.n, args.epochs, args.repeats)
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    print(
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, ProceduralSaliency(n={n}, "
        f"size={args.size}), batch {args.batch}, {args.workers} workers ({args.context or 'default'} start), "
        f"{epochs} epochs"
    )

    r = bench(ProceduralSaliency, n, args.size, args.batch, args.workers, epochs, args.context, repeats)
    print(
        f"first render {r['first_render_s']:.3f} s; epoch: bare {r['bare_epoch_s']:.4f} s, loader "
        f"{r['loader_epoch_s']:.4f} s (first {r['loader_first_epoch_s']:.4f} s), "
        f"ratio {r['ratio']:.1f}x"
    )
    print(
        f"floor (the same loader over pre-rendered tensors): {r['floor_epoch_s']:.4f} s an epoch, "
        f"ratio {r['floor_ratio']:.1f}x"
    )

    summary = {
        "n": n,
        "size": args.size,
        "batch": args.batch,
        "workers": args.workers,
        "epochs": epochs,
        "context": args.context or torch.multiprocessing.get_start_method(),
    }
    summary.update({key: round(value, 4) for key, value in r.items()})
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    # Other jobs on the machine slow worker start-up most: keep the load beside the figures.
    summary["loadavg_1min_start"] = round(load_start, 2)
    summary["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    print("\nsummary")
    for key, value in summary.items():
        print(f"{key}: {value}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
