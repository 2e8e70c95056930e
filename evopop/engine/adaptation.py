"""An environment that adapts C to the lineage's observed loss (``evolution.environment.adapt``).

The paper's environment is fixed: every generation loses the same fraction of synapses, whether
the lineage has room to spare or is already at its limit. Here each lineage carries its own C. After
an individual is selected, its relative loss of the selection metric against its parent decides
the C its offspring are synthesized under, by the fraction of synapses it removes, r = 1 - C:

- lost more than ``max_drop``: r is divided by ``factor`` (a milder environment);
- lost less than half of ``max_drop`` (or gained): r is multiplied by ``factor``, up to 1 - ``min_c``;
- in between: C stays.

A multiplicative increase / decrease controller, as in congestion control: pressure grows while the
network has room and backs off quickly once it does not. Plain functions of records: a resumed run
replays the same C, and each individual's record keeps the C it was synthesized under (``env_factor``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..config import AdaptSection
from ..records.schema import IndividualRecord
from .stopping import relative_drop


@dataclass(frozen=True)
class Adaptation:
    max_drop: float
    factor: float
    min_c: float

    @classmethod
    def of(cls, section: AdaptSection | None) -> Adaptation | None:
        return None if section is None else cls(section.max_drop, section.factor, section.min_c)

    def next_factor(self, c: float, drop: float | None) -> float:
        """The C after a generation that synthesized under ``c`` and lost ``drop`` (None: unknown, C stays)."""
        if drop is None:
            return c
        removed = 1.0 - c
        if drop > self.max_drop:
            removed /= self.factor
        elif drop < self.max_drop / 2:
            removed = min(removed * self.factor, 1.0 - self.min_c)
        return min(1.0, max(self.min_c, 1.0 - removed))

    def factors(
        self,
        ancestors: Iterable[IndividualRecord],
        parents: dict[str, IndividualRecord],
        base_c: float,
        metric: str,
        direction: str,
    ) -> dict[str, float]:
        """Ancestor id -> the C its offspring are synthesized under. ``parents``: the ancestors' own
        parents by id (the root ancestor has none: its offspring get ``base_c``)."""
        out = {}
        for ancestor in ancestors:
            parent = parents.get(ancestor.parent_id) if ancestor.parent_id else None
            if parent is None or ancestor.env_factor is None:
                out[ancestor.individual_id] = base_c
                continue
            drop = relative_drop(parent.metric(metric), ancestor.metric(metric), direction)
            out[ancestor.individual_id] = self.next_factor(ancestor.env_factor, drop)
        return out
