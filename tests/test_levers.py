"""The levers of issue 13, part 6, whose defaults keep the paper's method: an environment that adapts
C to each lineage's loss, warm restarts, and a run under the network-wide budget with a sharp model
(the probability model's statistics are in test_synthesis_statistics.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from evopop.api import evolve
from evopop.config import load_config
from evopop.engine.hooks import Hook
from evopop.engine.policy.adaptation import Adaptation
from evopop.records.run import RunRecords
from evopop.records.schema import IndividualRecord
from evopop.training.loop import Recipe, make_schedule

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
LOCAL = ["resources.executor=local", "compaction.enabled=false", "diversity.enabled=false"]


def record(individual_id, parent_id, accuracy, c=None) -> IndividualRecord:
    return IndividualRecord(
        individual_id=individual_id, parent_id=parent_id, env_factor=c, metrics={"val_accuracy": accuracy}
    )


def test_the_pressure_backs_off_after_a_loss_and_grows_after_none():
    rule = Adaptation(max_drop=0.02, factor=2.0, min_c=0.1)
    assert rule.next_factor(0.25, 0.05) == pytest.approx(0.5)  # lost 5 % > 2 %: -ln C halves
    assert rule.next_factor(0.5, 0.001) == pytest.approx(0.25)  # lost 0.1 % < 1 %: -ln C doubles
    assert rule.next_factor(0.5, -0.01) == pytest.approx(0.25)  # gained: the same
    assert rule.next_factor(0.5, 0.015) == 0.5  # between half of max_drop and max_drop: C stays
    assert rule.next_factor(0.25, 0.0) == pytest.approx(0.1)  # would be 0.0625: bounded by min_c
    assert rule.next_factor(0.5, None) == 0.5 and rule.next_factor(1.0, 0.0) == 1.0


def test_each_lineage_gets_its_own_c_and_the_roots_offspring_the_configured_one():
    rule = Adaptation(max_drop=0.02, factor=2.0, min_c=0.05)
    root = record("g1-0", None, 0.90)
    parents = {"g2-0": record("g2-0", "g1-0", 0.90, 0.25)}
    ancestors = [record("g3-1", "g2-0", 0.80, 0.25), record("g3-2", "g2-0", 0.90, 0.25)]
    assert rule.factors([root], {}, 0.5, "val_accuracy", "max") == {"g1-0": 0.5}
    assert rule.factors(ancestors, parents, 0.5, "val_accuracy", "max") == pytest.approx({"g3-1": 0.5, "g3-2": 0.0625})


class Interrupt(Hook):
    """Ends the run once ``generation`` is selected, as a killed driver would (its records stay)."""

    def __init__(self, generation: int):
        self.generation = generation

    def selected(self, generation, selected):
        if generation == self.generation:
            raise KeyboardInterrupt


def env_factors(run_dir: str, generations) -> dict[str, float]:
    records = RunRecords(run_dir)
    return {r.individual_id: r.env_factor for g in generations for r in records.individuals(g)}


def test_an_adaptive_run_records_each_lineages_c_and_replays_it_on_resume(tmp_path):
    overrides = LOCAL + [
        "evolution.generations=4",
        "evolution.environment={c: 0.6, mode: budget, adapt: {max_drop: 0.001, factor: 2.0, min_c: 0.2}}",
        "selection.rule=topk",
        "selection.k=2",
    ]
    config = load_config(TINY, overrides)
    run_dir = str(tmp_path / "run")
    evolve(config, run_dir)
    records = RunRecords(run_dir)
    rule = Adaptation.of(config.evolution.environment.adapt)
    generation_of = {r.individual_id: g for g in (1, 2, 3, 4) for r in records.individuals(g)}
    by_id = {r.individual_id: r for g in (1, 2, 3, 4) for r in records.individuals(g)}
    offspring = [r for r in by_id.values() if generation_of[r.individual_id] > 1]
    assert {r.env_factor for r in offspring if generation_of[r.individual_id] == 2} == {0.6}
    for child in offspring:
        if generation_of[child.individual_id] == 2:
            continue
        parent = by_id[child.parent_id]
        grandparent = by_id[parent.parent_id]
        drop = (grandparent.metric("val_accuracy") - parent.metric("val_accuracy")) / grandparent.metric("val_accuracy")
        assert child.env_factor == pytest.approx(rule.next_factor(parent.env_factor, drop))
    assert len({r.env_factor for r in offspring}) > 1  # it did adapt: with max_drop 0.1 %, C moves every time

    # Interrupted once generation 2 is selected, then resumed: generations 3 and 4 get the same C.
    interrupted = str(tmp_path / "interrupted")
    with pytest.raises(KeyboardInterrupt):
        evolve(config, interrupted, hooks=[Interrupt(2)])
    assert RunRecords(interrupted).individuals(3) == []
    evolve(config, interrupted)
    assert env_factors(interrupted, (2, 3, 4)) == env_factors(run_dir, (2, 3, 4))


def test_warm_restarts_lift_the_rate_back_at_each_cycle():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = make_schedule(optimizer, Recipe(epochs=3, schedule="restarts", cycles=3), steps_per_epoch=4)
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    cycle = [0.5 * (1 + math.cos(math.pi * i / 4)) for i in range(4)]
    assert rates == pytest.approx(cycle * 3)
    cosine = torch.optim.SGD(model.parameters(), lr=1.0)
    once = make_schedule(cosine, Recipe(epochs=3, schedule="cosine"), steps_per_epoch=4)
    for _ in range(4):
        cosine.step()
        once.step()
    assert cosine.param_groups[0]["lr"] < 0.9  # plain cosine does not restart after 4 steps


@pytest.mark.parametrize("steps, cycles", [(10, 4), (5, 3), (7, 2), (3, 5), (1, 3)])
def test_every_warm_restart_cycle_anneals_to_zero_whatever_the_step_count(steps, cycles):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = make_schedule(optimizer, Recipe(epochs=1, schedule="restarts", cycles=cycles), steps_per_epoch=steps)
    rates = []
    for _ in range(steps + 1):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == 1.0 and rates[-1] == pytest.approx(0.0, abs=1e-12)  # ends annealed, never at full rate
    restarts = [i for i in range(1, steps) if rates[i] > rates[i - 1]]
    assert len(restarts) == max(0, min(cycles, steps // 2) - 1) if steps > 1 else not restarts
    assert all(rates[i - 1] < 1.0 for i in restarts)  # each cycle had annealed before its restart


def test_a_run_under_a_network_budget_with_a_sharp_model(tmp_path):
    overrides = LOCAL + [
        "evolution.generations=3",
        "evolution.environment={c: 0.4, mode: network, sharpness: 10}",
        "evolution.normalizer=global",
        "train.schedule=restarts",
    ]
    population = evolve(load_config(TINY, overrides), str(tmp_path / "run"))
    assert (population["status"] == "ok").all()
    offspring = population[population["generation"] == 2]
    assert set(offspring["env_mode"]) == {"network"}
    kept = offspring["synapses"] / offspring["parent_synapses"]
    assert kept.between(0.3, 0.5).all()  # C = 0.4 of the whole network in expectation (neuron death aside)
