"""Selection on measured speed (``selection.latency``): a latency budget, or Pareto fronts over the metric
and the compacted network's latency."""

from __future__ import annotations

import pytest

from evopop.config import ConfigError, load_config
from evopop.engine.policy.selection import LatencyRule, pareto_fronts, rank, select
from evopop.records.schema import IndividualRecord

RULE = "latency_cpu_b32_ms"


def individual(name: str, accuracy: float, ms: float | None, status: str = "ok") -> IndividualRecord:
    return IndividualRecord(
        individual_id=name, status=status, metrics={"val_accuracy": accuracy}, latency_cpu_b32_ms=ms
    )


POPULATION = [
    individual("g2-0", 0.90, 10.0),  # the most accurate, slow
    individual("g2-1", 0.85, 6.0),
    individual("g2-2", 0.80, 4.0),  # fast
    individual("g2-3", 0.70, 5.0),  # dominated by g2-2
    individual("g2-4", 0.95, None),  # no latency measured: the slowest
    individual("g2-5", 0.99, 1.0, status="failed"),
]


def test_without_a_latency_rule_the_metric_alone_ranks():
    assert rank(POPULATION, "val_accuracy", "max") == ["g2-4", "g2-0", "g2-1", "g2-2", "g2-3"]


def test_a_budget_ranks_the_feasible_by_the_metric_then_the_others_fastest_first():
    rule = LatencyRule(RULE, budget=0.6)  # within 0.6 x 10 ms
    ranking, selected = select(POPULATION, "topk", 2, "val_accuracy", "max", rule, reference_ms=10.0)
    assert ranking == ["g2-1", "g2-2", "g2-3", "g2-0", "g2-4"]
    assert selected == ["g2-1", "g2-2"]
    tight = LatencyRule(RULE, budget=0.1)  # nobody within 1 ms: the fastest lead
    assert rank(POPULATION, "val_accuracy", "max", tight, 10.0)[:2] == ["g2-2", "g2-3"]


def test_pareto_ranks_front_by_front():
    rule = LatencyRule(RULE, pareto=True)
    # front 0: g2-4 (best metric, though unmeasured), g2-0, g2-1, g2-2; then g2-3, dominated by g2-2
    assert rank(POPULATION, "val_accuracy", "max", rule) == ["g2-4", "g2-0", "g2-1", "g2-2", "g2-3"]
    slow_best = [individual("a", 0.9, 10.0), individual("b", 0.8, 5.0), individual("c", 0.85, 12.0)]
    assert rank(slow_best, "val_accuracy", "max", rule) == ["a", "b", "c"]  # c is dominated by a


def test_pareto_fronts_of_points():
    points = [(1.0, 5.0), (2.0, 2.0), (3.0, 1.0), (2.0, 3.0), (4.0, 4.0), (1.0, 5.0)]
    assert pareto_fronts(points) == [0, 0, 0, 1, 2, 0]  # equal points do not dominate each other


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["selection.latency={}"], "set either budget"),
        (["selection.latency={budget: 0.5, pareto: true}"], "set either budget"),
        (["selection.latency={budget: 0}"], "selection.latency.budget"),
        (["selection.latency={measure: tpu, pareto: true}"], "selection.latency.measure"),
        (["selection.latency={pareto: true}", "compaction.enabled=false"], "needs compaction.enabled"),
    ],
)
def test_bad_latency_rules_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/tiny.yaml", overrides)


@pytest.mark.slow
def test_a_run_selects_from_the_first_pareto_front(tmp_path):
    """End to end (local executor): every selected offspring is on its generation's first front of
    (val_accuracy, measured latency at batch 32), and the ranking recorded follows the rule."""
    from evopop.api import evolve

    config = load_config(
        "configs/tiny.yaml",
        ["resources.executor=local", "selection.latency={pareto: true}", "evolution.encoding=cluster"],
    )
    population = evolve(config, str(tmp_path / "run"))
    rule = LatencyRule(RULE, pareto=True)
    for generation in (2, 3):
        rows = population[(population["generation"] == generation) & (population["status"] == "ok")]
        records = [individual(r.individual_id, r.val_accuracy, r.latency_cpu_b32_ms) for r in rows.itertuples()]
        chosen = rows[rows["selected"].astype(bool)]["individual_id"].tolist()
        assert chosen == rank(records, "val_accuracy", "max", rule)[:1]
        fronts = dict(
            zip(
                [r.individual_id for r in records],
                pareto_fronts([(-r.metric("val_accuracy"), rule.latency(r)) for r in records]),
            )
        )
        assert fronts[chosen[0]] == 0
