"""Successive halving of offspring (``selection.halving``, issue 14 part 2): which offspring continue at
each rung, that stopped ones are recorded as such and never selected, that a continued training ends
exactly as a full one, and that a run interrupted mid-rung resumes exactly."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch
from test_policy import METRIC, TINY, ScriptedExecutor

from evopop.api import evolution
from evopop.config import ConfigError, load_config
from evopop.engine.hooks import Hook
from evopop.engine.policy.halving import Rungs, promote, rung_epochs
from evopop.records.run import RunRecords
from evopop.records.schema import FAILED, OK, STOPPED, IndividualRecord

HALVING = "selection.halving={eta: 2, min_epochs: 1}"


# -- the rungs ------------------------------------------------------------------------------------
def test_rungs_multiply_by_eta_and_end_at_the_full_training():
    assert rung_epochs(1, 2, 8) == (1, 2, 4, 8)
    assert rung_epochs(3, 2, 8) == (3, 6, 8)
    assert rung_epochs(1, 3, 10) == (1, 3, 9, 10)
    assert rung_epochs(2, 4, 3) == (2, 3)
    rungs = Rungs(rung_epochs(1, 2, 8), 2)
    assert [rungs.kept(n, 1) for n in (8, 4, 2, 1)] == [4, 2, 1, 1]
    assert rungs.kept(5, 1) == 2 and rungs.kept(8, 3) == 4 and rungs.kept(4, 3) == 3, "never below what selection takes"
    with pytest.raises(ValueError):
        rung_epochs(4, 2, 4)


def test_promotion_ranks_by_the_metric_and_breaks_ties_by_id():
    def result(individual_id, value, status=OK):
        return IndividualRecord(individual_id=individual_id, status=status, metrics={METRIC: value})

    results = [result("g2-10", 0.9), result("g2-2", 0.9), result("g2-1", 0.95), result("g2-3", 0.99, FAILED)]
    ranking, kept = promote(results, 2, METRIC, "max")
    assert ranking == ["g2-1", "g2-2", "g2-10"] and kept == ["g2-1", "g2-2"]
    assert promote(results, 1, METRIC, "min")[1] == ["g2-2"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["selection.halving={eta: 1}"], "selection.halving.eta: Input should be greater than or equal to 2"),
        (["selection.halving={min_epochs: 0}"], "selection.halving.min_epochs: Input should be greater"),
        (["selection.halving={min_epochs: 2}"], r"min_epochs \(2\) must be below the offspring's epochs \(2"),
        (["selection.halving={min_epochs: 4}", "evolution.epochs=3"], "must be below the offspring's epochs"),
        (["selection.halving={}", "selection.rule=all"], "rule 'all' selects every offspring"),
        (["selection.halving={}", "selection.rule=topk", "selection.k=3"], "none would stop early"),
        (["selection.halving={eta: 2, rungs: 3}"], "selection.halving.rungs: unknown key"),
    ],
)
def test_bad_halving_is_refused_before_any_work(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, overrides)


def test_the_command_line_refuses_bad_halving_with_exit_2(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "evopop", "run", str(TINY), "selection.halving={eta: 1}", f"storage.path={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "selection.halving.eta" in run.stderr
    assert not any(tmp_path.iterdir()), "nothing was started"


# -- the decisions, with a scripted executor --------------------------------------------------------
class RungScript(ScriptedExecutor):
    """The metric of an offspring at a rung: ``script[(id, rung)]``, else ``script[id]``, else 0.5."""

    def value(self, spec):
        if (spec.individual_id, spec.rung) in self.script:
            return self.script[(spec.individual_id, spec.rung)]
        return super().value(spec)


def scripted_halving(tmp_path, script, *overrides):
    config = load_config(
        TINY, ["diversity.enabled=false", "evolution.offspring=4", "train.epochs=4", HALVING, *overrides]
    )
    run_dir = str(tmp_path / "run")
    RunRecords(run_dir).write_config(config.to_yaml())
    executor = RungScript(run_dir, script)
    return config, run_dir, executor, evolution(config, run_dir, executor=executor, hooks=[])


def test_each_rung_keeps_the_best_half_and_a_stopped_offspring_is_never_selected(tmp_path):
    script = {
        ("g2-0", 0): 0.9,  # best at the first rung, worse at the second
        ("g2-1", 0): 0.2,
        ("g2-2", 0): 0.4,
        ("g2-3", 0): 0.8,
        ("g2-0", 1): 0.6,
        ("g2-3", 1): 0.7,
        ("g2-3", 2): 0.1,  # the survivor ends worse than what stopped: selected all the same
    }
    _, run_dir, executor, run = scripted_halving(tmp_path, script, "evolution.generations=2")
    population = run.run().set_index("individual_id")
    assert executor.calls == [["g1-0"], ["g2-0", "g2-1", "g2-2", "g2-3"], ["g2-0", "g2-3"], ["g2-3"]]
    assert population.loc[["g2-0", "g2-1", "g2-2", "g2-3"], "status"].tolist() == [STOPPED, STOPPED, STOPPED, OK]
    assert population.loc[["g2-0", "g2-1", "g2-2", "g2-3"], "rung"].tolist() == [1, 0, 0, 2]
    assert population.loc["g2-0", METRIC] == 0.6, "a stopped offspring keeps its metric at the rung it stopped"
    assert population["selected"].fillna(False).astype(bool).loc[lambda s: s].index.tolist() == ["g1-0", "g2-3"]
    assert pd.isna(population.loc["g2-0", "failure"]), "stopped is not failed"
    promotion = RunRecords(run_dir).promotions()
    promoted = promotion[promotion["promoted"]].groupby("rung")["individual_id"].apply(list).to_dict()
    assert promoted == {0: ["g2-0", "g2-3"], 1: ["g2-3"]}
    rungs = RunRecords(run_dir).rungs()
    assert len(rungs) == 4 + 2 + 1, "every rung's result is kept, the last one's too"


def test_a_failed_offspring_never_continues_and_topk_keeps_what_selection_takes(tmp_path):
    script = {("g2-0", 0): None, ("g2-1", 0): 0.9, ("g2-2", 0): 0.8, ("g2-3", 0): 0.7}
    _, _, executor, run = scripted_halving(
        tmp_path, script, "evolution.generations=2", "selection.rule=topk", "selection.k=2"
    )
    population = run.run().set_index("individual_id")
    # 4 offspring, eta 2: 2 continue, and 2 is what topk needs, so both go to the end
    assert executor.calls[2:] == [["g2-1", "g2-2"], ["g2-1", "g2-2"]]
    assert population.loc["g2-0", "status"] == FAILED and population.loc["g2-3", "status"] == STOPPED
    assert population.loc[["g2-1", "g2-2"], "selected"].tolist() == [True, True]


class CrashAt(Hook):
    """Interrupts the driver at a chosen point, as a killed process would leave the records."""

    def __init__(self, event: str, count: int):
        self.event, self.count, self.seen = event, count, 0

    def rung_recorded(self, record):
        self._maybe("rung_recorded")

    def promoted(self, generation, rung, promoted, stopped):
        self._maybe("promoted")

    def recorded(self, record):
        self._maybe("recorded")

    def _maybe(self, event):
        if event == self.event:
            self.seen += 1
            if self.seen == self.count:
                raise KeyboardInterrupt(f"crash at {event} {self.count}")


COMPARED = ["individual_id", "status", "epochs", "rung", METRIC, "val_loss", "mask_digest", "selected"]


REAL = ["resources.executor=local", "compaction.enabled=false", "diversity.enabled=false"]
REAL += ["evolution.offspring=4", "train.epochs=4"]


def real_run(tmp_path, name, *overrides, hooks=()):
    config = load_config(TINY, [*REAL, *overrides])
    run_dir = str(tmp_path / name)
    RunRecords(run_dir).write_config(config.to_yaml())
    return config, run_dir, evolution(config, run_dir, hooks=list(hooks))


def test_an_offspring_that_continues_ends_exactly_as_its_full_training(tmp_path):
    _, halved_dir, halved = real_run(tmp_path, "halved", HALVING, "evolution.generations=2")
    _, full_dir, full = real_run(tmp_path, "full", "evolution.generations=2")
    a, b = halved.run().set_index("individual_id"), full.run().set_index("individual_id")
    survivor = a[(a["generation"] == 2) & (a["status"] == OK)].index.tolist()
    assert len(survivor) == 1 and a.loc[survivor[0], "epochs"] == 4
    for column in [METRIC, "val_loss", "mask_digest", "synapses"]:
        assert a.loc[survivor[0], column] == b.loc[survivor[0], column], column
    same = RunRecords(halved_dir).read_checkpoint(survivor[0]).weights
    other = RunRecords(full_dir).read_checkpoint(survivor[0]).weights
    assert all(torch.equal(same[k], other[k]) for k in other), "bit for bit the weights of a full training"
    # a stopped offspring trained less, and its metric is that of the rung it stopped at
    stopped = a[a["status"] == STOPPED]
    assert (stopped["epochs"] < 4).all() and len(stopped) == 3
    rungs = RunRecords(halved_dir).rungs().set_index(["individual_id", "rung"])
    for individual_id, row in stopped.iterrows():
        assert rungs.loc[(individual_id, row["rung"]), METRIC] == row[METRIC]
    # the compute it saved: 4 + 2 + 2 = 8 epochs for the generation instead of 16
    assert a[a["generation"] == 2]["epochs"].sum() == 4 * 1 + 2 * 1 + 1 * 2
    assert not RunRecords(halved_dir).storage.list("training", ".pt"), "decided: no training is kept to continue"


@pytest.mark.parametrize(
    "event, count",
    [
        ("rung_recorded", 3),  # within the first rung
        ("recorded", 2),  # the rung decided, one of the stopped recorded, not the other
        ("promoted", 1),  # the rung decided and acted on
        ("rung_recorded", 5),  # within the second rung
    ],
)
def test_a_driver_interrupted_mid_rung_resumes_exactly(tmp_path, event, count):
    overrides = (HALVING, "evolution.generations=3")
    _, _, straight = real_run(tmp_path, "straight", *overrides)
    expected = straight.run()
    config, run_dir, crashing = real_run(tmp_path, "crashed", *overrides, hooks=[CrashAt(event, count)])
    with pytest.raises(KeyboardInterrupt):
        crashing.run()
    resumed = evolution(config, run_dir).run()
    pd.testing.assert_frame_equal(resumed[COMPARED], expected[COMPARED])
    rungs = RunRecords(run_dir).rungs()
    assert not rungs.duplicated(["individual_id", "rung"]).any(), "each rung result once"


@pytest.mark.slow
def test_halving_on_ray_trainers_gives_the_records_of_the_local_executor(ray_cluster, tmp_path):
    """Any number of trainers: each rung is a batch the free trainers take from, one job after another."""
    from evopop.api import evolve

    populations = {}
    for executor in ("local", "ray"):
        config = load_config(
            TINY,
            [
                HALVING,
                "evolution.offspring=5",
                "train.epochs=4",
                "resources.trainers=2",
                f"resources.executor={executor}",
            ],
        )
        run_dir = str(tmp_path / executor)
        populations[executor] = evolve(config, run_dir)
    compared = [*COMPARED, "seed", "parent_id", "synapses"]
    pd.testing.assert_frame_equal(populations["local"][compared], populations["ray"][compared])
    assert (populations["ray"]["status"] == STOPPED).sum() == 2 * 4, "5 -> 2 -> 1 in each of two generations"


def test_the_report_shows_which_offspring_stopped_where(tmp_path):
    from evopop.analysis.report import build_report

    _, run_dir, run = real_run(tmp_path, "report", HALVING, "evolution.generations=2")
    run.run()
    html = build_report(run_dir).read_text()
    assert "Successive halving: which offspring stopped where" in html and '<img src="rungs.png"' in html
    assert "8 of 16" in html, "the generation's epochs against full training"
    assert "failed individual" not in html, "stopped offspring are not failures"


def test_a_generation_recorded_whole_is_not_trained_again_under_halving(tmp_path):
    """Offspring with their final records (a decided generation, here copied from a run without
    halving) are never trained again at a rung: their checkpoints, which the next generation's
    offspring descend from, stay as recorded."""
    import shutil

    _, full_dir, full = real_run(tmp_path, "full", "evolution.generations=2")
    full.run()
    copy = tmp_path / "copy"
    shutil.copytree(full_dir, copy)
    before = {p.name: p.read_bytes() for p in (copy / "checkpoints").glob("g2-*.pt")}
    config = load_config(TINY, [*REAL, HALVING])
    RunRecords(str(copy)).write_config(config.to_yaml())
    population = evolution(config, str(copy), hooks=[]).run()
    assert {p.name: p.read_bytes() for p in (copy / "checkpoints").glob("g2-*.pt")} == before
    assert (population[population["generation"] == 3]["status"] == STOPPED).sum() == 3
    assert RunRecords(str(copy)).rungs()["generation"].unique().tolist() == [3]


class InfrastructureAtFirstRung(RungScript):
    """Every offspring's first rung fails through the infrastructure's fault (a storage outage)."""

    def run(self, specs, load_parent):
        from evopop.engine.failures import Failure
        from evopop.engine.jobs import Outcome, Result

        for result in super().run(specs, load_parent):
            spec = result.spec
            if spec.rung == 0 and self.fail:
                failure = Failure("infrastructure")
                yield Result(spec, Outcome.failed(spec.individual_id, "OSError: storage outage", failure), 1)
            else:
                yield result


def test_a_rung_the_infrastructure_failed_whole_is_tried_again_on_resume(tmp_path):
    from evopop.engine.controller import EvolutionFailed

    config, run_dir, _, _ = scripted_halving(
        tmp_path, {}, "evolution.generations=2", "resources.on_infrastructure_failure=continue"
    )
    executor = InfrastructureAtFirstRung(run_dir, {})
    executor.fail = True
    with pytest.raises(EvolutionFailed, match="failed at rung 0"):
        evolution(config, run_dir, executor=executor, hooks=[]).run()
    assert RunRecords(run_dir).promotion(2, 0) is None, "no decision recorded: the rung is not decided"
    executor.fail = False  # the storage is back
    population = evolution(config, run_dir, executor=executor, hooks=[]).run()
    g2 = population[population["generation"] == 2]
    assert (g2["status"] == OK).sum() == 1 and (g2["status"] == STOPPED).sum() == 3


class StatesAt(Hook):
    """The training states stored when each rung is decided."""

    def __init__(self, run_dir):
        self.records, self.seen = RunRecords(run_dir), {}

    def promoted(self, generation, rung, promoted, stopped):
        self.seen[(generation, rung)] = (sorted(self.records.storage.list("training", ".pt")), promoted)


def test_training_states_go_as_soon_as_no_rung_continues_from_them(tmp_path):
    hook = StatesAt(str(tmp_path / "states"))
    _, _, run = real_run(tmp_path, "states", HALVING, "evolution.generations=2", hooks=[hook])
    run.run()
    for (generation, rung), (states, promoted) in hook.seen.items():
        assert states == sorted(f"{i}-r{rung}.pt" for i in promoted), (generation, rung, states)
