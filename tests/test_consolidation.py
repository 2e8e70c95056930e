"""A decided generation's per-individual parts fold into one file per dataset: a reader never sees a
row twice or not at all, before, during or after the fold, or after a crash in the middle of it."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pytest

from evopop.records.consolidation import CONSOLIDATED, consolidate
from evopop.records.run import RunRecords
from evopop.records.schema import IndividualRecord, LayerRecord, population_schema

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
METRICS = ["val_accuracy"]
SCHEMA = population_schema(METRICS, ["a"], ("val_accuracy", "max"))


def record(i: int, accuracy: float = 0.5) -> IndividualRecord:
    return IndividualRecord(
        run_id="r", individual_id=f"g2-{i}", parent_id="g1-0", synapses=100 - i, metrics={"val_accuracy": accuracy}
    )


def layer(i: int) -> list[LayerRecord]:
    return [LayerRecord(f"g2-{i}", "a", "linear", 10, 20, 2, 4, 10, 0.5)]


def written(tmp_path, n: int) -> RunRecords:
    records = RunRecords(str(tmp_path / "run"))
    for i in range(n):
        records.write_individual(2, record(i), layer(i), SCHEMA)
    return records


def files(records: RunRecords, dataset: str) -> list[str]:
    return records.storage.list(f"{dataset}/generation=2", ".parquet")


def test_a_decided_generation_folds_into_one_file_per_dataset_and_reads_the_same(tmp_path):
    records = written(tmp_path, 40)
    before, layers_before = records.population(), records.layers()
    assert len(files(records, "population")) == 40
    assert records.consolidate(2) == 80  # 40 population parts and 40 layer parts
    assert files(records, "population") == [CONSOLIDATED] and files(records, "layers") == [CONSOLIDATED]
    fresh = RunRecords(records.uri)
    pa_equal = before.reset_index(drop=True).equals(fresh.population().reset_index(drop=True))
    assert pa_equal and layers_before.equals(fresh.layers())
    assert fresh.recorded_ids(2) == {f"g2-{i}" for i in range(40)}
    assert [r.individual_id for r in fresh.individuals(2)] == [f"g2-{i}" for i in range(40)]
    assert fresh.metadata().metric_columns == METRICS, "the folded file keeps what the parts said of themselves"
    assert records.consolidate(2) == 0, "idempotent"


def test_a_part_written_after_the_fold_is_read_beside_it_and_folded_next_time(tmp_path):
    records = written(tmp_path, 3)
    records.consolidate(2)
    records.write_individual(2, record(7), layer(7), SCHEMA)  # a baseline recorded later, say
    assert RunRecords(records.uri).recorded_ids(2) == {"g2-0", "g2-1", "g2-2", "g2-7"}
    assert len(RunRecords(records.uri).population(2)) == 4
    assert records.consolidate(2) == 2
    assert len(RunRecords(records.uri).population(2)) == 4


def test_a_part_written_again_after_the_fold_replaces_its_folded_row_for_every_reader(tmp_path):
    """A resumed run runs a failed baseline of a folded generation again: its new part is read, once,
    over the folded row, before the next fold and after it."""
    records = written(tmp_path, 3)
    records.consolidate(2)
    records.write_individual(2, record(1, accuracy=0.9), layer(1), SCHEMA)
    for reader in (RunRecords(records.uri), records):
        population = reader.population(2)
        assert sorted(population["individual_id"]) == ["g2-0", "g2-1", "g2-2"]
        assert population.set_index("individual_id").loc["g2-1", "val_accuracy"] == 0.9
    assert {r.individual_id: r.metric("val_accuracy") for r in RunRecords(records.uri).individuals(2)}["g2-1"] == 0.9
    assert records.consolidate(2) == 2 and files(records, "population") == [CONSOLIDATED]
    assert RunRecords(records.uri).population(2).set_index("individual_id").loc["g2-1", "val_accuracy"] == 0.9


def test_a_crash_between_the_fold_and_the_deletes_leaves_no_row_twice(tmp_path):
    records = written(tmp_path, 5)
    storage = records.storage

    def crash(rels) -> None:  # two deleted, then the driver dies
        type(storage).delete_many(storage, list(rels)[:2])
        raise OSError("the driver died here")

    storage.delete_many = crash
    with pytest.raises(OSError, match="died"):
        consolidate(storage, "population/generation=2", ("individual_id",))
    del storage.delete_many
    fresh = RunRecords(records.uri)
    assert len(files(fresh, "population")) == 1 + 3, "the folded file and three parts left"
    population = fresh.population(2)
    assert sorted(population["individual_id"]) == [f"g2-{i}" for i in range(5)], "each row once"
    assert len(fresh.individuals(2)) == 5
    assert fresh.consolidate(2) >= 3 and files(fresh, "population") == [CONSOLIDATED]


def test_readers_during_a_fold_never_see_a_row_twice_or_miss_one(tmp_path):
    records = written(tmp_path, 60)
    seen, stop = [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(sorted(RunRecords(records.uri).population(2)["individual_id"]))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        records.consolidate(2)
    finally:
        stop.set()
        reader.join()
    seen.append(sorted(RunRecords(records.uri).population(2)["individual_id"]))
    expected = sorted(f"g2-{i}" for i in range(60))
    assert seen and all(ids == expected for ids in seen), [len(ids) for ids in seen if ids != expected]


def test_columns_of_an_older_schema_version_are_kept_when_folded(tmp_path):
    records = written(tmp_path, 2)
    old = pa.table({"individual_id": ["g2-9"], "kind": ["offspring"]})  # an older evopop's part
    records.storage.write_bytes("population/generation=2/part-g2-9.parquet", _parquet(old))
    records.consolidate(2)
    population = RunRecords(records.uri).population(2)
    assert sorted(population["individual_id"]) == ["g2-0", "g2-1", "g2-9"]
    assert population["synapses"].isna().tolist() == [False, False, True]


def _parquet(table: pa.Table) -> bytes:
    from evopop.records.consolidation import parquet_bytes

    return parquet_bytes(table)


def test_lineage_retention_keeps_the_selected_and_the_best_and_export_says_why_others_are_gone(tmp_path):
    from evopop.analysis.export import ExportError, export_individual
    from evopop.api import evolve
    from evopop.config import load_config

    config = load_config(
        CONFIGS / "tiny.yaml",
        ["resources.executor=local", "storage.checkpoints=lineage", "storage.keep_top=2", "evolution.offspring=4"],
    )
    run_dir = str(tmp_path / "run")
    population = evolve(config, run_dir)
    kept = {p.stem for p in (tmp_path / "run" / "checkpoints").glob("*.pt")}
    for generation, rows in population.groupby("generation"):
        best = set(rows.sort_values("rank").dropna(subset=["rank"])["individual_id"][:2])
        assert best <= kept, generation
        assert set(rows[rows["selected"].astype(bool)]["individual_id"]) <= kept
    dropped = sorted(set(population["individual_id"]) - kept)
    assert len(dropped) == 2 * 2, "generations 2 and 3: 4 offspring, the best 2 kept"
    with pytest.raises(ExportError, match="storage.checkpoints: lineage kept the selected and the best 2"):
        export_individual(run_dir, dropped[0], str(tmp_path / "x.pt2"))


def test_the_driver_reads_each_generation_once_and_keeps_what_it_writes(tmp_path, monkeypatch):
    """Selection, adaptation and baselines decide from the records the driver wrote, kept in memory:
    a generation's population files are listed once (before it is developed), whatever its size; and
    what the driver holds equals what a fresh reader reads from the files."""
    from evopop.api import evolution
    from evopop.config import load_config
    from evopop.records import run as run_module

    reads: list[str] = []
    listing = run_module.files_to_read

    def counted(storage, folder, keys):
        reads.append(folder)
        return listing(storage, folder, keys)

    monkeypatch.setattr(run_module, "files_to_read", counted)
    overrides = [
        "resources.executor=local",
        "evolution.offspring=4",
        "baselines.enabled=true",
        "baselines.kinds=[magnitude]",
        "diversity.enabled=false",  # the diversity study reads each generation once more, aside
    ]
    run = evolution(load_config(CONFIGS / "tiny.yaml", overrides), str(tmp_path / "run"))
    run.run()
    per_generation = [folder for folder in reads if folder.startswith("population/generation=")]
    assert sorted(per_generation) == ["population/generation=1", "population/generation=2", "population/generation=3"]
    for generation in (1, 2, 3):
        assert run.records.individuals(generation) == RunRecords(run.records.uri).individuals(generation)


def test_layers_a_trainer_wrote_are_folded_from_the_drivers_memory_not_read_back(tmp_path, monkeypatch):
    """The trainer writes an individual's per-layer rows (`write_layers`); the driver only notes them with
    the population row, and folds them without reading a part back."""
    run = str(tmp_path / "run")
    trainer, driver = RunRecords(run), RunRecords(run)
    for i in range(3):
        trainer.write_layers(2, f"g2-{i}", layer(i))
        driver.note_layers(2, f"g2-{i}", layer(i))
        driver.write_individual(2, record(i), [], SCHEMA)
    before = RunRecords(run).layers()
    assert sorted(before["individual_id"]) == ["g2-0", "g2-1", "g2-2"]
    reads = []
    real = type(driver.storage).read_bytes
    monkeypatch.setattr(driver.storage, "read_bytes", lambda rel: reads.append(rel) or real(driver.storage, rel))
    assert driver.consolidate(2) == 6
    assert not [r for r in reads if "part-g2" in r], reads
    assert RunRecords(run).layers().equals(before) and files(driver, "layers") == [CONSOLIDATED]
