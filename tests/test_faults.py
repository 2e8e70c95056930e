"""Fault tolerance, done for real: killed trainer processes, a lost node, NaN and out-of-memory
offspring, a SIGKILLed driver resumed. For each: rows expected, rows present, duplicates 0, lost 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import torch

from evopop.api import evolution, evolve
from evopop.config import load_config
from evopop.engine.controller import EvolutionFailed
from evopop.records.run import RunRecords
from evopop.tasks.registry import build_task

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
FLAKY = "task.name=user_tasks:flaky"


def new_run(tmp_path, name, *overrides):
    config = load_config(TINY, list(overrides))
    run_dir = str(tmp_path / name)
    RunRecords(run_dir).write_config(config.to_yaml())
    return config, run_dir


def assert_complete(population: pd.DataFrame, run_dir: str, expected_ids: set[str]):
    """Rows expected == rows present, no duplicate, none lost: through the records and in the raw Parquet
    files too (a part per individual, or a generation's parts folded into one file, never both)."""
    ids = list(population["individual_id"])
    assert len(ids) == len(set(ids)), f"duplicates: {pd.Series(ids)[pd.Series(ids).duplicated()].tolist()}"
    assert set(ids) == expected_ids, f"lost: {expected_ids - set(ids)}, extra: {set(ids) - expected_ids}"
    stored = [i for p in (Path(run_dir) / "population").rglob("*.parquet") for i in _ids_in(p)]
    assert sorted(stored) == sorted(expected_ids), "each individual's row in exactly one file"
    assert not list(Path(run_dir).rglob(".tmp-*")), "no temporary file may be left behind"


def _ids_in(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["individual_id"]).column(0).to_pylist()


def expected_ids(offspring_per_generation: list[int]) -> set[str]:
    ids = {"g1-0"}
    for g, n in enumerate(offspring_per_generation, start=2):
        ids |= {f"g{g}-{i}" for i in range(n)}
    return ids


def run_in_thread(driver):
    box = {}

    def target():
        try:
            box["population"] = driver.run()
        except BaseException as exc:  # surfaced by the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def wait_for(predicate, timeout=120.0, interval=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out waiting")


def offspring_training_pid(pid_dir: Path, records: RunRecords, seen: set[str]):
    """The pid of a trainer that started training an offspring (after the ancestor is recorded)."""
    if "g1-0" not in records.recorded_ids(1):
        seen.update(p.name for p in pid_dir.iterdir())
        return None
    fresh = [p.name for p in pid_dir.iterdir() if p.name not in seen]
    return int(fresh[0].split(".")[0]) if fresh else None


def test_killed_trainer_is_replaced_and_its_offspring_rerun(ray_cluster, tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    config, run_dir = new_run(
        tmp_path,
        "run",
        FLAKY,
        f"task.args.pid_dir={pid_dir}",
        "task.args.step_sleep=0.05",
        "evolution.generations=2",
        "evolution.offspring=4",
    )
    thread, box = run_in_thread(evolution(config, run_dir))
    pid = wait_for(lambda: offspring_training_pid(pid_dir, RunRecords(run_dir), set()))
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=300)
    assert "error" not in box, box.get("error")
    population = box["population"]
    assert_complete(population, run_dir, expected_ids([4]))
    assert (population["status"] == "ok").all()
    assert (population["attempts"] == 2).sum() == 1, "exactly the killed trainer's offspring ran twice"
    assert pid not in _live_pids(), "the killed trainer is gone; its offspring finished elsewhere"


def test_lost_node_offspring_rerun_on_another_node(ray_cluster, tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    doomed = ray_cluster.add_node(num_cpus=2, resources={"pool": 2})
    ray_cluster.wait_for_nodes()
    config, run_dir = new_run(
        tmp_path,
        "run",
        FLAKY,
        f"task.args.pid_dir={pid_dir}",
        "task.args.step_sleep=0.25",
        "evolution.generations=2",
        "evolution.offspring=4",
        "resources.custom={pool: 1}",
    )
    thread, box = run_in_thread(evolution(config, run_dir))
    # offspring train for >= 4 s (16 steps x 0.25 s): still in flight when the node goes
    wait_for(lambda: offspring_training_pid(pid_dir, RunRecords(run_dir), set()))
    spare = ray_cluster.add_node(num_cpus=2, resources={"pool": 2})
    ray_cluster.remove_node(doomed)  # the node and every trainer on it are lost
    thread.join(timeout=300)
    ray_cluster.remove_node(spare)
    assert "error" not in box, box.get("error")
    population = box["population"]
    assert_complete(population, run_dir, expected_ids([4]))
    assert (population["status"] == "ok").all()
    assert (population["attempts"] >= 2).any(), "offspring in flight on the lost node were re-run"
    assert population["node_id"].nunique() == 2


def _live_pids() -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def ancestor_checkpoint(tmp_path) -> str:
    """A plain state_dict of the tiny network, so that generation 1 needs no training."""
    config = load_config(TINY)
    task = build_task("shapes", config.task.args)
    torch.manual_seed(0)
    path = tmp_path / "ancestor.pt"
    torch.save(task.build_model().state_dict(), path)
    return str(path)


def test_nan_and_oom_offspring_recorded_failed_and_skipped(ray_cluster, tmp_path):
    config, run_dir = new_run(
        tmp_path,
        "run",
        FLAKY,
        "task.args.nan_rate=0.3",
        "task.args.oom_rate=0.3",
        f"ancestor.checkpoint={ancestor_checkpoint(tmp_path)}",
        "evolution.generations=3",
        "evolution.offspring=6",
    )
    population = evolve(config, run_dir)
    assert_complete(population, run_dir, expected_ids([6, 6]))
    failed = population[population["status"] == "failed"]
    errors = " ".join(failed["error"])
    assert "DivergedError" in errors and "nan" in errors
    assert "OutOfMemoryError" in errors
    assert (failed["attempts"] == 1).all(), "an individual's own failure is never retried"
    assert failed["checkpoint"].isna().all() and failed["synapses"].isna().all()
    for generation in (2, 3):
        group = population[population["generation"] == generation]
        chosen = group[group["selected"].astype(bool)]
        assert len(chosen) == 1 and chosen.iloc[0]["status"] == "ok", "selection skips failed individuals"
        assert chosen.iloc[0]["val_accuracy"] == group[group["status"] == "ok"]["val_accuracy"].max()


def test_generation_where_all_fail_stops_with_records_intact(ray_cluster, tmp_path):
    config, run_dir = new_run(
        tmp_path,
        "run",
        FLAKY,
        "task.args.nan_rate=1.0",
        f"ancestor.checkpoint={ancestor_checkpoint(tmp_path)}",
    )
    with pytest.raises(EvolutionFailed, match="every individual of generation 2 failed"):
        evolve(config, run_dir)
    population = RunRecords(run_dir).population()
    assert_complete(population, run_dir, expected_ids([3]))
    assert (population[population["generation"] == 2]["status"] == "failed").all()


def run_driver_until_killed(ray_cluster, run_dir: Path, overrides: list[str], until) -> None:
    """Start ``evopop run`` in a process of its own on the test cluster, SIGKILL it once ``until()``."""
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}
    driver = subprocess.Popen(
        [sys.executable, "-m", "evopop", "run", str(TINY), *overrides, "--run-dir", str(run_dir)],
        env=env,
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(until, 180)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()


def test_driver_sigkilled_mid_generation_then_resumed_equals_uninterrupted(ray_cluster, tmp_path):
    overrides = ["evolution.offspring=4", "task.args.step_sleep=0.05", FLAKY]
    reference_config, reference_dir = new_run(tmp_path, "reference", *overrides)
    reference = evolve(reference_config, reference_dir)

    run_dir = tmp_path / "killed"
    records = RunRecords(str(run_dir))
    run_driver_until_killed(
        ray_cluster,
        run_dir,
        overrides,
        lambda: len(records.recorded_ids(2)) >= 1 if (run_dir / "config.yaml").exists() else False,
    )
    interrupted = RunRecords(str(run_dir)).population()
    assert len(interrupted) < len(reference), "the driver was killed before the run finished"

    config = load_config(TINY, overrides)
    resumed = evolve(config, str(run_dir))
    assert_complete(resumed, str(run_dir), set(reference["individual_id"]))
    columns = [
        "individual_id",
        "parent_id",
        "seed",
        "train_seed",
        "mask_digest",
        "synapses",
        "val_accuracy",
        "val_loss",
        "selected",
    ]
    pd.testing.assert_frame_equal(
        resumed[columns].reset_index(drop=True), reference[columns].reset_index(drop=True), check_dtype=False
    )


def test_offspring_land_on_nodes_of_distinct_sizes_and_survive_losing_one(ray_cluster, tmp_path):
    """A cluster of a head and two workers of different sizes: trainers on both workers, offspring
    recorded from each; one worker removed mid-run, its offspring finished on the other."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    small = ray_cluster.add_node(num_cpus=1, resources={"pool": 1, "small": 1})
    large = ray_cluster.add_node(num_cpus=2, resources={"pool": 2})
    ray_cluster.wait_for_nodes()
    config, run_dir = new_run(
        tmp_path,
        "run",
        FLAKY,
        f"task.args.pid_dir={pid_dir}",
        "task.args.step_sleep=0.1",
        "evolution.generations=3",
        "evolution.offspring=6",
        "resources.trainers=3",
        "resources.custom={pool: 1}",
    )
    small_node_id = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "small" in n["Resources"])
    workers = [small, large]
    try:
        thread, box = run_in_thread(evolution(config, run_dir))
        records = RunRecords(run_dir)
        # generation 2 done on both workers, generation 3 starting: then the small worker goes
        wait_for(lambda: records.has_selection(2), 240)
        ray_cluster.remove_node(workers.pop(0))
        gen2 = records.population(2)
        thread.join(timeout=300)
    finally:  # the session's cluster goes on to the other tests as it was
        for node in workers:
            ray_cluster.remove_node(node)
    assert "error" not in box, box.get("error")
    population = box["population"]
    assert_complete(population, run_dir, expected_ids([6, 6]))
    assert (population["status"] == "ok").all()
    assert gen2["node_id"].nunique() == 2 and small_node_id in set(gen2["node_id"]), "offspring on each worker"
    gen3 = population[population["generation"] == 3]
    assert (gen3["node_id"] != small_node_id).sum() >= 1, "generation 3 finished on the large worker"


def test_driver_sigkilled_mid_rung_of_successive_halving_then_resumed_equals_uninterrupted(ray_cluster, tmp_path):
    overrides = [  # 8 offspring: the second rung's 4 jobs take two waves of the 2 trainers, so a kill
        # at its first result lands inside the rung
        "evolution.offspring=8",
        "train.epochs=4",
        "selection.halving={eta: 2, min_epochs: 1}",
        "task.args.step_sleep=0.05",
        FLAKY,
    ]
    reference_config, reference_dir = new_run(tmp_path, "reference", *overrides)
    reference = evolve(reference_config, reference_dir)

    run_dir = tmp_path / "killed"
    rungs = run_dir / "rungs" / "generation=2"
    # killed within the second rung: the first decided, the second's training states on disk
    run_driver_until_killed(
        ray_cluster, run_dir, overrides, lambda: len(list(rungs.glob("*-r1.parquet"))) >= 1 if rungs.exists() else False
    )
    records = RunRecords(str(run_dir))
    assert records.promotion(2, 0) is not None and records.promotion(2, 1) is None, "killed mid-rung"

    resumed = evolve(load_config(TINY, overrides), str(run_dir))
    assert_complete(resumed, str(run_dir), set(reference["individual_id"]))
    columns = ["individual_id", "status", "epochs", "rung", "mask_digest", "val_accuracy", "val_loss", "selected"]
    pd.testing.assert_frame_equal(
        resumed[columns].reset_index(drop=True), reference[columns].reset_index(drop=True), check_dtype=False
    )
    assert not records.rungs().duplicated(["individual_id", "rung"]).any()
