"""Train and evaluate one individual. Knows nothing of Ray or storage.

Masked training: dead synapses (and dead neurons' biases / norm parameters) are held at exactly zero
by `MaskedParameters`. On CPU a run is deterministic for a given seed; on GPU it uses mixed
precision (bf16 autocast where supported, else fp16 with loss scaling) unless told otherwise.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from annotated_types import Ge, Gt, Le, Lt
from torch import nn
from torch.utils.data import DataLoader

from ..synthesis import MaskedParameters
from ..synthesis.inputs import batch_size, call, normalised, to_device
from ..tasks.base import Task


class DivergedError(RuntimeError):
    """The individual's own training failed (non-finite loss): recorded as failed, not retried."""


@dataclass(frozen=True)
class Recipe:
    """How a network trains. The one home of these fields: a run's ``train`` config section is
    derived from them (`evopop.config.TrainSection`), their bounds included."""

    epochs: Annotated[int, Ge(1)] = 1  # epochs of training per individual (see ancestor.epochs, evolution.epochs)
    batch_size: Annotated[int, Ge(1)] = 64  # training batch size
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"  # the optimizer
    lr: Annotated[float, Gt(0)] = 0.05  # the peak learning rate
    momentum: Annotated[float, Ge(0), Lt(1)] = 0.9  # SGD momentum (adam and adamw do not read it)
    weight_decay: Annotated[float, Ge(0)] = 5e-4  # weight decay
    # restarts: cosine with warm restarts (SGDR), `cycles` equal cycles per training
    schedule: Literal["constant", "cosine", "step", "restarts"] = "cosine"
    step_size: Annotated[int, Ge(1)] = 1  # epochs per decay, for "step"
    cycles: Annotated[int, Ge(1)] = 2  # cosine cycles of equal length, for "restarts"
    gamma: Annotated[float, Gt(0), Le(1)] = 0.1  # the decay factor of "step"
    warmup_steps: Annotated[int, Ge(0)] = 0  # linear warm-up, in optimizer steps
    mixed_precision: Literal["auto", "bf16", "fp16", "off"] = "auto"  # GPU only; auto picks what the GPU supports
    eval_batch_size: Annotated[int, Ge(1)] = 256  # evaluation batch size
    num_workers: Annotated[int, Ge(0)] = 0  # data-loading worker processes per trainer


@dataclass(frozen=True)
class Distillation:
    """Heredity of function: the offspring learns its parent's outputs beside the task's targets.

    loss = (1 - weight) * task loss + weight * distillation loss, where the distillation loss is
    Hinton et al.'s T^2-scaled KL divergence between the softened outputs over dimension 1
    (classifier logits, or dense per-pixel logits), or the mean squared difference for outputs of a
    single channel. ``teacher``: the parent network, used in eval mode and never trained."""

    teacher: nn.Module
    weight: float
    temperature: float = 2.0


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """How far ``student``'s outputs are from ``teacher``'s (see `Distillation`)."""
    if student.dim() < 2 or student.shape[1] == 1:
        return nn.functional.mse_loss(student.float(), teacher.float())
    t = temperature
    log_student = nn.functional.log_softmax(student.float() / t, dim=1)
    log_teacher = nn.functional.log_softmax(teacher.float() / t, dim=1)
    per_sample = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1)  # KL over the classes
    return per_sample.mean() * t * t


