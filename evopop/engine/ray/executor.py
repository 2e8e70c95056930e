"""The Ray executor: a pool of long-lived trainer actors fed through a ``ray.wait`` loop, results
streamed as they finish. With `cluster.py` and `trainer.py`, the Ray room (`evopop.engine.ray`):
the only package of evopop that imports Ray.

Each parent's weights and masks go into the object store once, for all its offspring, when the
first of them is handed out. Nothing waits forever:

- A trainer gets work only once it has answered (``Trainer.ready``): one the cluster has not placed
  (more trainers than fit) gets none, and the run goes on with those that answered.
- A trainer process that dies (killed, node lost, pre-empted, or never started) is replaced, and its
  individual is run again on another trainer, up to ``max_retries`` times; then it is recorded failed.
- An individual that runs past ``resources.timeout_s`` has its trainer killed and replaced, and is
  retried the same way; once out of retries it is recorded failed, timed out.
- Trainers no node can hold are refused; on a cluster that may add nodes (an autoscaler) the run
  waits up to ``resources.wait_for_nodes_s`` for one that can (`check_resources`).

Every failure that is not the individual's own (`evopop.engine.failures`: a storage error, a
neighbour's out-of-memory, a CUDA error, whose trainer is replaced too) is retried the same way,
and if it is out of retries, recorded failed with ``failure: infrastructure`` for ``evopop resume``
to run again. A failure that is the individual's own is recorded failed and never retried.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from ...config import Config
from ..executors.base import ParentLoader
from ..failures import INFRASTRUCTURE, Failure, classify
from ..jobs import Outcome, Result, Spec
from . import cluster  # its REPORT_EVERY_S and POLL_S are read through the module (tests shorten them)
from .cluster import Log, check_resources, connect, per_trainer, print_line, wait_for_node
from .trainer import trainer_class


# -- the executor -------------------------------------------------------------------------------
class _Parent:
    """A parent's state in the object store, loaded and put there when its first offspring is handed
    out: the first trainers start once one parent is loaded, not all of a generation's parents (each
    a checkpoint read, 325 MB for the reference network). Siblings share one; it leaves the object
    store with the last of their jobs."""

    def __init__(self, parent_id: str | None, load: ParentLoader):
        self.parent_id, self._load, self._ref = parent_id, load, None

    def ref(self):
        """The ObjectRef of the parent's state (loaded and put on first use); None for the root."""
        if self.parent_id is not None and self._ref is None:
            self._ref = ray.put(self._load(self.parent_id))
        return self._ref


@dataclass
class _Job:
    spec: Spec
    parent: _Parent
    attempts: int = 0
    avoid: object = None  # the trainer it last failed on, alive: its retry goes to another where there is one


@dataclass
class _Running:
    actor: object
    job: _Job
    started: float  # time.monotonic() when it was handed to the trainer


