"""Small helpers the tests share: run directories edited as a crash or a partial run would leave them."""

from __future__ import annotations

import io

import pyarrow.compute as pc
import pyarrow.parquet as pq

from evopop.records.run import RunRecords


def forget_record(run_dir: str, generation: int, individual_id: str) -> None:
    """The run as if ``individual_id``'s population record had never been written: its part deleted, or
    its row taken out of the generation's folded file (`evopop.records.consolidation`)."""
    records = RunRecords(str(run_dir))
    folder = f"population/generation={generation}"
    part = f"{folder}/part-{individual_id}.parquet"
    if records.storage.exists(part):
        records.storage.delete(part)
        return
    folded = f"{folder}/part-all.parquet"
    table = pq.read_table(io.BytesIO(records.storage.read_bytes(folded)))
    assert individual_id in table["individual_id"].to_pylist(), f"{individual_id} is not recorded"
    kept = table.filter(pc.not_equal(table["individual_id"], individual_id))
    sink = io.BytesIO()
    pq.write_table(kept, sink)
    records.storage.write_bytes(folded, sink.getvalue())
