"""The compact ticket file: one safetensors file that holds a masked network in a few percent of its dense size.

A ticket at sparsity 0.993 keeps 0.7% of its prunable weights; its dense `state_dict` stores the other 99.3%
as zeros. This file stores, for every masked weight, the mask packed to one bit per weight and only the kept
values (in row-major order of their positions), every other tensor (biases, BatchNorm, unmasked layers)
whole, and a JSON header: what the network is (the run's recorded model config), what it expects as input,
how sparse it is, how accurate, and which run made it.

Layout (safetensors, so any safetensors reader can list it; `read` rebuilds the tensors):

    mask/<name>     uint8, the mask of weight <name> flattened row-major, 8 entries per byte (bit i of byte
                    j is entry 8j + i: little bit order)
    kept/<name>     the weight's values where its mask is True, in the weight's own dtype
    tensor/<name>   every other tensor of the state dict, whole
    __metadata__    {"ltsearch": JSON text of {format: "ltsearch-ticket", format_version: 1, sha256: the
                    payload's checksum, meta: {...}}}

`read` rebuilds exactly the tensors that were written: every whole tensor and every kept value bit for bit,
and the masked weights as zeros where their mask is False (a stored -0.0 there comes back as +0.0). The
payload checksum covers the header's JSON and every tensor's name, dtype, shape and bytes, so a flipped bit
anywhere is reported instead of loaded. Nothing here unpickles: the header is JSON, the tensors are read by
safetensors itself.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ltsearch.errors import ArtifactError, ConfigError, first_line
from ltsearch.masking import Masks
from ltsearch.storage import atomic_write, tensor_digest
from ltsearch.version import __version__

FORMAT = "ltsearch-ticket"
FORMAT_VERSION = 1
HEADER_KEY = "ltsearch"  # the one entry of the safetensors metadata: JSON of format, version, checksum, meta
SUFFIX = ".safetensors"
MASK, KEPT, WHOLE = "mask/", "kept/", "tensor/"
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


@dataclass
class TicketFile:
    """A ticket file's contents: the plain state dict (zeros where pruned), the masks, the header's meta."""

    state_dict: dict[str, Tensor]
    masks: Masks
    meta: dict[str, Any]
    nbytes: int = 0  # the file's size

    @property
    def kept(self) -> int:
        return sum(int(m.sum()) for m in self.masks.values())

    @property
    def total(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    @property
    def density(self) -> float:
        return self.kept / self.total if self.total else 1.0


# -- bits ----------------------------------------------------------------------------------------------------
def pack_mask(mask: Tensor) -> Tensor:
    """A bool mask as uint8, 8 entries per byte, row-major, little bit order."""
    bits = mask.detach().cpu().reshape(-1).numpy().astype(np.bool_)
    return torch.from_numpy(np.packbits(bits, bitorder="little"))


def unpack_mask(packed: Tensor, shape: tuple[int, ...]) -> Tensor:
    count = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != (count + 7) // 8:
        raise ValueError(f"a mask of {count} entries needs {(count + 7) // 8} bytes, found {packed.numel()}")
    bits = np.unpackbits(packed.numpy(), count=count, bitorder="little").astype(np.bool_)
    return torch.from_numpy(bits).reshape(shape)


# -- writing -------------------------------------------------------------------------------------------------
def dense_bytes(state: dict[str, Tensor]) -> int:
    """The bytes of a state dict's tensors: what a dense file of the same network holds (headers aside)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def payload_digest(meta_json: str, tensors: dict[str, Tensor]) -> str:
    """SHA-256 of the header's JSON and of every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        digest.update(f"\0{name}\0{tensor_digest(tensors[name])}".encode())
    return digest.hexdigest()


def encode(state: dict[str, Tensor], masks: Masks, meta: dict[str, Any]) -> bytes:
    """The file's bytes: `state` (a plain state dict: `fc.weight`, not parametrization names) with every weight
    named in `masks` stored as packed mask + kept values. `meta` must be JSON; the density is added to it."""
    from safetensors.torch import save

    unknown = sorted(set(masks) - set(state))
    if unknown:
        raise ValueError(f"masks name weights the state dict does not hold: {unknown}")
    tensors: dict[str, Tensor] = {}
    layers = {}
    for name, value in state.items():
        value = value.detach().cpu()
        if name in masks:
            mask = masks[name].detach().cpu().to(torch.bool)
            if tuple(mask.shape) != tuple(value.shape):
                raise ValueError(f"mask '{name}' has shape {tuple(mask.shape)}, the weight {tuple(value.shape)}")
            tensors[MASK + name] = pack_mask(mask)
            tensors[KEPT + name] = value[mask].contiguous()
            layers[name] = {"shape": list(value.shape), "kept": int(mask.sum())}
        else:
            tensors[WHOLE + name] = value.contiguous().clone()  # tied weights would share memory
    kept, total = sum(v["kept"] for v in layers.values()), sum(math.prod(v["shape"]) for v in layers.values())
    nonzero = sum(int((tensors[KEPT + n] != 0).sum()) for n in layers)
    meta = {**meta, "density": {"mask": kept / total if total else 1.0, "kept": kept, "total": total,
                                "measured": nonzero / total if total else 1.0, "nonzero": nonzero},
            "masked": layers, "dense_bytes": dense_bytes(state)}
    meta_json = canonical(meta)
    # one metadata entry: safetensors keeps its metadata in a hash map, so several entries would come out in
    # another order in every process, and the same ticket would not give the same bytes
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "sha256": payload_digest(meta_json, tensors),
              "meta": meta}
    return save(tensors, metadata={HEADER_KEY: json.dumps(header, sort_keys=True, allow_nan=False)})


def canonical(meta: dict[str, Any]) -> str:
    """The JSON text of a header's meta that its checksum covers."""
    return json.dumps(meta, sort_keys=True, allow_nan=False)


