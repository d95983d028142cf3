"""`model=custom`: any importable constructor as the network (torchvision through the CLI, the user's own
module with arguments from the command line), its own seeded initialisation, the usual prunable rule with
`model.exclude` globs, tickets that load back into the library's class, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

import ltsearch
from ltsearch.errors import ConfigError
from ltsearch.masking import prunable_modules
from ltsearch.models import build_model
from tests.conftest import make_config, run_cli

TORCHVISION = ["model=custom", "model._target_=torchvision.models.resnet18"]
IMAGES = ["dataset=fake", "dataset.shape=[3,32,32]", "dataset.num_classes=4", "dataset.train_size=64",
          "dataset.test_size=32"]
SMALL_IMAGES = [*IMAGES, "dataset.shape=[3,8,8]"]  # ResNet-18 pools 8x8 down to 1x1: a cheap CPU test
FAST = ["train=tiny", "train.epochs=2", "train.batch_size=32", "runtime.progress=false", "runtime.threads=1"]

OWN_MODULE = '''
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, width: int = 4, num_classes: int = 10, act: str = "relu"):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))
'''


def test_a_torchvision_resnet_through_the_cli_moves_back_into_torchvision(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    run_dir = tmp_path / "run"
    proc = run_cli("run", *TORCHVISION, "model.exclude=[fc.weight,conv1.weight]", *SMALL_IMAGES, *FAST,
                   "pruner=magnitude", "sparsity=0.9", "stages=[search,rewind]", f"hydra.run.dir={run_dir}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    density = json.loads((run_dir / "search" / "density.json").read_text())
    names = set(density["layers"])
    assert "layer1.0.conv1.weight" in names and "layer4.0.downsample.0.weight" in names  # torchvision's names
    assert "fc.weight" not in names and "conv1.weight" not in names  # excluded by glob
    assert density["kept"] == int(0.1 * density["total"])
    record = json.loads((run_dir / "run.json").read_text())
    assert record["config"]["model"]["_target_"] == "torchvision.models.resnet18"
    # the ticket loads into torchvision's own class: tickets move between ltsearch and torchvision
    net = ltsearch.load_ticket(run_dir, torchvision.models.resnet18(num_classes=4))
    assert int((net.layer1[0].conv1.weight != 0).sum()) == density["layers"]["layer1.0.conv1.weight"]["kept"]
    assert type(ltsearch.load_ticket(run_dir)).__module__.startswith("torchvision")  # built from the record


def test_the_users_own_module_with_arguments_from_the_command_line(tmp_path):
    (tmp_path / "mynets.py").write_text(OWN_MODULE)
    run_dir = tmp_path / "run"
    proc = run_cli("run", "model=custom", "model._target_=mynets.TinyNet", "+model.args.width=6",
                   "+model.args.act=relu", *IMAGES, *FAST, "pruner=random", "stages=[search]",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path)  # importable from the working directory
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    density = json.loads((run_dir / "search" / "density.json").read_text())
    assert density["layers"]["features.0.weight"]["shape"] == [6, 3, 3, 3]  # width=6 reached the constructor
    assert density["layers"]["head.weight"]["shape"] == [4, 24]  # num_classes from the dataset


def test_the_constructor_keeps_its_own_initialisation_under_the_seed():
    torchvision = pytest.importorskip("torchvision")
    from ltsearch.seeding import derive_seed

    cfg = make_config(*TORCHVISION, *IMAGES)
    a, b = (build_model(cfg.model, (3, 32, 32), 4, seed=0) for _ in range(2))
    c = build_model(cfg.model, (3, 32, 32), 4, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(0, "init"))
        own = torchvision.models.resnet18(num_classes=4)  # torchvision's initialisation, under the run's seed
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), own.state_dict().values(), strict=True))
    convs = {f"{n}.weight" for n, m in a.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert set(prunable_modules(a, ["fc.weight"])) == convs  # conv and linear weights, minus the exclusions


@pytest.mark.parametrize(("overrides", "message"), [
    (["model=custom"], "model=custom needs model._target_=<module>.<callable>"),
    (["model=custom", "model._target_=no_such_package.Net"], "no such module or attribute"),
    (["model=custom", "model._target_=torchvision.models.resnet18", "+model.args.depth=3"],
     "unexpected keyword argument 'depth'"),
    (["model=custom", "model._target_=torch.zeros"], "is not callable|not a torch.nn.Module|failed"),
])
def test_bad_targets_are_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        cfg = make_config(*overrides, *IMAGES)
        build_model(cfg.model, (3, 32, 32), 4, seed=0)


# -- constructor arguments beside _target_, as hydra.utils.instantiate reads them ---------------------------------
@pytest.mark.parametrize("spelling", ["model.num_classes=4", "+model.num_classes=4", "++model.num_classes=4",
                                      "model.args.num_classes=4", "+model.args.num_classes=4"])
def test_a_constructor_argument_beside_target_or_under_args(spelling):
    cfg = make_config(*TORCHVISION, spelling, "model.width=6", *IMAGES)
    assert cfg.model.args == {"num_classes": 4, "width": 6}  # width: the constructor's, not the built-ins'
    assert cfg.model.width == 0


def test_the_command_line_passes_arguments_beside_target_to_the_constructor(tmp_path, monkeypatch, capsys):
    import yaml

    from ltsearch.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["run", *TORCHVISION, "model.num_classes=4", "+model.zero_init_residual=true", "--cfg", "job"]) == 0
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model["args"] == {"num_classes": 4, "zero_init_residual": True}
    assert main(["run", "model=cnn1d", "model.num_classes=4", "--cfg", "job"]) == 1  # not a custom model
    assert "unknown config key model.num_classes" in capsys.readouterr().err


def test_the_rewrite_leaves_other_models_and_settings_alone():
    from ltsearch.models.custom import constructor_overrides

    plain = ["model=resnet18", "model.width=32", "+model.num_classes=4"]
    assert constructor_overrides(plain) == plain
    custom = ["model=custom", "model._target_=a.B", "model.exclude=[fc.weight]", "model.depth=3", "~model.act",
              "+model.args.k=1", "model.args.j=2", "model.name=custom"]
    rewritten = constructor_overrides(custom)
    assert rewritten == ["model=custom", "model._target_=a.B", "model.exclude=[fc.weight]", "++model.args.depth=3",
                         "~model.args.act", "+model.args.k=1", "++model.args.j=2", "model.name=custom"]
    assert constructor_overrides(rewritten) == rewritten


def test_every_refusal_of_a_custom_models_key_names_the_accepted_spelling():
    from hydra import compose, initialize_config_module

    from ltsearch.compose import error_line, register_configs
    from ltsearch.models import model_config

    # a config file (no rewrite) with an argument beside _target_: Hydra refuses it; the line says how
    register_configs()
    with pytest.raises(Exception) as refused, initialize_config_module("ltsearch.conf", version_base="1.3"):
        compose("config", overrides=["model=custom", "model._target_=a.B", "model.num_classes=3"])
    assert error_line(refused.value) == (
        "model.num_classes is not a setting of model=custom: a constructor argument is model.num_classes=VALUE "
        "or +model.args.num_classes=VALUE on the command line, model.args.num_classes in a config file")
    # a setting of the built-in models, which a constructor never sees
    with pytest.raises(ValueError, match=r"model.width=6 is a setting of the built-in models, which model=custom "
                                         r"does not read: a constructor argument is model.width=VALUE"):
        model_config({"name": "custom", "_target_": "a.B", "width": 6})


def test_a_misspelt_setting_of_a_custom_model_is_named(tmp_path):
    import sys

    (tmp_path / "mynets.py").write_text(OWN_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        cfg = make_config("model=custom", "model._target_=mynets.TinyNet", "model.exclud=[head.weight]", *IMAGES)
        with pytest.raises(ConfigError, match=r"unexpected keyword argument 'exclud'; did you mean model.exclude\? "
                                              r"\(model.exclud went to the constructor\)"):
            build_model(cfg.model, (3, 32, 32), 4, seed=0)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mynets", None)
