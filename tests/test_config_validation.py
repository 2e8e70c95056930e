"""Bad configs and bad inputs: each gets one clear message naming the field, exit code 2, before Ray.

`python tests/test_config_validation.py` prints the table of cases and messages.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evopop.cli import main
from evopop.config import ConfigError, load_config
from evopop.engine.plan import plan_run
from evopop.records.locks import RunLockedError
from evopop.records.run import RunRecords

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")

# (overrides, text the message must contain)
CONFIG_CASES = [
    (["evolution.environment.c=0"], "evolution.environment.c: C must be in (0, 1]"),
    (["evolution.environment.c=1.5"], "evolution.environment.c: C must be in (0, 1]"),
    (["evolution.environment.c=-0.2"], "evolution.environment.c: C must be in (0, 1]"),
    (["evolution.environment.c=.nan"], "evolution.environment.c: C must be in (0, 1]"),
    (
        ["evolution.environment.mode=linear"],
        "evolution.environment.mode: Input should be 'scale', 'budget' or 'network'",
    ),
    (["evolution.environment.layers={'features.*': 2.0}"], "C of layers 'features.*' must be in (0, 1]"),
    (["evolution.environment.schedule={1: 0.5}"], "schedule generations start at 2"),
    (["evolution.environment.schedule={3: 0}"], "C of generation 3 must be in (0, 1]"),
    (["evolution.environment.sharpness=0"], "evolution.environment.sharpness: Input should be greater than 0"),
    (
        ["evolution.environment.sharpness=60"],
        "evolution.environment.sharpness: Input should be less than or equal to 50",
    ),
    (["evolution.environment.adapt={factor: 2}"], "evolution.environment.adapt.max_drop: Field required"),
    (["evolution.environment.adapt={max_drop: 0.01, factor: 1}"], "adapt.factor: Input should be greater than 1"),
    (["evolution.environment.adapt={max_drop: 0.01, factor: .inf}"], "adapt.factor: Input should be less than or"),
    (["evolution.environment={c: 0.03, adapt: {max_drop: 0.01}}"], "adapt.min_c (0.05) must not exceed c (0.03)"),
    (["evolution.environment={c: 1.0, adapt: {max_drop: 0.01}}"], "adapt needs c below 1"),
    (
        ["evolution.environment.adapt={max_drop: 0.01}", "evolution.environment.schedule={3: 0.5}"],
        "adapt and schedule both set C per generation",
    ),
    (
        ["evolution.encoding=cluster", "evolution.clusters.adapt={max_drop: 0.01}"],
        "clusters.adapt is not supported",
    ),
    (["train.schedule=sgdr"], "train.schedule: Input should be 'constant', 'cosine', 'step' or 'restarts'"),
    (["train.cycles=0"], "train.cycles: Input should be greater than or equal to 1"),
    (["evolution.enviroment.c=0.5"], "evolution.enviroment: unknown key; did you mean 'environment'?"),
    (["evolution.generations=0"], "evolution.generations: Input should be greater than or equal to 1"),
    (["evolution.offspring=-3"], "evolution.offspring: Input should be greater than or equal to 1"),
    (["evolution.init=random"], "evolution.init: Input should be 'inherit' or 'reinit'"),
    (["evolution.normalizer=median"], "evolution.normalizer: Input should be 'layer' or 'global'"),
    (["train.lr=0"], "train.lr: Input should be greater than 0"),
    (["train.epochs=two"], "train.epochs: Input should be a valid integer"),
    (["train.optimizer=lbfgs"], "train.optimizer: Input should be 'sgd', 'adam' or 'adamw'"),
    (["train.momentum=1.0"], "train.momentum: Input should be less than 1"),
    (["train.batchsize=32"], "train.batchsize: unknown key; did you mean 'batch_size'?"),
    (["selection.rule=worst"], "selection.rule: Input should be 'best', 'topk' or 'all'"),
    (["selection.k=0"], "selection.k: Input should be greater than or equal to 1"),
    (["selection.direction=up"], "selection.direction: Input should be 'max' or 'min'"),
    (["resources.trainers=0"], "resources.trainers: Input should be greater than or equal to 1"),
    (["resources.gpus_per_trainer=1.5"], "gpus_per_trainer above 1 must be a whole number"),
    (["resources.cpus_per_trainer=0"], "resources.cpus_per_trainer: Input should be greater than 0"),
    (["resources.custom={A100: 0}"], "custom resource 'A100' must be > 0"),
    (["run.name=../escape"], "run.name: String should match pattern"),
    (["run.seed=-1"], "run.seed: Input should be greater than or equal to 0"),
    (["ancestor.checkpoint=/does/not/exist.pt"], "ancestor.checkpoint: file not found: /does/not/exist.pt"),
    (["colour=blue"], "colour: unknown key"),
    (["train=3"], "train: Input should be a valid dictionary"),
    (["train.lr"], "not of the form dotted.key=value"),
    (["train.lr=[1, 2"], "value is not valid YAML"),
]

# (overrides, text) found by the preflight (task built, network traced) — still before Ray starts
PLAN_CASES = [
    (["task.name=no_such_task"], "unknown task 'no_such_task'"),
    (["task.name=no_such_module:factory"], "cannot import module 'no_such_module'"),
    (["task.name=user_tasks:missing"], "module 'user_tasks' has no attribute 'missing'"),
    (["task.args={widths: [4], colour: red}"], "does not accept these args"),
    (["task.args={train_size: 0}"], "task.args.train_size must be >= 1"),
    (
        ["selection.metric=val_f1"],
        "selection.metric: 'val_f1' is not measured by task 'shapes'; allowed: val_loss, val_accuracy",
    ),
    (
        ["evolution.environment.frozen=[head.*]"],
        "evolution.environment.frozen: pattern 'head.*' matches no synaptic layer",
    ),
    (
        ["evolution.environment.layers={'fc*': 0.5}"],
        "evolution.environment.layers: pattern 'fc*' matches no synaptic layer",
    ),
]


@pytest.mark.parametrize("overrides,message", CONFIG_CASES, ids=[c[0][0][:40] for c in CONFIG_CASES])
def test_bad_config_value(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, overrides)
    assert message in str(err.value)


@pytest.mark.parametrize("overrides,message", PLAN_CASES, ids=[c[0][0][:40] for c in PLAN_CASES])
def test_bad_task_or_reference_found_before_ray(overrides, message):
    sys.path.insert(0, str(Path(__file__).parent))
    config = load_config(TINY, overrides)
    with pytest.raises(ConfigError) as err:
        plan_run(config)
    assert message in str(err.value)


def tiny_model():
    from evopop.tasks.registry import build_task

    return build_task("shapes", load_config(TINY).task.args).build_model()


def test_ancestor_checkpoint_of_another_architecture(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(
        ConfigError, match="ancestor.checkpoint: ancestor checkpoint .* does not fit the task's network"
    ):
        plan_run(load_config(TINY, [f"ancestor.checkpoint={path}"]))


def test_ancestor_checkpoint_with_masks_of_wrong_shape(tmp_path):
    model = tiny_model()
    masks = {
        name: torch.ones(2, 2, dtype=torch.bool)
        for name in ("features.0", "features.4", "classifier.1", "classifier.3")
    }
    path = tmp_path / "bad_masks.pt"
    torch.save({"weights": model.state_dict(), "masks": masks, "meta": "{}"}, path)
    with pytest.raises(ConfigError, match=r"mask of layer 'features.0' has shape \(2, 2\)"):
        plan_run(load_config(TINY, [f"ancestor.checkpoint={path}"]))


def test_corrupt_ancestor_checkpoint(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConfigError, match="is not a readable torch file"):
        plan_run(load_config(TINY, [f"ancestor.checkpoint={path}"]))


def test_config_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_config(listy)


def test_cli_exits_2_before_ray_starts(tmp_path):
    """A wrong config fails in about a second, with exit code 2 and no Ray started."""
    proc = subprocess.run(
        [sys.executable, "-m", "evopop", "run", TINY, "evolution.environment.c=2", "--run-dir", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(ROOT),
    )
    assert proc.returncode == 2
    assert "evolution.environment.c: C must be in (0, 1], got 2" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout
    assert not (tmp_path / "r").exists(), "nothing is written for a rejected config"


def test_run_dir_already_holding_a_run_and_resume_of_nothing(tmp_path, capsys):
    records = RunRecords(str(tmp_path / "run"))
    records.write_config(load_config(TINY).to_yaml())
    assert main(["run", TINY, "--run-dir", str(tmp_path / "run")]) == 2
    assert "already holds a run; use 'evopop resume" in capsys.readouterr().err
    assert main(["resume", str(tmp_path / "empty")]) == 2
    assert "no evopop run here" in capsys.readouterr().err


def test_two_drivers_never_share_a_run_directory(tmp_path):
    records = RunRecords(str(tmp_path / "run"))
    records.storage.makedirs()
    lock = tmp_path / "run" / ".lock"
    lock.write_text(f'{{"host": "{socket.gethostname()}", "pid": {os.getppid()}, "since": "now"}}')
    with pytest.raises(RunLockedError, match=f"being driven by pid {os.getppid()}"):
        with records.lock():
            pass
    lock.write_text(f'{{"host": "{socket.gethostname()}", "pid": 999999999, "since": "then"}}')
    with records.lock():  # a dead driver's lock is taken over
        assert str(os.getpid()) in lock.read_text()
    assert not lock.exists()


def test_individual_ids_cannot_escape_the_run_directory():
    from evopop.records.run import check_individual_id

    for bad in ["../../etc/passwd", "/abs", "a/b", "..", "", "x" * 200]:
        with pytest.raises(ValueError, match="invalid individual id"):
            check_individual_id(bad)


def test_resources_the_cluster_can_never_satisfy(ray_cluster):
    from evopop.engine.ray.cluster import check_resources

    for overrides, message in [
        (["resources.gpus_per_trainer=8"], "resources.gpus_per_trainer: 8.0 GPUs per trainer, but the cluster has"),
        (["resources.cpus_per_trainer=64"], "resources.cpus_per_trainer: 64.0 CPUs per trainer, but the cluster has"),
        (["resources.custom={TPU: 1}"], "resources.custom.TPU: 1.0 per trainer, but the cluster has 0"),
    ]:
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            check_resources(load_config(TINY, overrides).resources)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    for overrides, _ in CONFIG_CASES + PLAN_CASES:
        try:
            plan_run(load_config(TINY, overrides))
            print(f"| `{' '.join(overrides)}` | (accepted!) |")
        except ConfigError as exc:
            print(f"| `{' '.join(overrides)}` | {str(exc).replace(chr(10), ' ')} |")
