"""CTS against numbers computed by hand from the formulas of the CTS authors (not from ltsearch's code):
one search step (soft mask, objective x its scale, GradBalance, Adam), the effect of the x100 scale, the lr
drop in a real search, and every objective's value on tiny networks."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from ltsearch.compose import compose
from ltsearch.objectives import OBJECTIVES, MaskedNetwork
from ltsearch.pipeline import run_pipeline
from ltsearch.pruners.concrete import ConcreteSearch
from ltsearch.pruners.cts import CTSConfig
from tests.conftest import TINY

TAU = 2.0 / 3.0


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def linear_net(weights: list[list[float]], bias: list[float] | None = None) -> nn.Linear:
    out, inp = len(weights), len(weights[0])
    layer = nn.Linear(inp, out, bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weights, dtype=torch.float64).float())
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias))
    return layer


def hand_step(w, x, y, theta, noise, density, lr=0.1, scale=100.0, slack=1.1, eps=1e-8):
    """One CTS step on a bias-free linear layer z = (w * m) x and one sample, by hand: returns
    (CE, lambda, new theta). Weights are indexed [j][k] (output j, input k); theta and noise row-major."""
    rows, cols = len(w), len(w[0])
    m = [sigmoid(noise[i] / TAU + theta[i]) for i in range(rows * cols)]
    z = [sum(w[j][k] * m[j * cols + k] * x[k] for k in range(cols)) for j in range(rows)]
    zmax = max(z)
    exp = [math.exp(v - zmax) for v in z]
    p = [e / sum(exp) for e in exp]
    ce = -math.log(p[y])
    # dCE/dtheta_jk = (p_j - [j == y]) x_k w_jk m_jk (1 - m_jk), times the objective's scale
    g = [scale * (p[j] - (1.0 if j == y else 0.0)) * x[k] * w[j][k] * m[j * cols + k] * (1 - m[j * cols + k])
         for j in range(rows) for k in range(cols)]
    n = rows * cols
    sig = [sigmoid(t) for t in theta]
    s_err = 100.0 * (sum(sig) / (slack * density * n) - 1.0)
    g_sp = [100.0 / (slack * density * n) * s * (1 - s) for s in sig]
    lam = 0.0
    if s_err > 0:
        lam = math.sqrt(sum(v * v for v in g)) / (math.sqrt(sum(v * v for v in g_sp)) + 1e-12)
    grad = [g[i] + lam * g_sp[i] for i in range(n)]
    # Adam, first step, bias-corrected: m_hat = grad, v_hat = grad^2
    new = [theta[i] - lr * grad[i] / (math.sqrt(grad[i] ** 2) + eps) for i in range(n)]
    return ce, lam, new


def search_on(layer: nn.Module, density: float, objective: str = "task", **options) -> ConcreteSearch:
    for p in layer.parameters():
        p.requires_grad_(False)
    weights = {"weight": layer.weight.detach()}
    return ConcreteSearch(layer, weights, density, CTSConfig(name="cts", **options), OBJECTIVES[objective](),
                          objective, autocast=lambda: torch.autocast("cpu", enabled=False))


W = [[0.5, -1.2, 0.3], [0.8, 0.1, -0.7]]
X = [1.0, 2.0, -0.5]
Y = 1
NOISE = [0.3, -1.1, 2.0, 0.05, -0.4, 0.9]


@pytest.mark.parametrize("theta", [[1.5, 0.2, -0.3, 2.0, 0.7, -1.0],  # s_err > 0: GradBalance adds lambda g_sp
                                   [math.log(0.3 / 0.7)] * 6])  # at init, s_err < 0: lambda = 0
def test_one_step_against_the_formulas(theta):
    density = 0.3
    search = search_on(linear_net(W), density)
    with torch.no_grad():
        search.theta.copy_(torch.tensor(theta))
    value = search.step(torch.tensor([X]), torch.tensor([Y]), torch.tensor(NOISE))
    ce, lam, new = hand_step(W, X, Y, theta, NOISE, density)
    assert value == pytest.approx(ce, rel=1e-5)  # the unscaled objective is reported
    assert search.control.lam == pytest.approx(lam, rel=1e-5)
    assert search.theta.detach().tolist() == pytest.approx(new, rel=1e-5, abs=1e-6)


def test_the_x100_moves_logits_whose_gradient_is_near_adams_eps():
    """A per-logit gradient of 5e-9 is below Adam's eps (1e-8): unscaled, the first step moves the logit by
    lr g / (|g| + eps) = 0.033; scaled by 100, by 0.098, nearly the full lr. The search uses the scale."""
    tiny = 4e-8
    w = [[tiny, 0.0], [0.0, 0.0]]  # only logit 0 gets a gradient, ~ x * w * m(1 - m) * (p - 1)
    theta = [0.0, 0.0, 0.0, 0.0]
    noise = [0.0, 0.0, 0.0, 0.0]
    moved = {}
    for scale in (1.0, 100.0):
        ce, _, new = hand_step(w, [1.0, 0.0], 1, theta, noise, density=0.9, scale=scale)
        moved[scale] = abs(new[0] - theta[0])
    assert moved[1.0] == pytest.approx(0.1 / 3, rel=1e-2) and moved[100.0] == pytest.approx(0.098, rel=1e-2)
    search = search_on(linear_net(w), 0.9)
    with torch.no_grad():
        search.theta.zero_()
    search.step(torch.tensor([[1.0, 0.0]]), torch.tensor([1]), torch.zeros(4))
    assert abs(float(search.theta[0].detach())) == pytest.approx(moved[100.0], rel=1e-4)


def test_a_search_with_the_scale_differs_from_one_without(monkeypatch, tmp_path):
    """Same seed, same data, same noise: theta after a few epochs differs once the x100 is removed, and the
    recorded objective is the unscaled one in both (similar magnitudes, not 100x apart)."""
    overrides = [*TINY, "pruner=cts_kl", "pruner.epochs=3", "pruner.when=init", "sparsity=0.9",
                 "stages=[search]"]
    run_pipeline(compose(*overrides), tmp_path / "scaled")
    monkeypatch.setattr(OBJECTIVES["reverse_kl"], "scale", 1.0)
    run_pipeline(compose(*overrides), tmp_path / "unscaled")
    a = torch.load(tmp_path / "scaled" / "search" / "scores.pt", weights_only=True)
    b = torch.load(tmp_path / "unscaled" / "search" / "scores.pt", weights_only=True)
    diff = max(float((a[n] - b[n]).abs().max()) for n in a)
    assert diff > 0.05
    ra = json.loads((tmp_path / "scaled" / "search" / "cts" / "metrics.json").read_text())
    rb = json.loads((tmp_path / "unscaled" / "search" / "cts" / "metrics.json").read_text())
    assert 0.1 < ra[0]["objective"] / rb[0]["objective"] < 10


def test_the_lr_drops_in_a_real_search_at_the_reference_epoch(tmp_path):
    overrides = [*TINY, "dataset.train_size=64", "train.batch_size=64", "pruner=cts", "pruner.epochs=20",
                 "pruner.when=init", "pruner.control=lagrange", "stages=[search]", "search_protocol=none"]
    run_pipeline(compose(*overrides), tmp_path)
    history = json.loads((tmp_path / "search" / "cts" / "metrics.json").read_text())
    lrs = [r["lr"] for r in history]
    assert lrs[:16] == pytest.approx([0.1] * 16) and lrs[16:] == pytest.approx([0.01] * 4)


def test_the_lagrange_multipliers_lr_drops_with_the_mask_lr():
    search = search_on(linear_net(W), 0.3, control="lagrange")
    assert search.control.lagrange_lr == pytest.approx(0.001)
    search.drop_lr(0.1)
    assert search.control.lagrange_lr == pytest.approx(0.0001)
    assert search.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


# -- the objectives on tiny networks, by hand --------------------------------------------------------------
def softmax_rows(z: list[list[float]]) -> list[list[float]]:
    out = []
    for row in z:
        e = [math.exp(v - max(row)) for v in row]
        out.append([v / sum(e) for v in e])
    return out


def matvec(w, x, b=None):
    return [sum(w[j][k] * x[k] for k in range(len(x))) + (b[j] if b else 0.0) for j in range(len(w))]


def masked(w, m):
    return [[w[j][k] * m[j][k] for k in range(len(w[0]))] for j in range(len(w))]


def ce(p_rows, ys):
    return sum(-math.log(p[y]) for p, y in zip(p_rows, ys, strict=True)) / len(ys)


M = [[0.9, 0.2, 0.6], [0.1, 0.8, 0.5]]
XS = [[1.0, 2.0, -0.5], [-0.3, 0.4, 1.5]]
YS = [1, 0]


def net_view(layer: nn.Module, mask_rows: list[list[float]]) -> MaskedNetwork:
    return MaskedNetwork(layer, {"weight": layer.weight.detach()}, {"weight": torch.tensor(mask_rows)})


def test_delta_loss_by_hand():
    layer = linear_net(W)
    dense = ce(softmax_rows([matvec(W, x) for x in XS]), YS)
    sparse = ce(softmax_rows([matvec(masked(W, M), x) for x in XS]), YS)
    got = OBJECTIVES["delta_loss"]().value(net_view(layer, M), torch.tensor(XS), torch.tensor(YS),
                                          torch.tensor([matvec(W, x) for x in XS]))
    assert float(got.detach()) == pytest.approx(abs(sparse / dense - 1), rel=1e-5)
    assert OBJECTIVES["delta_loss"].scale == 1e4


def test_gradient_norm_by_hand():
    """-||dCE/dW, dCE/db||: with W_eff = W * m, dCE/dW = mean over samples of (p - onehot) x^T, times m."""
    b = [0.1, -0.2]
    layer = linear_net(W, b)
    p = softmax_rows([matvec(masked(W, M), x, b) for x in XS])
    dz = [[p[i][j] - (1.0 if j == YS[i] else 0.0) for j in range(2)] for i in range(2)]
    dw = [[sum(dz[i][j] * XS[i][k] for i in range(2)) / 2 * M[j][k] for k in range(3)] for j in range(2)]
    db = [sum(dz[i][j] for i in range(2)) / 2 for j in range(2)]
    norm = math.sqrt(sum(v * v for row in dw for v in row) + sum(v * v for v in db))
    got = OBJECTIVES["grad_norm"]().value(net_view(layer, M), torch.tensor(XS), torch.tensor(YS), None)
    assert float(got.detach()) == pytest.approx(-norm, rel=1e-5)
    assert OBJECTIVES["grad_norm"].scale == 1.0


def standardise_row(v: list[float], eps: float = 1e-9) -> list[float]:
    mean = sum(v) / len(v)
    std = math.sqrt(sum((a - mean) ** 2 for a in v) / (len(v) - 1))
    return [(a - mean) / (std + eps) for a in v]


def mse(a: list[list[float]], b: list[list[float]]) -> float:
    flat = [(x - y) ** 2 for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)]
    return sum(flat) / len(flat)


def test_feature_matching_by_hand():
    """A 3-4-2 MLP: the hidden ReLU output and the softmax, each standardised per sample, MSE, mean."""
    w1 = [[0.5, -1.0, 0.3], [0.2, 0.4, -0.6], [-0.7, 0.9, 0.1], [0.3, 0.3, 0.8]]
    b1 = [0.1, 0.0, -0.1, 0.05]
    w2 = [[0.6, -0.4, 0.2, 0.9], [-0.3, 0.7, 0.5, -0.2]]
    m1 = [[0.9, 0.1, 0.5], [0.3, 0.8, 0.7], [0.6, 0.4, 0.2], [0.95, 0.5, 0.05]]
    m2 = [[0.5, 0.9, 0.2, 0.7], [0.8, 0.3, 0.6, 0.4]]
    relu = lambda v: [max(a, 0.0) for a in v]  # noqa: E731

    def features(a1, a2):
        hidden = [relu(matvec(a1, x, b1)) for x in XS]
        logits = [matvec(a2, h) for h in hidden]
        return [[standardise_row(h) for h in hidden], [standardise_row(p) for p in softmax_rows(logits)]]

    dense, sparse = features(w1, w2), features(masked(w1, m1), masked(w2, m2))
    expected = (mse(sparse[0], dense[0]) + mse(sparse[1], dense[1])) / 2

    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(w1))
        net[0].bias.copy_(torch.tensor(b1))
        net[2].weight.copy_(torch.tensor(w2))
    view = MaskedNetwork(net, {"0.weight": net[0].weight.detach(), "2.weight": net[2].weight.detach()},
                         {"0.weight": torch.tensor(m1), "2.weight": torch.tensor(m2)})
    got = OBJECTIVES["feature_matching"]().value(view, torch.tensor(XS), torch.tensor(YS), None)
    assert float(got.detach()) == pytest.approx(expected, rel=1e-4)


def test_gradient_matching_by_hand():
    """One layer: dense dCE/dW and masked dCE/dW (= mean (p_s - onehot) x^T times m), each standardised
    over the whole tensor (unbiased std), MSE."""
    layer = linear_net(W)

    def grad(weights, mask):
        p = softmax_rows([matvec(weights, x) for x in XS])
        dz = [[p[i][j] - (1.0 if j == YS[i] else 0.0) for j in range(2)] for i in range(2)]
        return [sum(dz[i][j] * XS[i][k] for i in range(2)) / 2 * mask[j][k] for j in range(2) for k in range(3)]

    ones = [[1.0] * 3, [1.0] * 3]
    dense, sparse = grad(W, ones), grad(masked(W, M), M)

    def standardise_all(v):
        mean = sum(v) / len(v)
        std = math.sqrt(sum((a - mean) ** 2 for a in v) / (len(v) - 1))
        return [(a - mean) / std for a in v]

    expected = mse([standardise_all(sparse)], [standardise_all(dense)])
    got = OBJECTIVES["grad_matching"]().value(net_view(layer, M), torch.tensor(XS), torch.tensor(YS), None)
    assert float(got.detach()) == pytest.approx(expected, rel=1e-4)


def test_objective_scales_are_the_authors():
    scales = {name: cls.scale for name, cls in OBJECTIVES.items()}
    assert scales == {"task": 100.0, "forward_kl": 100.0, "reverse_kl": 100.0, "delta_loss": 1e4,
                      "grad_norm": 1.0, "feature_matching": 100.0, "grad_matching": 100.0}
