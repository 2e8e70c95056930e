"""A pool of trainer actors fed through a ``ray.wait`` loop, results streamed as they finish.

A trainer process that dies (killed, node lost, pre-empted) is replaced, and its individual is run
again on another trainer, up to ``max_retries`` times; then it is reported as failed. A failure that
is the individual's own comes back as an outcome and is never retried.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

from ..config import Config
from .develop import Spec
from .trainer import trainer_class


@dataclass
class _Job:
    spec: Spec
    parent: object  # ObjectRef of the parent's weights and masks, or None
    attempts: int = 0


class TrainerPool:
    def __init__(self, config: Config, run_dir: str):
        self.config = config
        self.run_dir = run_dir
        self._cls = trainer_class(config)
        self.actors = [self._new_actor() for _ in range(config.resources.trainers)]

    def _new_actor(self):
        return self._cls.remote(self.config, self.run_dir)

    def run(self, jobs: list[tuple[Spec, object]]) -> Iterator[tuple[Spec, dict, int]]:
        """Yield (spec, outcome, attempts) for every job, in the order they finish."""
        queue = deque(_Job(spec, parent) for spec, parent in jobs)
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
                outcome = _failed(job.spec, f"trainer process died {job.attempts} times; last: {_first_line(exc)}")
            except (RayTaskError, GetTimeoutError, RayError) as exc:
                idle.append(actor)
                outcome = _failed(job.spec, f"{type(exc).__name__}: {_first_line(exc)}")
            yield job.spec, outcome, job.attempts

    def _replace(self, dead) -> None:
        self.actors.remove(dead)
        try:
            ray.kill(dead, no_restart=True)
        except Exception:
            pass
        self.actors.append(self._new_actor())

    def actor_pids(self) -> list[int]:
        return ray.get([a.pid.remote() for a in self.actors])

    def shutdown(self) -> None:
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self.actors = []


def _failed(spec: Spec, error: str) -> dict:
    return {"individual_id": spec.individual_id, "status": "failed", "error": error}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
