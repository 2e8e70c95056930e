"""Follow a run where people already watch training: TensorBoard and MLflow, as hooks on the evolution.

- TensorBoard (``tracking.tensorboard``): one event folder per individual (``<id>``: its metrics, synapses,
  MACs and efficiency at step = its generation, and its training curve ``train_loss`` at step = epoch)
  and one for the population (``population``: per generation, the selected best's metric, synapses and
  efficiency, how many were selected, and the generation's diversity ``diversity/<quantity>``: the mean
  over pairs of siblings' distances and over individuals of living fractions), so TensorBoard's run
  list is the population and its charts the lineage's progress.
- MLflow (``tracking.mlflow``): one parent run per evopop run (tag ``evopop.run_id``), one nested run per
  individual with its lineage as tags (generation, kind, parent ids, lineage), its measurements as
  metrics and its training curve (``train_loss`` at step = epoch); the generation summary and diversity
  as the parent's metrics at step = generation.

A resumed run continues the same tracked run without duplicates: individuals are tracked as they are
recorded (an individual recorded before the kill is not developed again), a generation's summary only by
the process that developed some of it, the MLflow parent run is found again by its tag, and an
individual MLflow already has is not logged twice. Tracking must never fail the run it follows: its
errors become warnings. Both are optional extras (``pip install 'evopop[tensorboard]'`` / ``[mlflow]``).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable

from ..config import Config, ConfigError
from ..engine.hooks import Batch, Hook
from ..engine.plan import Plan
from ..records.run import RunRecords
from ..records.schema import MEASURED, IndividualRecord

SIZES = ("synapses", "efficiency", "effective_efficiency", "neurons", "macs", "compact_macs")
CURVE = "train_loss"  # an individual's mean training loss per epoch, at step = epoch (1 first)


def tracking_hooks(config: Config, records: RunRecords, plan: Plan) -> list[Hook]:
    """The trackers ``config.tracking`` asks for; ConfigError (before any work) where one cannot be."""
    tracking, hooks = config.tracking, []
    if tracking.tensorboard:
        folder = records.tensorboard_dir() if tracking.tensorboard is True else str(tracking.tensorboard)
        if folder is None:
            raise ConfigError(
                "tracking.tensorboard: the run directory is on an object store; give a local folder instead"
            )
        hooks.append(TensorBoardTracker(folder, records, plan))
    if tracking.mlflow:
        hooks.append(MLflowTracker(tracking.mlflow, tracking.experiment or config.run.name, records, plan))
    return hooks


def measurements(record: IndividualRecord) -> dict[str, float]:
    """An individual's metrics and sizes, as numbers (those it has)."""
    values = {**record.metrics, **{name: getattr(record, name) for name in SIZES}}
    return {k: float(v) for k, v in values.items() if v is not None and not math.isnan(float(v))}


def training_curve(record: IndividualRecord) -> dict[int, float]:
    """Epoch (1 first) -> the individual's mean training loss in it; empty for a loaded ancestor."""
    return {epoch: float(loss) for epoch, loss in enumerate(record.train_loss or (), start=1)}


def generation_diversity(records: RunRecords, generation: int) -> dict[str, float]:
    """A generation's diversity as ``diversity/<quantity>`` -> its mean over the whole generation (the
    network-wide rows of RUN_DIR/diversity_summary); empty until it is recorded."""
    summary = records.diversity_summary(generation)
    rows = summary[(summary["group"] == "generation") & (summary["scope"] == "network")]
    return {f"diversity/{q}": float(m) for q, m in zip(rows["quantity"], rows["mean"]) if not math.isnan(float(m))}


class _Tracker(Hook):
    """What both trackers share: the generations this process developed, and the summary of one.

    A generation's diversity is recorded in the background (`DiversityRecorder`), after its selection
    perhaps: it is tracked as soon as it is there, at a later selection or at the end of the run (the
    diversity hook, set up before the trackers, has then finished). A generation whose diversity was
    recorded before this process started was tracked by the one that recorded it."""

    def __init__(self, records: RunRecords, plan: Plan):
        self.records, self.plan = records, plan
        self._developed: set[int] = set()
        self._generation = 0  # of the batch whose records arrive (a record does not hold its generation)
        self._diversity_due: set[int] = set()  # developed here, its diversity not yet tracked

    def batch_started(self, batch: Batch) -> None:
        self._generation = batch.generation
        undecided = batch.already < batch.total or not self.records.has_selection(batch.generation)
        if not batch.baselines and undecided:  # its summary was not tracked before a resume
            self._developed.add(batch.generation)
        if not batch.baselines and not self.records.has_diversity(batch.generation):
            self._diversity_due.add(batch.generation)

    def recorded(self, record: IndividualRecord) -> None:
        if record.status in MEASURED:
            self._guarded(self.track_individual, self._generation, record)

    def selected(self, generation: int, selected: list[str]) -> None:
        if generation in self._developed:  # a generation decided before a resume was tracked then
            self._guarded(self.track_generation, generation, self.summary(generation, selected))
        self._track_diversity()

    def run_finished(self, completed: bool) -> None:
        self._track_diversity()

    def _track_diversity(self) -> None:
        for generation in sorted(self._diversity_due):
            if self.records.has_diversity(generation):
                self._diversity_due.discard(generation)
                self._guarded(self.track_generation, generation, generation_diversity(self.records, generation))

    def summary(self, generation: int, selected: list[str]) -> dict[str, float]:
        by_id = {r.individual_id: r for r in self.records.individuals(generation)}
        best = by_id[selected[0]]
        values = {f"best_{k}": v for k, v in measurements(best).items()}
        return {**values, "selected": float(len(selected)), "recorded": float(len(by_id))}

    def track_individual(self, generation: int, record: IndividualRecord) -> None: ...

    def track_generation(self, generation: int, values: dict[str, float]) -> None: ...

    def _guarded(self, track: Callable, *args) -> None:
        try:
            track(*args)
        except Exception as exc:  # tracking follows the run; it never fails it
            warnings.warn(f"{type(self).__name__}: {type(exc).__name__}: {exc}", stacklevel=2)


