"""What an executor is: ``run(specs, load_parent)`` yields a `Result` per spec, in the order they
finish. The controller never knows how (nevergrad's ``executor=`` idea). A parent's state is loaded
when the executor asks for it (``load_parent(spec.parent_key)``), one parent at a time, so a driver
never holds a generation's parents in memory at once.

Two carry the jobs out: `evopop.engine.executors.local.LocalExecutor` (``resources.executor: local``)
in this process, and `evopop.engine.ray.executor.RayExecutor` (``resources.executor: ray``, the
default) on long-lived trainer actors of a Ray cluster. Both give the same records for the same
seeds: an individual is a pure function of its spec.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from ...config import ResourcesSection
from ..jobs import ParentState, Result, Spec

ParentLoader = Callable[[str], ParentState]


class Executor(Protocol):
    def start(self, fence_token: str | None = None) -> None:
        """Acquire workers (and check they can exist) before the first job; ``fence_token``: the run
        lock's token, which every file a worker writes is fenced by (`evopop.records.locks`)."""

    def run(self, specs: Sequence[Spec], load_parent: ParentLoader) -> Iterator[Result]:
        """Develop every spec (its parents from ``load_parent(spec.parent_key)``); yield results as they finish."""

    def shutdown(self) -> None:
        """Release the workers; the executor can be started again."""


def trainer_threads(resources: ResourcesSection) -> int:
    """Intra-op threads of one trainer: ``torch_threads``, else its whole CPUs."""
    return resources.torch_threads or max(1, int(resources.cpus_per_trainer))
