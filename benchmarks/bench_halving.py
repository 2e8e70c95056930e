#!/usr/bin/env python
"""What successive halving of offspring (``selection.halving``) saves, and what it costs the selected.

Each quickstart config runs twice from the same seeds, on the engine it names (Ray, 2 trainers):
full training of every offspring (the config as it is; the baseline), and with
``selection.halving: {eta: 2, min_epochs: 1}``. Per generation of offspring:

- compute: epochs trained by all of the generation's offspring (exact: the records' ``epochs``), the
  training seconds the trainers measured (``train_seconds``: training only) and the generation's wall
  time (first batch to selection, rung checkpoints and the evaluations at each rung included);
- the selected individual's metric under halving beside its siblings' under full training (min,
  median, max), and whether it lies within that spread: the issue's goal is at most half the compute
  with the selected metric within the spread of siblings under full training.

From generation 3 on the two runs follow different lineages (each descends from its own selection),
so the siblings compared are those of the full run's own parent.

    python benchmarks/bench_halving.py                     # both quickstarts, ~4 min on 2 cores
    python benchmarks/bench_halving.py --quick             # configs/tiny.yaml, seconds (tested in CI)
    python benchmarks/bench_halving.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

try:
    import evopop  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evopop.api import evolution
from evopop.config import load_config
from evopop.engine.hooks import Hook
from evopop.engine.plan import plan_run
from evopop.records.schema import OFFSPRING, OK, STOPPED

ROOT = Path(__file__).resolve().parents[1]
HALVING = "selection.halving={eta: 2, min_epochs: 1}"
CONFIGS = {
    "quickstart": (ROOT / "configs" / "quickstart.yaml", []),
    "saliency_quickstart": (ROOT / "configs" / "saliency_quickstart.yaml", []),
}
QUICK = {"tiny": (ROOT / "configs" / "tiny.yaml", ["evolution.offspring=4", "train.epochs=4"])}


class GenerationWall(Hook):
    """Wall time of each generation: from its first batch to its selection."""

    def __init__(self):
        self.started: dict[int, float] = {}
        self.seconds: dict[int, float] = {}

    def batch_started(self, batch) -> None:
        self.started.setdefault(batch.generation, time.perf_counter())

    def selected(self, generation, selected) -> None:
        self.seconds[generation] = time.perf_counter() - self.started[generation]


def run(path: Path, overrides: list[str], runs: Path, name: str):
    config = load_config(path, [*overrides, "diversity.enabled=false", "compaction.enabled=false"])
    plan = plan_run(config)
    wall = GenerationWall()
    population = evolution(config, str(runs / name), plan=plan, hooks=[wall]).run()
    return population, plan.metric, plan.direction, wall.seconds


def generation_rows(full, halved, metric: str, direction: str, wall_full: dict, wall_halved: dict) -> list[dict]:
    rows = []
    for generation in sorted(g for g in full["generation"].unique() if g > 1):
        a = full[(full["generation"] == generation) & (full["kind"] == OFFSPRING)]
        b = halved[(halved["generation"] == generation) & (halved["kind"] == OFFSPRING)]
        siblings = a.loc[a["status"] == OK, metric].astype(float)
        chosen = b[b["selected"].fillna(False).astype(bool)]
        value = float(chosen[metric].iloc[0])
        low, high = float(siblings.min()), float(siblings.max())
        rows.append(
            {
                "generation": int(generation),
                "offspring": len(a),
                "epochs_full": int(a["epochs"].sum()),
                "epochs_halving": int(b["epochs"].sum()),
                "epochs_ratio": float(b["epochs"].sum() / a["epochs"].sum()),
                "train_s_full": float(a["train_seconds"].sum()),
                "train_s_halving": float(b["train_seconds"].sum()),
                "train_s_ratio": float(b["train_seconds"].sum() / a["train_seconds"].sum()),
                "wall_s_full": wall_full[generation],
                "wall_s_halving": wall_halved[generation],
                "wall_ratio": wall_halved[generation] / wall_full[generation],
                "stopped": int((b["status"] == STOPPED).sum()),
                "selected_full": float(a.loc[a["selected"].fillna(False).astype(bool), metric].iloc[0]),
                "selected_halving": value,
                "siblings_min": low,
                "siblings_median": float(statistics.median(siblings)),
                "siblings_max": high,
                # no worse than the worst sibling trained fully (better than the best counts as within)
                "within_spread": bool(value >= low if direction == "max" else value <= high),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="configs/tiny.yaml only: a smoke run")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (path, overrides) in (QUICK if args.quick else CONFIGS).items():
            full, metric, direction, wall_full = run(path, overrides, Path(tmp), f"{name}-full")
            halved, _, _, wall_halved = run(path, [*overrides, HALVING], Path(tmp), f"{name}-halving")
            rows = generation_rows(full, halved, metric, direction, wall_full, wall_halved)
            results[name] = {"metric": metric, "rows": rows}
            print(f"\n{name} ({metric}); halving {{eta: 2, min_epochs: 1}} against full training, same seeds")
            print(
                f"{'gen':>3} {'epochs':>11} {'ratio':>6} {'train s':>13} {'ratio':>6} {'wall s':>13} {'ratio':>6}"
                f" {'selected: halving':>17} {'full':>7} {'siblings min / median / max':>28} within"
            )
            for r in rows:
                print(
                    f"{r['generation']:>3} {r['epochs_halving']:>5}/{r['epochs_full']:<5} {r['epochs_ratio']:>6.2f}"
                    f" {r['train_s_halving']:>6.1f}/{r['train_s_full']:<6.1f} {r['train_s_ratio']:>6.2f}"
                    f" {r['wall_s_halving']:>6.1f}/{r['wall_s_full']:<6.1f} {r['wall_ratio']:>6.2f}"
                    f" {r['selected_halving']:>17.4f} {r['selected_full']:>7.4f}"
                    f" {r['siblings_min']:>10.4f} / {r['siblings_median']:.4f} / {r['siblings_max']:.4f}"
                    f" {'yes' if r['within_spread'] else 'no':>6}"
                )
            total = {
                k: sum(r[k] for r in rows) for k in ("epochs_full", "epochs_halving", "wall_s_full", "wall_s_halving")
            }
            print(
                f"all generations: {total['epochs_halving'] / total['epochs_full']:.2f}x the epochs, "
                f"{total['wall_s_halving'] / total['wall_s_full']:.2f}x the wall time; selected within the "
                f"siblings' spread in {sum(r['within_spread'] for r in rows)} of {len(rows)} generations"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
