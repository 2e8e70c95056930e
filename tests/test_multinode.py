"""Nodes that die, for real: a Ray cluster of separate processes on this machine (`LocalCluster`: a
head with no CPUs and two 1-CPU worker nodes, one trainer each), the driver a separate
``python -m evopop`` process, and each fault dealt to whole process trees by signal, mid-generation:

- a worker node SIGKILLed;
- a worker node frozen (SIGSTOP): silent, its connections open, declared dead by Ray's health check;
- a killed node restarted: it joins again and trainers are placed on it;
- the head and the driver SIGKILLed together, then ``evopop resume`` on a fresh head, from "another
  host" (the run lock says so), without the lock deleted by hand.

Each run's records (read raw from its Parquet files, not through evopop's reader, which drops
duplicate rows) and checkpoints must equal those of an uninterrupted run of the same config with the
local executor (same thread count: bit-identical; timing and placement columns aside): a record lost,
doubled or different fails the test. Each test has a hard time limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from evopop.local_cluster import ClusterError, LocalCluster
from evopop.records.checkpoints import Checkpoint, GenomeFile

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
TINY = ROOT / "configs" / "tiny.yaml"
WORKERS = ["w1", "w2"]
HEALTH_CHECK_S = 10.0  # a silent node is declared dead after about this long
MAX_RETRIES = 2
OVERRIDES = [
    "resources.trainers=2",
    "resources.cpus_per_trainer=1",
    "resources.custom={evopop_trainer: 1}",
    f"resources.max_retries={MAX_RETRIES}",
    "evolution.generations=3",
    "evolution.offspring=3",
    "train.epochs=1",
    "diversity.enabled=false",
    "task.name=user_tasks:flaky",  # the shapes task, which can be slowed and reports its trainers' pids
]
STEP_SLEEP = 0.4  # s per training step (8 a run): ~3 s an individual, a mid-generation moment to strike in
# columns that say when, how fast or where an individual ran, not what it is
PLACEMENT = {"train_seconds", "samples_per_second", "node_id", "worker_id", "wall_seconds", "finished_at", "attempts"}
DATASETS = {  # the record datasets compared, and what identifies a row of each
    "population": ("individual_id",),
    "layers": ("individual_id", "layer"),
    "selection": ("individual_id",),
    "rungs": ("individual_id", "rung"),
    "promotion": ("individual_id", "rung"),
}


# -- the driver: a process of its own ------------------------------------------------------------
class Driver:
    """``python -m evopop ARGS`` in a session of its own (SIGKILLed as a whole); its output lines
    kept with the time each arrived."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log = log
        self.lines: list[tuple[float, str]] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "evopop", *args],
            cwd=str(ROOT),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.log, "w") as out:
            for line in self.process.stdout:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                out.write(line)
                out.flush()

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def first(self, text: str) -> float | None:
        """When the first line containing ``text`` arrived (time.monotonic()); None if none did."""
        return next((at for at, line in self.lines if text in line), None)

    def wait(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the driver did not finish in {timeout:g} s; its output:\n{self.output}") from None
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


def driver_env(cluster: LocalCluster) -> dict[str, str]:
    env = cluster.env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return env


# -- the cluster and the reference, shared by the tests ---------------------------------------
@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory):
    logs = tmp_path_factory.mktemp("reference")
    # the reference run (local executor, no Ray) is computed while the cluster starts
    reference = logs / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    local = Driver(
        ["run", "--run-dir", str(reference), str(TINY), *OVERRIDES, "resources.executor=local"], env, logs / "out"
    )
    cluster = LocalCluster(WORKERS, env={"PYTHONPATH": str(TESTS)}, health_check_s=HEALTH_CHECK_S)
    try:
        cluster.start()
        assert local.wait(300) == 0, local.output
        yield cluster, reference
    finally:
        local.kill()
        cluster.stop()


@pytest.fixture
def cluster(module_cluster):
    """The module's cluster as it started (a head, w1 and w2 registered), whatever the last test did to it."""
    cluster, _ = module_cluster
    if cluster.head is None or not cluster.head.alive:
        cluster.restart_head()
    for name, node in list(cluster.nodes.items()):
        if name not in WORKERS or node.frozen or not node.alive:
            cluster.kill(name)
    for name in WORKERS:
        if not cluster.nodes[name].alive:
            cluster.add_node(name, wait=False)
    try:
        cluster.wait_for_nodes(WORKERS, timeout_s=60)
    except ClusterError:  # alive, but declared dead (a node thawed, say): started again
        registered = cluster.registered()
        for name in set(WORKERS) - registered:
            cluster.kill(name)
            cluster.add_node(name)
    return cluster


