"""Trainer actors: long-lived Ray actors, each holding one `Developer` (task, data, traced network)
so that imports, data and CUDA start-up are paid once per actor, not once per offspring."""

from __future__ import annotations

import os
from dataclasses import replace

import ray
import torch

from ...config import Config, ResourcesSection
from ..executors.base import trainer_threads
from ..jobs import Outcome, ParentState, Spec
from ..worker.develop import Developer


class Trainer:
    def __init__(self, config: Config, run_dir: str, fence_token: str | None = None):
        torch.set_num_threads(trainer_threads(config.resources))
        self.developer = Developer(config, run_dir, fence_token=fence_token)
        # build the data now, while the driver is still shipping parents, not on the first offspring
        self.developer.task.train_set()
        self.developer.task.eval_sets()
        ctx = ray.get_runtime_context()
        self.node_id = ctx.get_node_id()
        self.worker_id = ctx.get_worker_id()

    def develop(self, spec: Spec, parent: ParentState | None) -> Outcome:
        outcome = self.developer.develop(spec, parent)
        return replace(outcome, node_id=self.node_id, worker_id=self.worker_id)

    def ready(self) -> int:
        """Answers once the trainer is placed and built (task, data): only then does it get work."""
        return os.getpid()

    def pid(self) -> int:
        return os.getpid()


def trainer_class(r: ResourcesSection):
    """The actor class with the configured resources (fractional GPUs pack offspring on one GPU)."""
    return ray.remote(
        num_cpus=r.cpus_per_trainer, num_gpus=r.gpus_per_trainer, resources=dict(r.custom) or None, max_restarts=0
    )(Trainer)
