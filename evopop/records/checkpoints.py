"""The run's stored files as typed values: `Checkpoint` (weights + masks + metadata), `GenomeFile`
(the masks bit-packed, and the network's outputs on the diversity probe's batch: what the diversity
study reads, a fraction of a checkpoint's size) and `RungState` (a training stopped at a rung of
successive halving). Only this module knows their keys; all are read with ``weights_only=True``
(no code runs)."""

from __future__ import annotations

import io
import json
import math
import re
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from ..synthesis.inputs import Inputs, description, from_description
from ..training.loop import TrainingState


@dataclass(frozen=True)
class Checkpoint:
    """An individual's checkpoint: its weights (the network's state dict), its genome's masks
    (synaptic layer -> bool tensor), and ``meta`` (generation, parent_id, lineage[, parent_ids])."""

    weights: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return torch_bytes({"weights": self.weights, "masks": self.masks, "meta": json.dumps(self.meta)})

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        """ValueError unless ``data`` is an evopop checkpoint; tensors only (``weights_only=True``)."""
        payload = read_torch_bytes(data)
        if not is_evopop_checkpoint(payload):
            raise ValueError("not an evopop checkpoint: expected a dict with 'weights' and 'masks'")
        return cls(payload["weights"], payload["masks"], json.loads(payload.get("meta") or "{}"))


@dataclass(frozen=True)
class GenomeFile:
    """What the diversity study reads of an individual, a fraction of its checkpoint's size: its masks
    (stored bit-packed) and ``probe``, its outputs on the held-out batch ``meta["probe"]`` describes."""

    masks: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)
    probe: torch.Tensor | None = None

    @property
    def probe_batch(self) -> dict | None:
        """The held-out batch the probe outputs are of (eval_set, size, requested); None without one."""
        return self.meta.get("probe") or None

    def to_bytes(self) -> bytes:
        """The masks packed 8 to a byte, their shapes in the metadata."""
        packed = {name: torch.from_numpy(np.packbits(m.cpu().numpy().reshape(-1))) for name, m in self.masks.items()}
        shapes = {name: list(mask.shape) for name, mask in self.masks.items()}
        payload = {"packed_masks": packed, "meta": json.dumps({**self.meta, "mask_shapes": shapes})}
        if self.probe is not None:
            payload["probe"] = self.probe
        return torch_bytes(payload)

    @classmethod
    def from_bytes(cls, data: bytes) -> GenomeFile:
        payload = read_torch_bytes(data)
        if not isinstance(payload, dict) or "packed_masks" not in payload:
            raise ValueError("not an evopop genome file: expected a dict with 'packed_masks'")
        meta = json.loads(payload.get("meta") or "{}")
        shapes = meta.pop("mask_shapes", {})
        masks = {}
        for name, packed in payload["packed_masks"].items():
            shape = tuple(shapes[name])
            bits = np.unpackbits(packed.numpy(), count=math.prod(shape)).astype(bool)
            masks[name] = torch.from_numpy(bits.reshape(shape))
        return cls(masks, meta, payload.get("probe"))


@dataclass(frozen=True)
class RungState:
    """An offspring stopped at a rung of successive halving: its genome's masks and its training so
    far, which the next rung continues exactly."""

    masks: dict[str, torch.Tensor]
    training: TrainingState

    def to_bytes(self) -> bytes:
        return torch_bytes({"masks": self.masks, "training": self.training.payload()})

    @classmethod
    def from_bytes(cls, data: bytes) -> RungState:
        payload = read_torch_bytes(data)
        return cls(payload["masks"], TrainingState.from_payload(payload["training"]))


# where checkpoints saved the ways people save them keep the state dict (Lightning, training scripts)
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights")


