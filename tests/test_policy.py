"""The evolution policy without Ray: a scripted executor (no training) for the loop's decisions, the
in-process executor for whole runs, and the same records from the local and the Ray executors."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import forget_record

from evopop.analysis.diversity_hook import DiversityRecorder
from evopop.api import evolution, evolve
from evopop.config import ConfigError, load_config
from evopop.engine.controller import EvolutionFailed
from evopop.engine.hooks import Batch, Hook
from evopop.engine.jobs import Outcome, ParentState, Result, Spec
from evopop.engine.plan import plan_run
from evopop.records.checkpoints import Checkpoint
from evopop.records.run import RunRecords
from evopop.records.schema import FAILED, OK, IndividualRecord, LayerRecord, population_schema
from evopop.synthesis import Genome
from evopop.tasks.registry import built_task

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
TINY_ARGS = yaml.safe_load(TINY.read_text())["task"]["args"]
METRIC = "val_accuracy"


class ScriptedExecutor:
    """Develops nothing: each individual's metric and synapse count come from ``script`` (by id),
    its checkpoint is a one-synapse genome, so the policy's decisions can be checked exactly."""

    def __init__(self, run_dir: str, script: Mapping[str, float | None]):
        self.records = RunRecords(run_dir)
        self.script = script
        self.masks = Genome.full(built_task("shapes", TINY_ARGS).arch).state_dict()  # the tiny task's layers
        self.calls: list[list[str]] = []
        self.parents_seen: list[set[str]] = []
        self.started = self.stopped = 0

    def start(self, fence_token: str | None = None) -> None:
        self.started += 1

    def run(self, specs: Sequence[Spec], load_parent: Callable[[str], ParentState]) -> Iterator[Result]:
        self.calls.append([s.individual_id for s in specs])
        parents = {s.parent_id for s in specs if s.parent_id is not None}
        self.parents_seen.append({p for p in parents if isinstance(load_parent(p), ParentState)})
        for spec in reversed(specs):  # out of order, as a real pool finishes them
            value = self.value(spec)
            if value is None:
                yield Result(spec, Outcome.failed(spec.individual_id, "RuntimeError: scripted"), attempts=1)
                continue
            checkpoint = self.records.write_checkpoint(spec.individual_id, Checkpoint({}, self.masks))
            layer = LayerRecord(spec.individual_id, "fc", "linear", 1, 1, 1, 1, 1, 1.0)
            outcome = Outcome(
                spec.individual_id,
                OK,
                metrics={METRIC: value, "val_loss": 1 - value},
                synapses=100 - spec.generation,
                layers=(layer,),
                checkpoint=checkpoint,
            )
            yield Result(spec, outcome, attempts=1)

    def value(self, spec: Spec) -> float | None:
        return self.script.get(spec.individual_id, 0.5)

    def shutdown(self) -> None:
        self.stopped += 1


def _kind(batch: Batch) -> str:
    return "baselines" if batch.baselines else "offspring"


class Recorder(Hook):
    def __init__(self):
        self.events: list[tuple] = []

    def batch_started(self, batch: Batch) -> None:
        self.events.append(("start", batch.generation, batch.total, batch.already, _kind(batch)))

    def recorded(self, record) -> None:
        self.events.append(("recorded", record.individual_id))

    def batch_finished(self, batch: Batch) -> None:
        self.events.append(("finished", batch.generation, _kind(batch)))

    def generation_developed(self, generation: int) -> None:
        self.events.append(("developed", generation))

    def selected(self, generation: int, selected: list[str]) -> None:
        self.events.append(("selected", generation, tuple(selected)))


def scripted_run(tmp_path, script, *overrides, name="run"):
    config = load_config(TINY, ["diversity.enabled=false", *overrides])
    run_dir = str(tmp_path / name)
    RunRecords(run_dir).write_config(config.to_yaml())
    executor, hook = ScriptedExecutor(run_dir, script), Recorder()
    return config, run_dir, executor, hook, evolution(config, run_dir, executor=executor, hooks=[hook])


