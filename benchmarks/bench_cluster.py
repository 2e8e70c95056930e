#!/usr/bin/env python
"""Runs on a (simulated) cluster: what more trainers buy, what the driver costs, what storage costs.

Issue 12 ("runs that survive a real cluster"). Three measurements, each against a baseline taken in
the same run (absolute times on a shared machine are noisy; the ratios are the result):

1. Generation wall time with 1, 2 and 4 trainers on a simulated cluster: a `ray.cluster_utils.Cluster`
   on this machine, a head node with no CPUs (so no trainer lands there; the driver connects to it)
   and worker nodes of a few CPUs, each node its own raylet and object store, parents shipped between
   them over loopback. A fixed population (configs/tiny.yaml's recipe, quickstart's network on 1,000
   images, 8 offspring x 1 epoch, one CPU and one torch thread per trainer). Generation 1 (the
   ancestor) is trained once; each measured run resumes a fresh copy of that run directory, so only
   offspring generations run, and a hook times each generation from its offspring batch's start to
   its selection, after waiting for the trainers to be up (actor start-up excluded). Generation 2 is
   each trainer's first work; later ones are steady state (the headline). Reported: T_n, the scaling
   efficiency T_1 / (n T_n), and, since the cluster is simulated on this machine's cores,
   T_1 / (min(n, cores) T_n). Baseline: the same offspring developed one after another in this
   process (``resources.executor=local``, no Ray): T_1 / T_local is the engine's overhead.
2. The driver's cost per individual: CPU seconds of the driver process (all its threads, Ray's own
   included) and of its main thread per individual, with trivial offspring (a tiny network on 128
   images, 1 epoch, no compaction) and many of them per generation. It includes everything the driver
   does from a generation's first dispatch to its selection: loading the parent and putting it into
   the object store, the ``ray.wait`` loop, receiving outcomes, ``Result.record``, the record writes
   (local disk, atomic), the hooks (progress output), and the selection (records read back, selection
   written); not the trainers' work. 1 / that is the most individuals per second one driver core can
   dispatch; offspring seconds / that is how many trainers one driver keeps busy.
3. Record writes per second: ``RunRecords.write_individual`` (a real offspring's record and layer rows
   from run 1, the population schema of its run) to a local disk and to S3 (moto's server on loopback),
   against a bare ``pyarrow.parquet.write_table`` of the same tables through the same filesystem (no
   temporary name, no fsync, no rename); and checkpoint writes (``RunRecords.write_checkpoint``,
   a few MiB) against the same bytes written once, plainly. Moto on loopback has no network latency:
   the S3 figures count requests, not real S3 time.

    python -m benchmarks.bench_cluster                       # full run (~4 min on 2 quiet cores)
    python -m benchmarks.bench_cluster --quick               # smoke run (~40 s; figures meaningless)
    python -m benchmarks.bench_cluster --json cluster.json   # also write the figures as JSON (alone: results/)
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

import evopop
from benchmarks.harness import (
    LoadSampler,
    arguments,
    match_worker_niceness,
    median,
    print_runtime,
    print_summary,
    ray_worker_niceness,
    take_turns,
    timed,
    write_json,
)
from evopop.api import evolution
from evopop.config import Config, load_config
from evopop.engine.hooks import Batch, Hook
from evopop.engine.plan import plan_run
from evopop.engine.progress import Progress
from evopop.engine.ray.executor import RayExecutor
from evopop.records.checkpoints import Checkpoint
from evopop.records.run import RunRecords
from evopop.records.schema import LayerRecord, layer_schema, population_schema
from evopop.records.storage import filesystem_of, join

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
# 1.: quickstart's network on a third of its data (~0.5 s per offspring on one core)
SCALING_TASK = "task.args={train_size: 1000, val_size: 500, image_size: 32, widths: [16, 32, 64], hidden: 128}"
# 2. (and everything in --quick): trivial offspring, tens of milliseconds each
TRIVIAL_TASK = "task.args={train_size: 128, val_size: 64, image_size: 16, widths: [8, 16], hidden: 32, num_classes: 4}"
BUCKET = "evopop-bench"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through the `finally`s: the cluster is shut down


# == the runs ========================================================================================
def bench_config(storage: Path, task: str, epochs: int, *overrides: str) -> Config:
    """configs/tiny.yaml with the benchmark's task, one CPU and one torch thread per trainer."""
    return load_config(
        TINY,
        [
            f"storage.path={storage}",
            task,
            f"train.epochs={epochs}",
            "ancestor.epochs=1",
            "diversity.enabled=false",
            "resources.cpus_per_trainer=1",
            "resources.torch_threads=1",
            *overrides,
        ],
    )


