"""No hangs, done for real on the session's Ray cluster: more trainers than the cluster can place, an
individual that never finishes (its trainer killed past ``resources.timeout_s``), trainers that can
never start, and trainers no single node can hold (refused at once, or awaited on a cluster that may
add nodes). Every test removes the nodes it adds: the cluster is shared.

This module is also a user task (``task.name: test_no_hangs:hanging``): tests/ is on the Ray
workers' PYTHONPATH, so trainers import it as users' tasks are imported.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import pytest
import torch

from evopop.api import evolution, evolve
from evopop.config import ConfigError, load_config
from evopop.engine.controller import EvolutionFailed
from evopop.engine.policy.specs import train_seed
from evopop.records.run import RunRecords
from evopop.tasks.classification import ShapesTask

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
SMALL = ["evolution.generations=2", "evolution.offspring=2", "train.epochs=1", "diversity.enabled=false"]


# -- user tasks, imported by the trainers -------------------------------------------------------
class Hanging(ShapesTask):
    """The shapes task, but the individual trained with ``hang_seed`` never finishes training.

    Each time that individual starts training, its trainer writes a file named by its pid to
    ``pid_dir``, holding the pids of the trainers that hung before it and are still alive."""

    def __init__(self, hang_seed: int = -1, pid_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.hang_seed, self.pid_dir = hang_seed, pid_dir

    def train_set(self):
        # training seeds torch with the individual's train_seed just before it asks for the data
        if torch.initial_seed() == self.hang_seed:
            if self.pid_dir:
                alive = [int(p.name) for p in Path(self.pid_dir).iterdir() if _alive(int(p.name))]
                Path(self.pid_dir, str(os.getpid())).write_text(json.dumps(alive))
            while True:
                time.sleep(1)
        return super().train_set()


def hanging(**kwargs) -> Hanging:
    return Hanging(**kwargs)


def unstartable(driver_pid: int, **kwargs) -> ShapesTask:
    """The shapes task in the driver (its preflight passes), an error in every trainer."""
    if os.getpid() != driver_pid:
        raise RuntimeError("this task cannot be built on a trainer (injected)")
    return ShapesTask(**kwargs)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


# -- helpers ------------------------------------------------------------------------------------
def new_run(tmp_path, *overrides: str):
    config = load_config(TINY, [*SMALL, *overrides])
    run_dir = str(tmp_path / "run")
    RunRecords(run_dir).write_config(config.to_yaml())
    return config, run_dir


def assert_every_individual_recorded(population, offspring: int):
    ids = list(population["individual_id"])
    assert len(ids) == len(set(ids))
    assert set(ids) == {"g1-0"} | {f"g2-{i}" for i in range(offspring)}


@pytest.fixture
def quick_reports(monkeypatch):
    """Progress lines about waiting trainers and nodes every 0.2 s instead of every 30 s."""
    from evopop.engine.ray import cluster

    monkeypatch.setattr(cluster, "REPORT_EVERY_S", 0.2)
    monkeypatch.setattr(cluster, "POLL_S", 0.2)


# -- 1. a trainer gets work only once it has answered ----------------------------------------------
@pytest.mark.slow
def test_more_trainers_than_the_cluster_places(ray_cluster, tmp_path, capsys, quick_reports):
    # three trainers of 1 CPU on the 2-CPU head: the third is never placed, and never given work
    config, run_dir = new_run(tmp_path, "evolution.offspring=3", "resources.trainers=3")
    population = evolve(config, run_dir)
    assert_every_individual_recorded(population, 3)
    assert (population["status"] == "ok").all(), population["error"].dropna().tolist()
    assert (population["attempts"] == 1).all()
    assert population["worker_id"].nunique() <= 2, "only the two trainers placed did any work"
    out = capsys.readouterr().out
    assert "the cluster holds 2 of the 3 trainers at once now" in out
    assert re.search(r"^trainers: [0-2] of 3 ready", out, re.M), out


# -- 2. an individual past resources.timeout_s ----------------------------------------------------
@pytest.mark.slow
def test_individual_past_timeout_has_its_trainer_killed_and_is_retried_then_failed(ray_cluster, tmp_path):
    pid_dir = tmp_path / "hung"
    pid_dir.mkdir()
    seed = train_seed(load_config(TINY).run.seed, "g2-1")
    config, run_dir = new_run(
        tmp_path,
        "task.name=test_no_hangs:hanging",
        f"task.args.hang_seed={seed}",
        f"task.args.pid_dir={pid_dir}",
        "resources.trainers=1",  # so the retry runs on the trainer that replaced the killed one
        "resources.timeout_s=6",
        "resources.max_retries=1",
        "resources.on_infrastructure_failure=continue",  # the generation is decided without it
        "compaction.enabled=false",
    )
    start = time.perf_counter()
    population = evolve(config, run_dir)
    assert time.perf_counter() - start < 120
    assert_every_individual_recorded(population, 2)
    by_id = population.set_index("individual_id")
    hung = by_id.loc["g2-1"]
    assert hung["status"] == "failed" and hung["attempts"] == 2
    assert "timed out after 6 s (resources.timeout_s)" in hung["error"]
    assert "2 attempts" in hung["error"]
    # the generation completed: the others recorded, and selection made among them
    assert by_id.loc["g2-0", "status"] == "ok" and bool(by_id.loc["g2-0", "selected"])
    # two trainers hung on it: the first was killed before the second (its replacement) started on it
    hung_pids = {int(p.name): json.loads(p.read_text()) for p in pid_dir.iterdir()}
    assert len(hung_pids) == 2
    assert all(alive == [] for alive in hung_pids.values()), hung_pids
    deadline = time.time() + 30  # the last one was killed as the run ended: it goes within moments
    while any(_alive(pid) for pid in hung_pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in hung_pids), "a hung trainer outlived the run"


def test_timeouts_are_validated():
    assert load_config(TINY).resources.timeout_s == 21600
    assert load_config(TINY).resources.wait_for_nodes_s == 600
    for override, message in [
        ("resources.timeout_s=0", "resources.timeout_s: Input should be greater than 0"),
        ("resources.timeout_s=-5", "resources.timeout_s: Input should be greater than 0"),
        ("resources.wait_for_nodes_s=-1", "resources.wait_for_nodes_s: Input should be greater than or equal to 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(TINY, [override])


# -- trainers that can never start ----------------------------------------------------------------
@pytest.mark.slow
def test_trainers_that_cannot_start_fail_the_individuals_instead_of_hanging(ray_cluster, tmp_path):
    config, run_dir = new_run(
        tmp_path,
        "task.name=test_no_hangs:unstartable",
        f"task.args.driver_pid={os.getpid()}",
        "resources.max_retries=1",
    )
    with pytest.raises(EvolutionFailed, match="generation 1: the infrastructure failed 1 individual"):
        evolve(config, run_dir)
    (ancestor,) = RunRecords(run_dir).individuals(1)
    assert ancestor.status == "failed" and ancestor.attempts == 2
    assert "trainer process could not start" in ancestor.error


# -- 3. trainers no node can hold; a cluster that may add nodes -------------------------------------
@pytest.fixture
def small_node(ray_cluster):
    """A second node of 1 CPU: the cluster has 3 CPUs, at most 2 on one node."""
    node = ray_cluster.add_node(num_cpus=1)
    ray_cluster.wait_for_nodes()
    yield node
    ray_cluster.remove_node(node)


def test_trainer_no_single_node_holds_is_refused(ray_cluster, small_node, tmp_path):
    config, run_dir = new_run(tmp_path, "resources.cpus_per_trainer=2.5", "resources.wait_for_nodes_s=0")
    message = (
        "resources.cpus_per_trainer: 2.5 CPUs per trainer, but no node of the cluster has that many "
        "(at most 2 CPUs on one node, 3 CPUs in all"
    )
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        evolve(config, run_dir)
    assert RunRecords(run_dir).population().empty


def test_trainer_asking_more_gpus_than_any_node_has_is_refused(ray_cluster, tmp_path):
    """Beside the head's 2 GPUs, two nodes of 1 GPU each (declared: Ray counts them, no GPU needed): 3 GPUs per
    trainer fit the cluster (4) but no node, and the run is refused before any work, naming the field."""
    nodes = [ray_cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    ray_cluster.wait_for_nodes()
    try:
        config, run_dir = new_run(tmp_path, "resources.gpus_per_trainer=3", "resources.wait_for_nodes_s=0")
        message = "resources.gpus_per_trainer: 3.0 GPUs per trainer, but no node of the cluster has that many"
        with pytest.raises(ConfigError, match=re.escape(message)):
            evolve(config, run_dir)
        assert RunRecords(run_dir).population().empty
    finally:
        for node in nodes:
            ray_cluster.remove_node(node)


def test_cluster_that_may_add_nodes_is_waited_for(ray_cluster, small_node, monkeypatch, quick_reports):
    from evopop.engine.ray.cluster import check_resources

    # a driver that joined a running cluster (as `ray job submit` runs it) waits for nodes
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    config = load_config(TINY, ["resources.cpus_per_trainer=2.5", "resources.wait_for_nodes_s=60"])
    lines: list[str] = []
    box: dict = {}
    thread = threading.Thread(
        target=lambda: box.update(done=check_resources(config.resources, lines.append)), daemon=True
    )
    thread.start()
    deadline = time.time() + 30
    while not lines and time.time() < deadline:
        time.sleep(0.05)
    assert lines and lines[0].startswith("waiting for the cluster to provide a node with 2.5 CPUs for trainers (")
    assert thread.is_alive(), "it waits instead of refusing"
    big = ray_cluster.add_node(num_cpus=3)
    try:
        thread.join(timeout=30)
        assert not thread.is_alive() and "done" in box, "a node that holds a trainer ends the wait"
    finally:
        ray_cluster.remove_node(big)
    waiting = [line for line in lines if line.startswith("waiting")]
    assert waiting[-1].endswith("of 60)")
    # the new node holds one trainer of the two: the run would go on with it
    assert lines[-1].startswith("the cluster holds 1 of the 2 trainers at once now")


def test_cluster_that_adds_no_node_in_time_is_refused(ray_cluster, small_node, monkeypatch, quick_reports):
    from evopop.engine.ray.cluster import check_resources

    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    config = load_config(TINY, ["resources.cpus_per_trainer=2.5", "resources.wait_for_nodes_s=1"])
    lines: list[str] = []
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"no node that can hold one joined in 1 s \(resources\.wait_for_nodes_s\)"):
        check_resources(config.resources, lines.append)
    assert 1 <= time.perf_counter() - start < 10
    assert lines and "(0 s of 1)" in lines[0]


@pytest.mark.slow
def test_run_whose_only_node_for_trainers_is_lost_stops_instead_of_hanging(ray_cluster, tmp_path):
    pool = ray_cluster.add_node(num_cpus=2, resources={"pool": 2})
    ray_cluster.wait_for_nodes()
    config, run_dir = new_run(
        tmp_path,
        "task.name=user_tasks:flaky",
        "task.args.step_sleep=0.25",
        "resources.custom={pool: 1}",
        "resources.wait_for_nodes_s=0",
    )
    box: dict = {}

    def drive():
        try:
            box["population"] = evolution(config, run_dir).run()
        except BaseException as exc:  # surfaced below
            box["error"] = exc

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    records = RunRecords(run_dir)
    deadline = time.time() + 120
    while "g1-0" not in records.recorded_ids(1) and time.time() < deadline and thread.is_alive():
        time.sleep(0.05)
    ray_cluster.remove_node(pool)  # no node left with a `pool`: the offspring's trainers can go nowhere
    thread.join(timeout=120)
    assert not thread.is_alive(), "the run hangs"
    error = box.get("error")
    assert isinstance(error, ConfigError), box
    assert "waiting, but no trainer can be placed any more" in str(error)
    assert "resources.custom.pool: 1.0 per trainer, but the cluster has 0" in str(error)
    assert records.recorded_ids(1) == {"g1-0"}, "the records so far are intact"
