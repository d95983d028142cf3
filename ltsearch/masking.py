"""Masks as first-class objects: which weights are prunable, how masks attach, and how they are counted.

A mask is a dict `weight name -> bool tensor` (names as in an unmasked model, e.g. "fc.weight"). It is
attached with `torch.nn.utils.parametrize`, so the effective weight is `w * mask` in every forward
(training, evaluation and pruning scores alike). When attached, the stored weight is also zeroed where
the mask is 0; the gradient there is 0 too, so SGD, momentum, weight decay and Adam all leave it at
exactly 0 and the plain state dict of a masked model always equals its effective weights.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

Masks = dict[str, Tensor]
PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Mask(nn.Module):
    """Parametrization `w -> w * mask`. The bool mask is the saved buffer; a float copy (not saved) avoids
    a dtype conversion in every forward."""

    def __init__(self, mask: Tensor, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))
        self.register_buffer("scale", mask.to(dtype), persistent=False)

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.scale

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        # A loaded state dict may carry another mask: keep the float copy in step with it.
        super()._load_from_state_dict(*args, **kwargs)
        with torch.no_grad():
            self.scale.copy_(self.mask)


def prunable_modules(model: nn.Module, exclude: list[str] | tuple[str, ...] = ()) -> dict[str, nn.Module]:
    """`weight name -> module` for every conv/linear weight not matched by an `exclude` pattern."""
    out = {}
    for module_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):
            name = f"{module_name}.weight" if module_name else "weight"
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude):
                out[name] = module
    return out


def prunable_weights(model: nn.Module, exclude: list[str] | tuple[str, ...] = ()) -> dict[str, Tensor]:
    """`weight name -> effective weight tensor` (w * mask when masked)."""
    return {name: module.weight for name, module in prunable_modules(model, exclude).items()}


def original_weights(model: nn.Module, exclude: list[str] | tuple[str, ...] = ()) -> dict[str, nn.Parameter]:
    """`weight name -> the trainable Parameter` (the unmasked storage under a parametrization)."""
    out = {}
    for name, module in prunable_modules(model, exclude).items():
        if parametrize.is_parametrized(module, "weight"):
            out[name] = module.parametrizations.weight.original
        else:
            out[name] = module.weight
    return out


def attach_masks(model: nn.Module, masks: Masks) -> nn.Module:
    """Attach (or replace) masks in place; zero the stored weights where the mask is 0."""
    modules = prunable_modules(model)
    unknown = set(masks) - set(modules)
    if unknown:
        raise KeyError(f"mask names not found among the model's conv/linear weights: {sorted(unknown)}")
    for name, mask in masks.items():
        module = modules[name]
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        if tuple(mask.shape) != tuple(module.weight.shape):
            raise ValueError(f"mask '{name}' has shape {tuple(mask.shape)}, weight {tuple(module.weight.shape)}")
        with torch.no_grad():
            module.weight.mul_(mask.to(module.weight.device, module.weight.dtype))
        parametrize.register_parametrization(
            module, "weight", Mask(mask.to(module.weight.device), module.weight.dtype))
    return model


def detach_masks(model: nn.Module) -> nn.Module:
    """Remove every Mask parametrization, leaving the effective weights as plain parameters."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def without_masks(model: nn.Module) -> nn.Module:
    """A copy of `model` with the masks multiplied in and every Mask parametrization gone (plain weights with
    zeros), leaving `model` masked. Not `detach_masks(copy.deepcopy(model))`: a deep copy shares its modules'
    parametrized classes with the original, and removing a parametrization deletes the weight property from
    that class, which breaks the original."""
    net = copy.deepcopy(model)
    for module in net.modules():
        if parametrize.is_parametrized(module):
            values = {name: getattr(module, name).detach().clone() for name in module.parametrizations}
            del module._modules["parametrizations"]
            module.__class__ = type(module).__bases__[0]  # the class before parametrize subclassed it
            for name, value in values.items():
                setattr(module, name, nn.Parameter(value))
    return net


def masks_of(model: nn.Module) -> Masks:
    """The masks attached to a model (all-ones is not reported for unmasked layers)."""
    out = {}
    for name, module in prunable_modules(model).items():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, Mask):
                    out[name] = p.mask.detach().clone()
    return out


