"""Failures that are not the individual's own (issue 12, part 4): told apart from its own, retried
within the run and by a resumed run, counted in ``attempts``, one population row per individual; a
trainer whose CUDA context broke is replaced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from test_faults import TINY, ancestor_checkpoint, assert_complete, expected_ids, new_run, wait_for

from evopop.api import evolve
from evopop.config import load_config
from evopop.engine.controller import EvolutionFailed, InfrastructureFailed
from evopop.engine.failures import (
    INDIVIDUAL,
    INFRASTRUCTURE,
    GpuShare,
    RunStopped,
    StorageError,
    classify,
    requested_bytes,
)
from evopop.engine.policy.specs import root_spec
from evopop.engine.worker.develop import Developer
from evopop.records.run import RunRecords

GIB = 2**30
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.25 GiB"


# -- whose fault ------------------------------------------------------------------------------------
def test_out_of_memory_within_the_trainers_share_is_a_neighbours():
    quarter = GpuShare(peak_reserved=15 * GIB, total=80 * GIB, fraction=0.25)  # a 20 GiB share
    assert classify(torch.cuda.OutOfMemoryError(OOM), quarter).cause == INFRASTRUCTURE  # 15 + 2 <= 20
    greedy = GpuShare(peak_reserved=19 * GIB, total=80 * GIB, fraction=0.25)
    assert classify(torch.cuda.OutOfMemoryError(OOM), greedy).cause == INDIVIDUAL  # 19 + 2 > 20
    whole = GpuShare(peak_reserved=78 * GIB, total=80 * GIB, fraction=1.0)
    assert classify(torch.cuda.OutOfMemoryError(OOM), whole).cause == INDIVIDUAL
    assert classify(torch.cuda.OutOfMemoryError(OOM), None).cause == INDIVIDUAL, "no GPU figures: its own"
    assert not classify(torch.cuda.OutOfMemoryError(OOM), quarter).replace_trainer


def test_cuda_errors_replace_the_trainer():
    broken = classify(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert broken.cause == INFRASTRUCTURE and broken.replace_trainer
    ecc = classify(RuntimeError("CUDA error: uncorrectable ECC error encountered"))
    assert ecc.cause == INFRASTRUCTURE and ecc.replace_trainer
    cublas = classify(RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, ...)`"))
    assert cublas.replace_trainer
    assert_ = classify(RuntimeError("CUDA error: device-side assert triggered"))
    assert assert_.cause == INDIVIDUAL and assert_.replace_trainer, "the program's own bug, but the context is gone"
    if hasattr(torch, "AcceleratorError"):
        try:
            accelerator = torch.AcceleratorError("CUDA error: unspecified launch failure")
        except TypeError:  # a constructor that wants more than a message
            accelerator = None
        if accelerator is not None:
            assert classify(accelerator).replace_trainer


def test_everything_else_is_the_individuals_own():
    for exc in (
        ValueError("weights do not fit"),
        RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
        KeyError(),
    ):
        failure = classify(exc)
        assert failure.cause == INDIVIDUAL and not failure.replace_trainer and not failure.retried
    assert classify(StorageError("s3: connection reset")).retried


def test_requested_bytes_parses_the_allocation():
    assert requested_bytes(OOM) == 2 * GIB
    assert requested_bytes("Tried to allocate 20.00 MiB") == 20 * 2**20
    assert requested_bytes("CUDA out of memory.") == 0


def test_a_checkpoint_that_cannot_be_written_is_the_storages_fault(tmp_path):
    config = load_config(TINY)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("a file where the checkpoints' folder should be")
    outcome = Developer(config, str(run_dir)).develop(root_spec(config), None)
    assert outcome.status == "failed" and outcome.failure == INFRASTRUCTURE
    assert "could not write the checkpoint" in outcome.error


# -- within a run, and by a resumed run ----------------------------------------------------------------
def armed(tmp_path) -> Path:
    infra_dir = tmp_path / "infra"
    infra_dir.mkdir()
    (infra_dir / "armed").touch()
    return infra_dir


def flaky_run(tmp_path, infra_dir, infra, *overrides):
    return new_run(
        tmp_path,
        "run",
        "task.name=user_tasks:flaky",
        f"task.args.infra_dir={infra_dir}",
        f"task.args.infra={infra}",
        f"ancestor.checkpoint={ancestor_checkpoint(tmp_path)}",
        *overrides,
    )


def test_resume_retries_what_the_infrastructure_failed(tmp_path, capsys):
    infra_dir = armed(tmp_path)
    config, run_dir = flaky_run(tmp_path, infra_dir, "storage", "resources.executor=local", "resources.max_retries=1")
    with pytest.raises(InfrastructureFailed, match="generation 2: the infrastructure failed 3 individual"):
        evolve(config, run_dir)
    failed = RunRecords(run_dir).population(2)
    assert (failed["status"] == "failed").all() and (failed["failure"] == INFRASTRUCTURE).all()
    assert (failed["attempts"] == 2).all(), "retried in the run: max_retries 1"

    (infra_dir / "armed").unlink()  # the storage is back
    capsys.readouterr()
    resumed = evolve(config, run_dir)
    assert "3 the infrastructure failed run again" in capsys.readouterr().out
    assert_complete(resumed, run_dir, expected_ids([3, 3]))
    offspring = resumed[resumed["generation"] == 2]
    assert (offspring["status"] == "ok").all() and offspring["failure"].isna().all()
    assert (offspring["attempts"] == 3).all(), "the attempts of both drivers are counted"
    assert offspring["checkpoint"].notna().all()


def test_a_generation_with_infrastructure_failures_is_not_decided_until_resumed(tmp_path):
    """The default (resources.on_infrastructure_failure: stop): a few offspring failed by the
    infrastructure, the others fine; the run stops before selecting, the resume runs the few."""
    infra_dir = armed(tmp_path)
    config, run_dir = flaky_run(
        tmp_path,
        infra_dir,
        "storage",
        "task.args.infra_rate=0.5",
        "resources.executor=local",
        "resources.max_retries=0",
        "evolution.offspring=6",
    )
    with pytest.raises(InfrastructureFailed, match="once the cause is fixed, `evopop resume"):
        evolve(config, run_dir)
    records = RunRecords(run_dir)
    first = records.population(2)
    failed = set(first[first["status"] == "failed"]["individual_id"])
    assert 0 < len(failed) < 6 and not records.has_selection(2), "some failed, and nothing was selected"

    (infra_dir / "armed").unlink()
    resumed = evolve(config, run_dir)
    assert_complete(resumed, run_dir, expected_ids([6, 6]))
    offspring = resumed[resumed["generation"] == 2].set_index("individual_id")
    assert (offspring["status"] == "ok").all()
    assert (offspring.loc[sorted(failed), "attempts"] == 2).all()
    assert (offspring.drop(index=sorted(failed))["attempts"] == 1).all(), "the others ran once"


def test_a_decided_generations_infrastructure_failures_are_final(tmp_path):
    infra_dir = armed(tmp_path)
    config, run_dir = flaky_run(
        tmp_path,
        infra_dir,
        "storage",
        "task.args.infra_rate=0.5",
        "resources.executor=local",
        "resources.max_retries=0",
        "resources.on_infrastructure_failure=continue",
        "evolution.offspring=6",
    )
    first = evolve(config, run_dir)
    offspring = first[first["generation"] == 2]
    assert 0 < (offspring["status"] == "failed").sum() < 6, "some offspring failed, the others were selected from"
    failed = set(first[first["status"] == "failed"]["individual_id"])
    assert (first[first["status"] == "failed"]["failure"] == INFRASTRUCTURE).all()

    (infra_dir / "armed").unlink()
    again = evolve(config, run_dir)
    assert set(again[again["status"] == "failed"]["individual_id"]) == failed, "its selection stands"
    pd_cols = ["individual_id", "attempts", "status", "selected"]
    assert again[pd_cols].equals(first[pd_cols])


@pytest.mark.slow
def test_trainer_processes_dying_past_retries_are_retried_by_resume(ray_cluster, tmp_path):
    infra_dir = armed(tmp_path)
    config, run_dir = flaky_run(tmp_path, infra_dir, "exit", "resources.max_retries=0")
    with pytest.raises(EvolutionFailed):
        evolve(config, run_dir)
    failed = RunRecords(run_dir).population(2)
    assert (failed["failure"] == INFRASTRUCTURE).all() and (failed["attempts"] == 1).all()
    assert failed["error"].str.contains("trainer process died").all()

    (infra_dir / "armed").unlink()
    resumed = evolve(config, run_dir)
    assert_complete(resumed, run_dir, expected_ids([3, 3]))
    offspring = resumed[resumed["generation"] == 2]
    assert (offspring["status"] == "ok").all() and (offspring["attempts"] == 2).all()


@pytest.mark.slow
def test_trainer_whose_cuda_context_broke_is_replaced(ray_cluster, tmp_path):
    infra_dir = armed(tmp_path)
    config, run_dir = flaky_run(tmp_path, infra_dir, "cuda", "evolution.offspring=4", "resources.trainers=2")
    population = evolve(config, run_dir)
    assert_complete(population, run_dir, expected_ids([4, 4]))
    assert (population["status"] == "ok").all(), "no individual fails in the broken trainer after the first"
    assert (population["attempts"] == 2).sum() == 1, "the individual that met the CUDA error ran again"
    broken_pid = int((infra_dir / "broken").read_text().split()[0])
    # ray.kill returns before the process is gone
    wait_for(lambda: not Path(f"/proc/{broken_pid}").exists() or _is_zombie(broken_pid), timeout=30)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_the_policy_counts_earlier_attempts_once(tmp_path):
    """A retried individual's new row replaces its failed one: one row per individual, folded once decided."""
    infra_dir = armed(tmp_path)
    config, run_dir = flaky_run(tmp_path, infra_dir, "storage", "resources.executor=local", "resources.max_retries=0")
    with pytest.raises(EvolutionFailed):
        evolve(config, run_dir)
    os.remove(infra_dir / "armed")
    evolve(config, run_dir)
    parts = sorted(p.name for p in (Path(run_dir) / "population" / "generation=2").glob("*.parquet"))
    assert parts == ["part-all.parquet"]
    population = RunRecords(run_dir).population(2)
    assert population["individual_id"].tolist() == [f"g2-{i}" for i in range(3)]
    assert (population["attempts"] == 2).all()


