"""The run directory: resolved config, population records, diversity, checkpoints. Knows nothing of Ray.

    RUN_DIR/config.yaml
    RUN_DIR/network.json                                           how to rebuild the network: export needs no data
    RUN_DIR/population/generation=G/part-<individual_id>.parquet   one row per individual, ever
    RUN_DIR/layers/generation=G/part-<individual_id>.parquet       per-layer counts
    RUN_DIR/selection/generation=G/part-0.parquet                  which individuals were selected
    RUN_DIR/rungs/generation=G/part-<id>-r<rung>.parquet           successive halving: each rung's result
    RUN_DIR/{population,layers,rungs}/generation=G/part-all.parquet   the parts above, folded once G is decided
    RUN_DIR/promotion/generation=G/part-r<rung>.parquet            which offspring continued past a rung
    RUN_DIR/training/<individual_id>-r<rung>.pt                    training stopped at a rung, to continue
    RUN_DIR/diversity/generation=G/part-0.parquet                  pairwise diversity of the generation
    RUN_DIR/diversity_summary/generation=G/part-0.parquet          its per-generation summary
    RUN_DIR/checkpoints/<individual_id>.pt                         weights + masks
    RUN_DIR/genomes/<individual_id>.pt                             masks (bit-packed) + probe outputs
    RUN_DIR/stop.json                                              why the run ended early (evolution.stop)
    RUN_DIR/report/                                                `evopop report` (see `report_storage`)
    RUN_DIR/tensorboard/                                           TensorBoard event files (tracking.tensorboard)
    RUN_DIR/.lock                                                  held by the driving process

A record is written only after its checkpoint (and genome file) is durable, and a part is named after its individual,
so writing it twice (a retry after a crash) replaces it instead of doubling it. Once a generation is
decided, its parts are folded into one file per dataset (`evopop.records.consolidation`): a
generation then reads in one request, however many offspring it had. This module is the only one
that knows these paths.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import posixpath
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyarrow.fs import FileSelector, FileType

from .checkpoints import (
    Checkpoint,
    GenomeFile,
    NetworkCard,
    RungState,
)
from .consolidation import CONSOLIDATED, Written, consolidate, files_to_read, parquet_bytes, unique_rows
from .ids import check_individual_id, natural_key, natural_order
from .locks import DEFAULT_LEASE_S, LeaseKeeper, TokenFence, lock_for
from .schema import (
    DIVERSITY_PAIR_FIELDS,
    DIVERSITY_SUMMARY_FIELDS,
    LAYER_FIELDS,
    PARTITIONING,
    PROMOTION_FIELDS,
    SELECTION_FIELDS,
    IndividualRecord,
    LayerRecord,
    PromotionRecord,
    SelectionRecord,
    diversity_pairs_schema,
    diversity_summary_schema,
    is_baseline,
    layer_schema,
    plain_value,
    promotion_schema,
    selection_schema,
)
from .storage import Storage, is_uri, join

POPULATION, LAYERS, SELECTION = "population", "layers", "selection"
DIVERSITY, DIVERSITY_SUMMARY = "diversity", "diversity_summary"
GENOMES = "genomes"
RUNGS, PROMOTION, TRAINING = "rungs", "promotion", "training"
STOP = "stop.json"
NETWORK = "network.json"
REPORT = "report"
TENSORBOARD = "tensorboard"


@dataclass(frozen=True)
class RunMetadata:
    """What a run's population files say about themselves (their Parquet metadata)."""

    metric_columns: list[str] = field(default_factory=list)
    layer_names: list[str] = field(default_factory=list)
    metric: str | None = None  # the selection metric, as the engine resolved it
    direction: str | None = None


# the datasets written a part per individual, folded per generation once it is decided; their row keys
FOLDED = {POPULATION: ("individual_id",), LAYERS: ("individual_id", "layer"), RUNGS: ("individual_id", "rung")}


def _layer_table(layers: Sequence[LayerRecord]) -> pa.Table:
    return pa.Table.from_pylist([dataclasses.asdict(r) for r in layers], schema=layer_schema())


