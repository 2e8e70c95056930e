"""Shared fixtures: one local Ray cluster for the whole test session (starting one costs ~5 s)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    # Ray workers must import test-only modules (user tasks given by import path), as users' do.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
    # Two fake GPUs: scheduling-only, so GPU placement and fractional packing are testable on CPU.
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