@pytest.fixture
def reference(module_cluster) -> Path:
    return module_cluster[1]


@pytest.fixture
def drivers():
    """Drivers a test started: none outlives it."""
    started: list[Driver] = []
    yield started
    for driver in started:
        driver.kill()


def start_run(
    cluster, drivers, tmp_path: Path, *extra: str, step_sleep: float = STEP_SLEEP
) -> tuple[Driver, Path, Path]:
    run_dir, pids = tmp_path / "run", tmp_path / "pids"
    pids.mkdir()
    args = ["run", "--run-dir", str(run_dir), str(TINY), *OVERRIDES, *extra]
    args += [f"task.args.step_sleep={step_sleep}", f"task.args.pid_dir={pids}"]
    driver = Driver(args, driver_env(cluster), tmp_path / "driver.out")
    drivers.append(driver)
    return driver, run_dir, pids


# -- striking mid-generation ----------------------------------------------------------------------
def strike_point(cluster: LocalCluster, run_dir: Path, pids: Path, driver: Driver, timeout: float = 150.0) -> str:
    """Once generation 2 has recorded its first individual and a trainer has started on another
    one of it: the worker node that trainer runs on (its individual is then seconds from done)."""
    records = run_dir / "population" / "generation=2"
    decided = run_dir / "selection" / "generation=2"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert driver.process.poll() is None, f"the driver ended before generation 2:\n{driver.output}"
        assert not decided.exists(), "generation 2 was decided before a moment to strike in it was seen"
        parts = [p for p in records.glob("part-*.parquet")] if records.is_dir() else []
        if parts:
            first = min(p.stat().st_mtime for p in parts)
            started = sorted((f.stat().st_mtime, int(f.name.split(".")[0])) for f in pids.iterdir())
            for mtime, pid in reversed(started):
                name = cluster.node_of(pid) if mtime >= first - 1.0 else None
                if name:
                    return name
        time.sleep(0.05)
    raise AssertionError(f"no trainer started on generation 2 within {timeout:g} s; the driver said:\n{driver.output}")


# -- the records, compared ------------------------------------------------------------------------
def raw_records(run_dir: Path, dataset: str) -> pd.DataFrame | None:
    """Every row of ``dataset`` in every Parquet file of it, as a reader outside evopop sees them."""
    folder = run_dir / dataset
    if not folder.is_dir():
        return None
    frames = []
    for path in sorted(folder.rglob("*.parquet")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        frame = pq.read_table(path).to_pandas()
        frame.insert(0, "generation", int(path.parent.name.split("=", 1)[1]))
        frame.insert(0, "_file", str(path.relative_to(run_dir)))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else None


def _missing(value) -> bool:
    try:
        return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and np.isnan(value))
    except (TypeError, ValueError):
        return False


def same(a, b) -> bool:
    """Equal values, bit for bit: missing equals missing, arrays element by element."""
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b)
    if isinstance(a, (np.ndarray, list, tuple)) or isinstance(b, (np.ndarray, list, tuple)):
        a, b = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
        return a.shape == b.shape and all(same(x, y) for x, y in zip(a.ravel(), b.ravel()))
    return bool(a == b)


