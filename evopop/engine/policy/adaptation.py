"""An environment that adapts C to the lineage's observed loss (``evolution.environment.adapt``).

The paper's environment is fixed: every generation loses the same fraction of synapses, whether
the lineage has room to spare or is already at its limit. Here each lineage carries its own C. After
an individual is selected, its relative loss of the selection metric against its parent decides
the C its offspring are synthesized under, through the pressure -ln C (the log of how many times
fewer synapses a generation keeps, so that pressures add up over generations like efficiencies
multiply):

- lost more than ``max_drop``: the pressure is divided by ``factor`` (C = 0.25 becomes 0.5 at factor 2);
- lost less than half of ``max_drop`` (or gained): it is multiplied by ``factor`` (0.5 becomes 0.25),
  down to C = ``min_c``;
- in between: C stays.

A multiplicative increase / decrease controller, as in congestion control: pressure grows while the
network has room and backs off quickly once it does not. Plain functions of records: a resumed run
replays the same C, and each individual's record keeps the C it was synthesized under (``env_factor``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ...config import AdaptSection
from ...records.schema import IndividualRecord
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
        if drop is None or c >= 1.0:  # C = 1 has no pressure to scale: it stays
            return c
        pressure = -math.log(c)
        if drop > self.max_drop:
            pressure /= self.factor
        elif drop < self.max_drop / 2:
            pressure *= self.factor
        return min(1.0, max(self.min_c, math.exp(-pressure)))

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
