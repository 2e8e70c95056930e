"""Export a compacted network as a program that runs without evopop (and without its Python code).

- ``pt2``: a ``torch.export`` program with a dynamic batch dimension; load it with
  ``torch.export.load(path).module()`` in any Python with torch.
- ``onnx``: the same program through torch's ONNX exporter (needs the ``onnx`` and ``onnxscript``
  packages: ``pip install evopop[export]``), for ONNX Runtime, TensorRT and friends.

Both return bytes: where they are written is the caller's business (any storage evopop writes to).
"""

from __future__ import annotations

import io
import os
import tempfile

import torch
from torch import nn

FORMATS = ("pt2", "onnx")
MAX_BATCH = 1 << 16


def example_batch(example_input: torch.Tensor) -> torch.Tensor:
    """The example at batch 2: exporting at batch 1 would specialise the batch dimension to 1."""
    return example_input[:1].expand(2, *example_input.shape[1:]).contiguous()


def _dynamic_batch(example: torch.Tensor, argument: str) -> dict:
    return {argument: {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}}


def _argument_name(module: nn.Module) -> str:
    import inspect

    return next(iter(inspect.signature(module.forward).parameters))


def export_program(module: nn.Module, example_input: torch.Tensor) -> torch.export.ExportedProgram:
    """``module`` (in eval mode) as a ``torch.export`` program whose batch dimension is dynamic."""
    example = example_batch(example_input)
    module = module.eval()
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes=_dynamic_batch(example, _argument_name(module)))


def pt2_bytes(module: nn.Module, example_input: torch.Tensor) -> bytes:
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


def onnx_bytes(module: nn.Module, example_input: torch.Tensor) -> bytes:
    """The ONNX model (one self-contained file, batch dimension named ``batch``)."""
    require_onnx()
    example = example_batch(example_input)
    module = module.eval()
    with tempfile.TemporaryDirectory() as tmp:  # the exporter writes files; it is read back whole
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(
            module,
            (example,),
            path,
            dynamo=True,
            external_data=False,
            verbose=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=_dynamic_batch(example, _argument_name(module)),
        )
        with open(path, "rb") as f:
            return f.read()


def exported_bytes(module: nn.Module, example_input: torch.Tensor, fmt: str) -> bytes:
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {FORMATS}, got {fmt!r}")
    return pt2_bytes(module, example_input) if fmt == "pt2" else onnx_bytes(module, example_input)
