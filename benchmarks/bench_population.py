#!/usr/bin/env python
"""Thousands of offspring per generation: what the driver and the storage cost per offspring (issue 24, part 2).

A trivial task (``tiny`` below: an 8-16-1 MLP on 32 random samples, one epoch of two steps) run through the real
engine (`evopop.api.evolution`, the Ray executor, 2 trainers of one CPU each on a local ``ray.init(num_cpus=2)``)
at N = 100, 1,000 and 5,000 offspring per generation. Diversity is off (the driver's study of a generation
compares every pair of siblings: at 5,000 it would be 12.5 M pairs and measure nothing else) and so is compaction
(each individual's latency is timed for up to ``compaction.seconds`` per batch size in its trainer: it would be
the trainers' whole time). Three generations: the ancestor, ``N/2`` offspring of it, ``selection: topk, k: 2``,
then ``N/2`` offspring of each of the 2 selected, so that generation 3 has N offspring and its parents are
shipped and selected like any later generation's. Per-generation figures are those of generation 3 (N
offspring); per-offspring figures are over generations 2 and 3 (1.5 N offspring).

Each size runs in a process of its own (``--child``): its own Ray cluster, and its own peak memory. Measured:

- driver CPU per offspring: the driver process's CPU time (``time.process_time``: every thread, Ray's own too;
  the trainers are other processes, so none of it is training) from the end of generation 1's selection to the
  end of generation 3's, minus what this benchmark's own sampling threads took (their ``time.thread_time``),
  divided by the offspring; also the main thread's alone, and the CPU an idle connected driver burns per second
  (Ray's threads), measured for 2 s before the run. Baseline (the ratio): the offspring's own time on its trainer
  (the ``wall_seconds`` of its record: synthesis, training, evaluation, checkpoint), i.e. how many trainers one
  driver core keeps busy with offspring this small;
- driver wall seconds per offspring over the same window (2 trainers: at best half the offspring's own time);
- where the driver's main thread spends it: the `RunRecords` methods the controller calls (record writes, the
  reads of selection, parents and ids), metered by wrapping them on the run's records object;
- driver peak RSS (``VmHWM``) and the RSS sampled every 0.1 s during generations 2-3, and its growth from
  N = 1,000 to N = 5,000;
- Ray object-store peak: the raylet's ``GetNodeStats`` (``ray._private.internal_api.node_stats``, store stats:
  bytes used, objects) sampled every 0.25 s from a driver thread;
- files and bytes under the run directory, per generation and dataset (population, layers, genomes, checkpoints,
  selection, others), by walking it after the run: what a generation leaves on the disk (files written and then
  removed, e.g. parts consolidated, are not in it; on S3 the PUT requests count every file written);
- time to load the whole run's table: ``RunRecords(run_dir).population()`` and ``.layers()`` on a fresh
  `RunRecords`, best of 3;
- storage requests per generation against an S3-compatible server: the same runs (N = 100 and 1,000) with the run
  directory on moto's server (``ThreadedMotoServer`` on loopback, in the benchmark's parent process, not in the
  driver's), counted by a WSGI middleware wrapped around the server's app (every request, from the driver and the
  trainers alike), by type (GET, PUT, HEAD, LIST, DELETE, POST) and dataset, and attributed to a generation by
  time (the driver stamps the end of each generation's selection); also the requests of loading the table.

    python -m benchmarks.bench_population                      # full run (~10 min on 2 cores)
    python -m benchmarks.bench_population --quick              # smoke run: N = 20, local storage (~30 s)
    python -m benchmarks.bench_population --json               # also write benchmarks/results/bench_population.json
    python -m benchmarks.bench_population --label after --json # add the figures beside the recorded "before"
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import parse_qs, unquote

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from benchmarks.harness import LoadSampler, arguments, command, median, print_summary, proc_status
from evopop.metrics.base import Metric
from evopop.records.storage import join
from evopop.tasks.base import Task

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "evopop-population"
KEEP = 2  # selection: topk, k
DATASETS = ("population", "layers", "genomes", "checkpoints", "selection")


# == the trivial task ================================================================================
class MeanError(Metric):
    def __init__(self):
        self.total, self.n = 0.0, 0

    def update(self, output, target):
        self.total += float((output - target).abs().sum())
        self.n += target.numel()

    def compute(self):
        return {"mae": self.total / max(1, self.n)}


class Tiny(Task):
    """An 8-16-1 MLP regressing the sum of two of its inputs: 32 training samples (two steps of 16), 16 held out."""

    default_metric = "holdout_mae"
    default_direction = "min"

    def __init__(self, features: int = 8, hidden: int = 16, n: int = 32):
        g = torch.Generator().manual_seed(0)
        self.features, self.hidden = features, hidden
        x = torch.randn(n + n // 2, features, generator=g)
        y = x[:, :2].sum(dim=1, keepdim=True) + 0.1 * torch.randn(len(x), 1, generator=g)
        self._train, self._holdout = TensorDataset(x[:n], y[:n]), TensorDataset(x[n:], y[n:])

    def build_model(self):
        return nn.Sequential(nn.Linear(self.features, self.hidden), nn.Tanh(), nn.Linear(self.hidden, 1))

    def example_input(self):
        return torch.zeros(1, self.features)

    def train_set(self):
        return self._train

    def eval_sets(self):
        return {"holdout": self._holdout}

    def loss(self, output, target):
        return F.mse_loss(output, target)

    def metrics(self):
        return MeanError()

    def metric_names(self):
        return ["mae"]


def tiny(**kwargs) -> Tiny:
    """The task factory the benchmark's config names: ``benchmarks.bench_population:tiny``."""
    return Tiny(**kwargs)


