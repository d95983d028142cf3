"""The paper presets build the networks as their authors build them: prunable-weight counts, BatchNorm at
initialisation, batch statistics everywhere (evaluation that depends on the batch), every pruner composing
with every preset, the CTS authors' search length, SynFlow and the CTS teacher cache on such networks, and
an artifact cache that never hands a pretraining of one BatchNorm scheme to a run of another."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from torch import nn

import ltsearch
from ltsearch import cli as ltsearch_cli
from ltsearch.cache import spec_key
from ltsearch.compose import register_configs, to_config
from ltsearch.config import DatasetConfig, RuntimeConfig, config_container
from ltsearch.data import build_data
from ltsearch.data.stream import load_image_folder
from ltsearch.errors import ConfigError, ResumeError
from ltsearch.masking import prunable_modules
from ltsearch.models import build_model
from ltsearch.pipeline import check_record, run_pipeline
from ltsearch.pruners.concrete import per_sample_function
from ltsearch.rundir import write_record
from ltsearch.seeding import derive_seed
from tests.conftest import REPO, make_config
from tests.test_data import make_folder
from tests.test_stream import bench_stream

PAPER = ["resnet20_cifar10", "resnet20_cifar100", "vgg16_cifar10", "vgg16_cifar100", "resnet50_imagenet",
         "resnet18_tinyimagenet"]
OPENLTH = ["resnet20_cifar10_openlth", "vgg16_cifar10_openlth"]
PRUNERS = sorted(p.stem for p in (REPO / "conf" / "pruner").glob("*.yaml"))
SMALL = ["dataset=fake", "dataset.shape=[3,8,8]", "dataset.train_size=256", "dataset.test_size=128",
         "runtime.progress=false", "runtime.threads=1"]


@functools.cache
def preset_model(preset: str, input_shape: tuple[int, ...], classes: int, *overrides: str
                 ) -> tuple[nn.Module, list[str]]:
    """The preset's network (cached: tests only read it) and its exclusions."""
    cfg = make_config(f"experiment={preset}", "dataset.root=/data", *overrides)
    return build_model(cfg.model, input_shape, classes, seed=0), list(cfg.model.exclude)


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    preset_model.cache_clear()


def prunable_count(model: nn.Module, exclude: list[str]) -> int:
    return sum(m.weight.numel() for m in prunable_modules(model, exclude).values())


def bottleneck_resnet50_count(classes: int = 1000) -> int:
    """The CTS authors' ResNet-50 (ResNetImagenet: a lottery layer per conv and the FC), counted from its plan."""
    n = 3 * 64 * 7 * 7  # stem
    c_in = 64
    for planes, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True):
        for b in range(blocks):
            n += c_in * planes + 9 * planes * planes + planes * 4 * planes  # 1x1, 3x3, 1x1
            if b == 0:
                n += c_in * 4 * planes  # the projection shortcut
            c_in = 4 * planes
    return n + 2048 * classes


@pytest.mark.parametrize("preset, shape, classes, expected", [
    ("resnet20_cifar10", (3, 32, 32), 10, 291_376),         # 3x3 shortcuts, every conv and the FC
    ("resnet20_cifar10_openlth", (3, 32, 32), 10, 270_896),  # 1x1 shortcuts
    ("vgg16_cifar10", (3, 32, 32), 10, 14_710_464),          # the 13 convs only
    ("vgg16_cifar10_openlth", (3, 32, 32), 10, 14_710_464),
    ("resnet50_imagenet", (3, 64, 64), 1000, 25_502_912),    # every conv and the FC
])
def test_prunable_weights_equal_the_authors_counts(preset, shape, classes, expected):
    model, exclude = preset_model(preset, shape, classes)
    assert prunable_count(model, exclude) == expected
    if preset == "resnet50_imagenet":
        assert expected == bottleneck_resnet50_count()
    if preset == "resnet20_cifar10_openlth":
        assert sum(p.numel() for p in model.parameters()) == 272_474  # open_lth's ResNet-20


