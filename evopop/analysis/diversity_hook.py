"""`DiversityRecorder`: a hook on the evolution loop that records each generation's diversity.

After a generation's offspring are all recorded (before selection), it measures the generation's
structural and functional diversity (`evopop.analysis.diversity`) and has the records write it to
RUN_DIR/diversity/. An analysis must never fail the run it analyses: errors become warnings.
"""

from __future__ import annotations

import warnings

from ..config import Config
from ..engine.hooks import OFFSPRING, Batch, Hook
from ..records.run import RunRecords
from ..tasks.registry import built_task
from .generation_diversity import task_probe, write_generation_diversity


class DiversityRecorder(Hook):
    def __init__(self, config: Config, records: RunRecords, metric_columns: list[str]):
        self.config, self.records, self.metric_columns = config, records, metric_columns
        self._developed: set[int] = set()  # generations with offspring developed by this process
        self._probe = None  # (outputs callable, note), built on first use: it loads the eval data

    def batch_started(self, batch: Batch) -> None:
        if batch.kind == OFFSPRING and batch.already < batch.total:
            self._developed.add(batch.generation)

    def generation_developed(self, generation: int) -> None:
        """Record the generation's diversity, unless a resumed run has it and nothing new was developed."""
        if generation not in self._developed and self.records.has_diversity(generation):
            return
        try:
            built = built_task(self.config.task.name, self.config.task.args)
            outputs, note = self._outputs(built.task)
            write_generation_diversity(self.records, generation, built.arch, self.metric_columns, outputs, note=note)
        except Exception as exc:  # an analysis must never fail the run it analyses
            warnings.warn(
                f"diversity of generation {generation} not recorded: {type(exc).__name__}: {exc}", stacklevel=2
            )

    def _outputs(self, task):
        batch = self.config.diversity.functional_batch
        if not batch:
            return None, ""
        if self._probe is None:
            self._probe = task_probe(task, self.records, batch)
        return self._probe
