#!/usr/bin/env python
"""What the Ray engine costs, against bare PyTorch, and what a second trainer buys.

1. Throughput. The same offspring (quickstart's shapes CNN, same data, epochs, batch size, one
   torch thread) trained three ways, interleaved, medians over repeats:
     bare     a plain PyTorch loop in this process (SGD + cosine schedule, no masks, no evopop);
     local    evopop's `Developer.develop` in this process (synthesis, masked training, eval,
              checkpoint; no Ray), to tell Ray's cost from the masking's;
     ray      the real engine path: a trainer actor from `trainer_class(config.resources)` running
              `develop(spec, parent_ref)`, the parent's weights `ray.put` once (as
              `RayExecutor.run` does), timed end to end from this process.
   Training throughput is what evopop records (`samples_per_second`); the end-to-end wall time per
   offspring (round trip of `develop`) is compared with the bare training time.
2. Generation wall time with 1 vs 2 trainers: the real run (`evopop.api.evolution`, Ray executor) on
   configs/quickstart.yaml. Generation 1 (the ancestor) is trained once; each measured run resumes a
   fresh copy of that run directory, so only offspring generations run, and a `GenerationTimer` hook
   times each generation from its first batch to its selection (actor start-up excluded: the hook
   waits for the actors first). Generation 2 is each actor's first work (it
   builds the data sets and warms torch up then); generation 3 is steady state.

Absolute times on a shared 2-core machine are noisy; the ratios are the result. Ray runs its workers
at niceness 15; this process raises its own to match (unless --keep-niceness), so that other load on
the machine slows both sides alike. The 1-minute load average is sampled and reported with the figures.

    python -m benchmarks.bench_engine                        # full run (a few minutes on 2 cores)
    python -m benchmarks.bench_engine --quick                # smoke run, seconds
    python -m benchmarks.bench_engine --json results.json    # also write the figures as JSON (alone: results/)
"""

from __future__ import annotations

import io
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch
from torch.utils.data import DataLoader

from benchmarks.harness import (
    LoadSampler,
    arguments,
    match_worker_niceness,
    median,
    print_runtime,
    ray_worker_niceness,
    take_turns,
    timed,
    write_json,
)
from evopop.api import evolution
from evopop.config import Config, load_config
from evopop.engine.hooks import Batch, Hook
from evopop.engine.jobs import ParentState
from evopop.engine.policy.specs import ROOT_ID, offspring_specs
from evopop.engine.progress import Progress
from evopop.engine.ray.executor import RayExecutor
from evopop.engine.ray.trainer import trainer_class
from evopop.engine.worker.develop import Developer
from evopop.records.checkpoints import Checkpoint
from evopop.records.run import RunRecords
from evopop.records.schema import IndividualRecord
from evopop.synthesis import Genome, trace_architecture
from evopop.tasks.registry import build_task

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
NUM_CPUS = 2  # the machine the figures are for; each trainer gets 1 CPU and 1 torch thread
SEED = 1234

# --quick: tiny images and network (configs/tiny.yaml's task), so each offspring takes well under a second
QUICK_TASK = "task.args={train_size: 256, val_size: 128, image_size: 16, widths: [8, 16], hidden: 32, num_classes: 4}"


def engine_config(args, storage: str, epochs: int, *overrides: str) -> Config:
    """configs/quickstart.yaml with the benchmark's overrides (one CPU and one thread per trainer)."""
    base = [
        f"storage.path={storage}",
        "resources.cpus_per_trainer=1",
        "resources.torch_threads=1",
        f"train.epochs={epochs}",
    ]
    if args.quick:
        base.append(QUICK_TASK)
    return load_config(QUICKSTART, base + list(overrides))


# == 1. throughput: bare PyTorch vs evopop (in process and through Ray) ===========================
def fresh_parent(config: Config) -> ParentState:
    """A freshly initialised ancestor (every synapse alive), as the object-store payload the executor ships."""
    torch.manual_seed(SEED)
    task = build_task(config.task.name, config.task.args)
    model = task.build_model()
    genome = Genome.full(trace_architecture(model, task.example_input()))
    return ParentState.from_checkpoint(Checkpoint(model.state_dict(), genome.state_dict()))


