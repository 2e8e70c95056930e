"""The built-in image-classification task on folders of real image files written here, models by name,
and every bad input a user's own data brings, each with one clear message before any work."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evopop.config import ConfigError, load_config
from evopop.data.images import DatasetError, image_folder_splits, split_by_class, torchvision_dataset
from evopop.engine.plan import plan_run
from evopop.models.by_name import head_parameters, model_by_name
from evopop.tasks.images import ImagesTask, TopKAccuracy

CLASSES = ("cat", "dog", "fox")
COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 200), "cow": (120, 120, 120)}
ROOT = Path(__file__).resolve().parents[1]


def write_images(folder: Path, per_class: int, size: int = 24, seed: int = 0, classes=CLASSES) -> None:
    """``per_class`` PNGs per class: the class's colour under noise, so that a network can learn them."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 40, (size, size, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / name / f"{name}_{i:03d}.png")


@pytest.fixture
def split_folder(tmp_path) -> Path:
    """root/train, root/val and root/test, each with a class folder per class."""
    root = tmp_path / "pets"
    write_images(root / "train", 60, seed=1)  # 228 PNGs in all
    write_images(root / "val", 8, seed=2)
    write_images(root / "test", 6, seed=3)
    return root


def images_config(root: Path, *overrides: str):
    base = [
        "task.name=images",
        f"task.args={{root: '{root}', model: 'torchvision:resnet18', image_size: 32}}",
        "train.epochs=1",
        "train.batch_size=16",
        "evolution.generations=2",
        "evolution.offspring=2",
        "resources.trainers=2",
    ]
    return load_config(ROOT / "configs" / "tiny.yaml", [*base, *overrides])


# -- the folder --------------------------------------------------------------------------------------
def test_a_folder_with_train_val_and_test_splits(split_folder):
    (split_folder / "train" / "cat" / "README.txt").write_text("not an image")
    splits = image_folder_splits(split_folder)
    assert splits.classes == list(CLASSES)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (180, 24, 18)
    assert splits.skipped == [str(split_folder / "train" / "cat" / "README.txt")]
    assert splits.describe() == "3 classes: train 180, val 24, test 18 images; skipped 1 files that are not images"
    task = ImagesTask(str(split_folder), image_size=32)
    assert task.eval_set_names() == ["val", "test"] and task.num_classes == 3
    image, label = task.train_set()[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 0


def test_one_folder_of_classes_is_split_per_class_by_a_seeded_fraction(tmp_path):
    write_images(tmp_path / "flat", 20)
    splits = image_folder_splits(tmp_path / "flat", val_fraction=0.25, seed=3)
    assert (len(splits.train), len(splits.val), splits.test) == (45, 15, None)
    assert {label for _, label in splits.val} == {0, 1, 2}, "every class is in val"
    assert not {p for p, _ in splits.train} & {p for p, _ in splits.val}
    assert image_folder_splits(tmp_path / "flat", val_fraction=0.25, seed=3).val == splits.val, "seeded"
    assert image_folder_splits(tmp_path / "flat", val_fraction=0.25, seed=4).val != splits.val
    train, val = split_by_class([("a", 0)], 0.5, 0)
    assert (train, val) == ([("a", 0)], []), "a class of one image stays in training"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: (root / "train" / "emu").mkdir(), "class folder without images: .*emu"),
        (lambda root: (root / "val" / "dog" / "bad.png").write_bytes(b"not a png"), "not a readable image: .*bad.png"),
        (lambda root: write_images(root / "val", 2, classes=("cow",)), "classes the training set lacks: cow"),
    ],
    ids=["empty class folder", "unreadable image", "val class unknown to train"],
)
def test_bad_folders_are_refused_naming_what_is_wrong(tmp_path, damage, message):
    root = tmp_path / "pets"
    write_images(root / "train", 3)
    write_images(root / "val", 2)
    damage(root)
    with pytest.raises(DatasetError, match=message):
        image_folder_splits(root)


def test_a_missing_root_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="image folder .*nowhere does not exist"):
        image_folder_splits(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="task.args.root: .*nowhere does not exist"):
        plan_run(images_config(tmp_path / "nowhere"))


