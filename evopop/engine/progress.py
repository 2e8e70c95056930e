"""Progress: a live line per generation on a terminal, plain log lines elsewhere (``ray job logs``)."""
from __future__ import annotations

import math
import sys
import time


class Progress:
    def __init__(self, metric: str, direction: str, stream=None):
        self.stream = stream or sys.stdout
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.metric, self.direction = metric, direction

    def start(self, generation: int, total: int, already: int = 0, label: str = "") -> None:
        self.generation, self.total, self.done, self.failed = generation, total, already, 0
        self.label = f" {label}" if label else ""
        self.best = None
        self.best_synapses = None
        self.t0 = time.perf_counter()
        if not self.live:
            self._print(f"generation {generation}{self.label}: {total} individuals ({already} already recorded)")

    def update(self, row: dict) -> None:
        self.done += 1
        if row.get("status") != "ok":
            self.failed += 1
        else:
            value = row.get(self.metric)
            if value is not None and math.isfinite(value) and (self.best is None or self._better(value)):
                self.best, self.best_synapses = value, row.get("synapses")
        if self.live:
            self.stream.write("\r" + self._line() + " " * 4)
            self.stream.flush()
        else:
            status = row.get("status")
            value = row.get(self.metric)
            shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "-"
            self._print(
                f"  {row['individual_id']}: {status}, {self.metric}={shown}, synapses={row.get('synapses') or 0:,}"
                f" ({self.done}/{self.total})"
            )

    def finish(self, selected: list[str]) -> None:
        if self.live:
            self.stream.write("\r" + self._line() + f", selected {', '.join(selected) or '-'}\n")
            self.stream.flush()
        else:
            self._print(f"generation {self.generation} done in {time.perf_counter() - self.t0:.1f}s: {self._line()}, "
                        f"selected {', '.join(selected) or '-'}")

    def close(self) -> None:
        """End a batch that selects nothing (e.g. baselines)."""
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
        return f"gen {self.generation}{self.label}: {self.done}/{self.total} done{failed}, best {self.metric} {best} (synapses {syn})"

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