def test_policy_follows_the_best_offspring_and_records_every_individual(tmp_path):
    script = {"g2-0": 0.6, "g2-1": 0.9, "g2-2": 0.7, "g3-0": 0.5, "g3-1": 0.4, "g3-2": 0.8}
    _, run_dir, executor, hook, run = scripted_run(tmp_path, script)
    population = run.run()
    assert executor.calls == [["g1-0"], ["g2-0", "g2-1", "g2-2"], ["g3-0", "g3-1", "g3-2"]]
    assert executor.parents_seen == [set(), {"g1-0"}, {"g2-1"}]
    assert executor.started == executor.stopped == 1
    selected = population.loc[population["selected"].fillna(False).astype(bool), "individual_id"].tolist()
    assert selected == ["g1-0", "g2-1", "g3-2"]
    g3 = population[population["generation"] == 3].set_index("individual_id")
    assert g3.loc["g3-2", "lineage"].tolist() == ["g1-0", "g2-1", "g3-2"]
    assert g3["rank"].to_dict() == {"g3-0": 1, "g3-1": 2, "g3-2": 0}
    assert g3["parent_synapses"].tolist() == [98] * 3 and g3["efficiency"].tolist() == [99 / 97] * 3


def test_hooks_see_every_step_in_order(tmp_path):
    _, _, _, hook, run = scripted_run(tmp_path, {"g2-1": 0.9}, "evolution.generations=2", "evolution.offspring=2")
    run.run()
    assert hook.events == [
        ("start", 1, 1, 0, "offspring"),
        ("recorded", "g1-0"),
        ("finished", 1, "offspring"),
        ("developed", 1),
        ("selected", 1, ("g1-0",)),
        ("start", 2, 2, 0, "offspring"),
        ("recorded", "g2-1"),
        ("recorded", "g2-0"),
        ("finished", 2, "offspring"),
        ("developed", 2),
        ("selected", 2, ("g2-1",)),
    ]


def test_topk_selection_breeds_from_each_selected_parent(tmp_path):
    script = {"g2-0": 0.6, "g2-1": 0.9, "g2-2": 0.7}
    _, _, executor, _, run = scripted_run(tmp_path, script, "selection.rule=topk", "selection.k=2")
    population = run.run()
    assert executor.parents_seen[2] == {"g2-1", "g2-2"}
    g3 = population[population["generation"] == 3]
    assert g3["parent_id"].tolist() == ["g2-1"] * 3 + ["g2-2"] * 3  # ranked parents, offspring in order


def test_failed_individuals_are_never_selected_and_a_dead_generation_stops_the_run(tmp_path):
    script = {"g2-0": None, "g2-1": None, "g2-2": None}
    _, run_dir, executor, _, run = scripted_run(tmp_path, script)
    with pytest.raises(EvolutionFailed, match="every individual of generation 2 failed"):
        run.run()
    assert executor.stopped == 1  # the workers are released on the way out
    population = RunRecords(run_dir).population()
    assert population["status"].tolist() == [OK, FAILED, FAILED, FAILED]
    assert RunRecords(run_dir).recorded_ids(2) == {"g2-0", "g2-1", "g2-2"}


def test_resume_develops_only_what_is_not_recorded(tmp_path):
    script = {"g2-0": 0.6, "g2-1": 0.9, "g2-2": 0.7}
    config, run_dir, _, _, run = scripted_run(tmp_path, script, "evolution.generations=2")
    first = run.run()
    forget_record(run_dir, 2, "g2-2")
    again, hook = ScriptedExecutor(run_dir, script), Recorder()
    second = evolution(config, run_dir, executor=again, hooks=[hook]).run()
    assert again.calls == [[], ["g2-2"]]
    assert ("start", 2, 3, 2, "offspring") in hook.events
    columns = ["individual_id", "parent_id", "seed", "train_seed", METRIC, "selected"]
    pd.testing.assert_frame_equal(first[columns], second[columns])


def test_baselines_are_a_batch_of_their_own_after_selection(tmp_path):
    _, _, executor, hook, run = scripted_run(
        tmp_path, {"g2-1": 0.9}, "evolution.generations=2", "baselines.enabled=true", "baselines.kinds=[random]"
    )
    population = run.run()
    assert executor.calls[-1] == ["g2-1-random"]
    assert hook.events[-2:] == [("recorded", "g2-1-random"), ("finished", 2, "baselines")]
    baseline = population.set_index("individual_id").loc["g2-1-random"]
    assert baseline["kind"] == "random" and not baseline["selected"]


