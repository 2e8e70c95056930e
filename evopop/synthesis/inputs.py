"""A network's inputs, as a task's example input and its data loader's batches give them: one tensor,
a tuple of tensors (positional arguments: ``model(image, mask)``) or a dict of tensors (keyword
arguments: ``model(input_ids=..., attention_mask=...)``, as most text and multi-modal models take;
or, where no key names an argument of ``forward``, the dict whole as its first: ``model(batch)``).

Everything that runs a network (tracing, training, evaluation, compaction's check, latency, export)
goes through `call` and the helpers here, so a model with several inputs works wherever one with a
single tensor does. The batch dimension is the first of every tensor.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import fx

Inputs = torch.Tensor | tuple[torch.Tensor, ...] | Mapping[str, torch.Tensor]


def normalised(inputs: Any) -> Inputs:
    """``inputs`` as one of the three `Inputs` forms (a data loader collates tuples into lists);
    TypeError, naming what was given, for anything else."""
    if isinstance(inputs, torch.Tensor):
        return inputs
    if isinstance(inputs, Mapping) and inputs and all(isinstance(v, torch.Tensor) for v in inputs.values()):
        return dict(inputs)
    if isinstance(inputs, Sequence) and inputs and all(isinstance(v, torch.Tensor) for v in inputs):
        return tuple(inputs)
    raise TypeError(
        "a network's input must be a tensor, a tuple of tensors (positional arguments) or a dict of "
        f"tensors (keyword arguments); got {_kind(inputs)}"
    )


def call(model: Callable, inputs: Inputs):
    """``model`` run on ``inputs``: one tensor as its argument, a tuple as positional arguments, a dict
    as keyword arguments (or whole, `takes_whole_dict`)."""
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(inputs) if takes_whole_dict(model, inputs) else model(**inputs)
    return model(*inputs)


def takes_whole_dict(model: Callable, inputs: Mapping) -> bool:
    """Whether ``model``'s forward takes the dict ``inputs`` whole, as its first argument: none of the
    dict's keys names one of its arguments (``forward(self, batch)`` reading ``batch["image"]``)."""
    names = _argument_names(model)
    return bool(names) and not set(inputs) & set(names)


def _argument_names(model: Callable) -> list[str]:
    forward = getattr(model, "forward", model)
    try:
        parameters = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):
        return []
    named = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in named]


def tensors(inputs: Inputs) -> list[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    return list(inputs.values()) if isinstance(inputs, Mapping) else list(inputs)


def map_tensors(inputs: Inputs, fn: Callable[[torch.Tensor], torch.Tensor]) -> Inputs:
    """``inputs`` with ``fn`` applied to each tensor, in the same form."""
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, Mapping):
        return {name: fn(t) for name, t in inputs.items()}
    return tuple(fn(t) for t in inputs)


def to_device(inputs: Inputs, device: torch.device | str, non_blocking: bool = False) -> Inputs:
    return map_tensors(inputs, lambda t: t.to(device, non_blocking=non_blocking))


def batch_size(inputs: Inputs) -> int:
    """The batch dimension (the first tensor's first)."""
    return int(tensors(inputs)[0].shape[0])


def split(inputs: Inputs, size: int) -> list[Inputs]:
    """``inputs`` in chunks of ``size`` along the batch dimension (the last may be smaller)."""
    total = batch_size(inputs)
    return [map_tensors(inputs, lambda t, s=start: t[s : s + size]) for start in range(0, total, max(1, size))]


def with_batch(inputs: Inputs, batch: int) -> Inputs:
    """The first item of ``inputs`` repeated ``batch`` times (contiguous copies)."""
    return map_tensors(inputs, lambda t: t[:1].expand(batch, *t.shape[1:]).contiguous())


def placeholder_arguments(graph: fx.GraphModule, inputs: Inputs) -> list:
    """``inputs`` as the positional arguments of a traced ``graph`` (torch.fx turns every argument of
    ``forward`` into a placeholder, in order): a dict's entries by name, an argument not given at its
    default; ValueError naming any the network needs that ``inputs`` lacks, or any it does not take."""
    names = [node for node in graph.graph.nodes if node.op == "placeholder"]
    whole = isinstance(inputs, Mapping) and names and not set(inputs) & {str(node.target) for node in names}
    given = list(inputs) if isinstance(inputs, Mapping) and not whole else []
    positional = [inputs] if whole else [] if isinstance(inputs, Mapping) else tensors(inputs)
    if len(positional) > len(names):
        raise ValueError(f"the example input has {len(positional)} tensors; the network takes {len(names)}")
    unknown = sorted(set(given) - {str(node.target) for node in names})
    if unknown:
        takes = ", ".join(str(node.target) for node in names)
        raise ValueError(f"the network's forward takes no argument {', '.join(unknown)} (it takes {takes})")
    arguments = []
    for index, node in enumerate(names):
        name = str(node.target)
        if index < len(positional):
            arguments.append(positional[index])
        elif name in given:
            arguments.append(inputs[name])  # type: ignore[index]
        elif node.args:
            arguments.append(node.args[0])  # the argument's default
        else:
            raise ValueError(f"the example input lacks {name!r}, which the network's forward needs")
    return arguments


def description(inputs: Inputs) -> dict | list:
    """The shapes and dtypes of ``inputs`` as plain JSON values (no data): ``{"shape", "dtype"}`` for a
    tensor, a list of those for a tuple, ``{"keywords": {name: ...}}`` for a dict (`from_description`)."""

    def one(t: torch.Tensor) -> dict:
        return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}

    if isinstance(inputs, torch.Tensor):
        return one(inputs)
    if isinstance(inputs, Mapping):
        return {"keywords": {name: one(t) for name, t in inputs.items()}}
    return [one(t) for t in inputs]


def from_description(described: dict | list) -> Inputs:
    """Inputs of the described shapes and dtypes, all zeros (what tracing and export need)."""

    def one(d: dict) -> torch.Tensor:
        return torch.zeros(d["shape"], dtype=getattr(torch, d["dtype"]))

    if isinstance(described, list):
        return tuple(one(d) for d in described)
    if "keywords" in described:
        return {name: one(d) for name, d in described["keywords"].items()}
    return one(described)


def shapes(inputs: Inputs) -> str:
    """The shapes of ``inputs`` for a message: ``1x3x64x64`` or ``input_ids 1x16, attention_mask 1x16``."""

    def one(t: torch.Tensor) -> str:
        return "x".join(str(s) for s in t.shape) or "scalar"

    if isinstance(inputs, torch.Tensor):
        return one(inputs)
    if isinstance(inputs, Mapping):
        return ", ".join(f"{name} {one(t)}" for name, t in inputs.items())
    return ", ".join(one(t) for t in inputs)


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a dict of " + ", ".join(sorted({type(v).__name__ for v in value.values()}) or ["nothing"])
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "a sequence of " + ", ".join(sorted({type(v).__name__ for v in value}) or ["nothing"])
    return type(value).__name__
