"""SaliencyNet (shape, synapse count, fx wiring, ImageNet init) and the saliency task."""

import pytest
import torch

from evopop.models.saliency import VGG16_IMAGENET_FILE, SaliencyNet, load_vgg16_imagenet
from evopop.synthesis import trace_architecture
from evopop.tasks.base import Task
from evopop.tasks.saliency import SaliencyTask, saliency

DOCUMENTED_SYNAPSES = 65_010_880  # evopop/models/saliency.py; the reference reports 63,767,232
VGG16_CONVS = [
    (3, 64),
    (64, 64),
    (64, 128),
    (128, 128),
    (128, 256),
    (256, 256),
    (256, 256),
    (256, 512),
    (512, 512),
    (512, 512),
    (512, 512),
    (512, 512),
    (512, 512),
]


def expected_synapses_at_width_1() -> int:
    """The layer list of the module doc, written out: (inputs, outputs, kernel height * width)."""
    layers = [(i, o, 3 * 3) for i, o in VGG16_CONVS]
    layers += [(256, 256, 3 * 3), (512, 512, 3 * 3), (512, 512, 3 * 3)]  # c6, c7, c8
    layers += [(512, 512, 4 * 4)] * 3  # d1 (1 deconv), d2 (2 deconvs)
    layers += [(256 + 512 + 512, 384, 1), (512, 512, 11 * 11), (512, 384, 1)]  # c9, c10, c11
    layers += [(384, 2, 1), (384, 2, 1)]  # classifiers on c9 and c11
    return sum(i * o * k for i, o, k in layers)


@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    return SaliencyNet(width=0.125).eval()


@pytest.mark.parametrize("size", [64, 96, 72])
def test_output_is_two_class_logits_at_input_resolution(small_net, size):
    with torch.no_grad():
        out = small_net(torch.randn(2, 3, size, size))
    assert out.shape == (2, 2, size, size)
    assert torch.isfinite(out).all()


def test_synapse_count_at_width_1_on_meta_device():
    with torch.device("meta"):
        net = SaliencyNet()
    arch = trace_architecture(net, torch.empty(1, 3, 224, 224, device="meta"))
    assert arch.traced
    assert expected_synapses_at_width_1() == DOCUMENTED_SYNAPSES
    assert arch.synapses == DOCUMENTED_SYNAPSES
    assert len(arch.layers) == 13 + 3 + 3 + 3 + 2


def test_fx_tracing_wires_every_layer_to_real_producers(small_net):
    arch = trace_architecture(small_net, torch.zeros(1, 3, 64, 64))
    assert arch.traced, arch.note
    for name in arch.names:
        producers = {src.producer for channel_map in arch.inputs[name] for src in channel_map.sources}
        if name == "c1.0":
            assert producers == {None}  # the image
        else:
            assert None not in producers, f"{name} reads through a barrier"
    (c9_input,) = arch.inputs["c9.0"]
    fed = {src.producer: int((src.index >= 0).sum()) for src in c9_input.sources}
    assert fed == {"c6.0": 32, "d1.0": 64, "d2.2": 64}  # concat(c6, d1, d2) at width 1/8
    assert {src.producer for src in arch.inputs["c10.0"][0].sources} == {"c5.4"}
    assert {src.producer for src in arch.inputs["c11.0"][0].sources} == {"c10.0"}


