#!/usr/bin/env python
"""A GPU check ready to run: evopop's GPU code paths measured on one GPU, in one command, in one table.

Five parts, each timed, each caught on its own (a part that fails prints its error in the table and the
others go on; within a part, each network, mode or trainer count too), each under a time limit
(PART_LIMITS_S, 460 s in all; a part cut off keeps what it measured). Expected on one H200 (estimates, not
yet measured): 1 about 60 s, 2 about 120 s (Ray and 3 engine runs), 3 about 20 s, 4 about 20 s, 5 about
10 s: some 4 to 5 minutes with start-up.

1. throughput: images/s of evopop's own training loop (`evopop.training.loop.train_and_evaluate`, with the
   masks of a synthesized offspring, as a `Developer` trains one) against a bare PyTorch loop over the same
   network (torchvision resnet18 at 64 px, random weights), data (the procedural shapes, in memory, the
   same DataLoader) and optimizer, sides taking turns; in fp32, bf16 autocast (the Recipe's
   ``mixed_precision: bf16``, what ``auto`` picks on a GPU with bf16) and channels_last. evopop has no
   channels_last option: its side gets a network converted by the caller (inputs stay NCHW), the bare side
   converts network and inputs, and the gap is reported. Also: the bare loop over batches already on the
   GPU (no DataLoader), the data path's ceiling.
2. packing: the real Ray engine (`evopop.api.evolve`, a local Ray with one GPU) with 1, 2 and 4 trainers on
   that GPU by ``resources.gpus_per_trainer`` 1, 0.5, 0.25 (the same task, compaction and diversity off):
   the records' ``samples_per_second`` per offspring, and the wall time of the generations after the
   first offspring generation (each trainer's first individual warms CUDA up), from a hook.
3. compaction: compacted vs dense latency at batch 64 (`evopop.compaction.latency_ms` on the GPU) of
   torchvision resnet18 and resnet50 at 224 px, random weights, offspring with about half their clusters
   (`evopop.toolkit.offspring(clusters=0.5)`, `evopop.toolkit.compact`); fp32, as latency_ms runs.
4. synthesis: one VGG16 offspring (torchvision vgg16, random weights, budget and scale modes) by
   `evopop.synthesis.synthesize` with the weights on the GPU vs on the CPU (best of 3), and how many synapse
   decisions differ. synthesize runs on the weights' device, but its uniforms come from a seeded CPU
   generator and are copied over; the engine itself synthesizes on the CPU (where a parent's weights arrive).
5. memory: peak GPU memory per trainer. Through the engine: the task of part 2 adds a metric that reads
   ``torch.cuda.max_memory_allocated`` in the trainer at the end of evaluation (the Developer resets the
   peak when an individual starts), so the records carry each individual's peak (``val_peak_gpu_mib``).
   In this process: one offspring developed by a `Developer` on the GPU, as a trainer does.

    python -m benchmarks.gpu_check                      # on a machine with one GPU: 4 to 5 minutes
    python -m benchmarks.gpu_check --json               # also write benchmarks/results/gpu_check.json
    python -m benchmarks.gpu_check --device cpu --quick # smoke run on CPU: tiny sizes, CUDA-only parts skipped
    python -m benchmarks.gpu_check --parts 1,3          # some parts only
    python -m benchmarks.gpu_check --limit 2=300        # another time limit for a part (seconds)

Without a CUDA device it refuses at once (exit 2, one line) unless ``--device cpu``. cuDNN autotuning
(``torch.backends.cudnn.benchmark``) is left off on both sides, as evopop's trainer leaves it.

On the lent H200 (Python 3.12, PyTorch there; no registry): Ray, pydantic and jsonschema are carried as an
unpacked bundle (the Ray wheel without its Java jars fits the 64 MiB a call may carry). Built here once::

    python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \\
      -d /tmp/gpuwhl ray==2.60.0 pydantic==2.12.4 pydantic-core==2.41.5 annotated-types typing-inspection \\
      typing-extensions jsonschema jsonschema-specifications referencing rpds-py
    rm -rf /tmp/gpusite && mkdir -p /tmp/gpusite && for w in /tmp/gpuwhl/*.whl; do unzip -qo "$w" -d /tmp/gpusite; done
    rm -rf /tmp/gpusite/ray/jars /tmp/gpusite/ray/dashboard/client/build
    mkdir -p .whl && tar czf .whl/gpusite.tgz -C /tmp/gpusite .

then, with ``carry: [".whl"]``::

    mkdir -p /tmp/site && tar xzf .whl/gpusite.tgz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD \\
      PYTHONUNBUFFERED=1 && python3 -m benchmarks.gpu_check --json $OUT/gpu_check.json 2>&1 | tee $OUT/log
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from benchmarks.harness import RunClock, arguments, median, take_turns, write_json
from evopop.metrics.base import Metric
from evopop.models.by_name import model_by_name
from evopop.tasks.classification import ShapesTask

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
LR = 0.05
SEED = 1234
TASK = "benchmarks.gpu_check:bench_task"  # the engine's trainers import it (task.paths: the repository root)
PARTS = {1: "throughput", 2: "packing", 3: "compaction", 4: "synthesis", 5: "memory"}
ORDER = (1, 3, 4, 2, 5)  # Ray's trainers last but one: parts 1, 3 and 4 have the GPU to themselves
PART_LIMITS_S = {1: 100, 2: 190, 3: 60, 4: 70, 5: 40}  # caps, not estimates: 460 s in all
# precision (the Recipe's mixed_precision), channels_last
MODES = {"fp32": ("off", False), "bf16": ("bf16", False), "cl_fp32": ("off", True), "cl_bf16": ("bf16", True)}


@dataclass(frozen=True)
class Sizes:
    task: dict  # bench_task's args: the data and network of parts 1, 2 and 5
    batch: int
    epochs: int  # per timed training in part 1
    rounds: int  # turns per side in part 1 (after `warmup`)
    warmup: int
    engine_epochs: int  # per individual in parts 2 and 5
    generations: int  # of each engine run: the ancestor, a warm-up generation, the measured ones
    offspring: int
    trainers: tuple[int, ...]
    cpus_per_trainer: float
    latency_models: tuple[str, ...]
    latency_input: int
    latency_batch: int
    latency_repeats: int
    latency_rounds: int
    synthesis_model: str  # "vgg16" or "tiny_cnn"
    synthesis_repeats: int


FULL = Sizes(
    task=dict(train_size=4096, val_size=512, image_size=64, num_classes=6, model="torchvision:resnet18"),
    batch=128,
    epochs=2,
    rounds=3,
    warmup=1,
    engine_epochs=2,
    generations=4,
    offspring=4,
    trainers=(1, 2, 4),
    cpus_per_trainer=2,
    latency_models=("resnet18", "resnet50"),
    latency_input=224,
    latency_batch=64,
    latency_repeats=10,
    latency_rounds=5,
    synthesis_model="vgg16",
    synthesis_repeats=3,
)
QUICK = Sizes(
    task=dict(train_size=128, val_size=64, image_size=16, num_classes=4, widths=[8, 16], hidden=32),
    batch=32,
    epochs=1,
    rounds=1,
    warmup=1,
    engine_epochs=1,
    generations=2,
    offspring=2,
    trainers=(1, 2, 4),
    cpus_per_trainer=0.5,
    latency_models=("resnet18",),
    latency_input=32,
    latency_batch=4,
    latency_repeats=2,
    latency_rounds=1,
    synthesis_model="tiny_cnn",
    synthesis_repeats=1,
)


# == the task: procedural shapes, a named network, and the trainer's peak GPU memory as a metric ===
class PeakMemory(Metric):
    """The task's own metric, plus this process's peak GPU memory when evaluation ends (MiB; NaN off CUDA)."""

    def __init__(self, inner: Metric):
        self.inner = inner

    def update(self, output, target) -> None:
        self.inner.update(output, target)

    def compute(self) -> dict[str, float]:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        return {
            **self.inner.compute(),
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / MIB if cuda else math.nan,
            "peak_gpu_reserved_mib": torch.cuda.max_memory_reserved() / MIB if cuda else math.nan,
        }


class BenchTask(ShapesTask):
    """The shapes task with ``model`` (e.g. ``torchvision:resnet18``) instead of its small CNN."""

    def __init__(self, model: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def build_model(self):
        return model_by_name(self.model, num_classes=self.num_classes) if self.model else super().build_model()

    def metrics(self) -> Metric:
        return PeakMemory(super().metrics())

    def metric_names(self) -> list[str]:
        return [*super().metric_names(), "peak_gpu_mib", "peak_gpu_reserved_mib"]


def bench_task(**kwargs) -> BenchTask:
    return BenchTask(**kwargs)


class TrainOnly:
    """A task without its evaluation sets: part 1 times training alone."""

    def __init__(self, task):
        self._task = task

    def __getattr__(self, name):
        return getattr(self._task, name)

    def eval_sets(self) -> dict:
        return {}


# == parts: what each fills in, how each runs =========================================================
class PartTimeout(BaseException):
    """A part ran past its limit (raised from SIGALRM in the main thread). Not an Exception: evopop's own
    handlers (a Developer records an individual's exception as its failure) must not swallow it."""


@dataclass
class Part:
    rows: list[dict] = field(default_factory=list)  # the table's lines of this part
    figures: dict = field(default_factory=dict)  # flat name -> number, for the JSON
    skipped: list[str] = field(default_factory=list)  # what this device could not measure, and why
    log: list[str] = field(default_factory=list)  # lines worth keeping (the engine's messages)
    errors: list[str] = field(default_factory=list)  # what failed within the part (the rest was measured)

    def row(self, measure: str, value=None, unit: str = "", ratio=None, note: str = "") -> None:
        self.rows.append({"measure": measure, "value": value, "unit": unit, "ratio": ratio, "note": note})

    def skip(self, measure: str, why: str) -> None:
        self.skipped.append(f"{measure}: {why}")
        self.row(measure, note=f"skipped: {why}")

    def attempt(self, measure: str, fn: Callable[[], None]) -> bool:
        """Run one measurement of the part; an error becomes a row (ERROR) and the part goes on."""
        try:
            fn()
            return True
        except Exception as exc:
            error = first_line(exc)
            print(f"[gpu_check] {measure}: {error}\n{traceback.format_exc(limit=6)}", file=sys.stderr, flush=True)
            self.errors.append(f"{measure}: {error}")
            self.row(measure, note=f"ERROR {error}")
            return False


def first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]


