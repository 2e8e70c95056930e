"""What every benchmark shares: its command line, the timing protocol, the machine's load, the summary and the JSON.

The protocol: each figure is taken against a bare baseline measured in the same run, the sides taking turns
(``take_turns``) so that drifts of a shared machine's speed hit them alike; the ratio is the result, absolute
times are noisy. Run a benchmark from the repository root as a module: ``python -m benchmarks.bench_NAME``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


# == command line ===================================================================================
def arguments(module: str, description: str, quick: str | None) -> argparse.ArgumentParser:
    """A parser with the options every benchmark has: ``--json [PATH]`` (alone: benchmarks/results/NAME.json)
    and, with ``quick`` (its help), ``--quick``. ``module`` is the script's ``__name__`` or its spec's name."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=quick)
    default = RESULTS / f"{short_name(module)}.json"
    parser.add_argument(
        "--json",
        nargs="?",
        const=str(default),
        metavar="PATH",
        help=f"write the figures as JSON (alone: {default.relative_to(RESULTS.parents[1])})",
    )
    return parser


def short_name(module: str) -> str:
    """bench_NAME of ``benchmarks.bench_NAME`` (or of ``__main__`` run as that module)."""
    if module == "__main__":
        module = getattr(sys.modules["__main__"].__spec__, "name", "") or Path(sys.argv[0]).stem
    return module.rsplit(".", 1)[-1]


def command(module: str, argv: list[str] | None = None) -> str:
    """The command that reproduces this run, its ``--json`` path left to the default (the results folder)."""
    argv = sys.argv[1:] if argv is None else argv
    kept, skip = [], False
    for arg in argv:
        if skip and not arg.startswith("-"):
            skip = False  # the path of --json PATH
        elif arg == "--json":
            skip = True
        elif not arg.startswith("--json="):
            skip = False
            kept.append(arg)
    return shlex.join(["python", "-m", f"benchmarks.{short_name(module)}", *kept, "--json"])


# == timing =========================================================================================
def take_turns(
    sides: dict[str, Callable[[int], Any]],
    rounds: int,
    warmup: int = 0,
    after_round: Callable[[int, dict[str, list]], None] | None = None,
) -> dict[str, list]:
    """Call every side once per round, with the round's number (from 0; ``warmup`` rounds before it, not kept,
    get negative numbers: first calls build caches, allocators, kernels), the order rotated each round (with two
    sides it alternates) so that drifts of the machine's speed favour none. Returns each side's results, in
    order; ``after_round(number, results so far)`` after each kept round (progress lines)."""
    names = list(sides)
    results: dict[str, list] = {name: [] for name in names}
    for i in range(-warmup, rounds):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            result = sides[name](i)
            if i >= 0:
                results[name].append(result)
        if i >= 0 and after_round is not None:
            after_round(i, results)
    return results


def timed(fn: Callable[..., Any], *args) -> tuple[Any, float]:
    """(what ``fn(*args)`` returned, its wall time in seconds)."""
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def median(values) -> float:
    """The median, NaN where there are no values."""
    values = list(values)
    return statistics.median(values) if values else float("nan")


# == the machine ====================================================================================
def proc_status(key: str) -> int:
    """A /proc/self/status figure in bytes (VmRSS: resident now, VmHWM: peak resident). Linux only."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


class RunClock:
    """The benchmark's wall time and the 1-minute load average at its start and end: other jobs on the machine
    slow multi-threaded kernels and worker start-up most, so the load is kept beside the figures."""

    def __init__(self):
        self.started, self.load_start = time.perf_counter(), os.getloadavg()[0]

    def figures(self) -> dict:
        return {
            "wall_s": round(time.perf_counter() - self.started, 1),
            "loadavg_1min_start": round(self.load_start, 2),
            "loadavg_1min_end": round(os.getloadavg()[0], 2),
        }


class LoadSampler(threading.Thread):
    """The machine's 1-minute load average every few seconds, for benchmarks that run for minutes: other
    processes skew every figure, speed-ups most (a benchmark that trains adds about 1 to 2 itself)."""

    def __init__(self, every: float = 5.0):
        super().__init__(daemon=True)
        self.every, self.samples, self._halt = every, [], threading.Event()

    def run(self):
        while not self._halt.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> dict:
        self._halt.set()
        return {
            "mean": statistics.fmean(self.samples) if self.samples else os.getloadavg()[0],
            "max": max(self.samples, default=os.getloadavg()[0]),
        }


def ray_worker_niceness() -> int:
    """The niceness Ray starts its workers at (15, RAY_worker_niceness), asked of a worker."""
    import ray

    def niceness() -> int:  # local: Ray ships it by value, so that workers need not import this module
        return os.nice(0)

    return ray.get(ray.remote(num_cpus=0)(niceness).remote())


def match_worker_niceness() -> int:
    """Run this process at the niceness of Ray's workers; its niceness then.

    Otherwise the bare and local sides, here at 0, win every contest for a core against the trainers at 15
    whenever anything else runs on the machine, and the ratios measure the scheduler. Raising one's niceness
    needs no privilege; it cannot be undone, so the whole run stays there.
    """
    target = ray_worker_niceness()
    if target > os.nice(0):
        os.nice(target - os.nice(0))
    return os.nice(0)


# == output =========================================================================================
def print_summary(summary: dict, float_format: str = "") -> None:
    """The ``summary`` block: one ``key: value`` line per figure (the JSON's keys, the tests parse them)."""
    print("\nsummary")
    for key, value in summary.items():
        print(f"{key}: {value:{float_format}}" if isinstance(value, float) else f"{key}: {value}")


def print_runtime(seconds: float, machine: dict, cores: int) -> None:
    """The closing line of a benchmark that runs Ray: its run time, the machine's load, the niceness of both sides."""
    busy = machine["load_average_1min"]
    print(
        f"\nruntime {seconds:.0f}s; machine load (1-min average) {busy['mean']:.1f} mean, {busy['max']:.1f} max, "
        f"on {cores} cores; niceness here {machine['niceness']}, Ray workers {machine['ray_worker_niceness']}"
    )


def write_json(path: str | Path | None, result: dict | list, module: str, default=str, indent: int = 2) -> None:
    """Write ``result`` to ``path`` (nothing without one). A dict gets a ``run`` entry: the command that
    reproduces it and when it was measured (UTC), which benchmarks/table.py shows; a list is written as it is."""
    if not path:
        return
    if isinstance(result, dict):
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        result = {**result, "run": {"command": command(module), "measured": stamp}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=indent, default=default) + "\n")
