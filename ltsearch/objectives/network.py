"""The network as an objective sees it: frozen weights, run with or without a mask on them.

Every run goes through `torch.func.functional_call`, so the model itself is never modified: a masked run
uses w * m for every prunable weight w (m: the search's soft mask, with a graph back to its logits, or a
hard mask), an unmasked run uses w. Objectives that look inside the network ask a run for the outputs of
every `nn.ReLU` module call, in call order (a module called twice, such as a ResNet block's ReLU, gives
two activations), or for gradient leaves: fresh tensors standing for the raw weights w (and, with
`leaves="all"`, every other parameter) that the run computes with, so that gradients with respect to w can
be taken with `create_graph=True` and still reach the mask.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn
from torch.func import functional_call

Leaves = Literal["none", "prunable", "all"]


@dataclass
class Pass:
    """One forward pass: float logits, the captured ReLU outputs (flattened per sample) and the leaves."""

    logits: Tensor
    activations: list[Tensor] = field(default_factory=list)
    leaves: list[Tensor] = field(default_factory=list)


class MaskedNetwork:
    """`model` with its prunable weights `weights` (name -> tensor) and `mask` (name -> tensor, same shapes)."""

    def __init__(self, model: nn.Module, weights: dict[str, Tensor], mask: dict[str, Tensor],
                 autocast: Callable[[], Any] = contextlib.nullcontext) -> None:
        self.model = model
        self.weights = weights
        self.mask = mask
        self.autocast = autocast

    def logits(self, x: Tensor, masked: bool = True) -> Tensor:
        return self.run(x, masked).logits

    def run(self, x: Tensor, masked: bool = True, capture: bool = False, leaves: Leaves = "none") -> Pass:
        params: dict[str, Tensor] = {}
        found: list[Tensor] = []
        if leaves == "all":
            for name, p in self.model.named_parameters():
                if name not in self.weights:
                    params[name] = p.detach().requires_grad_(True)
                    found.append(params[name])
        for name, w in self.weights.items():
            base = w.detach().requires_grad_(True) if leaves != "none" else w
            if leaves != "none":
                found.append(base)
            params[name] = base * self.mask[name] if masked else base
        activations: list[Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: activations.append(out.flatten(1)))
                 for m in self.model.modules() if capture and isinstance(m, nn.ReLU)]
        try:
            with self.autocast():
                out = functional_call(self.model, params, (x,))
        finally:
            for hook in hooks:
                hook.remove()
        return Pass(out.float(), [a.float() for a in activations], found)


def standardise_rows(t: Tensor, eps: float = 1e-9) -> Tensor:
    """(t - mean) / (std + eps) per row (per sample), with the unbiased std over the row's entries."""
    return (t - t.mean(dim=1, keepdim=True)) / (t.std(dim=1, keepdim=True) + eps)


def standardise(t: Tensor) -> Tensor:
    """(t - mean) / std over the whole tensor (unbiased std, no eps), flattened."""
    flat = t.flatten()
    return (flat - flat.mean()) / flat.std()
