"""Tickets that leave the tool: the compact ticket file (bit-identical round trip for every built-in model and
a torchvision `model=custom` network), the evaluate stage's file, `ltsearch export` to a ticket file, ONNX
(checked in onnxruntime) and a sparse program, `ltsearch.sparsify`, and every bad input of an export."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import ltsearch
import ltsearch.ticketfile as ticketfile
from ltsearch.config import config_container
from ltsearch.errors import ArtifactError, ConfigError
from ltsearch.masking import attach_masks, masks_of, plain_state_dict, prunable_weights
from ltsearch.models import build_model
from ltsearch.onnx_export import require_extra
from ltsearch.sparse import sparsify, traced
from tests.conftest import REPO, TINY, make_config

QUICK = [*TINY, "runtime.threads=1", "pruner=magnitude", "stages=[search,rewind,retrain,evaluate]"]


# -- helpers -------------------------------------------------------------------------------------------------------
def random_masks(model: nn.Module, exclude: list[str], density: float, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.rand(w.shape, generator=gen) < density for name, w in prunable_weights(model, exclude).items()}


def ticket_model(*overrides: str, shape: tuple[int, ...], density: float = 0.1) -> tuple[nn.Module, dict]:
    """A built-in model with random masks and BatchNorm statistics that are not the defaults."""
    cfg = make_config("dataset=fake", *overrides)
    model = build_model(cfg.model, shape, 10, seed=0)
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(generator=gen)
            module.running_var.uniform_(0.5, 2.0, generator=gen)
            module.num_batches_tracked.fill_(7)
    attach_masks(model, random_masks(model, list(cfg.model.exclude), density))
    meta = ticketfile.run_meta(config_container(cfg), weights="trained", label="random", input_shape=shape,
                               num_classes=10, mean=None, std=None, test_acc=None)
    return model.eval(), meta


def bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's raw bytes, for bit-for-bit comparisons (torch.equal calls -0.0 and 0.0 equal)."""
    return t.contiguous().view(-1).view(torch.uint8) if t.numel() else t