def test_a_bad_folder_stops_the_run_before_any_work_with_exit_2(tmp_path):
    root = tmp_path / "pets"
    write_images(root / "train", 3)
    write_images(root / "val", 2)
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ConfigError, match="task.args.root: .*not a readable image: .*broken.jpg"):
        plan_run(images_config(root))
    config = tmp_path / "run.yaml"
    config.write_text(images_config(root).to_yaml())
    result = subprocess.run(
        [sys.executable, "-m", "evopop", "run", str(config), "--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "broken.jpg" in result.stderr and not (tmp_path / "run").exists()


def test_an_image_damaged_past_its_header_stops_the_run_naming_it(tmp_path):
    """Headers are checked before any work (fast); a body cut short is found at its first read: the run
    stops at generation 1 with the error that names the file, the records intact."""
    from evopop.api import evolve
    from evopop.engine.controller import EvolutionFailed

    root = tmp_path / "pets"
    write_images(root / "train", 4)
    write_images(root / "val", 2)
    whole = root / "train" / "cat" / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(whole)
    data = whole.read_bytes()
    whole.write_bytes(data[: int(len(data) * 0.8)])  # the header reads; the last pixels do not
    config = images_config(root, "resources.executor=local", "evolution.generations=1")
    with pytest.raises(EvolutionFailed, match=r"generation 1 failed; the first error: .*cut.jpg"):
        evolve(config, str(tmp_path / "run"))


def test_a_torchvision_data_set_without_its_files_says_how_to_get_them(tmp_path):
    with pytest.raises(DatasetError, match="lacks the files of torchvision.datasets.CIFAR10.*never downloads"):
        torchvision_dataset("CIFAR10", tmp_path, True)
    with pytest.raises(DatasetError, match="no data set class 'CIFAR11'"):
        torchvision_dataset("CIFAR11", tmp_path, True)
    with pytest.raises(ConfigError, match="task.args.root: .*lacks the files of torchvision.datasets.MNIST"):
        plan_run(images_config(tmp_path, "task.args.dataset=MNIST"))


# -- models by name ----------------------------------------------------------------------------------
def test_models_by_name_are_sized_for_the_data_s_classes(split_folder):
    task = ImagesTask(str(split_folder), model="torchvision:resnet18", image_size=32)
    assert task.build_model().eval()(task.example_input()).shape == (1, 3)
    assert task.head_parameters() == ["fc.weight", "fc.bias"]
    vit = ImagesTask(str(split_folder), model="timm:test_vit", image_size=32, model_args={"img_size": 32})
    assert vit.build_model().eval()(vit.example_input()).shape == (1, 3)
    assert vit.head_parameters() == ["head.weight", "head.bias"]
    assert head_parameters("torchvision:mobilenet_v3_small", 7) == ["classifier.3.weight", "classifier.3.bias"]


def test_unknown_models_and_missing_timm_say_what_to_do(monkeypatch):
    with pytest.raises(ValueError, match="torchvision has no model 'resnet19'; similar: .*resnet"):
        model_by_name("torchvision:resnet19")
    with pytest.raises(ValueError, match="timm has no model 'not_a_net'"):
        model_by_name("timm:not_a_net")
    with pytest.raises(ValueError, match="expected torchvision:NAME, timm:NAME or package.module:callable"):
        model_by_name("resnet18")
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    with pytest.raises(ValueError, match=r"needs timm: pip install 'evopop\[timm\]'"):
        model_by_name("timm:test_vit")


def test_top_k_accuracy():
    metric = TopKAccuracy(2)
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]])
    metric.update(logits, torch.tensor([0, 2, 0]))  # right; second best; last
    assert metric.compute() == {"accuracy": 1 / 3, "top2": 2 / 3}


# -- end to end --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_torchvision_resnet_evolves_on_an_image_folder_on_ray(ray_cluster, split_folder, tmp_path):
    from evopop.api import evolve

    config = images_config(split_folder)
    population = evolve(config, str(tmp_path / "run"))
    assert len(population) == 3 and (population["status"] == "ok").all()
    for column in ("val_accuracy", "val_top5", "test_accuracy", "test_top5"):
        assert population[column].between(0, 1).all(), column
    assert np.isfinite(population["val_loss"]).all() and (population["val_loss"] >= 0).all()
    assert (population["val_top5"] == 1.0).all(), "three classes: the top five hold the right one"
    offspring = population[population["generation"] == 2]
    assert (offspring["synapses"] < population.loc[population["generation"] == 1, "synapses"].iloc[0]).all()


@pytest.mark.slow
def test_a_timm_vit_evolves_on_a_folder_of_classes_on_ray(ray_cluster, split_folder, tmp_path):
    from evopop.api import evolve

    flat = split_folder / "train"  # one folder of classes, split by val_fraction
    config = images_config(
        flat,
        "task.args.model=timm:vit_tiny_patch16_224",
        "task.args.model_args={img_size: 32}",
        "task.args.val_fraction=0.2",
    )
    population = evolve(config, str(tmp_path / "run"))
    assert len(population) == 3 and (population["status"] == "ok").all()
    assert population["node_id"].notna().all(), "developed by Ray trainers"
    assert "test_accuracy" not in population.columns
    assert population["val_accuracy"].notna().all()
    assert population["compact_macs"].notna().all(), "traced and compacted: its attention and norms followed"


