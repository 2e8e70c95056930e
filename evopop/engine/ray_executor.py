"""The Ray executor: a pool of long-lived trainer actors fed through a ``ray.wait`` loop, results
streamed as they finish. With `trainer.py`, the only place in evopop that imports Ray.

Each parent's weights and masks go into the object store once, for all its offspring. A trainer
process that dies (killed, node lost, pre-empted) is replaced, and its individual is run again on
another trainer, up to ``max_retries`` times; then it is reported as failed. A failure that is the
individual's own comes back as a failed outcome and is never retried.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

from ..config import Config, ConfigError
from .executor import ParentLoader
from .jobs import Outcome, Result, Spec
from .trainer import trainer_class


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


def check_resources(config: Config) -> None:
    """Refuse trainers the cluster can never place (instead of waiting forever)."""
    total = ray.cluster_resources()
    r = config.resources
    wanted = {"CPU": ("cpus_per_trainer", r.cpus_per_trainer), "GPU": ("gpus_per_trainer", r.gpus_per_trainer)}
    wanted.update({name: (f"custom.{name}", amount) for name, amount in r.custom.items()})
    for resource, (key, amount) in wanted.items():
        have = total.get(resource, 0)
        if amount > have:
            unit = {"CPU": " CPUs", "GPU": " GPUs"}.get(resource, "")
            raise ConfigError(f"resources.{key}: {amount}{unit} per trainer, but the cluster has {have:g}{unit}")


@dataclass
class _Job:
    spec: Spec
    parent: object  # ObjectRef of the parent's state, or None
    attempts: int = 0


class RayExecutor:
    def __init__(self, config: Config, run_dir: str):
        self.config = config
        self.run_dir = run_dir
        self.actors: list = []

    def start(self) -> None:
        connect()
        check_resources(self.config)
        self._cls = trainer_class(self.config)
        self.actors = [self._new_actor() for _ in range(self.config.resources.trainers)]

    def _new_actor(self):
        return self._cls.remote(self.config, self.run_dir)

    def run(self, specs: Sequence[Spec], load_parent: ParentLoader) -> Iterator[Result]:
        """Yield a `Result` for every spec, in the order they finish."""
        needed = dict.fromkeys(spec.parent_id for spec in specs if spec.parent_id is not None)
        # one parent at a time: loaded, put into the object store, and dropped from this process
        refs = {parent_id: ray.put(load_parent(parent_id)) for parent_id in needed}
        queue = deque(_Job(spec, refs.get(spec.parent_id)) for spec in specs)
        del refs  # the jobs hold the references: the parents leave the object store with them
        yield from self._drain(queue)

    def _drain(self, queue: deque) -> Iterator[Result]:
        idle = list(self.actors)
        running: dict = {}  # future -> (actor, job)
        while queue or running:
            while queue and idle:
                actor, job = idle.pop(), queue.popleft()
                job.attempts += 1
                running[actor.develop.remote(job.spec, job.parent)] = (actor, job)
            done, _ = ray.wait(list(running), num_returns=1)
            future = done[0]
            actor, job = running.pop(future)
            try:
                outcome = ray.get(future)
                idle.append(actor)
            except RayActorError as exc:  # the process died: replace it, retry the individual
                self._replace(actor)
                idle.append(self.actors[-1])
                if job.attempts <= self.config.resources.max_retries:
                    queue.appendleft(job)
                    continue
                error = f"trainer process died {job.attempts} times; last: {_first_line(exc)}"
                outcome = Outcome.failed(job.spec.individual_id, error)
            except (RayTaskError, GetTimeoutError, RayError) as exc:
                idle.append(actor)
                outcome = Outcome.failed(job.spec.individual_id, f"{type(exc).__name__}: {_first_line(exc)}")
            yield Result(job.spec, outcome, job.attempts)

    def _replace(self, dead) -> None:
        self.actors.remove(dead)
        _kill(dead)
        self.actors.append(self._new_actor())

    def actor_pids(self) -> list[int]:
        return ray.get([a.pid.remote() for a in self.actors])

    def shutdown(self) -> None:
        for actor in self.actors:
            _kill(actor)
        self.actors = []


def _kill(actor) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already gone
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