def rewrite_header(path: Path, change) -> None:
    """Edit a safetensors file's JSON header in place (`change(header)`), keeping the tensors' bytes."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size:])


def cli(*args: str) -> tuple[int, str, str]:
    from tests.test_bad_inputs import cli as run

    return run(*args)


# -- the file format --------------------------------------------------------------------------------------------
def test_masks_pack_to_one_bit_per_weight_in_little_bit_order():
    mask = torch.tensor([True, False, False, False, False, False, False, False, False, True, True])
    packed = ticketfile.pack_mask(mask)
    assert packed.tolist() == [0b00000001, 0b00000110]
    assert torch.equal(ticketfile.unpack_mask(packed, (11,)), mask)
    big = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0)) < 0.3
    assert torch.equal(ticketfile.unpack_mask(ticketfile.pack_mask(big), (3, 5, 7)), big)


# Every builder of the model registry, as small as its presets allow (VGG's widths are fixed).
MODELS = {
    "lenet300100": (("model=lenet300100",), (1, 28, 28)),
    "cnn1d": (("model=cnn1d", "model.width=8"), (1, 40)),
    "conv2": (("model=conv2",), (3, 8, 8)),
    "conv4": (("model=conv4",), (3, 8, 8)),
    "conv6": (("model=conv6",), (3, 8, 8)),
    "resnet20": (("model=resnet20", "model.width=4", "model.shortcut=conv3x3"), (3, 8, 8)),
    "resnet56": (("model=resnet56", "model.width=2"), (3, 8, 8)),
    "resnet18_cifar": (("model=resnet18", "model.width=4"), (3, 8, 8)),
    "vgg11": (("model=vgg11",), (3, 16, 16)),
    "resnet18_imagenet": (("model=resnet18_imagenet",), (3, 16, 16)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_is_bit_identical_for_every_built_in_model(name, tmp_path):
    overrides, shape = MODELS[name]
    model, meta = ticket_model(*overrides, shape=shape)
    state, masks = plain_state_dict(model), masks_of(model)
    path = tmp_path / "t.safetensors"
    size = ltsearch.save_ticket(model, None, path, meta)
    assert size == path.stat().st_size
    read = ltsearch.read_ticket_file(path)
    assert set(read.state_dict) == set(state) and set(read.masks) == set(masks)
    for key, value in state.items():
        expected = torch.where(masks[key], value, torch.zeros_like(value)) if key in masks else value
        assert read.state_dict[key].dtype == value.dtype and bits(read.state_dict[key]).equal(bits(expected)), key
    assert all(torch.equal(read.masks[k], masks[k]) for k in masks)
    assert read.meta["density"]["kept"] == sum(int(m.sum()) for m in masks.values())
    # the network rebuilt from the header alone computes what the original computes
    net = ltsearch.load_ticket(path).eval()
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(net(x), model(x))
    assert all(torch.equal(a, b) for a, b in zip(masks_of(net).values(), masks.values(), strict=True))
    # the size: the header, then one bit per masked weight, 4 bytes per kept one and the other tensors whole
    payload = sum((m.numel() + 7) // 8 + 4 * int(m.sum()) for m in masks.values()) \
        + sum(v.numel() * v.element_size() for k, v in state.items() if k not in masks)
    assert size == 8 + int.from_bytes(path.read_bytes()[:8], "little") + payload


def test_a_torchvision_custom_network_round_trips_but_is_never_built_from_the_file(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    model, meta = ticket_model("model=custom", "model._target_=torchvision.models.mobilenet_v3_small",
                               shape=(3, 32, 32))
    path = tmp_path / "mobilenet.safetensors"
    ltsearch.save_ticket(model, None, path, meta)
    with pytest.raises(ConfigError, match="never imports and calls a constructor named by a file"):
        ltsearch.load_ticket(path)
    net = ltsearch.load_ticket(path, torchvision.models.mobilenet_v3_small(num_classes=10)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), model(x))
    state = plain_state_dict(net)
    assert all(bits(state[k]).equal(bits(v)) for k, v in plain_state_dict(model).items() if k not in masks_of(net))
    fast = sparsify(net, x, force="csr")  # grouped (depthwise) convolutions stay dense
    assert any(c.note.startswith("no sparse form") for c in fast.sparse_plan)
    with torch.no_grad():
        assert (fast(x) - net(x)).abs().max() < 1e-5


def test_a_model_that_does_not_match_the_file_is_refused(tmp_path):
    model, meta = ticket_model(*MODELS["lenet300100"][0], shape=(1, 28, 28))
    path = tmp_path / "t.safetensors"
    ltsearch.save_ticket(model, None, path, meta)
    other = build_model(make_config("dataset=fake", "model=lenet300100", "model.hidden=[300,50]").model,
                        (1, 28, 28), 10, seed=0)
    with pytest.raises(ConfigError, match=r"does not fit this model: .*hidden.1.weight is \[100, 300\] in the file, "
                                          r"\[50, 300\] in the model"):
        ltsearch.load_ticket(path, other)
    with pytest.raises(ConfigError, match="the model has no hidden.0.bias, .*; the file has no 0.bias, 0.weight"):
        ltsearch.load_ticket(path, nn.Sequential(nn.Linear(784, 10)))


def test_find_tickets_ticket_saves_and_loads_into_the_users_model(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(128, 20)
    y = (x[:, :2] > 0).long() @ torch.tensor([1, 2])  # four classes
    ticket = ltsearch.find_ticket(model, (x, y), sparsity=0.8, method="magnitude", overrides=["runtime.threads=1"])
    path = tmp_path / "mine.safetensors"
    ticket.save(path)
    fresh = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4))
    net = ltsearch.load_ticket(path, fresh)
    assert all(torch.equal(masks_of(net)[k], ticket.masks[k]) for k in ticket.masks)
    assert torch.equal(net[0].weight, model[0].weight * ticket.masks["0.weight"])  # the weights it was found at
    assert ltsearch.read_ticket_file(path).meta["method"] == "magnitude"
    with pytest.raises(ConfigError, match="records no ltsearch model config"):
        ltsearch.load_ticket(path)


# -- a finished run ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("export") / "run"
    results = ltsearch.run(*QUICK, run_dir=run_dir)
    return run_dir, results


def test_the_evaluate_stage_writes_the_ticket_file_beside_the_results(finished):
    run_dir, results = finished
    path = run_dir / "evaluate" / "ticket.safetensors"
    marker = json.loads((run_dir / "evaluate" / "DONE.json").read_text())
    assert "ticket.safetensors" in marker["artifacts"]
    assert results["ticket_file"] == {"file": "ticket.safetensors", "bytes": path.stat().st_size,
                                      "dense_bytes": results["ticket_file"]["dense_bytes"], "weights": "trained"}
    read = ltsearch.read_ticket_file(path)
    assert read.meta["test_acc"] == results["test_acc"] and read.meta["weights"] == "trained"
    assert read.meta["input"]["shape"] == [3, 8, 8] and read.meta["num_classes"] == 10
    record = json.loads((run_dir / "run.json").read_text())
    assert read.meta["model"] == record["config"]["model"]  # the recorded dict, whatever fields it has
    assert read.meta["config_sha256"] == ticketfile.config_sha256(record["config"])
    from_file = ltsearch.load_ticket(path)
    from_run = ltsearch.load_ticket(run_dir, weights="trained")
    assert all(torch.equal(a, b) for a, b in zip(plain_state_dict(from_file).values(),
                                                 plain_state_dict(from_run).values(), strict=True))
    with pytest.raises(ConfigError, match="holds the trained weights, not weights='ticket'"):
        ltsearch.load_ticket(path, weights="ticket")


def test_export_writes_the_same_file_and_the_ticket_weights(finished):
    run_dir, _ = finished
    rc, out, err = cli("export", str(run_dir))
    assert rc == 0, err
    written = run_dir / "export" / "ticket_trained.safetensors"
    assert f"wrote {written}" in out and "of the dense state_dict" in out
    assert written.read_bytes() == (run_dir / "evaluate" / "ticket.safetensors").read_bytes()
    rc, out, err = cli("export", str(run_dir), "--weights", "ticket", "--out", str(run_dir.parent / "t.safetensors"))
    assert rc == 0, err
    net = ltsearch.load_ticket(run_dir.parent / "t.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(plain_state_dict(net).values(),
                                                 plain_state_dict(ltsearch.load_ticket(run_dir)).values(), strict=True))


def test_onnx_export_runs_in_onnxruntime_with_the_same_accuracy(finished):
    import onnx

    from ltsearch.onnx_export import session

    run_dir, results = finished
    rc, out, err = cli("export", str(run_dir), "--format", "onnx", "--check-samples", "-1")
    assert rc == 0, err
    assert f"accuracy {results['test_acc']:.4f} (PyTorch {results['test_acc']:.4f})" in out
    path = run_dir / "export" / "ticket_trained.onnx"
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 18
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["ltsearch.input"])["shape"] == [3, 8, 8]
    # our own check: every test sample, outputs within 1e-4 of PyTorch's, the accuracy of results.json
    net = ltsearch.load_ticket(run_dir, weights="trained").eval()
    from ltsearch.data import build_data

    data = build_data(make_config(*TINY).dataset)
    x = data.prepare(data.test_x)
    with torch.no_grad():
        expected = net(x)
    got = torch.from_numpy(session(path.read_bytes()).run(["logits"], {"input": x.numpy()})[0])
    assert (got - expected).abs().max() < 1e-4
    assert float((got.argmax(1) == data.test_y).float().mean()) == pytest.approx(results["test_acc"])
    # the zeros are in place: the first layer's initializer holds exactly the kept weights
    from onnx import numpy_helper

    first = net.hidden[0].weight.detach()
    arrays = [torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer]
    match = [a for a in arrays if a.shape in (first.shape, first.t().shape)]
    assert any(int((a != 0).sum()) == int((first != 0).sum()) for a in match)


def test_a_ticket_file_exports_to_onnx_and_to_a_sparse_program(finished, tmp_path):
    run_dir, _ = finished
    source = tmp_path / "ticket.safetensors"
    source.write_bytes((run_dir / "evaluate" / "ticket.safetensors").read_bytes())
    rc, out, err = cli("export", str(source), "--format", "sparse", "--batch", "4")
    assert rc == 0, err
    program_path = tmp_path / "ticket.sparse.pt"
    assert f"wrote {program_path}" in out and "hidden.0" in out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated; torch.export takes no CSR
        program = torch.jit.load(str(program_path))
    net = ltsearch.load_ticket(source).eval()
    x = torch.randn(7, 3, 8, 8)
    with torch.no_grad():
        assert (program(x) - net(x)).abs().max() < 1e-5  # another batch size than the one it was timed at
    rc, out, err = cli("export", str(source), "--format", "onnx", "--check-samples", "64")
    assert rc == 0, err
    assert (tmp_path / "ticket.onnx").is_file() and "onnxruntime on 64 test samples" in out


# -- sparse inference ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lenet300100", "cnn1d", "resnet20"])
@pytest.mark.parametrize("force", ["csr", "bsr", None])
def test_sparse_layers_compute_the_masked_dense_outputs(name, force):
    overrides, shape = MODELS[name]
    model, _ = ticket_model(*overrides, shape=shape, density=0.05)
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(3))
    fast = sparsify(model, x, force=force, budget=0.002)
    assert {c.name for c in fast.sparse_plan} >= {n.removesuffix(".weight") for n in masks_of(model)}
    if force == "csr":
        assert all(c.kernel == "csr" for c in fast.sparse_plan if c.density <= 0.5)
    with torch.no_grad():
        assert (fast(x) - model(x)).abs().max() < 1e-5
        assert (fast(x[:1]) - model(x[:1])).abs().max() < 1e-5
        program = traced(fast, x)
        assert (program(x[:2]) - model(x[:2])).abs().max() < 1e-5
    assert masks_of(model)  # the model itself keeps its masks


def test_a_layer_with_every_weight_pruned_gives_its_bias():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
    x = torch.randn(2, 3, 5, 5)
    fast = sparsify(nn.Sequential(conv), x, force="csr")
    assert fast.sparse_plan[0].kernel == "csr"
    with torch.no_grad():
        assert torch.allclose(fast(x), conv(x))


# -- bad input -------------------------------------------------------------------------------------------------------
def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_export_of_an_unfinished_run_says_which_stage(tmp_path):
    run_dir = tmp_path / "run"
    ltsearch.run(*TINY, "runtime.threads=1", "pruner=magnitude", "stages=[search,rewind]", run_dir=run_dir)
    rc, _, err = cli("export", str(run_dir))
    assert rc != 0 and "stage retrain is not complete" in _one_line(err)
    assert not (run_dir / "export").exists()
    rc, _, err = cli("export", str(run_dir), "--weights", "ticket")  # the ticket is there
    assert rc == 0, err


@pytest.mark.parametrize("args, message", [
    (("--format", "pt"), "unknown format 'pt' (formats: safetensors, onnx, sparse)"),
    (("--weights", "final"), "weights='final': choose 'ticket' or 'trained'"),
    (("--batch", "0"), "--batch must be >= 1, got 0"),
])
def test_export_arguments(finished, args, message):
    run_dir, _ = finished
    rc, _, err = cli("export", str(run_dir), *args)
    assert rc != 0 and message in _one_line(err)


@pytest.fixture
def ticket_path(finished, tmp_path) -> Path:
    path = tmp_path / "ticket.safetensors"
    path.write_bytes((finished[0] / "evaluate" / "ticket.safetensors").read_bytes())
    return path


def _refused(path: Path, message: str) -> None:
    with pytest.raises(ArtifactError, match=re.escape(message)):
        ltsearch.load_ticket(path)
    out = path.with_suffix(".onnx")
    rc, _, err = cli("export", str(path), "--format", "onnx", "--out", str(out))
    assert rc != 0 and message in _one_line(err)
    assert not out.exists() and [p.name for p in path.parent.iterdir()] == [path.name]  # nothing left behind


def test_a_truncated_ticket_file(ticket_path):
    data = ticket_path.read_bytes()
    ticket_path.write_bytes(data[: len(data) - 100])
    _refused(ticket_path, "is truncated: its tensors need")
    ticket_path.write_bytes(data[:20])
    _refused(ticket_path, "is truncated: its header needs")


def test_a_tampered_ticket_file(ticket_path):
    data = bytearray(ticket_path.read_bytes())
    data[-3] ^= 0x10  # a bit of a kept value
    ticket_path.write_bytes(bytes(data))
    _refused(ticket_path, "payload does not match the checksum it was written with")


def test_a_ticket_file_whose_header_was_edited(ticket_path):
    def better(header):
        info = json.loads(header["__metadata__"]["ltsearch"])
        info["meta"]["test_acc"] = 0.999
        header["__metadata__"]["ltsearch"] = json.dumps(info)

    rewrite_header(ticket_path, better)
    _refused(ticket_path, "payload does not match the checksum")


def test_a_ticket_file_of_a_newer_format_version(ticket_path):
    def newer(header):
        info = json.loads(header["__metadata__"]["ltsearch"])
        info["format_version"] = 2
        header["__metadata__"]["ltsearch"] = json.dumps(info)

    rewrite_header(ticket_path, newer)
    _refused(ticket_path, f"was written by a newer ltsearch (ticket format version 2; this ltsearch "
                          f"{ltsearch.__version__} reads version 1 and older): upgrade ltsearch (pip install -U ltsearch)")


class Planted:
    """What a planted pickle would run when unpickled: it writes a file."""

    def __reduce__(self):
        return (Path.write_text, (Path(os.environ["PLANTED_MARKER"]), "unpickled"))


def test_a_pickle_named_like_a_ticket_file_is_never_unpickled(tmp_path, monkeypatch):
    marker = tmp_path / "marker.txt"
    monkeypatch.setenv("PLANTED_MARKER", str(marker))
    folder = tmp_path / "files"
    folder.mkdir()
    path = folder / "ticket.safetensors"
    torch.save({"state_dict": Planted()}, path)
    _refused(path, "is not a safetensors file")
    path.write_bytes(pickle.dumps(Planted()))
    _refused(path, "is not a safetensors file")
    assert not marker.exists()


def test_out_is_a_folder(finished, tmp_path):
    rc, _, err = cli("export", str(finished[0]), "--out", str(tmp_path))
    assert rc != 0 and "is a folder; name the file to write" in _one_line(err)


def test_a_missing_extra_names_the_pip_command(monkeypatch):
    import ltsearch.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "missing_packages", lambda: ["onnxruntime"])
    with pytest.raises(ConfigError, match=r"needs the onnxruntime package, which is not installed: "
                                          r"pip install 'ltsearch\[export\]'"):
        require_extra()


def test_an_output_in_a_read_only_folder_leaves_nothing(finished, tmp_path):
    from tests import faults

    if not faults.can_sandbox():
        pytest.skip("this machine allows no unprivileged mount namespace (unshare -Urm)")
    folder = tmp_path / "readonly"
    folder.mkdir()
    out = folder / "t.onnx"
    cmd, env = faults.sandboxed([sys.executable, "-m", "ltsearch", "export", str(finished[0]), "--format", "onnx",
                                 "--out", str(out)], [folder])
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"cannot write {out}: {folder} is on a read-only file system" in _one_line(proc.stderr)
    assert not list(folder.iterdir())
