"""The records of a run as typed values, and their Parquet schemas, derived from those values once.

Each record is a frozen dataclass whose fields carry their Arrow type (``arrow(...)``), so the
Python value and the on-disk schema cannot drift apart. ``IndividualRecord.metrics`` is the one
field of variable shape: a run's metric columns (``<eval set>_<metric>``) are expanded in its place.

``generation`` is the hive partition key (``population/generation=G/``), not a column inside the
files, so that pandas, DuckDB and Polars read each dataset as one table without a type clash.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..synthesis.baselines import KINDS as BASELINE_KINDS

SCHEMA_VERSION = "6"  # 6: train_loss
PARTITIONING = pa.schema([("generation", pa.int32())])

ANCESTOR, OFFSPRING = "ancestor", "offspring"
EVOLVED_KINDS = (ANCESTOR, OFFSPRING)  # individuals of the method; the others are baselines
OK, FAILED = "ok", "failed"
STOPPED = "stopped"  # an offspring successive halving stopped early (selection.halving): measured, never selected
MEASURED = (OK, STOPPED)  # trained and measured: a genome, weights and metrics to study


def arrow(type_: pa.DataType, default: Any = None, **kwargs) -> Any:
    """A dataclass field that declares its Arrow type."""
    return field(default=default, metadata={"arrow": type_}, **kwargs)


def arrow_fields(cls) -> list[tuple[str, pa.DataType]]:
    return [(f.name, f.metadata["arrow"]) for f in dataclasses.fields(cls) if "arrow" in f.metadata]


def is_baseline(kind: str | None) -> bool:
    return kind in BASELINE_KINDS


def plain_value(value):
    """A value read back (pyarrow, pandas or NumPy) as a plain Python one: nulls None, lists tuples."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(plain_value(v) for v in value)
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


# -- one individual ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class IndividualRecord:
    """One row of RUN_DIR/population: everything known about one individual, written once."""

    run_id: str = arrow(pa.string())
    individual_id: str = arrow(pa.string())
    kind: str = arrow(pa.string(), OFFSPRING)  # one of EVOLVED_KINDS or BASELINE_KINDS
    parent_id: str | None = arrow(pa.string())
    parent_ids: tuple[str, ...] = arrow(pa.list_(pa.string()), ())  # every parent (evolution.parents), parent_id first
    lineage: tuple[str, ...] = arrow(pa.list_(pa.string()), ())  # ids from the root ancestor to this one
    offspring_index: int | None = arrow(pa.int32())
    seed: int | None = arrow(pa.int64())  # synthesis seed (null for the root ancestor)
    train_seed: int | None = arrow(pa.int64())
    env_mode: str | None = arrow(pa.string())
    env_factor: float | None = arrow(pa.float64())  # C of the environment that synthesized it
    encoding: str | None = arrow(pa.string())  # "synapse" | "cluster" (null for the root ancestor)
    cluster_factor: float | None = arrow(pa.float64())  # C of the cluster environment (encoding "cluster")
    synapses: int | None = arrow(pa.int64())
    parent_synapses: int | None = arrow(pa.int64())
    ancestor_synapses: int | None = arrow(pa.int64())  # synapses of the generation-1 ancestor
    efficiency: float | None = arrow(pa.float64())  # ancestor_synapses / synapses
    neurons: int | None = arrow(pa.int64())
    params: int | None = arrow(pa.int64())
    macs: int | None = arrow(pa.int64())
    dense_macs: int | None = arrow(pa.int64())
    # the same, counting only what can influence the output (forward and backward neuron death)
    effective_synapses: int | None = arrow(pa.int64())
    ancestor_effective_synapses: int | None = arrow(pa.int64())
    effective_efficiency: float | None = arrow(pa.float64())  # ancestor_effective_synapses / effective_synapses
    effective_neurons: int | None = arrow(pa.int64())
    effective_macs: int | None = arrow(pa.int64())
    # the compacted network (dead neurons physically removed, `evopop.compaction`), measured in the trainer
    compact_params: int | None = arrow(pa.int64())
    compact_macs: int | None = arrow(pa.int64())
    compact_neurons: int | None = arrow(pa.int64())
    latency_cpu_b1_ms: float | None = arrow(pa.float64())  # fastest of compaction.repeats forward passes, batch 1
    latency_cpu_b32_ms: float | None = arrow(pa.float64())
    latency_gpu_ms: float | None = arrow(pa.float64())  # at compaction.gpu_batch, when the trainer has a GPU
    layer_fractions: tuple[float, ...] | None = arrow(pa.list_(pa.float32()))  # per layer, see metadata
    epochs: int | None = arrow(pa.int32())  # epochs trained (null for a loaded ancestor)
    train_loss: tuple[float, ...] | None = arrow(pa.list_(pa.float64()))  # its mean training loss per epoch
    rung: int | None = arrow(pa.int32())  # under selection.halving: the rung it stopped at, or reached last
    metrics: dict[str, float] = field(default_factory=dict)  # one float64 column per metric, here
    train_seconds: float | None = arrow(pa.float64())
    samples_per_second: float | None = arrow(pa.float64())
    node_id: str | None = arrow(pa.string())
    worker_id: str | None = arrow(pa.string())
    attempts: int = arrow(pa.int32(), 1)
    status: str = arrow(pa.string(), OK)  # OK | FAILED | STOPPED
    error: str | None = arrow(pa.string())
    # whose fault a failure was: "individual" (final) or "infrastructure" (retried, also by `evopop resume`)
    failure: str | None = arrow(pa.string())
    checkpoint: str | None = arrow(pa.string())  # path relative to the run directory
    mask_digest: str | None = arrow(pa.string())  # blake2b of the masks: equal digests, identical genomes
    selected: bool | None = arrow(pa.bool_())  # null in the files; the loaders fill it from selection/
    finished_at: datetime | None = arrow(pa.timestamp("ms", tz="UTC"))

    @property
    def ok(self) -> bool:
        return self.status == OK

    def metric(self, name: str) -> float | None:
        return self.metrics.get(name)

    def row(self) -> dict[str, Any]:
        """The Parquet row: every field, the metrics expanded into their columns."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "metrics"}
        out.update(self.metrics)
        return out

    @classmethod
    def from_row(cls, row: dict[str, Any], metric_columns: list[str]) -> IndividualRecord:
        """The record of a row read back (pandas or pyarrow): nulls become None, lists tuples."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "metrics" and f.name in row]
        metrics = {c: plain_value(row[c]) for c in metric_columns if c in row}
        return cls(
            **{name: plain_value(row[name]) for name in names},
            metrics={c: float(v) for c, v in metrics.items() if v is not None},
        )


