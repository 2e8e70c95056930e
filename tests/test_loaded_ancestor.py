"""A loaded ancestor is measured and checkpointed as its genome says (issue 13, part 2): what is dead
in its genome is zero in its weights, before evaluation, including what dies with a dead neuron."""

from __future__ import annotations

from pathlib import Path

import torch

from evopop.config import load_config
from evopop.engine.policy.specs import root_spec
from evopop.engine.worker.develop import Developer
from evopop.records.run import RunRecords
from evopop.synthesis import Genome, MaskedParameters, parameter_masks
from evopop.tasks.registry import built_task
from evopop.training.loop import evaluate

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
DEAD = 2  # the filter of features.0 zeroed in the plain state_dict


def plain_state_dict_with_a_zero_filter(tmp_path) -> tuple[str, dict]:
    config = load_config(TINY)
    task = built_task(config.task.name, config.task.args).task
    torch.manual_seed(0)
    state = task.build_model().state_dict()
    state["features.0.weight"][DEAD] = 0.0
    state["features.1.bias"][DEAD] = 0.5  # the dead neuron's norm would still pass this on, unmasked
    path = tmp_path / "ancestor.pt"
    torch.save(state, path)
    return str(path), state


def test_a_plain_state_dict_ancestor_is_masked_before_it_is_measured(tmp_path):
    path, state = plain_state_dict_with_a_zero_filter(tmp_path)
    config = load_config(TINY, [f"ancestor.checkpoint={path}", "compaction.enabled=false"])
    run_dir = tmp_path / "run"
    developer = Developer(config, str(run_dir))
    outcome = developer.develop(root_spec(config), None)
    assert outcome.status == "ok", outcome.error

    checkpoint = RunRecords(str(run_dir)).read_checkpoint("g1-0")
    weights, genome = checkpoint.weights, Genome.from_state_dict(checkpoint.masks)
    assert not bool(genome.masks["features.4"][:, DEAD].any()), "the synapses a dead neuron fed are dead"
    assert torch.count_nonzero(weights["features.4.weight"][:, DEAD]) == 0, "and zero in the checkpoint"
    assert weights["features.1.bias"][DEAD] == 0 and weights["features.1.weight"][DEAD] == 0

    # its metrics are those of the network its genome describes
    arch = developer.arch
    model = developer.task.build_model()
    model.load_state_dict(state)
    MaskedParameters(model, parameter_masks(arch, genome))
    expected = evaluate(model, developer.task, config.train.recipe(1), torch.device("cpu"))
    assert outcome.metrics == expected
    unmasked = developer.task.build_model()
    unmasked.load_state_dict(state)
    assert evaluate(unmasked, developer.task, config.train.recipe(1), torch.device("cpu")) != expected, (
        "the unmasked network computes something else: the test would see a missing mask"
    )


def test_rewinding_from_a_loaded_ancestor_starts_from_its_masked_weights(tmp_path):
    """imp_rewind's start is the loaded ancestor (never trained here), masked by its genome."""
    from evopop.engine.worker.weights import initial_weights

    path, state = plain_state_dict_with_a_zero_filter(tmp_path)
    config = load_config(TINY, [f"ancestor.checkpoint={path}"])
    built = built_task(config.task.name, config.task.args)
    start = initial_weights(config, built.task, built.arch)
    assert torch.equal(start["features.0.weight"], state["features.0.weight"])  # the loaded weights
    assert start["features.1.bias"][DEAD] == 0, "masked: the dead neuron passes nothing on"
    assert torch.count_nonzero(start["features.4.weight"][:, DEAD]) == 0


def test_an_evopop_checkpoint_continues_as_an_ancestor_with_its_genome(tmp_path):
    """A run's own checkpoint (weights and masks) starts another run: its genome is the new root's, and
    its weights load as they were (evopop's own format among the files `ancestor.checkpoint` takes)."""
    from evopop.records.checkpoints import Checkpoint

    config = load_config(TINY, ["compaction.enabled=false", "diversity.enabled=false"])
    first = Developer(config, str(tmp_path / "first"))
    assert first.develop(root_spec(config), None).status == "ok"
    task, arch = first.task, first.arch
    torch.manual_seed(5)
    weights = task.build_model().state_dict()
    genome = Genome.full(arch)
    genome.masks["features.4"][:, :3] = False  # an evolved genome: some synapses dead
    path = tmp_path / "evolved.pt"
    path.write_bytes(Checkpoint(weights, genome.state_dict(), {"generation": 4}).to_bytes())

    resumed = load_config(TINY, [f"ancestor.checkpoint={path}", "compaction.enabled=false", "diversity.enabled=false"])
    outcome = Developer(resumed, str(tmp_path / "second")).develop(root_spec(resumed), None)
    assert outcome.status == "ok", outcome.error
    stored = RunRecords(str(tmp_path / "second")).read_checkpoint("g1-0")
    assert not bool(stored.masks["features.4"][:, :3].any()) and bool(stored.masks["features.4"][:, 3:].all())
    living = stored.masks["features.4"]
    assert torch.equal(stored.weights["features.4.weight"][living], weights["features.4.weight"][living])
