"""A torchvision network evolved on the built-in shapes: what a user who brings a ResNet gets.

    evopop run examples/torchvision_shapes.yaml      # from the repository root

``task.args.model`` names any torchvision classification model (random weights: nothing downloads);
the network, its residual blocks and its batch norms are evopop's usual genome, and the cluster
encoding removes whole coupling groups (a residual channel in every block of its stage at once).
"""

from __future__ import annotations

import torchvision
from torch import nn

from evopop.tasks.classification import ShapesTask


class TorchvisionShapes(ShapesTask):
    def __init__(self, model: str = "resnet18", **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def build_model(self) -> nn.Module:
        return torchvision.models.get_model(self.model, weights=None, num_classes=self.num_classes)


def torchvision_shapes(**kwargs) -> TorchvisionShapes:
    return TorchvisionShapes(**kwargs)
