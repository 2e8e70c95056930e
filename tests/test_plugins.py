"""A user's task found where the user put it: next to its config file, or in the current folder, in a
fresh process with no PYTHONPATH, on the driver and on every trainer."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from evopop.config import load_config
from evopop.tasks.registry import build_task

PLUGIN = textwrap.dedent(
    """
    from evopop.tasks.classification import ShapesTask

    from pet_helpers import SIZE  # a neighbour module: the plugin's folder is on the path


    def pets(**kwargs):
        return ShapesTask(train_size=128, val_size=64, image_size=SIZE, widths=(4, 8), hidden=16, **kwargs)
    """
)
CONFIG = textwrap.dedent(
    """
    run: {name: pets, seed: 3}
    task: {name: "pet_task:pets", args: {num_classes: 3}}
    train: {epochs: 1, batch_size: 32}
    evolution: {generations: 2, offspring: 2}
    resources: {trainers: 1, cpus_per_trainer: 1}
    compaction: {enabled: false}
    """
)


@pytest.fixture
def project(tmp_path) -> Path:
    """A project folder with a config and its plugin (and the plugin's neighbour) in a subfolder."""
    plugins = tmp_path / "project" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "pet_task.py").write_text(PLUGIN)
    (plugins / "pet_helpers.py").write_text("SIZE = 12\n")
    (plugins / "pets.yaml").write_text(CONFIG)
    return tmp_path / "project"


def test_a_config_file_adds_its_folder_relative_to_the_current_one(project, monkeypatch):
    monkeypatch.chdir(project)
    assert load_config("plugins/pets.yaml").task.paths == ["plugins"]
    monkeypatch.chdir(project.parent)
    assert load_config(project / "plugins" / "pets.yaml").task.paths == ["project/plugins"]
    assert load_config({"task": {"name": "pet_task:pets"}}).task.paths == [], "a config from a dict has no folder"
    assert load_config("project/plugins/pets.yaml", ["task.name=shapes"]).task.paths == [], "a built-in task needs none"


def test_a_task_module_nowhere_says_where_it_was_looked_for(project, monkeypatch):
    monkeypatch.chdir(project)
    with pytest.raises(ValueError, match=r"module 'pet_task' .* not in .*/project/elsewhere, .*/project \("):
        build_task("pet_task:pets", {}, ["elsewhere"])
    monkeypatch.syspath_prepend(str(project / "plugins"))  # found on sys.path, a neighbour missing: said as such
    (project / "plugins" / "pet_helpers.py").unlink()
    with pytest.raises(ValueError, match="cannot import module 'pet_task' for task 'pet_task:pets': No module named"):
        build_task("pet_task:pets", {})


@pytest.mark.slow
def test_a_plugin_next_to_its_config_runs_on_ray_trainers_in_a_fresh_process(project):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    result = subprocess.run(
        [sys.executable, "-m", "evopop", "run", "plugins/pets.yaml", "--run-dir", "runs/pets"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    population = pd.read_parquet(project / "runs" / "pets" / "population")
    assert len(population) == 3 and (population["status"] == "ok").all()
    assert population["node_id"].notna().all(), "developed by Ray trainers, which imported the plugin too"