def record_differences(run_dir: Path, reference: Path) -> list[str]:
    """Every way ``run_dir``'s records differ from ``reference``'s: rows lost, doubled, or different."""
    problems = []
    for dataset, key in DATASETS.items():
        got, want = raw_records(run_dir, dataset), raw_records(reference, dataset)
        if got is None or want is None:
            if (got is None) != (want is None):
                problems.append(f"{dataset}: {'missing' if got is None else 'not in the reference'}")
            continue
        key = ["generation", *key]
        doubled = got[got.duplicated(key, keep=False)]
        if len(doubled):
            problems.append(f"{dataset}: rows doubled: {doubled[[*key, '_file']].to_dict('records')}")
        got, want = got.drop_duplicates(key).set_index(key), want.drop_duplicates(key).set_index(key)
        lost, extra = want.index.difference(got.index), got.index.difference(want.index)
        if len(lost) or len(extra):
            problems.append(f"{dataset}: rows lost {list(lost)}, rows not in the reference {list(extra)}")
        if set(got.columns) != set(want.columns):
            problems.append(f"{dataset}: columns {sorted(set(got.columns) ^ set(want.columns))} differ")
        common = want.index.intersection(got.index)
        for column in sorted(set(got.columns) & set(want.columns)):
            if column in PLACEMENT or column.startswith("latency_") or column in ("_file", "run_id"):
                continue
            for row in common:
                if not same(got.at[row, column], want.at[row, column]):
                    problems.append(f"{dataset} {row} {column}: {got.at[row, column]!r} != {want.at[row, column]!r}")
    for folder, load in (("checkpoints", _checkpoint_tensors), ("genomes", _genome_tensors)):
        got_files = {p.name for p in (run_dir / folder).glob("*")} if (run_dir / folder).is_dir() else set()
        want_files = {p.name for p in (reference / folder).glob("*")} if (reference / folder).is_dir() else set()
        if got_files != want_files:
            problems.append(f"{folder}: lost {sorted(want_files - got_files)}, extra {sorted(got_files - want_files)}")
        for name in sorted(got_files & want_files):
            got_t, want_t = load(run_dir / folder / name), load(reference / folder / name)
            if got_t.keys() != want_t.keys():
                problems.append(f"{folder}/{name}: entries {sorted(set(got_t) ^ set(want_t))} differ")
            for entry in sorted(set(got_t) & set(want_t)):
                g, w = got_t[entry], want_t[entry]
                equal = torch.equal(g, w) if isinstance(g, torch.Tensor) and isinstance(w, torch.Tensor) else g == w
                if not equal:
                    problems.append(f"{folder}/{name}: {entry} differs")
    return problems


def _checkpoint_tensors(path: Path) -> dict:
    ckpt = Checkpoint.from_bytes(path.read_bytes())
    return {
        **{f"weights/{k}": v for k, v in ckpt.weights.items()},
        **{f"masks/{k}": v for k, v in ckpt.masks.items()},
        "meta": ckpt.meta,
    }


def _genome_tensors(path: Path) -> dict:
    genome = GenomeFile.from_bytes(path.read_bytes())
    return {**{f"masks/{k}": v for k, v in genome.masks.items()}, "probe": genome.probe, "meta": genome.meta}


def assert_same_records(run_dir: Path, reference: Path, driver: Driver | None = None) -> None:
    problems = record_differences(run_dir, reference)
    said = f"\nthe driver said:\n{driver.output}" if driver is not None else ""
    assert not problems, "records lost, doubled or different:\n" + "\n".join(problems[:40]) + said
    assert not list(run_dir.rglob(".tmp-*")), "a temporary file was left behind"
    assert not list(run_dir.glob(".lock*")), "the run's lock outlived its driver"


def population(run_dir: Path) -> pd.DataFrame:
    return raw_records(run_dir, "population")


def expect_line(driver: Driver, *texts: str) -> None:
    """The driver printed a line holding every one of ``texts`` (checked after the records)."""
    lines = [line for _, line in driver.lines]
    assert any(all(text in line for text in texts) for line in lines), (texts, lines[-40:])


# -- the faults -----------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_worker_node_killed_mid_generation_run_finishes_on_the_other_with_equal_records(
    cluster, reference, drivers, tmp_path
):
    driver, run_dir, pids = start_run(cluster, drivers, tmp_path)
    victim = strike_point(cluster, run_dir, pids, driver)
    survivor = next(n for n in WORKERS if n != victim)
    victim_id, survivor_id = cluster.node_id(victim), cluster.node_id(survivor)
    assert victim_id and survivor_id
    cluster.kill(victim)  # its raylet, agents and trainer: SIGKILLed together

    assert driver.wait(180) == 0, driver.output
    assert_same_records(run_dir, reference, driver)
    rows = population(run_dir)
    retried = rows[rows["attempts"] > 1]
    assert len(retried) >= 1, f"the node was killed while its trainer ran an individual:\n{driver.output}"
    assert (retried["node_id"] == survivor_id).all(), "the individual retried ran on the other node"
    assert (rows[rows["generation"] == 3]["node_id"] == survivor_id).all(), "generation 3 ran on the survivor"
    for _, row in retried.iterrows():
        assert f"{row['individual_id']}: attempt 1 of {MAX_RETRIES + 1} failed" in driver.output, driver.output
    expect_line(driver, f"node {victim_id[:12]}", " lost: ")