def test_the_readme_s_own_model_and_data_config_is_valid(split_folder):
    """The YAML of the README's "Your own model and data", pointed at a folder written here, passes preflight."""
    import re
    import shlex

    import yaml

    section = (ROOT / "README.md").read_text().split("## Your own model and data", 1)[1]
    (text,) = re.findall(r"```yaml\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    raw = yaml.safe_load(text)
    assert raw["task"]["args"]["root"] == "/data/pets"
    raw["task"]["args"]["root"] = str(split_folder)
    plan = plan_run(load_config(raw))
    assert (
        plan.metric == "val_accuracy" and "val_top5" in plan.metric_columns and "test_accuracy" in plan.metric_columns
    )
    # the same config through `ray job submit`: its overrides load onto it
    (command,) = re.findall(r"```bash\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    overrides = shlex.split(re.sub(r"\\\n\s*", " ", command).split("evopop run pets.yaml", 1)[1])
    submitted = load_config(yaml.safe_load(text), overrides)
    assert submitted.task.args["root"] == "/shared/pets" and submitted.resources.gpus_per_trainer == 0.5


# -- ancestors from the wild ---------------------------------------------------------------------------
def save_ancestor(model: torch.nn.Module, path: Path, how: str) -> Path:
    """``model``'s weights saved the way ``how`` names: the ways people save them."""
    weights = model.state_dict()
    if how == "safetensors":
        from safetensors.torch import save_file

        path = path.with_suffix(".safetensors")
        save_file(weights, str(path))
        return path
    payload = {
        "state_dict": weights,
        "lightning": {"state_dict": {f"model.{k}": v for k, v in weights.items()}, "epoch": 3},
        "data_parallel": {f"module.{k}": v for k, v in weights.items()},
        "training_checkpoint": {"model_state_dict": weights, "optimizer_state_dict": {"state": {}}, "epoch": 3},
        # torchvision's and timm's training scripts: their arguments, paths and numpy numbers beside the weights
        "reference_script": {
            "model": weights,
            "args": __import__("argparse").Namespace(lr=0.1, output_dir=Path("/runs/x")),
            "best_acc1": np.float64(0.91),
            "epoch": 89,
        },
        "pickled_module": model,
    }[how]
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(
    "how", ["state_dict", "lightning", "data_parallel", "training_checkpoint", "reference_script", "safetensors"]
)
def test_ancestor_files_load_however_they_were_saved(split_folder, tmp_path, how, capsys):
    from evopop.engine.worker.weights import load_ancestor

    trained = model_by_name("torchvision:resnet18", 3)
    path = save_ancestor(trained, tmp_path / "ancestor.pt", how)
    config = images_config(split_folder, f"ancestor.checkpoint={path}")
    plan_run(config)
    assert "ancestor.checkpoint: loaded 122 of the network's 122 tensors\n" in capsys.readouterr().out
    task = ImagesTask(str(split_folder), image_size=32)
    model = task.build_model()
    loaded = load_ancestor(str(path), model, _arch(task), task.head_parameters())
    assert loaded.fresh == ()
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def _arch(task):
    from evopop.synthesis import trace_architecture

    return trace_architecture(task.build_model(), task.example_input())


def test_an_ancestor_with_a_head_for_other_classes_loads_its_backbone_and_trains_a_fresh_head(
    split_folder, tmp_path, capsys
):
    from evopop.engine.policy.specs import root_spec
    from evopop.engine.worker.develop import Developer

    imagenet = model_by_name("torchvision:resnet18")  # 1000 classes, as a downloaded torchvision file
    path = save_ancestor(imagenet, tmp_path / "resnet18.pth", "state_dict")
    config = images_config(split_folder, f"ancestor.checkpoint={path}", "ancestor.epochs=1")
    plan_run(config)
    said = capsys.readouterr().out
    assert (
        "loaded 120 of the network's 122 tensors; the head starts fresh (fc.weight, fc.bias: 1000 classes in the "
        "file, 3 here) and trains with the ancestor" in said
    )
    developer = Developer(config, str(tmp_path / "run"))
    outcome = developer.develop(root_spec(config), None)
    assert outcome.status == "ok", outcome.error
    assert outcome.epochs == 1, "a fresh head is trained, not measured as it is"
    assert set(outcome.metrics) >= {"val_accuracy", "val_top5", "test_accuracy"}


def test_ancestor_files_that_cannot_load_say_why(split_folder, tmp_path):
    pickled = save_ancestor(model_by_name("torchvision:resnet18", 3), tmp_path / "whole.pt", "pickled_module")
    with pytest.raises(
        ConfigError, match=r"whole pickled model \(torchvision.models.resnet.ResNet\).*torch.save\(model.state_dict\(\)"
    ):
        plan_run(images_config(split_folder, f"ancestor.checkpoint={pickled}"))
    other = save_ancestor(model_by_name("torchvision:resnet34", 3), tmp_path / "resnet34.pt", "state_dict")
    with pytest.raises(ConfigError, match="ancestor.checkpoint: .*resnet34.pt does not fit the task's network") as e:
        plan_run(images_config(split_folder, f"ancestor.checkpoint={other}"))
    # counts and a few names, not every one of resnet34's extra keys
    assert re.search(r"\d+ unexpected \(layer1\.2\.conv1\.weight, .*, \.\.\. \(\d+ more\)\)", str(e.value))
    assert len(str(e.value)) < 600


@pytest.mark.slow
def test_an_individual_exports_in_a_fresh_process_from_a_copied_run_without_the_data(split_folder, tmp_path):
    """The run directory alone, copied to where the image folder is not, exports a compacted program."""
    import json
    import shutil

    from evopop.api import evolve

    config = images_config(split_folder, "resources.executor=local", "evolution.encoding=cluster")
    population = evolve(config, str(tmp_path / "run"))
    individual = population.loc[population["generation"] == 2, "individual_id"].iloc[0]
    copied = shutil.copytree(tmp_path / "run", tmp_path / "elsewhere" / "run")
    shutil.rmtree(split_folder)  # the data is gone, as on another machine
    out = tmp_path / "elsewhere" / "offspring.pt2"
    result = subprocess.run(
        [sys.executable, "-m", "evopop", "export", str(copied), individual, "--out", str(out)],
        cwd=tmp_path / "elsewhere",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    program = torch.export.load(str(out)).module()
    assert program(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    metadata = json.loads(Path(f"{out}.json").read_text())
    assert metadata["compacted"]["macs"] < population.loc[population["generation"] == 1, "dense_macs"].iloc[0]


def test_a_head_for_other_classes_loads_from_files_without_batch_norm_step_counts(split_folder, tmp_path):
    from evopop.engine.worker.weights import load_ancestor

    weights = {k: v for k, v in model_by_name("torchvision:resnet18").state_dict().items()}
    old = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}  # as older weight files
    torch.save(old, tmp_path / "old.pth")
    task = ImagesTask(str(split_folder), image_size=32)
    loaded = load_ancestor(str(tmp_path / "old.pth"), task.build_model(), _arch(task), task.head_parameters())
    assert loaded.fresh == ("fc.weight", "fc.bias") and loaded.classes == (1000, 3)


def test_folder_layouts_evopop_would_misread_are_refused_and_hidden_files_skipped(tmp_path):
    root = tmp_path / "pets"
    write_images(root / "train", 3)
    write_images(root / "test", 2)  # no val/: these are not classes named train and test
    with pytest.raises(DatasetError, match=r"split folders \(test, train\) but not the layout"):
        image_folder_splits(root)
    flat = tmp_path / "flat"
    write_images(flat, 3)
    (flat / "cat" / "._cat_000.png").write_bytes(b"AppleDouble")  # macOS's resource forks
    assert len(image_folder_splits(flat).skipped) == 1
    single = tmp_path / "single"
    write_images(single, 1)
    with pytest.raises(DatasetError, match="no class has two images"):
        image_folder_splits(single)


def test_torchvision_data_sets_use_their_own_splits_and_others_are_refused(tmp_path):
    from evopop.data.images import held_out, torchvision_splits

    assert torchvision_splits("CIFAR10") == (True, None, False), "val held out of train; the test set is test"
    assert torchvision_splits("Flowers102") == ("train", "val", "test")
    assert torchvision_splits("OxfordIIITPet") == ("trainval", None, "test")
    with pytest.raises(DatasetError, match="does not know its train / val / test splits"):
        torchvision_splits("EuroSAT")
    train, val = held_out(100, 0.1, 0)
    assert len(val) == 10 and not set(train) & set(val) and held_out(100, 0.1, 0) == (train, val)
    assert ImagesTask(str(tmp_path), dataset="CIFAR10").eval_set_names() == ["val", "test"]


@pytest.mark.slow
@pytest.mark.parametrize("protect", [True, False])
def test_the_head_the_data_sized_is_protected_from_mutation_by_default(split_folder, tmp_path, protect):
    from evopop.api import evolve
    from evopop.records.run import RunRecords

    config = images_config(
        split_folder,
        "resources.executor=local",
        "evolution.environment={c: 0.5, mode: budget}",
        f"evolution.protect_head={str(protect).lower()}",
    )
    evolve(config, str(tmp_path / "run"))
    layers = RunRecords(str(tmp_path / "run")).layers()
    offspring = layers[layers["individual_id"].str.startswith("g2-")]
    head = offspring[offspring["layer"] == "fc"]["living_fraction"]
    assert len(head) == 2
    assert (head == 1.0).all() if protect else (head < 0.9).all()
    assert (offspring[offspring["layer"] == "conv1"]["living_fraction"] < 0.9).all(), "the rest evolves"