def population_config(n: int, storage: str, generations: int, trainers: int) -> dict:
    return {
        "run": {"name": f"population-{n}", "seed": 1},
        "task": {"name": "benchmarks.bench_population:tiny", "paths": [str(ROOT)]},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.05},
        "evolution": {
            "generations": generations,
            "offspring": max(1, n // KEEP),
            "environment": {"c": 0.9, "mode": "budget"},
        },
        "selection": {"rule": "topk", "k": KEEP},
        "resources": {"trainers": trainers, "cpus_per_trainer": 1, "torch_threads": 1},
        "diversity": {"enabled": False},
        "compaction": {"enabled": False},
        "storage": {"path": storage},
    }


# == the driver (a child process per size) ===========================================================
class Samplers(threading.Thread):
    """The driver's RSS every 0.1 s and the object store's use every 0.25 s; its own CPU kept apart."""

    def __init__(self):
        super().__init__(daemon=True)
        self.rss: list[tuple[float, int]] = []
        self.store: list[tuple[float, int, int, int]] = []  # time, bytes used, objects, objects created so far
        self.cpu = 0.0
        self._halt = threading.Event()
        self._node = None

    def _store_stats(self):
        import ray
        from ray._private.internal_api import node_stats

        if self._node is None:
            self._node = next(n for n in ray.nodes() if n["Alive"])
        s = node_stats(self._node["NodeManagerAddress"], self._node["NodeManagerPort"], include_memory_info=False)
        st = s.store_stats
        return st.object_store_bytes_used, st.num_local_objects, st.cumulative_created_objects

    def run(self):
        tick = 0
        while not self._halt.wait(0.1):
            start = time.thread_time()
            now = time.time()
            self.rss.append((now, proc_status("VmRSS")))
            if tick % 5 == 0:
                try:
                    self.store.append((now, *self._store_stats()))
                except Exception:  # the cluster going down at the end
                    pass
            tick += 1
            self.cpu += time.thread_time() - start

    def stop(self):
        self._halt.set()
        self.join()


class Clock:
    """Wall, process CPU, main-thread CPU and the sampler's CPU, at one moment (``time.time`` too: the S3 requests
    counted in the parent process are attributed to generations by it)."""

    def __init__(self, samplers: Samplers):
        self.epoch, self.wall = time.time(), time.perf_counter()
        self.cpu, self.main, self.sampler_cpu = time.process_time(), time.thread_time(), samplers.cpu

    def since(self, start: Clock) -> dict:
        return {
            "wall": self.wall - start.wall,
            "cpu": (self.cpu - start.cpu) - (self.sampler_cpu - start.sampler_cpu),
            "main_cpu": self.main - start.main,
            "t0": start.epoch,
            "t1": self.epoch,
        }


