"""The Python API: find_ticket on a user's model and data (tensors, Dataset, DataLoader, a torchvision
network), apply_masks, load_ticket / load_masks of a finished run, run / resume of a configured pipeline,
callbacks, and the lazy package exports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ltsearch
from ltsearch.errors import ArtifactError, ConfigError, DataError
from ltsearch.masking import keep_count, masks_of
from ltsearch.training.loop import Callback
from tests.conftest import REPO, TINY

QUICK = ["runtime.progress=false", "runtime.threads=1"]


def toy_data(n: int = 256, features: int = 20, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=gen)
    return x, (x[:, :2] > 0).long() @ torch.tensor([1, 2])  # four classes from the signs of two inputs


def toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_find_ticket_with_cts_on_tensors_leaves_the_model_alone():
    model, data = toy_model(), toy_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ticket = ltsearch.find_ticket(model, data, sparsity=0.8, method="cts_kl",
                                  overrides=["pruner.epochs=2", *QUICK], exclude=["2.weight"])
    assert set(ticket.masks) == {"0.weight"}  # the excluded output layer gets no mask
    assert ticket.kept == keep_count(0.2, 20 * 32) and ticket.total == 20 * 32
    assert ticket.method == "cts_kl" and ticket.info["objective"] == "reverse_kl"
    assert set(ticket.scores) == {"0.weight"} and len(ticket.info["history"]) == 2
    assert ticket.layers()["0.weight"]["kept"] == ticket.kept
    assert _same(model.state_dict(), before) and not masks_of(model)
    again = ltsearch.find_ticket(model, data, sparsity=0.8, method="cts_kl",
                                 overrides=["pruner.epochs=2", *QUICK], exclude=["2.weight"])
    assert _same(ticket.masks, again.masks)  # seeded: same call, same mask


def test_dataset_and_dataloader_give_the_same_ticket_as_tensors():
    model, (x, y) = toy_model(), toy_data()
    masks = [ltsearch.find_ticket(model, source, sparsity=0.9, method="snip", overrides=QUICK).masks
             for source in ((x, y), TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=37))]
    assert _same(masks[0], masks[1]) and _same(masks[0], masks[2])


def test_methods_that_train_use_the_train_config(tmp_path):
    ticket = ltsearch.find_ticket(toy_model(), toy_data(), sparsity=0.5, method="imp",
                                  overrides=["train=tiny", *QUICK], work_dir=tmp_path / "work")
    assert ticket.kept == keep_count(0.5, ticket.total)
    assert [r["level"] for r in ticket.info["levels"]] == [0, 1, 2, 3]
    assert (tmp_path / "work" / "level_00" / "DONE.json").exists()  # resumable state kept where asked


def test_torchvision_model_through_the_api():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 3, 32, 32, generator=gen), torch.arange(64) % 4
    ticket = ltsearch.find_ticket(model, (x, y), sparsity=0.95, method="snip", overrides=QUICK,
                                  exclude=["fc.weight"])
    assert "conv1.weight" in ticket.masks and "layer4.1.conv2.weight" in ticket.masks
    assert "fc.weight" not in ticket.masks
    net = ltsearch.apply_masks(torchvision.models.resnet18(num_classes=4), ticket)
    assert int((net.conv1.weight == 0).sum()) == int((~ticket.masks["conv1.weight"]).sum())


def test_apply_masks_attaches_or_bakes_them():
    model, ticket = toy_model(), None
    ticket = ltsearch.find_ticket(model, toy_data(), sparsity=0.75, method="magnitude", overrides=QUICK)
    masked = ltsearch.apply_masks(toy_model(), ticket.masks)
    assert _same(masks_of(masked), ticket.masks)
    opt = torch.optim.SGD(masked.parameters(), lr=0.1)
    x, y = toy_data()
    nn.functional.cross_entropy(masked(x), y).backward()
    opt.step()
    assert torch.all(masked[0].weight[~ticket.masks["0.weight"]] == 0)  # pruned weights stay pruned
    baked = ticket.apply(toy_model(), permanent=True)
    assert not masks_of(baked) and int((baked[0].weight == 0).sum()) >= int((~ticket.masks["0.weight"]).sum())


def test_bad_inputs_give_one_clear_error():
    with pytest.raises(ConfigError, match="pruner=nope: no such option; the options of pruner are cts, cts_kl"):
        ltsearch.find_ticket(toy_model(), toy_data(), method="nope")
    with pytest.raises(DataError, match="must pair up"):
        ltsearch.find_ticket(toy_model(), (torch.zeros(4, 20), torch.zeros(3, dtype=torch.long)))
    with pytest.raises(ConfigError, match="outputs shape"):
        ltsearch.find_ticket(toy_model(), toy_data(classes=4), num_classes=7, method="magnitude")


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def on_run_start(self, run_dir, config, label):
        self.events.append(("start", label))

    def on_epoch_end(self, loop, record):
        self.events.append(("epoch", loop.out.label))

    def on_stage_end(self, stage, info):
        self.events.append(("stage", stage))

    def on_results(self, results):
        self.events.append(("results", f"{results['test_acc']:.4f}"))

    def on_run_end(self, error):
        self.events.append(("end", repr(error)))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A small finished run through `ltsearch.run`, with a recording callback."""
    run_dir = tmp_path_factory.mktemp("api") / "run"
    recorder = Recorder()
    results = ltsearch.run(*TINY, "pruner=magnitude", "sparsity=0.8", "stages=[search,rewind,retrain,evaluate]",
                           run_dir=run_dir, callbacks=[recorder])
    return run_dir, results, recorder