class Clocks:
    """Wall time, this process's CPU time (every thread: Ray's own too) and the main thread's."""

    def __init__(self):
        self.wall, self.cpu, self.main = time.perf_counter(), time.process_time(), time.thread_time()

    def since(self, start: Clocks) -> dict:
        return {"wall": self.wall - start.wall, "cpu": self.cpu - start.cpu, "main_cpu": self.main - start.main}


class GenerationTimer(Hook):
    """Each generation from its offspring batch's start to its selection (wall and driver CPU), split at
    the batch's end (develop | select); before the first, waits until the trainers are up."""

    def __init__(self, executor: RayExecutor | None):
        self.executor = executor
        self.generations: dict[int, dict] = {}
        self.actors_ready_seconds = None
        self._start = self._developed = None

    def batch_started(self, batch: Batch) -> None:
        if self.executor is not None and self.actors_ready_seconds is None:
            _, self.actors_ready_seconds = timed(self.executor.actor_pids)
        if not batch.baselines:
            self._start, self._individuals = Clocks(), batch.total - batch.already

    def batch_finished(self, batch: Batch) -> None:
        if not batch.baselines:
            self._developed = Clocks()

    def selected(self, generation: int, selected: list[str]) -> None:
        end = Clocks()
        self.generations[generation] = {
            **end.since(self._start),
            "individuals": self._individuals,
            "select_main_cpu": end.main - self._developed.main,
        }


class WriteMeter:
    """Wraps a run's ``records.write_individual``: main-thread CPU and wall time spent in record writes."""

    def __init__(self, records: RunRecords):
        self.calls, self.wall, self.main_cpu = 0, 0.0, 0.0
        self._inner = records.write_individual
        records.write_individual = self

    def __call__(self, *args, **kwargs):
        wall, main = time.perf_counter(), time.thread_time()
        self._inner(*args, **kwargs)
        self.calls += 1
        self.wall += time.perf_counter() - wall
        self.main_cpu += time.thread_time() - main


def start_run(config: Config, run_dir: Path, ray_executor: bool):
    """(the run, its timer, its write meter): quiet progress output, no diversity hook."""
    records = RunRecords(str(run_dir))
    records.storage.makedirs()
    records.write_config(config.to_yaml())  # this benchmark's config replaces the ancestor run's
    executor = RayExecutor(config, str(run_dir), log=lambda text: None) if ray_executor else None
    timer = GenerationTimer(executor)
    plan = plan_run(config)
    run = evolution(
        config,
        str(run_dir),
        plan=plan,
        executor=executor,
        hooks=[timer, Progress(plan.metric, plan.direction, io.StringIO())],
    )
    return run, timer, WriteMeter(run.records)


def train_ancestor(workdir: Path, task: str, cache: dict) -> Path:
    """Generation 1, once per task, in this process (which warms up its data and torch, as a trainer's
    start-up does before its timed work)."""
    if task not in cache:
        run_dir = workdir / f"ancestor-{len(cache)}"
        config = bench_config(workdir, task, 1, "evolution.generations=1", "resources.executor=local")
        start_run(config, run_dir, ray_executor=False)[0].run()
        cache[task] = run_dir
    return cache[task]


def timed_run(ancestor: Path, run_dir: Path, config: Config) -> dict:
    """Resume a copy of the ancestor's run through generations 2..G; per-generation figures."""
    shutil.copytree(ancestor, run_dir)
    ray_executor = config.resources.executor == "ray"
    run, timer, writes = start_run(config, run_dir, ray_executor)
    run.run()
    population = run.records.population()
    offspring = population[population["generation"] >= 2]
    if (offspring["status"] != "ok").any():
        raise RuntimeError(f"failed offspring: {offspring['error'].dropna().tolist()}")
    nodes = offspring["node_id"].dropna().unique() if "node_id" in offspring else []
    return {
        "generations": {g: r for g, r in timer.generations.items() if g >= 2},
        "actors_ready_seconds": timer.actors_ready_seconds,
        "record_writes": {"calls": writes.calls, "wall": writes.wall, "main_cpu": writes.main_cpu},
        "per_offspring_samples_per_second": float(offspring["samples_per_second"].median()),
        "nodes_used": len(nodes),
        "run_dir": str(run_dir),
    }


def steady(generations: int) -> list[int]:
    """The generations after each trainer's first (generation 2), if there are any."""
    return list(range(3, generations + 1)) or [2]


