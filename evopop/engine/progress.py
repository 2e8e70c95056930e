"""Progress: a live line per generation on a terminal, plain log lines elsewhere (``ray job logs``).

A `Hook` on the evolution loop: it prints, and decides nothing.
"""

from __future__ import annotations

import math
import sys
import time

from ..records.schema import IndividualRecord
from .hooks import Batch, Hook


class Progress(Hook):
    def __init__(self, metric: str, direction: str, stream=None):
        self.stream = stream or sys.stdout
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.metric, self.direction = metric, direction
        self.open = False

    def batch_started(self, batch: Batch) -> None:
        generation, total, already = batch.generation, batch.total, batch.already
        self.generation, self.total, self.done, self.failed = generation, total, already, 0
        self.label = " baselines at matched sparsity" if batch.baselines else ""
        if batch.rung is not None:
            self.label += f" rung {batch.rung} ({batch.epochs} epoch{'' if batch.epochs == 1 else 's'})"
        self.best = None
        self.best_synapses = None
        self.open = True  # the batch's own records arrive until batch_finished
        self.t0 = time.perf_counter()
        retrying = f", {batch.retrying} the infrastructure failed run again" if batch.retrying else ""
        if not self.live or batch.retrying:
            self._print(
                f"generation {generation}{self.label}: {total} individuals ({already} already recorded{retrying})"
            )

    def recorded(self, record: IndividualRecord) -> None:
        if not self.open:  # recorded as a rung of successive halving is decided: `promoted` says so
            return
        self.done += 1
        value = record.metric(self.metric)
        if not record.ok:
            self.failed += 1
        elif value is not None and math.isfinite(value) and (self.best is None or self._better(value)):
            self.best, self.best_synapses = value, record.synapses
        if self.live:
            self.stream.write("\r" + self._line() + " " * 4)
            self.stream.flush()
        else:
            shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "-"
            self._print(
                f"  {record.individual_id}: {record.status}, {self.metric}={shown}, "
                f"synapses={record.synapses or 0:,} ({self.done}/{self.total})"
            )

    def rung_recorded(self, record: IndividualRecord) -> None:
        self.recorded(record)

    def promoted(self, generation: int, rung: int, promoted: list[str], stopped: list[str]) -> None:
        text = f"{self._line()}, continue {', '.join(promoted)}; stopped {', '.join(stopped) or '-'}"
        if self.live:
            self.stream.write("\r" + text + "\n")
            self.stream.flush()
        else:
            self._print(f"generation {generation} rung {rung} done in {time.perf_counter() - self.t0:.1f}s: {text}")

    def selected(self, generation: int, selected: list[str]) -> None:
        if self.live:
            self.stream.write("\r" + self._line() + f", selected {', '.join(selected) or '-'}\n")
            self.stream.flush()
        else:
            self._print(
                f"generation {self.generation} done in {time.perf_counter() - self.t0:.1f}s: {self._line()}, "
                f"selected {', '.join(selected) or '-'}"
            )

    def stopped(self, generation: int, reason: str) -> None:
        self._print(f"stopped after generation {generation}: {reason}")

    def batch_finished(self, batch: Batch) -> None:
        """End a batch that selects nothing (e.g. baselines); offspring batches end at selection."""
        self.open = False
        if not batch.baselines:
            return
        if self.live:
            self.stream.write("\r" + self._line() + "\n")
            self.stream.flush()
        else:
            self._print(f"generation {self.generation}{self.label} done in {time.perf_counter() - self.t0:.1f}s")

    def _better(self, value: float) -> bool:
        return value > self.best if self.direction == "max" else value < self.best

    def _line(self) -> str:
        best = "-" if self.best is None else f"{self.best:.4f}"
        syn = "-" if self.best_synapses is None else f"{self.best_synapses:,}"
        failed = f", {self.failed} failed" if self.failed else ""
        done = f"{self.done}/{self.total} done{failed}"
        return f"gen {self.generation}{self.label}: {done}, best {self.metric} {best} (synapses {syn})"

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
