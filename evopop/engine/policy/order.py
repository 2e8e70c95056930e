"""The order a batch's jobs are handed to trainers: the longest expected first.

A generation (or a rung of successive halving) ends when its last individual does: every trainer
waits at that barrier for the selection. Handed out in the order they are listed, offspring of a
lineage grown under a mild environment (large, slow to train where training time follows the
network's size) may come last and leave the other trainers idle while they finish. Longest
processing time first (Graham's LPT rule) bounds the batch's length at 4/3 of the best possible
on identical trainers, and the pool's greedy hand-out (a job to whichever trainer comes free)
keeps it close on trainers of different speeds (`benchmarks/bench_scheduling.py` measures both).

A job's length is not known before it runs, so it is estimated from what was measured: its
parent's training time per epoch (``train_seconds / epochs`` of the parent's record) times the
epochs the job trains. Siblings tie, and keep their listed order (the sort is stable). Jobs whose
parent has no such measurement (the root ancestor, an ancestor loaded already trained) go first:
unknown may be long, and a short job started early costs the barrier nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ...records.schema import IndividualRecord
from ..jobs import Spec


def expected_seconds(spec: Spec, parent: IndividualRecord | None) -> float | None:
    """The seconds ``spec`` is expected to train: its parent's measured seconds per epoch times the
    epochs it trains (to ``train_until`` at a rung of successive halving); None where unmeasured."""
    if parent is None or not parent.epochs or not parent.train_seconds or parent.train_seconds <= 0:
        return None
    return parent.train_seconds / parent.epochs * (spec.train_until or spec.epochs)


def longest_first(specs: Sequence[Spec], parents: Mapping[str, IndividualRecord]) -> list[Spec]:
    """``specs`` in the order to hand them out: those of unknown length, then the longest expected
    first (`expected_seconds`); ties keep their listed order."""
    costs = [expected_seconds(s, parents.get(s.parent_id) if s.parent_id else None) for s in specs]
    order = sorted(range(len(specs)), key=lambda i: (costs[i] is not None, -(costs[i] or 0.0)))
    return [specs[i] for i in order]