# == 1. generation wall time: local, 1, 2, 4 trainers =================================================
def bench_scaling(args, workdir: Path, ancestors: dict, n_cores: int) -> dict:
    task = TRIVIAL_TASK if args.quick else SCALING_TASK
    ancestor = train_ancestor(workdir, task, ancestors)

    def scaling_run(side: str, i: int) -> dict:
        n = 1 if side == "local" else int(side.split("=")[1])
        executor = "local" if side == "local" else "ray"
        config = bench_config(
            workdir,
            task,
            args.epochs,
            f"evolution.generations={args.generations}",
            f"evolution.offspring={args.offspring}",
            f"resources.executor={executor}",
            f"resources.trainers={n}",
        )
        r = timed_run(ancestor, workdir / f"scaling-{side.replace('=', '')}-{i}", config)
        shown = ", ".join(f"gen {g} {x['wall']:.2f}s" for g, x in r["generations"].items())
        print(f"  repeat {i + 1}/{args.repeats}, {side}: {shown}", flush=True)
        return r

    sides = ["local"] + [f"trainers={n}" for n in args.trainers]
    runs = take_turns({side: lambda i, side=side: scaling_run(side, i) for side in sides}, args.repeats)

    gens = list(range(2, args.generations + 1))
    per_gen = {s: {g: median([r["generations"][g]["wall"] for r in rs]) for g in gens} for s, rs in runs.items()}
    stable = steady(args.generations)
    t = {s: median([r["generations"][g]["wall"] for r in rs for g in stable]) for s, rs in runs.items()}
    t1 = t["trainers=1"]  # always measured: every ratio's base
    out = {
        "offspring_per_generation": args.offspring,
        "epochs": args.epochs,
        "task": task,
        "repeats": args.repeats,
        "steady_generations": stable,
        "generation_seconds": {s: {str(g): v for g, v in m.items()} for s, m in per_gen.items()},
        "steady_seconds": t,
        "efficiency": {},
        "efficiency_cores": {},
        "ray_1_trainer_vs_local": t1 / t["local"],
        "engine_overhead_seconds_per_offspring": (t1 - t["local"]) / args.offspring,
        "per_trainer_samples_per_second": {
            s: median([r["per_offspring_samples_per_second"] for r in rs]) for s, rs in runs.items()
        },
        "nodes_used": {s: max(r["nodes_used"] for r in rs) for s, rs in runs.items() if s != "local"},
        "actors_ready_seconds": {
            s: median([r["actors_ready_seconds"] for r in rs]) for s, rs in runs.items() if s != "local"
        },
        # driver CPU per individual with offspring of this size (see 2. for trivial ones)
        "driver_cpu_seconds_per_individual": {
            s: median([x["cpu"] / x["individuals"] for r in rs for g, x in r["generations"].items() if g in stable])
            for s, rs in runs.items()
            if s != "local"
        },
        "cores": n_cores,
        "runs": runs,
    }
    for n in args.trainers:
        tn = t[f"trainers={n}"]
        out["efficiency"][str(n)] = t1 / (n * tn)
        out["efficiency_cores"][str(n)] = t1 / (min(n, n_cores) * tn)
    return out


# == 2. the driver's cost per individual =============================================================
def idle_driver_cpu(seconds: float) -> float:
    """CPU seconds per second this driver burns while connected to Ray and doing nothing."""
    start = Clocks()
    time.sleep(seconds)
    c = Clocks().since(start)
    return c["cpu"] / c["wall"]


def bench_driver(args, workdir: Path, ancestors: dict) -> dict:
    ancestor = train_ancestor(workdir, TRIVIAL_TASK, ancestors)
    n = args.dispatch_trainers
    idle = idle_driver_cpu(1.0 if args.quick else 3.0)
    runs = []
    for i in range(args.dispatch_repeats):
        config = bench_config(
            workdir,
            TRIVIAL_TASK,
            1,
            f"evolution.generations={args.dispatch_generations}",
            f"evolution.offspring={args.dispatch_offspring}",
            f"resources.trainers={n}",
            "compaction.enabled=false",
        )
        r = timed_run(ancestor, workdir / f"driver-{i}", config)
        runs.append(r)
        shown = ", ".join(
            f"gen {g} {x['individuals']} in {x['wall']:.2f}s, {1000 * x['cpu'] / x['individuals']:.1f} ms CPU each"
            for g, x in r["generations"].items()
        )
        print(f"  repeat {i + 1}/{args.dispatch_repeats}: {shown}", flush=True)

    stable = steady(args.dispatch_generations)
    gens = [x for r in runs for g, x in r["generations"].items() if g in stable]
    individuals = sum(x["individuals"] for x in gens)
    cpu = sum(x["cpu"] for x in gens)
    main = sum(x["main_cpu"] for x in gens)
    wall = sum(x["wall"] for x in gens)
    select = sum(x["select_main_cpu"] for x in gens)
    # main-thread CPU of one record write, averaged over every write of the runs
    w = [r["record_writes"] for r in runs]
    write_cpu_each = sum(x["main_cpu"] for x in w) / max(1, sum(x["calls"] for x in w))
    per = cpu / individuals
    return {
        "trainers": n,
        "offspring_per_generation": args.dispatch_offspring,
        "repeats": args.dispatch_repeats,
        "steady_generations": stable,
        "individuals_measured": individuals,
        "driver_cpu_seconds_per_individual": per,
        "driver_main_thread_cpu_seconds_per_individual": main / individuals,
        "driver_idle_cpu_per_second": idle,  # Ray's threads in a connected driver doing nothing
        "driver_cpu_seconds_per_individual_minus_idle": (cpu - idle * wall) / individuals,
        "main_thread_breakdown_seconds_per_individual": {
            "record_writes": write_cpu_each,
            "selection": select / individuals,
            # loading the parent and putting it into the object store, the ray.wait loop, receiving
            # outcomes, Result.record, the hooks
            "dispatch_and_rest": (main - select) / individuals - write_cpu_each,
        },
        "record_writes_share_of_driver_cpu": write_cpu_each / per,
        "max_dispatch_per_second": 1.0 / per,
        "achieved_per_second": individuals / wall,
        "runs": runs,
    }


