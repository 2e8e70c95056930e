"""Heredity of function (issue 13, part 6): offspring that also learn their parent's outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evopop.api import evolve
from evopop.config import ConfigError, load_config
from evopop.records.run import RunRecords
from evopop.training.loop import distillation_loss

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def test_distillation_loss_is_hintons_scaled_kl_and_mse_for_one_channel():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    assert distillation_loss(teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    expected = (
        torch.nn.functional.kl_div(
            torch.log_softmax(student / 2, dim=1),
            torch.log_softmax(teacher / 2, dim=1),
            log_target=True,
            reduction="batchmean",
        )
        * 4
    )
    assert distillation_loss(student, teacher, 2.0).item() == pytest.approx(expected.item(), rel=1e-5)
    maps_s, maps_t = torch.randn(2, 2, 4, 4, generator=g), torch.randn(2, 2, 4, 4, generator=g)
    assert distillation_loss(maps_s, maps_t, 1.0) > 0  # per pixel, over the class dimension
    single_s, single_t = torch.randn(4, 1, generator=g), torch.randn(4, 1, generator=g)
    assert distillation_loss(single_s, single_t, 3.0).item() == pytest.approx(
        torch.nn.functional.mse_loss(single_s, single_t).item()
    )


def test_distillation_without_a_parent_is_refused():
    with pytest.raises(ConfigError, match="with generations: 1 no individual has a parent to learn from"):
        load_config(TINY, ["evolution.generations=1", "evolution.distill.weight=0.5"])
    with pytest.raises(ConfigError, match="evolution.distill.weight: Input should be less than 1"):
        load_config(TINY, ["evolution.distill.weight=1"])


def run(tmp_path, name, *overrides):
    config = load_config(TINY, ["resources.executor=local", "compaction.enabled=false", *overrides])
    run_dir = str(tmp_path / name)
    RunRecords(run_dir).write_config(config.to_yaml())
    return evolve(config, run_dir).set_index("individual_id")


def test_offspring_learn_from_their_parent_and_the_root_is_untouched(tmp_path):
    plain = run(tmp_path, "plain", "evolution.generations=2")
    distilled = run(tmp_path, "distilled", "evolution.generations=2", "evolution.distill.weight=0.7")
    again = run(tmp_path, "again", "evolution.generations=2", "evolution.distill.weight=0.7")
    assert plain.loc["g1-0", "val_loss"] == distilled.loc["g1-0", "val_loss"], "the root has no parent"
    offspring = [i for i in plain.index if i.startswith("g2-")]
    # the same genomes (synthesis is untouched), trained to other weights
    assert (plain.loc[offspring, "mask_digest"] == distilled.loc[offspring, "mask_digest"]).all()
    assert (plain.loc[offspring, "val_loss"] != distilled.loc[offspring, "val_loss"]).all()
    assert distilled.loc[offspring, "val_loss"].equals(again.loc[offspring, "val_loss"]), "deterministic"
