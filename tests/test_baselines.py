"""Pruning baselines (SNIP, GraSP, SynFlow, IMP/LTR): every score against a value computed independently
here, exact k, nested masks, determinism, layer collapse, and IMP's levels through the pipeline."""

from __future__ import annotations

import copy
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltsearch.context import RunContext
from ltsearch.errors import ConfigError
from ltsearch.masking import count, keep_count, topk_masks
from ltsearch.pipeline import run_pipeline
from ltsearch.pruners import PruneContext, build_pruner
from ltsearch.pruners.grasp import grasp_scores, hessian_gradient
from ltsearch.pruners.imp import layer_quotas, num_levels
from ltsearch.pruners.snip import snip_scores
from ltsearch.pruners.synflow import linearized_copy, synflow_rounds, synflow_scores
from ltsearch.rundir import ArtifactDir
from ltsearch.runtime import Runtime
from tests.conftest import TINY, make_config

NO_SANITY = "stages=[search,rewind,retrain,evaluate]"


def prune_context(tmp_path, *overrides: str, model: nn.Module | None = None) -> PruneContext:
    """A PruneContext as the search stage builds it, on the TINY experiment (fake data, small MLP)."""
    cfg = make_config(*TINY, *overrides)
    run = RunContext(cfg=cfg, run_dir=tmp_path, runtime=Runtime.from_config(cfg.runtime))
    return PruneContext(model=model if model is not None else run.new_model(), data=run.data, cfg=cfg,
                        runtime=run.runtime, out=ArtifactDir(tmp_path / "search").start(), seed=cfg.seed,
                        density=cfg.density, train=run.train)


def bn_mlp(dtype: torch.dtype = torch.float32, act: type[nn.Module] = nn.ReLU) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), act(), nn.Linear(8, 6), act(),
                        nn.Linear(6, 3))
    with torch.no_grad():  # non-trivial BN affine and running statistics
        net[2].weight.uniform_(0.5, 1.5)
        net[2].bias.uniform_(-0.5, 0.5)
        net[2].running_mean.uniform_(-1, 1)
        net[2].running_var.uniform_(0.5, 2)
    return net.to(dtype)


def batch(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(16, 12, generator=gen, dtype=dtype), torch.randint(0, 3, (16,), generator=gen)


WEIGHTS = ["1.weight", "4.weight", "6.weight"]


# -- SNIP ------------------------------------------------------------------------------------------------------
def test_snip_score_is_abs_weight_times_gradient_on_batch_statistics():
    net = bn_mlp()
    x, y = batch()
    running = net[2].running_mean.clone()
    scores = snip_scores(net, x, y)
    # independently: a copy in train mode (BN on batch statistics), plain backward
    ref = copy.deepcopy(net).train()
    F.cross_entropy(ref(x), y).backward()
    params = dict(ref.named_parameters())
    assert set(scores) == set(WEIGHTS)
    for name in WEIGHTS:
        expected = (params[name].detach() * params[name].grad).abs()
        torch.testing.assert_close(scores[name], expected, rtol=1e-5, atol=1e-7)
    assert torch.equal(net[2].running_mean, running)  # saved statistics untouched
    assert net.training  # mode restored


def test_snip_pruner_uses_a_class_balanced_batch_exact_k_and_is_seeded(tmp_path):
    ctx = prune_context(tmp_path, "pruner=snip", "sparsity=0.93")
    result = build_pruner(ctx.cfg.pruner).prune(ctx)
    assert count(result.masks) == (ctx.keep, ctx.total)
    x, y = ctx.data.sample(10, ctx.seed, "snip", per_class=True)
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), 10))
    expected = topk_masks(snip_scores(ctx.model, x, y, ctx.exclude), ctx.keep)
    assert all(torch.equal(result.masks[n], expected[n]) for n in expected)
    again = build_pruner(ctx.cfg.pruner).prune(ctx)
    assert all(torch.equal(result.masks[n], again.masks[n]) for n in expected)
    other = prune_context(tmp_path / "s1", "pruner=snip", "sparsity=0.93", "seed=1", model=ctx.model)
    assert any(not torch.equal(result.masks[n], build_pruner(other.cfg.pruner).prune(other).masks[n])
               for n in expected)  # another seed draws another batch


def test_snip_random_batch_option(tmp_path):
    ctx = prune_context(tmp_path, "pruner=snip", "pruner.batch_size=37", "sparsity=0.5")
    x, y = ctx.data.sample(37, ctx.seed, "snip")
    result = build_pruner(ctx.cfg.pruner).prune(ctx)
    expected = topk_masks(snip_scores(ctx.model, x, y, ctx.exclude), ctx.keep)
    assert all(torch.equal(result.masks[n], expected[n]) for n in expected)


