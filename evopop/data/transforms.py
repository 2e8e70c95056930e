"""Joint image/mask transforms for saliency data (torchvision.transforms.v2).

An item is ``(image, mask)``: image float (3, H, W) normalised with the ImageNet mean/std, mask
float (1, H, W) in {0, 1} (a pixel is salient iff its 0..255 mask value is > 128).
Geometric transforms are applied to image and mask together (the mask with nearest-neighbour
interpolation), so they stay aligned.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK_THRESHOLD = 128  # on 0..255 masks: salient iff > 128


def as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) from an int (square) or a pair."""
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """Float image(s) in [0, 1], channels at dim -3, normalised with the ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image - mean) / std


def binarize_mask(mask: torch.Tensor) -> torch.Tensor:
    """A 0..255 mask as float {0, 1}."""
    return (mask > MASK_THRESHOLD).float()


class SaliencyTransform:
    """uint8 image (3, H, W) + uint8 mask (1, H, W) -> a normalised, resized, aligned item.

    ``size``: output (height, width), or None to keep the original size. ``hflip``: random
    horizontal flip with probability 0.5 (training), drawn from torch's global RNG.
    """

    def __init__(self, size: int | tuple[int, int] | None = 224, hflip: bool = False):
        self.size = None if size is None else as_size(size)
        geometric: list = []
        if self.size is not None:
            geometric.append(v2.Resize(self.size, antialias=True))  # masks resize with nearest
        if hflip:
            geometric.append(v2.RandomHorizontalFlip(p=0.5))
        self.geometric = v2.Compose(geometric) if geometric else v2.Identity()
        self.to_float = v2.Compose(
            [
                v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.geometric(tv_tensors.Image(image), tv_tensors.Mask(mask))
        image = self.to_float(image)
        return image.as_subclass(torch.Tensor), binarize_mask(mask.as_subclass(torch.Tensor))

    def __repr__(self) -> str:
        return f"SaliencyTransform(size={self.size}, geometric={self.geometric})"
