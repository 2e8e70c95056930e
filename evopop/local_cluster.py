"""A Ray cluster of separate processes on this machine: a head and named worker nodes, each a
``ray start`` of its own, which can be killed, frozen, restarted and rejoined as the nodes of a real
cluster are. For trying a multi-node run, and what happens when nodes fail, on one machine (the
tests do the same: tests/test_multinode.py).

From a script::

    import subprocess
    from evopop.local_cluster import LocalCluster

    with LocalCluster(["w1", "w2"]) as cluster:  # a head with no CPUs (no trainer on it), two 1-CPU nodes
        run = subprocess.Popen(
            ["evopop", "run", "--run-dir", "runs/two-nodes", "configs/tiny.yaml",
             "resources.custom={evopop_trainer: 1}"],
            env=cluster.env(),  # this environment with the cluster's RAY_ADDRESS
        )
        ...                     # wait for generation 2 to start, say
        cluster.kill("w1")      # a node lost: its raylet and trainer SIGKILLed together
        cluster.add_node("w1")  # ... and started again: it joins, trainers are placed on it
        run.wait()

Or from a shell: ``python -m evopop.local_cluster w1 w2`` starts one, prints the ``RAY_ADDRESS`` to
run ``evopop run`` / ``evopop resume`` with, and holds it until Ctrl-C.

A `LocalCluster` deals these faults: `kill` (a node lost), `freeze` / `thaw` (a node that goes
silent without closing its connections, as on a power loss or a partition: SIGSTOP / SIGCONT of all
its processes; Ray declares it dead after about ``health_check_s``), `add_node` (a node started again
under its name, or a new one), `kill_head` and `restart_head` (the head lost; a fresh one on another
port, which worker nodes then join with `add_node`; the old ones keep running, orphaned, until Ray
gives up on the old head, about a minute). Every worker node offers its CPUs, ``evopop_trainer`` (one
per CPU: ``resources.custom={evopop_trainer: 1}`` keeps trainers off the head) and a resource named
after it (``{"w1": 1}``); `node_id` says what evopop records as a node's ``node_id``, and `node_of`
which node a process runs on. ``env=`` sets the nodes' environment, e.g. ``PYTHONPATH`` for a task
given by import path (the driver needs it too).

How it works on one machine, whatever else runs there:

- it drives Ray through the ``ray`` command and never imports ``ray`` (evopop keeps Ray to its
  engine); every node is a ``ray start --block`` in a session of its own, and a fault is dealt to
  every process of the session (Ray puts each worker in a process group of its own, so signalling
  a process group would miss the trainers); nothing else is touched: `stop` kills its own sessions,
  never ``ray stop`` (which stops every Ray cluster of the machine), and on Linux a node also dies
  with the thread that started it, so a killed test session leaves no cluster behind;
- every port of every node is picked free (Ray's fixed defaults, e.g. the dashboard agent's 52365,
  collide between nodes of one machine and with other clusters on it), and every node started has a
  folder of its own (``--temp-dir``, never ``/tmp/ray``): nodes sharing one race for the names of
  their sockets and logs and fail to start;
- ``RAY_AUTH_MODE=disabled`` on every node and in `env`: ``ray start --head`` turns token
  authentication on by itself when it finds ``~/.ray/auth_token`` (which any ``ray.init()`` of a
  local cluster writes) while ``ray start --address`` does not, and its nodes are then refused
  ("InvalidAuthToken ... RAY_AUTH_MODE is currently 'disabled'"). The nodes of one machine have
  nothing to authenticate, but Ray binds their ports on every interface: use it on a machine whose
  network you trust;
- Ray advertises the machine's routable address, never 127.0.0.1 (it swaps ``--node-ip-address
  127.0.0.1`` for it): `address` is the one Ray prints;
- a silent node is declared dead after about ``health_check_s`` seconds (10 by default; Ray's own
  default is over a minute): the GCS's health check of the nodes, ``RAY_health_check_period_ms``,
  ``RAY_health_check_timeout_ms`` and ``RAY_health_check_failure_threshold``, is set so on every node.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

TRAINER_RESOURCE = "evopop_trainer"
HEAD = "head"
LOG_TAIL_LINES = 40
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,23}$")  # short: Ray's socket paths are made of it
# the per-node ports `ray start` takes; each node gets its own, picked free
_NODE_PORTS = (
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
)


class ClusterError(RuntimeError):
    """A node did not come up (or go) in time; the message ends with its log's tail."""


