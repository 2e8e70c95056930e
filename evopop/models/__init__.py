"""Networks: the saliency ancestor of the reference experiment."""

from .saliency import SaliencyNet, load_vgg16_imagenet

__all__ = ["SaliencyNet", "load_vgg16_imagenet"]