def bare_train(task, parent: ParentState, config: Config, seed: int) -> dict:
    """The least any trainer must do: the dense network, plain SGD with the run's hyperparameters."""
    t = config.train
    torch.manual_seed(seed)
    model = task.build_model()
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in parent.weights.items()})
    optimizer = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    loader = DataLoader(
        task.train_set(), batch_size=t.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    total_steps = max(1, t.epochs * len(loader))  # the same cosine decay evopop applies (no warm-up)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    samples = 0
    start = time.perf_counter()
    model.train()
    for _ in range(t.epochs):
        for inputs, targets in loader:
            loss = task.loss(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            samples += inputs.shape[0]
    seconds = time.perf_counter() - start
    return {"train_seconds": seconds, "samples_per_second": samples / seconds}


def timed_develop(develop, *args) -> dict:
    """An evopop outcome plus the wall time of the call as the caller sees it."""
    outcome, wall = timed(develop, *args)
    if outcome.status != "ok":
        raise RuntimeError(f"{outcome.individual_id} failed: {outcome.error}")
    return {
        "train_seconds": outcome.train_seconds,
        "samples_per_second": outcome.samples_per_second,
        "inner_seconds": outcome.wall_seconds,
        "end_to_end_seconds": wall,
    }


def bench_throughput(args, workdir: Path) -> dict:
    config = engine_config(
        args, str(workdir), args.epochs, "resources.trainers=1", f"evolution.offspring={2 * args.repeats + 2}"
    )
    parent = fresh_parent(config)
    # real offspring specs of the root: seeds, environment (budget C=0.5) and epochs as the policy makes them
    specs = iter(offspring_specs(config, 2, [IndividualRecord(individual_id=ROOT_ID, lineage=(ROOT_ID,))]))

    # bare and local sides share this process: one torch thread, like a trainer with cpus_per_trainer=1
    torch.set_num_threads(1)
    task = build_task(config.task.name, config.task.args)
    developer = Developer(config, str(workdir / "local-run"))
    actor = trainer_class(config.resources).remote(config, str(workdir / "ray-run"))
    ray.get(actor.pid.remote())  # wait until the actor has imported torch and built its Developer
    parent_ref = ray.put(parent)  # once, shared by every offspring (as RayExecutor.run does)
    remote = lambda spec, ref: ray.get(actor.develop.remote(spec, ref))  # noqa: E731

    # first calls build the data sets (each process its own) and warm allocators: timed, kept apart
    _, data_seconds = timed(task.train_set)
    bare_train(task, parent, config, SEED)
    timed_develop(developer.develop, next(specs), parent)
    cold = timed_develop(remote, next(specs), parent_ref)

    def progress(i: int, runs: dict) -> None:
        shown = ", ".join(f"{s} {runs[s][-1]['samples_per_second']:.0f} samples/s" for s in ("bare", "local", "ray"))
        print(f"  repeat {i + 1}/{args.repeats}: {shown}", flush=True)

    sides = {
        "bare": lambda i: bare_train(task, parent, config, SEED + i),
        "local": lambda i: timed_develop(developer.develop, next(specs), parent),
        "ray": lambda i: timed_develop(remote, next(specs), parent_ref),
    }
    runs = take_turns(sides, args.repeats, after_round=progress)
    ray.kill(actor)

    med = {side: {key: median([r[key] for r in rs]) for key in rs[0]} for side, rs in runs.items()}
    bare_train_s = med["bare"]["train_seconds"]
    return {
        "samples": task.train_size * config.train.epochs,
        "epochs": config.train.epochs,
        "batch_size": config.train.batch_size,
        "repeats": args.repeats,
        "median": med,
        "runs": runs,
        "throughput_ratio_ray_vs_bare": med["ray"]["samples_per_second"] / med["bare"]["samples_per_second"],
        "throughput_ratio_local_vs_bare": med["local"]["samples_per_second"] / med["bare"]["samples_per_second"],
        "end_to_end_ray_vs_bare_train": med["ray"]["end_to_end_seconds"] / bare_train_s,
        "end_to_end_local_vs_bare_train": med["local"]["end_to_end_seconds"] / bare_train_s,
        # where the ray side's time goes beyond training
        "ray_overhead_seconds": {
            "develop_minus_train": med["ray"]["inner_seconds"] - med["ray"]["train_seconds"],  # synth+eval+ckpt
            "round_trip_minus_develop": med["ray"]["end_to_end_seconds"] - med["ray"]["inner_seconds"],  # Ray
        },
        # a new process's first offspring also builds the data sets and pays torch's first-call costs
        # (the first optimizer step imports torch._dynamo, ~1-2 s)
        "first_offspring_of_actor_seconds": cold["end_to_end_seconds"],
        "train_set_build_seconds": data_seconds,
    }


# == 2. generation wall time: 1 vs 2 trainers =======================================================
class GenerationTimer(Hook):
    """Times each generation of the real run from its offspring batch's start to its selection; before
    the first, waits until the executor's actors are up (a per-run cost, not a generation's)."""

    def __init__(self, executor: RayExecutor):
        self.executor = executor
        self.seconds: dict[int, float] = {}
        self.actors_ready_seconds = None
        self._start = None

    def batch_started(self, batch: Batch) -> None:
        if self.actors_ready_seconds is None:
            _, self.actors_ready_seconds = timed(self.executor.actor_pids)
        if not batch.baselines:  # a generation's offspring (not its baselines)
            self._start = time.perf_counter()

    def selected(self, generation: int, selected: list[str]) -> None:
        self.seconds[generation] = time.perf_counter() - self._start


def new_run(config: Config, run_dir: Path):
    """(the run, its timer): the real Ray executor, quiet progress, no diversity hook."""
    records = RunRecords(str(run_dir))
    records.storage.makedirs()
    records.write_config(config.to_yaml())  # what `evopop resume` would read
    executor = RayExecutor(config, str(run_dir))
    timer = GenerationTimer(executor)
    run = evolution(
        config, str(run_dir), executor=executor, hooks=[timer, Progress("val_accuracy", "max", io.StringIO())]
    )
    return run, timer


def train_ancestor(args, workdir: Path) -> Path:
    """Generation 1 once; its quality does not matter here, so one epoch."""
    run_dir = workdir / "ancestor"
    config = engine_config(
        args, str(workdir), args.gen_epochs, "evolution.generations=1", "ancestor.epochs=1", "resources.trainers=1"
    )
    new_run(config, run_dir)[0].run()
    return run_dir


def time_generations(args, workdir: Path, ancestor_dir: Path, trainers: int, tag: str) -> dict:
    """Resume a copy of the ancestor's run with `trainers` actors through generations 2..G."""
    run_dir = workdir / f"run-{tag}"
    shutil.copytree(ancestor_dir, run_dir)
    config = engine_config(
        args,
        str(workdir),
        args.gen_epochs,
        f"resources.trainers={trainers}",
        "ancestor.epochs=1",
        f"evolution.generations={args.generations}",
        f"evolution.offspring={args.offspring}",
    )
    run, timer = new_run(config, run_dir)
    run.run()
    population = run.records.population()
    offspring = population[population["generation"] >= 2]
    if (offspring["status"] != "ok").any():
        raise RuntimeError(f"failed offspring: {offspring['error'].dropna().tolist()}")
    return {
        "generation_seconds": {g: s for g, s in timer.seconds.items() if g >= 2},
        "actors_ready_seconds": timer.actors_ready_seconds,
        "per_offspring_samples_per_second": float(offspring["samples_per_second"].median()),
        "per_offspring_train_seconds": float(offspring["train_seconds"].median()),
    }


def bench_generations(args, workdir: Path) -> dict:
    ancestor_dir = train_ancestor(args, workdir)

    def timed_run(trainers: int, i: int) -> dict:
        r = time_generations(args, workdir, ancestor_dir, trainers, f"t{trainers}-{i}")
        shown = ", ".join(f"gen {g} {s:.1f}s" for g, s in r["generation_seconds"].items())
        print(f"  repeat {i + 1}/{args.gen_repeats}, {trainers} trainer(s): {shown}", flush=True)
        return r

    runs = take_turns({1: lambda i: timed_run(1, i), 2: lambda i: timed_run(2, i)}, args.gen_repeats)

    generations = list(range(2, args.generations + 1))
    med = {t: {g: median([r["generation_seconds"][g] for r in rs]) for g in generations} for t, rs in runs.items()}
    sps = {t: median([r["per_offspring_samples_per_second"] for r in rs]) for t, rs in runs.items()}
    return {
        "offspring_per_generation": args.offspring,
        "epochs": args.gen_epochs,
        "repeats": args.gen_repeats,
        "generation_seconds": {f"trainers={t}": {str(g): s for g, s in m.items()} for t, m in med.items()},
        "speedup": {str(g): med[1][g] / med[2][g] for g in generations},
        # how much slower each trainer trains when two share the 2 cores (with the driver and Ray's daemons)
        "per_trainer_samples_per_second": {f"trainers={t}": s for t, s in sps.items()},
        "per_trainer_throughput_2_vs_1": sps[2] / sps[1],
        # speed-up / (2 x per-trainer ratio): the share of the capacity two trainers really had that the
        # engine turned into speed-up (1.0 = no idle trainer, no driver overhead); unlike the speed-up
        # itself, it does not depend on whether the machine had a second core free
        "scheduling_efficiency": {str(g): med[1][g] / med[2][g] / (2 * sps[2] / sps[1]) for g in generations},
        "actors_ready_seconds": {
            f"trainers={t}": median([r["actors_ready_seconds"] for r in rs]) for t, rs in runs.items()
        },
        "runs": {f"trainers={t}": rs for t, rs in runs.items()},
    }


# == report =========================================================================================
def report(results: dict) -> None:
    tp = results["throughput"]
    m = tp["median"]
    print(
        f"\n1. one offspring, {tp['samples']} samples ({tp['epochs']} epochs, batch {tp['batch_size']}), "
        f"1 thread, median of {tp['repeats']}"
    )
    print(f"   {'':6} {'samples/s':>10} {'train s':>8} {'end-to-end s':>13} {'vs bare (throughput)':>21}")
    bare = m["bare"]
    print(f"   {'bare':6} {bare['samples_per_second']:10.0f} {bare['train_seconds']:8.2f} {'-':>13} {'1.00':>21}")
    for side in ("local", "ray"):
        ratio = tp[f"throughput_ratio_{side}_vs_bare"]
        print(
            f"   {side:6} {m[side]['samples_per_second']:10.0f} {m[side]['train_seconds']:8.2f} "
            f"{m[side]['end_to_end_seconds']:13.2f} {ratio:21.3f}"
        )
    o = tp["ray_overhead_seconds"]
    print(
        f"   ray end-to-end / bare training time: {tp['end_to_end_ray_vs_bare_train']:.3f} "
        f"(synthesis+eval+checkpoint {o['develop_minus_train']:.2f}s, "
        f"Ray round trip {o['round_trip_minus_develop']:.3f}s)"
    )
    print(
        f"   an actor's first offspring: {tp['first_offspring_of_actor_seconds']:.2f}s end to end (it builds the "
        f"data sets, the training set alone {tp['train_set_build_seconds']:.2f}s, and warms torch up)"
    )

    g = results["generations"]
    print(
        f"\n2. generation wall time, {g['offspring_per_generation']} offspring x {g['epochs']} epochs, "
        f"median of {g['repeats']}"
    )
    for gen, speedup in g["speedup"].items():
        one, two = g["generation_seconds"]["trainers=1"][gen], g["generation_seconds"]["trainers=2"][gen]
        print(f"   generation {gen}: 1 trainer {one:6.1f}s, 2 trainers {two:6.1f}s, speed-up {speedup:.2f}x")
    s = g["per_trainer_samples_per_second"]
    print(
        f"   per-trainer samples/s: {s['trainers=1']:.0f} alone, {s['trainers=2']:.0f} with two "
        f"({g['per_trainer_throughput_2_vs_1']:.2f}x); scheduling efficiency "
        + ", ".join(f"gen {gen} {e:.2f}" for gen, e in g["scheduling_efficiency"].items())
    )


def main(argv=None) -> int:
    parser = arguments(__name__, __doc__.split("\n\n")[0], quick="smoke run: tiny task, 1 repeat, seconds")
    parser.add_argument("--repeats", type=int, help="offspring per side for the throughput medians (default 5)")
    parser.add_argument("--gen-repeats", type=int, help="runs per trainer count (default 3)")
    parser.add_argument("--epochs", type=int, help="epochs per offspring in 1. (default 4: ~5-10 s of training)")
    parser.add_argument("--gen-epochs", type=int, help="epochs per offspring in 2. (default 2, quickstart's)")
    parser.add_argument("--generations", type=int, help="last generation of the timed runs (default 3)")
    parser.add_argument("--offspring", type=int, help="offspring per generation (default 4)")
    parser.add_argument(
        "--keep-niceness",
        action="store_true",
        help="do not raise this process's niceness to Ray's workers' (see match_worker_niceness)",
    )
    args = parser.parse_args(argv)
    defaults = (
        dict(repeats=1, gen_repeats=1, epochs=1, gen_epochs=1, generations=2, offspring=2)
        if args.quick
        else dict(repeats=5, gen_repeats=3, epochs=4, gen_epochs=2, generations=3, offspring=4)
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    started = time.perf_counter()
    load = LoadSampler()
    load.start()
    # address="local": a cluster of our own, even where another one runs on this machine (a plain
    # ray.init() would join that one, with its resources and its load)
    ray.init(address="local", num_cpus=NUM_CPUS, include_dashboard=False, log_to_driver=False)
    try:
        niceness = os.nice(0) if args.keep_niceness else match_worker_niceness()
        with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
            print("1. throughput: bare PyTorch vs evopop", flush=True)
            throughput = bench_throughput(args, Path(tmp) / "throughput")
            print("2. generation wall time: 1 vs 2 trainers", flush=True)
            generations = bench_generations(args, Path(tmp) / "generations")
        worker_niceness = ray_worker_niceness()
    finally:
        ray.shutdown()
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "ray_cpus": NUM_CPUS,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "processor": platform.processor() or platform.machine(),
            "load_average_1min": load.stop(),
            "niceness": niceness,
            "ray_worker_niceness": worker_niceness,
        },
        "quick": args.quick,
        "throughput": throughput,
        "generations": generations,
        "runtime_seconds": time.perf_counter() - started,
    }
    report(results)
    print_runtime(results["runtime_seconds"], results["machine"], os.cpu_count())
    if args.json:
        write_json(args.json, results, __name__, default=float)
        print(f"figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
