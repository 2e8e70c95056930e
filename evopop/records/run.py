"""The run directory: resolved config, population records, checkpoints. Knows nothing of Ray.

    RUN_DIR/config.yaml
    RUN_DIR/population/generation=G/part-<individual_id>.parquet   one row per individual, ever
    RUN_DIR/layers/generation=G/part-<individual_id>.parquet       per-layer counts
    RUN_DIR/selection/generation=G/part-0.parquet                  which individuals were selected
    RUN_DIR/checkpoints/<individual_id>.pt                          weights + masks

A record is written only after its checkpoint is durable, and a part is named after its individual,
so writing it twice (a retry after a crash) replaces it instead of doubling it.
"""
from __future__ import annotations

import io
import json
import os
import re
import socket
from contextlib import contextmanager
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch

from .schema import PARTITIONING, layer_schema, selection_schema
from .storage import Storage

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class RunLockedError(RuntimeError):
    """Another live driver holds the run directory."""


def check_individual_id(individual_id: str) -> str:
    """Ids become file names: refuse anything that could escape the run directory."""
    if not _SAFE_ID.match(individual_id) or ".." in individual_id:
        raise ValueError(f"invalid individual id {individual_id!r}: letters, digits, '_', '-', '.' only")
    return individual_id


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


class RunRecords:
    def __init__(self, uri: str):
        self.storage = Storage(uri)
        self.uri = uri

    # -- config ----------------------------------------------------------------------------
    def write_config(self, text: str) -> None:
        self.storage.write_bytes("config.yaml", text.encode())

    def read_config(self) -> str:
        return self.storage.read_bytes("config.yaml").decode()

    def exists(self) -> bool:
        return self.storage.exists("config.yaml")

    # -- one driver at a time -------------------------------------------------------------------
    @contextmanager
    def lock(self):
        """Hold RUN_DIR/.lock while driving the run, so two drivers never write into one directory.

        A lock left by a driver that died on this host (its pid is gone) is taken over; one from
        another host cannot be checked and is refused, with the path to remove if it is stale.
        """
        path = self.storage.path(".lock")
        mine = {"host": socket.gethostname(), "pid": os.getpid(), "since": datetime.now(timezone.utc).isoformat()}
        if self.storage.is_local:
            self._take_local_lock(path, mine)
        else:
            self.storage.write_bytes(".lock", json.dumps(mine).encode())
        try:
            yield
        finally:
            try:
                self.storage.fs.delete_file(path)
            except OSError:
                pass

    def _take_local_lock(self, path: str, mine: dict) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_json(path)
                if holder.get("host") == mine["host"] and not _pid_alive(holder.get("pid")):
                    os.unlink(path)  # stale: its driver died
                    continue
                raise RunLockedError(
                    f"{self.uri} is being driven by pid {holder.get('pid')} on {holder.get('host')} "
                    f"since {holder.get('since')}; if that driver is gone, remove {path}"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(mine, f)
            return
        raise RunLockedError(f"could not take the lock {path}")

    # -- population ------------------------------------------------------------------------
    @staticmethod
    def _part(dataset: str, generation: int, individual_id: str) -> str:
        return f"{dataset}/generation={int(generation)}/part-{check_individual_id(individual_id)}.parquet"

    def write_individual(self, generation: int, row: dict, layers: list[dict], schema: pa.Schema) -> None:
        """Append one individual: its per-layer rows first, then the population row (the commit)."""
        individual_id = row["individual_id"]
        if layers:
            layer_rows = [{"individual_id": individual_id, **r} for r in layers]
            table = pa.Table.from_pylist(layer_rows, schema=layer_schema())
            self.storage.write_bytes(self._part("layers", generation, individual_id), _parquet_bytes(table))
        row = {**row, "finished_at": row.get("finished_at") or datetime.now(timezone.utc)}
        table = pa.Table.from_pylist([row], schema=schema)
        self.storage.write_bytes(self._part("population", generation, individual_id), _parquet_bytes(table))

    def recorded_ids(self, generation: int | None = None) -> set[str]:
        """Ids with a population record (cheap: file names, no Parquet reads)."""
        gens = [generation] if generation is not None else self.generations()
        ids = set()
        for g in gens:
            for name in self.storage.list(f"population/generation={g}", ".parquet"):
                ids.add(name[len("part-") : -len(".parquet")])
        return ids

    def generations(self) -> list[int]:
        if not self.storage.exists("population"):
            return []
        from pyarrow.fs import FileSelector, FileType

        infos = self.storage.fs.get_file_info(FileSelector(self.storage.path("population")))
        gens = [i.base_name.split("=", 1)[1] for i in infos if i.type == FileType.Directory and "=" in i.base_name]
        return sorted(int(g) for g in gens if g.isdigit())

    def write_selection(self, generation: int, rows: list[dict]) -> None:
        table = pa.Table.from_pylist(rows, schema=selection_schema())
        self.storage.write_bytes(f"selection/generation={int(generation)}/part-0.parquet", _parquet_bytes(table))

    def _read(self, dataset: str, generation: int | None = None) -> pd.DataFrame | None:
        """One dataset (or one generation of it) as a DataFrame with an int ``generation`` column."""
        rel = dataset if generation is None else f"{dataset}/generation={int(generation)}"
        if not self.storage.exists(rel):
            return None
        data = ds.dataset(
            self.storage.path(rel), format="parquet", filesystem=self.storage.fs,
            partitioning=ds.partitioning(PARTITIONING, flavor="hive") if generation is None else None,
            exclude_invalid_files=True, ignore_prefixes=[".tmp-", "."],
        )  # fmt: skip
        df = data.to_table().to_pandas()
        if generation is not None:
            df.insert(0, "generation", pd.Series([int(generation)] * len(df), dtype="int32"))
        return df

    def population(self, generation: int | None = None) -> pd.DataFrame:
        """Individuals recorded so far (all, or one generation's), ``selected`` filled where decided."""
        df = self._read("population", generation)
        if df is None:
            return pd.DataFrame()
        selection = self._read("selection", generation)
        if selection is not None and len(selection):
            decided = dict(zip(selection["individual_id"], selection["selected"]))
            df["selected"] = df["individual_id"].map(decided).astype("boolean")
            df["rank"] = df["individual_id"].map(dict(zip(selection["individual_id"], selection["rank"]))).astype("Int32")
        if "kind" in df:  # baselines are never candidates: decided, not selected
            df.loc[df["kind"].isin(["magnitude", "random"]), "selected"] = False
        cols = ["generation"] + [c for c in df.columns if c != "generation"]
        return df[cols].sort_values(["generation", "individual_id"], key=_natural).reset_index(drop=True)

    def layers(self) -> pd.DataFrame:
        df = self._read("layers")
        return pd.DataFrame() if df is None else df

    def selection(self) -> pd.DataFrame:
        df = self._read("selection")
        return pd.DataFrame() if df is None else df

    # -- checkpoints -----------------------------------------------------------------------
    @staticmethod
    def checkpoint_path(individual_id: str) -> str:
        return f"checkpoints/{check_individual_id(individual_id)}.pt"

    def write_checkpoint(self, individual_id: str, weights: dict, masks: dict, meta: dict) -> str:
        buffer = io.BytesIO()
        torch.save({"weights": weights, "masks": masks, "meta": json.dumps(meta)}, buffer)
        rel = self.checkpoint_path(individual_id)
        self.storage.write_bytes(rel, buffer.getvalue())
        return rel

    def read_checkpoint(self, individual_id: str) -> dict:
        return load_checkpoint_bytes(self.storage.read_bytes(self.checkpoint_path(individual_id)))

    def has_checkpoint(self, individual_id: str) -> bool:
        return self.storage.exists(self.checkpoint_path(individual_id))


def read_torch_bytes(data: bytes):
    """torch.load with ``weights_only=True`` (no code runs from a checkpoint); ValueError if unreadable."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"not a readable torch file ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None


def is_evopop_checkpoint(payload) -> bool:
    return isinstance(payload, dict) and "weights" in payload and "masks" in payload


def load_checkpoint_bytes(data: bytes) -> dict:
    """A checkpoint's {"weights", "masks", "meta"}; tensors only (``weights_only=True``)."""
    payload = read_torch_bytes(data)
    if not is_evopop_checkpoint(payload):
        raise ValueError("not an evopop checkpoint: expected a dict with 'weights' and 'masks'")
    payload["meta"] = json.loads(payload.get("meta") or "{}")
    return payload


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def natural_key(individual_id: str) -> list:
    """Sort key that puts ids like g2-10 after g2-9."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(individual_id))]


def _natural(col: pd.Series) -> pd.Series:
    if col.dtype == object or str(col.dtype).startswith("string"):
        return col.map(natural_key)
    return col
