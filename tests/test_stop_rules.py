"""Stop rules (issue 13, part 5): a collapsed lineage or a reached efficiency target ends the run; the
progress output, `show` and the report say why; a resumed run replays the same decision."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from evopop.analysis.loading import load_run
from evopop.api import evolve
from evopop.config import ConfigError, load_config
from evopop.engine.plan import plan_run
from evopop.engine.policy.stopping import StopRule, relative_drop
from evopop.records.run import RunRecords
from evopop.records.schema import IndividualRecord

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def individual(individual_id: str, accuracy: float, loss: float, efficiency: float) -> IndividualRecord:
    return IndividualRecord(
        individual_id=individual_id, efficiency=efficiency, metrics={"val_accuracy": accuracy, "val_loss": loss}
    )


ANCESTOR = individual("g1-0", 0.90, 0.30, 1.0)


def test_relative_drop_follows_the_metrics_direction():
    assert relative_drop(0.90, 0.855, "max") == pytest.approx(0.05)
    assert relative_drop(0.90, 0.95, "max") == pytest.approx(-0.05 / 0.9)  # better: negative
    assert relative_drop(0.30, 0.36, "min") == pytest.approx(0.2)  # a loss that rose 20 %
    assert relative_drop(0.0, 0.5, "max") is None and relative_drop(0.9, float("nan"), "max") is None


def test_a_lineage_that_fell_too_far_stops_the_run():
    rule = StopRule(max_drop=0.03, efficiency=None, metric="val_accuracy", direction="max")
    assert rule.reason(ANCESTOR, individual("g3-1", 0.88, 0.3, 4.0)) is None  # 2.2 % below: goes on
    reason = rule.reason(ANCESTOR, individual("g4-2", 0.85, 0.3, 8.0))
    assert "val_accuracy (0.8500, g4-2) fell 5.6% below the ancestor's (0.9000)" in reason
    assert "evolution.stop.max_drop 3.0%" in reason
    loss_rule = StopRule(max_drop=0.1, efficiency=None, metric="val_loss", direction="min")
    assert loss_rule.reason(ANCESTOR, individual("g2-0", 0.9, 0.34, 2.0)) is not None  # 13 % worse


def test_an_efficiency_target_stops_the_run():
    rule = StopRule(max_drop=None, efficiency=40, metric="val_accuracy", direction="max")
    assert rule.reason(ANCESTOR, individual("g4-0", 0.8, 0.3, 39.9)) is None
    assert "reached 48.00x fewer synapses (g5-0), evolution.stop.efficiency 40x" in rule.reason(
        ANCESTOR, individual("g5-0", 0.8, 0.3, 48.0)
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("evolution.stop.metric=val_fbeta", "evolution.stop.metric: 'val_fbeta' is not measured by task 'shapes'"),
        ("evolution.stop.max_drop=0", "evolution.stop.max_drop: Input should be greater than 0"),
        ("evolution.stop.efficiency=0.5", "evolution.stop.efficiency: Input should be greater than 1"),
    ],
)
def test_bad_stop_rules_are_refused_before_any_work(override, message):
    with pytest.raises(ConfigError, match=message):
        plan_run(load_config(TINY, [override]))


def test_an_empty_config_file_is_an_error_not_a_default_run(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="the config file is empty"):
        load_config(empty)
    cli = subprocess.run([sys.executable, "-m", "evopop", "run", str(empty)], capture_output=True, text=True)
    assert cli.returncode == 2 and "the config file is empty" in cli.stderr


def test_a_run_that_reaches_its_efficiency_target_stops_and_says_why(tmp_path, capsys):
    overrides = [
        "resources.executor=local",
        "compaction.enabled=false",
        "evolution.generations=6",
        "evolution.stop.efficiency=2.5",  # tiny's lineage: ~1.7x at generation 2, ~2.8x at 3
    ]
    config = load_config(TINY, overrides)
    run_dir = str(tmp_path / "run")
    RunRecords(run_dir).write_config(config.to_yaml())
    population = evolve(config, run_dir)
    out = capsys.readouterr().out
    assert sorted(population["generation"].unique()) == [1, 2, 3]
    assert "stopped after generation 3: the lineage reached" in out

    stop = RunRecords(run_dir).read_stop()
    assert stop["generation"] == 3 and "evolution.stop.efficiency 2.5x" in stop["reason"]
    run = load_run(run_dir)
    assert run.finished and run.progress().startswith("stopped after generation 3 of 6: the lineage reached")
    show = subprocess.run([sys.executable, "-m", "evopop", "show", run_dir], capture_output=True, text=True)
    assert show.returncode == 0 and "stopped after generation 3 of 6" in show.stdout

    again = evolve(config, run_dir)  # resumed: the same decision, nothing new developed
    assert len(again) == len(population) and "g4-0" not in set(again["individual_id"])


def test_a_lineage_whose_metric_is_no_longer_a_number_has_collapsed():
    rule = StopRule(max_drop=0.03, efficiency=None, metric="val_accuracy", direction="max")
    assert "is nan" in rule.reason(ANCESTOR, individual("g5-0", float("nan"), 0.3, 50.0))


def test_the_direction_of_a_stop_metric_other_than_the_selection_metric(tmp_path):
    config = load_config(ROOT / "configs" / "saliency_quickstart.yaml", ["evolution.stop.max_drop=0.1"])
    assert plan_run(config).stop.direction == "max"  # val_fbeta_max, the selection metric
    mae = load_config(
        ROOT / "configs" / "saliency_quickstart.yaml", ["evolution.stop.max_drop=0.1", "evolution.stop.metric=val_mae"]
    )
    rule = plan_run(mae).stop
    assert (rule.metric, rule.direction) == ("val_mae", "min"), "an error is minimised"
    told = load_config(
        ROOT / "configs" / "saliency_quickstart.yaml",
        ["evolution.stop.max_drop=0.1", "evolution.stop.metric=val_smeasure", "evolution.stop.direction=max"],
    )
    assert plan_run(told).stop.direction == "max"
    a = IndividualRecord(individual_id="g1-0", metrics={"val_mae": 0.06})
    assert rule.reason(a, IndividualRecord(individual_id="g3-0", metrics={"val_mae": 0.05})) is None, "better"
    assert rule.reason(a, IndividualRecord(individual_id="g3-0", metrics={"val_mae": 0.5})) is not None


def test_the_last_generation_ends_the_run_without_a_stop_record(tmp_path):
    config = load_config(
        TINY,
        [
            "resources.executor=local",
            "compaction.enabled=false",
            "evolution.generations=2",
            "evolution.stop.efficiency=1.2",
        ],
    )
    run_dir = str(tmp_path / "run")
    RunRecords(run_dir).write_config(config.to_yaml())
    evolve(config, run_dir)
    assert RunRecords(run_dir).read_stop() is None and load_run(run_dir).progress().startswith("finished: 2")


def test_a_metric_direction_unless_told_the_task_s_for_its_own_and_min_for_losses_and_errors():
    from evopop.engine.plan import metric_direction, selection_metric

    assert selection_metric(None, None, "val_accuracy") == ("val_accuracy", "max")
    assert selection_metric("val_loss", None, "val_accuracy") == ("val_loss", "min")
    assert selection_metric("val_mae", None, "val_fbeta") == ("val_mae", "min")  # an error: lower is better
    assert selection_metric("val_mae", "max", "val_fbeta") == ("val_mae", "max")  # told
    # a task whose own metric is minimised keeps that direction for its other measurements too
    assert metric_direction("test_rmse", "val_rmse", "min") == "min"
    assert metric_direction("val_rmse", "val_rmse", "min") == "min"


def test_a_resumed_run_keeps_the_direction_its_records_were_selected_by():
    from evopop.api import recorded_direction
    from evopop.engine.plan import Plan
    from evopop.records.run import RunMetadata

    class Records:
        def __init__(self, metric, direction):
            self.meta = RunMetadata(["val_mae"], [], metric, direction)

        def metadata(self):
            return self.meta

    plan = Plan("val_mae", "min", ["val_mae"], [], 0)
    assert recorded_direction(plan, Records("val_mae", "max")).direction == "max"  # started under the old rule
    assert recorded_direction(plan, Records("val_mae", None)) is plan  # nothing recorded yet
    assert recorded_direction(plan, Records("val_fbeta", "max")) is plan  # another metric: not this run's rule