def plain_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """State dict with unmasked names (`fc.weight`), holding effective weights, on the CPU."""
    state = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." in key:
            if not key.endswith(".original"):
                continue  # the mask buffers: masks are saved as their own artifact
            key = key.replace(".parametrizations.", ".").removesuffix(".original")
        state[key] = value.detach().cpu().clone()
    return state


def load_plain_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a plain state dict into a model that may carry masks (masked entries stay at 0)."""
    own = model.state_dict()
    mapped = {}
    for key in own:
        if ".parametrizations." in key:
            if key.endswith(".original"):
                mapped[key] = state[key.replace(".parametrizations.", ".").removesuffix(".original")]
            else:
                mapped[key] = own[key]
        else:
            mapped[key] = state[key]
    model.load_state_dict(mapped)
    masks = masks_of(model)
    if masks:
        attach_masks(model, masks)


def full_masks(model: nn.Module, exclude: list[str] | tuple[str, ...] = ()) -> Masks:
    return {n: torch.ones_like(w, dtype=torch.bool) for n, w in prunable_weights(model, exclude).items()}


def keep_count(density: float, total: int) -> int:
    """k = floor(density * N), computed so that 0.8**22 * N does not lose a weight to float error."""
    return min(total, int(math.floor(density * total + 1e-9)))


def topk_masks(scores: dict[str, Tensor], k: int, keep_mask: Masks | None = None) -> Masks:
    """Global exact top-k: keep the k highest scores over all layers together.

    Entries outside `keep_mask` (already pruned) get -inf and are never kept, so successive calls give
    nested masks. Exactly k entries are kept even when scores tie (torch.topk picks among ties).
    """
    names = list(scores)
    flat = []
    for name in names:
        s = scores[name].detach().flatten().to(torch.float64)
        if keep_mask is not None and name in keep_mask:
            s = s.masked_fill(~keep_mask[name].flatten().to(s.device), float("-inf"))
        flat.append(s)
    vector = torch.cat(flat)
    if not 0 <= k <= vector.numel():
        raise ValueError(f"cannot keep {k} of {vector.numel()} weights")
    if torch.isnan(vector).any():
        raise ValueError("scores contain NaN; torch.topk would rank NaN above every number")
    if keep_mask is not None:
        allowed = sum(int(keep_mask[n].sum()) if n in keep_mask else scores[n].numel() for n in names)
        if k > allowed:
            raise ValueError(f"cannot keep {k} weights inside keep_mask, which leaves only {allowed}; "
                             f"nested masks need k <= the count kept so far")
    keep = torch.zeros(vector.numel(), dtype=torch.bool, device=vector.device)
    if k > 0:
        keep[torch.topk(vector, k, sorted=False).indices] = True
    out, offset = {}, 0
    for name in names:
        n = scores[name].numel()
        out[name] = keep[offset: offset + n].view(scores[name].shape).cpu()
        offset += n
    return out


def count(masks: Masks) -> tuple[int, int]:
    """(kept, total) over all masks."""
    kept = sum(int(m.sum()) for m in masks.values())
    return kept, sum(m.numel() for m in masks.values())


def density_report(masks: Masks) -> dict:
    """Per-layer and total counts; a layer with no weight left (layer collapse) is flagged."""
    layers = {}
    for name, mask in masks.items():
        kept, total = int(mask.sum()), mask.numel()
        layers[name] = {"shape": list(mask.shape), "kept": kept, "total": total, "density": kept / total}
    kept, total = count(masks)
    return {
        "kept": kept,
        "total": total,
        "density": kept / total if total else 1.0,
        "collapsed_layers": [n for n, v in layers.items() if v["kept"] == 0],
        "layers": layers,
    }


def effective_density_report(model: nn.Module, exclude: list[str] | tuple[str, ...] = ()) -> dict:
    """Density counted from the weights the forward pass actually uses (nonzero entries of w * mask)."""
    with torch.no_grad():
        nonzero = {n: (w != 0).cpu() for n, w in prunable_weights(model, exclude).items()}
    return density_report(nonzero)


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Run BatchNorm on batch statistics without changing the saved running statistics.

    The CTS authors' networks normalise with batch statistics everywhere; for networks with standard BN
    this is how a masked network is evaluated or searched at the pruning point.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, {k: v.clone() for k, v in m.named_buffers(recurse=False)}) for m in norms]
    for m in norms:
        m.train()
    try:
        yield
    finally:
        for m, (training, buffers) in zip(norms, saved, strict=True):
            m.train(training)
            for key, value in buffers.items():
                getattr(m, key).copy_(value)
