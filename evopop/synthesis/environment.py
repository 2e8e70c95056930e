"""Environmental factor model F(E): the pressure that turns synaptic probabilities into P(h_k).

- ``scale`` (the literal equation): P(h_k) = C * P(s_k | w_k).
- ``budget`` (the stated intent, "no more than C of the ancestor's synapses"): P(h_k) =
  min(1, s * P(s_k | w_k)) with s chosen per layer so that the *expected* kept fraction is exactly C.

C can be overridden per layer (glob patterns on layer names, first match wins), layers can be frozen
(no sampling: only synapses from dead neurons die), and C can follow a per-generation schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import torch

from .probability import budget_scale

MODES = ("scale", "budget")


def check_factor(value: float, where: str = "C") -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number in (0, 1], got {value!r}") from None
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise ValueError(f"{where} must be in (0, 1], got {value}")
    return value


@dataclass(frozen=True)
class Environment:
    c: float = 0.4
    mode: str = "scale"
    layer_c: tuple[tuple[str, float], ...] = ()  # (glob pattern, C)
    frozen: tuple[str, ...] = ()  # glob patterns of layers whose synapses are not sampled (they still
    # lose the synapses that read neurons which died upstream: neuron death is not optional)

    def __post_init__(self):
        # store floats, so that C given as text ("0.5") is converted here or refused here
        object.__setattr__(self, "c", check_factor(self.c))
        if self.mode not in MODES:
            raise ValueError(f"environment mode must be one of {MODES}, got {self.mode!r}")
        layer_c = tuple((str(p), check_factor(v, f"C for layers {p!r}")) for p, v in self.layer_c)
        object.__setattr__(self, "layer_c", layer_c)

    def is_frozen(self, layer: str) -> bool:
        return any(fnmatchcase(layer, pattern) for pattern in self.frozen)

    def factor(self, layer: str) -> float:
        """C for ``layer``: its first matching override, else the environment's C."""
        for pattern, value in self.layer_c:
            if fnmatchcase(layer, pattern):
                return value
        return self.c

    def scale(self, layer: str, strengths: torch.Tensor, alive: torch.Tensor, z: float) -> float:
        """The factor multiplying P = exp(strength / Z - 1) in ``layer``: C (``scale``), or the s with which
        an expected fraction C of the ``alive`` entries survives (``budget``; inf: keep them all)."""
        c = self.factor(layer)
        return budget_scale(strengths, alive, z, c) if self.mode == "budget" else c


@dataclass(frozen=True)
class Schedule:
    """C per generation: ``steps`` maps a generation to the C that holds from it onwards."""

    base: Environment
    steps: tuple[tuple[int, float], ...] = field(default=())

    def __post_init__(self):
        steps = tuple((int(g), check_factor(c, f"C of generation {g}")) for g, c in self.steps)
        object.__setattr__(self, "steps", steps)

    def at(self, generation: int) -> Environment:
        c = self.base.c
        for start, value in sorted(self.steps):
            if generation >= start:
                c = value
        return Environment(c, self.base.mode, self.base.layer_c, self.base.frozen)