class RayExecutor:
    def __init__(self, config: Config, run_dir: str, log: Log = print_line):
        self.config = config
        self.run_dir = run_dir
        self.log = log
        self.actors: list = []  # every trainer: answered or not
        self._idle: list = []  # trainers that answered and have no work
        self._starting: dict = {}  # ready() reference -> trainer that has not answered yet
        self._fence_token: str | None = None
        self._nodes: cluster.NodeWatch | None = None  # set by start()

    def start(self, fence_token: str | None = None) -> None:
        self._fence_token = fence_token
        connect()
        check_resources(self.config.resources, self.log)
        self._nodes = cluster.NodeWatch(self.log)
        self._cls = trainer_class(self.config.resources)
        self.actors, self._idle, self._starting = [], [], {}
        for _ in range(self.config.resources.trainers):
            self._launch()

    def _launch(self) -> None:
        actor = self._cls.remote(self.config, self.run_dir, self._fence_token)
        self.actors.append(actor)
        self._starting[actor.ready.remote()] = actor

    def run(self, specs: Sequence[Spec], load_parent: ParentLoader) -> Iterator[Result]:
        """Yield a `Result` for every spec, in the order they finish."""
        parents = {key: _Parent(key, load_parent) for key in {spec.parent_key for spec in specs}}
        queue = deque(_Job(spec, parents[spec.parent_key]) for spec in specs)
        del parents  # the jobs hold them
        yield from self._drain(queue)

    def _drain(self, queue: deque) -> Iterator[Result]:
        """Hand queued jobs to trainers that have answered, as they come free; one ``ray.wait`` loop
        watches the jobs running, the trainers not answered yet, and each job's deadline."""
        r = self.config.resources
        running: dict = {}  # future -> _Running
        reported = time.monotonic()  # the last line on trainers not ready
        while queue or running:
            self._hand_out(queue, running)
            now = time.monotonic()
            deadline = min((run.started + r.timeout_s for run in running.values()), default=math.inf)
            if self._starting and queue:
                deadline = min(deadline, reported + cluster.REPORT_EVERY_S)
            stalled = not running  # work waits, but no trainer has answered
            if stalled:
                deadline = min(deadline, now + cluster.POLL_S)
            if self._nodes is not None:
                deadline = min(deadline, self._nodes.next_look())
            timeout = None if deadline == math.inf else max(0.0, deadline - now)
            done, _ = ray.wait(list(running) + list(self._starting), num_returns=1, timeout=timeout)
            results = []
            for ref in done:
                if ref in self._starting:
                    results.extend(self._answered(ref, queue))
                else:
                    results.extend(self._finished(ref, running.pop(ref), queue))
            results.extend(self._time_out(running, queue))
            # the trainers that came free get their next jobs before the driver records the results:
            # they train while it writes, instead of waiting for it at every job
            try:
                self._hand_out(queue, running)
            finally:  # a parent that cannot be loaded fails the run, but never the results already in
                yield from results
            if self._nodes is not None:
                self._nodes.look_if_due()
            now = time.monotonic()
            if self._starting and queue and now - reported >= cluster.REPORT_EVERY_S:
                ready = len(self.actors) - len(self._starting)
                self.log(
                    f"trainers: {ready} of {len(self.actors)} ready, {len(running)} busy; {_count(len(queue))} "
                    f"waiting for one (the other trainers are not placed by the cluster yet, or still starting)"
                )
                reported = now
            if stalled and not done and not running:
                # no trainer answers: fine while they start, but not if no node can hold one any more
                wait_for_node(
                    per_trainer(self.config.resources),
                    r.wait_for_nodes_s,
                    self.log,
                    f"{_count(len(queue))} waiting, but no trainer can be placed any more: ",
                )

    def _hand_out(self, queue: deque, running: dict) -> None:
        """Give every idle trainer the next job it may take (`_next_job`), in the queue's order; launch
        replacements for the trainers lost while work waits."""
        while queue and len(self.actors) < self.config.resources.trainers:
            self._launch()
        passed_over = []  # idle trainers whose every waiting job last failed on them
        while queue and self._idle:
            actor = self._idle.pop()
            job = self._next_job(actor, queue)
            if job is None:
                passed_over.append(actor)
                continue
            job.attempts += 1
            running[actor.develop.remote(job.spec, job.parent.ref())] = _Running(actor, job, time.monotonic())
        self._idle.extend(passed_over)

    def _next_job(self, actor, queue: deque) -> _Job | None:
        """The first job waiting that did not last fail on ``actor`` (a retry goes to another trainer);
        None if all did and another trainer that has answered is there to take them."""
        for i, job in enumerate(queue):
            if job.avoid is not actor:
                del queue[i]
                return job
        starting = list(self._starting.values())
        if any(other is not actor and other not in starting for other in self.actors):
            return None
        return queue.popleft()

    def _answered(self, ref, queue: deque) -> Iterator[Result]:
        """A trainer answered ``ready()``: it takes work; or it died starting, and is replaced."""
        actor = self._starting.pop(ref)
        try:
            ray.get(ref)
        except RayError as exc:  # its process died before it answered (the task failed to build, node lost)
            self._discard(actor)
            if self._nodes is not None:
                self._nodes.suspect()
            if queue:  # charged to the next individual, as if the trainer had died running it: never a loop
                job = queue.popleft()
                job.attempts += 1
                yield from self._retry(job, queue, f"trainer process could not start: {_first_line(exc)}")
            return
        self._idle.append(actor)
        if self._nodes is not None:
            self._nodes.look()  # a trainer placed: on a node that joined, perhaps

    def _finished(self, future, run: _Running, queue: deque) -> Iterator[Result]:
        try:
            outcome = ray.get(future)
        except RayActorError as exc:  # the process died: replace it, retry the individual
            self._discard(run.actor)
            if self._nodes is not None:
                self._nodes.suspect()
            yield from self._retry(run.job, queue, f"trainer process died: {_first_line(exc)}")
            return
        except RayTaskError as exc:  # raised outside the Developer's own handling (a parent that did not load)
            self._discard(run.actor)
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            outcome = Outcome.failed(run.job.spec.individual_id, f"{type(cause).__name__}: {_first_line(cause)}")
            outcome = replace(outcome, failure=classify(cause).cause)
        except RayError as exc:  # Ray could not run the call (a lost object, the worker killed for memory)
            self._discard(run.actor)
            yield from self._retry(run.job, queue, f"{type(exc).__name__}: {_first_line(exc)}")
            return
        else:
            if outcome.replace_trainer:  # its CUDA context is broken: every later individual would fail there
                self._discard(run.actor)
            else:
                self._idle.append(run.actor)
        if outcome.retried:  # the infrastructure's failure (storage, a neighbour's OOM, a CUDA error)
            run.job.avoid = run.actor  # on another trainer, where there is one, and after the others
            yield from self._retry(run.job, queue, outcome.error or "infrastructure failure", last=True)
            return
        yield Result(run.job.spec, outcome, run.job.attempts)

    def _time_out(self, running: dict, queue: deque) -> Iterator[Result]:
        """Kill the trainer of every job past ``resources.timeout_s``; retry the job elsewhere."""
        limit = self.config.resources.timeout_s
        now = time.monotonic()
        for future, run in list(running.items()):
            if now - run.started < limit:
                continue
            del running[future]
            if ray.wait([future], timeout=0)[0]:  # it finished in the meantime after all
                yield from self._finished(future, run, queue)
                continue
            self._discard(run.actor)
            error = f"TimeoutError: timed out after {limit:g} s (resources.timeout_s); its trainer was killed"
            yield from self._retry(run.job, queue, error)

    def _retry(self, job: _Job, queue: deque, error: str, last: bool = False) -> Iterator[Result]:
        """Run ``job`` again, first in line (``last``: after the jobs waiting, e.g. for a neighbour's
        memory to free up); once it has had ``max_retries`` retries, it failed with ``error``."""
        retries = self.config.resources.max_retries
        if job.attempts <= retries:
            why = _first_line_of(error)
            self.log(f"{job.spec.individual_id}: attempt {job.attempts} of {retries + 1} failed ({why}); retried")
            queue.append(job) if last else queue.appendleft(job)
            return
        error = f"{error} ({job.attempts} attempts; resources.max_retries: {retries})"
        outcome = Outcome.failed(job.spec.individual_id, error, Failure(INFRASTRUCTURE))
        yield Result(job.spec, outcome, job.attempts)

    def _discard(self, actor) -> None:
        """Kill a trainer and forget it (a new one is launched when work waits for it)."""
        if actor in self.actors:
            self.actors.remove(actor)
        if actor in self._idle:
            self._idle.remove(actor)
        _kill(actor)

    def actor_pids(self) -> list[int]:
        """The pid of every trainer (waits until all have been placed and started)."""
        return ray.get([a.pid.remote() for a in self.actors])

    def shutdown(self) -> None:
        for actor in self.actors:
            _kill(actor)
        self.actors, self._idle, self._starting = [], [], {}


def _kill(actor) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already gone
        pass


def _count(n: int) -> str:
    return f"{n} individual" if n == 1 else f"{n} individuals"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


def _first_line_of(text: str, limit: int = 200) -> str:
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."
