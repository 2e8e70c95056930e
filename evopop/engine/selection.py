"""Selection: which individuals of a generation become the next generation's ancestors.

Pure and deterministic: failed individuals and those without a finite metric are skipped, ties are
broken by individual id (natural order), so a resumed run selects exactly what the original would.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ..config import SELECTION_RULES
from ..records.ids import natural_key
from ..records.schema import IndividualRecord


def rank(records: Iterable[IndividualRecord], metric: str, direction: str) -> list[str]:
    """Ids of the successful individuals, best first."""
    sign = -1.0 if direction == "max" else 1.0
    scored = []
    for record in records:
        value = record.metric(metric)
        if not record.ok or value is None or not math.isfinite(value):
            continue
        scored.append((sign * value, natural_key(record.individual_id), record.individual_id))
    return [individual_id for *_, individual_id in sorted(scored)]


def select(
    records: Iterable[IndividualRecord], rule: str, k: int, metric: str, direction: str
) -> tuple[list[str], list[str]]:
    """(ranking of successful ids, selected ids in rank order) under ``rule`` (best | topk | all)."""
    ranking = rank(records, metric, direction)
    if rule == "best":
        return ranking, ranking[:1]
    if rule == "topk":
        return ranking, ranking[:k]
    if rule == "all":
        return ranking, list(ranking)
    raise ValueError(f"unknown selection rule {rule!r}; allowed: {', '.join(SELECTION_RULES)}")
