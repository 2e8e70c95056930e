"""Procedural shape classification: the embedded data set of the quickstart (no downloads).

Each image holds one shape (disk, square, triangle, ring, cross or bar pair) of random size,
position and colour on a textured, noisy background; the label is the shape. Item i is a pure
function of (seed, i): its generator is seeded with ``derive_seed("shapes", seed, i)`` (the one
seeding scheme of evopop, `evopop.synthesis.seeding`), so the data set is identical on every
machine and in any access order. A data set is rendered once per process (see `rendered`).
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from ..synthesis.seeding import derive_seed

SHAPES = ("disk", "square", "triangle", "ring", "cross", "bars")

# Images and labels per recipe (n, size, seed, num_classes), for the life of the process: tasks are
# rebuilt with the same recipe again and again, and rendering is a Python loop over the items.
# Entries are never mutated.
_RENDERED: dict[tuple[int, int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _shape_mask(kind: int, yy, xx, cy, cx, r, angle) -> torch.Tensor:
    """Bool HxW mask of shape ``kind`` centred at (cy, cx) with radius r, rotated by ``angle``."""
    dy, dx = yy - cy, xx - cx
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    d = torch.sqrt(dy * dy + dx * dx)
    name = SHAPES[kind]
    if name == "disk":
        return d <= r
    if name == "square":
        return (u.abs() <= r * 0.8) & (v.abs() <= r * 0.8)
    if name == "triangle":
        return (v >= -r * 0.6) & (v <= r * 0.9 - 1.7 * u.abs())
    if name == "ring":
        return (d <= r) & (d >= r * 0.55)
    if name == "cross":
        return ((u.abs() <= r * 0.28) & (v.abs() <= r)) | ((v.abs() <= r * 0.28) & (u.abs() <= r))
    return ((v - r * 0.45).abs() <= r * 0.2) & (u.abs() <= r) | ((v + r * 0.45).abs() <= r * 0.2) & (u.abs() <= r)


def make_shape_image(seed: int, index: int, size: int, num_classes: int) -> tuple[torch.Tensor, int]:
    g = torch.Generator().manual_seed(derive_seed("shapes", int(seed), int(index)))
    label = int(torch.randint(num_classes, (1,), generator=g))
    ramp = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(ramp * size, ramp * size, indexing="ij")
    # background: a random colour gradient, stripes of random frequency, and pixel noise
    base = torch.rand(3, 1, 1, generator=g) * 0.6
    tilt = (torch.rand(3, 1, 1, generator=g) - 0.5) * 0.4
    freq, phase = float(torch.rand((), generator=g)) * 0.8 + 0.2, float(torch.rand((), generator=g)) * 6.3
    stripes = 0.12 * torch.sin(freq * (xx + yy) + phase)
    image = base + tilt * ramp.view(1, 1, -1) + stripes + 0.08 * torch.randn(3, size, size, generator=g)
    r = float(torch.rand((), generator=g)) * size * 0.18 + size * 0.16
    cy, cx = (torch.rand(2, generator=g) * (size - 2 * r) + r).tolist()
    angle = float(torch.rand((), generator=g)) * 2 * math.pi
    mask = _shape_mask(label, yy, xx, cy, cx, r, angle)
    colour = torch.rand(3, 1, 1, generator=g) * 0.7 + 0.3
    image = torch.where(mask, colour + 0.05 * torch.randn(3, size, size, generator=g), image)
    return image.clamp_(0, 1).sub_(0.5).div_(0.25), label


def rendered(n: int, size: int, seed: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, 3, size, size) and labels (n,) of a data set, from this process's cache."""
    key = (n, size, seed, num_classes)
    if key not in _RENDERED:  # two threads may both render a missing key: harmless, one result wins
        items = [make_shape_image(seed, i, size, num_classes) for i in range(n)]
        _RENDERED[key] = torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
    return _RENDERED[key]


class ProceduralShapes(Dataset):
    def __init__(self, n: int, size: int = 32, seed: int = 0, num_classes: int = 6):
        if not 2 <= num_classes <= len(SHAPES):
            raise ValueError(f"num_classes must be in [2, {len(SHAPES)}], got {num_classes}")
        self.n, self.size, self.seed, self.num_classes = int(n), int(size), int(seed), int(num_classes)
        # materialise once per process: 3000 images of 32x32 cost 37 MB and make epochs cheap
        self.images, self.labels = rendered(self.n, self.size, self.seed, self.num_classes)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]
