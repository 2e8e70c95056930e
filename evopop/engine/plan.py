"""Preflight: everything about a run that can be checked before Ray starts or data loads."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch

from ..config import Config, ConfigError, EvolutionSection
from ..records.checkpoints import NetworkCard
from ..synthesis import Genome, count, synaptic_weights, synthesize
from ..tasks.registry import built_task
from .policy.halving import Rungs
from .policy.specs import cluster_environment, schedule_of
from .policy.stopping import StopRule
from .worker.develop import head_layers, with_frozen

MINIMISED_SUFFIXES = ("_loss", "_mae")  # measured columns where lower is better, unless the config says


@dataclass(frozen=True)
class Plan:
    metric: str  # the selection metric, "<eval set>_<metric>"
    direction: str  # "max" | "min"
    metric_columns: list[str]
    layer_names: list[str]
    dense_synapses: int
    stop: StopRule | None = None  # evolution.stop, its metric resolved
    rungs: Rungs | None = None  # selection.halving: the epochs of each rung


def metric_direction(metric: str, default_metric: str, default_direction: str = "max") -> str:
    """Whether ``metric`` is maximised or minimised where the config does not say: the task's own
    direction for its default metric, "min" for a loss or an error (`MINIMISED_SUFFIXES`), else the
    task's direction."""
    if metric != default_metric and metric.endswith(MINIMISED_SUFFIXES):
        return "min"
    return default_direction


def selection_metric(
    metric: str | None, direction: str | None, default_metric: str, default_direction: str = "max"
) -> tuple[str, str]:
    """(metric, direction) of a run: the configured ones, else the task's defaults (`metric_direction`)."""
    metric = metric or default_metric
    return metric, direction or metric_direction(metric, default_metric, default_direction)


def expected_survival(evolution: EvolutionSection) -> str:
    """What generation 2 is expected to keep of its parent, per level, said before any work starts."""
    levels = [("clusters", "clusters (filters / units)")] if evolution.encoding == "cluster" else []
    parts = []
    for level, what in [*levels, ("synapses", "synapses" + (" of a surviving cluster" if levels else ""))]:
        env = schedule_of(evolution, level).at(2)
        section = evolution.clusters if level == "clusters" else evolution.environment
        if env.mode == "scale":
            kept = (
                f"each of the {what} with probability {env.c:g} x P(s | w): a share that depends on the trained weights"
            )
        elif env.c >= 1:
            kept = f"every one of the {what}"
        else:
            kept = f"about {env.c:.0%} of the {what} ({env.mode})"
        if section.layers:
            kept += f"; {len(section.layers)} layer pattern(s) set their own"
        parts.append(kept)
    return "generation 2 keeps " + "; then ".join(parts)


def drawn_survival(config: Config) -> str:
    """What one generation-2 offspring of the (untrained) ancestor keeps, drawn now as the trainers
    will draw it: the share of neurons and of synapses, and how many times fewer synapses that is.
    Under the "scale" modes the share depends on the trained weights, so it says so."""
    built = built_task(config.task.name, config.task.args, config.task.paths)
    task, arch = built.task, built.arch
    if not arch.layers:
        return ""
    evolution = config.evolution
    with torch.random.fork_rng(devices=[]):  # the run's own random state is left as it was
        torch.manual_seed(config.run.seed)
        model = task.build_model()
        patterns = head_layers(task, arch) if evolution.protect_head else ()
        synapses = with_frozen(schedule_of(evolution).at(2), patterns)
        clusters = with_frozen(cluster_environment(evolution, 2), patterns)
        weights = synaptic_weights(model, arch)
        genome = synthesize(arch, weights, Genome.full(arch), synapses, config.run.seed, evolution.normalizer, clusters)
    kept = count(arch, genome)
    fewer = kept.dense_synapses / max(1, kept.synapses)
    scaled = "scale" in {env.mode for env in (synapses, clusters) if env is not None}
    caveat = " (scale mode: with trained weights the share differs)" if scaled else ""
    return (
        f"one offspring drawn now keeps {kept.neurons / max(1, kept.dense_neurons):.0%} of the neurons and "
        f"{kept.synapses / max(1, kept.dense_synapses):.0%} of the synapses ({fewer:.1f}x fewer){caveat}"
    )


def network_card(config: Config) -> NetworkCard:
    """What rebuilding the run's network takes (`NetworkCard`), from its task (built once per process)."""
    task = built_task(config.task.name, config.task.args, config.task.paths).task
    return NetworkCard.of(task.example_input(), task.network())


def plan_run(config: Config) -> Plan:
    """Build the task, trace its network, check the names the config refers to; ConfigError if off."""
    try:
        built = built_task(config.task.name, config.task.args, config.task.paths)
        built.task.validate()
    except ConfigError:
        raise
    except (ValueError, OSError) as exc:
        message = str(exc)  # a task that names the field it refuses (task.args.root: ...) is quoted as it is
        raise ConfigError(message if message.startswith("task.") else f"task: {message}") from None
    task, arch = built.task, built.arch
    if not arch.traced:
        print(f"network: {arch.note}", flush=True)  # once, on the driver; the run goes on without both
    columns = [f"{s}_{m}" for s in task.eval_set_names() for m in ["loss", *task.metric_names()]]
    s = config.selection
    metric, direction = selection_metric(s.metric, s.direction, task.default_metric, task.default_direction)
    if metric not in columns:
        raise ConfigError(
            f"selection.metric: {metric!r} is not measured by task {config.task.name!r}; allowed: {', '.join(columns)}"
        )
    sections = ["environment"] + (["clusters"] if config.evolution.encoding == "cluster" else [])
    for section in sections:
        env = getattr(config.evolution, section)
        for field, patterns in (("layers", list(env.layers)), ("frozen", list(env.frozen))):
            for pattern in patterns:
                if not any(fnmatchcase(name, pattern) for name in arch.names):
                    raise ConfigError(
                        f"evolution.{section}.{field}: pattern {pattern!r} matches no synaptic layer; "
                        f"layers are: {', '.join(arch.names)}"
                    )
    stop = config.evolution.stop
    if stop.metric is not None and stop.metric not in columns:
        raise ConfigError(
            f"evolution.stop.metric: {stop.metric!r} is not measured by task {config.task.name!r}; "
            f"allowed: {', '.join(columns)}"
        )
    stop_metric = stop.metric or metric
    judged = (
        direction
        if stop_metric == metric
        else metric_direction(stop_metric, task.default_metric, task.default_direction)
    )
    stop_direction = stop.direction or judged
    if config.ancestor.checkpoint:
        from .worker.weights import load_ancestor

        try:
            loaded = load_ancestor(config.ancestor.checkpoint, task.build_model(), arch, task.head_parameters())
        except ValueError as exc:
            raise ConfigError(f"ancestor.checkpoint: {exc}") from None
        print(f"ancestor.checkpoint: {loaded.describe()}", flush=True)  # once, on the driver
    rule = StopRule.of(stop, stop_metric, stop_direction)
    rungs = Rungs.of(config.selection.halving, config.offspring_epochs)
    return Plan(metric, direction, columns, arch.names, arch.synapses, rule, rungs)