@pytest.mark.slow
def test_an_infrastructure_failure_is_retried_on_another_trainer(ray_cluster, tmp_path):
    infra_dir = armed(tmp_path)
    # two offspring on two trainers: the one failed at its first step is retried while the other still
    # trains, so its own trainer is the idle one, and the retry waits for the other
    config, run_dir = flaky_run(
        tmp_path,
        infra_dir,
        "storage",
        "task.args.infra_once=true",
        "task.args.step_sleep=0.05",
        "evolution.generations=2",
        "evolution.offspring=2",
        "resources.trainers=2",
    )
    population = evolve(config, run_dir)
    assert_complete(population, run_dir, expected_ids([2]))
    retried = population[population["attempts"] == 2]
    assert len(retried) == 1 and (population["status"] == "ok").all()
    failed_on = (infra_dir / "claimed").read_text().split()[1]
    assert retried.iloc[0]["worker_id"] != failed_on, "the retry ran on the other trainer"


def test_the_local_executor_stops_once_its_process_is_broken(tmp_path):
    infra_dir = armed(tmp_path)
    config, run_dir = flaky_run(tmp_path, infra_dir, "cuda", "resources.executor=local")
    with pytest.raises(RunStopped, match="broke this process's CUDA context"):
        evolve(config, run_dir)
    population = RunRecords(run_dir).population(2)
    assert len(population) == 1, "nothing more ran in the broken process"
    assert population.iloc[0]["failure"] == INFRASTRUCTURE and not RunRecords(run_dir).has_selection(2)


def test_out_of_memory_on_a_gpu_of_its_own_is_the_individuals():
    whole = GpuShare(peak_reserved=10 * GIB, total=80 * GIB, fraction=1.0)
    assert classify(torch.cuda.OutOfMemoryError(OOM), whole).cause == INDIVIDUAL
    half = GpuShare(peak_reserved=10 * GIB, total=80 * GIB, fraction=0.5)
    alloc = classify(RuntimeError("CUDA error: out of memory"), half)
    assert alloc.cause == INFRASTRUCTURE and not alloc.replace_trainer, "an allocation failure keeps the context"
    cublas = classify(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), whole)
    assert cublas.cause == INDIVIDUAL and not cublas.replace_trainer
