"""The ancestor network of the reference experiment: a VGG16-based saliency segmentation net.

The reference describes it in one line (see shared REFERENCE.md): "VGG16 stacks c1-c5; c3/c4/c5 ->
c6 (conv 256 3x3), c7, c8 (conv 512 3x3); c7 -> d1, c8 -> d2 (deconvolution stacks);
concat(c6, d1, d2) -> c9 (conv 384 1x1); c5 -> c10, c11 (convs 512 at 11x11 and 384 at 1x1);
c9 + c10 + c11 -> softmax segmentation map". What it leaves open is decided here as follows.

Wiring (strides relative to the input; every conv is followed by ReLU)::

    x -> c1 (2 x conv 64)  -> pool -> c2 (2 x conv 128) -> pool -> c3 (3 x conv 256)   stride 4
                                   -> pool -> c4 (3 x conv 512)                         stride 8
                                   -> pool -> c5 (3 x conv 512)                         stride 16
    c3 -> c6  (conv 3x3, 256)                                  stride 4   (the fine scale)
    c4 -> c7  (conv 3x3, 512) -> d1 (1 deconv 4x4/2, 512)      stride 8  -> 4
    c5 -> c8  (conv 3x3, 512) -> d2 (2 deconv 4x4/2, 512)      stride 16 -> 8 -> 4
    concat(c6, d1, d2) -> c9  (conv 1x1, 384)                  stride 4   "local" branch
    c5 -> c10 (conv 11x11 pad 5, 512) -> c11 (conv 1x1, 384)   stride 16  "global" branch
    score_local  = conv 1x1 (384 -> num_classes) on c9
    score_global = conv 1x1 (384 -> num_classes) on c11
    logits = bilinear(score_local, input size) + bilinear(score_global, input size)

- c3/c4/c5 -> c6/c7/c8 in that order: one side branch per scale, the finest (c6) at stride 4,
  which is where all branches meet, so the stride-4 map needs no deconvolution.
- The VGG16 max-pool after c5 is dropped (as in FCN-style segmentation nets): c5 stays at stride 16.
- Deconvolution stacks double the resolution per layer (``ConvTranspose2d(k, stride 2, padding
  (k-2)/2)`` gives exactly 2x for an even k); d1 needs one layer, d2 two. Because max-pooling floors
  odd sizes, d1/d2 are then resized (bilinear; an exact identity when sizes already agree) to c6's
  size before the concat, so any input size of at least 16 pixels works.
- c11 reads c10 (a 11x11 "fc6" followed by a 1x1 "fc7", as in FCN), so the global branch is
  c5 -> c10 -> c11; "c9 + c10 + c11" is read as: the local branch (c9) and the global branch
  (c10 -> c11) each predict class scores with a 1x1 classifier; the scores are upsampled to the
  input resolution and summed.
- ``forward`` returns logits (N, num_classes, H, W) at input resolution; the softmax of the
  "segmentation map" is applied by the loss (cross-entropy) and the metrics (channel 1 = salient).
- Optional ``batch_norm`` (off by default, as in VGG16 and the reference) puts a BatchNorm2d after
  every conv/deconv except the classifiers; it helps narrow nets trained from scratch.
- The network is torch.fx-traceable (no data-dependent Python control flow; channel merges are
  ``torch.cat(dim=1)`` and ``+``), so evopop's `trace_architecture` wires neuron death through it.

Synapse count (conv/deconv weights only; width 1.0, ``deconv_kernel=4``)::

    c1-c5 (VGG16 convs)           14,710,464
    c6  256*256*3*3                  589,824
    c7, c8  2 * 512*512*3*3        4,718,592
    d1  512*512*4*4                4,194,304
    d2  2 * 512*512*4*4            8,388,608
    c9  (256+512+512)*384            491,520
    c10 512*512*11*11             31,719,424
    c11 512*384                      196,608
    classifiers 2 * 384*2              1,536
    total                         65,010,880   (reference: 63,767,232; +1,243,648 = +1.95%)

The difference comes from what the reference does not specify: the depth, kernel size and width
of the deconvolution stacks (12.6M synapses here) and the form of the classifiers. We searched
deconv kernels 2/3/4/8/16, 1-3 (d1) and 1-4 (d2) layers, 64-512 deconv channels, c6/c7 on 256- or
512-channel inputs and a few classifier layouts: none reproduces 63,767,232 exactly with the rest
as described, so we keep the simplest exact-2x design (4x4 stride-2 deconvs, as in FCN) and say so.
``deconv_kernel=2`` gives 55,573,696 synapses instead.

``width`` multiplies every hidden channel count (rounded, at least 4) so that ``width=0.125`` is a
CPU-sized version of the same graph; the input (3) and ``num_classes`` are never scaled.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# Hidden channels at width 1.0.
VGG16_STACKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
C6, C7, C8, C9, C10, C11 = 256, 512, 512, 384, 512, 384
D1_LAYERS, D2_LAYERS = 1, 2  # c7 (stride 8) and c8 (stride 16) up to c6's stride 4
MIN_CHANNELS = 4

# torchvision's VGG16 weights, as torch.hub caches them (never downloaded by evopop).
VGG16_IMAGENET_FILE = "vgg16-397923af.pth"


def scaled(channels: int, width: float) -> int:
    """A hidden channel count at ``width``: rounded, at least MIN_CHANNELS (or the count itself)."""
    return max(min(MIN_CHANNELS, channels), round(channels * width))


def _conv_block(in_ch: int, out_ch: int, kernel: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_ch))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _vgg_stack(in_ch: int, widths: tuple[int, ...], batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for out_ch in widths:
        layers.extend(_conv_block(in_ch, out_ch, 3, batch_norm))
        in_ch = out_ch
    return nn.Sequential(*layers)


def _deconv_stack(channels: int, n_layers: int, kernel: int, batch_norm: bool) -> nn.Sequential:
    """``n_layers`` transposed convolutions, each doubling height and width exactly."""
    padding = (kernel - 2) // 2
    layers: list[nn.Module] = []
    for _ in range(n_layers):
        layers.append(nn.ConvTranspose2d(channels, channels, kernel, stride=2, padding=padding))
        if batch_norm:
            layers.append(nn.BatchNorm2d(channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SaliencyNet(nn.Module):
    """VGG16 encoder + multi-scale local branch (c6-c9) + global branch (c10-c11); see module doc."""

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 2,
        deconv_kernel: int = 4,
        batch_norm: bool = False,
    ):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        if deconv_kernel < 2 or deconv_kernel % 2:
            raise ValueError(f"deconv_kernel must be even and >= 2 (exact 2x upsampling), got {deconv_kernel}")
        self.width = float(width)
        self.num_classes = num_classes
        w = lambda c: scaled(c, width)  # noqa: E731

        stacks, in_ch = [], 3
        for widths in VGG16_STACKS:
            stacks.append(_vgg_stack(in_ch, tuple(w(c) for c in widths), batch_norm))
            in_ch = w(widths[-1])
        self.c1, self.c2, self.c3, self.c4, self.c5 = stacks
        c3_ch, c4_ch, c5_ch = (w(s[-1]) for s in VGG16_STACKS[2:])

        self.c6 = _conv_block(c3_ch, w(C6), 3, batch_norm)
        self.c7 = _conv_block(c4_ch, w(C7), 3, batch_norm)
        self.c8 = _conv_block(c5_ch, w(C8), 3, batch_norm)
        self.d1 = _deconv_stack(w(C7), D1_LAYERS, deconv_kernel, batch_norm)
        self.d2 = _deconv_stack(w(C8), D2_LAYERS, deconv_kernel, batch_norm)
        self.c9 = _conv_block(w(C6) + w(C7) + w(C8), w(C9), 1, batch_norm)
        self.c10 = _conv_block(c5_ch, w(C10), 11, batch_norm)
        self.c11 = _conv_block(w(C10), w(C11), 1, batch_norm)
        self.score_local = nn.Conv2d(w(C9), num_classes, 1)
        self.score_global = nn.Conv2d(w(C11), num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # As torchvision's VGG: He init for ReLU convs; small normal init for the classifiers.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for head in (self.score_local, self.score_global):
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)

    def encoder_convs(self) -> list[nn.Conv2d]:
        """The 13 VGG16 convolutions of c1-c5, in order."""
        return [m for stack in (self.c1, self.c2, self.c3, self.c4, self.c5) for m in stack if isinstance(m, nn.Conv2d)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_size = x.shape[-2:]
        f3 = self.c3(F.max_pool2d(self.c2(F.max_pool2d(self.c1(x), 2)), 2))
        f4 = self.c4(F.max_pool2d(f3, 2))
        f5 = self.c5(F.max_pool2d(f4, 2))

        fine = self.c6(f3)
        fine_size = fine.shape[-2:]
        up7 = _resize(self.d1(self.c7(f4)), fine_size)
        up8 = _resize(self.d2(self.c8(f5)), fine_size)
        local = self.c9(torch.cat([fine, up7, up8], dim=1))
        global_ = self.c11(self.c10(f5))

        return _resize(self.score_local(local), input_size) + _resize(self.score_global(global_), input_size)


# -- ImageNet initialisation of c1-c5 ------------------------------------------------------------
def vgg16_imagenet_path(weights_path: str | os.PathLike | None = None) -> Path:
    """Where the VGG16 ImageNet weights are: ``weights_path`` or torch.hub's checkpoint cache.

    Raises FileNotFoundError saying where to put the file; never downloads.
    """
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"VGG16 ImageNet weights not found at {path} (pretrained: imagenet, weights_path)")
        return path
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    path = cache_dir / VGG16_IMAGENET_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"VGG16 ImageNet weights not found: evopop never downloads, and {path} does not exist. "
            f"Put torchvision's VGG16_Weights.IMAGENET1K_V1 file ({VGG16_IMAGENET_FILE}, from "
            f"https://download.pytorch.org/models/{VGG16_IMAGENET_FILE}) in {cache_dir} "
            "(torch.hub's checkpoints dir; set TORCH_HOME to move it), or give its path as weights_path."
        )
    return path


def _vgg16_feature_convs(state: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of torchvision vgg16's 13 ``features`` convs, from a full or features-only dict."""
    convs = []
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "features":
            parts = parts[1:]
        if len(parts) == 2 and parts[0].isdigit() and parts[1] == "weight" and value.dim() == 4:
            prefix = key[: -len("weight")]
            convs.append((int(parts[0]), value, state[prefix + "bias"]))
    convs.sort(key=lambda item: item[0])
    return [(weight, bias) for _, weight, bias in convs]


@torch.no_grad()
def load_vgg16_imagenet(net: SaliencyNet, weights_path: str | os.PathLike | None = None) -> SaliencyNet:
    """Copy torchvision's ImageNet VGG16 ``features`` weights into c1-c5 of ``net`` (width 1.0 only).

    The file is ``weights_path`` or torch.hub's cached ``vgg16-397923af.pth``; see `vgg16_imagenet_path`.
    """
    if net.width != 1.0:
        raise ValueError(f"pretrained 'imagenet' needs width 1.0 (VGG16's channel counts), got width {net.width}")
    path = vgg16_imagenet_path(weights_path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    source = _vgg16_feature_convs(state)
    target = net.encoder_convs()
    if len(source) != len(target):
        raise ValueError(f"{path} holds {len(source)} feature convs where VGG16 has {len(target)}: not VGG16 weights?")
    for conv, (weight, bias) in zip(target, source):
        if tuple(weight.shape) != tuple(conv.weight.shape):
            need = tuple(conv.weight.shape)
            raise ValueError(f"{path}: weight of shape {tuple(weight.shape)} where c1-c5 need {need}")
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return net
