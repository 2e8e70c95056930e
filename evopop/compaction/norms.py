"""Layer norms whose dead channels were removed.

A layer norm's statistics read every channel of its input. In a masked offspring a dead channel is an
exact zero there, and still counts: the mean and variance divide by the full width. The compacted
network keeps that arithmetic (the removed channels enter as the zeros they were), so it computes the
masked network's function exactly while its tensors, and every layer around them, are narrower. The
alternative, a stock ``nn.LayerNorm`` over the kept channels, would change every output; evopop would
then have to refuse to remove any channel of a transformer's or ConvNeXt's residual stream.

Both are plain tensor arithmetic, so ``torch.export`` and ONNX see ordinary operations.
"""

from __future__ import annotations

import torch
from torch import nn


def layer_norm_of_width(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    width: int,
) -> torch.Tensor:
    """``F.layer_norm`` over the last dimension of ``x`` as if it had ``width`` channels, the missing
    ones zero: the mean divides by ``width``, and each missing zero adds mean^2 to the variance."""
    missing = width - x.shape[-1]
    mean = x.sum(-1, keepdim=True) / width
    centred = x - mean
    variance = (centred.square().sum(-1, keepdim=True) + missing * mean.square()) / width
    y = centred * torch.rsqrt(variance + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


class LayerNormOfWidth(nn.Module):
    """``nn.LayerNorm`` over the kept channels of a norm that had ``width`` (see `layer_norm_of_width`)."""

    def __init__(self, weight: nn.Parameter | None, bias: nn.Parameter | None, eps: float, width: int):
        super().__init__()
        self.weight, self.bias = weight, bias
        self.eps, self.width = eps, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm_of_width(x, self.weight, self.bias, self.eps, self.width)

    def extra_repr(self) -> str:
        kept = self.weight.numel() if self.weight is not None else "?"
        return f"kept={kept}, width={self.width}, eps={self.eps}"
