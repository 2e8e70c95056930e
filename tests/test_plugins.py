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


NETS = textwrap.dedent(
    """
    from torch import nn


    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(8, 1000)

        def forward(self, x):
            return self.fc(self.body(x))


    def plain():  # no num_classes: evopop replaces its head (`fc`) for the folder's classes
        return Plain()
    """
)


@pytest.mark.slow
def test_a_model_by_import_path_next_to_its_config_runs_and_exports_in_fresh_processes(project, tmp_path):
    """``model: mynets:plain`` (a factory without num_classes) in a folder beside the config: its head is
    replaced for the folder's classes, the run finds it with no PYTHONPATH, and so does `evopop export`."""
    from test_images_task import write_images

    write_images(project / "images", 6)
    (project / "plugins" / "mynets.py").write_text(NETS)
    (project / "plugins" / "nets.yaml").write_text(
        textwrap.dedent(
            """
            run: {name: nets, seed: 2}
            task: {name: images, args: {root: images, model: "mynets:plain", image_size: 16, val_fraction: 0.3}}
            train: {epochs: 1, batch_size: 8}
            evolution: {generations: 2, offspring: 1}
            resources: {executor: local}
            diversity: {enabled: false}
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}

    def evopop(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "evopop", *args]
        return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300)

    ran = evopop("run", "plugins/nets.yaml", "--run-dir", "runs/nets")
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "one offspring drawn now keeps" in ran.stdout
    exported = evopop("export", "runs/nets", "g2-0", "--out", str(tmp_path / "g2-0.pt2"))
    assert exported.returncode == 0, exported.stdout[-3000:] + exported.stderr[-3000:]
    import torch

    program = torch.export.load(str(tmp_path / "g2-0.pt2")).module()
    assert program(torch.randn(2, 3, 16, 16)).shape == (2, 3), "three classes, from the folder"
