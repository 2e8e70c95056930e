"""Develop one individual: synthesize its genome, train it, measure it (its outputs on the diversity
probe's batch too), checkpoint it.

Plain Python (no Ray): every executor holds one `Developer` per worker and calls `develop` per
individual, and tests can call it directly. Failures come back as failed `Outcome`s that say whose
fault they were (`evopop.engine.failures`): the executor retries those of the infrastructure.
"""

from __future__ import annotations

import glob
import time
import traceback
import warnings
from dataclasses import fields, replace

import torch

from ...compaction import compact, latency_ms
from ...config import Config
from ...records.checkpoints import Checkpoint, GenomeFile, RungState
from ...records.run import RunRecords
from ...records.schema import EVOLVED_KINDS, OK, LayerRecord
from ...synthesis import (
    Environment,
    Genome,
    LayerCount,
    count,
    effective_genome,
    matched_genome,
    mate,
    mean_weights,
    parameter_masks,
    synaptic_weights,
    synthesize,
)
from ...synthesis.baselines import IMP, IMP_REWIND
from ...synthesis.baselines import KINDS as BASELINE_KINDS
from ...tasks.registry import built_task
from ...training.loop import Distillation, TrainingState, TrainResult, evaluate, train_and_evaluate
from ...training.probe import ProbeBatch, held_out_batch, probe_outputs
from ..failures import StorageError, classify, gpu_share
from ..jobs import EFFECTIVE_SIZES, SIZES, Compaction, Outcome, ParentState, Spec
from .weights import built_aside, initial_weights, load_ancestor, load_weights


