"""Masks: attached with parametrize (w * mask in every forward), pruned weights never move, exact top-k,
nested masks, keep counts, plain state dicts, BatchNorm statistics, exclusions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ltsearch.config import Optimizer, TrainConfig
from ltsearch.masking import (
    Mask,
    attach_masks,
    batch_statistics,
    count,
    density_report,
    detach_masks,
    effective_density_report,
    full_masks,
    keep_count,
    load_plain_state_dict,
    masks_of,
    original_weights,
    plain_state_dict,
    prunable_modules,
    prunable_weights,
    topk_masks,
)
from ltsearch.training.optim import build_optimizer


class Small(nn.Module):
    """A conv net with BN and a linear head: every kind of prunable layer plus BN statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


def small(seed: int = 0) -> Small:
    torch.manual_seed(seed)
    return Small()


def random_masks(model: nn.Module, density: float = 0.3, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(w.shape, generator=gen) < density for n, w in prunable_weights(model).items()}


def functional_forward(model: Small, x: torch.Tensor, masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """The same network computed by hand with w * mask (eval-mode BN)."""
    conv_w = original_weights(model)["conv.weight"] * masks["conv.weight"]
    fc_w = original_weights(model)["fc.weight"] * masks["fc.weight"]
    h = F.conv2d(x, conv_w, model.conv.bias, padding=1)
    h = F.batch_norm(h, model.bn.running_mean, model.bn.running_var, model.bn.weight, model.bn.bias, False)
    return F.linear(F.relu(h).flatten(1), fc_w, model.fc.bias)


def test_attach_uses_parametrize_and_zeroes_stored_weights():
    model = small()
    masks = random_masks(model)
    attach_masks(model, masks)
    for name, module in prunable_modules(model).items():
        assert parametrize.is_parametrized(module, "weight")
        assert isinstance(module.parametrizations.weight[0], Mask)
        stored = module.parametrizations.weight.original
        assert torch.all(stored[~masks[name]] == 0)
        assert torch.all(module.weight[~masks[name]] == 0)
    # the effective weight is w * mask even if the stored weight is changed behind the mask's back
    with torch.no_grad():
        original_weights(model)["fc.weight"].fill_(1.0)
    assert torch.equal(model.fc.weight, masks["fc.weight"].float())
    model.eval()
    x = torch.randn(4, 3, 4, 4)
    torch.testing.assert_close(model(x), functional_forward(model, x, masks), rtol=0, atol=1e-6)


@pytest.mark.parametrize("optimizer, extra", [
    (Optimizer.sgd, {"momentum": 0.9, "weight_decay": 5e-4}),
    (Optimizer.sgd, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    (Optimizer.adam, {"weight_decay": 1e-4}),
    (Optimizer.adamw, {"weight_decay": 1e-2}),
])
def test_pruned_weights_get_no_update(optimizer, extra):
    model = small()
    masks = random_masks(model)
    attach_masks(model, masks)
    before = {n: w.detach().clone() for n, w in original_weights(model).items()}
    cfg = TrainConfig(epochs=1, optimizer=optimizer, lr=0.05, **extra)
    opt = build_optimizer(model.parameters(), cfg)
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        x = torch.randn(16, 3, 4, 4, generator=gen)
        y = torch.randint(0, 5, (16,), generator=gen)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, module in prunable_modules(model).items():
        stored = module.parametrizations.weight.original
        assert torch.all(stored[~masks[name]] == 0), name  # exactly 0, not merely small
        assert torch.all(module.weight[~masks[name]] == 0), name
        assert not torch.equal(stored[masks[name]], before[name][masks[name]]), name  # the rest trained
    # the optimizer state never holds anything at the pruned positions either
    for name, param in original_weights(model).items():
        for value in opt.state[param].values():
            if torch.is_tensor(value) and value.shape == param.shape:
                assert torch.all(value[~masks[name]] == 0), name


def test_evaluation_uses_the_masked_path():
    from ltsearch.config import RuntimeConfig
    from ltsearch.data import Data
    from ltsearch.runtime import Runtime
    from ltsearch.training.evaluate import evaluate

    model = small()
    masks = random_masks(model, 0.2)
    attach_masks(model, masks)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 3, 4, 4, generator=gen), torch.randint(0, 5, (50,), generator=gen)
    data = Data("t", x, y, x, y, 5, None, None, "none")
    runtime = Runtime.from_config(RuntimeConfig(device="cpu", progress=False))
    result = evaluate(model, data, runtime, "test", batch_size=7)
    model.eval()
    with torch.no_grad():
        logits = functional_forward(model, x, masks)
    assert result["acc"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert result["loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)


@pytest.mark.parametrize("density", [1.0, 0.5, 0.2, 0.1, 0.8 ** 22, 1e-4, 0.0])
def test_topk_keeps_exactly_k_even_when_all_scores_tie(density):
    scores = {"a": torch.ones(300, 7), "b": torch.ones(1000), "c": torch.ones(3, 3, 5, 5)}
    total = sum(s.numel() for s in scores.values())
    k = keep_count(density, total)
    assert k == math.floor(density * total + 1e-9)
    masks = topk_masks(scores, k)
    assert count(masks) == (k, total)
    assert all(masks[n].shape == scores[n].shape and masks[n].dtype == torch.bool for n in scores)


def test_topk_is_global_and_exact():
    scores = {"a": torch.tensor([[0.1, 5.0], [3.0, 0.2]]), "b": torch.tensor([4.0, -1.0, 2.0])}
    masks = topk_masks(scores, 3)
    assert masks["a"].tolist() == [[False, True], [True, False]]
    assert masks["b"].tolist() == [True, False, False]
    # partial ties: the strictly larger scores are always kept, the rest is filled from the tie
    scores = {"a": torch.tensor([1.0, 1.0, 1.0, 2.0]), "b": torch.tensor([1.0, 3.0])}
    masks = topk_masks(scores, 4)
    assert count(masks)[0] == 4 and masks["a"][3] and masks["b"][1]
    with pytest.raises(ValueError, match="cannot keep"):
        topk_masks(scores, 7)
    with pytest.raises(ValueError, match="NaN"):
        topk_masks({"a": torch.tensor([1.0, float("nan"), 0.0])}, 1)


def test_nested_masks_with_keep_mask():
    gen = torch.Generator().manual_seed(0)
    shapes = {"a": (40, 30), "b": (200,), "c": (8, 3, 3, 3)}
    total = sum(math.prod(s) for s in shapes.values())
    keep = None
    for level in range(1, 8):
        scores = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
        if level == 3:
            scores = {n: torch.zeros(s) for n, s in shapes.items()}  # all ties: still nested and exact
        k = keep_count(0.8 ** level, total)
        new = topk_masks(scores, k, keep_mask=keep)
        assert count(new)[0] == k
        if keep is not None:
            assert all(torch.all(new[n] <= keep[n]) for n in shapes), level  # nested
        keep = new
    # a keep_mask that leaves fewer than k entries cannot give a nested mask
    with pytest.raises(ValueError, match="keep_mask"):
        topk_masks({n: torch.randn(s) for n, s in shapes.items()}, count(keep)[0] + 1, keep_mask=keep)


@pytest.mark.parametrize("total", [266_610, 265_200, 270_896, 291_376, 14_710_464, 4_300_992, 40_384, 1000, 7])
def test_keep_count_is_floor_of_density_times_n(total):
    assert keep_count(0.8 ** 22, total) == math.floor(0.8 ** 22 * total)
    # decimal sparsities whose float density is a hair below the exact value do not lose a weight
    assert keep_count(1 - 0.9, total) == total // 10
    assert keep_count(1 - 0.8, total) == total // 5
    assert keep_count(1.0, total) == total
    assert keep_count(0.0, total) == 0


def test_keep_count_over_a_range_of_sizes():
    for total in range(1, 200_000, 997):
        assert keep_count(0.8 ** 22, total) == math.floor(0.8 ** 22 * total)
        assert keep_count(1 - 0.993, total) == total * 7 // 1000


def test_plain_state_dict_round_trip():
    model = small(0)
    masks = random_masks(model)
    attach_masks(model, masks)
    state = plain_state_dict(model)
    assert set(state) == set(small().state_dict())  # unmasked names, no mask buffers
    assert all(v.device.type == "cpu" for v in state.values())
    for name, mask in masks.items():
        assert torch.equal(state[name], model.get_submodule(name.rsplit(".", 1)[0]).weight.detach())
        assert torch.all(state[name][~mask] == 0)
    # into a fresh model with the same masks
    other = small(5)
    attach_masks(other, masks)
    load_plain_state_dict(other, state)
    assert all(torch.equal(a, b) for a, b in zip(plain_state_dict(other).values(), state.values(), strict=True))
    assert masks_of(other).keys() == masks.keys()
    assert all(torch.equal(masks_of(other)[n], masks[n]) for n in masks)
    # into an unmasked model: the same function
    plain = small(7)
    load_plain_state_dict(plain, state)
    model.eval(), plain.eval()
    x = torch.randn(3, 3, 4, 4)
    assert torch.equal(model(x), plain(x))
    # into a model with sparser masks: the extra pruned entries are zeroed
    sparser = {n: m & (torch.rand(m.shape) < 0.5) for n, m in masks.items()}
    third = small(9)
    attach_masks(third, sparser)
    load_plain_state_dict(third, state)
    for name, mask in sparser.items():
        assert torch.all(original_weights(third)[name][~mask] == 0)


def test_loading_a_state_dict_keeps_the_mask_in_force():
    """A masked model's own state dict carries its mask buffer; loading it must change the mask used."""
    src, dst = small(0), small(1)
    masks = random_masks(src)
    attach_masks(src, masks)
    attach_masks(dst, full_masks(dst))
    dst.load_state_dict(src.state_dict())
    for name, mask in masks.items():
        weight = dst.get_submodule(name.rsplit(".", 1)[0]).weight
        assert torch.all(weight[~mask] == 0)
        param = original_weights(dst)[name]
        with torch.no_grad():
            param.fill_(1.0)
        assert torch.equal(dst.get_submodule(name.rsplit(".", 1)[0]).weight, mask.float())


def test_replacing_and_detaching_masks():
    model = small()
    first = random_masks(model, 0.6, seed=1)
    attach_masks(model, first)
    second = {n: m & (torch.rand(m.shape) < 0.5) for n, m in first.items()}
    attach_masks(model, second)  # replaces, never stacks
    assert all(len(m.parametrizations.weight) == 1 for m in prunable_modules(model).values())
    assert all(torch.equal(masks_of(model)[n], second[n]) for n in second)
    weights = {n: w.detach().clone() for n, w in prunable_weights(model).items()}
    detach_masks(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert all(torch.equal(model.get_parameter(n), weights[n]) for n in weights)
    with pytest.raises(KeyError, match="not found"):
        attach_masks(model, {"nope.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        attach_masks(model, {"fc.weight": torch.ones(3, 3, dtype=torch.bool)})


def test_density_reports():
    model = small()
    masks = random_masks(model, 0.25)
    masks["conv.weight"][:] = False
    attach_masks(model, masks)
    report = density_report(masks)
    assert report["kept"] == sum(int(m.sum()) for m in masks.values())
    assert report["total"] == sum(m.numel() for m in masks.values())
    assert report["collapsed_layers"] == ["conv.weight"]
    measured = effective_density_report(model)
    assert measured["kept"] == report["kept"] and measured["total"] == report["total"]
    assert set(measured["layers"]) == set(masks)


def test_batch_statistics_restores_running_stats_exactly():
    model = small()
    model.eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.num_batches_tracked.fill_(17)
    saved = {k: v.clone() for k, v in model.bn.named_buffers()}
    x = torch.randn(32, 3, 4, 4) * 3 + 1
    with torch.no_grad():
        eval_out = model(x)
        with batch_statistics(model):
            assert model.bn.training and not model.training
            batch_out = model(x)
            model(x * 2)  # updates the running stats inside the context
        after = model(x)
    assert not torch.allclose(batch_out, eval_out)
    # batch statistics: the output equals a BN that normalises with this batch's own mean and variance
    h = model.conv(x)
    manual = F.batch_norm(h, None, None, model.bn.weight, model.bn.bias, True)
    torch.testing.assert_close(batch_out, model.fc(F.relu(manual).flatten(1)))
    assert not model.bn.training
    for key, value in model.bn.named_buffers():
        assert torch.equal(value, saved[key]), key
    assert torch.equal(after, eval_out)
    # an exception inside the context restores as well; a model in train mode stays in train mode
    model.train()
    with pytest.raises(RuntimeError), batch_statistics(model):
        model(x)
        raise RuntimeError("boom")
    assert model.bn.training
    assert all(torch.equal(v, saved[k]) for k, v in model.bn.named_buffers())


def test_exclusions():
    model = small()
    assert set(prunable_modules(model)) == {"conv.weight", "fc.weight"}
    assert set(prunable_modules(model, ["fc.weight"])) == {"conv.weight"}
    assert set(prunable_modules(model, ["*.weight"])) == set()
    assert set(full_masks(model, ["conv.*"])) == {"fc.weight"}
    # a bare conv/linear module (no parent) is named "weight"
    assert set(prunable_modules(nn.Linear(3, 2))) == {"weight"}