def _frame_table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    frame = frame.drop(columns=["generation"], errors="ignore")
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


class RunRecords:
    def __init__(self, uri: str, fence_token: str | None = None):
        """``fence_token``: the token of the driver this process works for (a trainer's): every write
        first checks that the run's lock still holds it (`TokenFence`)."""
        self.storage = Storage(uri)
        self.uri = str(uri)
        # the driver's reads of what it wrote itself: a generation's records are read once per decision
        self._individuals: dict[int, dict[str, IndividualRecord]] = {}  # generation -> id -> record
        # the parts this object wrote, as tables, until their generation is folded (never read back)
        self._written: dict[str, Written] = {}  # folder -> the rows of each part written there
        self._metadata: RunMetadata | None = None
        if fence_token is not None:
            self.storage.fence = TokenFence(Storage(uri), fence_token).check

    @property
    def run_id(self) -> str:
        """The run's id: the last part of its directory (of a URI's path, without its options)."""
        path = urlsplit(self.uri).path if is_uri(self.uri) else self.uri.replace(os.sep, "/")
        return posixpath.basename(path.rstrip("/"))

    @property
    def report_uri(self) -> str:
        """Where `evopop report` writes by default: RUN_DIR/report."""
        return join(self.uri, REPORT)

    def tensorboard_dir(self) -> str | None:
        """Where TensorBoard event files go by default: RUN_DIR/tensorboard; None for a run directory
        on an object store (TensorBoard's writer writes local files)."""
        return None if is_uri(self.uri) else os.path.join(self.uri, TENSORBOARD)

    def report_storage(self, out: str | None = None) -> Storage:
        """Atomic storage for a report's files: ``out``, or RUN_DIR/report."""
        return Storage(out if out is not None else self.report_uri)

    # -- config ----------------------------------------------------------------------------
    def write_config(self, text: str) -> None:
        self.storage.write_bytes("config.yaml", text.encode())

    def read_config(self) -> str:
        return self.storage.read_bytes("config.yaml").decode()

    def exists(self) -> bool:
        return self.storage.exists("config.yaml")

    def write_network(self, card: NetworkCard) -> None:
        self.storage.write_bytes(NETWORK, card.to_json().encode())

    def read_network(self) -> NetworkCard | None:
        """How to rebuild the run's network; None for runs recorded before evopop wrote it."""
        if not self.storage.exists(NETWORK):
            return None
        return NetworkCard.from_json(self.storage.read_bytes(NETWORK).decode())

    # -- one driver at a time -------------------------------------------------------------------
    @contextmanager
    def lock(self, lease_s: float = DEFAULT_LEASE_S):
        """Hold RUN_DIR/.lock while driving the run, so two drivers never write into one directory
        (`evopop.records.locks`: atomic on local disks and S3, a lease renewed in the background and
        taken over once it lapses, never the removal of a lock this driver does not hold). Yields the
        `LeaseKeeper`, whose ``token`` fences the trainers; this driver's own writes stop once it is lost."""
        lock = lock_for(Storage(self.uri), self.uri, lease_s)
        lock.acquire()
        keeper = LeaseKeeper(lock, lease_s).start()
        self.storage.fence = keeper.check
        try:
            yield keeper
        finally:
            self.storage.fence = None
            keeper.stop()
            lock.release()

    # -- writing -----------------------------------------------------------------------------
    @staticmethod
    def _part(dataset: str, generation: int, name: str = "0") -> str:
        return f"{dataset}/generation={int(generation)}/part-{name}.parquet"

    def write_individual(
        self, generation: int, record: IndividualRecord, layers: Sequence[LayerRecord], schema: pa.Schema
    ) -> None:
        """Append one individual: its per-layer rows first, then the population row (the commit)."""
        individual_id = check_individual_id(record.individual_id)
        record = _stamped(record)
        self._write_record(self._part(POPULATION, generation, individual_id), generation, record, layers, schema)
        known = self._individuals.get(int(generation))
        if known is not None:  # kept as written: the decision reads its generation from memory, not N files
            known[record.individual_id] = _as_read_back(record)
        if self._metadata is None or not self._metadata.metric_columns:
            self._metadata = None

    def write_rung(
        self, generation: int, record: IndividualRecord, layers: Sequence[LayerRecord], schema: pa.Schema
    ) -> None:
        """One rung's result of an offspring under successive halving (``record.rung``), in the
        population's schema; its per-layer rows too (its genome is the same at every rung)."""
        name = f"{check_individual_id(record.individual_id)}-r{int(record.rung)}"
        self._write_record(self._part(RUNGS, generation, name), generation, record, layers, schema)

    def write_layers(self, generation: int, individual_id: str, layers: Sequence[LayerRecord]) -> None:
        """An individual's per-layer rows, written by its trainer: one file a trainer writes instead of
        the driver, which then only notes them for the fold (`note_layers`)."""
        if layers:
            part = self._part(LAYERS, generation, check_individual_id(individual_id))
            self.storage.write_bytes(part, parquet_bytes(_layer_table(layers), part=True))

    def note_layers(self, generation: int, individual_id: str, layers: Sequence[LayerRecord]) -> None:
        """Keep, for the fold, the per-layer rows another process wrote (`write_layers`): never read back."""
        if layers:
            part = self._part(LAYERS, generation, check_individual_id(individual_id))
            self._write_part(part, [dataclasses.asdict(r) for r in layers], layer_schema(), written_already=True)

    def _write_record(
        self, part: str, generation: int, record: IndividualRecord, layers: Sequence[LayerRecord], schema: pa.Schema
    ) -> None:
        if layers:
            rows = [dataclasses.asdict(r) for r in layers]
            self._write_part(self._part(LAYERS, generation, record.individual_id), rows, layer_schema())
        self._write_part(part, [_stamped(record).row()], schema)

    def _write_part(self, part: str, rows: list[dict], schema: pa.Schema, written_already: bool = False) -> None:
        """Write one part (unless another process wrote these very rows already), and keep its rows for the fold."""
        if not written_already:
            self.storage.write_bytes(part, parquet_bytes(pa.Table.from_pylist(rows, schema=schema), part=True))
        folder, name = posixpath.split(part)
        self._written.setdefault(folder, Written(schema)).rows[name] = rows

    def write_promotion(self, generation: int, rung: int, rows: list[PromotionRecord]) -> None:
        """A rung's decision, in one file: written before it is acted on, it is what a resumed run replays."""
        table = pa.Table.from_pylist([dataclasses.asdict(r) for r in rows], schema=promotion_schema())
        self.storage.write_bytes(self._part(PROMOTION, generation, f"r{int(rung)}"), parquet_bytes(table))

    def write_selection(self, generation: int, rows: list[SelectionRecord]) -> None:
        table = pa.Table.from_pylist([dataclasses.asdict(r) for r in rows], schema=selection_schema())
        self.storage.write_bytes(self._part(SELECTION, generation), parquet_bytes(table))
        known = self._individuals.get(int(generation))
        if known is not None:
            for row in rows:
                if row.individual_id in known:
                    record = known[row.individual_id]
                    known[row.individual_id] = replace(record, selected=_selected((row.selected, None), record.kind))

    def consolidate(self, generation: int) -> int:
        """Fold the generation's per-individual parts into one file per dataset (it is decided: nothing
        rewrites them); returns how many parts were folded. Idempotent, and safe for concurrent readers."""
        folded = 0
        for dataset, keys in FOLDED.items():
            folder = f"{dataset}/generation={int(generation)}"
            folded += consolidate(self.storage, folder, keys, self._written.pop(folder, None))
        # the driver's memory stays flat over a run: the generations the next decisions read (this one, its
        # parents', the root's) stay in memory; an older one is read again from its folded file if asked for
        kept = {1, int(generation) - 1, int(generation)}
        for old in [g for g in self._individuals if g not in kept]:
            del self._individuals[old]
        return folded

    # -- an early stop (evolution.stop) ------------------------------------------------------
    def write_stop(self, generation: int, reason: str) -> None:
        """Record that the run ended after ``generation``, and why (a resumed run rewrites the same)."""
        self.storage.write_bytes(STOP, json.dumps({"generation": int(generation), "reason": reason}).encode())

    def read_stop(self) -> dict | None:
        """{"generation", "reason"} of a run that stopped early; None otherwise."""
        try:
            return json.loads(self.storage.read_bytes(STOP))
        except FileNotFoundError:
            return None

    def has_selection(self, generation: int) -> bool:
        """Whether the generation is decided: its selection is recorded."""
        return self.storage.exists(self._part(SELECTION, generation))

    def write_diversity(self, generation: int, pairs: pd.DataFrame, summary: pd.DataFrame, note: str = "") -> None:
        """One generation's diversity (pairs, summary), atomically; a rewrite replaces it (idempotent).

        ``note`` goes into the pairs' metadata: what the functional disagreement was measured on."""
        summary_table = _frame_table(summary, diversity_summary_schema())
        self.storage.write_bytes(self._part(DIVERSITY_SUMMARY, generation), parquet_bytes(summary_table))
        # the pairs last: their presence says the generation's diversity is recorded
        pairs_table = _frame_table(pairs, diversity_pairs_schema(note))
        self.storage.write_bytes(self._part(DIVERSITY, generation), parquet_bytes(pairs_table))

    def has_diversity(self, generation: int) -> bool:
        return self.storage.exists(self._part(DIVERSITY, generation))

    # -- reading -----------------------------------------------------------------------------
    def recorded_ids(self, generation: int | None = None) -> set[str]:
        """Ids with a population record (cheap: file names, and the id column of a folded generation)."""
        gens = [generation] if generation is not None else self.generations()
        ids = set()
        for g in gens:
            folder = f"{POPULATION}/generation={g}"
            for name in self.storage.list(folder, ".parquet"):
                if name == CONSOLIDATED:
                    with self.storage.fs.open_input_file(self.storage.path(f"{folder}/{name}")) as f:
                        ids |= set(pq.read_table(f, columns=["individual_id"]).column(0).to_pylist())
                else:
                    ids.add(name[len("part-") : -len(".parquet")])
        return ids

    def generations(self) -> list[int]:
        if not self.storage.exists(POPULATION):
            return []
        infos = self.storage.fs.get_file_info(FileSelector(self.storage.path(POPULATION)))
        gens = [i.base_name.split("=", 1)[1] for i in infos if i.type == FileType.Directory and "=" in i.base_name]
        return sorted(int(g) for g in gens if g.isdigit())

    def _table(self, dataset: str, generation: int | None = None, schema: pa.Schema | None = None) -> pa.Table | None:
        """One dataset (or one generation of it) as an Arrow table with an int32 ``generation`` column;
        one row per key of a folded dataset (a part left beside its folded file is read once)."""
        for attempt in range(3):
            try:
                table = self._read_table(dataset, generation, schema)
                break
            except FileNotFoundError:  # a part folded and deleted between the listing and the read
                if attempt == 2:
                    raise
        if table is None or dataset not in FOLDED:
            return table
        return unique_rows(table, ("generation", *FOLDED[dataset]), keep="last")  # a part read after its fold wins

    def _read_table(self, dataset: str, generation: int | None, schema: pa.Schema | None) -> pa.Table | None:
        rel = dataset if generation is None else f"{dataset}/generation={int(generation)}"
        files = files_to_read(self.storage, rel, FOLDED.get(dataset))
        if not files:
            return None
        data = ds.dataset(
            files,
            schema=schema,
            format="parquet",
            filesystem=self.storage.fs,
            partitioning=ds.partitioning(PARTITIONING, flavor="hive") if generation is None else None,
            partition_base_dir=self.storage.path(rel),
            exclude_invalid_files=True,
        )
        if not data.files:  # a folder whose first file is still being written (a concurrent reader)
            return None
        if schema is None:  # files of older schema versions lack later columns: read every file's columns
            fragments = [fragment.physical_schema for fragment in data.get_fragments()]
            if any(not f.equals(fragments[0]) for f in fragments[1:]):
                data = data.replace_schema(pa.unify_schemas([data.schema, *fragments]))
        table = data.to_table()
        if generation is not None:
            table = table.add_column(0, "generation", pa.array([int(generation)] * len(table), pa.int32()))
        return table

    def _frame(self, dataset: str, generation: int | None = None, fields=None) -> pd.DataFrame | None:
        """A dataset as a DataFrame, ``generation`` first; with ``fields``, typed and empty if absent."""
        schema = pa.schema(list(fields) + list(PARTITIONING)) if fields is not None and generation is None else None
        table = self._table(dataset, generation, schema)
        if table is None:
            if fields is None:
                return None
            table = pa.schema(list(PARTITIONING) + list(fields)).empty_table()
        frame = table.to_pandas(types_mapper=nullable_integer)
        frame["generation"] = frame["generation"].astype("int32")
        return frame[["generation"] + [c for c in frame.columns if c != "generation"]]

    def population(self, generation: int | None = None) -> pd.DataFrame:
        """Individuals recorded so far (all, or one generation's), in natural id order, with
        ``selected`` (boolean; <NA> until the generation is decided, False for baselines) and
        ``rank`` (Int32: 0 = best of its generation; <NA> failed or undecided) from selection/."""
        df = self._frame(POPULATION, generation)
        if df is None:
            return pd.DataFrame()
        decided = self._decisions(generation)
        keys = list(zip(df["generation"], df["individual_id"]))
        kinds = df["kind"] if "kind" in df else [None] * len(df)
        df["selected"] = pd.array([_selected(decided.get(k), kind) for k, kind in zip(keys, kinds)], dtype="boolean")
        df["rank"] = pd.array([decided.get(k, (None, None))[1] for k in keys], dtype="Int32")
        return df.sort_values(["generation", "individual_id"], key=natural_order).reset_index(drop=True)

    def individuals(self, generation: int) -> list[IndividualRecord]:
        """One generation's records as typed values (read through Arrow: integers stay exact); read once,
        then kept up to date with what this object writes (the driver writes every record of its run)."""
        if int(generation) not in self._individuals:
            read = self._read_individuals(int(generation))
            self._individuals[int(generation)] = {r.individual_id: r for r in read}
        return sorted(self._individuals[int(generation)].values(), key=lambda r: natural_key(r.individual_id))

    def _read_individuals(self, generation: int) -> list[IndividualRecord]:
        table = self._table(POPULATION, generation)
        if table is None:
            return []
        metric_columns = self.metadata().metric_columns
        decided = self._decisions(generation)
        records = []
        for row in table.to_pylist():
            row["selected"] = _selected(decided.get((generation, row["individual_id"])), row.get("kind"))
            records.append(IndividualRecord.from_row(row, metric_columns))
        return sorted(records, key=lambda r: natural_key(r.individual_id))

    def ranks(self, generation: int) -> dict[str, int | None]:
        """Id -> rank (0 best; None: failed) of a decided generation's individuals."""
        return {i: rank for (_, i), (_, rank) in self._decisions(generation).items()}

    def delete_checkpoints(self, individual_ids: Iterable[str]) -> None:
        """Remove these individuals' checkpoints (those that exist), in as few requests as the storage allows."""
        self.storage.delete_many(self.checkpoint_path(i) for i in individual_ids)

    def _decisions(self, generation: int | None = None) -> dict[tuple[int, str], tuple[bool, int | None]]:
        """(generation, id) -> (selected, rank) of every recorded selection (one generation's, or all)."""
        selection = self._frame(SELECTION, generation, SELECTION_FIELDS)
        rows = selection[["generation", "individual_id", "selected", "rank"]].itertuples(index=False)
        return {(int(g), i): (bool(s), plain_value(r)) for g, i, s, r in rows}

    def layers(self) -> pd.DataFrame:
        return self._frame(LAYERS, fields=LAYER_FIELDS)

    # -- successive halving ----------------------------------------------------------------------
    def rung_records(self, generation: int, rung: int) -> list[IndividualRecord]:
        """The results of one rung of a generation, as typed values, in natural id order (the
        generation's rung results in one read, however many files)."""
        table = self._table(RUNGS, generation)
        if table is None:
            return []
        metric_columns = self.metadata().metric_columns
        rows = [row for row in table.to_pylist() if row.get("rung") == int(rung)]
        records = [IndividualRecord.from_row(row, metric_columns) for row in rows]
        return sorted(records, key=lambda r: natural_key(r.individual_id))

    def rungs(self) -> pd.DataFrame:
        """Every rung result of every generation (empty without successive halving)."""
        df = self._frame(RUNGS)
        if df is None:
            return pd.DataFrame()
        return df.sort_values(["generation", "rung", "individual_id"], key=natural_order).reset_index(drop=True)

    def promotion(self, generation: int, rung: int) -> list[PromotionRecord] | None:
        """A rung's recorded decision; None while it is not decided."""
        rel = self._part(PROMOTION, generation, f"r{int(rung)}")
        if not self.storage.exists(rel):
            return None
        table = pq.read_table(io.BytesIO(self.storage.read_bytes(rel)))
        return [PromotionRecord(**{k: plain_value(v) for k, v in row.items()}) for row in table.to_pylist()]

    def promotions(self) -> pd.DataFrame:
        return self._frame(PROMOTION, fields=PROMOTION_FIELDS)

    @staticmethod
    def training_state_path(individual_id: str, rung: int) -> str:
        return f"{TRAINING}/{check_individual_id(individual_id)}-r{int(rung)}.pt"

    def write_training_state(self, individual_id: str, rung: int, state: RungState) -> None:
        """Training stopped after ``rung``, to be continued by the next (one file per rung: the
        next rung's state never replaces the one a retry of that rung still needs)."""
        self.storage.write_bytes(self.training_state_path(individual_id, rung), state.to_bytes())

    def read_training_state(self, individual_id: str, rung: int) -> RungState:
        return RungState.from_bytes(self.storage.read_bytes(self.training_state_path(individual_id, rung)))

    def delete_training_states(self, individual_ids: Iterable[str], rung: int | None = None) -> None:
        """Remove the stored training of these individuals: at ``rung``, or at every rung (their
        generation is decided: none continues)."""
        ids = [check_individual_id(i) for i in individual_ids]
        if rung is not None:
            self.storage.delete_many(self.training_state_path(i, rung) for i in ids)  # a no-op where absent
            return
        prefixes = tuple(f"{i}-r" for i in ids)
        names = [name for name in self.storage.list(TRAINING, ".pt") if name.startswith(prefixes)]
        self.storage.delete_many(f"{TRAINING}/{name}" for name in names)

    def diversity_pairs(self) -> pd.DataFrame:
        """Every recorded pair of every generation (typed, empty if none)."""
        return self._frame(DIVERSITY, fields=DIVERSITY_PAIR_FIELDS).sort_values("generation", kind="stable")

    def diversity_summary(self, generation: int | None = None) -> pd.DataFrame:
        """The spread of each quantity per group (all generations, or one; typed, empty if none)."""
        if generation is not None:
            frame = self._frame(DIVERSITY_SUMMARY, generation)
            return frame if frame is not None else self.diversity_summary().iloc[0:0]
        return self._frame(DIVERSITY_SUMMARY, fields=DIVERSITY_SUMMARY_FIELDS).sort_values("generation", kind="stable")

    def metadata(self) -> RunMetadata:
        """Metric columns, layer names and selection metric, from the newest population file's metadata
        (read once, again after this object writes a record)."""
        if self._metadata is None:
            self._metadata = self._read_metadata()
        return self._metadata

    def _read_metadata(self) -> RunMetadata:
        for generation in reversed(self.generations()):
            rel = f"{POPULATION}/generation={generation}"
            for name in self.storage.list(rel, ".parquet"):
                try:
                    with self.storage.fs.open_input_file(self.storage.path(f"{rel}/{name}")) as f:
                        meta = pq.read_schema(f).metadata or {}
                except (OSError, pa.ArrowInvalid):
                    continue
                selection = json.loads(meta.get(b"evopop.selection", b"{}"))
                return RunMetadata(
                    list(json.loads(meta.get(b"evopop.metrics", b"[]"))),
                    list(json.loads(meta.get(b"evopop.layers", b"[]"))),
                    selection.get("metric"),
                    selection.get("direction"),
                )
        return RunMetadata()

    # -- checkpoints -----------------------------------------------------------------------
    @staticmethod
    def checkpoint_path(individual_id: str) -> str:
        return f"checkpoints/{check_individual_id(individual_id)}.pt"

    def write_checkpoint(self, individual_id: str, checkpoint: Checkpoint) -> str:
        """Write ``checkpoint``; returns its path relative to the run directory."""
        rel = self.checkpoint_path(individual_id)
        self.storage.write_bytes(rel, checkpoint.to_bytes())
        return rel

    def read_checkpoint(self, individual_id: str) -> Checkpoint:
        return Checkpoint.from_bytes(self.storage.read_bytes(self.checkpoint_path(individual_id)))

    def has_checkpoint(self, individual_id: str) -> bool:
        return self.storage.exists(self.checkpoint_path(individual_id))

    # -- genomes: what the diversity study reads -------------------------------------------
    @staticmethod
    def genome_path(individual_id: str) -> str:
        return f"{GENOMES}/{check_individual_id(individual_id)}.pt"

    def write_genome(self, individual_id: str, genome: GenomeFile) -> None:
        """The masks (bit-packed) and probe outputs of an individual, beside its checkpoint."""
        self.storage.write_bytes(self.genome_path(individual_id), genome.to_bytes())

    def read_genome(self, individual_id: str) -> GenomeFile | None:
        """The genome file of an individual; None where it has none that can be read
        (runs recorded before evopop wrote them, or with diversity off): the checkpoint serves."""
        try:
            data = self.storage.read_bytes(self.genome_path(individual_id))
        except OSError:  # missing (or, on S3 without s3:ListBucket, forbidden: 403 for a missing key)
            return None
        return GenomeFile.from_bytes(data)


