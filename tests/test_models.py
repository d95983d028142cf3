"""Models, built through the config presets (conf/model/*.yaml) exactly as a run builds them."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from ltsearch.errors import ConfigError
from ltsearch.masking import keep_count, prunable_weights
from ltsearch.models import build_model
from tests.conftest import make_config

IMAGE = "dataset.shape=[3,32,32]"


def build(*overrides: str, seed: int = 0, classes: int = 10) -> tuple[nn.Module, list[str]]:
    """The preset's model for a fake dataset of the given shape; returns it with the preset's exclusions."""
    return _build(overrides, seed, classes)


@functools.cache
def _build(overrides: tuple[str, ...], seed: int, classes: int) -> tuple[nn.Module, list[str]]:
    # cached: the big presets are built once per session (tests only read them)
    cfg = make_config("dataset=fake", *overrides)
    model = build_model(cfg.model, tuple(cfg.dataset.shape), classes, seed)
    return model, list(cfg.model.exclude)


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    _build.cache_clear()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def n_prunable(model: nn.Module, exclude: list[str]) -> int:
    return sum(w.numel() for w in prunable_weights(model, exclude).values())


# (overrides, total parameters or None, prunable weights or None, prunable layers or None)
KNOWN = {
    # open_lth's ResNet-20: 272,474 parameters, every conv (stem, 1x1 shortcuts) and the FC prunable
    "resnet20": (("model=resnet20", IMAGE), 272_474, 270_896, 22),
    # the CTS authors' variant: 3x3 stride-2 projection shortcuts
    "resnet20_conv3x3": (("model=resnet20", IMAGE, "model.shortcut=conv3x3"), None, 291_376, 22),
    # LeNet-300-100 on 28x28 inputs; the preset does not prune the output layer
    "lenet300100": (("model=lenet300100", "dataset.shape=[1,28,28]"), 266_610, 265_200, 2),
    # VGG-16 (BN): 13 conv layers; the classifier is excluded by the preset
    "vgg16": (("model=vgg16", IMAGE), None, 14_710_464, 13),
    # Frankle & Carbin's Conv-2: "4.3M"
    "conv2": (("model=conv2", IMAGE), 4_301_642, None, 5),
    # CIFAR ResNet-18 for 10 classes
    "resnet18": (("model=resnet18", IMAGE), 11_173_962, None, 21),
}


@pytest.mark.parametrize("name", list(KNOWN))
def test_parameter_counts_match_the_literature(name):
    overrides, total, prunable, layers = KNOWN[name]
    model, exclude = build(*overrides)
    if total is not None:
        assert n_params(model) == total
    if prunable is not None:
        assert n_prunable(model, exclude) == prunable
    if layers is not None:
        assert len(prunable_weights(model, exclude)) == layers


def test_vgg16_has_13_convs_and_its_classifier_is_not_prunable():
    model, exclude = build("model=vgg16", IMAGE)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    assert set(prunable_weights(model, exclude)) == {f"features.{i}.weight" for i, m in enumerate(model.features)
                                                     if isinstance(m, nn.Conv2d)}
    assert "classifier.weight" not in prunable_weights(model, exclude)


def test_resnet20_includes_stem_shortcuts_and_fc_in_pruning():
    model, exclude = build("model=resnet20", IMAGE)
    names = set(prunable_weights(model, exclude))
    assert {"conv.weight", "fc.weight"} <= names
    shortcuts = sorted(n for n in names if "shortcut" in n)
    assert len(shortcuts) == 2  # one projection per stage transition
    for name in shortcuts:
        assert dict(model.named_parameters())[name].shape[-2:] == (1, 1)
    model3, _ = build("model=resnet20", IMAGE, "model.shortcut=conv3x3")
    for name in shortcuts:
        conv = model3.get_submodule(name.removesuffix(".weight"))
        assert conv.kernel_size == (3, 3) and conv.stride == (2, 2)


def test_lenet_preset_excludes_only_the_output_layer():
    model, exclude = build("model=lenet300100", "dataset.shape=[1,28,28]")
    assert set(prunable_weights(model, exclude)) == {"hidden.0.weight", "hidden.1.weight"}
    assert "output.weight" in prunable_weights(model)  # only the preset's exclusion removes it


def test_cnn1d_doubles_its_channels_pools_and_keeps_its_first_convolution():
    model, exclude = build("model=cnn1d", "dataset.shape=[1,40]")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256]
    # the quickstart's network: mean over positions before the head, first convolution never pruned
    assert model.output.in_features == 256 and exclude == ["features.0.0.weight"]
    prunable = sum(w.numel() for w in prunable_weights(model, exclude).values())
    assert prunable == 64 * 32 * 3 + 128 * 64 * 3 + 256 * 128 * 3 + 10 * 256 == 131584
    assert keep_count(1 - 0.993, prunable) == 921
    flat, _ = build("model=cnn1d", "model.head=flatten", "model.exclude=[]", "dataset.shape=[1,40]")
    total = sum(w.numel() for w in prunable_weights(flat).values())
    assert total == 32 * 5 + 64 * 32 * 3 + 128 * 64 * 3 + 256 * 128 * 3 + 10 * 256 * 5 == 141984
    x = torch.randn(4, 1, 40)
    assert model(x).shape == flat(x).shape == (4, 10)
    small, _ = build("model=cnn1d", "model.width=8", "dataset.shape=[1,40]")
    assert [c.out_channels for c in small.modules() if isinstance(c, nn.Conv1d)] == [8, 16, 32, 64]


def test_head_option_is_refused_where_the_network_builds_its_own_head():
    with pytest.raises(ConfigError, match=r"model.head=avgpool is an option of model=cnn1d only; model=mlp"):
        build("model=lenet300100", "model.head=avgpool", "dataset.shape=[1,28,28]")


def test_resnet_depths_and_vgg_depths():
    counts = {}
    for preset in ("resnet20", "resnet32", "resnet56"):
        model, _ = build(f"model={preset}", "dataset.shape=[3,8,8]")
        counts[preset] = sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules())
    # 6n+2 layers: the stem, 6n convs in blocks, the fc (1x1 shortcuts are not counted)
    assert counts == {"resnet20": 19, "resnet32": 31, "resnet56": 55}
    for preset, convs in (("vgg11", 8), ("vgg16", 13), ("vgg19", 16)):
        model, _ = build(f"model={preset}", "dataset.shape=[3,16,16]")
        assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == convs


FORWARD = [
    ("model=mlp1d", "dataset.shape=[1,40]"),
    ("model=cnn1d", "dataset.shape=[1,40]"),
    ("model=lenet300100", "dataset.shape=[1,28,28]"),
    ("model=conv2", IMAGE),
    ("model=conv4", IMAGE),
    ("model=conv6", IMAGE),
    ("model=resnet20", IMAGE),
    ("model=resnet20", IMAGE, "model.shortcut=conv3x3"),
    ("model=resnet32", "dataset.shape=[3,8,8]"),
    ("model=resnet56", "dataset.shape=[3,8,8]"),
    ("model=vgg11", "dataset.shape=[3,16,16]"),
    ("model=vgg16", IMAGE),
    ("model=vgg19", "dataset.shape=[3,16,16]"),
    ("model=resnet18", IMAGE),
]


@pytest.mark.parametrize("overrides", FORWARD, ids=lambda o: "-".join(x.split("=")[1] for x in o))
def test_forward_output_shape(overrides):
    model, _ = build(*overrides)
    classes = 10
    shape = tuple(int(s) for s in overrides[1].split("=")[1].strip("[]").split(","))
    model.train()
    with torch.no_grad():
        out = model(torch.randn(3, *shape))
    assert out.shape == (3, classes)
    assert torch.isfinite(out).all()


def test_same_seed_same_init_and_independent_of_global_rng():
    cfg = make_config("dataset=fake", "model=resnet20", "dataset.shape=[3,8,8]")
    torch.manual_seed(1)
    a = build_model(cfg.model, (3, 8, 8), 10, seed=7)
    torch.manual_seed(2)
    torch.randn(100)
    b = build_model(cfg.model, (3, 8, 8), 10, seed=7)
    c = build_model(cfg.model, (3, 8, 8), 10, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv.weight"], sc["conv.weight"])
    # building a model does not advance the global generator
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    build_model(cfg.model, (3, 8, 8), 10, seed=0)
    assert torch.equal(torch.rand(4), expected)


def test_init_scheme():
    """bn_init=ones / bias_init=zeros (the uniform scheme and PyTorch's biases: tests/test_paper_presets.py)."""
    model, _ = build("model=resnet20", "dataset.shape=[3,8,8]", "model.bn_init=ones", "model.bias_init=zeros")
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    assert torch.all(model.fc.bias == 0)
    # Kaiming normal, fan-in: std = sqrt(2 / fan_in)
    w = model.blocks[3].conv2.weight.detach()
    expected = (2 / (w.shape[1] * 9)) ** 0.5
    assert abs(float(w.std()) - expected) < 0.1 * expected


@pytest.mark.parametrize("overrides, match", [
    (("model=resnet20", "dataset.shape=[1,40]"), "needs image inputs"),
    (("model=cnn1d", IMAGE), "needs 1-D inputs"),
    (("model=conv2", "dataset.shape=[1,40]"), "needs image inputs"),
    (("model=vgg16", "dataset.shape=[3,8,8]"), "does not accept inputs of shape"),
    (("model=conv6", "dataset.shape=[3,4,4]"), "does not accept inputs of shape"),
    (("model=resnet20", "model.depth=21", IMAGE), "6n\\+2"),
    (("model=vgg16", "model.depth=17", IMAGE), "VGG depth"),
])
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_model_dataset_mismatch_is_a_config_error(overrides, match):
    cfg = make_config("dataset=fake", *overrides)
    with pytest.raises(ConfigError, match=match):
        build_model(cfg.model, tuple(cfg.dataset.shape), 10, 0)


def test_unknown_model_name_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown model.name"):
        make_config("model.name=resnet999")


def test_a_cifar_resnet_on_large_images_warns_once_naming_the_imagenet_resnet(tmp_path):
    """model=resnet18 on 96 px images is the CIFAR ResNet-18 at full resolution (9x the cost per layer; 49x at
    224 px): the run says so once, however often it builds the network, and names model=resnet18_imagenet."""
    from ltsearch.models.resnet import stem_advice
    from tests.test_bad_inputs import cli

    cfg = make_config("model=resnet20")
    assert stem_advice(cfg.model, (3, 32, 32)) is None and stem_advice(cfg.model, (3, 64, 64)) is None
    assert "the CIFAR ResNet-20" in stem_advice(cfg.model, (3, 96, 96))
    assert stem_advice(make_config("model=resnet18_imagenet").model, (3, 224, 224)) is None
    run_dir = tmp_path / "run"
    rc, _, err = cli("run", "model=resnet18", "model.width=2", "dataset=fake", "dataset.shape=[3,96,96]",
                     "dataset.num_classes=3", "dataset.train_size=16", "dataset.test_size=8", "train=tiny",
                     "train.batch_size=8", "train.epochs=2", "runtime.progress=false", "runtime.threads=1",
                     "pruner=random", "stages=[search,rewind,retrain]", f"hydra.run.dir={run_dir}")
    assert rc == 0, err
    warnings = [ln for ln in (run_dir / "run.log").read_text().splitlines() if "CIFAR ResNet-18" in ln]
    assert len(warnings) == 1 and "[WARNING]" in warnings[0], warnings  # though every stage builds the network
    assert "96x96 inputs" in warnings[0] and "use model=resnet18_imagenet" in warnings[0]