# -- GraSP -----------------------------------------------------------------------------------------------------
def test_grasp_hessian_gradient_product_matches_finite_difference_of_gradients():
    net = bn_mlp(torch.float64, nn.Tanh)
    x, y = batch(torch.float64)
    T = 3.0
    g, hg = hessian_gradient(net, x, y, T)

    def gradient(shift: float) -> dict[str, torch.Tensor]:
        ref = copy.deepcopy(net).train()
        params = dict(ref.named_parameters())
        with torch.no_grad():
            for name in WEIGHTS:
                params[name].add_(shift * g[name])
        F.cross_entropy(ref(x) / T, y).backward()
        return {name: params[name].grad for name in WEIGHTS}

    eps = 1e-4
    plus, minus = gradient(eps), gradient(-eps)
    ref0 = gradient(0.0)
    for name in WEIGHTS:
        torch.testing.assert_close(g[name], ref0[name])
        torch.testing.assert_close(hg[name], (plus[name] - minus[name]) / (2 * eps), rtol=1e-5, atol=1e-9)
    assert hg["1.weight"].abs().max() > 1e-6  # a non-trivial product


def test_grasp_keeps_the_smallest_minus_w_hg(tmp_path):
    ctx = prune_context(tmp_path, "pruner=grasp", "sparsity=0.8")
    result = build_pruner(ctx.cfg.pruner).prune(ctx)
    assert count(result.masks) == (ctx.keep, ctx.total)
    x, y = ctx.data.sample(10, ctx.seed, "grasp", per_class=True)
    _, hg = hessian_gradient(ctx.model, x, y, 200.0)
    importance = {n: -m.weight.detach() * hg[n] for n, m in ctx.prunable().items()}  # GraSP's S = -w Hg
    torch.testing.assert_close(result.scores, {n: -s for n, s in importance.items()})
    kept = torch.cat([importance[n][result.masks[n]] for n in importance])
    pruned = torch.cat([importance[n][~result.masks[n]] for n in importance])
    assert kept.max() <= pruned.min()  # GraSP removes the weights of largest S
    assert torch.equal(torch.cat([v.flatten() for v in grasp_scores(ctx.model, x, y, 200.0).values()]),
                       torch.cat([v.flatten() for v in result.scores.values()]))  # deterministic


# -- SynFlow ---------------------------------------------------------------------------------------------------
def chain() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(5, 4, bias=False), nn.ReLU(), nn.Linear(4, 3, bias=False))


def closed_form(w1: torch.Tensor, w2: torch.Tensor) -> dict[str, torch.Tensor]:
    """R = 1^T |W2| |W1| 1: dR/d|W1|_ij = sum_k |W2|_ki, dR/d|W2|_ki = sum_j |W1|_ij."""
    a1, a2 = w1.abs(), w2.abs()
    return {"1.weight": a1 * a2.sum(0)[:, None], "3.weight": a2 * a1.sum(1)[None, :]}


def test_synflow_score_on_a_linear_chain_has_a_closed_form_and_the_original_is_untouched():
    net = chain()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    lin = linearized_copy(net, torch.float64)
    x = torch.ones(1, 5, dtype=torch.float64)
    scores = synflow_scores(lin, x)
    expected = closed_form(before["1.weight"].double(), before["3.weight"].double())
    torch.testing.assert_close(scores, expected)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # signs intact
    assert any((v < 0).any() for v in before.values())
    # round by round: the scores of round n are the closed form on the masked weights of round n-1
    masks_seen = []
    for masks, round_scores in synflow_rounds(lin, x, [15, 9, 4]):
        if masks_seen:
            prev = masks_seen[-1]
            w1 = before["1.weight"].double() * prev["1.weight"]
            w2 = before["3.weight"].double() * prev["3.weight"]
            torch.testing.assert_close(round_scores, closed_form(w1, w2))
            assert all(torch.equal(masks[n] & prev[n], masks[n]) for n in masks)  # nested
        masks_seen.append(masks)
    assert [count(m)[0] for m in masks_seen] == [15, 9, 4]


def test_synflow_abs_parameters_and_buffers_bn_eval():
    net = bn_mlp()
    lin = linearized_copy(net, torch.float64)
    assert not lin.training
    assert all((t >= 0).all() for t in [*lin.parameters(), *lin.buffers()])
    assert all(t.dtype == torch.float64 for t in lin.parameters())
    assert (net[2].running_mean < 0).any()  # the original keeps its signs


