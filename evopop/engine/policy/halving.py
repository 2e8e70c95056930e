"""Successive halving of a generation's offspring (``selection.halving``; Jamieson & Talwalkar 2016,
the synchronous form of Ray Tune's ASHA and HyperBand).

Most offspring are discarded at selection, yet each is trained for the full epochs. Under halving a
generation's offspring train in rungs: all of them for ``min_epochs``, then the best ``1/eta`` of
them (by the selection metric, on their evaluation after the rung) continue to ``eta`` times as many
epochs, and so on, up to the full epochs, where selection ranks those that reached them:

    rung epochs   e_0 = min_epochs, e_(i+1) = eta * e_i while below E, and E last
    kept          n_(i+1) = max(needed, floor(n_i / eta)), needed = what selection takes (1, or k)

An offspring that continues is not retrained: its training (weights, optimizer, schedule, random
state) is stored at each rung and continued, so that it ends exactly as a full training would, and
the learning-rate schedule spans the full epochs from the first rung on. Those that stop are recorded
``stopped`` with the epochs they trained and their metrics at that rung: never failed, never selected.

Plain functions of records: a rung's decision is recorded (``promotion/``) before it is acted on, so
a resumed run continues exactly where the first one stopped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ...config import HalvingSection
from ...records.schema import IndividualRecord
from .selection import rank


@dataclass(frozen=True)
class Rungs:
    epochs: tuple[int, ...]  # epochs trained by the end of each rung; the last is the full training
    eta: int

    @classmethod
    def of(cls, section: HalvingSection | None, full_epochs: int) -> Rungs | None:
        """The rungs of ``selection.halving`` for offspring trained ``full_epochs``; None when off."""
        if section is None:
            return None
        return cls(rung_epochs(section.min_epochs, section.eta, full_epochs), section.eta)

    @property
    def last(self) -> int:
        return len(self.epochs) - 1

    def kept(self, candidates: int, needed: int) -> int:
        """How many of a rung's ``candidates`` continue, when selection takes ``needed``."""
        return min(candidates, max(needed, candidates // self.eta, 1))


def rung_epochs(min_epochs: int, eta: int, full_epochs: int) -> tuple[int, ...]:
    """``min_epochs``, ``eta`` times that, ... while below ``full_epochs``, then ``full_epochs``."""
    if not (eta >= 2 and 1 <= min_epochs < full_epochs):
        raise ValueError(f"no rungs from {min_epochs} to {full_epochs} epochs at eta {eta}")
    epochs, e = [], min_epochs
    while e < full_epochs:
        epochs.append(e)
        e *= eta
    return (*epochs, full_epochs)


def promote(results: Iterable[IndividualRecord], kept: int, metric: str, direction: str) -> tuple[list[str], list[str]]:
    """(ranking of the rung's successful ids, the ``kept`` best of them, which continue). Ties are
    broken by id, as selection breaks them: the same results always promote the same offspring."""
    ranking = rank(results, metric, direction)
    return ranking, ranking[:kept]