def test_an_iterative_baseline_whose_chain_member_failed_restarts_from_the_root(tmp_path):
    script = {"g2-1": 0.9, "g2-1-imp": None, "g3-0": 0.8}
    _, _, executor, _, run = scripted_run(tmp_path, script, "baselines.enabled=true", "baselines.kinds=[imp]")
    population = run.run().set_index("individual_id")
    assert population.loc["g2-1-imp", "status"] == FAILED
    assert executor.calls[-1] == ["g3-0-imp"]
    # the failed member has no weights to prune on: the chain starts again from the root ancestor
    assert population.loc["g3-0-imp", "parent_id"] == "g1-0"
    assert population.loc["g3-0-imp", "lineage"].tolist() == ["g1-0", "g3-0-imp"]


def test_typed_records_keep_exact_integers_beside_nulls(tmp_path):
    """A null seed beside a seed past float64's exact integers: both survive the round trip."""
    records = RunRecords(str(tmp_path / "run"))
    schema = population_schema([METRIC], ["fc"])
    big = 2**62 - 1  # float64 would read it back as 2**62
    for individual_id, seed in (("g2-0", None), ("g2-1", big)):
        record = IndividualRecord(run_id="r", individual_id=individual_id, seed=seed, lineage=("g1-0", individual_id))
        records.write_individual(2, record, [], schema)
    first, second = RunRecords(str(tmp_path / "run")).individuals(2)
    assert first.seed is None and second.seed == big and isinstance(second.seed, int)
    assert second.lineage == ("g1-0", "g2-1") and second.status == OK


def test_diversity_is_recorded_once_per_generation_and_never_fails_the_run(tmp_path):
    config, run_dir, executor, _, _ = scripted_run(
        tmp_path, {}, "evolution.generations=2", "diversity.enabled=true", "diversity.functional_batch=0"
    )
    records = RunRecords(run_dir)
    hooks = [DiversityRecorder(config, records, ["val_loss", METRIC])]
    evolution(config, run_dir, executor=executor, hooks=hooks).run()
    assert records.has_diversity(2)
    written = records.storage.fs.get_file_info(records.storage.path("diversity/generation=2/part-0.parquet")).mtime

    class Broken(RunRecords):
        def write_diversity(self, *args, **kwargs):
            raise OSError("disk full")

    # resumed with nothing left to develop: the recorded diversity is kept as it is
    again = ScriptedExecutor(run_dir, {})
    evolution(config, run_dir, executor=again, hooks=[DiversityRecorder(config, Broken(run_dir), [METRIC])]).run()
    assert (
        records.storage.fs.get_file_info(records.storage.path("diversity/generation=2/part-0.parquet")).mtime == written
    )
    # a generation developed anew whose diversity cannot be written: a warning, and the run goes on
    forget_record(run_dir, 2, "g2-0")
    broken = [DiversityRecorder(config, Broken(run_dir), [METRIC])]
    with pytest.warns(UserWarning, match="diversity of generation 2 not recorded: OSError: disk full"):
        population = evolution(config, run_dir, executor=ScriptedExecutor(run_dir, {}), hooks=broken).run()
    assert len(population) == 1 + 3


def test_a_run_directory_is_resumed_only_with_its_own_config(tmp_path):
    config, run_dir, executor, hook, run = scripted_run(tmp_path, {}, "evolution.generations=2")
    run.run()
    other = load_config(TINY, ["diversity.enabled=false", "evolution.generations=2", "evolution.offspring=5"])
    with pytest.raises(ConfigError, match=r"differs in evolution\.offspring"):
        evolution(other, run_dir, executor=executor, hooks=[hook])
    more_trainers = load_config(TINY, ["diversity.enabled=false", "evolution.generations=2", "resources.trainers=4"])
    evolution(more_trainers, run_dir, executor=executor, hooks=[hook])  # how it runs may change
    untimed = load_config(TINY, ["diversity.enabled=false", "evolution.generations=2", "compaction.enabled=false"])
    evolution(untimed, run_dir, executor=executor, hooks=[hook])  # and how it is measured


