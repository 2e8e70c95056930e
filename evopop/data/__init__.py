"""Data sets and transforms.

Names are re-exported lazily, so that importing one data module (e.g. ``evopop.data.shapes``)
does not pull in torchvision through the others.
"""

from importlib import import_module

_EXPORTS = {
    "ProceduralSaliency": ".procedural",
    "DatasetError": ".saliency",
    "SaliencyFolder": ".saliency",
    "hku_is": ".saliency",
    "msra_b": ".saliency",
    "SaliencyTransform": ".transforms",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