_NULLABLE = {pa.int8(): "Int8", pa.int16(): "Int16", pa.int32(): "Int32", pa.int64(): "Int64"}


def pandas_metadata(fields) -> str:
    """The ``pandas`` schema metadata that makes ``pandas.read_parquet`` read the integer columns as
    pandas' nullable integers: without it an integer column with a null (the root's ``seed``) reads
    back as float64, and a 64-bit seed loses its last digits."""
    columns = [
        {"name": name, "field_name": name, "pandas_type": str(type_), "numpy_type": _NULLABLE[type_], "metadata": None}
        for name, type_ in fields
        if type_ in _NULLABLE
    ]
    meta = {"index_columns": [], "column_indexes": [], "columns": columns, "attributes": {}}
    return json.dumps({**meta, "creator": {"library": "evopop"}, "pandas_version": pd.__version__})


def population_schema(
    metric_columns: list[str], layer_names: list[str], selection: tuple[str, str] | None = None
) -> pa.Schema:
    """The population schema of a run: `IndividualRecord`'s fields, the metric columns in place of
    ``metrics``; the metric and layer names (and the selection metric) in the file metadata."""
    fields = []
    for f in dataclasses.fields(IndividualRecord):
        if f.name == "metrics":
            fields += [(name, pa.float64()) for name in metric_columns]
        else:
            fields.append((f.name, f.metadata["arrow"]))
    metadata = {
        "evopop.schema_version": SCHEMA_VERSION,
        "evopop.layers": json.dumps(list(layer_names)),
        "evopop.metrics": json.dumps(list(metric_columns)),
        "pandas": pandas_metadata(fields),
    }
    if selection is not None:
        metadata["evopop.selection"] = json.dumps({"metric": selection[0], "direction": selection[1]})
    return pa.schema(fields, metadata=metadata)


POPULATION_FIELDS = arrow_fields(IndividualRecord)  # without the metric columns, which vary by run


# -- per layer, selection ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerRecord:
    """One row of RUN_DIR/layers: the living counts of one synaptic layer of one individual."""

    individual_id: str = arrow(pa.string())
    layer: str = arrow(pa.string())
    kind: str = arrow(pa.string())
    synapses: int = arrow(pa.int64())
    dense_synapses: int = arrow(pa.int64())
    neurons: int = arrow(pa.int64())
    dense_neurons: int = arrow(pa.int64())
    macs: int = arrow(pa.int64())
    living_fraction: float = arrow(pa.float64())


