"""Tasks loaded by import path in the end-to-end tests: a user's own task, and one with injected faults."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from evopop.tasks.base import Metric, Task
from evopop.tasks.classification import ClassificationTask, ShapesTask


class MeanError(Metric):
    def __init__(self):
        self.total, self.n = 0.0, 0

    def update(self, output, target):
        self.total += float((output - target).abs().sum())
        self.n += target.numel()

    def compute(self):
        return {"mae": self.total / max(1, self.n)}


class Regression(Task):
    default_metric = "holdout_mae"
    default_direction = "min"

    def __init__(self, features: int = 8, hidden: int = 16, n: int = 256):
        g = torch.Generator().manual_seed(0)
        self.features, self.hidden = features, hidden
        x = torch.randn(2 * n, features, generator=g)
        y = x[:, :2].sum(dim=1, keepdim=True) + 0.1 * torch.randn(2 * n, 1, generator=g)
        self._train, self._holdout = TensorDataset(x[:n], y[:n]), TensorDataset(x[n:], y[n:])

    def build_model(self):
        return nn.Sequential(nn.Linear(self.features, self.hidden), nn.Tanh(), nn.Linear(self.hidden, 1))

    def example_input(self):
        return torch.zeros(1, self.features)

    def train_set(self):
        return self._train

    def eval_sets(self):
        return {"holdout": self._holdout}

    def loss(self, output, target):
        return F.mse_loss(output, target)

    def metrics(self):
        return MeanError()

    def metric_names(self):
        return ["mae"]


def regression(**kwargs) -> Regression:
    return Regression(**kwargs)


class Flaky(ShapesTask):
    """The shapes task with injected faults, for fault-tolerance tests.

    At the start of each individual's training (``train_set`` is called once per training run, after
    the individual's seed is set) it draws its fate from the seeded RNG: a NaN loss or an
    out-of-memory error, deterministically per individual. It can also slow training down and
    write the trainer's pid to ``pid_dir`` so a test can kill that process mid-training.

    Failures of the infrastructure, while the file ``<infra_dir>/armed`` exists (a test disarms it
    before resuming): ``infra="exit"`` the trainer process dies (``os._exit``); ``"storage"`` a
    storage error; ``"cuda"`` the first process of the run to build its training data has its "CUDA
    context" broken: every individual it trains fails with a CUDA error (its pid is written to
    ``<infra_dir>/broken``).
    """

    def __init__(
        self,
        nan_rate: float = 0.0,
        oom_rate: float = 0.0,
        step_sleep: float = 0.0,
        pid_dir: str | None = None,
        infra_dir: str | None = None,
        infra: str = "exit",
        infra_rate: float = 1.0,
        infra_once: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.nan_rate, self.oom_rate, self.step_sleep, self.pid_dir = nan_rate, oom_rate, step_sleep, pid_dir
        self.infra_dir, self.infra, self.infra_rate, self.infra_once = infra_dir, infra, infra_rate, infra_once
        self.fate = None
        self.runs = 0
        self.broken = False
        self.infra_due = False

    def train_set(self):
        draw = float(torch.rand(()))
        self.fate = "nan" if draw < self.nan_rate else "oom" if draw < self.nan_rate + self.oom_rate else None
        infra_draw = float(torch.rand(())) if self.infra_dir else 1.0
        # decided at the first training step: train_set is also called to build the data, not only to train
        self.infra_due = (
            bool(self.infra_dir) and Path(self.infra_dir, "armed").exists() and infra_draw < self.infra_rate
        )
        if self.pid_dir:
            self.runs += 1
            Path(self.pid_dir, f"{os.getpid()}.{self.runs}").touch()
        return super().train_set()

    def _claim(self, name: str) -> bool:
        """Whether this process is the first to claim ``name``; it writes its pid and Ray worker id there."""
        try:
            fd = os.open(Path(self.infra_dir, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        worker = ""
        try:
            import ray

            worker = ray.get_runtime_context().get_worker_id() if ray.is_initialized() else ""
        except Exception:
            pass
        os.write(fd, f"{os.getpid()} {worker}".encode())
        os.close(fd)
        return True

    def loss(self, output, target):
        loss = super().loss(output, target)
        if not torch.is_grad_enabled():
            return loss  # evaluation
        if self.step_sleep:
            time.sleep(self.step_sleep)
        if self.infra_due:
            self.infra_due = False
            if self.infra == "cuda":  # this process's context breaks, for good
                self.broken = self.broken or self._claim("broken")
            elif not self.infra_once or self._claim("claimed"):
                self.fate = self.infra
        if self.broken:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
        if self.fate == "exit":
            os._exit(1)
        if self.fate == "storage":
            from evopop.engine.failures import StorageError

            raise StorageError("could not write the checkpoint (injected)")
        if self.fate == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        if self.fate == "nan":
            return loss * float("nan")
        return loss


def flaky(**kwargs) -> Flaky:
    return Flaky(**kwargs)


class BagOfTokens(nn.Module):
    """A text classifier whose forward takes its inputs by name, as most text models do:
    ``model(input_ids=..., attention_mask=...)``."""

    def __init__(self, vocab: int = 40, width: int = 16, hidden: int = 24, classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.hidden, self.out = nn.Linear(width, hidden), nn.Linear(hidden, classes)

    def forward(self, input_ids, attention_mask):
        tokens = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        pooled = tokens.sum(dim=1) / attention_mask.sum(dim=1, keepdim=True).clamp(min=1)
        return self.out(torch.relu(self.hidden(pooled)))


class TokenItems(torch.utils.data.Dataset):
    """Items ``({"input_ids", "attention_mask"}, label)``: sequences of varying length padded to ``length``;
    the label is which third of the vocabulary most of a sequence's tokens come from."""

    def __init__(self, n: int, length: int, vocab: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)
        lengths = torch.randint(length // 2, length + 1, (n,), generator=g)
        self.mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
        third = (self.ids * 3 // vocab).clamp(max=2)
        counts = torch.stack([((third == c).float() * self.mask).sum(1) for c in range(3)], dim=1)
        self.labels = counts.argmax(dim=1)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i]}, self.labels[i]


class TokenClassification(ClassificationTask):
    """A task whose network takes a dict of inputs (`BagOfTokens`): its example input is that dict."""

    def __init__(self, n: int = 256, length: int = 12, vocab: int = 40):
        self.length, self.vocab = length, vocab
        self._train, self._val = TokenItems(n, length, vocab, 0), TokenItems(n // 2, length, vocab, 1)

    def build_model(self):
        return BagOfTokens(self.vocab)

    def example_input(self):
        return {
            "input_ids": torch.zeros(1, self.length, dtype=torch.long),
            "attention_mask": torch.ones(1, self.length),
        }

    def train_set(self):
        return self._train

    def eval_sets(self):
        return {"val": self._val}


def tokens(**kwargs) -> TokenClassification:
    return TokenClassification(**kwargs)
