"""Training: learning-rate schedules, optimizers, Trainer determinism and resume at an epoch boundary."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from ltsearch.config import Optimizer, RuntimeConfig, Schedule, TrainConfig
from ltsearch.data import build_data
from ltsearch.masking import attach_masks, masks_of, plain_state_dict, prunable_weights, topk_masks
from ltsearch.models import build_model
from ltsearch.rundir import ArtifactDir
from ltsearch.runtime import Runtime
from ltsearch.training.loop import Callback
from ltsearch.training.optim import build_optimizer, build_scheduler, lr_factor
from ltsearch.training.trainer import Trainer
from tests.conftest import make_config


# -- schedules ---------------------------------------------------------------------------------------------
def test_multistep_schedule():
    cfg = TrainConfig(epochs=10, schedule=Schedule.multistep, milestones=[3, 6], gamma=0.2)
    spe = 5
    factors = [lr_factor(cfg, step, spe) for step in range(10 * spe)]
    for step, f in enumerate(factors):
        epoch = step // spe
        expected = 1.0 if epoch < 3 else 0.2 if epoch < 6 else 0.2 ** 2
        assert f == pytest.approx(expected), step
    constant = TrainConfig(epochs=10, schedule=Schedule.constant, milestones=[3])
    assert {lr_factor(constant, s, spe) for s in range(50)} == {1.0}


def test_cosine_schedule():
    cfg = TrainConfig(epochs=4, schedule=Schedule.cosine)
    spe = 10
    assert lr_factor(cfg, 0, spe) == 1.0
    assert lr_factor(cfg, 20, spe) == pytest.approx(0.5)
    assert lr_factor(cfg, 10, spe) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(cfg, 39, spe) == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 40)))
    values = [lr_factor(cfg, s, spe) for s in range(40)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))  # per iteration, not per epoch


def test_warmup():
    cfg = TrainConfig(epochs=10, schedule=Schedule.multistep, milestones=[5], warmup_epochs=2)
    spe = 4
    assert [lr_factor(cfg, s, spe) for s in range(8)] == pytest.approx([(s + 1) / 8 for s in range(8)])
    assert lr_factor(cfg, 8, spe) == 1.0
    assert lr_factor(cfg, 20, spe) == pytest.approx(0.1)
    cosine = TrainConfig(epochs=10, schedule=Schedule.cosine, warmup_epochs=1)
    assert lr_factor(cosine, 1, spe) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi / 40)))


@pytest.mark.parametrize("schedule, extra", [
    (Schedule.multistep, {"milestones": [2, 5]}),
    (Schedule.cosine, {}),
    (Schedule.multistep, {"milestones": [4], "warmup_epochs": 3}),
])
def test_scheduler_started_at_epoch_k_continues_the_schedule(schedule, extra):
    cfg = TrainConfig(epochs=8, lr=0.4, schedule=schedule, **extra)
    spe, k = 3, 2

    def lrs(start_epoch: int, steps: int) -> list[float]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
        sched = build_scheduler(opt, cfg, spe, start_epoch)
        out = []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    full = lrs(0, 8 * spe)
    assert lrs(k, (8 - k) * spe) == pytest.approx(full[k * spe:])
    assert full[0] == pytest.approx(cfg.lr * lr_factor(cfg, 0, spe))


# -- optimizers --------------------------------------------------------------------------------------------
def test_optimizers_get_their_hyper_parameters():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2), requires_grad=False)]
    sgd = build_optimizer(params, TrainConfig(epochs=1, optimizer=Optimizer.sgd, lr=0.1, momentum=0.9,
                                              weight_decay=5e-4))
    assert type(sgd) is torch.optim.SGD
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.1, 0.9, False, 5e-4)
    assert len(group["params"]) == 1  # frozen parameters are left out
    nesterov = build_optimizer(params, TrainConfig(epochs=1, optimizer=Optimizer.sgd, momentum=0.8, nesterov=True))
    assert nesterov.param_groups[0]["nesterov"] is True and nesterov.param_groups[0]["momentum"] == 0.8
    adam = build_optimizer(params, TrainConfig(epochs=1, optimizer=Optimizer.adam, lr=3e-4, betas=[0.8, 0.99],
                                               weight_decay=1e-5))
    assert type(adam) is torch.optim.Adam
    group = adam.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (3e-4, (0.8, 0.99), 1e-5)
    adamw = build_optimizer(params, TrainConfig(epochs=1, optimizer=Optimizer.adamw, lr=1e-3, weight_decay=0.05))
    assert type(adamw) is torch.optim.AdamW
    assert (adamw.param_groups[0]["lr"], adamw.param_groups[0]["weight_decay"]) == (1e-3, 0.05)


def test_train_presets_compose_to_valid_schedules():
    cfg = make_config("experiment=resnet20_cifar10").train
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (160, 512, 0.1, 0.9, 1e-3)
    assert cfg.schedule == Schedule.multistep and cfg.milestones == [80, 120] and cfg.rewind_epoch == 9
    cfg = make_config("experiment=conv2_cifar10").train
    assert cfg.optimizer == Optimizer.adam and cfg.lr == 2e-4 and cfg.batch_size == 60
    cfg = make_config("experiment=lenet_mnist").train
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs) == (Optimizer.sgd, 0.1, 128, 40)
    assert cfg.rewind_epoch == 5  # where CTS-KL's tickets retrain best of init and epochs 1, 2, 5


# -- the Trainer -------------------------------------------------------------------------------------------
# A small ResNet (BatchNorm, projection shortcuts) on 8x8 images with random crop + flip: every source of
# randomness and state the loop has (data order, augmentation, momentum, BN statistics, lr schedule).
OVERRIDES = ("dataset=fake", "dataset.shape=[3,8,8]", "dataset.train_size=64", "dataset.test_size=32",
             "dataset.augment=crop_flip", "model=resnet20", "model.depth=8", "model.width=4", "train=tiny",
             "train.batch_size=32", "train.weight_decay=1e-4", "train.schedule=multistep", "train.milestones=[2]",
             "runtime.device=cpu", "runtime.progress=false")


@pytest.fixture(scope="module")
def setup():
    # one thread: these nets are tiny, and a second thread mostly waits (badly so on a loaded machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = make_config(*OVERRIDES)
    yield cfg, build_data(cfg.dataset), Runtime.from_config(cfg.runtime)
    torch.set_num_threads(threads)


def make_trainer(setup, folder, seed=0, callbacks=(), masked=False, **kwargs) -> Trainer:
    cfg, data, runtime = setup
    model = build_model(cfg.model, data.input_shape, data.num_classes, seed)
    if masked:
        gen = torch.Generator().manual_seed(0)
        attach_masks(model, {n: torch.rand(w.shape, generator=gen) < 0.5
                             for n, w in prunable_weights(model).items()})
    out = ArtifactDir(folder).start()
    return Trainer(model=model, data=data, cfg=cfg.train, runtime=runtime, out=out, seed=seed, stream="t",
                   start_epoch=kwargs.pop("start_epoch", 0), callbacks=callbacks, **kwargs)


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """Uninterrupted 3-epoch fits (unmasked and masked), computed once."""
    fits = {}
    for masked in (False, True):
        trainer = make_trainer(setup, tmp_path_factory.mktemp(f"ref{masked}"), masked=masked)
        trainer.fit()
        fits[masked] = trainer
    return fits


def without_time(history):
    return [{k: v for k, v in r.items() if k != "time"} for r in history]


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_trainer_is_deterministic(setup, reference, tmp_path):
    a = reference[False]
    b = make_trainer(setup, tmp_path / "b")
    ha, hb = a.history, b.fit()
    assert len(ha) == 3 and [r["epoch"] for r in ha] == [1, 2, 3]
    assert all("test_acc" in r and math.isfinite(r["train_loss"]) for r in ha)
    assert without_time(ha) == without_time(hb)
    assert states_equal(a.model, b.model)
    assert [r["lr"] for r in ha] == pytest.approx([0.05, 0.05, 0.005])
    c = make_trainer(setup, tmp_path / "c", seed=1)
    assert without_time(c.fit()) != without_time(ha)


class Interrupt(Callback):
    """Stops the loop at the end of an epoch, before that epoch's checkpoint is written."""

    def __init__(self, at_epoch: int) -> None:
        self.at_epoch = at_epoch

    def on_epoch_end(self, trainer, record):
        if record["epoch"] == self.at_epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("masked", [False, True])