@pytest.mark.parametrize("preset, shape, classes", [
    ("resnet20_cifar10", (3, 32, 32), 10), ("vgg16_cifar10", (3, 32, 32), 10),
    ("resnet50_imagenet", (3, 64, 64), 1000), ("resnet20_cifar10_openlth", (3, 32, 32), 10),
])
def test_batchnorm_at_initialisation_is_uniform_and_biases_are_pytorchs(preset, shape, classes):
    """gamma ~ U(0, 1) (mean 1/2, std 1/sqrt(12)), beta 0, as open_lth's batchnorm_init=uniform and the CTS
    authors' bn_init; the classifier's bias as nn.Linear draws it, in (-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    model, _ = preset_model(preset, shape, classes)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    gamma = torch.cat([m.weight.detach() for m in norms])
    assert torch.all((gamma >= 0) & (gamma < 1))
    assert abs(float(gamma.mean()) - 0.5) < 5 * (1 / 12) ** 0.5 / gamma.numel() ** 0.5
    assert abs(float(gamma.std()) - (1 / 12) ** 0.5) < 0.03
    assert all(torch.all(m.bias == 0) for m in norms)
    fc = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    bound = fc.in_features ** -0.5
    assert torch.any(fc.bias != 0) and torch.all(fc.bias.abs() <= bound)


def test_quickstart_networks_are_initialised_as_before():
    """cnn1d and mlp1d keep gamma 1, running statistics and zero biases: the same w0 as the initialisation
    before these options existed (rebuilt here by hand: Kaiming normal in module order, zero biases, BN 1)."""
    for overrides in ([], ["model=mlp1d"]):
        cfg = make_config(*overrides)
        assert (cfg.model.bn_init.value, cfg.model.bn_stats.value, cfg.model.bias_init.value) == \
            ("ones", "running", "zeros")
        model = build_model(cfg.model, (1, 40), 10, seed=5)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(5, "init"))
            ref = type(model)(*_constructor_args(cfg, model))
            for m in ref.modules():
                if isinstance(m, nn.Conv1d | nn.Linear):
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm1d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        own, want = model.state_dict(), ref.state_dict()
        assert set(own) == set(want) and all(torch.equal(own[k], want[k]) for k in own)
        assert any("running_mean" in k for k in own) or cfg.model.name == "mlp"


def _constructor_args(cfg, model):
    if cfg.model.name == "cnn1d":
        return 1, 40, [cfg.model.width * 2 ** i for i in range(4)], 10, cfg.model.head
    return 40, list(cfg.model.hidden), 10


def test_batch_statistics_network_has_no_running_statistics_and_evaluates_per_batch():
    paper, _ = preset_model("resnet20_cifar10", (3, 8, 8), 10, "model.width=4")
    standard, _ = preset_model("resnet20_cifar10_openlth", (3, 8, 8), 10, "model.width=4")
    assert not any("running" in k or "num_batches" in k for k in paper.state_dict())
    assert all(not m.track_running_stats for m in paper.modules() if isinstance(m, nn.BatchNorm2d))
    assert any("running_mean" in k for k in standard.state_dict())
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        paper.eval()
        standard.eval()
        # batch statistics: a sample's output depends on the batch it is evaluated in, also in eval mode
        assert not torch.allclose(paper(x)[:8], paper(x[:8]), atol=1e-4)
        assert torch.allclose(standard(x)[:8], standard(x[:8]), atol=1e-5)
    # the same weights as the same network with running statistics (removing them draws nothing)
    running, _ = preset_model("resnet20_cifar10", (3, 8, 8), 10, "model.width=4", "model.bn_stats=running")
    own, other = paper.state_dict(), running.state_dict()
    assert all(torch.equal(own[k], other[k]) for k in own)


def test_every_pruner_composes_with_every_paper_preset():
    """The CTS search length is set only for the CTS pruners (conf/search_protocol), so every other pruner's
    schema composes unchanged; the command line still wins, and outside the presets the default stays."""
    register_configs()
    with initialize_config_module(config_module="ltsearch.conf", version_base="1.3"):
        def cfg(*overrides: str):
            return to_config(compose(config_name="config", overrides=[*overrides, "dataset.root=/data"]))

        default_length = cfg("pruner=cts_kl").pruner.length
        for preset in PAPER + OPENLTH:
            for pruner in PRUNERS:
                c = cfg(f"experiment={preset}", f"pruner={pruner}")
                assert c.pruner.length.value == "long" if c.pruner.name == "cts" else not hasattr(c.pruner, "length")
            assert cfg(f"experiment={preset}", "pruner=cts", "pruner.length=half").pruner.length.value == "half"
        # the quickstart's protocol (the default) searches long at mask lr 0.4; a preset with none keeps the
        # pruner's own defaults
        assert default_length.value == "long" and cfg("pruner=cts_kl").pruner.lr == 0.4
        lenet = cfg("experiment=lenet_mnist", "pruner=cts_kl").pruner
        assert lenet.length.value == "short" and lenet.lr == 0.1


def test_the_quickstart_protocol_searches_cts_at_epoch_3_of_the_mnist1d_schedule():
    """The quickstart's CTS pruners search at (and rewind to) epoch 3 of the 10-epoch MNIST-1D schedule, where
    their tickets retrain best; LTR keeps the schedule's rewind epoch 1 (its best), pruners at init are
    untouched, another schedule keeps its own, and a train.rewind_epoch on the command line wins."""
    def rewind(*overrides: str) -> int:
        return make_config(*overrides).train.rewind_epoch

    assert rewind() == rewind("pruner=cts") == 3 and make_config().pruner.name == "cts"
    assert rewind("pruner=ltr") == rewind("pruner=synflow") == 1
    assert rewind("pruner=cts_kl", "train.rewind_epoch=2") == 2
    assert rewind("pruner=cts_kl", "train=tiny") == 1
    assert rewind("pruner=cts_kl", "search_protocol=none") == 1
    assert rewind("experiment=lenet_mnist", "pruner=cts_kl", "dataset.root=/data") == 5
    # a schedule shortened below the protocol's point is refused naming where the 3 comes from
    with pytest.raises(ConfigError, match=r"got 3 \(set it with train.rewind_epoch=N; search_protocol=quickstart"):
        make_config("train.epochs=3")
    assert rewind("train.epochs=3", "train.rewind_epoch=1") == 1


def test_cfg_job_shows_the_authors_choices_and_open_lth_is_one_preset_away(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def job(preset: str) -> dict:
        """`ltsearch run --cfg job experiment=PRESET`, in process."""
        monkeypatch.setattr(sys, "argv", ["ltsearch", "run", "--cfg", "job", f"experiment={preset}"])
        try:
            rc = ltsearch_cli.main(["run", "--cfg", "job", f"experiment={preset}"])
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 0
        finally:
            GlobalHydra.instance().clear()
        out, err = capsys.readouterr()
        assert rc == 0, err
        return yaml.safe_load(out)

    paper, openlth = job("resnet20_cifar10"), job("resnet20_cifar10_openlth")
    assert {k: paper["model"][k] for k in ("shortcut", "bn_init", "bn_stats", "bias_init", "exclude")} == \
        {"shortcut": "conv3x3", "bn_init": "uniform", "bn_stats": "batch", "bias_init": "torch", "exclude": []}
    assert (paper["train"]["batch_size"], paper["train"]["eval_batch_size"], paper["train"]["rewind_epoch"],
            paper["train"]["weight_decay"], paper["pruner"]["length"]) == (512, 128, 9, 1e-3, "long")
    assert (openlth["model"]["shortcut"], openlth["model"]["bn_init"], openlth["model"]["bn_stats"]) == \
        ("conv1x1", "uniform", "running")
    assert (openlth["train"]["batch_size"], openlth["train"]["weight_decay"]) == (128, 1e-4)
    assert openlth["dataset"]["augment"] == "crop_flip_zero"
    assert job("vgg16_cifar10")["model"]["exclude"] == ["classifier.weight"]
    assert list(tmp_path.iterdir()) == []


def test_synflow_scores_a_batch_statistics_network_as_the_authors_do():
    """SynFlow's all-ones input of batch 1 gets fresh running statistics (mean 0, var 1), as the authors build
    SynFlow's network with bn_track=True: the same mask as the same network built with running statistics."""
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(64) % 10
    masks = []
    for stats in ("batch", "running"):
        model, _ = preset_model("resnet20_cifar10", (3, 8, 8), 10, "model.width=4", f"model.bn_stats={stats}")
        ticket = ltsearch.find_ticket(model, (x, y), sparsity=0.9, method="synflow",
                                      overrides=["pruner.rounds=5", "runtime.progress=false"])
        masks.append(ticket.masks)
    assert masks[0].keys() == masks[1].keys() and all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])


