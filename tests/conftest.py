"""Shared fixtures: one Ray cluster for the whole test session (starting one costs ~5 s).

It is a `ray.cluster_utils.Cluster`, so fault-tolerance tests can add worker nodes and remove them
(a lost node) while the other tests use its head node like any local cluster.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    from ray.cluster_utils import Cluster

    # Ray workers must import test-only modules (user tasks given by import path), as users' do.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
    # Two fake GPUs: scheduling-only, so GPU placement and fractional packing are testable on CPU.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 2, "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
