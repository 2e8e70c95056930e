"""The saliency pipeline end to end on a local Ray: procedural data, the 1/8-width network, F-beta/MAE
columns for every evaluation set, and the paper-style table."""

from __future__ import annotations

from pathlib import Path

import pytest

from evopop.analysis.tables import lineage_table
from evopop.api import evolve
from evopop.config import load_config
from evopop.records.run import RunRecords

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "saliency_quickstart.yaml"


def test_saliency_quickstart_in_miniature(ray_cluster, tmp_path):
    config = load_config(
        CONFIG,
        [
            "task.args.train_n=96",
            "task.args.val_n=32",
            "task.args.test_n=32",
            "task.args.size=32",
            "train.epochs=1",
            "ancestor.epochs=1",
            "evolution.generations=2",
            "evolution.offspring=2",
            "diversity.functional_batch=8",
        ],
    )
    run_dir = str(tmp_path / "run")
    RunRecords(run_dir).write_config(config.to_yaml())
    population = evolve(config, run_dir)

    assert len(population) == 3 and (population["status"] == "ok").all()
    for split in ("val", "test"):
        for metric in ("mae", "fbeta_adaptive", "fbeta_max", "fbeta_mean", "loss"):
            column = population[f"{split}_{metric}"]
            assert column.notna().all()
            if metric != "loss":
                assert ((column >= 0) & (column <= 1)).all()
    offspring = population[population["generation"] == 2]
    assert (offspring["synapses"] < population.loc[0, "synapses"]).all()
    # budget C = 0.5: each offspring keeps about half its parent's synapses
    assert ((offspring["synapses"] / offspring["parent_synapses"]).between(0.45, 0.55)).all()

    table = lineage_table(population, ["val_fbeta_max", "val_mae", "test_fbeta_max", "test_mae"])
    assert list(table["generation"]) == [1, 2]
    assert list(table.columns[:4]) == ["generation", "individual_id", "synapses", "efficiency"]
    assert (Path(run_dir) / "diversity" / "generation=2" / "part-0.parquet").exists()
