"""The benchmarks run (their quick modes, as modules from the repository root: ``python -m benchmarks.bench_X``),
so that the README's figures can always be re-measured; benchmarks/results/TABLE.md is up to date with the JSONs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def benchmark(name: str, *args: str) -> list[str]:
    """The command line of ``python -m benchmarks.NAME ARGS`` (run it with cwd=ROOT)."""
    return [sys.executable, "-m", f"benchmarks.{name}", *args]


@pytest.mark.slow
def test_compaction_benchmark_quick_mode(tmp_path):
    out = tmp_path / "rows.json"
    result = subprocess.run(
        benchmark("bench_compaction", "--quick", "--json", str(out)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "speedup/MAC reduction" in result.stdout
    import json

    rows = json.loads(out.read_text())
    assert {r["encoding"] for r in rows} == {"synapse", "cluster"}
    # cluster-driven synthesis removes whole filters: the compacted network computes fewer MACs
    assert all(r["macs_reduction"] > 1.2 for r in rows if r["encoding"] == "cluster")


@pytest.mark.slow
def test_cluster_benchmark_quick_mode(tmp_path):
    """bench_cluster starts its own simulated cluster (head + 2 worker nodes) in a subprocess,
    measures scaling, the driver's cost and record writes, and shuts everything down."""
    import json

    out = tmp_path / "cluster.json"
    proc = subprocess.Popen(
        benchmark("bench_cluster", "--quick", "--json", str(out)),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the script unwinds and shuts its cluster down
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"bench_cluster --quick ran past 300 s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-5000:]

    results = json.loads(out.read_text())
    summary = results["summary"]
    # the printed summary block is the JSON's, one `key: value` per line
    block = stdout.split("\nsummary\n", 1)[1].splitlines()
    printed = dict(line.split(": ", 1) for line in block if ": " in line and not line.startswith("figures"))
    assert set(printed) == set(summary)

    for n in (1, 2, 4):
        assert summary[f"generation_s_trainers_{n}"] > 0
        assert summary[f"efficiency_trainers_{n}"] > 0
        assert summary[f"efficiency_cores_trainers_{n}"] >= summary[f"efficiency_trainers_{n}"]
    assert summary["efficiency_trainers_1"] == pytest.approx(1.0)
    assert summary["generation_s_local"] > 0 and summary["ray_1_trainer_vs_local"] > 0
    assert results["scaling"]["nodes_used"]["trainers=1"] == 1  # trainers run on the worker nodes only
    assert results["scaling"]["nodes_used"]["trainers=2"] >= 1
    assert summary["driver_cpu_ms_per_individual"] > 0 and summary["max_dispatch_per_s"] > 0
    assert 0 < summary["driver_record_writes_share"] < 1
    for key in ("record_writes_per_s_local", "record_writes_per_s_local_bare_row", "checkpoint_writes_per_s_local"):
        assert summary[key] > 0
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError:
        return
    assert summary["record_writes_per_s_s3"] > 0 and summary["checkpoint_writes_per_s_s3"] > 0
    # through boto3 a record is fewer requests than pyarrow's bare writes of the same two files (1 PUT each, not 3)
    assert 0 < summary["requests_per_record_s3"] <= summary["requests_per_record_s3_bare_files"]


@pytest.mark.slow
def test_diversity_benchmark_quick_mode(tmp_path):
    out = tmp_path / "figures.json"
    result = subprocess.run(
        benchmark("bench_diversity", "--quick", "--json", str(out)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    import json

    figures = json.loads(out.read_text())
    quickstart = figures["sizes"]["saliency_quickstart"]
    assert quickstart["genome_mb"] < quickstart["checkpoint_mb"], "the genome file is the smaller read"
    (generation,) = figures["generations"]
    assert generation["individuals"] == 4 and generation["diversity_s"] > 0


@pytest.mark.slow
def test_halving_benchmark_quick_mode(tmp_path):
    import json

    out = tmp_path / "halving.json"
    result = subprocess.run(
        benchmark("bench_halving", "--quick", "--json", str(out)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the epochs" in result.stdout
    result = json.loads(out.read_text())["tiny"]
    rows = result["same_parent"]
    # 4 offspring, rungs of 1, 2 and 4 epochs: 4 + 2 + 2 of 16 epochs
    assert [r["epochs_halving"] for r in rows] == [8, 8] and [r["epochs_full"] for r in rows] == [16, 16]
    # halving's pick is one of the siblings trained fully (the script raises unless it ended as its full
    # training did); its rank among them is the figure
    assert all(1 <= r["pick_rank"] <= r["offspring"] for r in rows)
    assert [r["generation"] for r in result["lineage"]] == [2, 3]


def test_results_table_is_up_to_date():
    """TABLE.md is generated from the JSON results: a JSON re-measured without regenerating it fails here."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.table", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.slow
def test_images_benchmark_quick_mode(tmp_path):
    """Trainer images/s on a folder of JPEGs it writes, against a bare ImageFolder loop, in one run."""
    out = tmp_path / "images.json"
    result = subprocess.run(
        benchmark("bench_images", "--quick", "--json", str(out)), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    import json

    summary = json.loads(out.read_text())["summary"]
    assert summary["images"] == 45  # 3 classes x 16, one image of each class held out for val
    assert summary["bare_images_per_s"] > 0 and summary["evopop_images_per_s"] > 0
    # images/s are rounded to 0.1 in the summary: on a loaded machine (a few images/s) that is a few percent
    rounding = 0.05 / summary["bare_images_per_s"] + 0.05 / summary["evopop_images_per_s"]
    assert summary["ratio_evopop_vs_bare"] == pytest.approx(
        summary["evopop_images_per_s"] / summary["bare_images_per_s"], rel=0.01 + rounding
    )
    assert summary["data_only_images_per_s"] > summary["bare_images_per_s"], "the data alone is faster than training"


@pytest.mark.slow
def test_population_benchmark_quick_mode(tmp_path):
    """bench_population runs the trivial task through the real engine (local Ray, 2 trainers) at N = 20 in a
    child process, and measures the driver, the object store, the files written and the table's load time."""
    import json

    out = tmp_path / "population.json"
    result = subprocess.run(
        benchmark("bench_population", "--quick", "--json", str(out)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    before = json.loads(out.read_text())["before"]
    (row,) = before["rows"]
    assert row["n"] == 20 and row["storage"] == "local" and row["failed"] == 0
    assert row["offspring_measured"] == 30 and row["last_generation_offspring"] == 20  # 10, then 2 x 10
    assert row["driver_cpu_ms_per_offspring"] > 0 and row["driver_wall_ms_per_offspring"] > 0
    assert row["offspring_own_ms"] > 0 and row["driver_peak_rss_mb"] > 0
    # what generation 3 leaves under the run directory: its records (a part per offspring, or fewer once they are
    # consolidated), at most a checkpoint per offspring, one selection file; every row is read back
    files = row["files_per_generation"]
    assert 1 <= files["population"] <= 20 and 1 <= files["layers"] <= 20 and files["selection"] == 1
    assert files.get("checkpoints", 0) <= 20 and row["files_per_generation_total"] == sum(files.values())
    assert row["population_rows"] == 1 + 30 and row["layers_rows"] == 2 * (1 + 30) and row["load_population_s"] > 0
    # the printed summary block is the JSON's
    block = result.stdout.split("\nsummary\n", 1)[1].splitlines()
    printed = dict(line.split(": ", 1) for line in block if ": " in line)
    assert set(before["summary"]) <= set(printed)


@pytest.mark.slow
def test_scheduling_benchmark_quick_mode(tmp_path):
    """bench_scheduling runs a generation of offspring of very different sizes through the real engine at 1 and 4
    trainers (identical and of different speeds), handed out as listed and longest first, and prints T1 / (n Tn)."""
    import json

    out = tmp_path / "scheduling.json"
    result = subprocess.run(
        benchmark("bench_scheduling", "--quick", "--json", str(out)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    figures = json.loads(out.read_text())
    table = figures["tables"]["long"]
    assert set(table) == {
        "identical/1/longest_first",
        "identical/4/as_listed",
        "identical/4/longest_first",
        "heterogeneous/4/as_listed",
        "heterogeneous/4/longest_first",
    }
    assert table["identical/1/longest_first"]["efficiency"] == pytest.approx(1.0)
    for row in table.values():
        assert row["seconds"] > 0 and row["over_best"] >= 0.9  # never faster than the best schedule of the work
    jobs = figures["runs"]["long"]["identical"]["1"]["longest_first"]
    assert jobs["jobs"] == 8 and jobs["longest_s"] > 10 * jobs["shortest_s"]  # sizes that differ, as designed
    block = result.stdout.split("\nsummary\n", 1)[1].splitlines()
    printed = dict(line.split(": ", 1) for line in block if ": " in line)
    assert set(figures["summary"]) <= set(printed)
