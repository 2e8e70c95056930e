"""Driver memory across generations: it must stay flat (records live on storage, not in lists).

Runs the tiny config for many generations in this process (the driver) on a local Ray, samples the
driver's resident memory after every generation, and reports the growth between the first
offspring generation and the last, per generation, against the run's total record volume.

    python -m benchmarks.bench_driver_memory [--generations 12] [--offspring 3] [--json [PATH]]
    python -m benchmarks.bench_driver_memory --quick       # smoke run: 5 generations of 2 offspring
"""

from __future__ import annotations

import gc
import os
import tempfile
import threading
import time
from pathlib import Path

import ray

from benchmarks.harness import arguments, print_summary, proc_status, timed, write_json
from evopop.api import evolve
from evopop.config import load_config
from evopop.records.run import RunRecords

ROOT = Path(__file__).resolve().parents[1]


def sample_per_generation(run_dir: str, total: int, stop: threading.Event, out: dict) -> None:
    """RSS of this process each time a generation's selection is written."""
    records = RunRecords(run_dir)
    while not stop.is_set():
        decided = _decided(records)
        for g in range(1, decided + 1):
            if g not in out:
                gc.collect()
                out[g] = proc_status("VmRSS")
        if decided >= total:
            return
        time.sleep(0.05)


def _decided(records: RunRecords) -> int:
    n = 0
    while records.storage.exists(f"selection/generation={n + 1}/part-0.parquet"):
        n += 1
    return n


def main() -> None:
    parser = arguments(__name__, __doc__, quick="smoke run: 5 generations of 2 offspring")
    parser.add_argument("--generations", type=int, default=12)
    parser.add_argument("--offspring", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.generations, args.offspring = 5, 2

    # address="local": a cluster of its own, never one already running on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    config = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            f"evolution.generations={args.generations}",
            f"evolution.offspring={args.offspring}",
            "evolution.environment.c=0.85",
        ],
    )
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = str(Path(tmp) / "run")
        RunRecords(run_dir).write_config(config.to_yaml())
        rss: dict[int, int] = {}
        stop = threading.Event()
        sampler = threading.Thread(target=sample_per_generation, args=(run_dir, args.generations, stop, rss))
        sampler.start()
        with open(os.devnull, "w") as quiet:
            _, elapsed = timed(lambda: evolve(config, run_dir, stream=quiet))
        stop.set()
        sampler.join()
        records_bytes = sum(p.stat().st_size for p in Path(run_dir).rglob("*.parquet"))

    # the last generation is excluded: right after it the driver reads the whole population once
    # to return it, which is the caller's table, not growth
    last_gen = args.generations - 1
    first, last = rss[2], rss[last_gen]
    per_generation = (last - first) / max(1, last_gen - 2)
    figures = {
        "generations": args.generations,
        "individuals": 1 + (args.generations - 1) * args.offspring,
        "seconds": round(elapsed, 1),
        "rss_gen2_mb": round(first / 2**20, 1),
        "rss_second_last_mb": round(last / 2**20, 1),
        "growth_per_generation_kb": round(per_generation / 1024, 1),
        "parquet_records_kb": round(records_bytes / 1024, 1),
    }
    for g in sorted(rss):
        print(f"generation {g:3d}: driver RSS {rss[g] / 2**20:8.1f} MiB")
    print_summary(figures)
    write_json(args.json, figures, __name__)
    ray.shutdown()


if __name__ == "__main__":
    main()
