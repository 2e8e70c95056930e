"""Stop rules: whether a run ends before ``evolution.generations`` (``evolution.stop``).

Judged after each generation's selection, on the followed lineage's newest individual (the best
selected one) against the ancestor (generation 1):

- ``max_drop``: its metric fell more than this fraction below the ancestor's (for a metric that is
  minimised, a loss, "below" means above): a lineage that has collapsed stops instead of evolving on;
- ``efficiency``: it has this many times fewer synapses than the ancestor: the target is reached.

Plain functions of records: a resumed run replays the same decisions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...config import StopSection
from ...records.schema import IndividualRecord


@dataclass(frozen=True)
class StopRule:
    max_drop: float | None
    efficiency: float | None
    metric: str  # resolved: the configured one, else the selection metric
    direction: str  # "max" | "min"

    @classmethod
    def of(cls, section: StopSection, metric: str, direction: str) -> StopRule | None:
        """The rule of ``evolution.stop``; None when neither is set. ``metric`` and ``direction``: the
        judged metric's, already resolved (`evopop.engine.plan`)."""
        if section.max_drop is None and section.efficiency is None:
            return None
        return cls(section.max_drop, section.efficiency, metric, direction)

    def reason(self, ancestor: IndividualRecord, best: IndividualRecord) -> str | None:
        """Why the run stops after ``best``'s generation, or None if it goes on."""
        if self.max_drop is not None:
            before, after = ancestor.metric(self.metric), best.metric(self.metric)
            if _finite(before) and not _finite(after):  # a lineage that no longer yields a number has collapsed
                return f"the lineage's {self.metric} is {after} ({best.individual_id}): evolution.stop.max_drop"
            drop = relative_drop(before, after, self.direction)
            if drop is not None and drop > self.max_drop:
                return (
                    f"the lineage's {self.metric} ({best.metric(self.metric):.4f}, {best.individual_id}) fell "
                    f"{drop:.1%} below the ancestor's ({ancestor.metric(self.metric):.4f}), more than "
                    f"evolution.stop.max_drop {self.max_drop:.1%}"
                )
        if self.efficiency is not None and best.efficiency is not None and best.efficiency >= self.efficiency:
            return (
                f"the lineage reached {best.efficiency:.2f}x fewer synapses ({best.individual_id}), "
                f"evolution.stop.efficiency {self.efficiency:g}x"
            )
        return None


def relative_drop(ancestor: float | None, value: float | None, direction: str) -> float | None:
    """How far ``value`` is worse than ``ancestor``, as a fraction of ``|ancestor|`` (negative: better);
    None where either is missing, not finite, or the ancestor's is 0."""
    if ancestor is None or value is None or not (math.isfinite(ancestor) and math.isfinite(value)) or ancestor == 0:
        return None
    worse = ancestor - value if direction == "max" else value - ancestor
    return worse / abs(ancestor)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
