"""Loaders: each returns the whole dataset as CPU tensors (`Arrays`), or raises a DataError that says
what is missing and where it was expected. No loader touches the network unless `dataset.download=true`.

Why this module is long: it is the one place that knows every data format (MNIST-1D, torchvision's files,
image folders and archives, synthetic data) and the cache of generated and decoded arrays they share; a
reader adding a format finds every neighbour here."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import logging
import math
import os
import sys
import tarfile
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ltsearch.config import DatasetConfig
from ltsearch.data.common import mixed_order
from ltsearch.errors import ArtifactError, DataError, first_line
from ltsearch.paths import cache_root
from ltsearch.seeding import generator
from ltsearch.storage import load_torch, save_torch

log = logging.getLogger(__name__)


@dataclass
class Arrays:
    """A whole dataset as CPU tensors. `identity` names its content: a loader whose files are verified
    against published checksums gives those; otherwise it is left empty and a digest of the arrays is
    used (`ltsearch.storage.tensor_digest`): what cached upstream work and a resumed run check the data
    against, never its path."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    mean: list[float] | None = None
    std: list[float] | None = None
    identity: str = ""


def load_mnist1d(cfg: DatasetConfig) -> Arrays:
    """MNIST-1D, generated offline by the `mnist1d` package with its default (published) arguments.

    Generating it takes seconds (a tenth of a quickstart run), so the arrays are kept under
    `ltsearch.paths.cache_root()`, keyed by the generator's arguments and the package's version."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise DataError("dataset 'mnist1d' needs the package mnist1d (pip install mnist1d)") from exc
    args = get_dataset_args()
    key = hashlib.sha256(repr((_package_version("mnist1d"), sorted(vars(args).items()))).encode()).hexdigest()

    def generate() -> dict[str, Tensor]:
        raw = make_dataset(args)
        to_x = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32)).unsqueeze(1)  # noqa: E731
        to_y = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64))  # noqa: E731
        return {"train_x": to_x(raw["x"]), "train_y": to_y(raw["y"]), "test_x": to_x(raw["x_test"]),
                "test_y": to_y(raw["y_test"])}

    arrays = _kept(cache_root() / f"mnist1d-{key[:16]}.pt", generate, "generated")
    return Arrays(arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"], 10)


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a declared dependency
        return "unknown"


def _kept(path: Path, build: Callable[[], dict[str, Any]], verb: str) -> dict[str, Any]:
    """`build()`, or its copy kept at `path` by an earlier call. A damaged copy is built again; a full or
    read-only cache only costs building it next time too."""
    if path.exists():
        try:
            return load_torch(path)
        except ArtifactError:
            with contextlib.suppress(OSError):  # built again below; a read-only cache keeps it
                path.unlink(missing_ok=True)
    built = build()
    try:
        save_torch(path, built)
    except OSError as exc:
        log.warning("could not keep the %s data in %s (%s); they are %s again next time", verb, path,
                    exc.strerror or exc, verb)
    return built


def _torchvision(cls: type, cfg: DatasetConfig, expected: str) -> tuple:
    root = Path(cfg.root).expanduser()
    try:
        return cls(str(root), train=True, download=cfg.download), cls(str(root), train=False,
                                                                          download=cfg.download)
    except RuntimeError as exc:
        hint = "set dataset.root to the folder that holds it" + (
            "" if cfg.download else ", or dataset.download=true where the internet is reachable")
        if (root / expected).exists():  # present but damaged (truncated file, failed checksum)
            raise DataError(f"dataset '{cfg.name}' under {root} is incomplete or corrupt "
                            f"({first_line(exc, 160)}); replace {root / expected}") from exc
        raise DataError(f"dataset '{cfg.name}' not found: expected {root / expected}; {hint}") from exc
    except OSError as exc:  # download attempted without network
        raise DataError(f"dataset '{cfg.name}': download into {root} failed ({exc})") from exc
    except Exception as exc:  # a damaged file that the torchvision reader chokes on (pickle, EOF, shape)
        raise DataError(f"dataset '{cfg.name}' under {root} cannot be read ({type(exc).__name__}: "
                        f"{first_line(exc, 160)}); replace {root / expected}") from exc


def load_torchvision_mnist(cfg: DatasetConfig) -> Arrays:
    from torchvision import datasets

    if cfg.name == "mnist":
        cls, folder, mean, std = datasets.MNIST, "MNIST/raw/train-images-idx3-ubyte", [0.1307], [0.3081]
    else:
        cls, folder, mean, std = datasets.FashionMNIST, "FashionMNIST/raw/train-images-idx3-ubyte", [0.2860], [0.3530]
    train, test = _torchvision(cls, cfg, folder)
    return Arrays(train.data.unsqueeze(1), train.targets, test.data.unsqueeze(1), test.targets, 10, mean, std)


def load_cifar(cfg: DatasetConfig) -> Arrays:
    from torchvision import datasets

    if cfg.name == "cifar10":
        cls, folder, classes = datasets.CIFAR10, "cifar-10-batches-py", 10
        mean, std = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
    else:
        cls, folder, classes = datasets.CIFAR100, "cifar-100-python", 100
        mean, std = [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]
    train, test = _torchvision(cls, cfg, folder)
    images = lambda d: torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    # torchvision checks every batch file against its published MD5 when it loads them: those name the data
    published = [md5 for _, md5 in (*cls.train_list, *cls.test_list)]
    identity = f"torchvision-{cfg.name}-md5:" + hashlib.sha256(",".join(published).encode()).hexdigest()
    return Arrays(images(train), torch.tensor(train.targets), images(test), torch.tensor(test.targets),
                  classes, mean, std, identity)


def load_fake(cfg: DatasetConfig) -> Arrays:
    """Synthetic data with learnable signal (a fixed template per class plus noise), for tests."""
    shape = tuple(cfg.shape) or (3, 8, 8)
    classes = cfg.num_classes or 10
    templates = torch.randn(classes, *shape, generator=generator(0, "fake", "templates"))

    def split(size: int, key: str) -> tuple[Tensor, Tensor]:
        gen = generator(0, "fake", key)
        y = torch.randint(0, classes, (size,), generator=gen)
        x = templates[y] + torch.randn(size, *shape, generator=gen)
        return x, y

    train_x, train_y = split(cfg.train_size or 512, "train")
    test_x, test_y = split(cfg.test_size or 256, "test")
    return Arrays(train_x, train_y, test_x, test_y, classes)


# -- image folders (also .tar / .tar.gz archives of one) ---------------------------------------------------
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp"}


def _split_of(rel: Path) -> tuple[str, str] | None:
    """('train'|'test', class) for a path ending in <split>/<class>/<file>, else None."""
    if rel.suffix.lower() not in IMAGE_SUFFIXES or len(rel.parts) < 3:
        return None
    split, label = rel.parts[-3], rel.parts[-2]
    return (split, label) if split in ("train", "test") else None


def _iter_images(root: Path) -> Iterator[tuple[str, str, str, bytes]]:
    """(split, class, file name, encoded bytes) from a folder or a tar archive, in sorted order."""
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and _split_of(p.relative_to(root)))
        for path in files:
            split, label = _split_of(path.relative_to(root))  # type: ignore[misc]
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise DataError(f"dataset 'imagefolder': cannot read {path} ({exc.strerror or exc})") from exc
            yield split, label, str(path), data
        return
    try:
        with tarfile.open(root) as archive:
            members = sorted((m for m in archive.getmembers() if m.isfile() and _split_of(Path(m.name))),
                             key=lambda m: m.name)
            for member in members:
                split, label = _split_of(Path(member.name))  # type: ignore[misc]
                handle = archive.extractfile(member)
                assert handle is not None
                yield split, label, f"{root}:{member.name}", handle.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:  # not a tar, or a truncated one
        reason = "not a tar archive" if isinstance(exc, tarfile.ReadError) else first_line(exc, 160)
        raise DataError(f"dataset 'imagefolder': {root} is not a readable folder or tar archive "
                        f"({reason})") from exc


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """libpng and libjpeg print their complaints straight to file descriptor 2; a damaged image is reported
    by our own DataError (one line), so their lines are kept off the terminal while a folder is decoded."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable descriptor 2
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _fingerprint(root: Path) -> str:
    """The key of a folder's decoded copy: every file's path, size, modification and change time and inode.
    The change time cannot be set back by hand (unlike the modification time, which `cp -p`, `rsync -t` or
    `touch -d` restore), so a rewritten image is always decoded again."""
    digest = hashlib.sha256(str(root.resolve()).encode())
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for path in files:
        st = path.stat()
        digest.update(f"{path.relative_to(root) if root.is_dir() else ''}:{st.st_size}:{st.st_mtime_ns}:"
                      f"{st.st_ctime_ns}:{st.st_ino}".encode())
    return digest.hexdigest()[:20]