class TensorBoardTracker(_Tracker):
    def __init__(self, folder: str, records: RunRecords, plan: Plan):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("tracking.tensorboard needs TensorBoard: pip install 'evopop[tensorboard]'") from None
        super().__init__(records, plan)
        self.folder, self._writer = folder, SummaryWriter

    def _write(self, run: str, points: list[tuple[str, float, int]]) -> None:
        """(tag, value, step) points into the event folder ``run``."""
        writer = self._writer(os.path.join(self.folder, run))
        try:
            for tag, value, step in points:
                writer.add_scalar(tag, value, step)
        finally:
            writer.close()  # flushed at once: a killed driver loses nothing it tracked

    def track_individual(self, generation: int, record: IndividualRecord) -> None:
        points = [(tag, value, generation) for tag, value in measurements(record).items()]
        points += [(CURVE, loss, epoch) for epoch, loss in training_curve(record).items()]
        self._write(record.individual_id, points)

    def track_generation(self, generation: int, values: dict[str, float]) -> None:
        self._write("population", [(tag, value, generation) for tag, value in values.items()])


class MLflowTracker(_Tracker):
    def __init__(self, uri: str, experiment: str, records: RunRecords, plan: Plan):
        try:
            from mlflow.entities import Metric
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError("tracking.mlflow needs MLflow: pip install 'evopop[mlflow]'") from None
        super().__init__(records, plan)
        self.client, self._metric = MlflowClient(tracking_uri=uri), Metric
        found = self.client.get_experiment_by_name(experiment)
        self.experiment = found.experiment_id if found else self.client.create_experiment(experiment)
        self.parent = self._parent_run()
        self.tracked = self._tracked_individuals()

    def _parent_run(self) -> str:
        """The MLflow run of this evopop run: found again on a resume (its tag), else started."""
        found = f"tags.`evopop.run_id` = '{self.records.run_id}' and tags.`evopop.role` = 'run'"
        parents = self.client.search_runs([self.experiment], found, max_results=1)
        if parents:
            self.client.update_run(parents[0].info.run_id, status="RUNNING")
            return parents[0].info.run_id
        tags = {"evopop.run_id": self.records.run_id, "evopop.role": "run", "evopop.run_dir": self.records.uri}
        run = self.client.create_run(self.experiment, run_name=self.records.run_id, tags=tags)
        self.client.log_param(run.info.run_id, "selection_metric", f"{self.plan.metric} ({self.plan.direction})")
        return run.info.run_id

    def _tracked_individuals(self) -> set[str]:
        """The individuals this run already has in MLflow, every page of them."""
        tracked, token = set(), None
        while True:
            page = self.client.search_runs(
                [self.experiment], f"tags.`mlflow.parentRunId` = '{self.parent}'", max_results=1000, page_token=token
            )
            tracked |= {r.data.tags["evopop.individual_id"] for r in page if "evopop.individual_id" in r.data.tags}
            token = page.token
            if not token:
                return tracked

    def track_individual(self, generation: int, record: IndividualRecord) -> None:
        if record.individual_id in self.tracked:  # tracked before a resume
            return
        tags = {
            "mlflow.parentRunId": self.parent,
            "evopop.run_id": self.records.run_id,
            "evopop.role": "individual",
            "evopop.individual_id": record.individual_id,
            "evopop.generation": str(generation),
            "evopop.kind": record.kind,
            "evopop.status": record.status,
            "evopop.parent_ids": ",".join(record.parent_ids or ()),
            "evopop.lineage": "/".join(record.lineage or ()),
        }
        run = self.client.create_run(self.experiment, run_name=record.individual_id, tags=tags)
        now = int(time.time() * 1000)
        points = [self._metric(key, value, now, generation) for key, value in measurements(record).items()]
        points += [self._metric(CURVE, loss, now, epoch) for epoch, loss in training_curve(record).items()]
        self.client.log_batch(run.info.run_id, metrics=points)  # one request, not one per point
        for key in ("env_mode", "env_factor", "cluster_factor", "seed", "epochs"):
            if getattr(record, key, None) is not None:
                self.client.log_param(run.info.run_id, key, getattr(record, key))
        self.client.set_terminated(run.info.run_id)
        self.tracked.add(record.individual_id)

    def track_generation(self, generation: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.client.log_metric(self.parent, key, value, step=generation)

    def run_finished(self, completed: bool) -> None:
        super().run_finished(completed)
        self._guarded(self.client.set_terminated, self.parent, "FINISHED" if completed else "KILLED")
