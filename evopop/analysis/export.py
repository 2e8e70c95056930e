"""``evopop export``: one recorded individual as a compacted, standalone program, with a metadata file.

    export_individual("runs/quickstart-...", "g4-3", "g4-3.pt2")          # + g4-3.pt2.json
    torch.export.load("g4-3.pt2").module()(images)                        # anywhere torch runs

Every input is checked before any work: the run, the individual (known, not failed), its checkpoint
and the output location; each problem is one `ExportError` naming it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
import yaml

from ..compaction import CompactionError, compact
from ..compaction.export import FORMATS, exported_bytes, require_onnx
from ..config import load_config
from ..models.by_name import model_by_name
from ..records.ids import natural_key
from ..records.run import RunRecords
from ..records.schema import MEASURED, plain_value
from ..records.storage import filesystem_of, is_uri
from ..synthesis import Architecture, Genome, trace_architecture
from ..synthesis.inputs import Inputs
from ..tasks.registry import built_task, search_in


class ExportError(ValueError):
    """The individual cannot be exported as asked; the message says why."""


@dataclass(frozen=True)
class Exported:
    path: str
    metadata_path: str
    metadata: dict[str, Any]


# Recorded columns copied into the metadata file, as they are in the records.
_RECORDED = (
    *("generation", "kind", "parent_id", "lineage", "encoding", "env_mode", "env_factor", "cluster_factor"),
    *("seed", "mask_digest", "synapses", "ancestor_synapses", "efficiency", "neurons", "params", "macs"),
    *("dense_macs", "effective_synapses", "effective_efficiency", "effective_neurons", "effective_macs"),
    *("compact_params", "compact_macs", "compact_neurons", "latency_cpu_b1_ms", "latency_cpu_b32_ms"),
    *("latency_gpu_ms", "train_seconds", "finished_at"),
)


def export_individual(run_dir: str, individual_id: str, out: str, fmt: str = "pt2") -> Exported:
    """Compact individual ``individual_id`` of the run at ``run_dir`` and write it to ``out`` (+ ``out``.json)."""
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "onnx":
        missing_onnx_packages()
    try:
        records = RunRecords(run_dir)
        if not records.exists():
            raise ExportError(f"{run_dir}: no evopop run here (config.yaml missing)")
        row = _recorded_row(records, individual_id)
        if not records.has_checkpoint(individual_id):
            kept = load_config(yaml.safe_load(records.read_config())).storage
            why = (
                f" (storage.checkpoints: lineage kept the selected and the best {kept.keep_top} of each generation)"
                if kept.checkpoints == "lineage"
                else ""
            )
            raise ExportError(
                f"{individual_id}: its checkpoint {records.checkpoint_path(individual_id)} is missing{why}"
            )
        _check_output(out, run_dir)
        config = load_config(yaml.safe_load(records.read_config()))
        model, arch, example = _network(records, config)
        checkpoint = records.read_checkpoint(individual_id)
    except (OSError, ValueError) as exc:  # unreachable storage, an unknown scheme, an unreadable file
        if isinstance(exc, ExportError):
            raise
        raise ExportError(f"cannot read {individual_id} of {run_dir}: {exc}") from None
    try:
        model.load_state_dict(checkpoint.weights, strict=True)
        compacted = compact(model, arch, Genome.from_state_dict(checkpoint.masks), example)
        program = exported_bytes(compacted.module, example, fmt)
    except (CompactionError, RuntimeError, KeyError) as exc:
        raise ExportError(f"{individual_id}: cannot export ({type(exc).__name__}: {exc})") from None

    metadata = {
        "format": fmt,
        "load": "torch.export.load(path).module()" if fmt == "pt2" else "onnxruntime.InferenceSession(path)",
        **_input_metadata(example),
        "run_id": records.run_id,
        "individual_id": individual_id,
        "task": {"name": config.task.name, "args": config.task.args},
        "recorded": {name: _plain(row.get(name)) for name in _RECORDED if name in row},
        "metrics": {name: _plain(row.get(name)) for name in records.metadata().metric_columns if name in row},
        "compacted": {
            "params": compacted.params,
            "macs": compacted.macs,
            "neurons": compacted.neurons,
            "max_error_vs_masked": compacted.max_error,
        },
        "exported_by": f"evopop {_evopop_version()}",
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write(out, program)
    _write(out + ".json", (json.dumps(metadata, indent=2) + "\n").encode())
    return Exported(out, out + ".json", metadata)


def _network(records: RunRecords, config) -> tuple[torch.nn.Module, Architecture, Inputs]:
    """(a new network, its traced architecture, an example input): from the run's network card where it
    names a model (no data, no plugin needed), else from the task."""
    card = records.read_network()
    if card is not None and card.model is not None:
        spec = card.model
        search_in(config.task.paths)  # a model by import path: next to the config, as the run found it
        with torch.random.fork_rng(devices=[]):
            model = model_by_name(spec["model"], spec.get("num_classes"), **(spec.get("model_args") or {}))
        example = card.example()
        return model, trace_architecture(model, example), example
    built = built_task(config.task.name, config.task.args, config.task.paths)
    return built.task.build_model(), built.arch, built.task.example_input()


def _input_metadata(example: Inputs) -> dict:
    """The exported program's inputs, the batch dimension named: ``input_shape`` and ``input_dtype`` for
    one tensor (as before), ``inputs`` (a list, or a dict by argument name) for several."""

    def one(t: torch.Tensor) -> dict:
        return {"shape": ["batch", *t.shape[1:]], "dtype": str(t.dtype).removeprefix("torch.")}

    if isinstance(example, torch.Tensor):
        single = one(example)
        return {"input_shape": single["shape"], "input_dtype": single["dtype"]}
    if isinstance(example, dict):
        return {"inputs": {name: one(t) for name, t in example.items()}}
    return {"inputs": [one(t) for t in example]}


def _recorded_row(records: RunRecords, individual_id: str) -> dict[str, Any]:
    population = records.population()
    rows = population[population["individual_id"] == individual_id] if not population.empty else population
    if rows.empty:
        known = sorted(population["individual_id"], key=natural_key) if not population.empty else []
        shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
        raise ExportError(f"no individual {individual_id!r} in {records.uri} (recorded: {shown or 'none'})")
    row = rows.iloc[-1].to_dict()
    if row.get("status") not in MEASURED:  # trained: to the end, or to the rung halving stopped it at
        error = str(row.get("error") or "").strip().splitlines()
        why = f": {error[0]}" if error else ""
        raise ExportError(f"{individual_id} failed{why}; a failed individual has no trained network to export")
    return row


def missing_onnx_packages() -> None:
    try:
        require_onnx()
    except RuntimeError as exc:
        raise ExportError(str(exc)) from None


def _check_output(out: str, run_dir: str) -> None:
    """Refuse an output that cannot be written, or would land in the run directory, before any work."""
    for path in (out, out + ".json"):
        _check_writable(path)
    if not is_uri(out) and not is_uri(run_dir):
        run = os.path.abspath(run_dir)
        if os.path.abspath(out).startswith(run + os.sep):
            raise ExportError(f"--out {out} is inside the run directory {run_dir}: write exports elsewhere")


def _check_writable(out: str) -> None:
    if is_uri(out):
        filesystem_of(out)  # raises on an unknown scheme; permissions show when writing
        return
    if os.path.isdir(out):
        raise ExportError(f"--out {out} is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise ExportError(f"--out {out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (os.path.exists(out) and not os.access(out, os.W_OK)):
        raise ExportError(f"--out {out}: not writable")


def _write(out: str, data: bytes) -> None:
    try:
        if is_uri(out):
            fs, path = filesystem_of(out)
            with fs.open_output_stream(path) as f:
                f.write(data)
        else:
            with open(out, "wb") as f:
                f.write(data)
    except (OSError, ValueError) as exc:
        raise ExportError(f"--out {out}: cannot write ({exc})") from None


def _evopop_version() -> str:
    try:  # the installed distribution's version: importing evopop's package root would import its API
        return version("evopop")
    except PackageNotFoundError:
        return "unknown"


def _plain(value: Any) -> Any:
    """A JSON value: what the records read back as plain Python (`plain_value`), times as text."""
    return value.isoformat() if hasattr(value, "isoformat") else plain_value(value)
