"""The Parquet schemas of a run, declared once in code (no inferred types drifting between files).

``generation`` is the hive partition key (``population/generation=G/``), not a column inside the
files, so that pandas, DuckDB and Polars read the dataset as one table without a type clash.
"""
from __future__ import annotations

import json

import pyarrow as pa

SCHEMA_VERSION = "1"

POPULATION_FIELDS = [
    ("run_id", pa.string()),
    ("individual_id", pa.string()),
    ("kind", pa.string()),  # "ancestor" | "offspring" | "magnitude" / "random" (baselines at matched sparsity)
    ("parent_id", pa.string()),
    ("lineage", pa.list_(pa.string())),  # ids from the root ancestor to this individual
    ("offspring_index", pa.int32()),
    ("seed", pa.int64()),  # synthesis seed (null for the root ancestor)
    ("train_seed", pa.int64()),
    ("env_mode", pa.string()),
    ("env_factor", pa.float64()),  # C of the environment that synthesized this individual
    ("synapses", pa.int64()),
    ("parent_synapses", pa.int64()),
    ("ancestor_synapses", pa.int64()),  # synapses of the generation-1 ancestor
    ("efficiency", pa.float64()),  # ancestor_synapses / synapses
    ("neurons", pa.int64()),
    ("params", pa.int64()),
    ("macs", pa.int64()),
    ("dense_macs", pa.int64()),
    ("layer_fractions", pa.list_(pa.float32())),  # living fraction per layer, see metadata
    ("train_seconds", pa.float64()),
    ("samples_per_second", pa.float64()),
    ("node_id", pa.string()),
    ("worker_id", pa.string()),
    ("attempts", pa.int32()),
    ("status", pa.string()),  # "ok" | "failed"
    ("error", pa.string()),
    ("checkpoint", pa.string()),  # path relative to the run directory
    ("mask_digest", pa.string()),  # blake2b of the masks: equal digests, identical genomes
    ("selected", pa.bool_()),  # null here; filled from selection/ by the loaders
    ("finished_at", pa.timestamp("ms", tz="UTC")),
]

LAYER_FIELDS = [
    ("individual_id", pa.string()),
    ("layer", pa.string()),
    ("kind", pa.string()),
    ("synapses", pa.int64()),
    ("dense_synapses", pa.int64()),
    ("neurons", pa.int64()),
    ("dense_neurons", pa.int64()),
    ("macs", pa.int64()),
    ("living_fraction", pa.float64()),
]

SELECTION_FIELDS = [
    ("individual_id", pa.string()),
    ("selected", pa.bool_()),
    ("rank", pa.int32()),  # 0 = best among the generation's successful individuals
]

PARTITIONING = pa.schema([("generation", pa.int32())])


def population_schema(metric_columns: list[str], layer_names: list[str]) -> pa.Schema:
    metrics = [(name, pa.float64()) for name in metric_columns]
    fields = POPULATION_FIELDS[:19] + metrics + POPULATION_FIELDS[19:]
    metadata = {
        "evopop.schema_version": SCHEMA_VERSION,
        "evopop.layers": json.dumps(layer_names),
        "evopop.metrics": json.dumps(metric_columns),
    }
    return pa.schema(fields, metadata=metadata)


def layer_schema() -> pa.Schema:
    return pa.schema(LAYER_FIELDS, metadata={"evopop.schema_version": SCHEMA_VERSION})


def selection_schema() -> pa.Schema:
    return pa.schema(SELECTION_FIELDS, metadata={"evopop.schema_version": SCHEMA_VERSION})
