"""Environmental factor model F(E): the pressure that turns synaptic probabilities into P(h_k).

- ``scale`` (the literal equation): P(h_k) = C * P(s_k | w_k).
- ``budget`` (the stated intent, "no more than C of the ancestor's synapses"): P(h_k) =
  min(1, s * P(s_k | w_k)) with s chosen per layer so that the *expected* kept fraction is exactly C.
- ``network``: the same budget over the whole network: one s for all layers, so that the network keeps
  C of its synapses in expectation and layers keep different fractions: a layer whose synapses are
  mostly weak next to its strongest loses more than one whose synapses are all strong (with
  ``normalizer: global``, weak next to the network's strongest: global magnitude pruning). Layers with
  their own C, and layers whose living weights are all zero (Z = 0, P = 1: strong only by
  convention), keep a budget of their own.

The environment also sets how sharply it tells strong synapses from weak ones: the sharpness k of
the probability model it reads, P(s_k | w_k) = exp(k (|w_k| / Z - 1)) (k = 1 is the paper's model).

C can be overridden per layer (glob patterns on layer names, first match wins), layers can be frozen
(no sampling: only synapses from dead neurons die), and C can follow a per-generation schedule.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import torch

from .probability import Part, budget_scale, shared_budget_scale

MODES = ("scale", "budget", "network")


# e^-50 ~ 2e-22: far below the 2^-24 resolution of the float32 uniforms synapses are drawn against,
# so a sharper model could not make a difference; the cap keeps k a number a person would mean
MAX_SHARPNESS = 50.0


def check_sharpness(value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"sharpness must be a number in (0, {MAX_SHARPNESS:g}], got {value!r}") from None
    if not (0.0 < value <= MAX_SHARPNESS):
        raise ValueError(f"sharpness must be in (0, {MAX_SHARPNESS:g}], got {value}")
    return value


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
    sharpness: float = 1.0  # k in P(s_k | w_k) = exp(k (|w_k| / Z - 1)); 1 is the paper's model
    # clusters only: each layer keeps a multiple of this many channels (see `clusters.round_to_multiple`)
    multiple: int = 1

    def __post_init__(self):
        # store floats, so that C given as text ("0.5") is converted here or refused here
        object.__setattr__(self, "c", check_factor(self.c))
        object.__setattr__(self, "sharpness", check_sharpness(self.sharpness))
        if self.mode not in MODES:
            raise ValueError(f"environment mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.multiple, int) or self.multiple < 1:
            raise ValueError(f"multiple must be a whole number >= 1, got {self.multiple!r}")
        layer_c = tuple((str(p), check_factor(v, f"C for layers {p!r}")) for p, v in self.layer_c)
        object.__setattr__(self, "layer_c", layer_c)

    def is_frozen(self, layer: str) -> bool:
        return any(fnmatchcase(layer, pattern) for pattern in self.frozen)

    def factor(self, layer: str) -> float:
        """C for ``layer``: its first matching override, else the environment's C."""
        own = self._override(layer)
        return self.c if own is None else own

    def _override(self, layer: str) -> float | None:
        for pattern, value in self.layer_c:
            if fnmatchcase(layer, pattern):
                return value
        return None

    def scales(self, parts: Mapping[str, Part], settings: Mapping[str, str] | None = None) -> dict[str, float]:
        """The factor multiplying P in each layer of ``parts`` (layer -> (strengths, alive, Z)): per layer
        (`scale`), except in ``network`` mode, where the layers without a C of their own share one.
        ``settings``: the layer whose C applies to each part, where a part is not a layer (a family of
        coupled clusters)."""
        settings = settings or {}
        if self.mode != "network":
            return {layer: self.scale(settings.get(layer, layer), *part) for layer, part in parts.items()}
        own = {layer: self._override(settings.get(layer, layer)) for layer in parts}
        own.update({layer: self.c for layer, part in parts.items() if own[layer] is None and part[2] <= 0})
        scales = {
            layer: budget_scale(*parts[layer], c, sharpness=self.sharpness) for layer, c in own.items() if c is not None
        }
        shared = [layer for layer, c in own.items() if c is None]
        if shared:
            s = shared_budget_scale([parts[layer] for layer in shared], self.c, sharpness=self.sharpness)
            scales.update(dict.fromkeys(shared, s))
        return scales

    def scale(self, layer: str, strengths: torch.Tensor, alive: torch.Tensor, z: float) -> float:
        """The factor multiplying P = exp(k (strength / Z - 1)) in ``layer``: C (``scale``), or the s with
        which an expected fraction C of the ``alive`` entries survives (``budget``; inf: keep them all)."""
        c = self.factor(layer)
        if self.mode != "scale":  # a network budget of one layer is that layer's budget
            return budget_scale(strengths, alive, z, c, sharpness=self.sharpness)
        return c


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
        return dataclasses.replace(self.base, c=c)
