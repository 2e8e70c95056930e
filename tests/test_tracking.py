"""A run followed in TensorBoard and MLflow, read back with their own readers: the values the Parquet
records hold, and no point twice after a run is stopped and resumed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from evopop.api import evolve
from evopop.config import ConfigError, load_config
from evopop.engine.failures import RunStopped

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tracked_config(tmp_path, *overrides: str):
    return load_config(
        CONFIGS / "tiny.yaml",
        [
            "resources.executor=local",
            "evolution.generations=3",
            "evolution.offspring=2",
            "train.epochs=1",
            "tracking.tensorboard=true",
            f"tracking.mlflow=sqlite:///{tmp_path / 'mlflow.db'}",
            "tracking.experiment=evopop-tests",
            *overrides,
        ],
    )


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of one TensorBoard run folder, read with TensorBoard's own reader: tag -> (step, value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def mlflow_runs(tmp_path) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["evopop-tests"])


def test_tensorboard_and_mlflow_hold_what_the_records_hold(tmp_path):
    from mlflow.tracking import MlflowClient

    from evopop.records.run import RunRecords

    run_dir = tmp_path / "run"
    population = evolve(tracked_config(tmp_path, "train.epochs=2"), str(run_dir)).set_index("individual_id")
    board = run_dir / "tensorboard"
    assert {p.name for p in board.iterdir()} == {*population.index, "population"}
    for individual_id, row in population.iterrows():
        values = scalars(board / individual_id)
        assert values["val_accuracy"] == [(row["generation"], pytest.approx(row["val_accuracy"]))]
        assert values["synapses"] == [(row["generation"], float(row["synapses"]))]
        curve = [(epoch, pytest.approx(loss)) for epoch, loss in enumerate(row["train_loss"], start=1)]
        assert len(curve) == 2 and values["train_loss"] == curve, "the training curve, epoch by epoch"
    selected = population[population["selected"]]
    summary = scalars(board / "population")
    assert [step for step, _ in summary["best_val_accuracy"]] == [1, 2, 3]
    for step, value in summary["best_synapses"]:
        assert value == float(selected.loc[selected["generation"] == step, "synapses"].iloc[0])
    diversity = RunRecords(str(run_dir)).diversity_summary()
    network = diversity[(diversity["group"] == "generation") & (diversity["scope"] == "network")]
    assert not network.empty
    for _, row in network.dropna(subset=["mean"]).iterrows():
        tracked = dict(summary[f"diversity/{row['quantity']}"])
        assert tracked[row["generation"]] == pytest.approx(row["mean"]), (row["quantity"], row["generation"])

    runs = mlflow_runs(tmp_path)
    parent = runs[runs["tags.evopop.individual_id"].isna()]
    children = runs[runs["tags.evopop.individual_id"].notna()].set_index("tags.evopop.individual_id")
    assert len(parent) == 1 and parent["status"].iloc[0] == "FINISHED"
    assert set(children.index) == set(population.index)
    assert (children["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]).all()
    for individual_id, row in population.iterrows():
        child = children.loc[individual_id]
        assert child["metrics.val_accuracy"] == pytest.approx(row["val_accuracy"])
        assert child["metrics.synapses"] == row["synapses"]
        assert child["tags.evopop.lineage"] == "/".join(row["lineage"])
        assert child["tags.evopop.generation"] == str(row["generation"])
        history = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(child["run_id"], "train_loss")
        assert [(m.step, m.value) for m in history] == [
            (epoch, pytest.approx(loss)) for epoch, loss in enumerate(row["train_loss"], start=1)
        ]
    parent_id = parent["run_id"].iloc[0]
    quantity = network.dropna(subset=["mean"])["quantity"].iloc[0]
    history = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(parent_id, f"diversity/{quantity}")
    assert sorted(m.step for m in history) == sorted(network[network["quantity"] == quantity]["generation"])


def test_a_run_stopped_and_resumed_tracks_every_point_once(tmp_path, monkeypatch):
    from evopop.engine.hooks import Hook

    class Kill(Hook):
        def __init__(self):
            self.seen = 0

        def recorded(self, record):
            self.seen += 1
            if self.seen == 4:  # mid-generation 3: g1-0, g2-0, g2-1, then one of generation 3
                raise RunStopped("killed")

    from evopop.api import evolution
    from evopop.engine.plan import plan_run

    config = tracked_config(tmp_path)
    run_dir = str(tmp_path / "run")
    plan = plan_run(config)
    first = evolution(config, run_dir, plan=plan)
    first.hooks.append(Kill())
    with pytest.raises(RunStopped):
        first.run()
    population = evolve(config, run_dir).set_index("individual_id")  # resumed
    assert len(population) == 5
    board = tmp_path / "run" / "tensorboard"
    for individual_id in population.index:
        assert [len(points) for points in scalars(board / individual_id).values()] == [1] * len(
            scalars(board / individual_id)
        ), individual_id
    summary = scalars(board / "population")
    assert sorted(step for step, _ in summary["best_val_accuracy"]) == [1, 2, 3], "each generation once"
    for tag in (t for t in summary if t.startswith("diversity/")):
        steps = [step for step, _ in summary[tag]]
        assert len(steps) == len(set(steps)), f"{tag}: a generation's diversity tracked twice"
    runs = mlflow_runs(tmp_path)
    children = runs[runs["tags.evopop.individual_id"].notna()]
    assert sorted(children["tags.evopop.individual_id"]) == sorted(population.index), "each individual once"
    assert (runs["tags.evopop.individual_id"].isna()).sum() == 1, "the same parent run, continued"


def test_tracking_that_cannot_be_says_so_before_any_work(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(ConfigError, match=r"tracking.mlflow needs MLflow: pip install 'evopop\[mlflow\]'"):
        evolve(tracked_config(tmp_path), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists(), "no run directory left behind: the same command works once fixed"
    config = tracked_config(tmp_path, "tracking.mlflow=null")
    with pytest.raises(ConfigError, match="tracking.tensorboard: the run directory is on an object store"):
        from evopop.analysis.tracking import tracking_hooks
        from evopop.engine.plan import plan_run

        class OnObjectStore:  # a run directory such as s3://bucket/run: no local folder for event files
            def tensorboard_dir(self):
                return None

        tracking_hooks(config, OnObjectStore(), plan_run(config))