class Developer:
    def __init__(self, config: Config, run_dir: str, device: str | None = None, fence_token: str | None = None):
        self.config = config
        built = built_task(config.task.name, config.task.args, config.task.paths)
        self.task, self.arch = built.task, built.arch
        self.records = RunRecords(run_dir, fence_token)  # fenced: nothing lands once another driver holds the run
        wants_gpu = config.resources.gpus_per_trainer > 0 and torch.cuda.is_available()
        self.device = torch.device(device or ("cuda" if wants_gpu else "cpu"))
        self._probe_batch: ProbeBatch | None = None
        self._rewind_to: dict[str, torch.Tensor] | None = None  # imp_rewind's start, built once
        self._head_layers: tuple[str, ...] | None = None  # the task's head, frozen (evolution.protect_head)

    @property
    def probe_batch(self) -> ProbeBatch | None:
        """The held-out batch of the functional diversity probe (built once; None when it is off)."""
        diversity = self.config.diversity
        if not (diversity.enabled and diversity.functional_batch):
            return None
        if self._probe_batch is None:
            self._probe_batch = held_out_batch(self.task, diversity.functional_batch)
        return self._probe_batch

    def develop(self, spec: Spec, parent: ParentState | None) -> Outcome:
        """Outcome of one individual: measurements on success, the error on failure."""
        start = time.perf_counter()
        try:
            if self.device.type == "cuda":  # the peak of this individual alone tells whose an OOM is
                torch.cuda.reset_peak_memory_stats(self.device)
            outcome = self._develop(spec, parent)
        except Exception as exc:  # recorded failed, the generation goes on; the executor retries what is not its own
            failure = classify(exc, gpu_share(self.device, self.config.resources.gpus_per_trainer))
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"[-4000:]
            outcome = Outcome.failed(spec.individual_id, error, failure)
            if self.device.type == "cuda" and not failure.replace_trainer:
                torch.cuda.empty_cache()
        return replace(outcome, wall_seconds=time.perf_counter() - start)

    # -- the steps ---------------------------------------------------------------------------
    def _develop(self, spec: Spec, parent: ParentState | None) -> Outcome:
        torch.manual_seed(spec.train_seed)
        model = self.task.build_model()
        resume = None
        if spec.rung:  # a later rung of successive halving: the same genome, its training continued
            genome, resume, trained = *self._stored_training(spec), False
        elif parent is None:
            genome, trained = self._ancestor(model)
        else:
            genome, trained = self._offspring(model, spec, parent), False
        if trained:  # a loaded ancestor is measured as it is
            model.to(self.device)
            metrics = evaluate(model, self.task, self.config.train.recipe(1), self.device)
            result = TrainResult(metrics, train_seconds=0.0, samples_per_second=float("nan"), epochs=None)
        else:
            masks = parameter_masks(self.arch, genome)
            recipe = self.config.train.recipe(spec.epochs)
            distill = self._distillation(parent)
            result = train_and_evaluate(
                model, self.task, recipe, spec.train_seed, masks, self.device, distill, spec.train_until, resume
            )
        if result.state is not None:  # stopped at a rung: the next rung continues from here
            self._store_training(spec, genome, result.state)
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        meta = {"generation": spec.generation, "parent_id": spec.parent_id, "lineage": list(spec.lineage)}
        if spec.parent_ids:
            meta["parent_ids"] = list(spec.parent_ids)
        genome_file = spec.kind in EVOLVED_KINDS and self.config.diversity.enabled  # not baselines'
        outputs, described = self._probe(model) if genome_file else (None, {})
        counts = count(self.arch, genome)
        layers = tuple(_layer_record(spec.individual_id, layer) for layer in counts.layers)
        try:
            if genome_file:  # read by the driver's diversity study instead of the checkpoint
                self.records.write_genome(
                    spec.individual_id, GenomeFile(genome.state_dict(), {**meta, **described}, outputs)
                )
            checkpoint = self.records.write_checkpoint(
                spec.individual_id, Checkpoint(weights, genome.state_dict(), meta)
            )
        except OSError as exc:  # the storage's failure, not the individual's: retried
            raise StorageError(f"could not write the checkpoint to {self.records.uri}: {exc}") from exc
        living = effective_genome(self.arch, genome)
        effective = count(self.arch, living)
        compacted = self._compaction(model, genome, living) if self.config.compaction.enabled else None
        try:  # last: a failed individual has no layer rows. Here rather than on the driver, whose time per
            # offspring is what limits a population's size
            self.records.write_layers(spec.generation, spec.individual_id, layers)
        except OSError as exc:
            raise StorageError(f"could not write the layer rows to {self.records.uri}: {exc}") from exc
        sizes = {name: getattr(counts, name) for name in SIZES}
        sizes |= {name: getattr(effective, name.removeprefix("effective_")) for name in EFFECTIVE_SIZES}
        return Outcome(
            individual_id=spec.individual_id,
            status=OK,
            metrics=result.metrics,
            **sizes,
            compact=compacted,
            layers=layers,
            layers_written=bool(layers),
            epochs=result.epochs,
            train_loss=tuple(result.history),
            train_seconds=result.train_seconds,
            samples_per_second=result.samples_per_second,
            mask_digest=genome.digest(),
            checkpoint=checkpoint,
        )

    def _stored_training(self, spec: Spec) -> tuple[Genome, TrainingState]:
        """The genome and the training its previous rung stored (`_store_training`)."""
        try:
            stored = self.records.read_training_state(spec.individual_id, spec.rung - 1)
        except OSError as exc:  # the storage's failure: retried
            where = f"rung {spec.rung - 1} from {self.records.uri}"
            raise StorageError(f"could not read the training of {where}: {exc}") from exc
        return Genome.from_state_dict(stored.masks), stored.training

    def _store_training(self, spec: Spec, genome: Genome, state: TrainingState) -> None:
        try:
            self.records.write_training_state(spec.individual_id, spec.rung or 0, RungState(genome.state_dict(), state))
        except OSError as exc:
            where = f"rung {spec.rung} to {self.records.uri}"
            raise StorageError(f"could not store the training of {where}: {exc}") from exc

    def _distillation(self, parent: ParentState | None) -> Distillation | None:
        """The parent as the teacher, where ``evolution.distill`` asks for one (not for the root)."""
        settings = self.config.evolution.distill
        if parent is None or settings.weight <= 0:
            return None
        teacher = built_aside(self.task)  # draws nothing the student would see
        load_weights(teacher, parent.tensors()[0], "the parent (distillation teacher)")
        return Distillation(teacher, settings.weight, settings.temperature)

    def _initial_weights(self) -> dict[str, torch.Tensor]:
        if self._rewind_to is None:
            self._rewind_to = initial_weights(self.config, self.task, self.arch)
        return self._rewind_to

    def _probe(self, model: torch.nn.Module) -> tuple[torch.Tensor | None, dict]:
        """(outputs on the probe's held-out batch, computed here on the trainer's device; what the
        genome file's metadata says of them): (None, {}) when the functional probe is off, or failed
        (a measurement for the diversity study: the trained individual stands, the driver computes them)."""
        try:
            if self.probe_batch is None:
                return None, {}
            outputs = probe_outputs(model, self.probe_batch.inputs, self.config.train.eval_batch_size)
            return outputs, {"probe": self.probe_batch.describe()}
        except Exception as exc:
            warnings.warn(f"no outputs on the diversity probe's batch: {type(exc).__name__}: {exc}", stacklevel=2)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return None, {}

    def _compaction(self, model: torch.nn.Module, genome: Genome, effective: Genome) -> Compaction | None:
        """The compacted network's size, and its latency measured here (CPU; the GPU if this trainer has one)."""
        if not self.arch.traced:  # said once, before the run (`plan_run`), not once per individual
            return None
        example, settings = self.task.example_input(), self.config.compaction
        try:
            compacted = compact(model, self.arch, genome, example, effective)
            network = compacted.module
            cpu = {
                batch: latency_ms(network, example, batch, settings.repeats, seconds=settings.seconds)
                for batch in (1, 32)
            }
            gpu = None
            if self.device.type == "cuda":
                gpu = latency_ms(network, example, settings.gpu_batch, settings.repeats, self.device, settings.seconds)
        except Exception as exc:  # a measurement, not the trained individual: it is recorded without compaction
            warnings.warn(f"could not compact and time this individual: {type(exc).__name__}: {exc}", stacklevel=2)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return None
        return Compaction(
            params=compacted.params,
            macs=compacted.macs,
            neurons=sum(compacted.neurons.values()),
            cpu_b1_ms=cpu[1],
            cpu_b32_ms=cpu[32],
            gpu_ms=gpu,
        )

    def _ancestor(self, model) -> tuple[Genome, bool]:
        """Generation 1: (its genome, whether it is trained already): a loaded checkpoint is, unless its
        head starts fresh (sized for other classes: it trains then); a fresh network is not."""
        path = self.config.ancestor.checkpoint
        if path is None:
            return Genome.full(self.arch), False
        loaded = load_ancestor(path, model, self.arch, self.task.head_parameters())
        return loaded.genome, not loaded.fresh

    def _offspring(self, model, spec: Spec, parent: ParentState) -> Genome:
        if parent.mates:
            return self._mated(model, spec, parent)
        parent_weights, parent_masks = parent.tensors()
        parent_genome = Genome.from_state_dict(parent_masks)
        if self.config.evolution.init == "inherit":
            load_weights(model, parent_weights, f"parent {spec.parent_id}")
            weights = synaptic_weights(model, self.arch)
        else:  # the fresh initialisation (seeded by train_seed) is trained on the mask
            parent_model = self.task.build_model()
            load_weights(parent_model, parent_weights, f"parent {spec.parent_id}")
            weights = synaptic_weights(parent_model, self.arch)
        if spec.kind in BASELINE_KINDS:
            match = Genome.from_state_dict(self.records.read_checkpoint(spec.match_id).masks)
            counts = {name: int(torch.count_nonzero(mask)) for name, mask in match.masks.items()}
            genome = matched_genome(spec.kind, self.arch, weights, parent_genome, counts, spec.seed or 0)
            if spec.kind == IMP_REWIND:  # the pruned network trains on from the ancestor's start (lottery tickets)
                load_weights(model, self._initial_weights(), "the ancestor's initial weights")
            elif spec.kind == IMP:  # trains on from its parent's weights, whatever evolution.init says
                load_weights(model, parent_weights, f"parent {spec.parent_id}")
            return genome
        normalizer = self.config.evolution.normalizer
        environment, clusters = self._environments(spec)
        return synthesize(self.arch, weights, parent_genome, environment, spec.seed, normalizer, clusters)

    def _environments(self, spec: Spec) -> tuple[Environment, Environment | None]:
        """The spec's synapse and cluster environments, the task's head frozen in both where
        ``evolution.protect_head`` (a task without a head, the default, changes nothing)."""
        if not self.config.evolution.protect_head:
            return spec.environment, spec.clusters
        if self._head_layers is None:
            self._head_layers = head_layers(self.task, self.arch)
        return with_frozen(spec.environment, self._head_layers), with_frozen(spec.clusters, self._head_layers)

    def _mated(self, model, spec: Spec, first: ParentState) -> Genome:
        """Multi-parent synthesis (`evopop.synthesis.mating`): the parents' mated strengths and
        intersection; the offspring starts from their mean weights (``init: inherit``)."""
        states = [state.tensors() for state in (first, *first.mates)]
        mean = mean_weights([weights for weights, _ in states])  # fails on parents of different networks
        target = built_aside(self.task) if self.config.evolution.init == "reinit" else model  # reinit: checked only
        load_weights(target, mean, f"the mean of parents {spec.parent_key}")
        # a synaptic layer's weight is a state-dict entry (`SynapticLayer.weight_name`): no network to build
        parents = [
            ({layer.name: weights[layer.weight_name] for layer in self.arch.layers}, Genome.from_state_dict(masks))
            for weights, masks in states
        ]
        mated = mate(self.arch, parents)
        normalizer = self.config.evolution.normalizer
        environment, clusters = self._environments(spec)
        return synthesize(
            self.arch,
            mated.strengths,
            mated.genome,
            environment,
            spec.seed,
            normalizer,
            clusters,
            mated.cluster_strengths,
        )


def _layer_record(individual_id: str, layer: LayerCount) -> LayerRecord:
    """The layers row of one synaptic layer's counts: the same fields, its name as ``layer``."""
    counted = {f.name: getattr(layer, f.name) for f in fields(LayerRecord) if f.name not in ("individual_id", "layer")}
    return LayerRecord(individual_id=individual_id, layer=layer.name, **counted)


def head_layers(task, arch) -> tuple[str, ...]:
    """The synaptic layers of the task's head (`Task.head_parameters`), as patterns that match them alone."""
    head = set(task.head_parameters())
    return tuple(glob.escape(layer.name) for layer in arch.layers if layer.weight_name in head)


def with_frozen(env: Environment | None, patterns: tuple[str, ...]) -> Environment | None:
    """``env`` with the layers ``patterns`` name frozen too (None stays None)."""
    if env is None or not patterns:
        return env
    return replace(env, frozen=(*env.frozen, *patterns))