# == 3. record and checkpoint writes: local disk and S3 ===============================================
class RequestCounter:
    """WSGI middleware counting the S3 server's requests by HTTP method."""

    def __init__(self, app):
        self.app, self.counts, self.lock = app, Counter(), threading.Lock()

    def __call__(self, environ, start_response):
        with self.lock:
            self.counts[environ.get("REQUEST_METHOD", "?")] += 1
        return self.app(environ, start_response)

    def snapshot(self) -> Counter:
        with self.lock:
            return Counter(self.counts)


def count_requests(counter: RequestCounter | None, write, i: int) -> dict | None:
    """The S3 requests of one ``write(i)``, by HTTP method, with their total."""
    if counter is None:
        return None
    before = counter.snapshot()
    write(i)
    by_method = dict(sorted((counter.snapshot() - before).items()))
    return {"total": sum(by_method.values()), **by_method}


def start_moto(stack: ExitStack):
    """(base s3:// URI of a fresh bucket, request counter or None) of a moto S3 server on loopback;
    None if moto or boto3 is not installed (``pip install -e '.[test]'``)."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        return None
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    stack.callback(server.stop)
    host, port = server.get_host_and_port()
    counter = None
    wsgi = getattr(server, "_server", None)  # moto's werkzeug server (a private attribute: optional)
    if wsgi is not None and hasattr(wsgi, "app"):
        counter = RequestCounter(wsgi.app)
        wsgi.app = counter
    boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=BUCKET)
    return f"s3://testing:testing@{BUCKET}?endpoint_override={host}:{port}&scheme=http&region=us-east-1", counter


def sample_record(run_dir: str):
    """(record, layer rows, population schema) of a real offspring of ``run_dir``."""
    records = RunRecords(run_dir)
    record = next(r for r in records.individuals(2) if r.ok)
    frame = records.layers()
    frame = frame[(frame["generation"] == 2) & (frame["individual_id"] == record.individual_id)]
    names = [f.name for f in dataclasses.fields(LayerRecord)]
    plain = lambda v: v.item() if hasattr(v, "item") else v  # noqa: E731  (NumPy scalars from pandas)
    layers = [LayerRecord(**{k: plain(row[k]) for k in names}) for row in frame.to_dict("records")]
    record = dataclasses.replace(record, selected=None)  # as the policy writes it: before selection
    meta = records.metadata()
    schema = population_schema(meta.metric_columns, meta.layer_names, (meta.metric, meta.direction))
    return record, layers, schema


def checkpoint_payload(mib: float) -> tuple[dict, dict]:
    """Weights of about ``mib`` MiB of float32 (4 layers) and their bool masks."""
    per_layer = max(1, int(mib * 2**20 / 4 / 4))
    g = torch.Generator().manual_seed(0)
    weights = {f"layer{i}.weight": torch.randn(per_layer, generator=g) for i in range(4)}
    masks = {k: torch.rand(per_layer, generator=g) < 0.5 for k in weights}
    return weights, masks


def timed_rounds(sides: dict, n: int, block: int = 5) -> dict:
    """Call each side's ``write(i)`` for i < n, in blocks taking turns; seconds per call, per side."""

    def blocks(write):
        return lambda r: timed(lambda: [write(i) for i in range(r * block, min(n, (r + 1) * block))])[1]

    seconds = take_turns({name: blocks(write) for name, write in sides.items()}, math.ceil(n / block))
    return {name: sum(s) / n for name, s in seconds.items()}


