"""A procedurally generated saliency data set: the embedded default, so the pipeline runs anywhere.

Each image holds 1 or 2 salient shapes (ellipse, rotated rectangle or triangle) of one distinct
colour, shaded and slightly noisy, on a cluttered background: two related background colours mixed
by low-frequency noise, optional stripes, pixel noise, and up to 6 small distractor blobs whose
colour lies between the background's and the object's (lower contrast than the objects). The mask
is the union of the salient shapes. What is salient differs per image (the object colour is drawn
per image), so a pixel's colour alone does not decide it: the net must compare it with the rest of
the image, and tell the small low-contrast distractors from the objects. Salient shapes cover about
7% to 30% of the image (18% on average).

Determinism per item from ``(seed, i)``: item ``i`` of ``ProceduralSaliency(n, size, seed)`` is drawn
from its own generator, seeded with ``derive_seed("procedural-saliency", seed, i)`` (the one seeding
scheme of evopop, `evopop.synthesis.seeding`), so it is the same whatever the access order and
whatever ``n``, and data sets with different seeds (train/val/test) share no items. Only those
per-item draws (one ``torch.rand`` call per item) loop in Python; rendering is vectorised over the
whole batch.

Rendered once per process: a data set is rendered when it is built, into a per-process cache keyed
by ``(n, size, seed)``; building it again, or unpickling it (it pickles as its recipe, without
pixels), takes the pixels from that cache. DataLoader workers started by fork inherit the pixels;
a process without them (a spawned worker) renders them once, on first access.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..synthesis.seeding import derive_seed
from .transforms import normalize_image

MAX_OBJECTS = 2
MAX_DISTRACTORS = 6
NOISE_GRID = 6  # low-frequency background noise: a NOISE_GRID x NOISE_GRID grid, upsampled
CHUNK = 1024  # items rendered at once
_TRIANGLE_AREA = 3 * math.sqrt(3) / 4  # area of the triangle inscribed in the unit circle


# uint8 images (n, 3, S, S) and bool masks (n, 1, S, S) per recipe (n, size, seed), for the life of the
# process: tasks rebuild and DataLoaders unpickle the same few data sets (train/val/test) over and
# over, and re-rendering them each time is what made worker epochs slow. Entries are never mutated.
_RENDERED: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}


def rendered(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and masks of all ``n`` items, from this process's cache (rendered on first request)."""
    key = (n, size, seed)
    if key not in _RENDERED:  # two threads may both render a missing key: harmless, one result wins
        _RENDERED[key] = _render_all(n, size, seed)
    return _RENDERED[key]


