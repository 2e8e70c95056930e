#!/usr/bin/env python
"""What successive halving of offspring (``selection.halving``) saves, and what it costs the selected.

Each quickstart config runs from the same seeds, on the engine it names (Ray, 2 trainers), with full
training of every offspring (the config as it is: the baseline) and with
``selection.halving: {eta: 2, min_epochs: 1}``, in two ways:

1. Generation by generation, from the same parent: each offspring generation of the full run is run
   again under halving, from a copy of the full run's records before it (so the same parent, the
   same offspring and seeds). An offspring that halving trains to the end ends bit for bit as its
   full training (checked here), so halving's pick is one of the full run's siblings: the figure is
   its rank among them (1: none did better), and its metric against theirs (min / median / max).
   Compute per generation: epochs trained by all offspring (the records' ``epochs``) and the training
   seconds the trainers measured (``train_seconds``, training only); wall time per generation (first
   batch to selection: rung checkpoints, the evaluations after each rung and the rung barriers
   included) is taken from the end-to-end runs below, where the trainers are as warm in both.
2. End to end: the whole run under halving beside the full run, each following its own lineage: the
   followed lineage's metric per generation.

The issue's goal: at most half the compute, with the selected metric within the spread of siblings
under full training.

    python -m benchmarks.bench_halving                     # both quickstarts, ~10 min on 2 cores
    python -m benchmarks.bench_halving --quick             # configs/tiny.yaml, seconds (tested in CI)
    python -m benchmarks.bench_halving --json out.json     # --json alone: benchmarks/results/bench_halving.json
    python -m benchmarks.bench_halving --configs saliency_quickstart --halving "{eta: 3, min_epochs: 1}"
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.harness import arguments, write_json
from evopop.api import evolution
from evopop.config import load_config
from evopop.engine.hooks import Hook
from evopop.engine.plan import plan_run
from evopop.records.run import RunRecords
from evopop.records.schema import OFFSPRING, OK

ROOT = Path(__file__).resolve().parents[1]
HALVING_SECTION = "{eta: 2, min_epochs: 1}"
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


def run(path: Path, overrides: list[str], run_dir: Path, keep: Path | None = None):
    """Run ``path`` with ``overrides`` in ``run_dir``; with ``keep``, first copy that run's records
    of the generations before the last one configured (they are resumed, not run again)."""
    config = load_config(path, [*overrides, "diversity.enabled=false", "compaction.enabled=false"])
    if keep is not None:
        shutil.copytree(keep, run_dir)
        for folder in run_dir.glob("*/generation=*"):
            if int(folder.name.split("=")[1]) >= config.evolution.generations:
                shutil.rmtree(folder)
        RunRecords(str(run_dir)).write_config(config.to_yaml())
    plan = plan_run(config)
    wall = GenerationWall()
    population = evolution(config, str(run_dir), plan=plan, hooks=[wall]).run()
    return population, plan.metric, plan.direction, wall.seconds


def offspring_of(population, generation: int):
    return population[(population["generation"] == generation) & (population["kind"] == OFFSPRING)]


def selected_of(frame):
    return frame[frame["selected"].fillna(False).astype(bool)].iloc[0]


def same_parent_row(generation: int, full, replay, metric: str, direction: str, wall_full, wall_halved) -> dict:
    """Halving on generation ``generation`` of the full run (same parent, offspring, seeds). The wall
    times are the end-to-end runs' (in a replay the trainers start within the generation)."""
    a, b = offspring_of(full, generation), offspring_of(replay, generation)
    pick = selected_of(b)
    twin = a.set_index("individual_id").loc[pick["individual_id"]]
    if twin[metric] != pick[metric] or twin["mask_digest"] != pick["mask_digest"]:
        raise AssertionError(f"{pick['individual_id']}: halving did not end as its full training did")
    siblings = a[a["status"] == OK].sort_values(metric, ascending=direction == "min")
    better = siblings[metric] > pick[metric] if direction == "max" else siblings[metric] < pick[metric]
    rank = int(better.sum()) + 1  # 1: no sibling trained fully did better (ties share the rank)
    return {
        "generation": generation,
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
        "pick": pick["individual_id"],
        "pick_rank": rank,
        "pick_metric": float(pick[metric]),
        "best_full": float(siblings[metric].iloc[0]),
        "siblings_min": float(siblings[metric].min()),
        "siblings_median": float(siblings[metric].median()),
        "siblings_max": float(siblings[metric].max()),
    }


