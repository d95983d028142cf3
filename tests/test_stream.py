"""Image folders read by DataLoader workers (`dataset=imagenet`, `dataset=tiny_imagenet`): both layouts, the
same batches whatever the workers and the storage, the epoch order reproduced after a resume, memory that
does not grow with the number of images, one clear message for a damaged image, whole runs through the CLI
(decoded in memory on one process, streamed on two: the same mask and accuracy)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ltsearch.config import Augment, DatasetConfig, ModelConfig, RuntimeConfig, TrainConfig
from ltsearch.data.folders import scan
from ltsearch.data.stream import load_image_folder
from ltsearch.errors import DataError
from ltsearch.models import build_model
from ltsearch.rundir import ArtifactDir
from ltsearch.runtime import Runtime
from ltsearch.seeding import generator
from ltsearch.training.trainer import Trainer
from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("bench_stream", REPO / "scripts" / "bench_stream.py")
bench_stream = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_stream)

SMALL = ["dataset=imagenet", "dataset.image_size=16", "dataset.resize_size=18", "model=mlp1d",
         "model.hidden=[16]", "train=tiny", "runtime.progress=false", "runtime.threads=1", "runtime.cache=false"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """2000 JPEGs of 64-112 pixels a side (1800 for training), ten classes, ImageNet layout."""
    return bench_stream.make_image_folder(tmp_path_factory.mktemp("jpegs") / "imagenet", 2000, sizes=(64, 112))


def dataset(root: Path, storage: str = "stream", workers: int = 0, **cfg) -> object:
    config = DatasetConfig(name="imagenet_folder", root=str(root), augment=Augment.resized_crop_flip, image_size=32,
                           resize_size=36, **cfg)
    return load_image_folder(config, RuntimeConfig(data_storage=storage, data_workers=workers))


def batches(data, epoch: int, size: int = 50) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(data.train_batches(size, generator(0, "test", epoch)))


def test_both_layouts_are_indexed_with_their_labels(tmp_path):
    for tiny in (False, True):
        root = bench_stream.make_image_folder(tmp_path / str(tiny), 60, classes=3, sizes=(8, 12), tiny_layout=tiny)
        classes, train, val = scan(root)
        assert classes == ["n00000000", "n00000001", "n00000002"]
        assert len(train) + len(val) == 60 and len(val) == 6
        for split in (train, val):  # the class is in every file name
            assert all(classes[label] in split.path(i) for i, label in enumerate(split.labels))


def test_batches_do_not_depend_on_workers_or_storage(folder):
    stream0 = dataset(folder, train_subset=300, test_subset=100)
    reference = batches(stream0, 0)
    assert reference[0][0].shape == (50, 3, 32, 32)
    for other in (dataset(folder, "stream", 2, train_subset=300, test_subset=100),
                  dataset(folder, "memory", 2, train_subset=300, test_subset=100)):
        got = batches(other, 0)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(reference, got, strict=True))
        evaluation = zip(stream0.eval_batches("test", 40), other.eval_batches("test", 40), strict=True)
        assert all(torch.equal(a[0], b[0]) for a, b in evaluation)
    # another epoch: another order and other crops
    assert not torch.equal(batches(stream0, 1)[0][1], reference[0][1])


def test_the_epoch_order_is_reproduced_after_a_resume(folder, tmp_path):
    data = dataset(folder, "stream", 2, train_subset=128, test_subset=32)
    runtime = Runtime.from_config(RuntimeConfig(device="cpu", progress=False))
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, momentum=0.9)

    def train(out: Path, end: int) -> dict[str, torch.Tensor]:
        model = build_model(ModelConfig(name="mlp", hidden=[16]), data.input_shape, data.num_classes, 0)
        Trainer(model=model, data=data, cfg=cfg, runtime=runtime, out=ArtifactDir(out).start(), seed=0,
                stream="retrain", start_epoch=0, end_epoch=end).fit()
        return model.state_dict()

    uninterrupted = train(tmp_path / "whole", 3)
    train(tmp_path / "resumed", 1)  # stops after epoch 1, as a killed run would
    resumed = train(tmp_path / "resumed", 3)  # a new trainer continues from the checkpoint
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)


# VmHWM: the peak resident memory of this process image (ru_maxrss would start from the RSS of the process
# that forked it)
PEAK = """
import re, sys, torch
sys.path.insert(0, {repo!r})
from tests.test_stream import dataset
torch.set_num_threads(1)
for n in (900, 1800):
    data = dataset({root!r}, {storage!r}, 0, train_subset=n)
    for _ in data.train_batches(64, torch.Generator().manual_seed(0)):
        pass
    del data
    print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
"""


def peaks_kib(root: Path) -> dict[str, list[int]]:
    """Per storage: the peak resident memory (KiB) of a fresh process after one epoch over 900 training
    images, then after one over 1800 (decoding in the process)."""
    procs = {storage: subprocess.Popen([sys.executable, "-c", PEAK.format(repo=str(REPO), root=str(root),
                                                                          storage=storage)],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for storage in ("stream", "memory")}
    peaks = {}
    for storage, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        peaks[storage] = [int(line) for line in out.split()]
    return peaks


def test_peak_memory_does_not_grow_with_the_number_of_images_when_streaming(folder):
    peaks = peaks_kib(folder)
    # decoded, 900 more images of about 88 x 88 pixels take about 20 MiB more: the measure sees that
    assert peaks["memory"][1] - peaks["memory"][0] > 12 * 1024, peaks
    # streamed, the dataset holds paths: the peak stays (within the noise of a process's peak)
    assert peaks["stream"][1] - peaks["stream"][0] < 6 * 1024, peaks


def test_a_damaged_image_stops_with_one_message_naming_it(folder, tmp_path):
    root = bench_stream.make_image_folder(tmp_path / "bad", 40, classes=2, sizes=(16, 20))
    victim = sorted((root / "train").rglob("*.JPEG"))[3]
    victim.write_bytes(b"not a jpeg")
    for storage, workers in (("stream", 0), ("stream", 2), ("auto", 0)):
        with pytest.raises(DataError, match=f"cannot decode image {victim} "):
            batches(dataset(root, storage, workers), 0, 8)
    with pytest.raises(DataError, match=f"cannot decode image {victim} "):
        dataset(root, "memory", 2)


@pytest.mark.distributed
def test_runs_through_the_cli_in_memory_on_one_process_and_streamed_on_two(folder, tmp_path):
    args = [*SMALL, f"dataset.root={folder}", "dataset.train_subset=200", "dataset.test_subset=60",
            "runtime.data_workers=1", "pruner=cts_kl", "pruner.ddp_lambda=global", "stages=[search,rewind,evaluate]"]
    procs = {name: subprocess.Popen([sys.executable, "-m", *launcher, "ltsearch", "run", *args, *extra,
                                     f"hydra.run.dir={tmp_path / name}"], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
             for name, launcher, extra in (
                 ("one", [], []),  # auto: the images fit, decoded once into memory
                 ("two", ["torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"],
                  ["runtime.data_storage=stream"]))}
    for proc in procs.values():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
    logs = {name: (tmp_path / name / "run.log").read_text() for name in procs}
    assert "200 training and 60 evaluation images in 10 classes" in logs["one"]
    assert "decoding them once into memory" in logs["one"] and "streaming them from disk" in logs["two"]
    masks = [torch.load(tmp_path / d / "search" / "mask.pt") for d in ("one", "two")]
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
    acc = [json.loads((tmp_path / d / "evaluate" / "results.json").read_text())["test_acc"] for d in ("one", "two")]
    assert acc[0] == pytest.approx(acc[1], abs=1e-9)