def decode(name: str, data: bytes) -> Tensor:
    """An encoded image (JPEG, PNG, ...) as a uint8 RGB tensor (C, H, W), or a DataError naming `name`."""
    from torchvision.io import ImageReadMode, decode_image

    if not data:
        raise DataError(f"dataset 'imagefolder': cannot decode image {name} (empty file); remove or replace it")
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders, which we still prefer; PIL is the fallback
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except Exception:
        try:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as img:
                return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).contiguous()
        except Exception as exc:
            raise DataError(f"dataset 'imagefolder': cannot decode image {name} (not a readable image "
                            f"file); remove or replace it") from exc


def _decode_folder(root: Path) -> dict[str, Tensor]:
    images: dict[str, list[Tensor]] = {"train": [], "test": []}
    labels: dict[str, list[str]] = {"train": [], "test": []}
    shape = None
    for split, label, name, data in _iter_images(root):
        img = decode(name, data)
        if shape is None:
            shape = img.shape
        elif img.shape != shape:
            raise DataError(f"dataset 'imagefolder': {name} has shape {tuple(img.shape)}, others {tuple(shape)}; "
                            f"all images must have the same size")
        images[split].append(img)
        labels[split].append(label)
    for split in ("train", "test"):
        if not images[split]:
            raise DataError(f"dataset 'imagefolder': no images under {root}/{split}/<class>/ "
                            f"(expected root/train/<class>/*.jpg and root/test/<class>/*.jpg)")
    classes = sorted(set(labels["train"]))
    missing = sorted(set(classes) - set(labels["test"]))
    extra = sorted(set(labels["test"]) - set(classes))
    if missing or extra:
        raise DataError(f"dataset 'imagefolder': train and test class folders differ under {root} "
                        f"(test lacks {missing or 'none'}, test has extra {extra or 'none'})")
    index = {c: i for i, c in enumerate(classes)}
    out = {"classes": classes}
    for split in ("train", "test"):
        out[f"{split}_x"] = torch.stack(images[split])
        out[f"{split}_y"] = torch.tensor([index[c] for c in labels[split]])
    return out