def bench_storage_on(uri: str, sample, n_records: int, n_checkpoints: int, ckpt_mib: float, counter) -> dict:
    record, layers, schema = sample
    row = record.row()
    pop_table = pa.Table.from_pylist([row], schema=schema)
    layer_table = pa.Table.from_pylist([dataclasses.asdict(r) for r in layers], schema=layer_schema())

    evo = RunRecords(join(uri, "evopop"))
    evo.storage.makedirs()
    fs, bare_root = filesystem_of(join(uri, "bare"))
    for sub in ("population/generation=2", "layers/generation=2", "row/generation=2", "checkpoints"):
        fs.create_dir(f"{bare_root}/{sub}", recursive=True)  # a bare writer's directories exist already

    def evopop_write(i):
        rid = f"g2-{i}"
        evo.write_individual(
            2,
            dataclasses.replace(record, individual_id=rid),
            [dataclasses.replace(r, individual_id=rid) for r in layers],
            schema,
        )

    def bare_files(i):  # the same two tables evopop writes, each one plain write_table
        pq.write_table(layer_table, f"{bare_root}/layers/generation=2/part-g2-{i}.parquet", filesystem=fs)
        pq.write_table(pop_table, f"{bare_root}/population/generation=2/part-g2-{i}.parquet", filesystem=fs)

    def bare_row(i):  # the population row alone
        pq.write_table(pop_table, f"{bare_root}/row/generation=2/part-g2-{i}.parquet", filesystem=fs)

    sides = {"evopop": evopop_write, "bare_files": bare_files, "bare_row": bare_row}
    records_s = timed_rounds(sides, n_records)
    requests = {name: count_requests(counter, write, n_records) for name, write in sides.items()}  # one more each

    weights, masks = checkpoint_payload(ckpt_mib)
    meta = {"individual_id": "bench", "note": "bench_cluster.py"}

    def evopop_checkpoint(i):
        evo.write_checkpoint(f"g2-{i}", Checkpoint(weights, masks, meta))

    def bare_checkpoint(i):  # the same serialization, written once to its final name
        buffer = io.BytesIO()
        torch.save({"weights": weights, "masks": masks, "meta": json.dumps(meta)}, buffer)
        with fs.open_output_stream(f"{bare_root}/checkpoints/g2-{i}.pt") as out:
            out.write(buffer.getvalue())

    ckpt_sides = {"evopop": evopop_checkpoint, "bare": bare_checkpoint}
    ckpt_s = timed_rounds(ckpt_sides, n_checkpoints, block=2)
    ckpt_requests = {name: count_requests(counter, write, n_checkpoints) for name, write in ckpt_sides.items()}
    size = len(evo.storage.read_bytes(evo.checkpoint_path("g2-0")))
    return {
        "records": n_records,
        "layer_rows": len(layers),
        "record_seconds": records_s,
        "record_writes_per_second": {k: 1.0 / v for k, v in records_s.items()},
        "record_time_vs_bare_files": records_s["evopop"] / records_s["bare_files"],
        "record_time_vs_bare_row": records_s["evopop"] / records_s["bare_row"],
        "requests_per_record": requests if counter is not None else None,
        "checkpoints": n_checkpoints,
        "checkpoint_bytes": size,
        "checkpoint_seconds": ckpt_s,
        "checkpoint_writes_per_second": {k: 1.0 / v for k, v in ckpt_s.items()},
        "checkpoint_time_vs_bare": ckpt_s["evopop"] / ckpt_s["bare"],
        "requests_per_checkpoint": ckpt_requests if counter is not None else None,
    }


def bench_storage(args, workdir: Path, sample_run: str) -> dict:
    sample = sample_record(sample_run)
    out = {
        "local": bench_storage_on(
            str(workdir / "storage"), sample, args.records, args.checkpoints, args.checkpoint_mib, None
        )
    }
    print(f"  local: {out['local']['record_writes_per_second']['evopop']:.0f} records/s", flush=True)
    with ExitStack() as stack:
        s3 = None if args.no_s3 else start_moto(stack)
        if s3 is None:
            out["s3"] = None
            print("  s3: skipped (--no-s3, or moto/boto3 not installed)", flush=True)
        else:
            base, counter = s3
            out["s3"] = bench_storage_on(
                join(base, "bench"), sample, args.s3_records, args.s3_checkpoints, args.checkpoint_mib, counter
            )
            print(f"  s3 (moto): {out['s3']['record_writes_per_second']['evopop']:.0f} records/s", flush=True)
    return out


