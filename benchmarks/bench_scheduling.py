#!/usr/bin/env python
"""How well a generation keeps its trainers busy: T1 / (n Tn) at 1, 2 and 4 trainers (issue 24, part 3).

A generation ends when its last offspring does; the trainers that finish first wait at that barrier. How long
they wait depends on the order the offspring are handed out, and on how different their lengths are. This
benchmark runs one generation of offspring of very different sizes through the real engine (the controller's
`develop_and_record`, the Ray executor, its trainers, the records) with a workload whose cost is known:

- the task (``Sleeper`` below, an 16-64-1 MLP) simulates training whose time follows the network's size: each
  training step sleeps ``UNIT_S x (share of the synapses alive) / (the trainer's speed)``; sleeping, not
  computing, so that 4 trainers on this 2-core machine run as 4 would on 4 GPUs. Synthesis, evaluation and the
  records are real, and cost what they cost;
- the parents: four offspring of the trained ancestor, two grown under a harsh environment (C = 0.04 and 0.1,
  ``mode: budget``) and two under a mild one (0.6, 0.9); their offspring are synthesized under C = 0.5 (harsh
  lineages) and 0.9 (mild ones), as an adapting environment would, and their training times differ ~30x. A long
  generation has 8 offspring a parent (32 jobs: 8 a trainer at n = 4), a short one 3 (12 jobs: 3 a trainer),
  where the last jobs decide more of the generation's length;
- the order the parents are listed in puts the largest last (the worst case of handing out in listed order);
- trainers: identical (speed 1), or heterogeneous (speeds 1, 0.5 at 2 trainers; 1, 1, 0.5, 0.5 at 4: a slower
  GPU type, or trainers sharing one), each trainer process claiming the next speed as it starts.

Measured: Tn, the wall seconds of the generation's `develop_and_record` (trainers started and warm before it:
the barrier and the hand-out are what is measured, not Ray's start-up), at n = 1, 2, 4 trainers, each handing
out in listed order and longest expected first (`evopop.engine.policy.order.longest_first`, what the engine
does). Efficiency: T1 / (capacity x Tn), where T1 is one trainer of speed 1 and the capacity is the sum of the n
trainers' speeds (n when they are identical: T1 / (n Tn)). Also the lower bound of Tn (the simulated seconds
over the capacity, or the longest job alone if that is longer) and Tn against it.

    python -m benchmarks.bench_scheduling           # full run (~5 min on 2 cores)
    python -m benchmarks.bench_scheduling --quick   # smoke run: 2 and 1 offspring a parent, 1 and 4 trainers (~1.5 min)
    python -m benchmarks.bench_scheduling --json    # also write benchmarks/results/bench_scheduling.json
"""

from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
import time
from pathlib import Path

from torch import nn

from benchmarks.bench_population import Tiny
from benchmarks.harness import LoadSampler, arguments, print_summary, write_json

ROOT = Path(__file__).resolve().parents[1]
UNIT_S = 0.6  # the seconds of one training step of the whole network on a trainer of speed 1
STEPS = 2  # training steps per epoch (32 samples, batch 16)
PARENT_C = (0.04, 0.1, 0.6, 0.9)  # the parents' environments, harsh to mild: listed smallest first
OFFSPRING_C = {0.04: 0.5, 0.1: 0.5, 0.6: 0.9, 0.9: 0.9}  # each lineage's C for its offspring
SPEEDS = {"identical": (1.0, 1.0, 1.0, 1.0), "heterogeneous": (1.0, 1.0, 0.5, 0.5)}
SPEEDS_AT_2 = {"identical": (1.0, 1.0), "heterogeneous": (1.0, 0.5)}


