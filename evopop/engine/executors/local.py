"""`LocalExecutor` (``resources.executor: local``): one `Developer` in this process, one individual
after another. No Ray: for debugging with pdb, and for fast tests of the policy. It retries the
infrastructure's failures in place; one that breaks the process (a CUDA error) stops the run.
It gives the same records as the Ray executor for the same seeds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import torch

from ...config import Config
from ..failures import RunStopped
from ..jobs import ParentState, Result, Spec
from ..worker.develop import Developer
from .base import ParentLoader, trainer_threads


class LocalExecutor:
    """Develops every individual in this process, in order, with the trainer's thread count."""

    def __init__(self, config: Config, run_dir: str):
        self.config, self.run_dir = config, run_dir
        self.developer: Developer | None = None
        self._threads: int | None = None

    def start(self, fence_token: str | None = None) -> None:
        # the same intra-op thread count as a trainer actor: CPU results then match it bit for bit
        self._threads = torch.get_num_threads()
        torch.set_num_threads(trainer_threads(self.config.resources))
        self.developer = Developer(self.config, self.run_dir, fence_token=fence_token)

    def run(self, specs: Sequence[Spec], load_parent: ParentLoader) -> Iterator[Result]:
        if self.developer is None:
            raise RuntimeError("LocalExecutor.run before start()")
        loaded: tuple[str | None, ParentState | None] = (None, None)  # siblings come together: keep one
        for spec in specs:
            key = spec.parent_key
            if key is not None and loaded[0] != key:
                loaded = (key, load_parent(key))
            parent = loaded[1] if key is not None else None
            result = self._develop(spec, parent)
            yield result
            if result.outcome.replace_trainer:  # nothing can run in this process any more
                raise RunStopped(
                    f"{spec.individual_id} broke this process's CUDA context: {_first_line(result.outcome.error)}; "
                    "`evopop resume` goes on in a fresh process"
                )

    def _develop(self, spec: Spec, parent: ParentState | None) -> Result:
        """Develop ``spec``, again while the infrastructure fails it (up to ``resources.max_retries``
        times); not after a failure that breaks this process (a CUDA error): `evopop resume` retries it."""
        retries, attempts = self.config.resources.max_retries, 0
        while True:
            attempts += 1
            outcome = self.developer.develop(spec, parent)
            if not outcome.retried or outcome.replace_trainer:
                return Result(spec, outcome, attempts)
            if attempts > retries:
                error = f"{outcome.error} ({attempts} attempts; resources.max_retries: {retries})"
                return Result(spec, replace(outcome, error=error), attempts)

    def shutdown(self) -> None:
        if self._threads is not None:
            torch.set_num_threads(self._threads)
        self.developer, self._threads = None, None


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0]
