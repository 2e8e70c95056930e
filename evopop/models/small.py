"""Small convolutional classifier: the quickstart's ancestor (VGG-style, CPU-sized)."""

from __future__ import annotations

from torch import nn


class SmallConvNet(nn.Module):
    """conv-BN-ReLU blocks with max-pooling, then two linear layers.

    Every layer kind that neuron death must follow is here: conv -> BN -> ReLU -> pool -> conv,
    and the flatten from the last feature map into the first linear layer.
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 6, widths=(16, 32, 64), hidden: int = 128, pooled: int = 2
    ):
        super().__init__()
        blocks, c = [], in_channels
        for w in widths:
            blocks += [
                nn.Conv2d(c, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c = w
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(pooled)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c * pooled * pooled, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))
