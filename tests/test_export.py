"""``evopop export``: a recorded individual, compacted, as a program that runs without evopop.

A real (local-executor, cluster-encoded) tiny run is exported; the program is loaded in a fresh
Python where importing evopop fails, and its outputs must equal the masked network's. ONNX Runtime
must agree with torch. Every bad input is one clear message and exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from evopop.cli import main
from evopop.config import load_config
from evopop.records.run import RunRecords
from evopop.synthesis import parameter_masks
from evopop.tasks.registry import built_task

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> str:
    from evopop.api import evolve

    overrides = [
        "evolution.generations=3",
        "evolution.offspring=2",
        "evolution.encoding=cluster",
        "evolution.clusters.c=0.6",
        "resources.executor=local",
        "diversity.enabled=false",
        "train.epochs=1",
    ]
    config = load_config(CONFIGS / "tiny.yaml", overrides)
    run_dir = str(tmp_path_factory.mktemp("export") / "run")
    RunRecords(run_dir).write_config(config.to_yaml())
    evolve(config, run_dir)
    return run_dir


def _masked_outputs(run_dir: str, individual_id: str, x: torch.Tensor) -> torch.Tensor:
    records = RunRecords(run_dir)
    config = load_config(CONFIGS / "tiny.yaml")
    built = built_task(config.task.name, config.task.args)
    model = built.task.build_model().eval()
    checkpoint = records.read_checkpoint(individual_id)
    model.load_state_dict(checkpoint.weights)
    from evopop.synthesis import Genome

    masks = parameter_masks(built.arch, Genome.from_state_dict(checkpoint.masks))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)
        return model(x)


_LOAD_WITHOUT_EVOPOP = """
import sys
sys.modules["evopop"] = None  # any import of evopop now fails
import torch
x = torch.load(sys.argv[2])
outputs = {}
for batch in (1, 5):
    outputs[batch] = torch.export.load(sys.argv[1]).module()(x[:batch])
torch.save(outputs, sys.argv[3])
"""


@pytest.mark.slow
def test_cluster_encoded_run_records_compaction(run_dir):
    population = RunRecords(run_dir).population()
    offspring = population[population["kind"] == "offspring"]
    assert set(offspring["encoding"]) == {"cluster"}
    assert (offspring["cluster_factor"] == 0.6).all()
    assert population["compact_params"].notna().all() and population["latency_cpu_b32_ms"].notna().all()
    last = offspring[offspring["generation"] == 3]
    assert (last["compact_macs"] < last["dense_macs"]).all()  # whole filters died: smaller dense layers
    assert (population["compact_macs"] >= population["effective_macs"]).all()


@pytest.mark.slow
def test_export_round_trip_in_a_fresh_process_without_evopop(run_dir, tmp_path):
    out = tmp_path / "g3-0.pt2"
    assert main(["export", run_dir, "g3-0", "--out", str(out)]) == 0
    metadata = json.loads((tmp_path / "g3-0.pt2.json").read_text())
    assert metadata["individual_id"] == "g3-0" and metadata["recorded"]["lineage"][0] == "g1-0"
    assert metadata["compacted"]["params"] < metadata["recorded"]["params"] * 10
    assert metadata["recorded"]["compact_macs"] == metadata["compacted"]["macs"]

    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "load.py"
    script.write_text(_LOAD_WITHOUT_EVOPOP)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [sys.executable, "-I", str(script), str(out), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        check=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    outputs = torch.load(tmp_path / "y.pt")
    expected = _masked_outputs(run_dir, "g3-0", x)
    for batch, got in outputs.items():
        torch.testing.assert_close(got, expected[:batch], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_onnx_runtime_computes_what_torch_computes(run_dir, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "g2-1.onnx"
    assert main(["export", run_dir, "g2-1", "--out", str(out), "--format", "onnx"]) == 0
    x = torch.randn(7, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), _masked_outputs(run_dir, "g2-1", x), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_bad_input_is_one_clear_message_and_exit_2(run_dir, tmp_path, capsys):
    cases = [
        (["export", run_dir, "g9-9", "--out", str(tmp_path / "a.pt2")], "no individual 'g9-9'"),
        (["export", str(tmp_path), "g2-0", "--out", str(tmp_path / "a.pt2")], "no evopop run here"),
        (["export", run_dir, "g2-0", "--out", str(tmp_path / "missing" / "a.pt2")], "does not exist"),
        (["export", run_dir, "g2-0", "--out", str(tmp_path)], "is a directory"),
        (["export", run_dir, "g2-0", "--out", f"{run_dir}/checkpoints/g2-0.pt"], "inside the run directory"),
        (["export", run_dir, "g2-0", "--out", "nosuchscheme://bucket/a.pt2"], "nosuchscheme"),
    ]
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases.append((["export", run_dir, "g2-0", "--out", str(locked / "a.pt2")], "not writable"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err

    # a missing checkpoint, and a failed individual (a copy of the run, edited as a failure is recorded)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    os.remove(copy / "checkpoints" / "g2-0.pt")
    assert main(["export", str(copy), "g2-0", "--out", str(tmp_path / "b.pt2")]) == 2
    assert "checkpoint checkpoints/g2-0.pt is missing" in capsys.readouterr().err
    _fail_recorded(copy, "g2-1")
    assert main(["export", str(copy), "g2-1", "--out", str(tmp_path / "c.pt2")]) == 2
    assert "g2-1 failed: RuntimeError: loss diverged" in capsys.readouterr().err
    assert not (tmp_path / "b.pt2").exists() and not (tmp_path / "c.pt2").exists()


def _fail_recorded(run_dir: Path, individual_id: str) -> None:
    for path in (run_dir / "population").rglob("*.parquet"):
        frame = pd.read_parquet(path)
        if individual_id in set(frame["individual_id"]):
            table = pq.read_table(path)
            frame.loc[frame["individual_id"] == individual_id, "status"] = "failed"
            frame.loc[frame["individual_id"] == individual_id, "error"] = "RuntimeError: loss diverged\ntraceback"
            pq.write_table(pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False), path)