def test_run_returns_the_results_and_calls_back(finished):
    run_dir, results, recorder = finished
    assert results == json.loads((run_dir / "evaluate" / "results.json").read_text())
    assert results["label"] == "magnitude" and results["density"]["measured_kept"] == results["density"]["target_kept"]
    assert "stage evaluate: done" in (run_dir / "run.log").read_text()
    assert (run_dir / "metrics.csv").exists()
    assert recorder.events[0] == ("start", "magnitude") and recorder.events[-1] == ("end", "None")
    assert [e for e in recorder.events if e[0] == "stage"] == [("stage", s) for s in
                                                              ("search", "rewind", "retrain", "evaluate")]
    assert recorder.events.count(("epoch", "retrain")) == 3
    assert ("results", f"{results['test_acc']:.4f}") in recorder.events
    again = ltsearch.resume(run_dir)  # everything finished: nothing runs, the results come back
    assert again == results


def test_load_ticket_and_masks_of_a_finished_run(finished):
    run_dir, results, _ = finished
    masks = ltsearch.load_masks(run_dir)
    ticket = torch.load(run_dir / "rewind" / "ticket.pt", weights_only=True)
    net = ltsearch.load_ticket(run_dir)
    assert _same(masks_of(net), masks)
    state = {k.replace(".parametrizations.", ".").removesuffix(".original"): v
             for k, v in net.state_dict().items() if not k.endswith(".mask")}
    assert _same(state, ticket["state_dict"])
    trained = ltsearch.load_ticket(run_dir, weights="trained")
    from ltsearch.data import build_data
    from tests.conftest import make_config

    data = build_data(make_config(*TINY).dataset)
    with torch.no_grad():
        acc = float((trained.eval()(data.prepare(data.test_x)).argmax(1) == data.test_y).float().mean())
    assert acc == pytest.approx(results["test_acc"])  # the retrained ticket, as the evaluate stage measured it
    # into a model the user built (same architecture)
    from ltsearch.models import build_model

    own = build_model(make_config(*TINY).model, data.input_shape, data.num_classes, seed=123)
    assert _same(masks_of(ltsearch.load_ticket(run_dir, own)), masks)
    with pytest.raises(ConfigError, match="do not fit this model"):
        ltsearch.load_ticket(run_dir, toy_model())
    with pytest.raises(ConfigError, match="weights='final'"):
        ltsearch.load_ticket(run_dir, weights="final")


def test_load_ticket_of_an_unfinished_run(tmp_path):
    ltsearch.run(*TINY, "pruner=random", "stages=[search]", run_dir=tmp_path / "run")
    assert ltsearch.load_masks(tmp_path / "run")
    with pytest.raises(ArtifactError, match="stage rewind is not complete"):
        ltsearch.load_ticket(tmp_path / "run")


def test_the_package_exports_the_api_lazily():
    code = ("import sys, ltsearch; assert 'torch' not in sys.modules and 'ltsearch.api' not in sys.modules; "
            "assert ltsearch.find_ticket.__module__ == 'ltsearch.api'; print(ltsearch.__version__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from importlib.metadata import version

    assert proc.stdout.strip() == ltsearch.__version__ == version("ltsearch")
    assert set(ltsearch.__all__) <= set(dir(ltsearch))
    with pytest.raises(AttributeError):
        ltsearch.no_such_name  # noqa: B018