@dataclass
class Node:
    """One ``ray start --block`` process, leader of a session of its own: its raylet, agents and
    worker processes (which Ray puts in process groups of their own, but in its session)."""

    name: str
    process: subprocess.Popen
    log: Path
    temp_dir: Path
    resources: dict[str, float] = field(default_factory=dict)
    frozen: bool = False

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def pids(self) -> list[int]:
        """Every process of the node's session now, the leader first."""
        return session_pids(self.process.pid)

    def signal(self, sig: int) -> None:
        """``sig`` to every process of the node; SIGSTOP and SIGKILL again until none escaped (a
        process the raylet started while the others were being signalled)."""
        for _ in range(20):
            done = ("Z", "X", "T", "t") if sig == signal.SIGSTOP else ("Z", "X")
            pending = [pid for pid in self.pids() if _state(pid) not in done]
            if not pending:
                break
            for pid in pending:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            if sig not in (signal.SIGSTOP, signal.SIGKILL):
                break
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def ray_node_id(self) -> str | None:
        """The node's Ray node id (hex), from its raylet's log; None until the raylet has set it."""
        for log in sorted(self.temp_dir.glob("session_*/logs/raylet*.out")):
            found = re.search(r"Setting node ID node_id=([0-9a-f]+)", log.read_text(errors="replace"))
            if found:
                return found.group(1)
        return None


