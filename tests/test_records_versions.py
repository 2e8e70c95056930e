"""Runs recorded by an older evopop and resumed by a newer one hold files of two schema versions:
every reader sees the columns of both (the old rows null in the new columns), never only the first
file's."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from evopop.records.run import RunRecords


def test_population_reads_the_columns_of_every_schema_version(tmp_path):
    old = tmp_path / "population" / "generation=1"
    new = tmp_path / "population" / "generation=2"
    old.mkdir(parents=True)
    new.mkdir(parents=True)
    # schema 2 (before compaction) for the ancestor, schema 3 for its offspring
    pq.write_table(pa.table({"individual_id": ["g1-0"], "kind": ["ancestor"]}), old / "part-g1-0.parquet")
    pq.write_table(
        pa.table({"individual_id": ["g2-0"], "kind": ["offspring"], "compact_macs": pa.array([5], pa.int64())}),
        new / "part-g2-0.parquet",
    )
    population = RunRecords(str(tmp_path)).population()
    assert list(population["individual_id"]) == ["g1-0", "g2-0"]
    assert population["compact_macs"].isna().tolist() == [True, False]
    assert int(population["compact_macs"].iloc[1]) == 5