def _render_all(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [render_items(range(start, min(start + CHUNK, n)), size, seed) for start in range(0, n, CHUNK)]
    return torch.cat([image for image, _ in parts]), torch.cat([mask for _, mask in parts])


def _draw(seeds: list[int], sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """Uniform [0, 1) draws per item: {name: (items, count)}, one generator per item."""
    total = sum(sizes.values())
    generator = torch.Generator()
    rows = []
    for s in seeds:
        generator.manual_seed(s)
        rows.append(torch.rand(total, generator=generator))
    flat = torch.stack(rows)
    return dict(zip(sizes, flat.split(list(sizes.values()), dim=1)))


def _between(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * u


def _rasterize(kind, cx, cy, a, b, angle, jitter, size: int) -> torch.Tensor:
    """Inside-masks (N, S, S) of N shapes, each of its own kind; all kinds have area pi*a*b.

    kind: 0 ellipse, 1 rectangle, 2 triangle; parameters are (N,) (jitter (N, 3)) in image units.
    Each kind is rasterised only for its own shapes, and every test is written as one broadcast
    of a per-row against a per-column term, so that the S x S work per shape stays a few ops.
    """
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    out = torch.empty(kind.shape[0], size, size, dtype=torch.bool)
    for k, rasterize in enumerate((_ellipses, _rectangles, _triangles)):
        idx = (kind == k).nonzero().squeeze(1)
        if idx.numel():
            out[idx] = rasterize(coords, cx[idx], cy[idx], a[idx], b[idx], angle[idx], jitter[idx])
    return out


def _ellipses(coords, cx, cy, a, b, angle, jitter) -> torch.Tensor:
    dx, dy = coords - cx[:, None], coords - cy[:, None]  # (n, S): along x (columns), along y (rows)
    cos, sin = angle.cos()[:, None], angle.sin()[:, None]
    inv_a2, inv_b2 = 1 / a[:, None] ** 2, 1 / b[:, None] ** 2
    # (u/a)^2 + (v/b)^2 for u, v the rotated coordinates, expanded into x^2, y^2 and x*y terms.
    xx_term = dx**2 * (cos**2 * inv_a2 + sin**2 * inv_b2)
    yy_term = dy**2 * (sin**2 * inv_a2 + cos**2 * inv_b2)
    xy_term = 2 * dx * cos * sin * (inv_a2 - inv_b2)
    q = xx_term[:, None, :] + yy_term[:, :, None] + xy_term[:, None, :] * dy[:, :, None]
    return q <= 1


def _rectangles(coords, cx, cy, a, b, angle, jitter) -> torch.Tensor:
    half = math.sqrt(math.pi) / 2  # a square of side 2*half*r has the area of the circle of radius r
    ha, hb = half * a[:, None, None], half * b[:, None, None]
    dx, dy = coords - cx[:, None], coords - cy[:, None]
    cos, sin = angle.cos()[:, None], angle.sin()[:, None]
    # u = dx cos + dy sin in [-ha, ha] and v = -dx sin + dy cos in [-hb, hb], as row-vs-column tests.
    u_x, u_y = (dx * cos)[:, None, :], (dy * sin)[:, :, None]
    v_x, v_y = (-dx * sin)[:, None, :], (dy * cos)[:, :, None]
    return (u_x <= ha - u_y) & (u_x >= -ha - u_y) & (v_x <= hb - v_y) & (v_x >= -hb - v_y)


def _triangles(coords, cx, cy, a, b, angle, jitter) -> torch.Tensor:
    """Vertices on the circle of the triangle's area, at ``angle`` + 120 degree steps + ``jitter``."""
    radius = (math.pi * a * b / _TRIANGLE_AREA).sqrt()[:, None]
    vertex_angles = angle[:, None] + torch.arange(3) * (2 * math.pi / 3) + jitter
    vx, vy = cx[:, None] + radius * vertex_angles.cos(), cy[:, None] + radius * vertex_angles.sin()
    inside = None
    for i in range(3):
        j = (i + 1) % 3
        ex, ey = (vx[:, j] - vx[:, i])[:, None], (vy[:, j] - vy[:, i])[:, None]
        # Vertices go counter-clockwise (|jitter| < 60 degrees keeps their order): inside = left of
        # every edge, i.e. ex * (y - vy_i) >= ey * (x - vx_i).
        left = (ex * (coords - vy[:, i, None]))[:, :, None] >= (ey * (coords - vx[:, i, None]))[:, None, :]
        inside = left if inside is None else inside & left
    return inside


def _shape_masks(active, kind, cx, cy, a, b, angle, jitter, size: int) -> torch.Tensor:
    """Inside-masks (B, K, S, S) of K shape slots per item; inactive slots are empty."""
    batch, slots = kind.shape
    out = torch.zeros(batch * slots, size, size, dtype=torch.bool)
    idx = active.reshape(-1).nonzero().squeeze(1)
    flat = lambda t: t.reshape(batch * slots, *t.shape[2:])[idx]  # noqa: E731
    out[idx] = _rasterize(*(flat(t) for t in (kind, cx, cy, a, b, angle, jitter)), size)
    return out.view(batch, slots, size, size)


def _objects(r: dict[str, torch.Tensor], count: torch.Tensor):
    """Shape parameters (B, MAX_OBJECTS) of the salient objects, sized so they fit the image."""
    two = (count == 2)[:, None]
    area = torch.where(two, _between(r["obj_area"], 0.05, 0.17), _between(r["obj_area"], 0.07, 0.30))
    aspect = _between(r["obj_aspect"], 0.5, 1.0)
    a = (area / (math.pi * aspect)).sqrt()
    b = a * aspect
    extent = torch.maximum(a, (math.pi * a * b / _TRIANGLE_AREA).sqrt()).clamp(max=0.45)
    cx = extent + (1 - 2 * extent) * r["obj_x"]
    cy = extent + (1 - 2 * extent) * r["obj_y"]
    kind = (r["obj_kind"] * 3).floor().clamp(max=2)
    angle = r["obj_angle"] * math.pi
    jitter = _between(r["obj_jitter"], -0.35, 0.35).view(-1, MAX_OBJECTS, 3)
    return kind, cx, cy, a, b, angle, jitter


def _distractors(r: dict[str, torch.Tensor]):
    """Small blobs anywhere in the image: radii 3% to 8% of the image side."""
    a = _between(r["dis_size"], 0.03, 0.08)
    b = a * _between(r["dis_aspect"], 0.5, 1.0)
    kind = (r["dis_kind"] * 3).floor().clamp(max=2)
    jitter = _between(r["dis_jitter"], -0.35, 0.35).view(-1, MAX_DISTRACTORS, 3)
    return kind, r["dis_x"], r["dis_y"], a, b, r["dis_angle"] * math.pi, jitter


def _palette(r: dict[str, torch.Tensor]):
    """The item's 4 colours, each (B, 3): two related background colours near the complement of
    the object colour (vivid: each channel dark or bright), the object's, the second object's."""
    channel_bright = r["obj_bright"] < 0.5
    obj = torch.where(channel_bright, _between(r["obj_rgb"], 0.65, 0.95), _between(r["obj_rgb"], 0.05, 0.35))
    bg1 = (1 - obj + _between(r["bg1_rgb"], -0.2, 0.2)).clamp(0, 1)
    bg2 = (0.6 * bg1 + 0.4 * r["bg2_rgb"]).clamp(0, 1)
    second = (obj + _between(r["obj2_rgb"], -0.12, 0.12)).clamp(0, 1)
    return bg1, bg2, obj, second


def _background(r, xx, yy, noise):
    """Weights (B, 4, S, S) and offset (B, 1, S, S) of the background: the two background colours
    mixed by low-frequency noise ("blotches"), plus optional stripes and pixel noise."""
    batch, size = noise.shape[0], noise.shape[-1]
    grid = r["blotches"].view(batch, 1, NOISE_GRID, NOISE_GRID)
    blotches = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    zeros = torch.zeros_like(blotches)
    weights = torch.cat([1 - blotches, blotches, zeros, zeros], dim=1)
    return weights, _stripes(r, xx, yy) + 0.12 * noise


def _stripes(r, xx, yy) -> torch.Tensor:
    """(B, 1, S, S) brightness stripes of random frequency, orientation and phase, in half the items."""
    per_item = lambda name: r[name][:, 0, None, None]  # noqa: E731  (B, 1, 1)
    theta = per_item("stripe_angle") * math.pi
    freq = _between(per_item("stripe_freq"), 3, 10)
    phase = 2 * math.pi * (freq * (xx * theta.cos() + yy * theta.sin()) + per_item("stripe_phase"))
    amplitude = (per_item("stripe_on") < 0.5) * _between(per_item("stripe_amp"), 0.08, 0.3)
    return (amplitude * phase.sin()).unsqueeze(1)


def _distractor_layer(r, size: int, noise):
    """(region, weights, offset) of the distractors: colours between the first background colour
    and the object's, so of lower contrast than the objects."""
    inside = _shape_masks(r["dis_on"] < 0.6, *_distractors(r), size=size)
    mix = torch.zeros_like(noise)
    for k in range(MAX_DISTRACTORS):  # later blobs are painted over earlier ones
        mix = torch.where(inside[:, k : k + 1], _between(r["dis_mix"][:, k, None, None, None], 0.3, 0.7), mix)
    zeros = torch.zeros_like(mix)
    weights = torch.cat([1 - mix, zeros, mix, zeros], dim=1)
    return inside.any(dim=1, keepdim=True), weights, 0.08 * noise


def _object_layer(r, xx, yy, noise):
    """(mask, weights, offset) of the salient objects, shaded along a random direction; the
    second object (when there is one) has its own, slightly different colour."""
    count = torch.where(r["count"][:, 0] < 0.35, 2, 1)
    active = torch.arange(MAX_OBJECTS) < count[:, None]
    inside = _shape_masks(active, *_objects(r, count), size=noise.shape[-1])
    direction = r["shade"][:, 0, None, None] * 2 * math.pi
    strength = _between(r["shade"][:, 1, None, None], 0.0, 0.25)
    shading = (1 + strength * ((xx - 0.5) * direction.cos() + (yy - 0.5) * direction.sin())).unsqueeze(1)
    second = inside[:, 1:2].float()
    zeros = torch.zeros_like(shading)
    weights = torch.cat([zeros, zeros, shading * (1 - second), shading * second], dim=1)
    return inside.any(dim=1, keepdim=True), weights, 0.06 * noise


def render_items(indices: Iterable[int], size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (B, 3, S, S) and bool masks (B, 1, S, S) of the items ``indices``.

    Every pixel is a mix of the item's 4 colours (two background colours, the object's and the
    second object's) plus a brightness offset. Layers (background, distractors, objects) set
    the mixing weights on single-channel maps; one batched matmul then makes the colours,
    which is much cheaper than compositing 3-channel images layer by layer.
    """
    s = size
    r = _draw([derive_seed("procedural-saliency", int(seed), int(i)) for i in indices], _draw_sizes(size))
    batch = r["count"].shape[0]
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    yy, xx = coords.view(s, 1), coords.view(1, s)
    noise = r["pixel_noise"].view(batch, 1, s, s) - 0.5  # luminance noise

    weights, offset = _background(r, xx, yy, noise)
    objects = _object_layer(r, xx, yy, noise)
    for region, layer_weights, layer_offset in (_distractor_layer(r, s, noise), objects):  # bottom up
        weights = torch.where(region, layer_weights, weights)
        offset = torch.where(region, layer_offset, offset)
    mask = objects[0]

    palette = torch.stack(_palette(r), dim=2)  # (B, 3, 4)
    image = torch.bmm(palette, weights.view(batch, 4, s * s)).view(batch, 3, s, s) + offset
    return (image * 255).round_().clamp_(0, 255).to(torch.uint8), mask


def _draw_sizes(size: int) -> dict[str, int]:
    o, d = MAX_OBJECTS, MAX_DISTRACTORS
    return {
        "count": 1,
        "obj_area": o,
        "obj_aspect": o,
        "obj_x": o,
        "obj_y": o,
        "obj_kind": o,
        "obj_angle": o,
        "obj_jitter": 3 * o,
        "shade": 2,
        "obj_bright": 3,
        "obj_rgb": 3,
        "obj2_rgb": 3,
        "bg1_rgb": 3,
        "bg2_rgb": 3,
        "stripe_on": 1,
        "stripe_freq": 1,
        "stripe_angle": 1,
        "stripe_phase": 1,
        "stripe_amp": 1,
        "dis_on": d,
        "dis_x": d,
        "dis_y": d,
        "dis_size": d,
        "dis_aspect": d,
        "dis_kind": d,
        "dis_angle": d,
        "dis_jitter": 3 * d,
        "dis_mix": d,
        "blotches": NOISE_GRID * NOISE_GRID,
        "pixel_noise": size * size,
    }


class ProceduralSaliency(Dataset):
    """``n`` generated (image, mask) items at ``size`` x ``size``, deterministic from ``seed``.

    Items are rendered when the data set is built (or taken from this process's cache; stored as
    uint8 images and bool masks) and returned in the format of `evopop.data.transforms`:
    normalised float (3, S, S) and float (1, S, S) in {0, 1}.
    """

    def __init__(self, n: int, size: int = 64, seed: int = 0):
        if n < 1 or size < 16:
            raise ValueError(f"need n >= 1 and size >= 16, got n={n}, size={size}")
        self.n, self.size, self.seed = int(n), int(size), int(seed)
        self._images, self._masks = rendered(self.n, self.size, self.seed)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} items")
        if self._images is None:  # unpickled in a process that had not rendered it
            self._images, self._masks = rendered(self.n, self.size, self.seed)
        image = normalize_image(self._images[index].float() / 255)
        return image, self._masks[index].float()

    def __getstate__(self) -> dict:
        # Ship the recipe, not the pixels: pickles stay small (Ray, spawned workers), and a process
        # that already holds the pixels (a deepcopy, a Ray object read back locally) shares them.
        return {**self.__dict__, "_images": None, "_masks": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        # This process's pixels if it has them; else render on first access, not here: a spawned
        # DataLoader worker unpickles before it limits torch to one thread, and workers rendering
        # with every core's threads at once oversubscribe the CPU (+0.8 s an epoch, 2 workers, 2 cores).
        self._images, self._masks = _RENDERED.get((self.n, self.size, self.seed), (None, None))

    def render(self, indices: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (B, 3, S, S) and bool masks (B, 1, S, S) of the items ``indices``, rendered
        afresh (not from the cache); see `render_items`."""
        return render_items(indices, self.size, self.seed)
