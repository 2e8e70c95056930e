"""Checkpoint files: weights + masks (+ metadata, + the functional probe's outputs where the trainer
computed them), read with ``weights_only=True`` (no code runs)."""

from __future__ import annotations

import io
import json

import torch


def checkpoint_bytes(weights: dict, masks: dict, meta: dict, probe: torch.Tensor | None = None) -> bytes:
    """``probe``: the network's outputs on the run's held-out batch (``meta["probe"]`` says which)."""
    payload = {"weights": weights, "masks": masks, "meta": json.dumps(meta)}
    if probe is not None:
        payload["probe"] = probe
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
    """A checkpoint's {"weights", "masks", "meta"[, "probe"]}; tensors only (``weights_only=True``)."""
    payload = read_torch_bytes(data)
    if not is_evopop_checkpoint(payload):
        raise ValueError("not an evopop checkpoint: expected a dict with 'weights' and 'masks'")
    payload["meta"] = json.loads(payload.get("meta") or "{}")
    return payload