# == report ==========================================================================================
def summary_of(results: dict) -> dict:
    s = {}
    sc = results["scaling"]
    s["generation_s_local"] = sc["steady_seconds"]["local"]
    for side, v in sc["steady_seconds"].items():
        if side != "local":
            s[f"generation_s_trainers_{side.split('=')[1]}"] = v
    for n, e in sc["efficiency"].items():
        s[f"efficiency_trainers_{n}"] = e
    for n, e in sc["efficiency_cores"].items():
        s[f"efficiency_cores_trainers_{n}"] = e
    s["ray_1_trainer_vs_local"] = sc["ray_1_trainer_vs_local"]
    s["engine_overhead_s_per_offspring"] = sc["engine_overhead_seconds_per_offspring"]
    d = results["driver"]
    s["driver_cpu_ms_per_individual"] = 1000 * d["driver_cpu_seconds_per_individual"]
    s["driver_main_thread_cpu_ms_per_individual"] = 1000 * d["driver_main_thread_cpu_seconds_per_individual"]
    s["driver_record_writes_share"] = d["record_writes_share_of_driver_cpu"]
    s["max_dispatch_per_s"] = d["max_dispatch_per_second"]
    s["achieved_dispatch_per_s"] = d["achieved_per_second"]
    t1 = sc["steady_seconds"].get("trainers=1")
    if t1 is not None:  # trainers one driver keeps busy with offspring of part 1's size
        s["trainers_per_driver_at_scaling_offspring"] = (t1 / sc["offspring_per_generation"]) / d[
            "driver_cpu_seconds_per_individual"
        ]
    for where in ("local", "s3"):
        st = results["storage"].get(where)
        if st is None:
            continue
        w = st["record_writes_per_second"]
        s[f"record_writes_per_s_{where}"] = w["evopop"]
        s[f"record_writes_per_s_{where}_bare_files"] = w["bare_files"]
        s[f"record_writes_per_s_{where}_bare_row"] = w["bare_row"]
        s[f"record_time_vs_bare_files_{where}"] = st["record_time_vs_bare_files"]
        s[f"record_time_vs_bare_row_{where}"] = st["record_time_vs_bare_row"]
        if st["requests_per_record"]:
            s[f"requests_per_record_{where}"] = st["requests_per_record"]["evopop"]["total"]
            s[f"requests_per_record_{where}_bare_files"] = st["requests_per_record"]["bare_files"]["total"]
        if st["requests_per_checkpoint"]:
            s[f"requests_per_checkpoint_{where}"] = st["requests_per_checkpoint"]["evopop"]["total"]
            s[f"requests_per_checkpoint_{where}_bare"] = st["requests_per_checkpoint"]["bare"]["total"]
        c = st["checkpoint_writes_per_second"]
        s[f"checkpoint_writes_per_s_{where}"] = c["evopop"]
        s[f"checkpoint_writes_per_s_{where}_bare"] = c["bare"]
        s[f"checkpoint_time_vs_bare_{where}"] = st["checkpoint_time_vs_bare"]
    s["runtime_s"] = results["runtime_seconds"]
    return s