_NULLABLE_INTEGERS = {
    pa.int8(): pd.Int8Dtype(),
    pa.int16(): pd.Int16Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(),
    pa.uint8(): pd.UInt8Dtype(),
    pa.uint16(): pd.UInt16Dtype(),
    pa.uint32(): pd.UInt32Dtype(),
    pa.uint64(): pd.UInt64Dtype(),
}


def nullable_integer(arrow_type: pa.DataType):
    """pandas' nullable integer dtype for an Arrow integer (else None: pyarrow's default). Without
    it an integer column with a null (the root ancestor's seed) reads back as float64, and a 64-bit
    seed loses its last digits: re-synthesis from it would draw another genome."""
    return _NULLABLE_INTEGERS.get(arrow_type)


def _selected(decision: tuple[bool, int | None] | None, kind: str | None) -> bool | None:
    """Whether an individual was selected: None while its generation is undecided; baselines never are."""
    if is_baseline(kind):
        return False
    return None if decision is None else decision[0]


def _as_read_back(record: IndividualRecord) -> IndividualRecord:
    """``record`` as reading its file gives it: undecided, its layer fractions as float32 (their column's type)."""
    fractions = record.layer_fractions
    if fractions is not None:
        fractions = tuple(float(f) for f in np.asarray(fractions, dtype=np.float32))
    return replace(record, selected=_selected(None, record.kind), layer_fractions=fractions)


def _stamped(record: IndividualRecord) -> IndividualRecord:
    """``record`` with its ``finished_at`` (now, to the millisecond the files keep), unless it has one."""
    if record.finished_at is not None:
        return record
    now = datetime.now(timezone.utc)
    return replace(record, finished_at=now.replace(microsecond=now.microsecond // 1000 * 1000))