def test_cts_teacher_cache_is_off_for_batch_statistics_networks():
    model, _ = preset_model("resnet20_cifar10", (3, 8, 8), 10, "model.width=4")
    assert not per_sample_function(model.eval())


def test_pretraining_of_the_old_batchnorm_scheme_is_never_reused(tmp_path):
    """The whole model config keys cached pretraining: a pretraining with gamma 1 and running statistics
    (the scheme before these options, whose record had no bn_* keys) is not reused by a run of the authors'
    scheme, and a run of the same scheme reuses it."""
    base = [*SMALL, "model=resnet20", "model.width=4", "train=tiny", "train.epochs=2", "train.rewind_epoch=1",
            "stages=[search]", "pruner=magnitude", "pruner.when=rewind", f"runtime.cache_dir={tmp_path / 'c'}"]
    old = ["model.bn_init=ones", "model.bn_stats=running", "model.bias_init=zeros", "model.shortcut=conv1x1"]
    run_pipeline(make_config(*base, *old), tmp_path / "old")
    for name, overrides in (("init", ["model.bn_init=uniform"]), ("stats", ["model.bn_stats=batch"]),
                            ("bias", ["model.bias_init=torch"]), ("old_again", [])):
        run_pipeline(make_config(*base, *old, *overrides), tmp_path / name)
    reused = {name: "reused" in json.loads((tmp_path / name / "search" / "pretrain" / "DONE.json").read_text())
              for name in ("old", "init", "stats", "bias", "old_again")}
    assert reused == {"old": False, "init": False, "stats": False, "bias": False, "old_again": True}
    # an entry written before the options existed was keyed on a model config without them
    spec = {"model": config_container(make_config(*base, *old))["model"], "seed": 0}
    before = {**spec, "model": {k: v for k, v in spec["model"].items() if not k.startswith(("bn_", "bias_"))}}
    assert spec_key("pretrain", spec) != spec_key("pretrain", before)