def test_resume_at_an_epoch_boundary_matches_an_uninterrupted_fit(setup, reference, tmp_path, masked):
    ref = reference[masked]
    folder = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        make_trainer(setup, folder, callbacks=[Interrupt(2)], masked=masked).fit()
    index = (folder / "checkpoints" / "index.json").read_text()
    assert '"epoch": 1' in index and '"epoch": 2' not in index
    # as in a new process: a new model (fresh init), optimizer and scheduler, other global RNG state
    torch.manual_seed(12345)
    resumed = make_trainer(setup, folder, masked=masked)
    history = resumed.fit()
    assert states_equal(resumed.model, ref.model)
    assert without_time(history) == without_time(ref.history)
    # a finished phase is not trained again
    again = make_trainer(setup, folder, masked=masked)
    assert without_time(again.fit()) == without_time(ref.history)
    assert states_equal(again.model, ref.model)


def test_end_epoch_then_continue(setup, reference, tmp_path):
    """Training to an intermediate epoch (the rewind point) and continuing in place gives the same run."""
    part = make_trainer(setup, tmp_path / "p", end_epoch=1)
    assert [r["epoch"] for r in part.fit()] == [1]
    rest = make_trainer(setup, tmp_path / "p")
    rest.fit()
    assert states_equal(rest.model, reference[False].model)


def test_retraining_from_epoch_k_uses_the_schedule_at_k(setup, tmp_path):
    trainer = make_trainer(setup, tmp_path / "k", start_epoch=2)
    history = trainer.fit()
    assert [r["epoch"] for r in history] == [3]
    assert history[0]["lr"] == pytest.approx(0.005)  # after the milestone at epoch 2


