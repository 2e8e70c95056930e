"""Tracing a network with torch.fx the way evopop reads architectures, and saying why one cannot be.

torch.fx runs ``forward`` once on proxies. It stops at the first Python operation that needs a real
value (``if x.sum() > 0``, ``for i in range(x.shape[0])`` where the size is traced, ``int(x)``, a
third-party call on a proxy); its own message names the operation but not where it is. `Untraceable`
adds the module being traced (its path in the model and its class) and the line of the network's
own code that stopped it, so the user knows what to change. Tracing never runs data through the
network at full size, so a failure is seconds away, never a hang.
"""

from __future__ import annotations

import linecache
import os
import sys
import traceback

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .attention import is_packed_attention, is_window_attention
from .inputs import Inputs, placeholder_arguments

_TORCH_DIR = os.path.dirname(torch.__file__)
_HERE = os.path.dirname(__file__)


class _LeafTracer(fx.Tracer):
    """torch.fx's tracer, which also keeps subclasses of batch norm whole (timm's ``BatchNormAct2d``
    is one; traced through, it would read its parameters directly and pin its channels), and timm's
    attention (traced through, its heads would be reshapes of constant sizes). ``leaves``: more module
    types to keep whole; ``autowrap_functions``: functions recorded as one call, not traced through."""

    def __init__(self, leaves: tuple[type, ...] = (), autowrap_functions: tuple = ()):
        super().__init__(autowrap_functions=autowrap_functions)
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, nn.modules.batchnorm._BatchNorm) or is_packed_attention(m) or is_window_attention(m):
            return True
        if self.leaves and isinstance(m, self.leaves):
            return True
        return super().is_leaf_module(m, qualname)


def _timm_untraced() -> tuple[tuple[type, ...], tuple]:
    """The modules and functions timm marks as not to be traced (timm's own feature extraction keeps
    them whole), where timm is loaded; none otherwise (evopop never imports timm for this)."""
    fx_rules = sys.modules.get("timm.layers._fx")
    if fx_rules is None:
        return (), ()
    functions = tuple(f for f in fx_rules.get_notrace_functions() if callable(f))
    return tuple(fx_rules.get_notrace_modules()), functions


class Untraceable(Exception):
    """Why ``network`` could not be traced: the ``operation`` torch refused, inside ``module`` (its path
    in the network and class), at ``where`` (file:line of the network's code) reading ``line``."""

    def __init__(self, network: str, operation: str, module: str = "", where: str = "", line: str = ""):
        super().__init__(network, operation, module, where, line)  # args: it pickles (Ray) and compares
        self.network, self.operation, self.module, self.where, self.line = network, operation, module, where, line

    def __str__(self) -> str:
        at = f" in {self.module}" if self.module else ""
        source = f", at {self.where}" + (f": `{self.line}`" if self.line else "") if self.where else ""
        return f"{self.network} cannot be traced{at}{source}: {self.operation}"


def symbolic_trace(model: nn.Module) -> fx.GraphModule:
    """``model`` as a ``torch.fx.GraphModule``, traced the way evopop reads architectures; `Untraceable`
    (saying where) if it cannot be."""
    tracer = _LeafTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        first = _untraceable(model, exc, tracer)
        leaves, functions = _timm_untraced()
        if not (leaves or functions):
            raise first from exc
        # a second try, keeping whole what timm keeps whole: its models trace then (a ViT whose
        # position embedding is resampled), at the price of fewer layers the wiring sees through
        tracer = _LeafTracer(leaves, functions)
        try:
            graph = tracer.trace(model)
        except Exception:
            raise first from exc
    try:
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as exc:  # a submodule named like a GraphModule attribute (``meta``, ``graph``, ``code``)
        operation = f"{type(exc).__name__}: {_first_line(exc)} (a submodule's name clashes with torch.fx's own)"
        raise Untraceable(type(model).__name__, operation) from exc


def shaped_graph(model: nn.Module, example_input: Inputs) -> fx.GraphModule:
    """``model`` traced, every node annotated with its output's shape on ``example_input`` (eval mode,
    no gradients; the modules' training flags are restored after)."""
    gm = symbolic_trace(model)
    was_training = [m.training for m in gm.modules()]
    gm.eval()  # no running-stat updates, no dropout while shapes are read
    try:
        with torch.no_grad():
            arguments = placeholder_arguments(gm, example_input)
            try:
                ShapeProp(gm).propagate(*arguments)
            except Exception as exc:
                raise _failed_on_example(model, exc) from exc
    finally:
        for m, mode in zip(gm.modules(), was_training):
            m.training = mode
    return gm


def _untraceable(model: nn.Module, exc: Exception, tracer: fx.Tracer) -> Untraceable:
    # fx pushes each module it enters on module_stack and pops it on return: after a failure, the
    # last entry is the innermost module being traced
    stack = list(getattr(tracer, "module_stack", {}).values())
    module = ""
    if stack and stack[-1][0]:
        path, kind = stack[-1]
        module = f"{path} ({getattr(kind, '__name__', kind)})"
    where, line = _network_frame(exc)
    operation = f"{type(exc).__name__}: {_first_line(exc)}"
    return Untraceable(type(model).__name__, operation, module, where, line)


def _failed_on_example(model: nn.Module, exc: Exception) -> Untraceable:
    # the interpreter names the node it was running in the exception's notes ("While executing ...")
    notes = [n for n in getattr(exc, "__notes__", []) if "While executing" in n]
    module = notes[0].split("While executing", 1)[1].strip().splitlines()[0] if notes else ""
    where, line = _network_frame(exc)
    operation = f"{type(exc).__name__} on the example input: {_first_line(exc)}"
    return Untraceable(type(model).__name__, operation, module, where, line)


def _network_frame(exc: Exception) -> tuple[str, str]:
    """(file:line, source) of the innermost frame in the network's own code: not torch's, not evopop's
    tracing. Empty where there is none (a failure inside torch alone)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _is_internal(f.filename)]
    if not frames:
        return "", ""
    frame = frames[-1]
    line = (frame.line or linecache.getline(frame.filename, frame.lineno or 0)).strip()
    return f"{_short(frame.filename)}:{frame.lineno}", line


def _is_internal(filename: str) -> bool:
    return filename.startswith(_TORCH_DIR) or filename.startswith(_HERE) or filename.startswith("<")


def _short(filename: str) -> str:
    """A path from its package down (``timm/models/vision_transformer.py``), not the whole site-packages."""
    parts = filename.replace(os.sep, "/").split("/")
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return "/".join(parts[parts.index(marker) + 1 :])
    return os.path.relpath(filename) if not os.path.relpath(filename).startswith("..") else filename


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