def _die_with_parent():
    """What makes a node's ``ray start`` die with the thread that started it (Linux; elsewhere
    nothing): a test session or script killed before `stop` leaves no cluster behind (Ray takes
    down a node whose ``ray start --block`` is gone within seconds)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)  # loaded here, in the parent: nothing is imported after fork
    except (OSError, AttributeError):
        return None

    def set_death_signal() -> None:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return set_death_signal


def session_pids(sid: int) -> list[int]:
    """The processes of session ``sid`` (Linux: read from /proc; elsewhere just ``sid``'s leader)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return [sid]
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid:  # state, ppid, pgrp, session
            found.append(int(entry.name))
    return sorted(found, key=lambda pid: pid != sid)


def _session(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None if Path("/proc").is_dir() else os.getsid(pid)


def _state(pid: int) -> str:
    """The process's state letter (R, S, T: stopped, Z: zombie, ...); "X" once it is gone or unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


class LocalCluster:
    """A head and named worker nodes, separate ``ray start`` processes on this machine (see the module).

    ``workers``: names of the worker nodes started with the cluster; ``cpus``: CPUs per worker node;
    ``resources``: extra custom resources per worker node (besides ``evopop_trainer`` and its name);
    ``env``: extra environment of every node (and so of every trainer), e.g. ``PYTHONPATH``;
    ``health_check_s``: about how long a silent node takes to be declared dead;
    ``timeout_s``: how long a node may take to register before `ClusterError`.
    """

    def __init__(
        self,
        workers: Iterable[str] = ("w1", "w2"),
        *,
        cpus: float = 1,
        resources: Mapping[str, float] | None = None,
        env: Mapping[str, str] | None = None,
        health_check_s: float = 10.0,
        object_store_mb: int = 128,
        timeout_s: float = 120.0,
        temp_dir: str | None = None,
        keep_logs: bool = False,
    ):
        self.initial_workers = list(workers)
        for name in self.initial_workers:
            _check_name(name)
        self.cpus, self.extra_resources = cpus, dict(resources or {})
        self.extra_env = dict(env or {})
        self.health_check_s, self.object_store_mb, self.timeout_s = health_check_s, object_store_mb, timeout_s
        self.keep_logs = keep_logs
        self._own_temp = temp_dir is None
        # short: Ray's unix sockets live under it, and their paths may not exceed ~107 characters
        self.temp_dir = Path(temp_dir or tempfile.mkdtemp(prefix="evopop-ray-", dir="/tmp"))
        self.log_dir = self.temp_dir / "nodes"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.head: Node | None = None
        self.nodes: dict[str, Node] = {}
        self.port: int | None = None
        self._address: str | None = None
        self._started: dict[str, int] = {}

    # -- the whole cluster ------------------------------------------------------------------
    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        """Start the head and the worker nodes; return once every one is registered."""
        self.start_head()
        for name in self.initial_workers:
            self.add_node(name, wait=False)
        for name in self.initial_workers:
            self._await_start(name, lambda name=name: self.add_node(name, wait=False))
        return self

    def stop(self) -> None:
        """SIGKILL every process this cluster started (and no other); remove its temporary folder."""
        for node in [*self.nodes.values(), *([self.head] if self.head else [])]:
            self._kill(node)
        self.nodes.clear()
        self.head = None
        if self._own_temp and not self.keep_logs:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    @property
    def address(self) -> str:
        """The head's GCS address (``host:port``), for ``RAY_ADDRESS``."""
        if self._address is None:
            raise ClusterError("the cluster has no head: start() or restart_head() first")
        return self._address

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment for a driver of this cluster: ``base`` (default: this process's) with
        ``RAY_ADDRESS`` and the authentication mode of the cluster's nodes."""
        env = dict(os.environ if base is None else base)
        env.update(RAY_ADDRESS=self.address, RAY_AUTH_MODE="disabled")
        return env

    # -- the head -----------------------------------------------------------------------------
    def start_head(self) -> None:
        """Start the head (a fresh one, on ports picked free); return once it answers."""
        if self.head is not None and self.head.alive:
            raise ClusterError("the head is running: kill_head() first")
        self._launch_head()
        self._await_start(HEAD, self._launch_head)

    def _launch_head(self) -> None:
        self.port = free_ports(1)[0]
        client_port, dashboard_port, metrics_port, *node_ports = free_ports(3 + len(_NODE_PORTS))
        args = [
            "--head",
            f"--port={self.port}",
            "--num-cpus=0",  # no trainer on the head
            "--num-gpus=0",
            "--include-dashboard=false",
            f"--ray-client-server-port={client_port}",
            f"--dashboard-port={dashboard_port}",  # its minimal part runs even without the dashboard
        ]
        # the status `ray status` reads (see `registered`) is refreshed every second, not every 5
        env = {"DASHBOARD_METRIC_PORT": str(metrics_port), "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        self.head = self._start(HEAD, args, node_ports, {}, env)

    def kill_head(self) -> None:
        """SIGKILL the head's processes (GCS, its raylet): the head lost. Worker nodes keep running
        (and their trainers with them) until Ray gives up reconnecting to it (about a minute)."""
        if self.head is not None:
            self._kill(self.head)

    def restart_head(self) -> str:
        """A fresh head on a new port (the old one killed if it still runs); returns its address.
        The worker nodes do not follow: start them again with `add_node`."""
        self.kill_head()
        self.head, self._address = None, None
        self.start_head()
        return self.address

    # -- worker nodes -------------------------------------------------------------------------
    def add_node(
        self, name: str, *, cpus: float | None = None, resources: Mapping[str, float] | None = None, wait: bool = True
    ) -> Node:
        """Start worker node ``name`` (again, after `kill`: a node restarted) and wait until it is registered."""
        _check_name(name)
        old = self.nodes.get(name)
        if old is not None and old.alive:
            raise ClusterError(f"node {name} is running: kill({name!r}) first")
        cpus = self.cpus if cpus is None else cpus
        offered = {TRAINER_RESOURCE: float(cpus), **self.extra_resources, **dict(resources or {}), name: 1.0}
        args = [
            f"--address={self.address}",
            f"--num-cpus={_number(cpus)}",
            "--num-gpus=0",
            f"--resources={json.dumps(offered)}",
        ]
        self.nodes[name] = self._start(name, args, free_ports(len(_NODE_PORTS)), offered)
        if wait:
            self._await_start(name, lambda: self.add_node(name, cpus=cpus, resources=resources, wait=False))
        return self.nodes[name]

    def kill(self, name: str) -> None:
        """SIGKILL every process of node ``name``: the node lost, its trainers with it."""
        self._kill(self._node(name))

    def freeze(self, name: str) -> None:
        """SIGSTOP every process of node ``name``: a node that goes silent (power lost, partitioned)."""
        node = self._node(name)
        node.signal(signal.SIGSTOP)
        node.frozen = True

    def thaw(self, name: str) -> None:
        """SIGCONT every process of node ``name`` (a node Ray declared dead meanwhile then exits on its own)."""
        node = self._node(name)
        node.signal(signal.SIGCONT)
        node.frozen = False

    def node_id(self, name: str, timeout_s: float | None = None) -> str | None:
        """Ray's id (hex) of node ``name`` as it runs now (what evopop records as ``node_id``), read from its
        raylet's log: waited for (a loaded machine flushes that log after the node has registered)."""
        node = self._node(name)
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while True:
            found = node.ray_node_id()
            if found is not None or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def node_of(self, pid: int) -> str | None:
        """The name of the worker node process ``pid`` runs on (None: none of them)."""
        sid = _session(pid)
        return next((name for name, node in self.nodes.items() if node.alive and node.process.pid == sid), None)

    def registered(self) -> set[str]:
        """Names of the worker nodes the head holds alive now (asked of the GCS, by `ray status`)."""
        return set(self._status()) & set(self.nodes)

    def wait_for_nodes(self, names: Iterable[str], timeout_s: float | None = None) -> None:
        """Wait until the head is up and every node of ``names`` is registered with it."""
        self._wait(set(names), present=True, timeout_s=timeout_s)

    def wait_until_gone(self, name: str, timeout_s: float | None = None) -> float:
        """Wait until the head no longer holds node ``name`` alive (declared dead); returns the seconds waited."""
        start = time.monotonic()
        self._wait({name}, present=False, timeout_s=timeout_s)
        return time.monotonic() - start

    def log_tail(self, name: str, lines: int = LOG_TAIL_LINES) -> str:
        node = self.head if name == HEAD and self.head else self._node(name)
        return _tail(node.log, lines)

    # -- internals ----------------------------------------------------------------------------
    def _await_start(self, name: str, again) -> None:
        """Wait until node ``name`` (or the head) is up; if it exited meanwhile, start it ``again`` once
        (a port picked free may have been taken before Ray bound it), then wait for that."""
        for attempt in (1, 2):
            node = self.head if name == HEAD else self.nodes[name]
            try:
                if name == HEAD:
                    self._address = self._wait_for_address(node)
                    self.wait_for_nodes([])
                else:
                    self.wait_for_nodes([name])
                return
            except ClusterError:
                if attempt == 2 or node.alive:
                    raise
            self._kill(node)
            again()

    def _node(self, name: str) -> Node:
        if name not in self.nodes:
            raise KeyError(f"no node {name!r}; the cluster's nodes: {sorted(self.nodes)}")
        return self.nodes[name]

    def _node_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            env.pop(key, None)
        # the GCS declares a node dead once it missed `threshold` health checks in a row, each sent
        # `period` after the last answer and waited for `timeout`: a silent node after about
        # threshold x (period + timeout) = health_check_s, a killed one (refused at once) sooner
        threshold = 3
        period_ms = max(100, round(self.health_check_s * 1000 / (2 * threshold)))
        env.update(
            RAY_AUTH_MODE="disabled",
            RAY_USAGE_STATS_ENABLED="0",
            RAY_health_check_initial_delay_ms="1000",
            RAY_health_check_period_ms=str(period_ms),
            RAY_health_check_timeout_ms=str(period_ms),
            RAY_health_check_failure_threshold=str(threshold),
        )
        env.update(self.extra_env)
        return env

    def _start(
        self, name: str, args: list[str], ports: list[int], resources: dict[str, float], env: dict | None = None
    ) -> Node:
        self._started[name] = count = self._started.get(name, 0) + 1
        # a folder of its own for each node started (its session, sockets and Ray's logs), as on
        # separate machines: nodes that share one race for the names of their sockets and logs
        node_temp = self.temp_dir / f"{name}.{count}"
        log = self.log_dir / f"{name}.{count}.log"
        cmd = [
            *_ray_command(),
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",  # Ray advertises the machine's routable address all the same
            "--disable-usage-stats",
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            f"--temp-dir={node_temp}",
            "--min-worker-port=0",  # worker processes: any free port
            "--max-worker-port=0",
            *args,
            *(f"{flag}={port}" for flag, port in zip(_NODE_PORTS, ports)),
        ]
        with open(log, "wb") as out:
            out.write(f"$ {' '.join(cmd)}\n".encode())
            out.flush()
            process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self._node_env(), **(env or {})},
                start_new_session=True,  # a session of its own: kill/freeze reach all of the node and no more
                preexec_fn=_die_with_parent(),
            )
        return Node(name, process, log, node_temp, resources)

    def _kill(self, node: Node) -> None:
        node.signal(signal.SIGKILL)  # stopped (frozen) processes die of it too
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.process.wait(timeout=10)
        node.frozen = False

    def _wait_for_address(self, head: Node) -> str:
        """The GCS address the head advertises (Ray's routable address of this machine), from its log."""
        deadline = time.monotonic() + self.timeout_s
        pattern = re.compile(rf"--address='([^']+:{self.port})'")
        while time.monotonic() < deadline:
            found = pattern.search(head.log.read_text(errors="replace"))
            if found:
                return found.group(1)
            if not head.alive:
                break
            time.sleep(0.2)
        why = "exited" if not head.alive else f"did not start in {self.timeout_s:g} s"
        raise ClusterError(f"the Ray head {why}; the tail of {head.log}:\n{_tail(head.log)}")

    def _status(self) -> dict[str, float]:
        """The resources the cluster holds alive now (total per resource), asked of the GCS."""
        done = subprocess.run(
            [*_ray_command(), "status", f"--address={self.address}"],
            capture_output=True,
            text=True,
            env=self._node_env(),
            timeout=60,
        )
        if done.returncode != 0:
            raise ClusterError(f"ray status failed: {done.stderr.strip()[-2000:]}")
        return parse_status(done.stdout)

    def _wait(self, names: set[str], present: bool, timeout_s: float | None) -> None:
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        last_error = ""
        while True:
            for name in names:
                node = self.nodes.get(name)
                if present and node is not None and not node.alive:
                    raise ClusterError(f"node {name} exited; the tail of {node.log}:\n{_tail(node.log)}")
            if self.head is None or not self.head.alive:
                raise ClusterError(f"the Ray head is not running; the tail of its log:\n{self._head_tail()}")
            try:
                held = set(self._status())
                last_error = ""
                if (names <= held) if present else not (names & held):
                    return
            except (ClusterError, subprocess.TimeoutExpired) as exc:
                last_error = str(exc)
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        what = "registered" if present else "declared dead"
        tails = "\n".join(
            f"--- {n} ({self.nodes[n].log}):\n{_tail(self.nodes[n].log)}" for n in sorted(names) if n in self.nodes
        )
        raise ClusterError(
            f"node(s) {sorted(names)} not {what} within {timeout_s:g} s"
            + (f" ({last_error})" if last_error else "")
            + f"\n{tails}\n--- head:\n{self._head_tail()}"
        )

    def _head_tail(self) -> str:
        return _tail(self.head.log) if self.head else "(no head)"


def parse_status(text: str) -> dict[str, float]:
    """Resource -> total, from ``ray status``'s "Total Usage" section (its "used/total name" lines)."""
    totals: dict[str, float] = {}
    section = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Total Usage") or stripped.startswith("Usage:"):
            section = True
            continue
        if section and (not stripped or stripped.endswith(":")):
            if totals:
                break
            continue
        if section:
            found = re.match(r"^([\d.]+)\w*/([\d.]+)\w*\s+(\S+)", stripped)
            if found:
                totals[found.group(3)] = float(found.group(2))
    return totals


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free now (held open together while picked, so never the same twice)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _ray_command() -> list[str]:
    """The ``ray`` command of this Python environment (the one whose Ray evopop's trainers run on)."""
    beside = Path(sys.executable).with_name("ray")
    return [str(beside)] if beside.exists() else [shutil.which("ray") or "ray"]


def _check_name(name: str) -> None:
    if not _NAME.match(name) or name in (HEAD, TRAINER_RESOURCE, "CPU", "GPU", "memory", "object_store_memory"):
        raise ValueError(
            f"node name {name!r}: letters, digits, '_' and '-', starting with a letter, not a Ray resource"
        )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def main(argv: list[str] | None = None) -> None:
    """``python -m evopop.local_cluster [NAME ...]``: a cluster held until Ctrl-C."""
    names = (sys.argv[1:] if argv is None else argv) or ["w1", "w2"]
    with LocalCluster(names) as cluster:
        print(f"RAY_ADDRESS={cluster.address} RAY_AUTH_MODE=disabled  (worker nodes: {', '.join(names)})", flush=True)
        print("Ctrl-C stops the cluster", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