def test_runtime_is_cpu_here():
    runtime = Runtime.from_config(RuntimeConfig(device="cpu", progress=False))
    assert runtime.device.type == "cpu" and not runtime.bf16 and not runtime.channels_last


def test_runtime_sets_deterministic_algorithms_both_ways():
    """A later run in the same process (a benchmark's variants, a test) must not inherit the setting."""
    before = torch.are_deterministic_algorithms_enabled()
    try:
        Runtime.from_config(RuntimeConfig(device="cpu", deterministic=True))
        assert torch.are_deterministic_algorithms_enabled()
        Runtime.from_config(RuntimeConfig(device="cpu", deterministic=False))
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before, warn_only=True)


class _ParametrizedTrainer(Trainer):
    """The reference: train with the Mask parametrization left in place (w * mask in every forward)."""

    @staticmethod
    def _in_place_masks(model, masks):
        return [], []


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_in_place_masking_matches_training_under_the_parametrization(tmp_path, optimizer):
    """The fast path (masks re-applied after each step) computes the same weights, bit for bit, as
    training through torch.nn.utils.parametrize, and leaves the masks attached afterwards."""
    cfg = make_config("dataset=fake", "dataset.train_size=256", "dataset.test_size=64", "model=mlp1d",
                  "model.hidden=[32,32]", "train=tiny", f"train.optimizer={optimizer}", "train.weight_decay=1e-3",
                  "train.lr=0.01", "runtime.progress=false")
    data = build_data(cfg.dataset)
    runtime = Runtime.from_config(cfg.runtime)
    finals = []
    for name, cls in (("inplace", Trainer), ("parametrized", _ParametrizedTrainer)):
        model = build_model(cfg.model, data.input_shape, data.num_classes, 0)
        scores = {n: torch.rand(w.shape, generator=torch.Generator().manual_seed(1))
                  for n, w in prunable_weights(model).items()}
        masks = topk_masks(scores, sum(s.numel() for s in scores.values()) // 5)
        attach_masks(model, masks)
        cls(model=model, data=data, cfg=cfg.train, runtime=runtime, out=ArtifactDir(tmp_path / name).start(),
            seed=0, stream="t", start_epoch=0).fit()
        assert set(masks_of(model)) == set(masks)
        finals.append(plain_state_dict(model))
    for key in finals[0]:
        assert torch.equal(finals[0][key], finals[1][key]), key


@pytest.mark.slow
def test_compiled_training_matches_eager_on_a_masked_model(tmp_path):
    """runtime.compile=true (torch.compile, inductor on the CPU) trains a masked model to the same numbers."""
    histories = []
    for compiled in (False, True):
        cfg = make_config("dataset=fake", "dataset.train_size=128", "dataset.test_size=64", "model=mlp1d",
                          "model.hidden=[16]", "train=tiny", "train.epochs=2", "runtime.progress=false",
                          f"runtime.compile={str(compiled).lower()}")
        data = build_data(cfg.dataset)
        model = build_model(cfg.model, data.input_shape, data.num_classes, 0)
        scores = {n: w.abs() for n, w in prunable_weights(model).items()}
        attach_masks(model, topk_masks(scores, sum(s.numel() for s in scores.values()) // 4))
        trainer = Trainer(model=model, data=data, cfg=cfg.train, runtime=Runtime.from_config(cfg.runtime),
                          out=ArtifactDir(tmp_path / str(compiled)).start(), seed=0, stream="c", start_epoch=0)
        histories.append(trainer.fit())
        assert masks_of(model)  # masks attached again after training
    for eager, compiled in zip(*histories, strict=True):
        assert compiled["test_loss"] == pytest.approx(eager["test_loss"], rel=1e-4)
        assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4)


def test_channels_last_training_of_a_masked_conv_net_matches_contiguous(tmp_path):
    """The CUDA channels_last path (runtime.place + channels_last batches), exercised on the CPU: a masked
    conv net trains to the same numbers and its pruned weights stay exactly zero."""
    results = []
    for channels_last in (False, True):
        cfg = make_config("dataset=fake", "dataset.shape=[3,16,16]", "dataset.train_size=128",
                          "dataset.test_size=64", "model=conv2", "train=tiny", "train.epochs=2",
                          "runtime.progress=false")
        data = build_data(cfg.dataset)
        runtime = replace(Runtime.from_config(cfg.runtime), channels_last=channels_last)
        model = build_model(cfg.model, data.input_shape, data.num_classes, 0)
        scores = {n: w.abs() for n, w in prunable_weights(model).items()}
        attach_masks(model, topk_masks(scores, sum(s.numel() for s in scores.values()) // 10))
        model = runtime.place(model)
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        trainer = Trainer(model=model, data=data, cfg=cfg.train, runtime=runtime,
                          out=ArtifactDir(tmp_path / str(channels_last)).start(), seed=0, stream="c", start_epoch=0)
        history = trainer.fit()
        masks = masks_of(model)
        weights = plain_state_dict(model)
        assert all(float(weights[n][~m.bool()].abs().sum()) == 0 for n, m in masks.items())
        results.append(history)
    for a, b in zip(*results, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)