def test_synflow_pruner_exponential_schedule_nested_exact_k_deterministic(tmp_path):
    ctx = prune_context(tmp_path, "pruner=synflow", "pruner.rounds=7", "sparsity=0.97")
    result = build_pruner(ctx.cfg.pruner).prune(ctx)
    assert count(result.masks) == (ctx.keep, ctx.total)
    # replay the schedule: round n keeps floor(d^(n/7) N), every round inside the previous one
    lin = linearized_copy(ctx.model, torch.float64)
    keeps = [keep_count(ctx.density ** (n / 7), ctx.total) for n in range(1, 8)]
    assert keeps[-1] == ctx.keep and keeps == sorted(keeps, reverse=True)
    prev = None
    for masks, _ in synflow_rounds(lin, torch.ones(1, *ctx.data.input_shape, dtype=torch.float64), keeps):
        if prev is not None:
            assert all(torch.equal(masks[n] & prev[n], masks[n]) for n in masks)
        prev = masks
    assert all(torch.equal(prev[n], result.masks[n]) for n in prev)
    again = build_pruner(ctx.cfg.pruner).prune(ctx)
    assert all(torch.equal(again.masks[n], result.masks[n]) for n in prev)


# -- exact k, ties ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pruner", ["snip", "grasp", "synflow", "magnitude"])
def test_exact_k_even_with_tied_scores(tmp_path, pruner):
    ctx = prune_context(tmp_path, f"pruner={pruner}", "sparsity=0.6137")
    with torch.no_grad():
        for module in ctx.prunable().values():
            module.weight.fill_(0.05)  # every weight of a layer ties
    result = build_pruner(ctx.cfg.pruner).prune(ctx)
    assert count(result.masks) == (ctx.keep, ctx.total)


# -- layer collapse --------------------------------------------------------------------------------------------
def test_layer_collapse_is_reported_for_magnitude_and_snip_but_not_synflow(tmp_path):
    stages = "stages=[search,rewind,evaluate]"
    magnitude = run_pipeline(make_config(*TINY, "pruner=magnitude", "sparsity=0.99", stages), tmp_path / "m")
    assert magnitude["collapsed_layers"] == ["hidden.0.weight"]
    assert magnitude["layers"]["hidden.0.weight"]["kept"] == 0
    density = json.loads((tmp_path / "m" / "search" / "density.json").read_text())
    assert density["collapsed_layers"] == ["hidden.0.weight"]
    snip = run_pipeline(make_config(*TINY, "pruner=snip", "sparsity=0.999", stages), tmp_path / "s")
    assert snip["collapsed_layers"] == ["hidden.0.weight"]
    synflow = run_pipeline(make_config(*TINY, "pruner=synflow", "sparsity=0.999", stages), tmp_path / "f")
    assert synflow["collapsed_layers"] == []  # SynFlow avoids layer collapse (Tanaka et al.)
    assert synflow["density"]["measured_kept"] == synflow["density"]["target_kept"]


# -- the methods through the pipeline ----------------------------------------------------------------------------
@pytest.mark.parametrize("pruner,when", [("snip", "rewind"), ("grasp", "init"), ("synflow", "rewind")])
def test_pipeline_runs_each_method_and_saves_scores_that_rank_the_mask(tmp_path, pruner, when):
    cfg = make_config(*TINY, f"pruner={pruner}", f"pruner.when={when}", "sparsity=0.9", NO_SANITY)
    results = run_pipeline(cfg, tmp_path)
    assert results["density"]["measured_kept"] == results["density"]["target_kept"]
    masks = torch.load(tmp_path / "search" / "mask.pt", weights_only=True)
    scores = torch.load(tmp_path / "search" / "scores.pt", weights_only=True)
    kept, _ = count(masks)
    ranked = topk_masks(scores, kept)
    assert all(torch.equal(ranked[n], masks[n]) for n in masks)  # the invert check can trust the scores
    assert (tmp_path / "search" / "pretrain" / "DONE.json").exists() == (when == "rewind")


# -- IMP / LTR ---------------------------------------------------------------------------------------------------
def test_number_of_levels_and_layerwise_quotas():
    assert [num_levels(1 - s, 0.2) for s in (0.9, 0.99, 0.993)] == [11, 21, 22]
    assert num_levels(0.8, 0.2) == 1 and num_levels(0.5, 0.2) == 3 and num_levels(1.0, 0.2) == 1
    assert num_levels(0.8 ** 10, 0.2) == 10 and num_levels(0.5, 0.5) == 1
    sizes = {"a": 1000, "b": 37, "c": 5, "d": 333}
    for density in (0.1, 0.0137, 0.5, 0.001):
        quotas = layer_quotas(density, sizes)
        assert sum(quotas.values()) == keep_count(density, sum(sizes.values()))
        assert all(math.floor(density * n) <= quotas[k] <= math.ceil(density * n) for k, n in sizes.items())