def report(results: dict) -> None:
    m, sc = results["machine"], results["scaling"]
    cl = results["cluster"]
    print(
        f"\n1. generation wall time, simulated cluster (head: 0 CPUs; {cl['worker_nodes']} worker nodes x "
        f"{cl['cpus_per_node']} CPUs) on {m['cores']} cores; {sc['offspring_per_generation']} offspring x "
        f"{sc['epochs']} epoch(s) per generation, median of {sc['repeats']} run(s)"
    )
    stable = sc["steady_generations"]
    label = "gen " + "-".join(str(g) for g in (stable[0], stable[-1])) if len(stable) > 1 else f"gen {stable[0]}"
    print(
        f"   {'':18} {'gen 2 (new actors)':>19} {label + ' (T)':>14} {'T1/(n*Tn)':>10} "
        f"{'T1/(min(n,' + str(sc['cores']) + ')*Tn)':>17} {'samples/s per trainer':>22} {'nodes used':>11}"
    )
    for side, per_gen in sc["generation_seconds"].items():
        n = None if side == "local" else side.split("=")[1]
        eff = f"{sc['efficiency'][n]:10.2f} {sc['efficiency_cores'][n]:17.2f}" if n else f"{'-':>10} {'-':>17}"
        name = "local (in process)" if n is None else f"{n} trainer(s)"
        nodes = sc["nodes_used"].get(side, "-")
        print(
            f"   {name:18} {per_gen['2']:18.2f}s {sc['steady_seconds'][side]:13.2f}s {eff} "
            f"{sc['per_trainer_samples_per_second'][side]:22.0f} {nodes!s:>11}"
        )
    print(
        f"   1 trainer / local: {sc['ray_1_trainer_vs_local']:.3f} (engine overhead "
        f"{1000 * sc['engine_overhead_seconds_per_offspring']:.0f} ms per offspring: Ray round trip, parent "
        f"in the object store, outcome back; the local side has neither)"
    )

    d = results["driver"]
    b = d["main_thread_breakdown_seconds_per_individual"]
    print(
        f"\n2. driver cost per individual: {d['individuals_measured']} trivial offspring "
        f"({d['offspring_per_generation']} per generation, {d['trainers']} trainers, no compaction)"
    )
    print(
        f"   driver CPU {1000 * d['driver_cpu_seconds_per_individual']:.1f} ms per individual (all threads; "
        f"{1000 * d['driver_cpu_seconds_per_individual_minus_idle']:.1f} ms less Ray's idle "
        f"{100 * d['driver_idle_cpu_per_second']:.1f}% of a core), main thread "
        f"{1000 * d['driver_main_thread_cpu_seconds_per_individual']:.1f} ms"
    )
    print(
        f"   main thread: record writes {1000 * b['record_writes']:.1f} ms, selection (records read back, "
        f"selection written) {1000 * b['selection']:.1f} ms, the rest (parent put, ray.wait loop, outcomes, "
        f"Result.record, hooks) {1000 * b['dispatch_and_rest']:.1f} ms"
    )
    print(
        f"   => at most {d['max_dispatch_per_second']:.0f} individuals/s per driver core "
        f"(achieved here: {d['achieved_per_second']:.0f}/s, trainers sharing the cores); record writes "
        f"{100 * d['record_writes_share_of_driver_cpu']:.0f}% of the driver's CPU"
    )
    s = results["summary"]
    if "trainers_per_driver_at_scaling_offspring" in s:
        print(
            f"   one driver keeps ~{s['trainers_per_driver_at_scaling_offspring']:.0f} trainers busy with "
            f"offspring of part 1's size ({sc['steady_seconds']['trainers=1'] / sc['offspring_per_generation']:.2f}"
            f" s each)"
        )

    print("\n3. writes per second (evopop: atomic, temporary name + fsync + rename; bare: one plain write)")
    print(
        f"   {'':6} {'records':>8} {'bare files':>11} {'bare row':>9} {'vs files':>9} {'vs row':>7} "
        f"{'requests':>9} {'ckpts':>7} {'bare':>7} {'vs bare':>8} {'requests':>9}"
    )
    for where in ("local", "s3"):
        st = results["storage"].get(where)
        if st is None:
            print(f"   {where:6} skipped")
            continue
        w, c = st["record_writes_per_second"], st["checkpoint_writes_per_second"]
        rq = st["requests_per_record"] or {}
        cq = st["requests_per_checkpoint"] or {}
        req = f"{rq['evopop']['total']}/{rq['bare_files']['total']}" if rq else "-"
        creq = f"{cq['evopop']['total']}/{cq['bare']['total']}" if cq else "-"
        print(
            f"   {where:6} {w['evopop']:8.0f} {w['bare_files']:11.0f} {w['bare_row']:9.0f} "
            f"{st['record_time_vs_bare_files']:8.2f}x {st['record_time_vs_bare_row']:6.2f}x {req:>9} "
            f"{c['evopop']:7.1f} {c['bare']:7.1f} {st['checkpoint_time_vs_bare']:7.2f}x {creq:>9}"
        )
    st = results["storage"]["local"]
    print(
        f"   a record: {st['layer_rows']} layer rows + 1 population row (2 Parquet files); a checkpoint: "
        f"{st['checkpoint_bytes'] / 2**20:.1f} MiB. requests = S3 requests per write, evopop/bare."
    )
    s3 = results["storage"].get("s3")
    if s3 and s3["requests_per_record"]:
        by = lambda q: ", ".join(f"{k} {v}" for k, v in q.items() if k != "total")  # noqa: E731
        rq, cq = s3["requests_per_record"], s3["requests_per_checkpoint"]
        print(f"   S3 requests per record: evopop {by(rq['evopop'])}; bare {by(rq['bare_files'])}")
        print(f"   S3 requests per checkpoint: evopop {by(cq['evopop'])}; bare {by(cq['bare'])}")
    if s3:
        print(
            "   S3 is moto's server on loopback: no network latency, no real S3 behaviour. On real S3 each "
            "request costs tens of ms, so the request counts, not these times, say what a write costs there."
        )


