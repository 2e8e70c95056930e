"""`DiversityRecorder`: a hook on the evolution loop that records each generation's diversity.

After a generation's offspring are all recorded (before selection), it measures the generation's
structural and functional diversity (`evopop.analysis.diversity`) and has the records write it to
RUN_DIR/diversity/. It reads each individual's genome file once (its masks, and its outputs on the
held-out batch, stored there by its trainer): no checkpoint, and no network run. It works in a
background thread, so that the next generation's trainers do not wait for it (64 offspring of the
reference network take ~50 s of a 2-core driver); the run waits for it before it ends. An analysis
must never fail the run it analyses: errors become warnings.
"""

from __future__ import annotations

import warnings
from concurrent.futures import Future, ThreadPoolExecutor

from ..config import Config
from ..engine.hooks import Batch, Hook
from ..records.run import RunRecords
from ..tasks.registry import built_task
from .generation_diversity import OutputsMissing, TaskProbe, generation_diversity


class DiversityRecorder(Hook):
    def __init__(self, config: Config, records: RunRecords, metric_columns: list[str]):
        self.config, self.records, self.metric_columns = config, records, metric_columns
        self._developed: set[int] = set()  # generations with offspring developed by this process
        self._probe: TaskProbe | None = None
        self._worker: ThreadPoolExecutor | None = None  # one generation at a time, in order
        self._pending: dict[int, Future] = {}  # generation -> its diversity, being recorded in the background
        self._deferred: list[int] = []  # generations the background could not do: outputs to compute

    def batch_started(self, batch: Batch) -> None:
        self._record_deferred()
        if not batch.baselines and batch.already < batch.total:
            self._developed.add(batch.generation)

    def generation_developed(self, generation: int) -> None:
        """Record the generation's diversity in the background, unless a resumed run has it and
        nothing new was developed: selection and the next generation do not wait for it."""
        if generation not in self._developed and self.records.has_diversity(generation):
            return
        # built here, in the driver's thread: building a network draws from the global random state
        built = built_task(self.config.task.name, self.config.task.args, self.config.task.paths)
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evopop-diversity")
        self._pending[generation] = self._worker.submit(self._record, generation, built, background=True)

    def releasing(self, generation: int) -> None:
        """The generation's checkpoints are about to go: finish its diversity first, and what the
        background could not do (outputs computed from checkpoints), in the driver's thread."""
        for g in [g for g in self._pending if g <= generation]:
            self._pending.pop(g).result()  # never raises: `_record` turns errors into warnings
        self._record_deferred()

    def run_finished(self, completed: bool) -> None:
        """Wait for the generations' diversity still being recorded; a run stopped by an error or an
        interrupt drops those not started (a resumed run records them)."""
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=not completed)
            self._worker = None
        self._pending.clear()
        if completed:
            self._record_deferred()

    def _record_deferred(self) -> None:
        while self._deferred:
            generation = self._deferred.pop(0)
            self._record(
                generation,
                built_task(self.config.task.name, self.config.task.args, self.config.task.paths),
                background=False,
            )

    def _record(self, generation: int, built, background: bool) -> None:
        try:
            probe = self._outputs(built.task, background)
            pairs, summary = generation_diversity(self.records, generation, built.arch, self.metric_columns, probe)
            self.records.write_diversity(generation, pairs, summary, probe.note if probe else "")
        except OutputsMissing:  # checkpoints without stored outputs (an older run): done in the driver's thread
            self._deferred.append(generation)
        except Exception as exc:  # an analysis must never fail the run it analyses
            warnings.warn(
                f"diversity of generation {generation} not recorded: {type(exc).__name__}: {exc}", stacklevel=2
            )

    def _outputs(self, task, background: bool) -> TaskProbe | None:
        """The functional probe: the trainers' stored outputs; where they are missing, computed in
        the driver's thread only (a network built in another thread would race the random state
        that seeds the networks the driver's thread builds)."""
        batch = self.config.diversity.functional_batch
        if not batch:
            return None
        if background:
            probe = TaskProbe(task, batch)
            probe.may_compute = False
            return probe
        if self._probe is None:
            self._probe = TaskProbe(task, batch)
        return self._probe