def _generation_hook(samplers: Samplers):
    from evopop.engine.hooks import Hook

    class Generations(Hook):
        """Stamps each generation: from the previous one's selection (or its own first batch) to its selection."""

        def __init__(self):
            self.marks: dict[int, Clock] = {}
            self.started: dict[int, Clock] = {}
            self.sizes: dict[int, int] = {}
            self.rss: dict[int, float] = {}  # MB at each selection

        def batch_started(self, batch):
            if not batch.baselines:
                self.started.setdefault(batch.generation, Clock(samplers))
                self.sizes[batch.generation] = batch.total

        def selected(self, generation, selected):
            self.marks[generation] = Clock(samplers)
            self.rss[generation] = proc_status("VmRSS") / 2**20

        def windows(self) -> dict[int, dict]:
            out = {}
            for g, end in sorted(self.marks.items()):
                start = self.marks.get(g - 1, self.started[g])
                out[g] = {**end.since(start), "offspring": self.sizes[g]}
            return out

    return Generations()


class Meter:
    """Wraps one method of the run's records: calls, main-thread CPU and wall time, per generation window."""

    def __init__(self, owner, name: str):
        self.name, self.calls, self.cpu, self.wall = name, 0, 0.0, 0.0
        self._inner = getattr(owner, name)
        setattr(owner, name, self)

    def __call__(self, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return self._inner(*args, **kwargs)
        finally:
            self.calls += 1
            self.cpu += time.thread_time() - cpu
            self.wall += time.perf_counter() - wall

    def snapshot(self) -> dict:
        return {"calls": self.calls, "cpu": self.cpu, "wall": self.wall}


METERED = (
    "write_individual",
    "write_selection",
    "individuals",
    "recorded_ids",
    "has_selection",
    "read_checkpoint",
    "metadata",
    "population",
)


def walk(run_dir: str) -> list[tuple[str, int]]:
    """(path relative to the run directory, bytes) of every file under it, local or on S3."""
    import pyarrow.fs as pafs

    from evopop.records.storage import filesystem_of

    fs, root = filesystem_of(run_dir)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return [(i.path[len(root) :].lstrip("/"), i.size) for i in infos if i.type == pafs.FileType.File]


def dataset_and_generation(rel: str) -> tuple[str, int | None]:
    """The dataset a run-directory file belongs to, and its generation (from ``generation=G`` or ``g<G>-``)."""
    parts = rel.split("/")
    dataset = parts[0] if parts[0] in DATASETS else "others"
    generation = None
    for part in parts[1:]:
        if part.startswith("generation="):
            generation = int(part.split("=", 1)[1])
        elif part.startswith("g") and "-" in part:
            head = part[1:].split("-", 1)[0]
            generation = int(head) if head.isdigit() else None
    return dataset, generation


def files_written(run_dir: str) -> dict:
    """Files and bytes under the run directory: per generation and dataset, and in all."""
    per: dict = defaultdict(lambda: defaultdict(lambda: {"files": 0, "bytes": 0}))
    for rel, size in walk(run_dir):
        dataset, generation = dataset_and_generation(rel)
        cell = per[str(generation) if generation is not None else "run"][dataset]
        cell["files"] += 1
        cell["bytes"] += size
    return {g: dict(d) for g, d in sorted(per.items())}


def load_times(run_dir: str, repeats: int) -> dict:
    """Best-of-``repeats`` seconds of reading the whole run's population and layers tables, each on a fresh
    `RunRecords`, with the rows read and the wall-clock windows (for the S3 request count of each)."""
    from evopop.records.run import RunRecords

    out = {}
    for what in ("population", "layers"):
        seconds, windows = [], []
        for _ in range(repeats):
            t0, start = time.time(), time.perf_counter()
            frame = getattr(RunRecords(run_dir), what)()
            seconds.append(time.perf_counter() - start)
            windows.append([t0, time.time()])
        out[what] = {"seconds": min(seconds), "all_seconds": seconds, "rows": len(frame), "windows": windows}
    return out


def trimmed_rss() -> int | None:
    """This process's RSS once the C heap has returned what is free to the system (glibc's ``malloc_trim``): what
    the RSS holds beyond it is retained by the allocator, not in use. None where there is no glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return proc_status("VmRSS")


def _evopop_file() -> str:
    import evopop

    return evopop.__file__


def engine() -> dict:
    """Which engine was measured: where evopop is imported from, its git commit, and the engine files that differ
    from it (uncommitted changes); a tree without git (an export) says so, and ``--note`` says what it is."""
    import evopop

    package = Path(evopop.__file__).resolve().parent
    out = {"evopop": str(package)}
    try:
        git = ["git", "-C", str(package.parent)]
        out["commit"] = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run([*git, "status", "--porcelain", "--", "evopop"], capture_output=True, text=True)
        out["uncommitted_engine_files"] = [line[3:] for line in status.stdout.splitlines()]
    except (OSError, subprocess.CalledProcessError):
        out["commit"] = None
    return out


def child(spec: dict) -> dict:
    """One run at one size, in this process as its driver; the figures as a dict."""
    import ray

    from evopop.api import evolution
    from evopop.config import load_config
    from evopop.engine.plan import plan_run
    from evopop.engine.progress import Progress

    logging.getLogger("ray").setLevel(logging.WARNING)
    n, run_dir = spec["n"], spec["run_dir"]
    ray.init(address="local", num_cpus=spec["cpus"], include_dashboard=False, log_to_driver=False)
    import evopop

    where = ray.get(ray.remote(num_cpus=0)(_evopop_file).remote())
    if where != evopop.__file__:  # the trainers must run the engine measured (PYTHONPATH, an editable install)
        raise RuntimeError(f"the driver runs {evopop.__file__}, Ray's workers {where}")
    samplers = Samplers()
    samplers.start()
    # Ray's threads in a connected driver that does nothing
    idle0 = Clock(samplers)
    time.sleep(2.0)
    idle = Clock(samplers).since(idle0)
    config = load_config(population_config(n, spec["storage"], spec["generations"], spec["trainers"]))
    plan = plan_run(config)
    hook = _generation_hook(samplers)
    quiet = open(os.devnull, "w")  # noqa: SIM115  (the progress lines a real run prints to its log)
    run = evolution(config, run_dir, plan=plan, hooks=[Progress(plan.metric, plan.direction, quiet), hook])
    meters = {name: Meter(run.records, name) for name in METERED}
    meters["load_parent"] = Meter(run, "_load_parent")
    meter_marks: dict[int, dict] = {}

    class MeterMarks:  # the meters' totals at each selection (a hook after the clock's)
        def __getattr__(self, name):
            return lambda *args: None

        def selected(self, generation, selected):
            meter_marks[generation] = {name: m.snapshot() for name, m in meters.items()}

    run.hooks.append(MeterMarks())
    own: dict[int, list[float]] = defaultdict(list)  # each offspring's develop() time on its trainer
    inner_run = run.executor.run

    def run_and_time(specs, load_parent):
        for result in inner_run(specs, load_parent):
            if result.outcome.wall_seconds is not None:
                own[result.spec.generation].append(result.outcome.wall_seconds)
            yield result

    run.executor.run = run_and_time
    rss_before = proc_status("VmRSS")
    start = Clock(samplers)
    run.run()
    end = Clock(samplers)
    samplers.stop()
    quiet.close()
    hwm = proc_status("VmHWM")
    rss_end, rss_trimmed = proc_status("VmRSS"), trimmed_rss()
    import pyarrow as pa

    arrow_pool = pa.default_memory_pool()
    arrow = {"backend": arrow_pool.backend_name, "max_mb": arrow_pool.max_memory() / 2**20}
    arrow["allocated_mb"] = arrow_pool.bytes_allocated() / 2**20
    windows = hook.windows()
    measured = [g for g in windows if g >= 2]
    first, last = measured[0], measured[-1]
    t_from, t_to = windows[first]["t0"], windows[last]["t1"]
    rss_in = [r for t, r in samplers.rss if t_from <= t <= t_to]
    store_in = [s for s in samplers.store if t_from - 1 <= s[0] <= t_to + 1]
    # the offspring's own time on their trainers (the ratio's baseline), from a fresh read of the records
    from evopop.records.run import RunRecords

    population = RunRecords(run_dir).population()
    offspring = population[population["generation"] >= 2]
    failed = int((offspring["status"] != "ok").sum())
    loads = load_times(run_dir, spec["load_repeats"])
    files = files_written(run_dir)
    ray.shutdown()

    def meter_delta(g: int) -> dict:
        before = meter_marks.get(g - 1, {name: {"calls": 0, "cpu": 0.0, "wall": 0.0} for name in meters})
        return {
            name: {k: meter_marks[g][name][k] - before[name][k] for k in ("calls", "cpu", "wall")}
            for name in meters
            if meter_marks[g][name]["calls"] - before[name]["calls"]
        }

    return {
        "n": n,
        "storage": spec["where"],
        "generations": windows,
        "measured_generations": measured,
        "meters": {str(g): meter_delta(g) for g in measured},
        "run_seconds": end.since(start)["wall"],
        "offspring": int(len(offspring)),
        "failed": failed,
        "offspring_wall_seconds_median": median([x for g in measured for x in own[g]]),
        "offspring_wall_seconds_sum": sum(x for g in measured for x in own[g]),
        "offspring_train_seconds_median": float(offspring["train_seconds"].median()),
        "idle_driver_cpu_per_second": idle["cpu"] / idle["wall"],
        "rss_before_run_mb": rss_before / 2**20,
        "rss_peak_generations_mb": max(rss_in, default=0) / 2**20,
        "rss_start_generations_mb": (rss_in[0] if rss_in else 0) / 2**20,
        "rss_end_generations_mb": (rss_in[-1] if rss_in else 0) / 2**20,
        "vm_hwm_mb": hwm / 2**20,
        "rss_at_selection_mb": hook.rss,
        "rss_after_run_mb": rss_end / 2**20,
        "rss_after_run_trimmed_mb": rss_trimmed / 2**20 if rss_trimmed else None,
        "arrow_memory_pool": arrow,
        "object_store_peak_bytes": max((s[1] for s in store_in), default=0),
        "object_store_peak_objects": max((s[2] for s in store_in), default=0),
        "object_store_created_objects": (store_in[-1][3] - store_in[0][3]) if len(store_in) > 1 else 0,
        "object_store_samples": len(store_in),
        "files": files,
        "load": loads,
    }


# == S3: moto on loopback, every request counted ======================================================
class RequestLog:
    """WSGI middleware: every request the S3 server gets, with its time, type and dataset."""

    def __init__(self, app, prefix: str):
        self.app, self.prefix = app, prefix
        self.entries: list[tuple[float, str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        entry = (time.time(), *self.classify(environ))
        with self.lock:
            self.entries.append(entry)
        return self.app(environ, start_response)

    def classify(self, environ) -> tuple[str, str]:
        method = environ.get("REQUEST_METHOD", "?")
        path = unquote(environ.get("PATH_INFO", ""))
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        host = environ.get("HTTP_HOST", "")
        key = path.lstrip("/")
        if not host.startswith(BUCKET + "."):  # path-style addressing: /bucket/key
            key = key.split("/", 1)[1] if "/" in key else ""
        kind = method
        if method == "GET" and (not key or "list-type" in query or "prefix" in query or "delimiter" in query):
            kind = "LIST"
            key = query.get("prefix", [""])[0]
        elif method == "POST" and "delete" in query:
            kind = "DELETE"
        # runs/<run name>/<dataset>/...: the dataset (a LIST of a folder names it by its prefix)
        rel = key[len(self.prefix) :].lstrip("/").split("/", 1) if key.startswith(self.prefix) else []
        dataset = dataset_and_generation(rel[1])[0] if len(rel) == 2 and rel[1] else "run directory"
        return kind, dataset

    def between(self, t0: float, t1: float) -> dict:
        with self.lock:
            hits = [e for e in self.entries if t0 < e[0] <= t1]
        kinds = Counter(e[1] for e in hits)
        datasets = Counter(e[2] for e in hits)
        by = defaultdict(Counter)
        for e in hits:
            by[e[2]][e[1]] += 1
        return {
            "total": len(hits),
            "by_type": dict(sorted(kinds.items())),
            "by_dataset": dict(sorted(datasets.items())),
            "by_dataset_type": {d: dict(sorted(c.items())) for d, c in sorted(by.items())},
        }


def start_moto(stack: ExitStack, prefix: str):
    """(base s3:// URI of a fresh bucket, request log) of a moto S3 server on 127.0.0.1; None without moto."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        return None
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    stack.callback(server.stop)
    host, port = server.get_host_and_port()
    wsgi = getattr(server, "_server", None)  # moto's werkzeug server (a private attribute)
    if wsgi is None or not hasattr(wsgi, "app"):
        raise RuntimeError("cannot count moto's requests: its server has no WSGI app to wrap")
    log = RequestLog(wsgi.app, prefix)
    wsgi.app = log
    boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=BUCKET)
    return f"s3://testing:testing@{BUCKET}?endpoint_override={host}:{port}&scheme=http&region=us-east-1", log


# == the parent: one child per size ===================================================================
def run_child(spec: dict, workdir: Path) -> dict:
    out = workdir / f"child-{spec['where']}-{spec['n']}.json"
    spec = {**spec, "out": str(out)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_population", "--child", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"the N={spec['n']} run ({spec['where']}) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return json.loads(out.read_text())


def figures(r: dict) -> dict:
    """The headline figures of one run."""
    g = r["generations"]
    measured = [str(x) for x in r["measured_generations"]]
    offspring = sum(g[x]["offspring"] for x in measured)
    cpu = sum(g[x]["cpu"] for x in measured)
    main = sum(g[x]["main_cpu"] for x in measured)
    wall = sum(g[x]["wall"] for x in measured)
    last = measured[-1]
    files = r["files"].get(last, {})
    own = r["offspring_wall_seconds_sum"] / max(1, r["offspring"])
    out = {
        "n": r["n"],
        "offspring_measured": offspring,
        "last_generation_offspring": g[last]["offspring"],
        "failed": r["failed"],
        "driver_cpu_ms_per_offspring": 1000 * cpu / offspring,
        "driver_cpu_ms_per_offspring_minus_idle": 1000 * (cpu - r["idle_driver_cpu_per_second"] * wall) / offspring,
        "driver_main_thread_cpu_ms_per_offspring": 1000 * main / offspring,
        "driver_wall_ms_per_offspring": 1000 * wall / offspring,
        "offspring_own_ms": 1000 * own,
        "driver_cpu_vs_offspring_own": cpu / offspring / own,
        "generation_wall_s": {x: g[x]["wall"] for x in measured},
        "driver_cpu_s": {x: g[x]["cpu"] for x in measured},
        "idle_driver_cpu_per_second": r["idle_driver_cpu_per_second"],
        "driver_peak_rss_mb": r["vm_hwm_mb"],
        "driver_rss_peak_generations_mb": r["rss_peak_generations_mb"],
        "driver_rss_growth_generations_mb": r["rss_end_generations_mb"] - r["rss_start_generations_mb"],
        "driver_rss_before_run_mb": r["rss_before_run_mb"],
        "driver_rss_at_selection_mb": r["rss_at_selection_mb"],
        "driver_rss_after_run_mb": r["rss_after_run_mb"],
        "driver_rss_after_run_trimmed_mb": r["rss_after_run_trimmed_mb"],
        "arrow_pool_max_mb": r["arrow_memory_pool"]["max_mb"],
        "object_store_peak_bytes": r["object_store_peak_bytes"],
        "object_store_peak_objects": r["object_store_peak_objects"],
        "object_store_created_objects": r["object_store_created_objects"],
        "files_per_generation": {d: c["files"] for d, c in files.items()},
        "bytes_per_generation": {d: c["bytes"] for d, c in files.items()},
        "files_per_generation_total": sum(c["files"] for c in files.values()),
        "bytes_per_generation_total": sum(c["bytes"] for c in files.values()),
        "files_in_run": sum(c["files"] for gen in r["files"].values() for c in gen.values()),
        "load_population_s": r["load"]["population"]["seconds"],
        "load_layers_s": r["load"]["layers"]["seconds"],
        "population_rows": r["load"]["population"]["rows"],
        "layers_rows": r["load"]["layers"]["rows"],
        "main_thread_ms_per_offspring_by_call": {
            name: 1000 * sum(r["meters"][x].get(name, {}).get("cpu", 0.0) for x in measured) / offspring
            for name in sorted({k for x in measured for k in r["meters"][x]})
        },
        "calls_last_generation": {name: m["calls"] for name, m in r["meters"][last].items()},
        "run_seconds": r["run_seconds"],
    }
    if "requests" in r:
        q = r["requests"]
        out["s3_requests_per_generation"] = q["generations"][last]["total"]
        out["s3_requests_per_generation_by_type"] = q["generations"][last]["by_type"]
        out["s3_requests_per_generation_by_dataset"] = q["generations"][last]["by_dataset_type"]
        out["s3_requests_per_offspring"] = q["generations"][last]["total"] / g[last]["offspring"]
        out["s3_requests_load_population"] = q["load"]["population"]["total"]
        out["s3_requests_load_layers"] = q["load"]["layers"]["total"]
        out["s3_requests_load_population_by_type"] = q["load"]["population"]["by_type"]
    return out


def print_table(rows: list[dict]) -> None:
    print(
        f"\n{'storage':>7} {'N':>6} {'CPU ms/off':>10} {'main ms':>8} {'wall ms':>8} {'own ms':>7} {'peak RSS':>9} "
        f"{'store peak':>10} {'files/gen':>9} {'MB/gen':>7} {'load pop s':>10} {'load lay s':>10} {'S3 req/gen':>10} "
        f"{'req/off':>7}"
    )
    for f in rows:
        s3 = f.get("s3_requests_per_generation")
        print(
            f"{f['storage']:>7} {f['n']:>6,} {f['driver_cpu_ms_per_offspring']:>10.2f} "
            f"{f['driver_main_thread_cpu_ms_per_offspring']:>8.2f} {f['driver_wall_ms_per_offspring']:>8.2f} "
            f"{f['offspring_own_ms']:>7.1f} {f['driver_peak_rss_mb']:>7.0f}MB "
            f"{f['object_store_peak_bytes'] / 1024:>8.0f}KB "
            f"{f['files_per_generation_total']:>9,} {f['bytes_per_generation_total'] / 2**20:>7.1f} "
            f"{f['load_population_s']:>10.2f} {f['load_layers_s']:>10.2f} "
            f"{s3 if s3 is not None else '-':>10} {f['s3_requests_per_offspring'] if s3 is not None else 0:>7.2f}"
        )
    print(
        "  CPU ms/off: driver process CPU per offspring (generations 2-3); main: its main thread; wall: driver wall\n"
        "  per offspring (2 trainers); own: an offspring's own time on its trainer; files/gen, MB/gen, S3 req/gen:\n"
        "  generation 3 (N offspring)."
    )
    for f in rows:
        calls = ", ".join(f"{k} {v:.2f}" for k, v in f["main_thread_ms_per_offspring_by_call"].items() if v >= 0.01)
        print(f"  {f['storage']} N={f['n']:,} main-thread ms per offspring in RunRecords calls: {calls}")
        print(f"    files per generation by dataset: {f['files_per_generation']}")
        if "s3_requests_per_generation_by_dataset" in f:
            print(f"    S3 requests in generation 3 by dataset and type: {f['s3_requests_per_generation_by_dataset']}")
            print(
                f"    S3 requests to load the whole table: population {f['s3_requests_load_population']} "
                f"{f['s3_requests_load_population_by_type']}, layers {f['s3_requests_load_layers']}"
            )


def summary(rows: list[dict]) -> dict:
    s: dict = {}
    for f in rows:
        tag = f"{f['storage']}_{f['n']}"
        s[f"driver_cpu_ms_per_offspring_{tag}"] = round(f["driver_cpu_ms_per_offspring"], 3)
        s[f"driver_wall_ms_per_offspring_{tag}"] = round(f["driver_wall_ms_per_offspring"], 3)
        s[f"driver_peak_rss_mb_{tag}"] = round(f["driver_peak_rss_mb"], 1)
        s[f"object_store_peak_kb_{tag}"] = round(f["object_store_peak_bytes"] / 1024, 1)
        s[f"files_per_generation_{tag}"] = f["files_per_generation_total"]
        s[f"load_population_s_{tag}"] = round(f["load_population_s"], 3)
        if "s3_requests_per_generation" in f:
            s[f"s3_requests_per_generation_{tag}"] = f["s3_requests_per_generation"]
    local = {f["n"]: f for f in rows if f["storage"] == "local"}
    if 1000 in local and 5000 in local:
        s["driver_peak_rss_growth_mb_1000_to_5000"] = round(
            local[5000]["driver_peak_rss_mb"] - local[1000]["driver_peak_rss_mb"], 1
        )
    return s


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        spec = json.loads(sys.argv[2])
        result = child(spec)
        Path(spec["out"]).write_text(json.dumps(result, default=str))
        return
    parser = arguments(__name__, __doc__, quick="smoke run: N = 20, local storage only")
    parser.add_argument("--sizes", default="100,1000,5000", help="offspring per generation, local storage")
    parser.add_argument("--s3-sizes", default="100,1000", help="offspring per generation, on moto's S3 server")
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--trainers", type=int, default=2)
    parser.add_argument("--label", default="before", help="the JSON key the figures go under (before, after)")
    parser.add_argument("--note", default="", help="what engine this is, recorded with the figures")
    args = parser.parse_args()
    sizes = [20] if args.quick else [int(x) for x in args.sizes.split(",") if x]
    s3_sizes = [] if args.quick else [int(x) for x in args.s3_sizes.split(",") if x]
    started = time.perf_counter()
    load = LoadSampler()
    load.start()
    rows, raw = [], []
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-population-")))
        cases = [("local", n) for n in sizes] + [("s3", n) for n in s3_sizes]
        moto = start_moto(stack, "runs/") if s3_sizes else None
        if s3_sizes and moto is None:
            print("  s3: skipped (moto/boto3 not installed: pip install -e '.[test]')", flush=True)
            cases = [c for c in cases if c[0] == "local"]
        for where, n in cases:
            base = str(workdir / "runs") if where == "local" else join(moto[0], "runs")
            run_dir = join(base, f"population-{n}")
            spec = {
                "n": n,
                "where": where,
                "run_dir": run_dir,
                "storage": base,
                "generations": args.generations,
                "trainers": args.trainers,
                "cpus": 2,
                "load_repeats": 3 if where == "local" else 1,
            }
            t0 = time.perf_counter()
            print(f"N={n:,} ({where}): running ...", flush=True)
            r = run_child(spec, workdir)
            if where == "s3":
                log = moto[1]
                gens = r["generations"]
                r["requests"] = {
                    "generations": {g: log.between(w["t0"], w["t1"]) for g, w in gens.items()},
                    "load": {what: log.between(*r["load"][what]["windows"][0]) for what in ("population", "layers")},
                }
            f = {"storage": where, **figures(r)}
            rows.append(f)
            raw.append(r)
            print(
                f"  done in {time.perf_counter() - t0:.0f}s: driver {f['driver_cpu_ms_per_offspring']:.2f} ms CPU "
                f"and {f['driver_wall_ms_per_offspring']:.2f} ms wall per offspring, "
                f"peak RSS {f['driver_peak_rss_mb']:.0f} MB"
                + (f", {f['s3_requests_per_generation']} S3 requests in generation 3" if where == "s3" else ""),
                flush=True,
            )
            if f["failed"]:
                print(f"  WARNING: {f['failed']} offspring failed", flush=True)
    busy = load.stop()
    print_table(rows)
    s = summary(rows)
    s["runtime_s"] = round(time.perf_counter() - started, 1)
    print_summary(s)
    print(
        f"\nruntime {s['runtime_s']:.0f}s; machine load (1-min average) {busy['mean']:.1f} mean, "
        f"{busy['max']:.1f} max, on {os.cpu_count()} cores"
    )
    if args.json:
        write_results(args.json, args.label, rows, raw, s, busy, args.note)


def write_results(path: str, label: str, rows: list[dict], raw: list[dict], s: dict, busy: dict, note: str) -> None:
    """Put this run's figures under ``label`` ("before", "after") in the JSON, keeping the other labels there
    (harness.write_json's ``run`` entry: the command and when, per label)."""
    path = Path(path)
    existing = json.loads(path.read_text()) if path.exists() else {}
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    import ray

    existing[label] = {
        "run": {"command": command(__name__), "measured": stamp},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "load_average_1min": busy,
        },
        "engine": {**engine(), "note": note},
        "setup": {
            "task": "benchmarks.bench_population:tiny (8-16-1 MLP, 32 samples, 1 epoch of 2 steps)",
            "generations": "1 ancestor; N/2 offspring of it; topk k=2; N/2 offspring of each (generation 3: N)",
            "resources": "ray.init(num_cpus=2), 2 trainers x 1 CPU, 1 torch thread",
            "off": "diversity (pairwise study of every sibling pair), compaction (latency timing per individual)",
        },
        "summary": s,
        "rows": rows,
        "raw": raw,
    }
    # harness.write_json's `run` entry at the top level names the newest measurement (benchmarks/table.py reads it)
    existing["run"] = existing[label]["run"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(existing, indent=2, default=str) + "\n")
    print(f"wrote {path} ({label})")


if __name__ == "__main__":
    main()