def _decode_quietly(root: Path) -> dict[str, Any]:
    with _native_stderr_silenced():
        return _decode_folder(root)


def load_imagefolder(cfg: DatasetConfig) -> Arrays:
    """root/train/<class>/* and root/test/<class>/* (root may also be a .tar or .tar.gz of such a folder,
    at any depth). Decoded once to uint8 tensors and cached under `ltsearch.paths.cache_root()`. The test
    split is held in a fixed random order (`common.mixed_order`), not class by class."""
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise DataError(f"dataset 'imagefolder': {root} does not exist (set dataset.root to a folder with "
                        f"train/<class>/ and test/<class>/, or to a .tar.gz of one)")
    decoded = _kept(cache_root() / f"imagefolder-{_fingerprint(root)}.pt", lambda: _decode_quietly(root), "decoded")
    train_x = decoded["train_x"]
    mean, std = (None, None) if cfg.mean else channel_stats(train_x)
    order = mixed_order(decoded["test_y"].shape[0])  # class folders list one class after another
    return Arrays(train_x, decoded["train_y"], decoded["test_x"][order], decoded["test_y"][order],
                  len(decoded["classes"]), mean, std)


def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W) in [0, 1] units, in chunks (float64 sums),
    so that a dataset is never copied as a whole to float."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, images.shape[0], chunk):
        part = images[start: start + chunk].to(torch.float64) / 255
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = (squares / n - mean.square()).clamp_min(0).sqrt() * math.sqrt(n / max(n - 1, 1))
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel: centre it, do not divide by 0
    return mean.tolist(), std.tolist()
