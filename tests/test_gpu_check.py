"""benchmarks/gpu_check.py, the GPU check, where CI can run it: on the CPU.

Its device-agnostic parts run as a smoke run (``--device cpu --quick``: tiny sizes; what needs CUDA says
"skipped: no CUDA"), so that the command a session with a GPU runs has run end to end before; without
CUDA and without ``--device cpu`` it refuses at once, in one line; a part that fails loses no other's figures.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"throughput", "packing", "compaction", "synthesis", "memory"}


def gpu_check(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def positive(figures: dict, *keys: str) -> None:
    for key in keys:
        value = figures[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: nothing to refuse")
def test_refuses_without_cuda_in_one_line():
    result = gpu_check(timeout=120)
    assert result.returncode == 2
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "no CUDA device" in lines[0] and "--device cpu" in lines[0]


@pytest.mark.slow
def test_quick_smoke_run_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = gpu_check("--device", "cpu", "--quick", "--json", str(out))
    assert result.returncode == 0, result.stderr[-5000:]
    data = json.loads(out.read_text())
    assert data["machine"]["device"] == "cpu" and data["quick"] is True
    assert "command" in data["run"] and data["wall_s"] > 0
    parts = data["parts"]
    assert set(parts) == PARTS
    for name, part in parts.items():
        assert part["status"] == "ok", (name, part["error"])
        assert part["error"] is None and 0 < part["elapsed_s"] <= part["limit_s"]
        assert {"figures", "skipped", "rows", "log"} <= set(part)

    # 1. both loops measured in fp32 and channels_last; bf16 autocast is evopop's on CUDA only
    throughput = parts["throughput"]["figures"]
    for mode in ("fp32", "cl_fp32"):
        positive(throughput, *(f"{mode}_{side}_images_per_s" for side in ("bare", "evopop", "resident")))
        positive(throughput, f"{mode}_evopop_vs_bare")
    positive(throughput, "channels_last_gap_fp32", "offspring_kept_synapses")
    assert not any(key.startswith(("bf16", "cl_bf16")) for key in throughput)
    assert sum("no CUDA" in s for s in parts["throughput"]["skipped"]) == 2

    # 2. the Ray engine with 1, 2 and 4 trainers on one (pretended) GPU, every offspring trained
    packing = parts["packing"]["figures"]
    for n in (1, 2, 4):
        keys = ("offspring_images_per_s", "packed_images_per_s", "generation_s", "generation_images_per_s")
        positive(packing, *(f"trainers_{n}_{key}" for key in keys), f"trainers_{n}_generation_speedup")
        assert packing[f"trainers_{n}_failed"] == 0
    assert packing["trainers_1_generation_speedup"] == pytest.approx(1.0)

    # 3. compaction on the CPU: fewer MACs, both latencies measured
    compaction = parts["compaction"]["figures"]
    positive(compaction, "resnet18_dense_ms", "resnet18_compact_ms", "resnet18_speedup", "resnet18_params_reduction")
    assert compaction["resnet18_macs_reduction"] > 1.2

    # 4. synthesis: the CPU side measured, the GPU side skipped
    synthesis = parts["synthesis"]
    positive(synthesis["figures"], "budget_cpu_s", "scale_cpu_s", "synapses")
    assert not any("gpu" in key for key in synthesis["figures"])
    assert any("no CUDA" in s for s in synthesis["skipped"])

    # 5. one offspring developed in process; no GPU memory to read here, in the engine or in process
    memory = parts["memory"]
    positive(memory["figures"], "in_process_develop_s", "in_process_images_per_s")
    assert not any("peak" in key for key in memory["figures"])
    assert sum("no CUDA" in s for s in memory["skipped"]) == 4  # 3 engine runs, 1 in process

    # the summary is every part's figures, flat; the table has every part's elapsed time
    summary = data["summary"]
    assert all(summary[f"{name}_status"] == "ok" for name in PARTS)
    assert summary["packing_trainers_4_offspring_images_per_s"] == packing["trainers_4_offspring_images_per_s"]
    assert result.stdout.count(" elapsed ") == 5
    assert "skipped: no CUDA" in result.stdout and "ERROR" not in result.stdout


def test_a_failing_part_keeps_the_others_figures(tmp_path):
    """Part 1 cut off by its time limit: its error is in the table and the JSON, part 4 still measured."""
    out = tmp_path / "gpu_check.json"
    result = gpu_check("--device", "cpu", "--quick", "--parts", "1,4", "--limit", "1=0.001", "--json", str(out))
    assert result.returncode == 0, result.stderr[-5000:]
    parts = json.loads(out.read_text())["parts"]
    assert set(parts) == {"throughput", "synthesis"}
    assert parts["throughput"]["status"] == "error" and "PartTimeout" in parts["throughput"]["error"]
    assert parts["synthesis"]["status"] == "ok" and parts["synthesis"]["figures"]["budget_cpu_s"] > 0
    error_rows = [line for line in result.stdout.splitlines() if "ERROR" in line]
    assert len(error_rows) == 1 and error_rows[0].startswith("1 throughput") and "PartTimeout" in error_rows[0]


def test_engine_task_carries_peak_memory_columns(tmp_path):
    """Part 2's config is valid, packs 1/n GPU per trainer, and its task records each individual's peak
    GPU memory as a metric column (NaN off CUDA), which part 5 reads from the records."""
    from benchmarks import gpu_check
    from evopop.engine.plan import plan_run

    ctx = gpu_check.Context(torch.device("cpu"), gpu_check.QUICK, tmp_path)
    config = gpu_check.engine_config(ctx, 4, tmp_path)
    assert config.resources.gpus_per_trainer == 0.25 and config.resources.trainers == 4
    assert config.task.name == gpu_check.TASK
    plan = plan_run(config)
    assert {"val_peak_gpu_mib", "val_peak_gpu_reserved_mib"} <= set(plan.metric_columns)
    metric = gpu_check.bench_task(**gpu_check.QUICK.task).metrics()
    metric.update(torch.tensor([[2.0, 1.0]]), torch.tensor([0]))
    values = metric.compute()
    assert values["accuracy"] == 1.0
    assert math.isnan(values["peak_gpu_mib"]) or torch.cuda.is_available()