@dataclass(frozen=True)
class NetworkCard:
    """What rebuilding a run's network takes, recorded when the run starts, so that an individual can be
    exported from the run directory alone (never the data): the example input's shapes and dtypes
    (`evopop.synthesis.inputs.description`: one tensor, several, or several by name), and for a model by
    name, how to build it (``{"model": "torchvision:NAME", "num_classes": n, "model_args": {...}}``);
    without that, export builds the task (its plugin must be importable)."""

    example_input: dict | list
    model: dict | None = None

    @classmethod
    def of(cls, example_input: Inputs, model: dict | None = None) -> NetworkCard:
        return cls(description(example_input), model)

    def example(self) -> Inputs:
        """Zeros of the recorded shapes and dtypes: enough to trace, compact and export the network."""
        return from_description(self.example_input)

    def to_json(self) -> str:
        return json.dumps({"example_input": self.example_input, "model": self.model}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> NetworkCard:
        card = json.loads(text)
        return cls(card["example_input"], card.get("model"))


def read_weights_file(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(weights, masks) of an evopop checkpoint; (the state dict, None) of a plain one, of a
    safetensors file, or of a training checkpoint that keeps it under one of `STATE_DICT_KEYS`.
    Never runs code from the file. ValueError if it is none of them, its message a predicate
    ("is not a readable torch file", "holds a pickled module ...")."""
    if is_safetensors(data):
        return read_safetensors(data), None
    try:
        with torch.serialization.safe_globals(_harmless_globals()):
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(_unreadable(exc)) from None
    if is_evopop_checkpoint(payload):
        return payload["weights"], payload["masks"]
    weights = _state_dict_in(payload)
    if weights is None:
        raise ValueError(f"holds a {type(payload).__name__}, not a state_dict")
    return weights, None


def _state_dict_in(payload) -> dict[str, torch.Tensor] | None:
    """``payload`` if it is a state dict (names -> tensors), else the one it keeps under a usual key."""
    if _is_state_dict(payload):
        return payload
    if isinstance(payload, dict):
        for key in STATE_DICT_KEYS:
            if _is_state_dict(payload.get(key)):
                return payload[key]
    return None


def _is_state_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _harmless_globals() -> list:
    """Types training scripts keep beside the weights (their arguments, paths, numpy numbers), which
    unpickle without running code of the file: torchvision's and timm's training checkpoints load."""
    import argparse
    import pathlib

    numpy_types = [np.dtype, *(t for t in vars(np.dtypes).values() if isinstance(t, type))]
    scalar = getattr(getattr(np, "_core", np.core).multiarray, "scalar", None)
    paths = [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]
    return [argparse.Namespace, *paths, *numpy_types, *([scalar] if scalar else [])]


def _unreadable(exc: Exception) -> str:
    """Why torch.load refused a file; for a pickled model, how to save its state dict instead."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if found:
        name = found.group(1)
        what = "a whole pickled model" if _is_module_class(name) else f"a pickled object ({name})"
        return (
            f"holds {what} ({name}), which evopop does not unpickle (that would run code from the file): save the "
            "weights alone, `torch.save(model.state_dict(), 'ancestor.pt')` (or the checkpoint's own state dict, "
            "e.g. `torch.save(checkpoint['model'], 'ancestor.pt')`)"
        )
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"is not a readable torch file ({type(exc).__name__}: {first})"


def _is_module_class(name: str) -> bool:
    """Whether the dotted ``name`` is an nn.Module subclass of a module already imported: a file is
    never let import anything (a crafted name could run a local module's code)."""
    module, _, attr = name.rpartition(".")
    found = getattr(sys.modules.get(module), attr, None)
    return isinstance(found, type) and issubclass(found, torch.nn.Module)


def is_safetensors(data: bytes) -> bool:
    """Whether ``data`` is a safetensors file: an 8-byte header length, then a JSON header."""
    if len(data) < 10:
        return False
    size = int.from_bytes(data[:8], "little")
    return 2 <= size <= len(data) - 8 and data[8:9] == b"{"


def read_safetensors(data: bytes) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load
    except ImportError:
        raise ValueError("is a safetensors file: pip install safetensors to read it") from None
    try:
        return load(data)
    except Exception as exc:
        raise ValueError(f"is not a readable safetensors file ({type(exc).__name__}: {exc})") from None


def torch_bytes(payload: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def read_torch_bytes(data: bytes):
    """torch.load with ``weights_only=True`` (no code runs from a checkpoint); ValueError if unreadable."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise ValueError(f"not a readable torch file ({type(exc).__name__}: {first})") from None


def is_evopop_checkpoint(payload) -> bool:
    return isinstance(payload, dict) and "weights" in payload and "masks" in payload
