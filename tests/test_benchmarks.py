"""The benchmarks run (their quick modes), so that the README's figures can always be re-measured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_compaction_benchmark_quick_mode(tmp_path):
    out = tmp_path / "rows.json"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_compaction.py"), "--quick", "--json", str(out)],
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
