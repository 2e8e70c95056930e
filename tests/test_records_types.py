"""Records keep their declared types in every reader (issue 13, part 3): integer columns with nulls
stay integers (the root's seed is null), so every offspring re-synthesizes from the whole-run table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from evopop.api import evolve
from evopop.config import load_config
from evopop.engine.policy.specs import schedule_of
from evopop.records.run import RunRecords
from evopop.synthesis import Genome, synthesize, trace_architecture
from evopop.tasks.registry import build_task

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    config = load_config(TINY, ["resources.executor=local", "evolution.offspring=2", "compaction.enabled=false"])
    run_dir = str(tmp_path_factory.mktemp("types") / "run")
    RunRecords(run_dir).write_config(config.to_yaml())
    evolve(config, run_dir)
    return config, run_dir


def whole_run_tables(run_dir: str) -> dict[str, pd.DataFrame]:
    return {
        "RunRecords.population": RunRecords(run_dir).population(),
        "pandas.read_parquet": pd.read_parquet(Path(run_dir) / "population"),
    }


def test_integer_columns_with_nulls_stay_integers(tiny_run):
    _, run_dir = tiny_run
    for reader, table in whole_run_tables(run_dir).items():
        for column in ("seed", "train_seed", "synapses", "offspring_index", "attempts"):
            assert pd.api.types.is_integer_dtype(table[column]), (reader, column, table[column].dtype)
        root = table[table["individual_id"] == "g1-0"].iloc[0]
        assert pd.isna(root["seed"]), reader
        assert all(isinstance(v, int) for v in table["seed"].dropna().tolist()), reader


def test_every_offspring_resynthesizes_from_the_whole_run_table(tiny_run):
    config, run_dir = tiny_run
    records = RunRecords(run_dir)
    task = build_task(config.task.name, config.task.args)
    arch = trace_architecture(task.build_model(), task.example_input())
    schedule = schedule_of(config.evolution)
    for reader, table in whole_run_tables(run_dir).items():
        offspring = table[table["kind"] == "offspring"]
        assert len(offspring) == 4, reader
        for row in offspring.itertuples():
            parent = records.read_checkpoint(row.parent_id)
            weights = {layer.name: parent.weights[f"{layer.name}.weight"] for layer in arch.layers}
            generation = int(row.generation)
            child = synthesize(
                arch,
                weights,
                Genome.from_state_dict(parent.masks),
                schedule.at(generation),
                row.seed,
                config.evolution.normalizer,
            )
            assert child.digest() == row.mask_digest, (reader, row.individual_id, row.seed)
