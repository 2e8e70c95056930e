"""A procedurally generated saliency data set: the embedded default, so the pipeline runs anywhere.

Each image holds 1 or 2 salient shapes (ellipse, rotated rectangle or triangle) of one distinct
colour, shaded and slightly noisy, on a cluttered background: two related background colours mixed
by low-frequency noise, optional stripes, pixel noise, and up to 6 small distractor blobs whose
colour lies between the background's and the object's (lower contrast than the objects). The mask
is the union of the salient shapes. What is salient differs per image (the object colour is drawn
per image), so a pixel's colour alone does not decide it: the net must compare it with the rest of
the image, and tell the small low-contrast distractors from the objects. Salient shapes cover about
5% to 40% of the image.

Determinism: item ``i`` of ``ProceduralSaliency(n, size, seed)`` is drawn from its own generator,
seeded from ``(seed, i)`` by a splitmix64 hash, so it is the same whatever the access order, and
data sets with different seeds (train/val/test) share no items. Only those per-item draws (one
``torch.rand`` call per item) loop in Python; rendering is vectorised over the whole batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .transforms import normalize_image

MAX_OBJECTS = 2
MAX_DISTRACTORS = 6
NOISE_GRID = 6  # low-frequency background noise: a NOISE_GRID x NOISE_GRID grid, upsampled
CHUNK = 1024  # items rendered at once
_MASK64 = (1 << 64) - 1
_TRIANGLE_AREA = 3 * math.sqrt(3) / 4  # area of the triangle inscribed in the unit circle


def item_seed(seed: int, index: int) -> int:
    """Seed of item ``index`` of a data set with ``seed`` (splitmix64 of the pair; 63 bits)."""
    x = (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xD1B54A32D192ED03) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) >> 1


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


def _shape_masks(kind, cx, cy, a, b, angle, jitter, xx, yy) -> torch.Tensor:
    """Inside-masks (B, K, S, S) of K shapes per item; all three kinds have area pi*a*b.

    kind: 0 ellipse, 1 rectangle, 2 triangle. Every shape parameter is (B, K).
    """
    p = lambda t: t[..., None, None]  # noqa: E731  (B, K) -> (B, K, 1, 1)
    dx, dy = xx - p(cx), yy - p(cy)
    cos, sin = p(angle.cos()), p(angle.sin())
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    ellipse = (u / p(a)) ** 2 + (v / p(b)) ** 2 <= 1
    half = math.sqrt(math.pi) / 2  # a square of side 2*half*r has the area of the circle of radius r
    rectangle = (u.abs() <= half * p(a)) & (v.abs() <= half * p(b))
    triangle = _triangle_masks(cx, cy, (math.pi * a * b / _TRIANGLE_AREA).sqrt(), angle, jitter, xx, yy)
    kind = p(kind)
    return torch.where(kind == 0, ellipse, torch.where(kind == 1, rectangle, triangle))


def _triangle_masks(cx, cy, radius, angle, jitter, xx, yy) -> torch.Tensor:
    """Triangles with vertices on a circle, at ``angle`` + 120 degree steps + ``jitter`` (B, K, 3)."""
    vertex_angles = angle[..., None] + torch.arange(3) * (2 * math.pi / 3) + jitter
    vx = cx[..., None] + radius[..., None] * vertex_angles.cos()  # (B, K, 3)
    vy = cy[..., None] + radius[..., None] * vertex_angles.sin()
    p = lambda t: t[..., None, None]  # noqa: E731
    sides = []
    for i in range(3):
        j = (i + 1) % 3
        ex, ey = p(vx[..., j] - vx[..., i]), p(vy[..., j] - vy[..., i])
        sides.append(ex * (yy - p(vy[..., i])) - ey * (xx - p(vx[..., i])) >= 0)
    # Vertices go counter-clockwise (jitter < 60 degrees keeps their order): inside = left of every edge.
    return sides[0] & sides[1] & sides[2]


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
    """Small blobs anywhere in the image: radii 2.5% to 7% of the image side."""
    a = _between(r["dis_size"], 0.025, 0.07)
    b = a * _between(r["dis_aspect"], 0.5, 1.0)
    kind = (r["dis_kind"] * 3).floor().clamp(max=2)
    jitter = _between(r["dis_jitter"], -0.35, 0.35).view(-1, MAX_DISTRACTORS, 3)
    return kind, r["dis_x"], r["dis_y"], a, b, r["dis_angle"] * math.pi, jitter


def _palette(r: dict[str, torch.Tensor]):
    """Object colour (vivid: each channel dark or bright) and two related background colours near
    its complement; all (B, 3, 1, 1)."""
    channel_bright = r["obj_bright"] < 0.5
    obj = torch.where(channel_bright, _between(r["obj_rgb"], 0.65, 0.95), _between(r["obj_rgb"], 0.05, 0.35))
    bg1 = (1 - obj + _between(r["bg1_rgb"], -0.2, 0.2)).clamp(0, 1)
    bg2 = (0.6 * bg1 + 0.4 * r["bg2_rgb"]).clamp(0, 1)
    return (c[..., None, None] for c in (obj, bg1, bg2))


class ProceduralSaliency(Dataset):
    """``n`` generated (image, mask) items at ``size`` x ``size``, deterministic from ``seed``.

    Items are rendered in bulk on first access (stored as uint8 images and bool masks) and returned
    in the format of `evopop.data.transforms`: normalised float (3, S, S) and float (1, S, S) in {0, 1}.
    """

    def __init__(self, n: int, size: int = 64, seed: int = 0):
        if n < 1 or size < 16:
            raise ValueError(f"need n >= 1 and size >= 16, got n={n}, size={size}")
        self.n, self.size, self.seed = int(n), int(size), int(seed)
        self._images: torch.Tensor | None = None  # uint8 (n, 3, S, S)
        self._masks: torch.Tensor | None = None  # bool (n, 1, S, S)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} items")
        if self._images is None:
            self._materialize()
        image = normalize_image(self._images[index].float() / 255)
        return image, self._masks[index].float()

    def __getstate__(self):  # ship the recipe, not the pixels
        return {**self.__dict__, "_images": None, "_masks": None}

    def _materialize(self) -> None:
        images, masks = [], []
        for start in range(0, self.n, CHUNK):
            image, mask = self.render(range(start, min(start + CHUNK, self.n)))
            images.append(image)
            masks.append(mask)
        self._images, self._masks = torch.cat(images), torch.cat(masks)

    def render(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (B, 3, S, S) and bool masks (B, 1, S, S) of the items ``indices``."""
        s = self.size
        r = _draw([item_seed(self.seed, int(i)) for i in indices], self._draw_sizes())
        batch = r["count"].shape[0]
        coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s
        yy, xx = coords.view(s, 1), coords.view(1, s)
        pixel_noise = r["pixel_noise"].view(batch, 3, s, s) - 0.5
        obj, bg1, bg2 = _palette(r)

        # Background: two colours mixed by low-frequency noise, plus stripes and pixel noise.
        blotches = F.interpolate(r["blotches"].view(batch, 1, NOISE_GRID, NOISE_GRID), size=(s, s),
                                 mode="bicubic", align_corners=False).clamp(0, 1)  # fmt: skip
        image = bg1 + (bg2 - bg1) * blotches
        per_item = lambda name: r[name][:, 0, None, None]  # noqa: E731  (B, 1, 1)
        theta = per_item("stripe_angle") * math.pi
        freq = _between(per_item("stripe_freq"), 3, 10)
        phase = 2 * math.pi * (freq * (xx * theta.cos() + yy * theta.sin()) + per_item("stripe_phase"))
        amplitude = (per_item("stripe_on") < 0.5) * _between(per_item("stripe_amp"), 0.08, 0.3)
        image = image + (amplitude * phase.sin()).unsqueeze(1)
        image = image + 0.12 * pixel_noise

        # Distractors: colours between background and object, so of lower contrast than objects.
        d_kind, d_x, d_y, d_a, d_b, d_angle, d_jitter = _distractors(r)
        d_inside = _shape_masks(d_kind, d_x, d_y, d_a, d_b, d_angle, d_jitter, xx, yy)
        d_inside &= (r["dis_on"] < 0.6)[..., None, None]
        mix = _between(r["dis_mix"], 0.25, 0.6)  # (B, D)
        for k in range(MAX_DISTRACTORS):
            colour = bg1 + mix[:, k, None, None, None] * (obj - bg1)
            image = torch.where(d_inside[:, k : k + 1], colour + 0.08 * pixel_noise, image)

        # Salient objects, shaded along a random direction.
        count = torch.where(r["count"][:, 0] < 0.35, 2, 1)
        kind, cx, cy, a, b, angle, jitter = _objects(r, count)
        inside = _shape_masks(kind, cx, cy, a, b, angle, jitter, xx, yy)
        inside &= (torch.arange(MAX_OBJECTS) < count[:, None])[..., None, None]
        shade_dir = r["shade"][:, 0, None, None] * 2 * math.pi
        shade_strength = _between(r["shade"][:, 1, None, None], 0.0, 0.25)
        shading = 1 + shade_strength * ((xx - 0.5) * shade_dir.cos() + (yy - 0.5) * shade_dir.sin())
        second = (obj + _between(r["obj2_rgb"], -0.12, 0.12)[..., None, None]).clamp(0, 1)
        for k, colour in enumerate((obj, second)):
            painted = colour * shading.unsqueeze(1) + 0.06 * pixel_noise
            image = torch.where(inside[:, k : k + 1], painted, image)

        mask = inside.any(dim=1, keepdim=True)
        return (image.clamp(0, 1) * 255).round().to(torch.uint8), mask

    def _draw_sizes(self) -> dict[str, int]:
        o, d = MAX_OBJECTS, MAX_DISTRACTORS
        return {
            "count": 1, "obj_area": o, "obj_aspect": o, "obj_x": o, "obj_y": o, "obj_kind": o,
            "obj_angle": o, "obj_jitter": 3 * o, "shade": 2, "obj_bright": 3, "obj_rgb": 3,
            "obj2_rgb": 3, "bg1_rgb": 3, "bg2_rgb": 3, "stripe_on": 1, "stripe_freq": 1,
            "stripe_angle": 1, "stripe_phase": 1, "stripe_amp": 1, "dis_on": d, "dis_x": d,
            "dis_y": d, "dis_size": d, "dis_aspect": d, "dis_kind": d, "dis_angle": d,
            "dis_jitter": 3 * d, "dis_mix": d, "blotches": NOISE_GRID * NOISE_GRID,
            "pixel_noise": 3 * self.size * self.size,
        }  # fmt: skip