@dataclass(frozen=True)
class PromotionRecord:
    """One row of RUN_DIR/promotion: whether an offspring continued past a rung of successive halving."""

    individual_id: str = arrow(pa.string())
    rung: int = arrow(pa.int32())
    promoted: bool = arrow(pa.bool_())
    rank: int | None = arrow(pa.int32())  # 0 = best of the rung's successful offspring


@dataclass(frozen=True)
class SelectionRecord:
    """One row of RUN_DIR/selection: whether an individual became an ancestor of the next generation."""

    individual_id: str = arrow(pa.string())
    selected: bool = arrow(pa.bool_())
    rank: int | None = arrow(pa.int32())  # 0 = best among the generation's successful individuals


# -- diversity ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiversityPair:
    """One row of RUN_DIR/diversity: two individuals of a generation compared within one scope."""

    a: str = arrow(pa.string())  # individual ids, a < b in natural order
    b: str = arrow(pa.string())
    parent_a: str | None = arrow(pa.string())  # a parent id; several parents: their ids joined by "+"
    parent_b: str | None = arrow(pa.string())
    siblings: bool = arrow(pa.bool_())  # same parent (the same set of parents)
    scope: str = arrow(pa.string())  # "network" or a synaptic layer's name
    jaccard: float = arrow(pa.float64())  # Jaccard distance of living synapses: 1 - |A n B| / |A u B|
    hamming: int = arrow(pa.int64())  # synapses alive in exactly one of the two
    hamming_fraction: float = arrow(pa.float64())  # hamming / dense synapses of the scope
    shared_synapses: int = arrow(pa.int64())  # |A n B|
    union_synapses: int = arrow(pa.int64())  # |A u B|
    dense_synapses: int = arrow(pa.int64())
    neuron_jaccard: float = arrow(pa.float64())  # Jaccard distance of living-neuron sets
    neuron_hamming: int = arrow(pa.int64())  # neurons alive in exactly one of the two
    functional_disagreement: float | None = arrow(pa.float64())  # on the held-out batch (network only)


@dataclass(frozen=True)
class DiversitySummary:
    """One row of RUN_DIR/diversity_summary: the spread of one quantity over a group of individuals."""

    group: str = arrow(pa.string())  # "generation" (every successful individual) or "siblings"
    parent_id: str | None = arrow(pa.string())  # the parent of a "siblings" group; null for "generation"
    scope: str = arrow(pa.string())  # "network" or a layer name
    quantity: str = arrow(pa.string())  # a pair distance, "living_fraction", "neuron_fraction", ...
    count: int = arrow(pa.int64())  # pairs (distances) or individuals (everything else)
    mean: float = arrow(pa.float64())
    std: float = arrow(pa.float64())  # population standard deviation (ddof=0)
    min: float = arrow(pa.float64())
    max: float = arrow(pa.float64())
    range: float = arrow(pa.float64())  # max - min


LAYER_FIELDS = arrow_fields(LayerRecord)
SELECTION_FIELDS = arrow_fields(SelectionRecord)
PROMOTION_FIELDS = arrow_fields(PromotionRecord)
DIVERSITY_PAIR_FIELDS = arrow_fields(DiversityPair)
DIVERSITY_SUMMARY_FIELDS = arrow_fields(DiversitySummary)


def _versioned(fields, **metadata: str) -> pa.Schema:
    versioned = {"evopop.schema_version": SCHEMA_VERSION, "pandas": pandas_metadata(fields), **metadata}
    return pa.schema(fields, metadata=versioned)


def layer_schema() -> pa.Schema:
    return _versioned(LAYER_FIELDS)


def selection_schema() -> pa.Schema:
    return _versioned(SELECTION_FIELDS)


def promotion_schema() -> pa.Schema:
    return _versioned(PROMOTION_FIELDS)


def diversity_pairs_schema(note: str = "") -> pa.Schema:
    """``note`` says what the functional disagreement was measured on (``evopop.diversity.functional``)."""
    return _versioned(DIVERSITY_PAIR_FIELDS, **{"evopop.diversity.functional": note})


def diversity_summary_schema() -> pa.Schema:
    return _versioned(DIVERSITY_SUMMARY_FIELDS)