@dataclass
class Context:
    device: torch.device
    sizes: Sizes
    workdir: Path
    shared: dict = field(default_factory=dict)  # what one part leaves for another (part 2's records for 5)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def run_part(number: int, fn: Callable[[Context, Part], None], ctx: Context, limit_s: float) -> dict:
    """Run one part under its time limit; its error, if any, is kept (the other parts go on), and so is what
    it measured before it (a part cut off by its limit keeps its rows so far)."""
    name = PARTS[number]
    print(f"[gpu_check] part {number} {name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()

    def alarm(signum, frame):
        raise PartTimeout(f"part {number} ran past its limit of {limit_s:g} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    part, status, error = Part(), "ok", None
    try:
        fn(ctx, part)
    except (Exception, PartTimeout) as exc:
        status, error = "error", first_line(exc)
        print(traceback.format_exc(limit=6), file=sys.stderr, flush=True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    elapsed = time.perf_counter() - start
    if status == "ok" and part.errors:
        status = "partial"
    print(f"[gpu_check] part {number} {name}: {status} in {elapsed:.1f} s", file=sys.stderr, flush=True)
    return {
        "number": number,
        "status": status,
        "error": error,
        "elapsed_s": round(elapsed, 2),
        "limit_s": limit_s,
        "figures": part.figures,
        "skipped": part.skipped,
        "log": part.log,
        "errors": part.errors,
        "rows": part.rows,
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh_model(task, seed: int, channels_last: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = task.build_model()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def offspring_masks(task, seed: int = 1) -> tuple[dict, float]:
    """(parameter masks, kept fraction of synapses) of one offspring (budget C = 0.5) of a fresh network."""
    from evopop.synthesis import (
        Environment,
        Genome,
        parameter_masks,
        synaptic_weights,
        synthesize,
        trace_architecture,
    )

    model = fresh_model(task, SEED)
    arch = trace_architecture(model, task.example_input())
    genome = synthesize(arch, synaptic_weights(model, arch), Genome.full(arch), Environment(0.5, "budget"), seed)
    return parameter_masks(arch, genome), genome.synapses() / arch.synapses


# == 1. throughput: evopop's training loop vs a bare loop ============================================
def bare_loop(task, s: Sizes, device, precision: str, channels_last: bool, seed: int, resident=None) -> float:
    """Images/s of a plain PyTorch loop: the same network, data and DataLoader (or batches already on
    ``device``: ``resident``), SGD as evopop's recipe has it, the loss summed on the device as evopop does."""
    model = fresh_model(task, seed, channels_last).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    amp = torch.bfloat16 if precision == "bf16" else None
    batches = resident
    if batches is None:
        batches = DataLoader(
            task.train_set(),
            batch_size=s.batch,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            pin_memory=device.type == "cuda",
        )
    samples, start = 0, time.perf_counter()
    for _ in range(s.epochs):
        total = torch.zeros((), device=device)
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().float()
            samples += x.shape[0]
        float(total)  # one sync per epoch, as evopop's loop reads its epoch loss
    sync(device)
    return samples / (time.perf_counter() - start)


def evopop_loop(task, masks: dict, s: Sizes, device, precision: str, channels_last: bool, seed: int) -> float:
    """Images/s as evopop records them: `train_and_evaluate` with an offspring's masks (evaluation off)."""
    from evopop.training.loop import Recipe, train_and_evaluate

    model = fresh_model(task, seed, channels_last)
    recipe = Recipe(epochs=s.epochs, batch_size=s.batch, lr=LR, schedule="constant", mixed_precision=precision)
    return train_and_evaluate(model, TrainOnly(task), recipe, seed, masks, device).samples_per_second


def part_throughput(ctx: Context, part: Part) -> None:
    s, device = ctx.sizes, ctx.device
    task = bench_task(**s.task)
    task.train_set()
    masks, kept = offspring_masks(task)
    resident = [(x.to(device), y.to(device)) for x, y in DataLoader(task.train_set(), batch_size=s.batch)]
    part.figures.update(offspring_kept_synapses=round(kept, 4), images_per_training=s.epochs * s.task["train_size"])
    where = f"{task.model or 'small CNN'} at {s.task['image_size']} px, batch {s.batch}"
    part.row(f"network: {where}", note=f"offspring keeps {kept:.0%} of synapses; median of {s.rounds} turns")
    rates = {}

    def measure(mode: str, precision: str, channels_last: bool) -> None:
        sides = {
            "bare": lambda r, p=precision, c=channels_last: bare_loop(task, s, device, p, c, SEED + r),
            "evopop": lambda r, p=precision, c=channels_last: evopop_loop(task, masks, s, device, p, c, SEED + r),
            "resident": lambda r, p=precision, c=channels_last: bare_loop(task, s, device, p, c, SEED + r, resident),
        }
        turns = take_turns(sides, s.rounds, warmup=s.warmup)
        med = rates[mode] = {side: median(values) for side, values in turns.items()}
        for side, rate in med.items():
            part.figures[f"{mode}_{side}_images_per_s"] = round(rate, 1)
        part.figures[f"{mode}_evopop_vs_bare"] = round(med["evopop"] / med["bare"], 4)
        part.figures[f"{mode}_resident_vs_bare"] = round(med["resident"] / med["bare"], 4)
        cl_note = " (network converted by the caller; evopop has no option)" if channels_last else ""
        part.row(f"{mode} bare loop", med["bare"], "img/s", 1.0)
        part.row(f"{mode} evopop train_and_evaluate", med["evopop"], "img/s", med["evopop"] / med["bare"], cl_note)
        part.row(f"{mode} bare, batches on the device", med["resident"], "img/s", med["resident"] / med["bare"])

    for mode, (precision, channels_last) in MODES.items():
        if precision == "bf16" and not ctx.cuda:
            part.skip(f"{mode} (bare, evopop)", "no CUDA (evopop autocasts on CUDA only)")
        else:
            part.attempt(mode, lambda m=mode, p=precision, c=channels_last: measure(m, p, c))
    for precision in ("fp32", "bf16"):
        if precision in rates and f"cl_{precision}" in rates:
            gap = rates[f"cl_{precision}"]["bare"] / rates[precision]["evopop"]
            part.figures[f"channels_last_gap_{precision}"] = round(gap, 4)
            part.row(
                f"{precision} channels_last gap",
                gap,
                "x",
                note="bare channels_last / evopop as it runs (no channels_last option in evopop)",
            )


# == 2. packing: 1, 2, 4 trainers on one GPU through the Ray engine ==================================
def engine_config(ctx: Context, trainers: int, storage: Path):
    from evopop.config import load_config

    s = ctx.sizes
    threads = max(1, int(s.cpus_per_trainer))
    return load_config(
        {
            "run": {"name": f"gpucheck-{trainers}", "seed": 0},
            "task": {"name": TASK, "args": dict(s.task), "paths": [str(ROOT)]},
            "train": {"epochs": s.engine_epochs, "batch_size": s.batch, "lr": LR},  # mixed_precision: auto
            "ancestor": {"epochs": 1},
            "evolution": {
                "generations": s.generations,
                "offspring": s.offspring,
                "environment": {"c": 0.5, "mode": "budget"},
            },
            "selection": {"rule": "best", "metric": "val_accuracy"},
            "resources": {
                "executor": "ray",
                "trainers": trainers,
                "cpus_per_trainer": s.cpus_per_trainer,
                "gpus_per_trainer": 1 / trainers,
                "torch_threads": threads,
                "wait_for_nodes_s": 0,
                "timeout_s": 120,
                "max_retries": 1,
                "on_infrastructure_failure": "continue",
            },
            "diversity": {"enabled": False},
            "compaction": {"enabled": False},
            "storage": {"path": str(storage)},
        }
    )


def generation_timer(executor):
    from evopop.engine.hooks import Hook

    class GenerationTimer(Hook):
        """Wall time of each generation, from its offspring's start to its selection; the first batch
        waits until every trainer is up, so that none starts during a later generation."""

        def __init__(self):
            self.seconds, self._start = {}, {}

        def batch_started(self, batch) -> None:
            if not self._start:
                executor.actor_pids()
            if not batch.baselines:
                self._start.setdefault(batch.generation, time.perf_counter())

        def selected(self, generation: int, selected: list[str]) -> None:
            self.seconds[generation] = time.perf_counter() - self._start[generation]

    return GenerationTimer()


def part_packing(ctx: Context, part: Part) -> None:
    import ray

    from evopop.api import evolve
    from evopop.engine.progress import Progress
    from evopop.engine.ray.executor import RayExecutor

    s = ctx.sizes
    # the trainers import this module (the task) as the driver does
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    cpus = max(2, min(os.cpu_count() or 2, 16))
    ray.init(
        address="local",
        num_cpus=cpus,
        num_gpus=1,  # on a CPU machine a pretend GPU: fractional placement is exercised, training runs on the CPU
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    measured_from = 3 if s.generations >= 3 else s.generations  # generation 2: each trainer's first offspring
    samples = s.engine_epochs * s.task["train_size"]
    if not ctx.cuda:
        part.row("(no CUDA: Ray's GPU is pretended, trainers train on the CPU)")
    first: dict = {}  # the first trainer count measured (1): the speed-ups' baseline

    def measure(n: int) -> None:
        run_dir = ctx.workdir / f"packing-{n}"
        config = engine_config(ctx, n, ctx.workdir)
        lines = []
        executor = RayExecutor(config, str(run_dir), log=lines.append)
        timer = generation_timer(executor)
        quiet = Progress("val_accuracy", "max", io.StringIO())
        population = evolve(config, str(run_dir), executor=executor, hooks=[timer, quiet])
        part.log += [f"{n} trainer(s): {line}" for line in lines[:5]]  # what the engine said (retries)
        ctx.shared.setdefault("engine_population", {})[n] = population
        offspring = population[population["generation"] >= measured_from]
        failed = int((offspring["status"] != "ok").sum())
        ok = offspring[offspring["status"] == "ok"]
        if ok.empty:
            raise RuntimeError(f"no offspring trained: {offspring['error'].dropna().tolist()[:1]}")
        per = float(ok["samples_per_second"].median())
        wall = median(v for g, v in timer.seconds.items() if g >= measured_from)
        aggregate = s.offspring * samples / wall
        base = first.setdefault("base", {"per": per, "wall": wall})
        part.figures.update(
            {
                f"trainers_{n}_offspring_images_per_s": round(per, 1),
                f"trainers_{n}_packed_images_per_s": round(n * per, 1),
                f"trainers_{n}_generation_s": round(wall, 3),
                f"trainers_{n}_generation_images_per_s": round(aggregate, 1),
                f"trainers_{n}_generation_speedup": round(base["wall"] / wall, 4),
                f"trainers_{n}_failed": failed,
            }
        )
        failures = f"; {failed} failed" if failed else ""
        part.row(f"{n} trainer(s), gpus_per_trainer {1 / n:g}: per offspring", per, "img/s", per / base["per"])
        part.row(f"{n} trainer(s): n x per offspring", n * per, "img/s", n * per / base["per"], "if all overlap")
        part.row(f"{n} trainer(s): generation wall", wall, "s", base["wall"] / wall, f"speed-up{failures}")
        part.row(f"{n} trainer(s): generation throughput", aggregate, "img/s", None, "incl. synthesis, eval, ckpt")

    try:
        for n in s.trainers:
            part.attempt(f"{n} trainer(s)", lambda n=n: measure(n))
    finally:
        ray.shutdown()
    part.figures.update(
        offspring_per_generation=s.offspring,
        images_per_offspring=samples,
        measured_generations=f"{measured_from}..{s.generations}",
    )


# == 3. compaction: compacted vs dense latency ========================================================
def part_compaction(ctx: Context, part: Part) -> None:
    import evopop.toolkit as evo
    from evopop.compaction import latency_ms
    from evopop.synthesis import Genome, count

    s, device = ctx.sizes, ctx.device

    def measure(name: str) -> None:
        torch.manual_seed(0)
        model = evo.load_model(f"torchvision:{name}").eval()
        x = torch.randn(1, 3, s.latency_input, s.latency_input)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arch = evo.trace(model, x)
        genome = evo.offspring(model, arch, clusters=0.5, seed=0)
        small = evo.compact(model, arch, genome, x)
        dense_macs = count(arch, Genome.full(arch)).macs
        dense_params = sum(p.numel() for p in model.parameters())
        nets = {"dense": model, "compact": small.module}
        sides = {
            k: lambda _, net=net: latency_ms(net, x, s.latency_batch, s.latency_repeats, device)
            for k, net in nets.items()
        }
        ms = {k: median(v) for k, v in take_turns(sides, s.latency_rounds).items()}
        speedup, macs = ms["dense"] / ms["compact"], dense_macs / small.macs
        part.figures.update(
            {
                f"{name}_dense_ms": round(ms["dense"], 4),
                f"{name}_compact_ms": round(ms["compact"], 4),
                f"{name}_speedup": round(speedup, 4),
                f"{name}_macs_reduction": round(macs, 4),
                f"{name}_params_reduction": round(dense_params / small.params, 4),
            }
        )
        where = f"batch {s.latency_batch}, {s.latency_input} px, {device.type}, fp32"
        part.row(f"{name} dense", ms["dense"], "ms", 1.0, where)
        part.row(f"{name} compacted (clusters 0.5)", ms["compact"], "ms", speedup, f"{macs:.2f}x fewer MACs")

    for name in s.latency_models:
        part.attempt(name, lambda name=name: measure(name))
    part.figures["batch"] = s.latency_batch


# == 4. synthesis of a VGG16 offspring: weights on the GPU vs on the CPU =============================
def part_synthesis(ctx: Context, part: Part) -> None:
    import torchvision

    from benchmarks.bench_synthesis import tiny_cnn
    from evopop.synthesis import Environment, Genome, synaptic_weights, synthesize, trace_architecture

    s = ctx.sizes
    make, shape = (torchvision.models.vgg16, 224) if s.synthesis_model == "vgg16" else (tiny_cnn, 32)
    with torch.device("meta"):
        skeleton = make()
    arch = trace_architecture(skeleton, torch.zeros(1, 3, shape, shape, device="meta"))  # shapes only
    torch.manual_seed(0)
    model = make()
    weights = {"cpu": synaptic_weights(model, arch)}
    if ctx.cuda:
        weights["cuda"] = {k: w.to(ctx.device) for k, w in weights["cpu"].items()}
    else:
        part.skip(f"{s.synthesis_model} synthesis on the GPU", "no CUDA")
    parents = {where: Genome.full(arch, device=next(iter(w.values())).device) for where, w in weights.items()}
    part.figures.update(model=s.synthesis_model, synapses=arch.synapses, cpu_threads=torch.get_num_threads())
    name = s.synthesis_model

    def best_of(where: str, env) -> tuple[Genome, float]:
        """(the offspring, the best time of ``synthesis_repeats`` calls after a warm-up call)."""
        device, times, genome = torch.device(where), [], None
        for _ in range(1 + s.synthesis_repeats):
            sync(device)
            start = time.perf_counter()
            genome = synthesize(arch, weights[where], parents[where], env, SEED)
            sync(device)
            times.append(time.perf_counter() - start)
        return genome, min(times[1:])

    def measure(mode: str) -> None:
        env = Environment(0.5, mode)
        on_cpu, cpu_s = best_of("cpu", env)
        kept = on_cpu.synapses() / arch.synapses
        part.figures[f"{mode}_cpu_s"] = round(cpu_s, 4)
        part.row(f"{name} {mode} C=0.5, weights on CPU", cpu_s, "s", 1.0, f"keeps {kept:.1%}")
        if "cuda" in weights:
            part.attempt(f"{name} {mode} on the GPU", lambda: measure_gpu(mode, env, on_cpu, cpu_s))

    def measure_gpu(mode: str, env, on_cpu: Genome, cpu_s: float) -> None:
        on_gpu, gpu_s = best_of("cuda", env)
        differ = sum(int((on_cpu.masks[k] ^ on_gpu.masks[k].cpu()).sum()) for k in on_cpu.masks)
        part.figures.update({f"{mode}_gpu_s": round(gpu_s, 4), f"{mode}_gpu_speedup": round(cpu_s / gpu_s, 4)})
        part.figures[f"{mode}_decisions_differing"] = differ
        note = f"{differ} synapse decisions differ from the CPU's; uniforms drawn on the CPU"
        part.row(f"{name} {mode} C=0.5, weights on GPU", gpu_s, "s", cpu_s / gpu_s, note)

    for mode in ("budget", "scale"):
        part.attempt(f"{name} {mode}", lambda mode=mode: measure(mode))


# == 5. peak GPU memory per trainer ====================================================================
def part_memory(ctx: Context, part: Part) -> None:
    from evopop.engine.jobs import ParentState
    from evopop.engine.policy.specs import ROOT_ID, offspring_specs
    from evopop.engine.worker.develop import Developer
    from evopop.records.checkpoints import Checkpoint
    from evopop.records.schema import IndividualRecord
    from evopop.synthesis import Genome, trace_architecture

    for n, population in sorted(ctx.shared.get("engine_population", {}).items()):
        ok = population[population["status"] == "ok"]
        peaks = ok["val_peak_gpu_mib"].dropna() if "val_peak_gpu_mib" in ok else ok.iloc[0:0]
        if peaks.empty:
            part.skip(f"{n} trainer(s): peak per individual (engine)", "no CUDA in the trainers")
            continue
        part.figures[f"trainers_{n}_peak_mib_max"] = round(float(peaks.max()), 1)
        part.figures[f"trainers_{n}_peak_mib_median"] = round(float(peaks.median()), 1)
        reserved = float(ok["val_peak_gpu_reserved_mib"].max())
        part.figures[f"trainers_{n}_reserved_mib_max"] = round(reserved, 1)
        note = f"max allocated over {len(peaks)} individuals, read in the trainer; reserved {reserved:.0f} MiB"
        part.row(f"{n} trainer(s), gpus_per_trainer {1 / n:g}: peak", float(peaks.max()), "MiB", None, note)
    if "engine_population" not in ctx.shared:
        part.row("engine figures: part 2 did not run or failed", note="see part 2")

    def in_process() -> None:
        """One offspring developed in this process, as a trainer develops it."""
        config = engine_config(ctx, 1, ctx.workdir)
        developer = Developer(config, str(ctx.workdir / "memory-run"))
        if developer.device.type != ctx.device.type:
            raise RuntimeError(f"the Developer chose {developer.device}, the check runs on {ctx.device}")
        torch.manual_seed(SEED)
        task = developer.task
        model = task.build_model()
        genome = Genome.full(trace_architecture(model, task.example_input()))
        parent = ParentState.from_checkpoint(Checkpoint(model.state_dict(), genome.state_dict()))
        spec = offspring_specs(config, 2, [IndividualRecord(individual_id=ROOT_ID, lineage=(ROOT_ID,))])[0]
        before = torch.cuda.memory_allocated(ctx.device) / MIB if ctx.cuda else 0.0
        start = time.perf_counter()
        outcome = developer.develop(spec, parent)  # resets the peak on CUDA before it starts
        seconds = time.perf_counter() - start
        if outcome.status != "ok":
            raise RuntimeError(f"the offspring failed: {(outcome.error or '').splitlines()[0]}")
        part.figures["in_process_develop_s"] = round(seconds, 3)
        part.figures["in_process_images_per_s"] = round(outcome.samples_per_second, 1)
        if ctx.cuda:
            allocated = torch.cuda.max_memory_allocated(ctx.device) / MIB
            reserved = torch.cuda.max_memory_reserved(ctx.device) / MIB
            part.figures.update(in_process_peak_mib=round(allocated, 1), in_process_reserved_mib=round(reserved, 1))
            part.figures["in_process_allocated_before_mib"] = round(before, 1)
            note = f"reserved {reserved:.0f} MiB; {before:.0f} MiB allocated before it started"
            part.row("one offspring in this process: peak", allocated, "MiB", None, note)
        else:
            part.skip("one offspring in this process: peak GPU memory", "no CUDA")
        part.row("one offspring in this process: develop", seconds, "s", None, "synthesis, training, eval, checkpoint")

    part.attempt("one offspring in this process", in_process)


FUNCTIONS = {1: part_throughput, 2: part_packing, 3: part_compaction, 4: part_synthesis, 5: part_memory}


# == output ==============================================================================================
def shown(value, unit: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if unit in ("img/s", "MiB"):
        return f"{value:,.0f}"
    return f"{value:.3f}" if unit in ("ms", "s", "x") else f"{value}"


def print_table(parts: dict[int, dict]) -> None:
    """The one table: a line per figure, the part's elapsed time last; a failed part shows its error."""
    print(f"\n{'part':<13} {'measure':<52} {'value':>12} {'unit':<6} {'ratio':>7}  note")
    for number in sorted(parts):
        p, label = parts[number], f"{number} {PARTS[number]}"
        for row in p["rows"]:
            ratio = "" if row["ratio"] is None else f"{row['ratio']:.3f}"
            value = shown(row["value"], row["unit"])
            print(f"{label:<13} {row['measure']:<52} {value:>12} {row['unit']:<6} {ratio:>7}  {row['note']}")
        if p["status"] == "error":
            print(f"{label:<13} {'ERROR':<52} {'':>12} {'':<6} {'':>7}  {p['error']}")
        print(f"{label:<13} {'elapsed':<52} {p['elapsed_s']:>12.1f} {'s':<6} {'':>7}  {p['status']}")


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
        info["bf16"] = torch.cuda.is_bf16_supported()
    return info


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__name__, __doc__.split("\n\n")[0], quick="tiny sizes: a smoke run (with --device cpu)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a smoke run off the GPU")
    parser.add_argument("--parts", default="1,2,3,4,5", help="which parts, comma-separated (default: all)")
    parser.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="PART=SECONDS",
        help=f"another time limit for a part (default {', '.join(f'{k}={v}' for k, v in PART_LIMITS_S.items())})",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here (torch.cuda.is_available() is False); "
            "run it on a GPU machine, or pass --device cpu for a smoke run",
            file=sys.stderr,
        )
        return 2
    try:
        wanted = {int(p) for p in args.parts.split(",") if p.strip()}
    except ValueError:
        wanted = {0}
    if not wanted <= set(PARTS):
        parser.error(f"--parts: numbers among {', '.join(map(str, PARTS))}, got {args.parts!r}")
    limits = dict(PART_LIMITS_S)
    for text in args.limit:
        number, _, seconds = text.partition("=")
        try:
            limits[int(number)] = float(seconds)
        except ValueError:
            parser.error(f"--limit: PART=SECONDS, got {text!r}")
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    sizes = QUICK if args.quick else FULL
    clock = RunClock()
    result = {"machine": device_info(device), "quick": args.quick, "parts": {}}
    print(f"[gpu_check] {json.dumps(result['machine'])}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ctx = Context(device, sizes, Path(tmp))
        for number in (n for n in ORDER if n in wanted):
            outcome = run_part(number, FUNCTIONS[number], ctx, limits[number])
            result["parts"][PARTS[number]] = outcome
            result.update(clock.figures(), summary=summary(result["parts"]))
            with contextlib.suppress(OSError):  # each part's figures kept at once: a run cut short keeps them
                write_json(args.json, result, __name__)
    print_table({p["number"]: p for p in result["parts"].values()})
    print(f"\ntotal {clock.figures()['wall_s']:.0f} s on {device_info(device).get('name', device.type)}")
    result.update(clock.figures())
    write_json(args.json, result, __name__)
    return 0


def summary(parts: dict[str, dict]) -> dict:
    """Every part's status and figures in one flat mapping: ``PART_status``, ``PART_FIGURE``."""
    flat = {}
    for name, p in parts.items():
        flat[f"{name}_status"] = p["status"]
        flat.update({f"{name}_{key}": value for key, value in p["figures"].items()})
    return flat


if __name__ == "__main__":
    sys.exit(main())