def test_paper_preset_runs_end_to_end_with_its_network(tmp_path):
    """experiment=resnet20_cifar10 through CTS-KL, retraining, a sanity check and evaluation on FakeData:
    the long search (train.epochs search epochs), no running statistics anywhere, evaluation batches stated."""
    cfg = make_config("experiment=resnet20_cifar10", *SMALL, "train.epochs=2", "train.rewind_epoch=1",
                      "train.milestones=[1]", "train.batch_size=64", "train.eval_batch_size=32", "pruner=cts_kl",
                      "sparsity=0.9",
                      "sanity.variants=[shuffle]")
    results = run_pipeline(cfg, tmp_path / "run")
    run = Path(tmp_path / "run")
    assert results["density"]["prunable"] == 291_376
    assert results["evaluation"] == {"batch_size": 32, "batchnorm": "batch"}
    search = json.loads((run / "search" / "metrics.json").read_text())
    assert search["pruner"]["epochs"] == 2  # long: the whole training length
    for artifact in ("search/pruning_point.pt", "rewind/ticket.pt", "retrain/final.pt"):
        state = torch.load(run / artifact, weights_only=True)
        state = state.get("state_dict", state)
        assert not any("running" in k for k in state), artifact
    net = ltsearch.load_ticket(run, weights="trained")
    assert all(not m.track_running_stats for m in net.modules() if isinstance(m, nn.BatchNorm2d))


def test_a_run_recorded_before_the_options_resumes_only_with_the_network_it_built(tmp_path):
    """A record without the bn_*/bias_init keys was built with gamma 1, running statistics and zero biases
    (the schema defaults): the quickstart resumes; model=resnet20, now open_lth's uniform scheme, is refused."""
    for overrides, refused in ((["runtime.progress=false"], False), (["model=resnet20", "dataset=fake"], True)):
        cfg = make_config(*overrides)
        recorded = config_container(cfg)
        recorded["model"] = {k: v for k, v in recorded["model"].items() if not k.startswith(("bn_", "bias_"))}
        run_dir = tmp_path / ("refused" if refused else "resumes")
        run_dir.mkdir()
        write_record(run_dir, recorded, overrides, "cts_kl")
        if refused:
            with pytest.raises(ResumeError, match="model.bn_init: '<absent>' \\(recorded\\) -> 'uniform'"):
                check_record(run_dir, cfg, overrides, "cts_kl")
        else:
            check_record(run_dir, cfg, overrides, "cts_kl")


def test_image_folders_hold_their_evaluation_split_in_a_mixed_order(tmp_path):
    """Class folders list one class after another; evaluation batches (and dataset.test_subset) of a batch-
    statistics network must mix classes, as the authors' shuffled evaluation loader does. Both the in-memory
    folder (cifar10_jpeg) and the streamed one (imagenet) keep a fixed, seeded mixed order."""
    root = make_folder(tmp_path / "tiny", train=2, test=5)
    data = build_data(make_config("dataset=imagefolder", f"dataset.root={root}", "dataset.test_subset=5").dataset)
    assert len(set(data.test_y.tolist())) > 1
    again = build_data(make_config("dataset=imagefolder", f"dataset.root={root}", "dataset.test_subset=5").dataset)
    assert torch.equal(data.test_y, again.test_y) and torch.equal(data.test_x, again.test_x)
    streamed = bench_stream.make_image_folder(tmp_path / "imagenet", 60, classes=3, sizes=(8, 12))
    cfg = DatasetConfig(name="imagenet_folder", root=str(streamed), image_size=8, resize_size=8, test_subset=2)
    labels = load_image_folder(cfg, RuntimeConfig(data_storage="stream", data_workers=0)).test.labels
    assert len(set(labels.tolist())) > 1