def level_masks(search, levels):
    return [torch.load(search / f"level_{lv:02d}" / "mask.pt", weights_only=True) for lv in range(levels + 1)]


def test_ltr_levels_nested_magnitude_of_the_previous_level_exact_final_count(tmp_path):
    cfg = make_config(*TINY, "pruner=ltr", "sparsity=0.6", NO_SANITY)
    results = run_pipeline(cfg, tmp_path, label="ltr")
    search = tmp_path / "search"
    levels = json.loads((search / "levels.json").read_text())
    total = results["density"]["prunable"]
    L = num_levels(0.4, 0.2)
    assert L == 4 and [r["level"] for r in levels] == list(range(L + 1))
    assert [r["kept"] for r in levels] == [total] + [keep_count(0.8 ** lv, total) for lv in range(1, L)] + [
        keep_count(0.4, total)]
    assert all(r["test_acc"] is not None for r in levels[:-1]) and levels[-1]["test_acc"] is None
    assert results["pruning_point"]["pruner"]["levels"] == levels
    masks = level_masks(search, L)
    final = torch.load(search / "mask.pt", weights_only=True)
    assert all(torch.equal(final[n], masks[-1][n]) for n in final)
    for lv in range(1, L + 1):
        prev, cur = masks[lv - 1], masks[lv]
        assert all(torch.equal(cur[n] & prev[n], cur[n]) for n in cur)  # nested
        # level lv keeps the largest |w| among the weights still kept, trained at level lv-1
        trained = torch.load(search / f"level_{lv - 1:02d}" / "weights.pt", weights_only=True)
        kept = torch.cat([trained[n].abs()[cur[n]] for n in cur])
        dropped = torch.cat([trained[n].abs()[prev[n] & ~cur[n]] for n in cur])
        assert kept.min() >= dropped.max()
    for lv in range(L):  # every level trained the full remaining schedule, from the rewind point
        metrics = json.loads((search / f"level_{lv:02d}" / "metrics.json").read_text())
        assert [r["epoch"] for r in metrics] == [2, 3]
        assert (search / f"level_{lv:02d}" / "DONE.json").exists()
    assert json.loads((tmp_path / "retrain" / "metrics.json").read_text())[0]["epoch"] == 2
    scores = torch.load(search / "scores.pt", weights_only=True)
    assert all(torch.isneginf(scores[n][~masks[L - 1][n]]).all() for n in scores)


def test_imp_rewinds_to_init_layerwise_option(tmp_path):
    cfg = make_config(*TINY, "pruner=imp", "pruner.layerwise=true", "pruner.rate=0.5", "sparsity=0.8",
                      "stages=[search]")
    run_pipeline(cfg, tmp_path)
    search = tmp_path / "search"
    levels = json.loads((search / "levels.json").read_text())
    assert len(levels) == 4  # 0.5 per level to density 0.2: levels 1 (0.5), 2 (0.25), 3 (0.2)
    metrics = json.loads((search / "level_00" / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics] == [1, 2, 3]  # IMP trains from w0 (epoch 0)
    masks = level_masks(search, 3)
    for lv in (1, 2):  # every layer keeps ceil(0.5^lv n) of its weights
        assert all(int(masks[lv][n].sum()) == math.ceil(0.5 ** lv * m.numel()) for n, m in masks[lv].items())
    sizes = {n: m.numel() for n, m in masks[3].items()}
    assert {n: int(m.sum()) for n, m in masks[3].items()} == layer_quotas(0.2, sizes)
    assert layer_quotas(0.2, sizes) == layer_quotas(1 - 0.8, sizes) == {  # ties go to the earlier layer
        "hidden.0.weight": 1229, "hidden.1.weight": 204, "output.weight": 64}
    assert count(masks[3])[0] == keep_count(0.2, sum(sizes.values()))


@pytest.mark.parametrize("pruner,override,message", [
    ("ltr", "pruner.rate=1.0", "pruner.rate must be in (0, 1)"),
    ("synflow", "pruner.rounds=0", "pruner.rounds must be >= 1"),
    ("grasp", "pruner.temperature=0", "pruner.temperature must be > 0"),
    ("snip", "pruner.batch_per_class=0", "pruner.batch_per_class must be >= 1"),
    ("grasp", "pruner.batch_size=-1", "pruner.batch_size must be >= 0"),
])
def test_bad_options_are_one_clear_error(pruner, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_config(f"pruner={pruner}", override)
