"""Selection: which individuals of a generation become the next generation's ancestors.

Pure and deterministic: failed individuals and those without a finite metric are skipped, ties are
broken by individual id (natural order), so a resumed run selects exactly what the original would.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ...config import SELECTION_RULES
from ...records.ids import natural_key
from ...records.schema import IndividualRecord


@dataclass(frozen=True)
class LatencyRule:
    """Selection on measured speed as well as the metric (``selection.latency``).

    - ``budget`` b: an individual whose compacted network runs within b times the root ancestor's
      latency is *feasible*; feasible individuals rank first, by the metric, then the others, fastest
      first (a run whose budget nobody meets yet selects towards it);
    - ``pareto``: non-dominated sorting on (metric, latency): the individuals no other beats on both
      rank first, by the metric, then the next front, and so on.
    An individual without a measured latency counts as the slowest.
    """

    field: str  # the IndividualRecord field: latency_cpu_b1_ms, latency_cpu_b32_ms or latency_gpu_ms
    budget: float | None = None
    pareto: bool = False

    def latency(self, record: IndividualRecord) -> float:
        value = getattr(record, self.field)
        return float(value) if value is not None and math.isfinite(value) and value > 0 else math.inf


def rank(
    records: Iterable[IndividualRecord],
    metric: str,
    direction: str,
    latency: LatencyRule | None = None,
    reference_ms: float | None = None,
) -> list[str]:
    """Ids of the successful individuals, best first (on the metric, and on latency under ``latency``,
    ``reference_ms`` being the root ancestor's latency a budget is relative to)."""
    sign = -1.0 if direction == "max" else 1.0
    scored = []
    for record in records:
        value = record.metric(metric)
        if not record.ok or value is None or not math.isfinite(value):
            continue
        scored.append((sign * value, natural_key(record.individual_id), record))
    if latency is None:
        return [r.individual_id for *_, r in sorted(scored, key=lambda s: s[:2])]
    if latency.pareto:
        fronts = pareto_fronts([(score, latency.latency(r)) for score, _, r in scored])
        keyed = [(front, score, key, r) for front, (score, key, r) in zip(fronts, scored)]
        return [r.individual_id for *_, r in sorted(keyed, key=lambda s: s[:3])]
    limit = latency.budget * reference_ms if reference_ms and math.isfinite(reference_ms) else math.inf
    keyed = []
    for score, key, r in scored:
        ms = latency.latency(r)
        feasible = ms <= limit
        keyed.append((0 if feasible else 1, score if feasible else ms, key, r))
    return [r.individual_id for *_, r in sorted(keyed, key=lambda s: s[:3])]


def pareto_fronts(points: list[tuple[float, float]]) -> list[int]:
    """The front of each (score, latency) point, both minimised: 0 for the points no other dominates
    (at least as good on both, better on one), 1 for those only front 0 dominates, and so on."""
    fronts = [-1] * len(points)
    remaining = set(range(len(points)))
    front = 0
    while remaining:
        current = {i for i in remaining if not any(_dominates(points[j], points[i]) for j in remaining if j != i)}
        for i in current:
            fronts[i] = front
        remaining -= current
        front += 1
    return fronts


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])


def select(
    records: Iterable[IndividualRecord],
    rule: str,
    k: int,
    metric: str,
    direction: str,
    latency: LatencyRule | None = None,
    reference_ms: float | None = None,
) -> tuple[list[str], list[str]]:
    """(ranking of successful ids, selected ids in rank order) under ``rule`` (best | topk | all)."""
    ranking = rank(records, metric, direction, latency, reference_ms)
    if rule == "best":
        return ranking, ranking[:1]
    if rule == "topk":
        return ranking, ranking[:k]
    if rule == "all":
        return ranking, list(ranking)
    raise ValueError(f"unknown selection rule {rule!r}; allowed: {', '.join(SELECTION_RULES)}")
