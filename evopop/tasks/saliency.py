"""Visual saliency: the reference experiment's task (SaliencyNet + saliency data + F-beta/MAE).

Data sets (``dataset``):
- "procedural" (default): `ProceduralSaliency`, generated, so it runs on a fresh machine; train,
  val and test sets of ``train_n``, ``val_n``, ``test_n`` items from seeds ``seed``, ``seed + 1``,
  ``seed + 2`` (items are hashed from (seed, index): the sets share no items). Default size 64.
- "msra_b": MSRA-B under ``root``: train = train split (random horizontal flips when ``hflip``),
  val = valid split, test = test split. Default size 224.
- "folder": ``folders = {"train": {"images": dir, "masks": dir}, "val": {...}, "test": {...}}``
  ("test" optional), e.g. DUTS-TR for training. Default size 224.
Extra evaluation sets, for any of them: ``hku_is_root`` (eval set "hku_is") and ``extra_eval_sets =
{name: {"images": dir, "masks": dir}}`` (ECSSD, PASCAL-S, DUTS-TE, ...).

Training images and masks are resized to ``size`` (square int or (height, width)). Evaluation
follows the field's evaluation code (PySODMetrics; `evopop.metrics.saliency`): evaluation images are
resized to ``size`` for the network, and each prediction is resized (bilinear) to its mask's
original size and scored there (``eval_original_size``, default true; false scores at ``size``);
each map is min-max normalised per image first (``normalize_maps``, default true). The procedural
data are generated at ``size``: there the two coincide. The network outputs 2-class logits; the
loss is the cross-entropy against the mask (at evaluation, against the original-size masks, the
logits resized to each, averaged per image), and the metrics read softmax channel 1 as the saliency
map: MAE, F-beta (adaptive, max, mean), S-measure, E-measure (adaptive, max, mean). Every metric is
recorded per eval set as ``<set>_<metric>``; populations are selected on ``val_fbeta_max`` by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..data.procedural import ProceduralSaliency
from ..data.saliency import SaliencyFolder, hku_is, msra_b
from ..metrics.saliency import METRIC_NAMES, SaliencyMetric, same_size_groups
from ..models.saliency import SaliencyNet, load_vgg16_imagenet, vgg16_imagenet_path
from .base import Metric, Task

DATASETS = ("procedural", "msra_b", "folder")
DEFAULT_SIZE = {"procedural": 64, "msra_b": 224, "folder": 224}


def _check_folder_spec(name: str, spec) -> None:
    if not isinstance(spec, Mapping) or not {"images", "masks"} <= set(spec):
        raise ValueError(f"data set {name!r} needs {{'images': dir, 'masks': dir}}, got {spec!r}")


class SaliencyTask(Task):
    default_metric = "val_fbeta_max"
    default_direction = "max"

    def __init__(
        self,
        dataset: str = "procedural",
        root: str | None = None,
        size: int | tuple[int, int] | None = None,
        width: float = 1.0,
        pretrained: str | None = None,
        weights_path: str | None = None,
        deconv_kernel: int = 4,
        batch_norm: bool = False,
        hflip: bool = True,
        train_n: int = 2000,
        val_n: int = 500,
        test_n: int = 500,
        seed: int = 0,
        folders: Mapping[str, Mapping[str, str]] | None = None,
        hku_is_root: str | None = None,
        extra_eval_sets: Mapping[str, Mapping[str, str]] | None = None,
        normalize_maps: bool = True,
        eval_original_size: bool = True,
    ):
        if dataset not in DATASETS:
            raise ValueError(f"saliency dataset must be one of {DATASETS}, got {dataset!r}")
        if pretrained not in (None, "imagenet"):
            raise ValueError(f"pretrained must be None or 'imagenet', got {pretrained!r}")
        if pretrained and width != 1.0:
            raise ValueError(f"pretrained 'imagenet' needs width 1.0 (VGG16's channel counts), got {width}")
        if dataset == "msra_b" and not root:
            raise ValueError("dataset 'msra_b' needs root (the MSRA-B folder)")
        if dataset == "folder":
            if not folders or "train" not in folders or "val" not in folders:
                raise ValueError("dataset 'folder' needs folders with at least 'train' and 'val' entries")
            for name, spec in folders.items():
                _check_folder_spec(name, spec)
        if dataset == "procedural" and min(train_n, val_n, test_n) < 1:
            raise ValueError(f"train_n, val_n and test_n must be >= 1, got {train_n}, {val_n}, {test_n}")
        extra = dict(extra_eval_sets or {})
        for name, spec in extra.items():
            _check_folder_spec(name, spec)

        self.dataset, self.root = dataset, root
        self.size = size if size is not None else DEFAULT_SIZE[dataset]
        self.width, self.pretrained, self.weights_path = width, pretrained, weights_path
        self.deconv_kernel, self.batch_norm, self.hflip = deconv_kernel, batch_norm, hflip
        self.train_n, self.val_n, self.test_n, self.seed = train_n, val_n, test_n, seed
        self.folders = {k: dict(v) for k, v in (folders or {}).items()}
        self.hku_is_root = hku_is_root
        self.extra_eval_sets = {k: dict(v) for k, v in extra.items()}
        self.normalize_maps, self.eval_original_size = bool(normalize_maps), bool(eval_original_size)
        self._check_eval_names()
        self._train: Dataset | None = None
        self._eval: dict[str, Dataset] | None = None

    def _check_eval_names(self) -> None:
        names = self.eval_set_names()
        for name in names:
            if not name.isidentifier() or name.startswith("_"):
                raise ValueError(f"eval set name {name!r} must be a plain identifier (it prefixes record columns)")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"eval set names used twice: {duplicates}")

    # -- model ----------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        net = SaliencyNet(self.width, num_classes=2, deconv_kernel=self.deconv_kernel, batch_norm=self.batch_norm)
        if self.pretrained == "imagenet":
            load_vgg16_imagenet(net, self.weights_path)
        return net

    def example_input(self) -> torch.Tensor:
        height, width = (self.size, self.size) if isinstance(self.size, int) else self.size
        return torch.zeros(1, 3, height, width)

    # -- data -----------------------------------------------------------------------------------
    def eval_set_names(self) -> list[str]:
        names = ["val", "test"] if self.dataset != "folder" else [n for n in self.folders if n != "train"]
        if self.hku_is_root:
            names.append("hku_is")
        return names + list(self.extra_eval_sets)

    def train_set(self) -> Dataset:
        if self._train is None:
            self._train = self._build_train()
        return self._train

    def eval_sets(self) -> Mapping[str, Dataset]:
        if self._eval is None:
            self._eval = self._build_eval()
        return self._eval

    def _folder(self, spec: Mapping[str, str], hflip: bool = False, evaluation: bool = False) -> SaliencyFolder:
        original = evaluation and self.eval_original_size
        return SaliencyFolder(spec["images"], spec["masks"], size=self.size, hflip=hflip, original_masks=original)

    def _build_train(self) -> Dataset:
        if self.dataset == "procedural":
            return ProceduralSaliency(self.train_n, self._square_size(), self.seed)
        if self.dataset == "msra_b":
            return msra_b(self.root, "train", size=self.size, hflip=self.hflip)
        return self._folder(self.folders["train"], hflip=self.hflip)

    def _build_eval(self) -> dict[str, Dataset]:
        if self.dataset == "procedural":
            size = self._square_size()
            sets = {
                "val": ProceduralSaliency(self.val_n, size, self.seed + 1),
                "test": ProceduralSaliency(self.test_n, size, self.seed + 2),
            }
        elif self.dataset == "msra_b":
            original = self.eval_original_size
            sets = {
                "val": msra_b(self.root, "valid", size=self.size, original_masks=original),
                "test": msra_b(self.root, "test", size=self.size, original_masks=original),
            }
        else:
            sets = {name: self._folder(spec, evaluation=True) for name, spec in self.folders.items() if name != "train"}
        if self.hku_is_root:
            sets["hku_is"] = hku_is(self.hku_is_root, size=self.size, original_masks=self.eval_original_size)
        for name, spec in self.extra_eval_sets.items():
            sets[name] = self._folder(spec, evaluation=True)
        return sets

    def _square_size(self) -> int:
        if not isinstance(self.size, int):
            raise ValueError(f"the procedural data set is square: give size as an int, got {self.size!r}")
        return self.size

    # -- objective ------------------------------------------------------------------------------
    def loss(self, output: torch.Tensor, target: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Cross-entropy against batched masks; against a list of masks of any sizes (evaluation at
        the original size), the logits are resized (bilinear) to each mask and the loss is the mean
        over images of each image's mean."""
        if isinstance(target, torch.Tensor):
            labels = target[:, 0] if target.dim() == 4 else target
            return F.cross_entropy(output, labels.long())
        total = output.new_zeros((), dtype=torch.float32)
        for items, masks in same_size_groups(target):
            logits = output[items]
            if logits.shape[-2:] != masks.shape[-2:]:
                logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
            total = total + F.cross_entropy(logits.float(), masks.long()) * logits.shape[0]
        return total / output.shape[0]

    def metrics(self) -> Metric:
        return SaliencyMetric(normalize=self.normalize_maps)

    def metric_names(self) -> list[str]:
        return list(METRIC_NAMES)

    def validate(self) -> None:
        """Build every data set (file pairing and header checks) and find the pretrained weights."""
        if self.pretrained == "imagenet":
            vgg16_imagenet_path(self.weights_path)
        self.train_set()
        self.eval_sets()


def saliency(**kwargs) -> SaliencyTask:
    """Factory of the built-in task "saliency"; see `SaliencyTask` for the arguments."""
    return SaliencyTask(**kwargs)
