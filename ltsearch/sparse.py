"""Sparse inference: a ticket's linear layers and convolutions computed with PyTorch's sparse kernels.

A ticket keeps zeros in its dense weights, so a dense kernel does all the work of the dense network.
`sparsify` replaces each linear or convolution layer by one that multiplies with its weight held as a sparse
CSR (or BSR) matrix wherever that is faster on the machine it runs on: every layer is timed on the input it
gets from an example batch, dense against each sparse kernel, and keeps the fastest (`plan` lists the choices
and the times). Sparse kernels pay only when the work they skip outweighs their overhead: they win on large,
very sparse matrices and lose on small layers and at moderate sparsity.

- Linear: y = x W^T + b as `addmm(b, W_sparse, x^T)^T` (sparse @ dense, one call).
- Convolution (1-D and 2-D, groups=1, zero padding): a gathered im2col. Only the columns of the unfolded
  input that some kept weight reads (input channel, kernel row, kernel column) are gathered, through one index
  built per input size, and multiplied by the weight's kept columns held sparse. At 99% sparsity most of the
  im2col work is skipped as well as most of the multiply-adds.

The sparse layers compute the masked dense network's outputs up to float rounding (the sums run in another
order).

Why this module is long: two sparse layers with their index arithmetic, and the timing that chooses between
them and the dense layer, belong together; each piece is short.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltsearch.masking import without_masks

KERNELS = ("csr", "bsr")
SPARSE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
BLOCK = 4  # BSR block size (rows and columns); a layer whose shape it does not divide has no BSR candidate


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Without the warning PyTorch gives for every sparse CSR/BSR tensor (their support is in beta) and
    TorchScript's deprecation warnings."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse (CSR|BSR|CSC|BSC) tensor support is in beta.*")
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*deprecated.*")
        yield


def to_layout(matrix: Tensor, kernel: str) -> Tensor:
    """A 2-D dense matrix as a sparse CSR or BSR tensor."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown sparse kernel {kernel!r}; known: {', '.join(KERNELS)}")
    with quiet():
        return matrix.to_sparse_csr() if kernel == "csr" else matrix.to_sparse_bsr((BLOCK, BLOCK))


def kernels_for(matrix: Tensor, kernels: tuple[str, ...] = KERNELS) -> list[str]:
    """The sparse kernels a matrix of this shape can use (BSR needs the block size to divide it)."""
    rows, cols = matrix.shape
    return [k for k in kernels if k != "bsr" or (rows % BLOCK == 0 and cols % BLOCK == 0)]


class SparseLinear(nn.Module):
    """nn.Linear with its weight held as a sparse matrix."""

    def __init__(self, linear: nn.Linear, kernel: str = "csr") -> None:
        super().__init__()
        self.in_features, self.out_features, self.kernel = linear.in_features, linear.out_features, kernel
        self.register_buffer("weight", to_layout(linear.weight.detach(), kernel))
        bias = linear.bias.detach() if linear.bias is not None else torch.zeros(linear.out_features,
                                                                               device=linear.weight.device)
        self.register_buffer("bias", bias.clone().unsqueeze(1))

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch.addmm(self.bias, self.weight, flat.t()).t()
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}"


def _pair(value: int | tuple[int, ...], conv1d: bool, height: int) -> tuple[int, int]:
    """A conv setting as (height, width); a 1-D convolution runs as a 2-D one of height 1 (`height`: the
    setting along that dimension)."""
    value = tuple(value) if isinstance(value, tuple | list) else (value,)
    return (height, value[-1]) if conv1d else (value[0], value[-1])


