"""Hooks: what watches the evolution loop without being part of it (progress output, diversity).

The policy calls each hook at fixed points of a generation, in this order (EvoTorch's log hooks):

    batch_started(batch)                  a generation's offspring begin
    recorded(record)                      one individual's record was written (once per individual)
    batch_finished(batch)                 every individual of the batch is recorded
    generation_developed(generation)      the generation's offspring are all recorded, before selection
    selected(generation, ids)             the generation's selection is recorded
    batch_started .. batch_finished       again for the baselines at matched sparsity, when enabled
    stopped(generation, reason)           evolution.stop ends the run after this generation
    run_finished(completed)               the run ended: finished, stopped by a failure, or interrupted

Under successive halving (``selection.halving``) a generation's offspring come in rungs: each rung
but the last is a batch whose results are ``rung_recorded``, then ``promoted`` says which continue
(those that stop are ``recorded`` then, as stopped); the last rung's batch records as above.

A hook only observes: it never changes what the policy decides. A hook may work in the background
(the diversity study does, off the generations' critical path) if it finishes in ``run_finished``.
Subclass `Hook` and override what you need; a hook that raises stops the run (catch inside the hook
what must not).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..records.schema import IndividualRecord


@dataclass(frozen=True)
class Batch:
    generation: int
    total: int  # individuals in the batch
    already: int  # of which already recorded (a resumed run)
    baselines: bool = False  # the baselines at matched sparsity; else a generation's offspring (or the ancestor)
    retrying: int = 0  # recorded as failed by the infrastructure, and run again (a resumed run)
    rung: int | None = None  # successive halving: the rung (0 first) ...
    epochs: int | None = None  # ... and the epochs its offspring will have trained at its end


class Hook:
    def batch_started(self, batch: Batch) -> None:
        pass

    def recorded(self, record: IndividualRecord) -> None:
        pass

    def batch_finished(self, batch: Batch) -> None:
        pass

    def rung_recorded(self, record: IndividualRecord) -> None:
        """An offspring's result at a rung before the last of successive halving (``record.rung``)."""

    def promoted(self, generation: int, rung: int, promoted: list[str], stopped: list[str]) -> None:
        """A rung is decided: ``promoted`` continue (best first), ``stopped`` were just recorded as such."""

    def generation_developed(self, generation: int) -> None:
        pass

    def selected(self, generation: int, selected: list[str]) -> None:
        pass

    def stopped(self, generation: int, reason: str) -> None:
        """``evolution.stop`` ends the run after ``generation`` (its selection is recorded)."""

    def releasing(self, generation: int) -> None:
        """The decided ``generation``'s checkpoints that no later step reads are about to be deleted
        (``storage.checkpoints: lineage``): a hook still reading them finishes here."""

    def run_finished(self, completed: bool) -> None:
        """A hook that works in the background finishes here (the run's lock is still held);
        ``completed``: every generation ran, rather than the run stopping on an error or interrupt."""
