"""The Ray cluster as evopop meets it: joining one (`connect`), and whether its nodes can hold a
trainer (`check_resources`, `wait_for_node`), refusing at once what no node will ever hold rather than
waiting forever, and waiting (with a progress line) where an autoscaler may add a node that can."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import ray

from ...config import ConfigError, ResourcesSection

REPORT_EVERY_S = 30.0  # a progress line this often while trainers or nodes are awaited
POLL_S = 2.0  # how often the cluster's nodes are looked at while none can hold a trainer
_EPS = 1e-6  # Ray keeps resources in 1/10000ths

Log = Callable[[str], None]


def print_line(text: str) -> None:
    print(text, flush=True)


def connect() -> None:
    """Join the cluster named by RAY_ADDRESS (``ray job submit`` sets it), else start a local one."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    # workers of a local cluster must import the user's modules (task import paths) as we do
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
    # address="local": always a cluster of our own, never one that happens to run on this machine
    ray.init(address="local", include_dashboard=False, dashboard_host="127.0.0.1")


def alive_nodes() -> dict[str, str]:
    """Node id -> its address, of every node the cluster holds alive now."""
    return {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if n.get("Alive")}


class NodeWatch:
    """Says, in one plain line each, when a node is lost or joins: looked at when a trainer starts or
    fails, and every `SUSPECT_POLL_S` for `SUSPECT_S` after a failure (a trainer's connection breaks a
    few seconds before Ray declares its node dead), never otherwise. How soon Ray declares a silent node
    dead (power lost, partitioned) is its health check's business: ``RAY_health_check_period_ms`` x
    ``RAY_health_check_failure_threshold`` (+ ``RAY_health_check_timeout_ms``), set on ``ray start``:
    about 65 s with Ray's defaults, about 10 s as `evopop.local_cluster.LocalCluster` sets them."""

    SUSPECT_S = 90.0
    SUSPECT_POLL_S = 1.0

    def __init__(self, log: Log = print_line):
        self.log = log
        self.nodes = alive_nodes()
        self.suspect_until = 0.0  # a trainer failed: look again now and then until then
        self.looked = time.monotonic()

    def suspect(self) -> None:
        """A trainer failed: its node may be going; look now, and keep looking for a while."""
        self.suspect_until = time.monotonic() + self.SUSPECT_S
        self.look()

    def next_look(self) -> float:
        """When (monotonic) to look again; inf when nothing is suspected."""
        if time.monotonic() > self.suspect_until:
            return math.inf
        return self.looked + self.SUSPECT_POLL_S

    def look_if_due(self) -> None:
        if time.monotonic() >= self.next_look():
            self.look()

    def look(self) -> None:
        self.looked = time.monotonic()
        now = alive_nodes()
        for node, address in self.nodes.items():
            if node not in now:
                self.log(f"node {node[:12]} ({address}) lost: the individuals its trainers ran are retried elsewhere")
        for node, address in now.items():
            if node not in self.nodes:
                self.log(f"node {node[:12]} ({address}) joined")
        self.nodes = now


# -- can the cluster hold a trainer? ----------------------------------------------------------
def per_trainer(r: ResourcesSection) -> dict[str, tuple[str, float]]:
    """What one trainer asks for: Ray resource -> (its config key, amount)."""
    wanted = {"CPU": ("cpus_per_trainer", r.cpus_per_trainer)}
    if r.gpus_per_trainer:
        wanted["GPU"] = ("gpus_per_trainer", r.gpus_per_trainer)
    wanted.update({name: (f"custom.{name}", amount) for name, amount in r.custom.items()})
    return wanted


def check_resources(resources: ResourcesSection, log: Log = print_line) -> None:
    """Refuse trainers the cluster can never place, instead of waiting for them forever.

    A trainer runs on one node, so it must fit in one node's resources (not only in the cluster's
    total). If no node can hold one now but nodes may come (`may_autoscale`), wait up to
    ``resources.wait_for_nodes_s`` for one, with a progress line every ``REPORT_EVERY_S``; then
    refuse, naming the resource. More trainers than the cluster holds at once are never refused:
    the run goes on with the trainers it places (a trainer gets work only once it has answered).
    """
    wanted = per_trainer(resources)
    nodes = wait_for_node(wanted, resources.wait_for_nodes_s, log)
    room = sum(_holds(node, wanted) for node in nodes)
    if room < resources.trainers:
        log(
            f"the cluster holds {room} of the {resources.trainers} trainers at once now: "
            f"the run goes on with the trainers it places"
        )