@pytest.mark.timeout(300)
def test_worker_node_frozen_mid_generation_is_declared_dead_in_time_and_its_work_retried(
    cluster, reference, drivers, tmp_path
):
    driver, run_dir, pids = start_run(cluster, drivers, tmp_path)
    victim = strike_point(cluster, run_dir, pids, driver)
    survivor = next(n for n in WORKERS if n != victim)
    victim_id, survivor_id = cluster.node_id(victim), cluster.node_id(survivor)
    assert victim_id and survivor_id
    cluster.freeze(victim)  # its raylet, agents and trainer stop at once, their connections open
    frozen_at = time.monotonic()

    assert driver.wait(180) == 0, driver.output
    retried_at = driver.first(f": attempt 1 of {MAX_RETRIES + 1} failed")
    assert retried_at is not None, f"no line says an individual was retried:\n{driver.output}"
    # declared dead by the health check (~HEALTH_CHECK_S), not after Ray's default of a minute or more
    assert retried_at - frozen_at < HEALTH_CHECK_S + 15, f"{retried_at - frozen_at:.1f} s:\n{driver.output}"
    print(f"frozen node: its individual retried {retried_at - frozen_at:.1f} s after it went silent")
    # the frozen node wakes up after the run: its trainer may not write into the run any more
    cluster.thaw(victim)
    with contextlib.suppress(subprocess.TimeoutExpired):
        cluster.nodes[victim].process.wait(timeout=30)  # it learns it was declared dead, and exits
    cluster.kill(victim)

    assert_same_records(run_dir, reference, driver)
    rows = population(run_dir)
    retried = rows[rows["attempts"] > 1]
    assert len(retried) >= 1 and (retried["node_id"] == survivor_id).all(), rows[["individual_id", "node_id"]]
    assert (rows[rows["generation"] == 3]["node_id"] == survivor_id).all(), "generation 3 ran on the survivor"
    expect_line(driver, f"node {victim_id[:12]}", " lost: ")


@pytest.mark.timeout(300)
def test_killed_node_restarted_joins_and_trainers_are_placed_on_it(cluster, reference, drivers, tmp_path):
    # slower: the restarted node joins (~15 s) well before the run ends
    driver, run_dir, pids = start_run(cluster, drivers, tmp_path, step_sleep=0.9)
    victim = strike_point(cluster, run_dir, pids, driver)
    cluster.kill(victim)
    cluster.add_node(victim)  # the node restarted: the same name, a new Ray node
    rejoined_id = cluster.node_id(victim)
    assert rejoined_id

    assert driver.wait(180) == 0, driver.output
    assert_same_records(run_dir, reference, driver)
    rows = population(run_dir)
    assert rejoined_id in set(rows["node_id"]), (
        f"no individual ran on the restarted node {rejoined_id[:12]}:\n{rows[['individual_id', 'node_id']]}"
    )
    expect_line(driver, f"node {rejoined_id[:12]}", " joined")


@pytest.mark.timeout(360)
def test_head_and_driver_killed_then_resumed_on_a_fresh_head_from_another_host(cluster, reference, drivers, tmp_path):
    driver, run_dir, pids = start_run(cluster, drivers, tmp_path, "storage.lock_lease_s=3")
    strike_point(cluster, run_dir, pids, driver)
    driver.kill()  # the driver's pod and the head's go together
    cluster.kill_head()
    held = json.loads((run_dir / ".lock").read_text())
    assert held["pid"] == driver.process.pid, "the dead driver's lock is left behind"
    assert len(population(run_dir)) < len(population(reference)), "the run was stopped before its end"
    # A new pod: another host name, a fresh head. The old worker nodes keep running meanwhile (their
    # trainers with them, until Ray gives up on the old head), as they would in a real cluster.
    (run_dir / ".lock").write_text(json.dumps({**held, "host": "evopop-old-pod-7f9c"}))
    cluster.restart_head()
    for name in ("w3", "w4"):
        cluster.add_node(name, wait=False)
    cluster.wait_for_nodes(["w3", "w4"])

    resumed = Driver(["resume", str(run_dir)], driver_env(cluster), tmp_path / "resume.out")
    drivers.append(resumed)
    assert resumed.wait(240) == 0, resumed.output
    for name in WORKERS:  # the old nodes, and whatever their trainers might still write
        cluster.kill(name)
    assert_same_records(run_dir, reference, resumed)
    rows = population(run_dir)
    new_ids = {cluster.node_id("w3"), cluster.node_id("w4")}
    assert set(rows[rows["generation"] == 3]["node_id"]) <= new_ids, "generation 3 ran on the new head's nodes"
