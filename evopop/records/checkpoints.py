"""Checkpoint files (weights + masks + metadata) and genome files (the masks bit-packed, and the
network's outputs on the diversity probe's batch: what the diversity study reads, a fraction of a
checkpoint's size), all read with ``weights_only=True`` (no code runs)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import torch


def checkpoint_bytes(weights: dict, masks: dict, meta: dict) -> bytes:
    return torch_bytes({"weights": weights, "masks": masks, "meta": json.dumps(meta)})


def genome_bytes(masks: dict[str, torch.Tensor], probe: torch.Tensor | None, meta: dict) -> bytes:
    """The masks packed 8 to a byte, and ``probe`` (outputs on the held-out batch ``meta["probe"]`` names)."""
    packed = {name: torch.from_numpy(np.packbits(mask.cpu().numpy().reshape(-1))) for name, mask in masks.items()}
    shapes = {name: list(mask.shape) for name, mask in masks.items()}
    payload = {"packed_masks": packed, "meta": json.dumps({**meta, "mask_shapes": shapes})}
    if probe is not None:
        payload["probe"] = probe
    return torch_bytes(payload)


def load_genome_bytes(data: bytes) -> dict:
    """A genome file's {"masks" (bool tensors), "meta"[, "probe"]}."""
    payload = read_torch_bytes(data)
    if not isinstance(payload, dict) or "packed_masks" not in payload:
        raise ValueError("not an evopop genome file: expected a dict with 'packed_masks'")
    meta = json.loads(payload.get("meta") or "{}")
    shapes = meta.pop("mask_shapes", {})
    masks = {}
    for name, packed in payload.pop("packed_masks").items():
        shape = tuple(shapes[name])
        bits = np.unpackbits(packed.numpy(), count=math.prod(shape)).astype(bool)
        masks[name] = torch.from_numpy(bits.reshape(shape))
    return {**payload, "masks": masks, "meta": meta}


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


def load_checkpoint_bytes(data: bytes) -> dict:
    """A checkpoint's {"weights", "masks", "meta"}; tensors only (``weights_only=True``)."""
    payload = read_torch_bytes(data)
    if not is_evopop_checkpoint(payload):
        raise ValueError("not an evopop checkpoint: expected a dict with 'weights' and 'masks'")
    payload["meta"] = json.loads(payload.get("meta") or "{}")
    return payload
