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

    python -m benchmarks.bench_procedural_data            # n=1000, size 64, 2 workers, 10 epochs
    python -m benchmarks.bench_procedural_data --context spawn
    python -m benchmarks.bench_procedural_data --quick    # CI smoke run
    python -m benchmarks.bench_procedural_data --json     # also write the summary to benchmarks/results/
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks.harness import RunClock, arguments, median, print_summary, take_turns, timed, write_json
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
    return min(timed(lambda seed=seed: dataset_cls(n, size, seed)[0])[1] for seed in seeds)


def bare_epoch_s(images: torch.Tensor, masks: torch.Tensor, batch: int, seed: int) -> float:
    """One epoch of shuffled batches from pre-rendered tensors, converted as ``__getitem__`` does."""
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))

    def epoch() -> None:  # each batch dropped at once, as a training step would
        for idx in order.split(batch):
            normalize_image(images[idx].float() / 255), masks[idx].float()

    return timed(epoch)[1]


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

    def epoch() -> None:
        for _batch in loader:
            pass

    return timed(epoch)[1]


def bench(
    dataset_cls: type, n: int, size: int, batch: int, workers: int, epochs: int, context: str | None, repeats: int = 3
) -> dict:
    """Figures of one data set class; the loader gets a fresh, untouched instance, as a task's would be."""
    render_s = first_render_s(dataset_cls, n, size, seeds=range(1, 1 + repeats))
    images, masks = dataset_cls(n, size, 0).render(range(n))  # the same pixels, for the bare loop
    loader_set = dataset_cls(n, size, 0)
    bare_epoch_s(images, masks, batch, seed=-1)  # warm-up: first calls of the conversion kernels
    sides = {  # one epoch each, the same shuffle in an epoch: they take turns, so that load bursts hit all three
        "bare": lambda epoch: bare_epoch_s(images, masks, batch, seed=epoch),
        "loader": lambda epoch: loader_epoch_s(loader_set, batch, workers, context, seed=epoch),
        "floor": lambda epoch: loader_epoch_s(Prerendered(images, masks), batch, workers, context, seed=epoch),
    }
    epoch_s = take_turns(sides, epochs)
    bare_s, loader_s, floor_s = (median(epoch_s[side]) for side in ("bare", "loader", "floor"))
    return {
        "first_render_s": render_s,
        "bare_epoch_s": bare_s,
        "loader_epoch_s": loader_s,
        "loader_first_epoch_s": epoch_s["loader"][0],
        "ratio": loader_s / bare_s,
        "floor_epoch_s": floor_s,
        "floor_ratio": floor_s / bare_s,
    }


def main() -> None:
    parser = arguments(__name__, __doc__.splitlines()[0], quick="200 items, 2 epochs, 1 render: a smoke run")
    parser.add_argument("--n", type=int, default=1000, help="items in the data set")
    parser.add_argument("--size", type=int, default=64, help="image side")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per variant (median reported)")
    parser.add_argument("--repeats", type=int, default=3, help="first renders timed (best reported)")
    parser.add_argument("--context", choices=("fork", "spawn", "forkserver"), help="worker start (default: torch's)")
    args = parser.parse_args()
    n, epochs, repeats = (200, 2, 1) if args.quick else (args.n, args.epochs, args.repeats)
    clock = RunClock()
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
    summary.update(clock.figures())
    print_summary(summary)
    write_json(args.json, summary, __name__)


if __name__ == "__main__":
    main()