def lineage_rows(full, halved, metric: str) -> list[dict]:
    rows = []
    for generation in sorted(g for g in full["generation"].unique() if g > 1):
        a, b = offspring_of(full, generation), offspring_of(halved, generation)
        rows.append(
            {
                "generation": int(generation),
                "epochs_full": int(a["epochs"].sum()),
                "epochs_halving": int(b["epochs"].sum()),
                "lineage_full": float(selected_of(a)[metric]),
                "lineage_halving": float(selected_of(b)[metric]),
                "synapses_full": int(selected_of(a)["synapses"]),
                "synapses_halving": int(selected_of(b)["synapses"]),
            }
        )
    return rows


def report(name: str, metric: str, halving: str, same_parent: list[dict], lineage: list[dict]) -> None:
    print(f"\n{name} ({metric}): halving {halving} against full training, same seeds")
    print("1. each generation from the full run's parent: halving's pick among the siblings trained fully")
    print(
        f"{'gen':>3} {'epochs':>9} {'ratio':>5} {'train s':>11} {'ratio':>5} {'wall s':>11} {'ratio':>5}"
        f"  {'pick':>6} {'rank':>6} {'its metric':>10}  {'siblings min / median / max':>27}"
    )
    for r in same_parent:
        print(
            f"{r['generation']:>3} {r['epochs_halving']:>4}/{r['epochs_full']:<4} {r['epochs_ratio']:>5.2f}"
            f" {r['train_s_halving']:>5.1f}/{r['train_s_full']:<5.1f} {r['train_s_ratio']:>5.2f}"
            f" {r['wall_s_halving']:>5.1f}/{r['wall_s_full']:<5.1f} {r['wall_ratio']:>5.2f}"
            f"  {r['pick']:>6} {r['pick_rank']:>2} of {r['offspring']:<2} {r['pick_metric']:>10.4f}"
            f"  {r['siblings_min']:>9.4f} / {r['siblings_median']:.4f} / {r['siblings_max']:.4f}"
        )
    sums = {
        k: sum(r[k] for r in same_parent)
        for k in ("epochs_halving", "epochs_full", "train_s_halving", "train_s_full", "wall_s_halving", "wall_s_full")
    }
    print(
        f"   in all: {sums['epochs_halving'] / sums['epochs_full']:.2f}x the epochs, "
        f"{sums['train_s_halving'] / sums['train_s_full']:.2f}x the training seconds, "
        f"{sums['wall_s_halving'] / sums['wall_s_full']:.2f}x the wall time; the pick was the best sibling in "
        f"{sum(r['pick_rank'] == 1 for r in same_parent)} of {len(same_parent)} generations"
    )
    print("2. end to end, each run following its own lineage: the followed lineage's metric")
    for r in lineage:
        print(
            f"{r['generation']:>3} full {r['lineage_full']:.4f} ({r['synapses_full']:,} synapses, "
            f"{r['epochs_full']} epochs)   halving {r['lineage_halving']:.4f} ({r['synapses_halving']:,} synapses, "
            f"{r['epochs_halving']} epochs)"
        )


def main() -> None:
    parser = arguments(__name__, __doc__, quick="configs/tiny.yaml only: a smoke run")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--halving", default=HALVING_SECTION, help=f"the selection.halving section ({HALVING_SECTION})")
    args = parser.parse_args()
    halving = f"selection.halving={args.halving}"
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        chosen = QUICK if args.quick else {name: CONFIGS[name] for name in args.configs}
        for name, (path, overrides) in chosen.items():
            full_dir = runs / f"{name}-full"
            full, metric, direction, wall_full = run(path, overrides, full_dir)
            halved, _, _, wall_halved = run(path, [*overrides, halving], runs / f"{name}-halving")
            generations = sorted(int(g) for g in full["generation"].unique() if g > 1)
            same_parent = []
            for g in generations:
                replay_overrides = [*overrides, halving, f"evolution.generations={g}"]
                replay, *_ = run(path, replay_overrides, runs / f"{name}-replay-{g}", keep=full_dir)
                same_parent.append(same_parent_row(g, full, replay, metric, direction, wall_full, wall_halved))
            lineage = lineage_rows(full, halved, metric)
            results[name] = {"metric": metric, "halving": args.halving, "same_parent": same_parent, "lineage": lineage}
            report(name, metric, args.halving, same_parent, lineage)
    write_json(args.json, results, __name__)


if __name__ == "__main__":
    main()
