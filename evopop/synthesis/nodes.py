"""Reading torch.fx call nodes: their arguments, however they were passed."""

from __future__ import annotations

from torch import fx

# ``F.layer_norm``'s arguments, in order
LAYER_NORM_ARGUMENTS = ("input", "normalized_shape", "weight", "bias", "eps")


def qualified_name(target) -> tuple[str | None, str | None]:
    """(module, name) of a called function, to recognise another library's functions without importing it."""
    return getattr(target, "__module__", None), getattr(target, "__name__", None)


def arguments(node: fx.Node, names: tuple[str, ...]) -> dict:
    """A call's arguments by name, however they were passed (positional ones named by ``names``)."""
    return {**dict(zip(names, node.args)), **node.kwargs}


def default(value):
    """An argument's value where it is a constant, or a placeholder left at its default (timm passes
    ``attn_mask=None`` down from its model's ``forward``); a node otherwise."""
    if isinstance(value, fx.Node) and value.op == "placeholder" and value.args:
        return value.args[0]
    return value


def first_input(node: fx.Node):
    """The tensor a module is called on (positionally or by keyword)."""
    if node.args:
        return node.args[0]
    return next(iter(node.all_input_nodes), None)
