"""Run an evolution from Python, as `evopop run` does:

    from evopop import evolve, load_config
    population = evolve(load_config("configs/tiny.yaml"), "runs/my-run")

`evolve` wires the pieces: preflight (`plan_run`), the executor that ``resources.executor`` names
(`make_executor`: the only place that reaches for the Ray room, and only when asked), the default hooks
(progress output; diversity when ``diversity.enabled``), and the controller that drives them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd
import yaml

from .analysis.tracking import tracking_hooks
from .config import Config, ConfigError, load_config
from .engine.controller import EvolutionController
from .engine.executors.base import Executor
from .engine.executors.local import LocalExecutor
from .engine.hooks import Hook
from .engine.plan import Plan, network_card, plan_run
from .engine.progress import Progress
from .records.run import RunRecords
from .records.storage import absolute


def default_hooks(config: Config, records: RunRecords, plan: Plan, stream=None) -> list[Hook]:
    hooks: list[Hook] = [Progress(plan.metric, plan.direction, stream)]
    if config.diversity.enabled:
        from .analysis.diversity_hook import DiversityRecorder

        hooks.append(DiversityRecorder(config, records, plan.metric_columns))
    return hooks + tracking_hooks(config, records, plan)


def evolution(
    config: Config,
    run_dir: str,
    plan: Plan | None = None,
    executor: Executor | None = None,
    hooks: Sequence[Hook] | None = None,
    stream=None,
) -> EvolutionController:
    """The run of ``config`` in ``run_dir``, ready to `.run()`; a new run directory gets its config.yaml
    (what `evopop resume` reads), an existing one is resumed, if it was started with the same config
    (``resources`` may differ: they change how a run is carried out, not its records)."""
    plan = plan or plan_run(config)
    run_dir = absolute(run_dir)  # trainers on other nodes, or in other working directories, must find it
    records = RunRecords(run_dir)
    resumed = records.exists()
    if resumed:
        check_same_run(config, load_config(yaml.safe_load(records.read_config())), run_dir)
        plan = recorded_direction(plan, records)
    # the hooks (trackers) are set up before a new run directory is written: one that cannot be leaves none
    hooks = default_hooks(config, records, plan, stream) if hooks is None else list(hooks)
    if not resumed:
        with records.lock(config.storage.lock_lease_s):  # two drivers starting one new run: one writes it
            if records.exists():  # the other was first: this is its run, resumed only with the same config
                check_same_run(config, load_config(yaml.safe_load(records.read_config())), run_dir)
            else:
                records.write_network(network_card(config))  # before config.yaml: whole once that exists
                records.write_config(config.to_yaml())
    executor = executor or make_executor(config, run_dir)
    return EvolutionController(config, records, plan, executor, hooks)


def make_executor(config: Config, run_dir: str) -> Executor:
    """The executor ``resources.executor`` names; Ray is imported only when it is the Ray one."""
    if config.resources.executor == "local":
        return LocalExecutor(config, run_dir)
    from .engine.ray.executor import RayExecutor

    return RayExecutor(config, run_dir)


def recorded_direction(plan: Plan, records: RunRecords) -> Plan:
    """``plan`` with the selection direction the run's records were selected by: a resumed run goes
    on as it started, even where the rule for an unstated direction has changed since (runs started
    before errors such as ``val_mae`` were minimised by default maximised them)."""
    recorded = records.metadata()
    if recorded.metric != plan.metric or recorded.direction in (None, plan.direction):
        return plan
    return dataclasses.replace(plan, direction=recorded.direction)


def check_same_run(config: Config, recorded: Config, run_dir: str) -> None:
    """ConfigError unless ``config`` is the config ``run_dir`` was started with (``resources`` and
    ``compaction`` aside: where individuals run and how they are timed change none of them)."""
    wanted, have = config.model_dump(mode="json"), recorded.model_dump(mode="json")
    free = ("resources.", "compaction.", "tracking.", "task.paths")  # how and where, not what
    differ = [key for key in _dotted(wanted) if not key.startswith(free) and _get(wanted, key) != _get(have, key)]
    if differ:
        raise ConfigError(
            f"{run_dir} holds a run of another config (it differs in {', '.join(differ)}); "
            f"finish it with its own config (evopop resume {run_dir}) or start a new run directory"
        )


def _dotted(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        keys += _dotted(value, f"{name}.") if isinstance(value, dict) and value else [name]
    return keys


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def evolve(config: Config, run_dir: str, **kwargs) -> pd.DataFrame:
    """Run (or finish) ``config`` in ``run_dir``; returns the population records. See `evolution`."""
    return evolution(config, run_dir, **kwargs).run()
