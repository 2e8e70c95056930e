"""Models by name, as users name them: ``torchvision:NAME``, ``timm:NAME`` (the ``timm`` extra) or an
import path ``package.module:callable``. Random weights: nothing downloads.

A classifier's head is sized by ``num_classes`` where the model takes one (torchvision's and timm's
classifiers do); `head_parameters` finds which parameters that is, so that a checkpoint of another
head can load the rest, and the head can be protected from mutation.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

import torch
from torch import nn

SOURCES = ("torchvision", "timm")


def model_by_name(spec: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """A new model named by ``spec``, with ``num_classes`` outputs where given; ValueError saying
    what is wrong with the name (unknown model, timm not installed, a bad import path)."""
    source, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"model {spec!r}: expected torchvision:NAME, timm:NAME or package.module:callable")
    if num_classes is not None:
        kwargs = {**kwargs, "num_classes": int(num_classes)}
    if source == "torchvision":
        return _torchvision_model(spec, name, kwargs)
    if source == "timm":
        return _timm_model(spec, name, kwargs)
    try:
        factory = getattr(importlib.import_module(source), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"model {spec!r}: {exc}") from None
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise ValueError(f"model {spec!r} does not accept {sorted(kwargs)}: {exc}") from None


def _torchvision_model(spec: str, name: str, kwargs: dict) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models()
    if name not in known:
        hint = _similar(name, known, "torchvision.models.list_models()")
        raise ValueError(f"model {spec!r}: torchvision has no model {name!r}{hint}")
    return torchvision.models.get_model(name, weights=None, **kwargs)


def _timm_model(spec: str, name: str, kwargs: dict) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ValueError(f"model {spec!r} needs timm: pip install 'evopop[timm]' (or pip install timm)") from None
    if not timm.is_model(name):
        hint = _similar(name, timm.list_models(), "timm.list_models()")
        raise ValueError(f"model {spec!r}: timm has no model {name!r}{hint}")
    return timm.create_model(name, pretrained=False, **kwargs)


def _similar(name: str, known: list[str], lister: str) -> str:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    return f"; similar: {', '.join(close)}" if close else f"; `{lister}` lists them"


def head_parameters(spec: str, num_classes: int, **kwargs: Any) -> list[str]:
    """The state-dict keys whose shape follows ``num_classes``: the classifier head. Found by building
    the model for two class counts (on the meta device: no memory, no time) and comparing shapes."""
    try:
        with torch.device("meta"):
            one = model_by_name(spec, num_classes, **kwargs).state_dict()
            other = model_by_name(spec, num_classes + 1, **kwargs).state_dict()
    except (NotImplementedError, RuntimeError):  # an initialiser that copies data (torchvision's RegNets)
        with torch.random.fork_rng(devices=[]):
            one = model_by_name(spec, num_classes, **kwargs).state_dict()
            other = model_by_name(spec, num_classes + 1, **kwargs).state_dict()
    return [key for key, value in one.items() if key in other and other[key].shape != value.shape]