class SparseConv(nn.Module):
    """nn.Conv1d / nn.Conv2d (groups=1, zero padding) as a gathered im2col times a sparse matrix."""

    def __init__(self, conv: nn.Conv1d | nn.Conv2d, kernel: str = "csr") -> None:
        super().__init__()
        if not supports(conv):
            raise ValueError(f"{type(conv).__name__} with groups={conv.groups}, padding={conv.padding!r}, "
                             f"padding_mode={conv.padding_mode!r} has no sparse form")
        self.conv1d = isinstance(conv, nn.Conv1d)
        weight = conv.weight.detach()
        if self.conv1d:
            weight = weight.unsqueeze(2)
        self.out_channels, channels, kh, kw = weight.shape
        self.stride = _pair(conv.stride, self.conv1d, 1)
        self.padding = _pair(conv.padding, self.conv1d, 0)  # type: ignore[arg-type]
        self.dilation = _pair(conv.dilation, self.conv1d, 1)
        self.kernel_size = (kh, kw)
        self.kernel = kernel
        flat = weight.reshape(self.out_channels, -1)
        used = (flat != 0).any(0).nonzero().flatten()
        self.columns = int(used.numel())
        self.register_buffer("weight", to_layout(flat[:, used].contiguous(), kernel) if self.columns else
                             torch.zeros(0))
        self.register_buffer("used", used)  # the columns of im2col a kept weight reads
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(self.out_channels, device=weight.device)
        self.register_buffer("bias", bias.clone().unsqueeze(1))
        self._index: dict[tuple[int, int, int], Tensor] = {}

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> SparseConv:
        self._index.clear()  # built again on the device the layer moves to
        return super()._apply(fn, *args, **kwargs)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def index(self, channels: int, h: int, w: int) -> Tensor:
        """Positions in the padded, flattened input of every gathered column at every output position."""
        key = (channels, h, w)
        if key not in self._index:
            (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
            hp, wp = h + 2 * ph, w + 2 * pw
            ho, wo = self.output_size(h, w)
            c, i, j = self.used // (kh * kw), (self.used % (kh * kw)) // kw, self.used % kw
            rows = (i * dh)[:, None, None] + (torch.arange(ho, device=c.device) * sh)[None, :, None]
            cols = (j * dw)[:, None, None] + (torch.arange(wo, device=c.device) * sw)[None, None, :]
            self._index[key] = (c[:, None, None] * hp * wp + rows * wp + cols).reshape(-1)
        return self._index[key]

    def forward(self, x: Tensor) -> Tensor:
        if self.conv1d:
            x = x.unsqueeze(2)
        n, channels, h, w = x.shape
        ho, wo = self.output_size(h, w)
        if self.columns == 0:  # every weight pruned: the bias alone
            out = self.bias.view(1, -1, 1, 1).expand(n, -1, ho, wo).to(x.dtype).contiguous()
        else:
            ph, pw = self.padding
            padded = F.pad(x, (pw, pw, ph, ph)).reshape(n, -1)
            gathered = padded.index_select(1, self.index(channels, h, w))  # (n, columns * ho * wo)
            gathered = gathered.view(n, self.columns, ho * wo).transpose(0, 1).reshape(self.columns, -1)
            out = torch.addmm(self.bias, self.weight, gathered)  # (out_channels, n * ho * wo)
            out = out.view(self.out_channels, n, ho, wo).transpose(0, 1).contiguous()
        return out.squeeze(2) if self.conv1d else out

    def extra_repr(self) -> str:
        return (f"out_channels={self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"columns={self.columns}, kernel={self.kernel}")


def supports(module: nn.Module) -> bool:
    """Whether a layer has a sparse form here."""
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return False


def sparse_layer(module: nn.Module, kernel: str) -> nn.Module:
    return SparseLinear(module, kernel) if isinstance(module, nn.Linear) else SparseConv(module, kernel)


# -- choosing per layer ---------------------------------------------------------------------------------------
@dataclass
class LayerChoice:
    """What `sparsify` chose for one layer: the kernel ("dense", "csr", "bsr") and the time in microseconds
    of each candidate on the layer's input from the example batch (its best round)."""

    name: str
    kind: str
    shape: list[int]
    density: float
    kernel: str
    times_us: dict[str, float] = field(default_factory=dict)
    note: str = ""


def time_calls(calls: dict[str, Callable[[], Any]], device: torch.device, budget: float = 0.03, rounds: int = 5
               ) -> dict[str, float]:
    """Seconds per call of each function: the best of `rounds` rounds that alternate the functions (so a
    burst of load from elsewhere hits them all), each round about budget / rounds seconds per function."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    counts = {}
    for name, fn in calls.items():
        fn()  # warm-up (and the gather index of a sparse convolution)
        sync()
        start = time.perf_counter()
        fn()
        sync()
        counts[name] = max(1, int(budget / rounds / max(time.perf_counter() - start, 1e-7)))
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for name, fn in calls.items():
            start = time.perf_counter()
            for _ in range(counts[name]):
                fn()
            sync()
            best[name] = min(best[name], (time.perf_counter() - start) / counts[name])
    return best


def _inputs_of(model: nn.Module, names: list[str], example: Tensor) -> dict[str, Tensor]:
    """The input every named layer gets in one forward pass of `example`."""
    seen: dict[str, Tensor] = {}
    modules = dict(model.named_modules())

    def keep(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...], _out: Any) -> None:  # None: the output stays
            seen.setdefault(name, args[0].detach())
        return hook

    hooks = [modules[n].register_forward_hook(keep(n)) for n in names]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def sparsify(model: nn.Module, example: Tensor, *, kernels: tuple[str, ...] = KERNELS, force: str | None = None,
             plan: dict[str, str] | None = None, max_density: float = 0.5, budget: float = 0.03) -> nn.Module:
    """A copy of `model` (masks made permanent, eval mode, on `example`'s device) whose linear and conv layers
    compute with sparse kernels where that is faster for inputs like `example` (a batch of network inputs).

    Each layer is timed on the input it gets from `example`: dense against every kernel of `kernels` that
    fits it, about `budget` seconds per candidate in rounds that alternate them; the fastest (best round)
    stays. `force="csr"` (or "bsr", "dense") takes that
    kernel for every layer it fits, without timing; `plan` (layer name -> kernel, e.g. from an earlier
    `sparse_plan`) takes the kernel it names for each layer, without timing. Layers denser than
    `max_density` stay dense untimed. The returned model's `sparse_plan` lists a `LayerChoice` per layer.
    """
    if force is not None and force not in (*KERNELS, "dense"):
        raise ValueError(f"force={force!r}: choose one of dense, {', '.join(KERNELS)}")
    net = without_masks(model).to(example.device).eval()
    layers = {n: m for n, m in net.named_modules() if isinstance(m, SPARSE_LAYERS)}
    timed = force is None and plan is None
    inputs = _inputs_of(net, list(layers), example) if timed else {}
    choices = []
    for name, module in layers.items():
        weight = module.weight.detach()
        density = float((weight != 0).sum()) / weight.numel()
        choice = LayerChoice(name, type(module).__name__, list(weight.shape), density, "dense")
        if not supports(module):
            choice.note = "no sparse form (groups, padding mode)"
        elif density > max_density:
            choice.note = f"denser than {max_density:g}"
        elif name not in inputs and timed:
            choice.note = "not reached by the example"
        else:
            _choose(choice, module, inputs.get(name), kernels, (plan or {}).get(name, "dense") if plan else force,
                    budget)
        if choice.kernel != "dense":
            _set(net, name, sparse_layer(module, choice.kernel))
        choices.append(choice)
    net.sparse_plan = choices
    return net


def _choose(choice: LayerChoice, module: nn.Module, x: Tensor | None, kernels: tuple[str, ...],
            force: str | None, budget: float) -> None:
    matrix = module.weight.detach().reshape(module.weight.shape[0], -1)
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        matrix = matrix[:, (matrix != 0).any(0)]
    fitting = kernels_for(matrix, kernels) if matrix.numel() else ["csr"]
    if force is not None:
        choice.kernel = force if force == "dense" or force in fitting else "dense"
        choice.note = "forced" if choice.kernel == force else f"{force} does not fit {list(matrix.shape)}"
        return
    assert x is not None
    calls: dict[str, Callable[[], Any]] = {"dense": lambda: module(x)}
    with quiet(), torch.no_grad():
        for kernel in fitting:
            try:
                layer = sparse_layer(module, kernel)
                layer(x)
            except (RuntimeError, NotImplementedError) as exc:  # a kernel this build or device lacks
                choice.note = f"{kernel} unavailable here ({str(exc).splitlines()[0][:80]})"
                continue
            calls[kernel] = lambda layer=layer: layer(x)
        choice.times_us = {k: v * 1e6 for k, v in time_calls(calls, x.device, budget).items()}
    choice.kernel = min(choice.times_us, key=choice.times_us.__getitem__)


def plan_lines(plan: list[LayerChoice]) -> list[str]:
    """One line per layer: name, shape, density, chosen kernel, and the candidates' times."""
    lines = []
    for c in plan:
        times = ", ".join(f"{k} {v:.1f} us" for k, v in c.times_us.items())
        detail = "; ".join(part for part in (times, c.note) if part)
        lines.append(f"{c.name} {c.kind}{c.shape} density {c.density:.4f}: {c.kernel}"
                     + (f" ({detail})" if detail else ""))
    return lines


def traced(model: nn.Module, example: Tensor) -> torch.jit.ScriptModule:
    """The sparse model as a TorchScript program (torch.export does not take sparse CSR/BSR tensors). The
    convolutions' gather index is traced for the example's height and width; the batch size stays free."""
    with quiet(), torch.no_grad():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        model(example)  # builds the gather indices, which the trace then holds as constants
        return torch.jit.trace(model, example, check_trace=False)
