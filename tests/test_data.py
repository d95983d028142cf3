"""Datasets: MNIST-1D, torchvision MNIST (real files) and missing-data errors, image folders and archives,
fake data, subsets, augmentation on the device, seeded samples."""

from __future__ import annotations

import tarfile
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ltsearch.data import Data, build_data
from ltsearch.data.augment import augment_batch, random_crop, random_flip
from ltsearch.data.prefetch import prefetched
from ltsearch.errors import DataError
from tests.conftest import make_config


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LTSEARCH_CACHE", str(cache))
    return cache


def data_of(*overrides: str) -> Data:
    return build_data(make_config(*overrides).dataset)


# -- MNIST-1D and torchvision datasets ----------------------------------------------------------------------
def test_mnist1d_is_the_default_dataset():
    cfg = make_config()
    assert cfg.dataset.name == "mnist1d"
    data = build_data(cfg.dataset)
    assert data.train_x.shape == (4000, 1, 40) and data.test_x.shape == (1000, 1, 40)
    assert data.train_x.dtype == torch.float32
    assert data.num_classes == 10 and data.input_shape == (1, 40)
    assert sorted(data.train_y.unique().tolist()) == list(range(10))
    assert data.train_y.dtype == torch.int64


def test_mnist1d_is_generated_once_and_kept(isolated_cache, monkeypatch):
    import ltsearch.data.sources as sources

    first = data_of()
    kept = list(isolated_cache.glob("mnist1d-*.pt"))
    assert len(kept) == 1

    def no_generation(*args, **kwargs):
        raise AssertionError("generated again despite the kept copy")

    import mnist1d.data

    with monkeypatch.context() as patch:
        patch.setattr(mnist1d.data, "make_dataset", no_generation)
        second = data_of()
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    # a damaged copy is generated again (and replaced), never loaded
    kept[0].write_bytes(kept[0].read_bytes()[:1000])
    third = data_of()
    assert torch.equal(third.train_x, first.train_x)
    assert sources.load_torch(kept[0])["train_x"].shape == (4000, 1, 40)


def test_real_mnist_loads(mnist_root):
    data = data_of("dataset=mnist", f"dataset.root={mnist_root}")
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.train_x.dtype == torch.uint8 and data.num_classes == 10
    assert sorted(data.test_y.unique().tolist()) == list(range(10))
    x = data.prepare(data.train_x[:1000])
    assert x.dtype == torch.float32
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1  # normalised with MNIST's mean/std
    # the experiment preset composes with it
    cfg = make_config("experiment=lenet_mnist", f"dataset.root={mnist_root}")
    assert cfg.dataset.name == "mnist" and cfg.model.hidden == [300, 100]


@pytest.mark.parametrize("name, expected", [
    ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
    ("fashion_mnist", "FashionMNIST/raw/train-images-idx3-ubyte"),
    ("cifar10", "cifar-10-batches-py"),
    ("cifar100", "cifar-100-python"),
])
def test_missing_torchvision_dataset_says_where_it_is_expected(tmp_path, name, expected):
    root = tmp_path / "nothing-here"
    with pytest.raises(DataError) as err:
        data_of(f"dataset={name}", f"dataset.root={root}")
    message = str(err.value)
    assert str(root / expected) in message
    assert "dataset.root" in message and "\n" not in message


# -- image folders -----------------------------------------------------------------------------------------
CLASSES = ["dog", "ant", "cat"]  # sorted: ant=0, cat=1, dog=2


def color(cls: str, i: int) -> tuple[int, int, int]:
    return (10 + 80 * CLASSES.index(cls), 7 * i, 200 - i)


