"""Export a compacted network as a program that runs without evopop (and without its Python code).

- ``pt2``: a ``torch.export`` program with a dynamic batch dimension; load it with
  ``torch.export.load(path).module()`` in any Python with torch.
- ``onnx``: the same program through torch's ONNX exporter (needs the ``onnx`` and ``onnxscript``
  packages: ``pip install evopop[export]``), for ONNX Runtime, TensorRT and friends.

Both return bytes: where they are written is the caller's business (any storage evopop writes to).
"""

from __future__ import annotations

import inspect
import io
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..synthesis.inputs import Inputs, takes_whole_dict, tensors, with_batch

FORMATS = ("pt2", "onnx")
MAX_BATCH = 1 << 16


def example_batch(example_input: Inputs) -> Inputs:
    """The example at batch 2: exporting at batch 1 would specialise the batch dimension to 1."""
    return with_batch(example_input, 2)


@dataclass(frozen=True)
class _Call:
    """How the exporter calls the network: positional and keyword arguments, their names, and the
    batch dimension (the first of every input, one shared size) marked dynamic by name."""

    args: tuple
    kwargs: dict
    names: list[str]
    dynamic: dict

    @classmethod
    def of(cls, module: nn.Module, example_input: Inputs) -> _Call:
        example = example_batch(example_input)
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        if isinstance(example, Mapping) and takes_whole_dict(module, example):
            (name,) = list(inspect.signature(module.forward).parameters)[:1]
            return cls((dict(example),), {}, [name], {name: {key: {0: batch} for key in example}})
        if isinstance(example, Mapping):
            names, args, kwargs = list(example), (), dict(example)
        else:
            args = tuple(tensors(example))
            names, kwargs = list(inspect.signature(module.forward).parameters)[: len(args)], {}
        return cls(args, kwargs, names, {name: {0: batch} for name in names})


def export_program(module: nn.Module, example_input: Inputs) -> torch.export.ExportedProgram:
    """``module`` (in eval mode) as a ``torch.export`` program whose batch dimension is dynamic."""
    call = _Call.of(module, example_input)
    module = module.eval()
    with torch.no_grad():
        return torch.export.export(module, call.args, call.kwargs, dynamic_shapes=call.dynamic)


def pt2_bytes(module: nn.Module, example_input: Inputs) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(export_program(module, example_input), buffer)
    return buffer.getvalue()


def require_onnx() -> None:
    """RuntimeError saying what to install, unless torch's ONNX exporter can run here."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        needs = "--format onnx needs the onnx and onnxscript packages"
        raise RuntimeError(f"{needs} ({exc}): pip install 'evopop[export]'") from None


def onnx_bytes(module: nn.Module, example_input: Inputs) -> bytes:
    """The ONNX model (one self-contained file, batch dimension named ``batch``); its inputs are named
    ``input`` (one tensor) or after the network's arguments."""
    require_onnx()
    call = _Call.of(module, example_input)
    module = module.eval()
    with tempfile.TemporaryDirectory() as tmp:  # the exporter writes files; it is read back whole
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(
            module,
            call.args,
            path,
            kwargs=call.kwargs or None,
            dynamo=True,
            external_data=False,
            verbose=False,
            input_names=["input"] if isinstance(example_input, torch.Tensor) else call.names,
            output_names=["output"],
            dynamic_shapes=call.dynamic,
        )
        with open(path, "rb") as f:
            return f.read()


def exported_bytes(module: nn.Module, example_input: Inputs, fmt: str) -> bytes:
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {FORMATS}, got {fmt!r}")
    return pt2_bytes(module, example_input) if fmt == "pt2" else onnx_bytes(module, example_input)