def main(argv=None) -> int:
    parser = arguments(__name__, __doc__.split("\n\n")[0], quick="smoke run: trivial offspring, 1 repeat (~40 s)")
    parser.add_argument("--trainers", help="trainer counts of 1. (default 1,2,4)")
    parser.add_argument("--worker-nodes", type=int, default=2, help="worker nodes of the simulated cluster")
    parser.add_argument("--cpus-per-node", type=int, default=2, help="CPUs each worker node offers")
    parser.add_argument("--repeats", type=int, help="runs per side in 1. (default 3)")
    parser.add_argument("--generations", type=int, help="last generation of 1.'s runs (default 4)")
    parser.add_argument("--offspring", type=int, help="offspring per generation in 1. (default 8)")
    parser.add_argument("--epochs", type=int, help="epochs per offspring in 1. (default 1)")
    parser.add_argument("--dispatch-trainers", type=int, help="trainers in 2. (default: the most of --trainers)")
    parser.add_argument("--dispatch-offspring", type=int, help="offspring per generation in 2. (default 24)")
    parser.add_argument("--dispatch-generations", type=int, help="last generation of 2.'s runs (default 3)")
    parser.add_argument("--dispatch-repeats", type=int, help="runs in 2. (default 2)")
    parser.add_argument("--records", type=int, help="record writes per side, local disk (default 200)")
    parser.add_argument("--s3-records", type=int, help="record writes per side, S3 (default 60)")
    parser.add_argument("--checkpoints", type=int, help="checkpoint writes per side, local disk (default 20)")
    parser.add_argument("--s3-checkpoints", type=int, help="checkpoint writes per side, S3 (default 10)")
    parser.add_argument("--checkpoint-mib", type=float, help="float32 weights per checkpoint, MiB (default 2)")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 side of 3.")
    parser.add_argument("--workdir", help="where run directories and local writes go (default: a temporary one)")
    parser.add_argument("--keep-niceness", action="store_true", help="do not match Ray workers' niceness")
    args = parser.parse_args(argv)
    defaults = dict(
        trainers="1,2,4",
        repeats=3,
        generations=4,
        offspring=8,
        epochs=1,
        dispatch_offspring=24,
        dispatch_generations=3,
        dispatch_repeats=2,
        records=200,
        s3_records=60,
        checkpoints=20,
        s3_checkpoints=10,
        checkpoint_mib=2.0,
    )
    if args.quick:
        defaults.update(
            repeats=1,
            generations=2,
            offspring=4,
            dispatch_offspring=8,
            dispatch_generations=2,
            dispatch_repeats=1,
            records=20,
            s3_records=10,
            checkpoints=3,
            s3_checkpoints=3,
            checkpoint_mib=1.0,
        )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.trainers = sorted({int(n) for n in str(args.trainers).split(",")} | {1})  # T1 is every ratio's base
    args.dispatch_trainers = args.dispatch_trainers or max(args.trainers)
    slots = args.worker_nodes * args.cpus_per_node
    if max(args.trainers + [args.dispatch_trainers]) > slots:
        parser.error(f"{max(args.trainers)} trainers need {max(args.trainers)} CPUs; the worker nodes have {slots}")

    os.environ.pop("RAY_ADDRESS", None)  # our own cluster, never one this shell points at
    # the trainers (started by the cluster's nodes, which inherit this environment) import this evopop
    package_root = str(Path(evopop.__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    started = time.perf_counter()
    load = LoadSampler()
    load.start()
    n_cores = cores()
    with ExitStack() as stack:
        workdir = (
            Path(args.workdir)
            if args.workdir
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cluster-")))
        )
        workdir = workdir / f"bench-cluster-{os.getpid()}"
        workdir.mkdir(parents=True)
        if args.workdir:
            stack.callback(shutil.rmtree, workdir, True)
        from ray.cluster_utils import Cluster

        print(f"cluster: head (0 CPUs) + {args.worker_nodes} worker nodes x {args.cpus_per_node} CPUs", flush=True)
        cluster = Cluster()
        stack.callback(cluster.shutdown)  # runs last: after ray.shutdown below
        cluster.add_node(num_cpus=0, include_dashboard=False)
        for _ in range(args.worker_nodes):
            cluster.add_node(num_cpus=args.cpus_per_node)
        ray.init(address=cluster.address, log_to_driver=False)
        stack.callback(ray.shutdown)
        signal.signal(signal.SIGTERM, _terminate)  # after ray.init, which installs a handler of its own
        cluster.wait_for_nodes()
        niceness = os.nice(0) if args.keep_niceness else match_worker_niceness()
        worker_niceness = ray_worker_niceness()

        ancestors: dict = {}
        print("1. generation wall time: local, " + ", ".join(f"{n} trainer(s)" for n in args.trainers), flush=True)
        scaling = bench_scaling(args, workdir, ancestors, n_cores)
        print(f"2. driver cost per individual ({args.dispatch_trainers} trainers, trivial offspring)", flush=True)
        driver = bench_driver(args, workdir, ancestors)
        ray.shutdown()
        cluster.shutdown()  # the storage part needs no cluster
        print("3. record and checkpoint writes: local disk, S3 (moto)", flush=True)
        storage = bench_storage(args, workdir, scaling["runs"]["trainers=1"][0]["run_dir"])

    results = {
        "machine": {
            "cores": n_cores,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "pyarrow": pa.__version__,
            "processor": platform.processor() or platform.machine(),
            "load_average_1min": load.stop(),
            "niceness": niceness,
            "ray_worker_niceness": worker_niceness,
        },
        "cluster": {"head_cpus": 0, "worker_nodes": args.worker_nodes, "cpus_per_node": args.cpus_per_node},
        "quick": args.quick,
        "scaling": scaling,
        "driver": driver,
        "storage": storage,
        "runtime_seconds": time.perf_counter() - started,
    }
    results["summary"] = summary_of(results)
    report(results)
    print_runtime(results["runtime_seconds"], results["machine"], n_cores)
    if args.quick:
        print("(--quick: trivial sizes, one repeat; the figures say nothing, the run says the benchmark works)")
    print_summary(results["summary"], ".4g")
    if args.json:
        write_json(args.json, results, __name__)
        print(f"figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