def wait_for_node(wanted: dict[str, tuple[str, float]], limit: float, log: Log, context: str = "") -> list[dict]:
    """The alive nodes' resources, once one can hold a trainer; ConfigError if none can and none will
    come: at once where nodes cannot be added, after ``limit`` seconds where they may."""
    start = time.monotonic()
    autoscaling, reported = None, -math.inf
    while True:
        nodes = _nodes()
        if any(_holds(node, wanted) for node in nodes):
            return nodes
        if autoscaling is None:
            autoscaling = limit > 0 and may_autoscale(wanted)
        waited = time.monotonic() - start
        if not autoscaling or waited >= limit:
            raise ConfigError(context + _refusal(wanted, nodes, waited if autoscaling else None))
        if waited - reported >= REPORT_EVERY_S:
            need = _describe(_lacking(wanted, nodes))
            log(f"waiting for the cluster to provide a node with {need} for trainers ({waited:.0f} s of {limit:g})")
            reported = waited
        time.sleep(min(POLL_S, limit - waited))


def may_autoscale(wanted: dict[str, tuple[str, float]]) -> bool:
    """Whether nodes may join the cluster. Where an autoscaler has published its node types
    (KubeRay, autoscaler v2), whether one of them can hold a trainer; else whether this driver
    joined a running cluster (RAY_ADDRESS, as ``ray job submit`` sets it), whose autoscaler, if it
    has one, starts nodes for trainers waiting to be placed. A cluster this process started (or
    a test's) gets no nodes: trainers it cannot hold are refused at once."""
    types = _node_types()
    if types is not None:
        return any(_holds(resources, wanted) for resources in types)
    return bool(os.environ.get("RAY_ADDRESS"))


def _nodes() -> list[dict]:
    return [dict(node.get("Resources") or {}) for node in ray.nodes() if node.get("Alive")]


def _node_types() -> list[dict] | None:
    """The resources of each node type the autoscaler may start, where it says (a private Ray API:
    None where it is missing or says nothing)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:
        return None
    if config is None or not config.node_group_configs:
        return None
    return [dict(group.resources) for group in config.node_group_configs if group.max_count != 0]


def _holds(node: dict, wanted: dict[str, tuple[str, float]]) -> int:
    """How many trainers fit in ``node``'s resources."""
    return min(int((node.get(resource, 0.0) + _EPS) // amount) for resource, (_, amount) in wanted.items())


def _lacking(wanted: dict[str, tuple[str, float]], nodes: list[dict]) -> dict[str, tuple[str, float]]:
    """The resources of a trainer that no node has enough of (all of them, if it is their combination)."""
    most = {resource: max((node.get(resource, 0.0) for node in nodes), default=0.0) for resource in wanted}
    lacking = {resource: want for resource, want in wanted.items() if want[1] > most[resource] + _EPS}
    return lacking or wanted


def _unit(resource: str, amount: float | None = None) -> str:
    if resource not in ("CPU", "GPU"):
        return ""
    return f" {resource}" if amount == 1 else f" {resource}s"


def _describe(wanted: dict[str, tuple[str, float]]) -> str:
    return ", ".join(f"{amount:g}{_unit(r, amount) or ' ' + r}" for r, (_, amount) in wanted.items())


def _refusal(wanted: dict[str, tuple[str, float]], nodes: list[dict], waited: float | None) -> str:
    for resource, (key, amount) in wanted.items():
        have = [node.get(resource, 0.0) for node in nodes]
        total, most, unit = sum(have), max(have, default=0.0), _unit(resource)
        if amount > total + _EPS:
            why = f"resources.{key}: {amount}{unit} per trainer, but the cluster has {total:g}{unit}"
            break
        if amount > most + _EPS:
            why = (
                f"resources.{key}: {amount}{unit} per trainer, but no node of the cluster has that many "
                f"(at most {most:g}{unit} on one node, {total:g}{unit} in all; a trainer runs on one node)"
            )
            break
    else:
        why = f"no node of the cluster has all that one trainer asks for at once ({_describe(wanted)})"
    if waited is not None:
        why += f"; no node that can hold one joined in {waited:.0f} s (resources.wait_for_nodes_s)"
    return why + ": ask for less per trainer, or run on nodes that can hold one"