# -- the in-process executor: real training, no Ray ------------------------------------------------
def test_local_executor_runs_a_whole_run_without_importing_ray(tmp_path):
    """A separate interpreter, so that no other test's Ray import can hide one."""
    code = (
        "import sys; from evopop.api import evolve; from evopop.config import load_config; "
        "from evopop.records.run import RunRecords; "
        f"c = load_config({str(TINY)!r}, ['resources.executor=local', 'evolution.generations=2', "
        "'evolution.offspring=2', 'diversity.functional_batch=8']); "
        f"RunRecords({str(tmp_path / 'run')!r}).write_config(c.to_yaml()); "
        f"p = evolve(c, {str(tmp_path / 'run')!r}); "
        "assert 'ray' not in sys.modules, 'ray was imported'; print(len(p), p['status'].tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "3 ['ok', 'ok', 'ok']"
    assert RunRecords(str(tmp_path / "run")).has_diversity(2)


@pytest.mark.slow
def test_local_and_ray_executors_give_identical_records(ray_cluster, tmp_path):
    overrides = ["evolution.generations=3", "evolution.offspring=2", "baselines.enabled=true"]
    populations = {}
    for executor in ("local", "ray"):
        config = load_config(TINY, [*overrides, f"resources.executor={executor}"])
        run_dir = str(tmp_path / executor)
        RunRecords(run_dir).write_config(config.to_yaml())
        populations[executor] = evolve(config, run_dir, plan=plan_run(config))
    columns = [
        "generation",
        "params",
        "layer_fractions",
        "individual_id",
        "kind",
        "parent_id",
        "seed",
        "train_seed",
        "mask_digest",
        "synapses",
        "neurons",
        "macs",
        "efficiency",
        "val_accuracy",
        "val_loss",
        "selected",
        "rank",
    ]
    local, ray_ = populations["local"][columns], populations["ray"][columns]
    # ancestor, 2 x 2 offspring, 2 x 2 one-shot baselines, 2 x 2 iterative (imp, imp_rewind) baselines
    assert len(local) == 1 + 2 * 2 + 2 * 2 + 2 * 2
    pd.testing.assert_frame_equal(local, ray_, check_exact=True)  # bit for bit, not within a tolerance


def test_show_reads_the_records_alone_without_the_task_or_its_data(tmp_path, capsys):
    """`evopop show` on a machine where the run's task cannot even be imported (its data elsewhere)."""
    from evopop.cli import main

    _, run_dir, _, _, run = scripted_run(tmp_path, {"g2-1": 0.9}, "evolution.generations=2")
    run.run()
    records = RunRecords(run_dir)
    records.write_config(records.read_config().replace("name: shapes", "name: not_installed.module:factory"))
    capsys.readouterr()
    assert main(["show", run_dir]) == 0
    out = capsys.readouterr().out
    assert "followed lineage:" in out and "g2-1" in out and "0.9000" in out


def test_jobs_are_handed_out_longest_expected_first_siblings_and_unknowns_in_their_listed_order():
    """`longest_first`: a job's expected length is its parent's measured training seconds per epoch times
    the epochs it trains; the longest go first, siblings keep their order, unmeasured parents go first."""
    from evopop.engine.policy.order import expected_seconds, longest_first

    def parent(individual_id, train_seconds, epochs=2):
        return IndividualRecord(individual_id=individual_id, train_seconds=train_seconds, epochs=epochs)

    def job(individual_id, parent_id, epochs=4, train_until=None):
        return Spec(2, individual_id, parent_id, (parent_id, individual_id), 0, 1, 1, None, epochs,
                    train_until=train_until)  # fmt: skip

    parents = {"small": parent("small", 1.0), "large": parent("large", 30.0), "loaded": parent("loaded", 0.0, None)}
    specs = [job("a0", "small"), job("a1", "small"), job("b0", "large"), job("b1", "large"), job("c0", "loaded")]
    assert [s.individual_id for s in longest_first(specs, parents)] == ["c0", "b0", "b1", "a0", "a1"]
    assert expected_seconds(specs[2], parents["large"]) == pytest.approx(30.0 / 2 * 4)
    assert expected_seconds(job("r", "large", train_until=1), parents["large"]) == pytest.approx(15.0)
    assert expected_seconds(specs[4], parents["loaded"]) is None and expected_seconds(specs[0], None) is None
    assert longest_first([], parents) == []