# == the simulated task ==============================================================================
class Sleeper(Tiny):
    """bench_population's tiny MLP task (16-64-1 here), whose training steps sleep for a time that follows its
    live synapses and its trainer's speed."""

    def __init__(self, slots: str, speeds: list[float], unit_s: float = UNIT_S, features: int = 16, hidden: int = 64):
        super().__init__(features, hidden, n=32)  # 2 steps of 16 an epoch
        self.unit_s, self.slots, self.speeds = unit_s, Path(slots), list(speeds)
        self._model: nn.Module | None = None
        self._speed: float | None = None

    def build_model(self):
        self._model = super().build_model()
        return self._model

    def speed(self) -> float:
        """This process's speed: the first slot it claims (a file created exclusively), in start order."""
        if self._speed is None:
            self.slots.mkdir(parents=True, exist_ok=True)
            for i, speed in enumerate(self.speeds):
                try:
                    os.close(os.open(self.slots / f"slot-{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    continue
                self._speed = speed
                break
            else:
                raise RuntimeError(f"more trainers than speeds ({self.speeds})")
        return self._speed

    def live_share(self) -> float:
        weights = [m.weight for m in self._model.modules() if isinstance(m, nn.Linear)]
        return sum(int((w != 0).sum()) for w in weights) / sum(w.numel() for w in weights)

    def loss(self, output, target):
        if self._model is not None and self._model.training:  # one training step: its simulated cost
            time.sleep(self.unit_s * self.live_share() / self.speed())
        return super().loss(output, target)


def sleeper(**kwargs) -> Sleeper:
    """The task factory the benchmark's config names: ``benchmarks.bench_scheduling:sleeper``."""
    return Sleeper(**kwargs)


def scheduling_config(trainers: int, speeds: tuple[float, ...], slots: str, storage: str, offspring: int, unit_s):
    from evopop.config import load_config

    return load_config(
        {
            "run": {"name": "scheduling", "seed": 3},
            "task": {
                "name": "benchmarks.bench_scheduling:sleeper",
                "paths": [str(ROOT)],
                "args": {"slots": slots, "speeds": list(speeds), "unit_s": unit_s},
            },
            "train": {"epochs": 1, "batch_size": 16, "lr": 0.05},
            "evolution": {"generations": 3, "offspring": offspring, "environment": {"c": 0.5, "mode": "budget"}},
            "resources": {"trainers": trainers, "cpus_per_trainer": 2 / max(trainers, 2), "torch_threads": 1},
            "diversity": {"enabled": False},
            "compaction": {"enabled": False},
            "storage": {"path": storage},
        }
    )


def with_offspring(config, offspring: int):
    """``config`` with ``evolution.offspring`` set to ``offspring``."""
    return config.model_copy(update={"evolution": config.evolution.model_copy(update={"offspring": offspring})})


# == one measurement =================================================================================
def one_generation(trainers: int, speeds: tuple[float, ...], longest_first: bool, offspring: int, unit_s) -> dict:
    """Tn of generation 3 (``offspring`` a parent, of 4 parents of very different sizes) on ``trainers`` trainers."""
    from evopop import api
    from evopop.engine import controller as controller_module
    from evopop.engine.policy.order import longest_first as ordered
    from evopop.engine.policy.specs import offspring_specs, root_spec

    with tempfile.TemporaryDirectory(prefix="evopop-scheduling-") as tmp:
        config = scheduling_config(trainers, speeds, f"{tmp}/slots", f"{tmp}/runs", offspring, unit_s)
        run = api.evolution(config, f"{tmp}/runs/scheduling", hooks=[])
        run.executor.start(None)
        try:
            run.develop_and_record(1, [root_spec(config)], [])
            root = run.records.individuals(1)
            specs = offspring_specs(with_offspring(config, len(PARENT_C)), 2, root)
            specs = [
                dataclasses.replace(s, environment=dataclasses.replace(s.environment, c=c))
                for s, c in zip(specs, PARENT_C, strict=True)
            ]
            run.develop_and_record(2, specs, root)
            by_id = {r.individual_id: r for r in run.records.individuals(2)}
            parents = [by_id[s.individual_id] for s in specs]  # listed smallest first: the largest last
            factors = {p.individual_id: OFFSPRING_C[c] for p, c in zip(parents, PARENT_C, strict=True)}
            jobs = offspring_specs(config, 3, parents, factors)
            controller_module.longest_first = ordered if longest_first else (lambda specs, parents: list(specs))
            start = time.perf_counter()
            run.develop_and_record(3, jobs, parents)
            seconds = time.perf_counter() - start
        finally:
            controller_module.longest_first = ordered
            run.executor.shutdown()
        records, dense = run.records.individuals(3), run.plan.dense_synapses
    failed = [r.individual_id for r in records if not r.ok]
    if failed:
        raise RuntimeError(f"offspring failed: {failed}")
    shares = [r.synapses / dense for r in records]
    simulated = [STEPS * unit_s * share for share in shares]  # seconds on a trainer of speed 1
    return {
        "seconds": seconds,
        "jobs": len(records),
        "simulated_s": simulated,
        "simulated_seconds": sum(simulated),
        "longest_s": max(simulated),
        "shortest_s": min(simulated),
        "train_s": [r.train_seconds for r in records],
    }


class _SearchTooLarge(Exception):
    pass


def best_makespan(costs: list[float], speeds: tuple[float, ...], max_nodes: int = 300_000) -> tuple[float, bool]:
    """(the shortest length any schedule of ``costs`` (seconds at speed 1) on trainers of ``speeds`` can have,
    whether that is proven): every assignment searched, branch and bound (jobs longest first; trainers in the same
    state tried once; a branch dropped once its finish or the remaining work spread over every trainer cannot
    beat the best). Past ``max_nodes`` the best schedule found so far, not proven the shortest."""
    jobs = sorted(costs, reverse=True)
    capacity = sum(speeds)
    suffix = [sum(jobs[i:]) for i in range(len(jobs) + 1)]
    finish = [0.0] * len(speeds)  # each trainer's finish time
    greedy = [0.0] * len(speeds)  # the first bound: each job to the trainer that would finish it first
    for job in jobs:
        m = min(range(len(speeds)), key=lambda k: greedy[k] + job / speeds[k])
        greedy[m] += job / speeds[m]
    best, nodes, visited = max(greedy), 0, set()

    def search(i: int, longest: float) -> None:
        nonlocal best, nodes
        nodes += 1
        if nodes > max_nodes:
            raise _SearchTooLarge
        if i == len(jobs):
            best = min(best, longest)
            return
        done = sum(f * s for f, s in zip(finish, speeds, strict=True))  # work done, in speed-1 seconds
        if max(longest, (done + suffix[i]) / capacity) >= best - 1e-12:
            return
        state = (i, tuple(sorted(zip(speeds, (round(f, 9) for f in finish)))))
        if state in visited:  # the same trainers' finish times, reached by another assignment
            return
        visited.add(state)
        tried = set()
        for m, speed in sorted(enumerate(speeds), key=lambda ms: finish[ms[0]] + jobs[i] / ms[1]):
            state = (round(finish[m], 9), speed)
            if state in tried:
                continue
            tried.add(state)
            before = finish[m]
            finish[m] = before + jobs[i] / speed
            search(i + 1, max(longest, finish[m]))
            finish[m] = before

    try:
        search(0, 0.0)
    except _SearchTooLarge:
        return best, False
    return best, True


def efficiency_table(runs: dict, speeds_of) -> dict:
    """T1 / (capacity x Tn) and Tn against its lower bound, per speeds, trainers and order."""
    t1 = runs["identical"][1]["longest_first"]["seconds"]
    out = {}
    for kind, by_n in runs.items():
        for n, by_order in by_n.items():
            capacity = sum(speeds_of(kind, n))
            for order, m in by_order.items():
                # costs to the millisecond: siblings tie, and the search stays small
                best, proven = best_makespan([round(c, 3) for c in m["simulated_s"]], speeds_of(kind, n))
                out[f"{kind}/{n}/{order}"] = {
                    "trainers": n,
                    "speeds": list(speeds_of(kind, n)),
                    "order": order,
                    "seconds": m["seconds"],
                    "efficiency": t1 / (capacity * m["seconds"]),
                    # the best any order could do: the shortest schedule of the simulated work, without overheads
                    "best_s": best,
                    "best_proven": proven,
                    "best_efficiency": m["simulated_seconds"] / (capacity * best),
                    "over_best": m["seconds"] / best,
                }
    return out


def speeds_of(kind: str, n: int) -> tuple[float, ...]:
    return (1.0,) if n == 1 else (SPEEDS_AT_2[kind] if n == 2 else SPEEDS[kind])


def measure(offspring: int, unit_s: float, trainer_counts: tuple[int, ...]) -> dict:
    """kind -> n -> order -> `one_generation`'s figures, for one workload (``offspring`` a parent)."""
    runs: dict = {"identical": {}, "heterogeneous": {}}
    for kind in ("identical", "heterogeneous"):
        for n in trainer_counts:
            if n == 1 and kind == "heterogeneous":
                continue  # one trainer of speed 1 either way
            orders = ("longest_first",) if n == 1 else ("as_listed", "longest_first")
            runs[kind][n] = {}
            for order in orders:
                m = one_generation(n, speeds_of(kind, n), order == "longest_first", offspring, unit_s)
                runs[kind][n][order] = m
                jobs, simulated = m["jobs"], m["simulated_seconds"]
                print(
                    f"{jobs} jobs  {kind:13s} n={n} {order:13s} T={m['seconds']:6.2f} s (simulated {simulated:.1f} s)"
                )
    return runs


def print_table(title: str, table: dict) -> None:
    print(f"\n{title}")
    heads = f"{'Tn s':>7s} {'efficiency':>10s} {'best possible':>13s} {'Tn/best':>8s}"
    print(f"{'trainers (speeds)':24s} {'order':14s} {heads}")
    for m in table.values():
        speeds = ",".join(f"{s:g}" for s in m["speeds"])
        print(
            f"{m['trainers']} ({speeds}){'':{max(0, 19 - len(speeds))}s} {m['order']:14s} {m['seconds']:7.2f} "
            f"{m['efficiency']:10.3f} {m['best_efficiency']:13.3f} {m['over_best']:8.2f}"
        )


def main(argv=None) -> None:
    parser = arguments(__name__, __doc__, "2 and 1 offspring a parent, 1 and 4 trainers, short steps (~1.5 min)")
    args = parser.parse_args(argv)
    # a long generation (8 offspring a parent, 32 jobs: 8 a trainer at n = 4) and a short one (3 a parent, 12 jobs:
    # 3 a trainer), where the last jobs decide more of the generation's length
    workloads = (
        {"long": (2, (1, 4)), "short": (1, (1, 4))} if args.quick else {"long": (8, (1, 2, 4)), "short": (3, (1, 4))}
    )
    unit_s = 0.1 if args.quick else UNIT_S
    import ray

    # a cluster of its own, never one already running (RAY_ADDRESS, a test session): its CPUs and its load
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    load = LoadSampler()
    load.start()
    started = time.perf_counter()
    runs, tables = {}, {}
    try:
        for name, (offspring, counts) in workloads.items():
            runs[name] = measure(offspring, unit_s, counts)
            tables[name] = efficiency_table(runs[name], speeds_of)
    finally:
        machine_load = load.stop()
        ray.shutdown()
    for name, (offspring, _) in workloads.items():
        jobs = offspring * len(PARENT_C)
        print_table(f"{name} generation: {jobs} offspring ({offspring} a parent)", tables[name])
    summary = {}
    for name in workloads:
        for kind in ("identical", "heterogeneous"):
            for order in ("longest_first", "as_listed"):
                suffix = "" if order == "longest_first" else "_as_listed"
                summary[f"efficiency_{name}_{kind}_4{suffix}"] = tables[name][f"{kind}/4/{order}"]["efficiency"]
    print_summary(summary, ".3f")
    print(
        f"\nruntime {time.perf_counter() - started:.0f}s; machine load (1-min average) {machine_load['mean']:.1f} mean"
    )
    if args.json:
        write_json(
            args.json,
            {
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average_1min": machine_load},
                "quick": bool(args.quick),
                "unit_s": unit_s,
                "parent_c": list(PARENT_C),
                "offspring_c": {str(k): v for k, v in OFFSPRING_C.items()},
                "workloads": {
                    name: {"offspring_per_parent": o, "trainers": list(c)} for name, (o, c) in workloads.items()
                },
                "tables": tables,
                "runs": {
                    name: {k: {str(n): v for n, v in by_n.items()} for k, by_n in r.items()} for name, r in runs.items()
                },
                "summary": summary,
            },
            __name__,
        )


if __name__ == "__main__":
    main()
