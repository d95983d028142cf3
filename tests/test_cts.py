"""Concrete Ticket Search: the formulas against independent computations, and the search's guarantees."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from ltsearch.config import When
from ltsearch.data import build_data
from ltsearch.models import build_model
from ltsearch.objectives import OBJECTIVES
from ltsearch.pipeline import run_pipeline
from ltsearch.pruners import PruneContext, build_pruner
from ltsearch.pruners.concrete import (
    Control,
    SparsityControl,
    gradbalance_lambda,
    logistic_noise,
    per_sample_function,
    soft_mask,
    sparsity_error,
)
from ltsearch.pruners.cts import CTSConfig, build_search, drop_epoch, search_epochs
from ltsearch.rundir import ArtifactDir
from ltsearch.runtime import Runtime
from ltsearch.seeding import generator
from tests.conftest import make_config

# -- formulas ------------------------------------------------------------------------------------------


def test_sparsity_error_and_gradient_match_the_formula():
    theta = torch.tensor([-2.0, 0.5, 1.0, 3.0])
    d, slack, n = 0.25, 1.1, 4
    s_err, g_sp = sparsity_error(theta, d, slack)
    p = [1 / (1 + math.exp(-t)) for t in theta.tolist()]
    assert float(s_err) == pytest.approx(100 * (sum(p) / (slack * d * n) - 1), rel=1e-6)
    expected = [100 / (slack * d * n) * q * (1 - q) for q in p]
    assert g_sp.tolist() == pytest.approx(expected, rel=1e-6)
    # g_sp is the true gradient of s_err
    t = theta.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(sparsity_error(t, d, slack)[0], t)
    assert torch.allclose(auto, g_sp, rtol=1e-6)


def test_gradbalance_lambda_balances_norms_and_is_zero_below_the_slack():
    g_task = torch.tensor([3.0, 4.0])  # norm 5
    g_sp = torch.tensor([0.6, 0.8])  # norm 1
    assert gradbalance_lambda(g_task, g_sp, s_err=2.0) == pytest.approx(5.0)
    assert gradbalance_lambda(g_task, g_sp, s_err=-0.1) == 0.0
    assert gradbalance_lambda(g_task, g_sp, s_err=0.0) == 0.0


def test_lambda_is_zero_while_expected_density_is_below_the_slack():
    d = 0.1
    theta = torch.full((1000,), math.log(0.105 / 0.895))  # expected density 0.105 < 1.1 d
    control = SparsityControl(CTSConfig(name="cts"), d, mask_lr=0.1)
    for _ in range(3):
        grad, s_err = control.gradient(theta, torch.randn(1000))
        assert s_err < 0 and control.lam == 0.0
    theta_high = torch.full((1000,), math.log(0.2 / 0.8))  # 0.2 > 1.1 d
    _, s_err = control.gradient(theta_high, torch.randn(1000))
    assert s_err > 0 and control.lam > 0


def test_gradbalance_step_combines_gradients_with_ema_lambda():
    d, n = 0.1, 6
    theta = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5, 1.5])  # expected density far above 1.1 d
    g1, g2 = torch.tensor([1.0, -2.0, 0.5, 0.0, 1.0, 3.0]), torch.tensor([0.5, 0.5, -1.0, 2.0, 0.0, 1.0])
    control = SparsityControl(CTSConfig(name="cts"), d, mask_lr=0.1)
    # independent computation of the reference's step 4
    p = torch.sigmoid(theta)
    g_sp = 100 / (1.1 * d * n) * p * (1 - p)
    lam1 = float(g1.norm() / (g_sp.norm() + 1e-12))
    grad1, _ = control.gradient(theta, g1)
    assert control.lam == pytest.approx(lam1, rel=1e-6)  # first step: lam = lam*
    assert torch.allclose(grad1, g1 + lam1 * g_sp, rtol=1e-6)
    lam2 = 0.99 * lam1 + 0.01 * float(g2.norm() / (g_sp.norm() + 1e-12))
    grad2, _ = control.gradient(theta, g2)
    assert control.lam == pytest.approx(lam2, rel=1e-6)
    assert torch.allclose(grad2, g2 + lam2 * g_sp, rtol=1e-6)


def test_lagrange_control_ascends_on_the_multiplier_without_slack():
    d, n, lr = 0.1, 4, 0.1
    theta = torch.tensor([1.0, 0.0, -1.0, 2.0])
    control = SparsityControl(CTSConfig(name="cts", control=Control.lagrange), d, mask_lr=lr)
    p = torch.sigmoid(theta)
    s_err = 100 * (float(p.sum()) / (d * n) - 1)  # no 10% slack
    g = torch.tensor([0.1, 0.2, 0.3, 0.4])
    grad, err = control.gradient(theta, g)
    assert err == pytest.approx(s_err, rel=1e-6)
    assert torch.allclose(grad, g)  # lam starts at 0
    assert control.lam == pytest.approx(0.01 * lr * s_err, rel=1e-6)
    grad2, _ = control.gradient(theta, g)
    g_sp = 100 / (d * n) * p * (1 - p)
    lam1 = 0.01 * lr * s_err  # the multiplier after the first step weighs the second step's g_sp
    assert torch.allclose(grad2, g + lam1 * g_sp, rtol=1e-5)


def test_logistic_noise_and_soft_mask():
    gen = generator(0, "test-noise")
    noise = logistic_noise(200_000, gen, torch.device("cpu"))
    assert torch.equal(logistic_noise(200_000, generator(0, "test-noise"), torch.device("cpu")), noise)
    assert not torch.equal(logistic_noise(200_000, gen, torch.device("cpu")), noise)  # fresh every step
    assert abs(float(noise.mean())) < 0.02
    assert float(noise.var()) == pytest.approx(math.pi**2 / 3, rel=0.03)  # logistic(0, 1)
    theta = torch.full((200_000,), math.log(0.3 / 0.7))
    m = soft_mask(theta, noise, 2 / 3)
    assert float(m.min()) >= 0 and float(m.max()) <= 1
    # m > 1/2  <=>  L / tau + theta > 0  <=>  L > -tau theta, so P = 1 - F(-tau theta) = sigmoid(tau theta)
    expected = 1 / (1 + math.exp(-(2 / 3) * math.log(0.3 / 0.7)))
    assert float((m > 0.5).float().mean()) == pytest.approx(expected, abs=0.005)


def test_kl_directions_against_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 10, generator=gen), torch.randn(16, 10, generator=gen)
    y = torch.randint(0, 10, (16,), generator=gen)
    reverse = kl_divergence(Categorical(logits=s), Categorical(logits=t)).mean()
    forward = kl_divergence(Categorical(logits=t), Categorical(logits=s)).mean()
    assert float(OBJECTIVES["reverse_kl"]().from_logits(s, t, y)) == pytest.approx(float(reverse), rel=1e-5)
    assert float(OBJECTIVES["forward_kl"]().from_logits(s, t, y)) == pytest.approx(float(forward), rel=1e-5)
    assert float(reverse) != pytest.approx(float(forward), rel=1e-3)
    # zero when the mask is all ones (student == teacher)
    assert float(OBJECTIVES["reverse_kl"]().from_logits(t, t, y)) == pytest.approx(0.0, abs=1e-6)
    assert float(OBJECTIVES["forward_kl"]().from_logits(t, t, y)) == pytest.approx(0.0, abs=1e-6)


def test_search_length_truncates_as_the_reference():
    cts = CTSConfig(name="cts")
    assert search_epochs(cts, 160) == 20
    assert search_epochs(CTSConfig(name="cts", length="half"), 160) == 80
    assert search_epochs(CTSConfig(name="cts", length="long"), 160) == 160
    assert search_epochs(cts, 40) == 5
    # int(ratio x E), not rounded: 12 / 8 = 1.5 -> 1, 13 / 2 = 6.5 -> 6, 15 / 8 = 1.875 -> 1
    assert search_epochs(cts, 12) == 1
    assert search_epochs(CTSConfig(name="cts", length="half"), 13) == 6
    assert search_epochs(cts, 15) == 1
    assert search_epochs(cts, 3) == 1  # 0.375 truncates to 0: one epoch at least
    assert search_epochs(CTSConfig(name="cts", epochs=7), 160) == 7


@pytest.mark.parametrize(("epochs", "first_low"), [(20, 16), (80, 69), (160, 139), (3, 1), (8, 6)])
def test_lr_drop_epoch_of_the_reference(epochs, first_low):
    """The reference multiplies the lr by 0.1 once its completed-epoch counter + 1 reaches int(0.88 E):
    0-based epochs int(0.88 E) - 1 .. E - 1 run at the lower lr."""
    assert drop_epoch(CTSConfig(name="cts"), epochs) == first_low


def test_lr_drop_edge_cases():
    assert drop_epoch(CTSConfig(name="cts"), 2) is None  # int(1.76) - 1 = 0: the drop would precede epoch 0
    assert drop_epoch(CTSConfig(name="cts"), 1) is None
    assert drop_epoch(CTSConfig(name="cts", lr_drop_epoch=0), 160) is None
    assert drop_epoch(CTSConfig(name="cts", lr_drop_epoch=5), 160) == 5


# -- the search ----------------------------------------------------------------------------------------
CTS_TINY = ["dataset=fake", "dataset.shape=[1,40]", "dataset.train_size=256", "dataset.test_size=128",
            "model=cnn1d", "model.width=8", "train=tiny", "runtime.progress=false", "pruner.epochs=3",
            "runtime.keep_checkpoints=10"]


def _prune_context(cfg, tmp_path):
    runtime = Runtime.from_config(cfg.runtime)
    data = build_data(cfg.dataset)
    model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed)
    out = ArtifactDir(tmp_path / "search").start()
    ctx = PruneContext(model=model, data=data, cfg=cfg, runtime=runtime, out=out, seed=cfg.seed,
                       density=cfg.density)
    return ctx


@pytest.mark.parametrize("pruner", ["cts", "cts_kl"])
def test_search_keeps_exactly_k_and_leaves_weights_and_bn_stats_untouched(tmp_path, pruner):
    cfg = make_config(*CTS_TINY, f"pruner={pruner}", "sparsity=0.9")
    ctx = _prune_context(cfg, tmp_path)
    ctx.model.train()
    with torch.no_grad():  # give BN non-trivial running stats
        ctx.model(ctx.data.prepare(ctx.data.train_x[:64]))
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    result = build_pruner(cfg.pruner).prune(ctx)
    kept = sum(int(m.sum()) for m in result.masks.values())
    assert kept == math.floor(0.1 * ctx.total)
    after = ctx.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "search changed weights or BN statistics"
    # the mask is the top-k of the saved logits
    flat = torch.cat([s.flatten() for s in result.scores.values()])
    kept_scores = torch.cat([s[m].flatten() for s, m in zip(result.scores.values(), result.masks.values(), strict=True)])
    assert float(kept_scores.min()) >= float(flat.topk(kept).values.min())
    history = result.info["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert {"objective", "expected_density", "lambda", "density_theta_positive", "time"} <= set(history[0])


def test_search_is_deterministic_per_seed_and_resumes_exactly(tmp_path):
    overrides = [*CTS_TINY, "pruner=cts_kl", "sparsity=0.95", "stages=[search]", "pruner.epochs=4"]
    run_pipeline(make_config(*overrides), tmp_path / "a")
    run_pipeline(make_config(*overrides), tmp_path / "b")
    mask_a = torch.load(tmp_path / "a" / "search" / "mask.pt", weights_only=True)
    mask_b = torch.load(tmp_path / "b" / "search" / "mask.pt", weights_only=True)
    assert all(torch.equal(mask_a[k], mask_b[k]) for k in mask_a)
    run_pipeline(make_config(*overrides, "seed=1"), tmp_path / "c")
    mask_c = torch.load(tmp_path / "c" / "search" / "mask.pt", weights_only=True)
    assert not all(torch.equal(mask_a[k], mask_c[k]) for k in mask_a)

    # Resume: keep only the epoch-2 checkpoint of run a and the pretrain stage, as if killed in epoch 3.
    d = tmp_path / "resumed"
    shutil.copytree(tmp_path / "a", d)
    search = d / "search"
    for name in ("DONE.json", "mask.pt", "scores.pt", "density.json", "metrics.json"):
        (search / name).unlink()
    ckpt = search / "cts" / "checkpoints"
    index = json.loads((ckpt / "index.json").read_text())
    index["checkpoints"] = [e for e in index["checkpoints"] if e["epoch"] <= 2]
    assert [e["epoch"] for e in index["checkpoints"]] == [1, 2]
    (ckpt / "index.json").write_text(json.dumps(index))
    for e in (3, 4):
        (ckpt / f"epoch_{e:04d}.pt").unlink()
    run_pipeline(make_config(*overrides), d)
    mask_r = torch.load(search / "mask.pt", weights_only=True)
    assert all(torch.equal(mask_a[k], mask_r[k]) for k in mask_a)


def test_cts_when_init_searches_at_initialisation(tmp_path):
    cfg = make_config(*CTS_TINY, "pruner=cts", "pruner.when=init", "sparsity=0.8", "stages=[search,rewind]")
    assert cfg.pruner.when == When.init
    run_pipeline(cfg, tmp_path)
    assert not (tmp_path / "search" / "pretrain").exists()
    ticket = torch.load(tmp_path / "rewind" / "ticket.pt", weights_only=True)
    assert ticket["start_epoch"] == 0
    metrics = json.loads((tmp_path / "search" / "metrics.json").read_text())
    assert metrics["pruner"]["objective"] == "task"
    assert set(metrics["pruning_point"]["objective"]) == {"task", "forward_kl", "reverse_kl", "delta_loss"}


def test_cts_kl_preselects_reverse_kl_and_an_explicit_objective_wins():
    assert make_config("pruner=cts_kl").objective.name == "reverse_kl"
    assert make_config("pruner=cts_kl", "objective=forward_kl").objective.name == "forward_kl"
    assert make_config("pruner=cts").objective.name == "task"
    with pytest.raises(Exception, match="slack"):
        make_config("pruner=cts", "pruner.slack=0.5")


# -- the cached teacher ------------------------------------------------------------------------------------
def _epochs(cfg, tmp_path, epochs: int):
    ctx = _prune_context(cfg, tmp_path)
    search = build_search(ctx, cfg.pruner)
    records = [search.run_epoch(ctx.data, 64, cfg.seed, e) for e in range(epochs)]
    return search, records, ctx


def test_cached_teacher_logits_give_the_same_search_as_a_teacher_run_every_step(tmp_path):
    mlp = [*CTS_TINY, "model=mlp1d", "model.hidden=[32,32]", "pruner=cts_kl", "sparsity=0.9"]
    cached, rec_c, ctx = _epochs(make_config(*mlp), tmp_path / "c", 3)
    fresh, rec_f, _ = _epochs(make_config(*mlp, "pruner.cache_teacher=false"), tmp_path / "f", 3)
    n = ctx.data.train_x.shape[0]
    assert [r["teacher_samples"] for r in rec_c] == [n, 0, 0]  # one forward pass for the whole search
    assert [r["teacher_samples"] for r in rec_f] == [n, n, n]
    assert fresh.cached_teacher is None
    # the cache holds exactly the unmasked network's logits, in dataset order
    x, _ = next(ctx.data.train_batches_at([torch.arange(n)]))
    with torch.no_grad():
        torch.testing.assert_close(cached.cached_teacher, ctx.model(x), rtol=1e-5, atol=1e-6)
    # the same search up to float rounding (batches of a different composition)
    torch.testing.assert_close(cached.theta, fresh.theta, rtol=1e-4, atol=1e-4)
    for a, b in zip(rec_c, rec_f, strict=True):
        assert a["objective"] == pytest.approx(b["objective"], rel=1e-4)


def test_teacher_is_not_cached_when_batch_composition_or_dropout_changes_it(tmp_path):
    bn, records, ctx = _epochs(make_config(*CTS_TINY, "pruner=cts_kl", "sparsity=0.9"), tmp_path / "bn", 2)
    assert "BatchNorm" in bn.teacher_cache_reason(ctx.data)
    assert bn.cached_teacher is None
    assert [r["teacher_samples"] for r in records] == [256, 256]
    task, records, ctx = _epochs(make_config(*CTS_TINY, "model=mlp1d", "pruner=cts", "sparsity=0.9"),
                                 tmp_path / "task", 1)
    assert task.cached_teacher is None and records[0]["teacher_samples"] == 0
    dropout = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))
    assert not per_sample_function(dropout.train())
    assert per_sample_function(dropout.eval())
    assert not per_sample_function(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)).eval())


def test_search_on_running_statistics_caches_the_teacher_and_restores_the_mode(tmp_path):
    """pruner.batchnorm=running: BatchNorm normalises with the pruning point's running statistics, so every
    sample's logits are its own and the teacher's are computed once; the network leaves the search as it
    came (training mode, same weights and statistics), and the mask differs from the batch-statistics one."""
    masks = {}
    for mode in ("running", "batch"):
        cfg = make_config(*CTS_TINY, "pruner=cts_kl", "sparsity=0.9", f"pruner.batchnorm={mode}")
        ctx = _prune_context(cfg, tmp_path / mode)
        ctx.model.train()
        with torch.no_grad():  # non-trivial running statistics
            ctx.model(ctx.data.prepare(ctx.data.train_x[:64]))
        before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
        result = build_pruner(cfg.pruner).prune(ctx)
        assert ctx.model.training
        assert all(torch.equal(before[k], v) for k, v in ctx.model.state_dict().items())
        samples = [r["teacher_samples"] for r in result.info["history"]]
        assert samples == ([256, 0, 0] if mode == "running" else [256, 256, 256])
        masks[mode] = result.masks
    assert any(not torch.equal(masks["running"][k], masks["batch"][k]) for k in masks["batch"])
    bn = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    assert per_sample_function(bn.eval(), batch_statistics=False)
    assert not per_sample_function(bn.train(), batch_statistics=False)


@pytest.mark.parametrize(("objective", "cached"), [
    ("task", "needs no teacher"), ("forward_kl", None), ("reverse_kl", None), ("delta_loss", None),
    ("grad_norm", "needs no teacher"), ("feature_matching", "more of the unmasked network"),
    ("grad_matching", "more of the unmasked network")])
def test_every_objective_runs_a_search_with_the_teacher_cache_where_valid(tmp_path, objective, cached):
    """`pruner=cts objective=<any>` through the pipeline on an MLP (no BatchNorm: the cache is valid for the
    objectives that need only the teacher's logits), and what the search stage counts."""
    overrides = [*CTS_TINY, "model=mlp1d", "model.hidden=[32,32]", "pruner=cts", f"objective={objective}",
                 "sparsity=0.9", "pruner.epochs=2", "stages=[search]"]
    cfg = make_config(*overrides)
    search, _, ctx = _epochs(cfg, tmp_path / "epochs", 1)
    reason = search.teacher_cache_reason(ctx.data)
    assert reason is None if cached is None else cached in reason
    run_pipeline(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "search" / "metrics.json").read_text())
    assert metrics["pruner"]["objective"] == objective and math.isfinite(metrics["pruner"]["final"]["objective"])
    done = json.loads((tmp_path / "run" / "search" / "cts" / "DONE.json").read_text())
    extra = OBJECTIVES[objective].extra_passes
    teacher = 256 if cached is None else 0
    assert done["compute"].get("forward", 0) == teacher + 2 * 256 * extra.get("forward", 0)
    assert done["compute"]["train"] == 2 * 256 * (1 + extra.get("train", 0))


def test_delta_loss_with_cached_teacher_equals_the_teacher_run_every_step(tmp_path):
    mlp = [*CTS_TINY, "model=mlp1d", "model.hidden=[32,32]", "pruner=cts", "objective=delta_loss",
           "sparsity=0.9"]
    cached, _, _ = _epochs(make_config(*mlp), tmp_path / "c", 2)
    fresh, _, _ = _epochs(make_config(*mlp, "pruner.cache_teacher=false"), tmp_path / "f", 2)
    assert cached.cached_teacher is not None and fresh.cached_teacher is None
    torch.testing.assert_close(cached.theta, fresh.theta, rtol=1e-4, atol=1e-4)


def test_search_stage_counts_one_teacher_pass_when_cached(tmp_path):
    overrides = [*CTS_TINY, "model=mlp1d", "model.hidden=[32,32]", "pruner=cts_kl", "sparsity=0.9",
                 "stages=[search]"]
    run_pipeline(make_config(*overrides), tmp_path / "run")
    done = json.loads((tmp_path / "run" / "search" / "cts" / "DONE.json").read_text())
    assert done["compute"] == {"train": 3 * 256, "forward": 256}