def write_image(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (6, 5), fmt: str = "PNG",
                mode: str = "RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, rgb)
    img.putpixel((0, 0), (255, 255, 255))  # a marker: decoded orientation is checked too
    img.convert(mode).save(path, format=fmt)


def make_folder(root: Path, train: int = 3, test: int = 2) -> Path:
    for cls in CLASSES:
        for i in range(train):
            write_image(root / "train" / cls / f"{i:03d}.png", color(cls, i))
        for i in range(test):
            write_image(root / "test" / cls / f"{i:03d}.png", color(cls, 10 + i))
    return root


def make_tar(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="tiny")  # nested one level down, as cifar10-jpeg.tar.gz is
    return archive


def check_tiny(data: Data, train: int = 3, test: int = 2) -> None:
    assert data.num_classes == 3
    assert data.train_x.shape == (3 * train, 3, 5, 6) and data.test_x.shape == (3 * test, 3, 5, 6)
    assert data.train_x.dtype == torch.uint8
    assert data.train_y.tolist() == [0] * train + [1] * train + [2] * train  # sorted class order
    for j in range(data.train_x.shape[0]):
        cls, i = sorted(CLASSES)[int(data.train_y[j])], j % train
        assert data.train_x[j, :, 2, 3].tolist() == list(color(cls, i)), ("train", j)
    # the test split in a fixed random order (common.mixed_order), every image once, with its own label
    assert data.test_y.tolist() != sorted(data.test_y.tolist())
    seen = set()
    for j in range(data.test_x.shape[0]):
        cls = sorted(CLASSES)[int(data.test_y[j])]
        (i,) = [i for i in range(10, 10 + test) if data.test_x[j, :, 2, 3].tolist() == list(color(cls, i))]
        seen.add((cls, i))
    assert len(seen) == 3 * test
    assert all(x[:, 0, 0].tolist() == [255, 255, 255] for x in (*data.train_x, *data.test_x))


def test_imagefolder_decodes_with_sorted_labels_and_caches(tmp_path, isolated_cache, monkeypatch):
    root = make_folder(tmp_path / "tiny")
    data = data_of("dataset=imagefolder", f"dataset.root={root}")
    check_tiny(data)
    cached = list(isolated_cache.glob("imagefolder-*.pt"))
    assert len(cached) == 1
    # mean/std come from the training images
    assert data.mean is not None and data.mean.shape == (3,)
    torch.testing.assert_close(data.mean, data.train_x.float().mean(dim=(0, 2, 3)) / 255)
    # the second load reads the cache and decodes nothing
    import ltsearch.data.sources as sources

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(sources, "_decode_folder", no_decoding)
    check_tiny(data_of("dataset=imagefolder", f"dataset.root={root}"))
    # a changed folder is decoded afresh
    monkeypatch.undo()
    monkeypatch.setenv("LTSEARCH_CACHE", str(isolated_cache))
    write_image(root / "train" / "ant" / "099.png", (1, 2, 3))
    assert data_of("dataset=imagefolder", f"dataset.root={root}").train_x.shape[0] == 10
    assert len(list(isolated_cache.glob("imagefolder-*.pt"))) == 2


def test_imagefolder_from_a_tar_gz(tmp_path, isolated_cache):
    archive = make_tar(make_folder(tmp_path / "tiny"), tmp_path / "tiny.tar.gz")
    data = data_of("dataset=imagefolder", f"dataset.root={archive}", "dataset.mean=[0.5,0.5,0.5]",
                   "dataset.std=[0.25,0.25,0.25]")
    check_tiny(data)
    assert data.mean.tolist() == [0.5, 0.5, 0.5]  # given values win over the computed ones
    assert len(list(isolated_cache.glob("imagefolder-*.pt"))) == 1


def test_imagefolder_jpeg_and_grayscale_decode_to_rgb(tmp_path):
    root = tmp_path / "mixed"
    for split in ("train", "test"):
        write_image(root / split / "a" / "0.jpg", (120, 60, 30), fmt="JPEG")
        write_image(root / split / "b" / "0.png", (90, 90, 90), mode="L")
    data = data_of("dataset=imagefolder", f"dataset.root={root}")
    assert data.train_x.shape == (2, 3, 5, 6)
    assert (data.train_x[0, :, 3, 3].int() - torch.tensor([120, 60, 30])).abs().max() <= 8  # lossy
    assert data.train_x[1, :, 3, 3].tolist() == [90, 90, 90]


def test_imagefolder_errors(tmp_path):
    # a class without test images
    root = make_folder(tmp_path / "a")
    for f in (root / "test" / "cat").iterdir():
        f.unlink()
    (root / "test" / "cat").rmdir()
    with pytest.raises(DataError, match=r"test lacks \['cat'\]"):
        data_of("dataset=imagefolder", f"dataset.root={root}")
    # an unreadable image
    root = make_folder(tmp_path / "b")
    (root / "train" / "dog" / "bad.png").write_bytes(b"this is not an image")
    with pytest.raises(DataError, match="cannot decode image .*bad.png"):
        data_of("dataset=imagefolder", f"dataset.root={root}")
    # mismatched sizes
    root = make_folder(tmp_path / "c")
    write_image(root / "test" / "ant" / "big.png", (1, 2, 3), size=(7, 5))
    with pytest.raises(DataError, match="big.png has shape .*same size"):
        data_of("dataset=imagefolder", f"dataset.root={root}")
    # no test split, missing root, a file that is not an archive
    root = tmp_path / "d"
    write_image(root / "train" / "x" / "0.png", (1, 2, 3))
    with pytest.raises(DataError, match="no images under .*test"):
        data_of("dataset=imagefolder", f"dataset.root={root}")
    with pytest.raises(DataError, match="does not exist"):
        data_of("dataset=imagefolder", f"dataset.root={tmp_path / 'missing'}")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable folder or tar archive"):
        data_of("dataset=imagefolder", f"dataset.root={junk}")


# -- fake data, subsets --------------------------------------------------------------------------------------
def test_fake_data_shape_classes_and_determinism():
    a = data_of("dataset=fake", "dataset.shape=[2,5,5]", "dataset.num_classes=4", "dataset.train_size=40",
                "dataset.test_size=12")
    assert a.train_x.shape == (40, 2, 5, 5) and a.test_x.shape == (12, 2, 5, 5) and a.num_classes == 4
    assert set(a.train_y.tolist()) <= {0, 1, 2, 3}
    b = data_of("dataset=fake", "dataset.shape=[2,5,5]", "dataset.num_classes=4", "dataset.train_size=40",
                "dataset.test_size=12")
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert data_of("dataset=fake", "dataset.shape=[1,40]").input_shape == (1, 40)


def test_train_and_test_subsets():
    full = data_of("dataset=fake", "dataset.train_size=300", "dataset.test_size=100")
    sub = data_of("dataset=fake", "dataset.train_size=300", "dataset.test_size=100", "dataset.train_subset=50",
                  "dataset.test_subset=20")
    assert sub.train_x.shape[0] == 50 and sub.test_x.shape[0] == 20
    assert torch.equal(sub.test_x, full.test_x[:20])
    # a random, fixed subset of the training samples (kept in their original order)
    rows = [int((full.train_x.flatten(1) == x.flatten()).all(1).nonzero()) for x in sub.train_x]
    assert rows == sorted(rows) and rows != list(range(50))
    assert torch.equal(sub.train_y, full.train_y[rows])
    again = data_of("dataset=fake", "dataset.train_size=300", "dataset.test_size=100", "dataset.train_subset=50")
    assert torch.equal(again.train_x, sub.train_x)


# -- augmentation ------------------------------------------------------------------------------------------
def test_random_crop_is_a_window_of_the_reflect_padded_image():
    x = torch.randn(16, 3, 8, 8)
    out = random_crop(x, torch.Generator().manual_seed(0), padding=4)
    assert out.shape == x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    offsets = set()
    for i in range(x.shape[0]):
        hits = [(oy, ox) for oy in range(9) for ox in range(9)
                if torch.equal(out[i], padded[i, :, oy:oy + 8, ox:ox + 8])]
        assert hits, i
        offsets.add(hits[0])
    assert len(offsets) > 1  # offsets differ between samples


def test_flip_and_determinism():
    x = torch.randn(64, 3, 8, 8)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(out[i], x[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54
    a = augment_batch(x, "crop_flip", torch.Generator().manual_seed(1))
    b = augment_batch(x, "crop_flip", torch.Generator().manual_seed(1))
    c = augment_batch(x, "crop_flip", torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(augment_batch(x, "none", torch.Generator()), x)
    with pytest.raises(ValueError, match="image batches"):
        augment_batch(torch.randn(4, 1, 40), "flip", torch.Generator())


def test_train_batches_are_seeded_and_cover_the_epoch():
    data = data_of("dataset=fake", "dataset.shape=[3,8,8]", "dataset.train_size=100", "dataset.augment=crop_flip")
    assert data.augment == "crop_flip"
    batches = list(data.train_batches(32, torch.Generator().manual_seed(0)))
    assert [b[0].shape[0] for b in batches] == [32, 32, 32, 4]
    assert all(x.shape[1:] == (3, 8, 8) for x, _ in batches)
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(data.train_y.tolist())
    again = list(data.train_batches(32, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    other = list(data.train_batches(32, torch.Generator().manual_seed(1)))
    assert not torch.equal(batches[0][0], other[0][0])
    plain = list(data.train_batches(100, torch.Generator().manual_seed(0), augment=False))[0][0]
    assert sorted(plain.sum(dim=(1, 2, 3)).tolist()) == pytest.approx(
        sorted(data.prepare(data.train_x).sum(dim=(1, 2, 3)).tolist()), rel=1e-5)
    evals = list(data.eval_batches("test", 100, limit=150))
    assert sum(y.numel() for _, y in evals) == 150


# -- host prefetch (data kept in host memory while training on CUDA) ---------------------------------------
def test_prefetched_yields_in_order_computes_one_ahead_and_raises_where_it_failed():
    calls: list[int] = []
    workers: set[str] = set()

    def fn(i: int) -> int:
        calls.append(i)
        workers.add(threading.current_thread().name)
        if i == 3:
            raise RuntimeError("bad item 3")
        return i * i

    it = prefetched(range(6), fn)
    assert next(it) == 0 and next(it) == 1
    assert calls[:2] == [0, 1] and len(calls) <= 3  # at most one item ahead of the caller
    assert next(it) == 4
    with pytest.raises(RuntimeError, match="bad item 3"):
        next(it)
    assert all(name.startswith("ltsearch-prefetch") for name in workers)
    assert list(prefetched([], fn)) == []
    early = prefetched(range(100), lambda i: i)
    assert next(early) == 0
    early.close()  # stops the worker without computing the rest


def test_host_prefetch_gives_the_same_batches_and_augmentation(monkeypatch):
    data = data_of("dataset=fake", "dataset.shape=[3,8,8]", "dataset.train_size=100", "dataset.augment=crop_flip",
                   "dataset.mean=[0.1,0.2,0.3]", "dataset.std=[1.0,2.0,0.5]")
    staged = replace(data, host_prefetch=True)
    used: list[int] = []
    import ltsearch.data as data_module

    def spy(items, fn):
        used.append(len(items))
        return prefetched(items, fn)

    monkeypatch.setattr(data_module, "prefetched", spy)
    for batches in (lambda d: d.train_batches(32, torch.Generator().manual_seed(0)),
                    lambda d: d.eval_batches("test", 7)):
        plain, fetched = list(batches(data)), list(batches(staged))
        assert len(plain) == len(fetched) > 1
        for (xa, ya), (xb, yb) in zip(plain, fetched, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert used == [4, len(list(data.eval_batches("test", 7)))]


# -- seeded samples ----------------------------------------------------------------------------------------
def test_sample_per_class_composition():
    data = data_of("dataset=fake", "dataset.shape=[1,6]", "dataset.num_classes=5", "dataset.train_size=400")
    x, y = data.sample(7, 3, "search", per_class=True)
    assert x.shape == (35, 1, 6)
    assert torch.bincount(y, minlength=5).tolist() == [7] * 5
    assert len({tuple(row.tolist()) for row in x.flatten(1)}) == 35  # distinct samples
    assert len(set(y[:10].tolist())) > 1  # classes are interleaved, not sorted blocks
    # every sample is a real training sample with its own label
    for xi, yi in zip(x, y, strict=True):
        row = int((data.train_x.flatten(1) == xi.flatten()).all(1).nonzero())
        assert int(data.train_y[row]) == int(yi)
    x2, y2 = data.sample(7, 3, "search", per_class=True)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = data.sample(7, 3, "other", per_class=True)
    x4, _ = data.sample(7, 4, "search", per_class=True)
    assert not torch.equal(x, x3) and not torch.equal(x, x4)
    xs, ys = data.sample(50, 3, "plain")
    assert xs.shape == (50, 1, 6) and ys.shape == (50,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_on_the_gpu_equal_those_on_the_cpu():
    """Random draws come from the CPU generator, so augmentation on the device gives the CPU's batches."""
    data = data_of("dataset=fake", "dataset.shape=[3,8,8]", "dataset.train_size=100", "dataset.augment=crop_flip",
                   "dataset.mean=[0.1,0.2,0.3]", "dataset.std=[1.0,2.0,0.5]")
    cpu = list(data.train_batches(32, torch.Generator().manual_seed(0)))
    gpu = list(data.to("cuda").train_batches(32, torch.Generator().manual_seed(0)))
    for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
        assert xg.device.type == "cuda"
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-6)
        assert torch.equal(yg.cpu(), yc)
    xs, ys = data.to("cuda").sample(5, 0, "k", per_class=True)
    assert torch.equal(ys.cpu(), data.sample(5, 0, "k", per_class=True)[1])