@dataclass
class TrainResult:
    metrics: dict[str, float]  # "<eval set>_<metric>" -> value
    train_seconds: float
    samples_per_second: float
    history: list[float] = field(default_factory=list)  # mean training loss per epoch
    epochs: int = 0  # epochs trained (over every stop, where it continued a `TrainingState`)
    state: TrainingState | None = None  # where it stopped before the recipe's end (``until``)


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def make_schedule(optimizer, recipe: Recipe, steps_per_epoch: int):
    """The learning-rate factor per step. ``restarts`` is SGDR (Loshchilov & Hutter, 2017) with
    ``cycles`` cosine cycles of (nearly) equal length, each ending at rate 0: each restart lifts the
    rate back to ``lr``, which lets a pruned network leave the basin its parent's weights put it in
    before settling again."""
    total = max(1, recipe.epochs * steps_per_epoch)
    cycles = max(1, min(recipe.cycles, total // 2))  # a cycle of one step would never anneal
    starts = [i * total // cycles for i in range(cycles)] + [total]  # cycles as equal as whole steps allow

    def factor(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        if recipe.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        if recipe.schedule == "restarts":
            step = min(step, total)
            i = min(bisect.bisect_right(starts, step) - 1, cycles - 1)  # the cycle holding this step
            start, length = starts[i], starts[i + 1] - starts[i]
            return 0.5 * (1 + math.cos(math.pi * (step - start) / length))
        if recipe.schedule == "step":
            return recipe.gamma ** (step // max(1, recipe.step_size * steps_per_epoch))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _autocast_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or recipe.mixed_precision == "off":
        return None
    if recipe.mixed_precision == "fp16":
        return torch.float16
    if recipe.mixed_precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


@dataclass
class TrainingState:
    """Training stopped at an epoch boundary, to be continued exactly (successive halving's rungs):
    everything the rest of the training depends on. Continued, it gives bit for bit (on CPU) the
    weights, and the draws, of a training that never stopped: the shuffling generator, the global
    random state (dropout) and the schedule's step are taken before the evaluation that follows a
    stop, which draws from the global state too."""

    epoch: int  # epochs trained
    model: dict[str, torch.Tensor]
    optimizer: dict
    schedule: dict
    scaler: dict | None
    loader_rng: torch.Tensor  # the shuffling generator's state
    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor] | None
    history: list[float]
    samples: int
    seconds: float  # training time so far, over every stop

    def payload(self) -> dict:
        """Plain tensors, lists and numbers: loads with ``torch.load(..., weights_only=True)``."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @classmethod
    def from_payload(cls, payload: dict) -> TrainingState:
        return cls(**{f: payload[f] for f in cls.__dataclass_fields__})


def train_and_evaluate(
    model: nn.Module,
    task: Task,
    recipe: Recipe,
    seed: int,
    masks: dict[str, torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    distill: Distillation | None = None,
    until: int | None = None,
    resume: TrainingState | None = None,
) -> TrainResult:
    """Train ``model`` under ``recipe`` (its schedule spans ``recipe.epochs``) and evaluate it.

    ``until``: stop after that many epochs instead (the result then carries the `TrainingState` to
    continue from); ``resume``: continue from such a state rather than from the start."""
    device = torch.device(device)
    stop = recipe.epochs if until is None else until
    if not 0 < stop <= recipe.epochs or (resume is not None and not resume.epoch < stop):
        raise ValueError(f"cannot train from epoch {resume.epoch if resume else 0} to {stop} of {recipe.epochs}")
    torch.manual_seed(seed)
    model.to(device)
    if distill is not None:
        distill.teacher.to(device).eval()
    optimizer = make_optimizer(model, recipe)
    masked = MaskedParameters(model, masks).attach(optimizer) if masks else None
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        task.train_set(),
        batch_size=recipe.batch_size,
        shuffle=True,
        drop_last=False,
        num_workers=recipe.num_workers,
        generator=generator,
        pin_memory=device.type == "cuda",
        persistent_workers=recipe.num_workers > 0,  # workers (and their open files) live across epochs
    )
    schedule = make_schedule(optimizer, recipe, len(loader))
    amp = _autocast_dtype(recipe, device)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None

    history, samples, seconds, first = [], 0, 0.0, 0
    if resume is not None:
        first, history, samples, seconds = resume.epoch, list(resume.history), resume.samples, resume.seconds
        _restore(resume, model, optimizer, schedule, scaler, generator, device)
    start = time.perf_counter()
    model.train()
    for _ in range(first, stop):
        total, batches = torch.zeros((), device=device), 0
        for batch, targets in loader:
            inputs = to_device(normalised(batch), device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                outputs = call(model, inputs)
                loss = task.loss(outputs, targets)
                if distill is not None:
                    with torch.no_grad():
                        taught = call(distill.teacher, inputs)
                    imitation = distillation_loss(outputs, taught, distill.temperature)
                    loss = (1 - distill.weight) * loss + distill.weight * imitation
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            schedule.step()
            total += loss.detach().float()
            batches += 1
            samples += batch_size(inputs)
        epoch_loss = float(total) / max(1, batches)  # one sync per epoch, not per step
        if not math.isfinite(epoch_loss):
            raise DivergedError(f"training loss became {epoch_loss} in epoch {len(history) + 1}")
        history.append(epoch_loss)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds += time.perf_counter() - start
    state = None
    if stop < recipe.epochs:  # taken before evaluation draws from the global random state
        state = _state(stop, model, optimizer, schedule, scaler, generator, device, history, samples, seconds)
    if masked is not None:
        masked.detach()

    return TrainResult(
        metrics=evaluate(model, task, recipe, device, amp),
        train_seconds=seconds,
        samples_per_second=samples / seconds if seconds > 0 else float("nan"),
        history=history,
        epochs=stop,
        state=state,
    )


def _state(epoch, model, optimizer, schedule, scaler, generator, device, history, samples, seconds) -> TrainingState:
    cuda = [torch.cuda.get_rng_state(device)] if device.type == "cuda" else None
    return TrainingState(
        epoch=epoch,
        model={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        optimizer=_cpu(optimizer.state_dict()),
        schedule={k: v for k, v in schedule.state_dict().items() if k != "lr_lambdas"},
        scaler=scaler.state_dict() if scaler is not None else None,
        loader_rng=generator.get_state(),
        torch_rng=torch.get_rng_state(),
        cuda_rng=cuda,
        history=list(history),
        samples=samples,
        seconds=seconds,
    )


def _restore(state: TrainingState, model, optimizer, schedule, scaler, generator, device) -> None:
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)  # moves the state to the parameters' device
    schedule.load_state_dict({**schedule.state_dict(), **state.schedule})
    if scaler is not None and state.scaler:
        scaler.load_state_dict(state.scaler)
    generator.set_state(state.loader_rng)
    torch.set_rng_state(state.torch_rng)
    if device.type == "cuda" and state.cuda_rng:
        torch.cuda.set_rng_state(state.cuda_rng[0], device)


def _cpu(value):
    """An optimizer's state dict with its tensors on the CPU (a state is stored, then continued anywhere)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cpu(v) for v in value]
    return value


def _to_device(targets, device):
    """A batch of targets on ``device``: a tensor, or a list of per-item tensors (targets of
    different sizes, from a data set's own ``collate_fn``)."""
    if isinstance(targets, torch.Tensor):
        return targets.to(device)
    return [target.to(device) for target in targets]


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, recipe: Recipe, device, amp=None) -> dict[str, float]:
    """Every metric of the task on every evaluation set, as "<set>_<metric>".

    An evaluation set with a ``collate_fn`` attribute (not None) is batched with it: its targets may
    then be a list of per-item tensors, which ``task.loss`` and the task's metric must accept."""
    model.eval()
    results: dict[str, float] = {}
    for set_name, dataset in task.eval_sets().items():
        metric = task.metrics()
        loss_sum, count = torch.zeros((), device=device, dtype=torch.float64), 0
        loader = DataLoader(
            dataset,
            batch_size=recipe.eval_batch_size,
            num_workers=recipe.num_workers,
            collate_fn=_collate_of(dataset),
        )
        for batch, targets in loader:
            inputs, targets = to_device(normalised(batch), device), _to_device(targets, device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                output = call(model, inputs)
            output = output.float()
            size = batch_size(inputs)
            loss_sum += task.loss(output, targets).double() * size
            count += size
            metric.update(output, targets)
        results[f"{set_name}_loss"] = float(loss_sum) / max(1, count)
        for name, value in metric.compute().items():
            results[f"{set_name}_{name}"] = float(value)
    return results


def _collate_of(dataset):
    """The ``collate_fn`` a data set carries, also through ``Subset``-style wrappers (``.dataset``)."""
    while dataset is not None:
        collate = getattr(dataset, "collate_fn", None)
        if collate is not None:
            return collate
        dataset = getattr(dataset, "dataset", None)
    return None
