#!/usr/bin/env python
"""Beyond the first paper: mating (1, 2 and 3 parents) and successive halving, on the quickstart.

Every arm is configs/quickstart.yaml (shapes, 4 generations, a budget of 50% a generation, offspring
retrained 4 epochs) from the same run seed, with a 1,000-image held-out test set, so that the
ancestor (generation 1) is the same network in every arm:

- parents=1, parents=2, parents=3:  the 3 best of each generation are selected (topk, k = 3) and each
  heads a family of 4 offspring, synthesized from it alone or with the next 1 or 2 in rank order
  (`evopop.synthesis.mating`): the same number of generations and offspring;
- full:     4 offspring trained 4 epochs each, the best kept (the quickstart): 16 epochs a generation;
- halving:  8 offspring under successive halving (eta 2, rungs of 1, 2 and 4 epochs: 8 + 4 + 2 x 2 =
            16 epochs a generation): the same total budget as `full`, spent on more offspring.

Selection reads `val`; `test` is never seen by training or selection.

    python examples/mating_halving_study.py                    # about 17 minutes on 2 cores
    python examples/mating_halving_study.py --arms full halving --out runs/mh

Each run is kept in OUT/<arm> and resumed when the script runs again. The table goes to OUT/study.md
and OUT/study.csv.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from evopop.analysis.tables import followed_lineage
from evopop.api import evolve
from evopop.config import load_config
from evopop.records.run import RunRecords

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "quickstart.yaml"
COMMON = [
    "task.args={train_size: 3000, val_size: 1000, test_size: 1000, image_size: 32, widths: [16, 32, 64], hidden: 128}",
    "diversity.enabled=false",
    "compaction.enabled=false",
]
TOPK = ["selection.rule=topk", "selection.k=3"]
ARMS = {
    "parents=1": [*TOPK, "evolution.parents=1"],
    "parents=2": [*TOPK, "evolution.parents=2"],
    "parents=3": [*TOPK, "evolution.parents=3"],
    "full": [],
    "halving": ["evolution.offspring=8", "selection.halving={eta: 2, min_epochs: 1}"],
}
SMOKE = [
    "task.args={train_size: 128, val_size: 64, test_size: 64, image_size: 16, widths: [4, 8], hidden: 16}",
    "train.epochs=1",
    "ancestor.epochs=1",
    "evolution.epochs=2",
    "evolution.generations=3",
]


def run(arm: str, out: Path, smoke: bool) -> pd.DataFrame:
    config = load_config(BASE, [*COMMON, *ARMS[arm], *(SMOKE if smoke else [])])
    print(f"== {arm}", flush=True)
    return evolve(config, str(out / arm), stream=open("/dev/null", "w"))  # noqa: SIM115


def rows(arm: str, population: pd.DataFrame) -> list[dict]:
    """Per generation: the followed lineage's synapses and accuracies, and the epochs the generation's
    offspring trained in all (its training compute)."""
    offspring = population[population["kind"] != "ancestor"]
    epochs = offspring.groupby("generation")["epochs"].sum()
    out = []
    for _, r in followed_lineage(population.sort_values(["generation", "rank"], na_position="last")).iterrows():
        generation = int(r["generation"])
        out.append(
            {
                "arm": arm,
                "generation": generation,
                "individual": r["individual_id"],
                "parents": len(r["parent_ids"]) if r["parent_ids"] is not None else 0,
                "synapses": int(r["synapses"]),
                "efficiency": float(r["efficiency"]),
                "val_accuracy": float(r["val_accuracy"]),
                "test_accuracy": float(r["test_accuracy"]),
                "epochs": int(epochs.get(generation, r["epochs"] or 0)),
                "offspring": int((offspring["generation"] == generation).sum()),
            }
        )
    return out


def markdown(table: pd.DataFrame) -> str:
    lines = []
    for arm, group in table.groupby("arm", sort=False):
        lines += [
            f"**{arm}** (followed lineage; epochs: all of the generation's offspring)",
            "",
            "| gen | synapses | efficiency | val / test accuracy | offspring | epochs |",
            "|---|---|---|---|---|---|",
        ]
        for _, r in group.iterrows():
            lines.append(
                f"| {r['generation']} | {r['synapses']:,} | {r['efficiency']:.1f}x | "
                f"{r['val_accuracy']:.3f} / {r['test_accuracy']:.3f} | {r['offspring']} | {r['epochs']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--out", default="runs/mating_halving_study")
    parser.add_argument("--smoke", action="store_true", help="seconds per run (the test that keeps this working)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    table = []
    for arm in args.arms:
        population = run(arm, out, args.smoke)
        table += rows(arm, RunRecords(str(out / arm)).population() if population is None else population)
    frame = pd.DataFrame(table)
    frame.to_csv(out / "study.csv", index=False)
    (out / "study.md").write_text(markdown(frame))
    print(markdown(frame))
    return 0


if __name__ == "__main__":
    sys.exit(main())