def test_width_scales_hidden_channels_with_a_floor():
    tiny = SaliencyNet(width=0.01)
    assert tiny.c1[0].out_channels == 4 and tiny.c1[0].in_channels == 3
    assert tiny.score_local.out_channels == 2
    with torch.no_grad():
        assert tiny(torch.zeros(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_batch_norm_variant_traces_with_attachments():
    net = SaliencyNet(width=0.125, batch_norm=True)
    arch = trace_architecture(net, torch.zeros(1, 3, 64, 64))
    assert arch.traced and len(arch.attachments) == 22  # every conv/deconv but the 2 classifiers


# -- ImageNet initialisation ----------------------------------------------------------------------
def fake_vgg16_state() -> dict[str, torch.Tensor]:
    """A state dict laid out as torchvision's vgg16 (features.N convs, a classifier to ignore)."""
    indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    state = {}
    for index, (i, o) in zip(indices, VGG16_CONVS):
        state[f"features.{index}.weight"] = torch.randn(o, i, 3, 3)
        state[f"features.{index}.bias"] = torch.randn(o)
    state["classifier.0.weight"] = torch.randn(4, 4)
    return state


def meta_then_empty() -> SaliencyNet:
    with torch.device("meta"):
        net = SaliencyNet()
    return net.to_empty(device="cpu")  # skips the (slow, here useless) random init


def test_load_vgg16_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    state = fake_vgg16_state()
    torch.save(state, checkpoints / VGG16_IMAGENET_FILE)
    net = load_vgg16_imagenet(meta_then_empty())
    assert torch.equal(net.c1[0].weight, state["features.0.weight"])
    assert torch.equal(net.c3[4].bias, state["features.14.bias"])
    assert torch.equal(net.c5[4].weight, state["features.28.weight"])


def test_missing_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with torch.device("meta"):
        net = SaliencyNet()
    with pytest.raises(FileNotFoundError, match=VGG16_IMAGENET_FILE) as info:
        load_vgg16_imagenet(net)
    assert str(tmp_path / "hub" / "checkpoints") in str(info.value)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_vgg16_imagenet(net, tmp_path / "nowhere.pth")


def test_pretrained_needs_width_1():
    with pytest.raises(ValueError, match="width 1.0"):
        load_vgg16_imagenet(SaliencyNet(width=0.125))
    with pytest.raises(ValueError, match="width 1.0"):
        SaliencyTask(width=0.5, pretrained="imagenet")


# -- the task -------------------------------------------------------------------------------------
def test_procedural_task_end_to_end():
    task = saliency(width=0.125, train_n=6, val_n=4, test_n=3, size=48)
    assert isinstance(task, Task)
    task.validate()
    assert task.default_metric == "val_fbeta_max" and task.default_direction == "max"
    assert task.metric_names() == [
        "mae",
        "fbeta_adaptive",
        "fbeta_max",
        "fbeta_mean",
        "smeasure",
        "emeasure_adaptive",
        "emeasure_max",
        "emeasure_mean",
    ]
    assert list(task.eval_sets()) == task.eval_set_names() == ["val", "test"]
    assert len(task.train_set()) == 6 and len(task.eval_sets()["test"]) == 3
    images = torch.stack([task.train_set()[i][0] for i in range(2)])
    masks = torch.stack([task.train_set()[i][1] for i in range(2)])
    torch.manual_seed(0)
    net = task.build_model()
    assert task.example_input().shape == (1, 3, 48, 48)
    out = net(images)
    loss = task.loss(out, masks)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    metric = task.metrics()
    metric.update(out.detach(), masks)
    assert set(metric.compute()) == set(task.metric_names())


def test_task_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dataset"):
        SaliencyTask(dataset="imagenet")
    with pytest.raises(ValueError, match="root"):
        SaliencyTask(dataset="msra_b")
    with pytest.raises(ValueError, match="'train' and 'val'"):
        SaliencyTask(dataset="folder", folders={"train": {"images": "a", "masks": "b"}})
    with pytest.raises(ValueError, match="identifier"):
        SaliencyTask(extra_eval_sets={"pascal-s": {"images": "a", "masks": "b"}})
    with pytest.raises(TypeError):
        saliency(no_such_argument=1)


def test_msra_b_task_with_extra_eval_sets(tmp_path):
    from test_saliency_data import make_msra_b, write_image, write_mask

    root = make_msra_b(tmp_path / "MSRA-B")
    for stem in ("p", "q"):
        write_image(tmp_path / "HKU-IS" / "imgs" / f"{stem}.png")
        write_mask(tmp_path / "HKU-IS" / "gt" / f"{stem}.png")
    task = SaliencyTask(
        dataset="msra_b",
        root=str(root),
        size=32,
        width=0.125,
        hku_is_root=str(tmp_path / "HKU-IS"),
        extra_eval_sets={"ecssd": {"images": str(root / "image"), "masks": str(root / "annotation")}},
    )
    task.validate()
    assert list(task.eval_sets()) == ["val", "test", "hku_is", "ecssd"]
    assert len(task.train_set()) == 3 and len(task.eval_sets()["hku_is"]) == 2
    assert task.train_set()[0][0].shape == (3, 32, 32)


def test_pretrained_task_fails_validation_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    task = SaliencyTask(pretrained="imagenet", train_n=2, val_n=2, test_n=2)
    with pytest.raises(FileNotFoundError, match=VGG16_IMAGENET_FILE):
        task.validate()