def write(path: str | Path, state: dict[str, Tensor], masks: Masks, meta: dict[str, Any]) -> int:
    """Write the file atomically (a reader sees the old file or the whole new one); return its size."""
    data = encode(state, masks, meta)
    atomic_write(path, data)
    return len(data)


# -- reading -------------------------------------------------------------------------------------------------
def read(path: str | Path) -> TicketFile:
    """Read and verify a ticket file. A file that is missing, truncated, not a ticket file, of a newer format
    version, or whose payload does not match its checksum raises ArtifactError naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise ArtifactError(f"{path} is a folder, not a ticket file") from None
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read ({exc.strerror or exc})") from exc
    return decode(data, path)


def _header(data: bytes, path: Path) -> dict[str, Any]:
    """The safetensors header (JSON, never unpickled), after checking that the file is whole."""
    if len(data) < 8:
        raise ArtifactError(f"{path} is truncated or empty ({len(data)} bytes): not a whole ticket file")
    size = int.from_bytes(data[:8], "little")
    if size > _MAX_HEADER:
        raise ArtifactError(f"{path} is not a safetensors file (a ticket file that ltsearch export writes); "
                            f"ltsearch never unpickles a file to find out what it is")
    if 8 + size > len(data):
        raise ArtifactError(f"{path} is truncated: its header needs {8 + size} bytes, the file has {len(data)}")
    try:
        header = json.loads(data[8:8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ArtifactError(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{path} is not a safetensors file (its header is not a JSON object)")
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)
            and len(v["data_offsets"]) == 2 and isinstance(v["data_offsets"][1], int)]
    needed = 8 + size + max(ends, default=0)
    if needed > len(data):
        raise ArtifactError(f"{path} is truncated: its tensors need {needed} bytes, the file has {len(data)}")
    return header


def _meta(header: dict[str, Any], path: Path) -> tuple[dict[str, Any], str, str]:
    text = (header.get("__metadata__") or {}).get(HEADER_KEY) if isinstance(header.get("__metadata__"), dict) \
        else None
    try:
        info = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        info = None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ArtifactError(f"{path} is a safetensors file but not an ltsearch ticket file (its header names no "
                            f"format {FORMAT!r}); ltsearch export writes those")
    version = info.get("format_version")
    if not isinstance(version, int):
        raise ArtifactError(f"{path}: format_version {version!r} is not a number")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{path} was written by a newer ltsearch (ticket format version {version}; this "
                            f"ltsearch {__version__} reads version {FORMAT_VERSION} and older): upgrade ltsearch "
                            f"(pip install -U ltsearch)")
    meta, checksum = info.get("meta"), info.get("sha256")
    if not isinstance(meta, dict) or not isinstance(checksum, str):
        raise ArtifactError(f"{path}: its header lacks the meta or the checksum of a ticket file")
    if not isinstance(meta.get("masked"), dict):
        raise ArtifactError(f"{path}: its meta does not describe the masked weights")
    try:
        meta_json = canonical(meta)
    except ValueError:
        raise ArtifactError(f"{path}: its meta holds a value JSON does not allow (NaN, infinity)") from None
    return meta, meta_json, checksum


def decode(data: bytes, path: Path) -> TicketFile:
    from safetensors import SafetensorError
    from safetensors.torch import load

    meta, meta_json, checksum = _meta(_header(data, path), path)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{path} is damaged ({first_line(exc, 160)})") from exc
    if payload_digest(meta_json, tensors) != checksum:
        raise ArtifactError(f"{path} is corrupt or was altered: its payload does not match the checksum it was "
                            f"written with")
    state: dict[str, Tensor] = {}
    masks: Masks = {}
    try:
        for key, value in tensors.items():
            if key.startswith(WHOLE):
                state[key[len(WHOLE):]] = value
        for name, layer in meta["masked"].items():
            mask = unpack_mask(tensors[MASK + name], tuple(layer["shape"]))
            values = tensors[KEPT + name]
            weight = torch.zeros(mask.shape, dtype=values.dtype)
            weight[mask] = values
            state[name], masks[name] = weight, mask
    except (KeyError, ValueError, RuntimeError, IndexError, TypeError) as exc:
        raise ArtifactError(f"{path}: its tensors do not match its meta ({first_line(exc, 160)})") from exc
    return TicketFile(state_dict=state, masks=masks, meta=meta, nbytes=len(data))


# -- fitting a network ---------------------------------------------------------------------------------------
def fit_problem(shapes: dict[str, tuple[int, ...]], ticket: TicketFile) -> str | None:
    """Why a network whose plain state dict has these shapes cannot take the ticket (None: it can)."""
    missing = sorted(set(ticket.state_dict) - set(shapes))
    extra = sorted(set(shapes) - set(ticket.state_dict))
    wrong = [f"{n} is {list(ticket.state_dict[n].shape)} in the file, {list(shapes[n])} in the model"
             for n in ticket.state_dict if n in shapes and tuple(ticket.state_dict[n].shape) != tuple(shapes[n])]
    parts = ([f"the model has no {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"] if missing else []) \
        + ([f"the file has no {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}"] if extra else []) \
        + wrong[:3]
    return "; ".join(parts) or None


def floats(values: Tensor | None) -> list[float] | None:
    """A float32 tensor as the shortest decimals that give back the same float32 values (0.1307, not
    0.1307000070810318), for a header people read."""
    if values is None:
        return None
    return [float(str(np.float32(v))) for v in values.detach().cpu().flatten().tolist()]


def config_sha256(config: dict[str, Any]) -> str:
    """A run config's identity: SHA-256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def run_meta(config: dict[str, Any], *, weights: str, label: str, input_shape: tuple[int, ...], num_classes: int,
             mean: list[float] | None, std: list[float] | None, test_acc: float | None) -> dict[str, Any]:
    """The header of a run's ticket: the recorded model config (rebuilds the network), the input it expects,
    the dataset (its root left out: a path on the machine that ran it), the method, the accuracy measured on
    the test set with these weights (None when not measured), the version and the run config's hash."""
    if weights not in ("ticket", "trained"):
        raise ConfigError(f"weights={weights!r}: choose 'ticket' or 'trained'")
    dataset = {k: v for k, v in config.get("dataset", {}).items() if k not in ("root", "download")}
    return {"weights": weights, "model": config["model"], "seed": config.get("seed", 0),
            "input": {"shape": list(input_shape), "dtype": "float32", "mean": mean, "std": std,
                      "scale": "images stored as uint8 are divided by 255 before (x - mean) / std"},
            "num_classes": int(num_classes), "dataset": dataset, "method": label,
            "sparsity": config.get("sparsity"), "test_acc": test_acc, "ltsearch_version": __version__,
            "config_sha256": config_sha256(config)}
