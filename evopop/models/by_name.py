"""Models by name, as users name them: ``torchvision:NAME``, ``timm:NAME`` (the ``timm`` extra) or an
import path ``package.module:callable``. Random weights: nothing downloads.

A classifier's head is sized by ``num_classes`` where the model takes one (torchvision's and timm's
classifiers do); a model by import path that takes none has its head replaced (`replace_head`: timm's
``reset_classifier``, else the last Linear of ``fc`` / ``classifier`` / ``head`` / ``heads``).
`head_parameters` finds which parameters the head is, so that a checkpoint of another head can load
the rest, and the head can be protected from mutation.
"""

from __future__ import annotations

import difflib
import importlib
import sys
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
        looked = ", ".join(p for p in sys.path if p and not p.endswith((".zip", "site-packages", "lib-dynload")))
        raise ValueError(f"model {spec!r}: {exc} (looked in the installed packages and {looked})") from None
    try:
        return factory(**kwargs)
    except TypeError as exc:
        if num_classes is None or "num_classes" not in str(exc):
            raise ValueError(f"model {spec!r} does not accept {sorted(kwargs)}: {exc}") from None
    rest = {k: v for k, v in kwargs.items() if k != "num_classes"}
    try:
        model = factory(**rest)
    except TypeError as exc:
        raise ValueError(f"model {spec!r} does not accept {sorted(rest)}: {exc}") from None
    return replace_head(model, int(num_classes), spec)


HEAD_NAMES = ("fc", "classifier", "head", "heads", "last_linear")


def replace_head(model: nn.Module, num_classes: int, spec: str = "") -> nn.Module:
    """``model`` with a fresh classifier head of ``num_classes`` outputs: timm's ``reset_classifier``
    where the model has one, else the last Linear of its ``fc`` / ``classifier`` / ``head`` / ``heads``;
    ValueError where it has none of them (give the factory a ``num_classes`` argument instead)."""
    if callable(getattr(model, "reset_classifier", None)):
        model.reset_classifier(num_classes)
        return model
    for attribute in HEAD_NAMES:
        head = getattr(model, attribute, None)
        if isinstance(head, nn.Linear):
            setattr(model, attribute, nn.Linear(head.in_features, num_classes, bias=head.bias is not None))
            return model
        linears = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear)] if head is not None else []
        if linears:
            path, last = linears[-1]
            parent_path, _, child = path.rpartition(".")
            parent = head.get_submodule(parent_path) if parent_path else head
            setattr(parent, child, nn.Linear(last.in_features, num_classes, bias=last.bias is not None))
            return model
    raise ValueError(
        f"model {spec or type(model).__name__!r} takes no num_classes and has no classifier head evopop can "
        f"find ({', '.join(HEAD_NAMES)}): give its factory a num_classes argument"
    )


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
