"""Selection: which individuals of a generation become the next generation's ancestors.

Pure and deterministic: failed individuals and those without a finite metric are skipped, ties are
broken by individual id (natural order), so a resumed run selects exactly what the original would.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

from ..records.run import natural_key


def rank(rows: Iterable[dict], metric: str, direction: str) -> list[str]:
    """Ids of the successful individuals, best first."""
    sign = -1.0 if direction == "max" else 1.0
    scored = []
    for row in rows:
        value = row.get(metric)
        if row.get("status") != "ok" or value is None or not math.isfinite(value):
            continue
        scored.append((sign * value, natural_key(row["individual_id"]), row["individual_id"]))
    return [individual_id for *_, individual_id in sorted(scored)]


def select(rows: Iterable[dict], rule: str, k: int, metric: str, direction: str) -> tuple[list[str], list[str]]:
    """(ranking of successful ids, selected ids in rank order) under ``rule`` (best | topk | all)."""
    ranking = rank(rows, metric, direction)
    if rule == "best":
        return ranking, ranking[:1]
    if rule == "topk":
        return ranking, ranking[:k]
    if rule == "all":
        return ranking, list(ranking)
    raise ValueError(f"unknown selection rule {rule!r}")
