"""`ltsearch report` on a small synthetic sweep folder: aggregation over seeds, failed and unfinished jobs,
sanity verdicts across seeds, CSV files and PNG plots."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pandas as pd
import pytest

from ltsearch.report import build_report, main, report_text, seed_verdict
from ltsearch.sweep import write_sweep_summary
from ltsearch.tables import dataset_label, model_label
from tests.conftest import run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LAYERS = {"fc1.weight": 1000, "fc2.weight": 300, "out.weight": 100}


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def fake_run(root: Path, method: str, sparsity: float, seed: int, acc: float | None = None,
             margins: dict[str, float] | None = None, levels: bool = False, failed: str | None = None,
             model: dict | None = None, config: dict | None = None) -> Path:
    """A run directory as the pipeline leaves it (only the files a report reads); `config`: more keys of its
    recorded config (whole sections: `{"train": {"rewind_epoch": 3}}`)."""
    run = root / f"{'model=' + model_label(model) + ',' if model else ''}pruner={method},seed={seed},sparsity={sparsity}"
    model = model or {"name": "lenet"}
    config = {"seed": seed, "sparsity": sparsity, "model": model, "dataset": {"name": "mnist"},
              "pruner": {"name": method, "when": "init"}, **(config or {})}
    _write(run / "run.json", {"label": method, "overrides": [], "config": config})
    if failed:
        _write(run / "failed.json", {"stage": "retrain", "error": failed, "time": 0})
        return run
    if acc is None:  # unfinished
        return run
    density = 1 - sparsity
    layers = {n: {"density": density * f, "kept": int(density * f * t), "total": t}
              for (n, t), f in zip(LAYERS.items(), (0.8, 1.5, 2.0), strict=True)}
    _write(run / "evaluate" / "results.json", {
        "test_acc": acc, "test_loss": 0.1, "density": {"target": density, "measured": density},
        "layers": layers, "pruning_point": {"pruning_point": {"test_acc": acc / 2}},
        "wall_time": {"search": 1.0, "rewind": 0.1, "retrain": 10.0, "sanity": 40.0, "evaluate": 0.2,
                      "total": 11.3}})
    if margins is not None:
        variants = {v: {"accuracy": acc - m, "margin": m, "passed": m > 0.005, "skipped_reason": None}
                    for v, m in margins.items()}
        variants["reinit"] = {"accuracy": None, "margin": None, "passed": None,
                              "skipped_reason": "mask found at the rewind point"}
        _write(run / "sanity" / "sanity.json", {"ticket_accuracy": acc, "threshold": 0.005,
                                                 "rule": "...", "variants": variants})
    if levels:
        _write(run / "search" / "levels.json", [
            {"level": i, "density": 0.8 ** i, "kept": 0, "total": 1400, "test_acc": 0.98 - 0.01 * i}
            for i in range(0, 12)])
    return run


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    for seed, (a, b) in enumerate([(0.97, 0.95), (0.96, 0.93)]):
        fake_run(root, "ltr", 0.9, seed, a, margins={"shuffle": 0.05 + 0.01 * seed, "invert": 0.5},
                 levels=True)
        fake_run(root, "ltr", 0.99, seed, b, margins={"shuffle": 0.01 + 0.03 * seed, "invert": 0.4})
        fake_run(root, "snip", 0.9, seed, a - 0.02, margins={"shuffle": -0.01, "invert": 0.3})
    fake_run(root, "snip", 0.99, 0, 0.9)
    fake_run(root, "snip", 0.99, 1, failed="DivergenceError: the training loss became NaN")
    fake_run(root, "snip", 0.99, 2)  # unfinished
    # a job that failed before writing run.json (the sweep callback's record)
    _write(root / "pruner=snip,sparsity=1.5" / "failed.json", {
        "stage": None, "error": "ConfigError: invalid config: sparsity must be in [0, 1)", "time": 0,
        "overrides": ["pruner=snip", "sparsity=1.5"],
        "job": {"method": "snip", "model": "lenet", "dataset": "mnist", "sparsity": 1.5, "seed": 0}})
    return root


def test_summary_aggregates_seeds_and_counts_failures(sweep):
    report = build_report([sweep])
    assert len(report.runs) == 10
    assert sorted(report.runs["status"].value_counts().items()) == [("done", 7), ("failed", 2), ("unfinished", 1)]
    s = report.summary.set_index(["method", "sparsity"])
    assert s.loc[("ltr", 0.9), "n_done"] == 2
    assert s.loc[("ltr", 0.9), "test_acc_mean"] == pytest.approx(0.965)
    assert s.loc[("ltr", 0.9), "test_acc_std"] == pytest.approx(pd.Series([0.97, 0.96]).std(ddof=1))
    assert s.loc[("ltr", 0.9), "acc_before_retrain_mean"] == pytest.approx(0.965 / 2)
    assert s.loc[("ltr", 0.9), "measured_density"] == pytest.approx(0.1)
    assert s.loc[("ltr", 0.9), "time_retrain_s"] == 10.0 and s.loc[("ltr", 0.9), "total_time_s"] == 11.3
    assert s.loc[("ltr", 0.9), "seeds"] == "0 1"
    snip = s.loc[("snip", 0.99)]
    assert (snip["n_done"], snip["n_failed"], snip["n_unfinished"]) == (1, 1, 1)
    assert snip["test_acc_mean"] == 0.9 and math.isnan(snip["test_acc_std"])
    assert s.loc[("snip", 1.5), "n_failed"] == 1 and s.loc[("snip", 1.5), "n_done"] == 0
    failed = report.failed.set_index("sparsity")
    assert "NaN" in failed.loc[0.99, "error"] and "sparsity must be" in failed.loc[1.5, "error"]
    assert set(report.levels["method"]) == {"ltr"} and len(report.levels) == 24


def test_models_that_share_a_builder_are_reported_apart(tmp_path):
    """resnet20 and resnet32 are both model.name=resnet_cifar; their runs must not be averaged together."""
    for depth, acc in ((20, 0.9), (32, 0.8)):
        for seed in (0, 1):
            fake_run(tmp_path, "ltr", 0.9, seed, acc,
                     model={"name": "resnet_cifar", "depth": depth, "width": 16, "shortcut": "conv1x1"})
    summary = build_report([tmp_path]).summary.set_index("model")
    assert summary.loc["ResNet-20", "test_acc_mean"] == pytest.approx(0.9)
    assert summary.loc["ResNet-32", "test_acc_mean"] == pytest.approx(0.8)


def test_runs_of_one_method_with_different_settings_are_reported_apart(tmp_path):
    """A sweep over a setting (or a protocol that searches one method at another point) is not averaged as if
    its runs were seeds: the method's name gets the setting. A value that follows from the sparsity (IMP's
    levels) does not split a method, and in an ablation a run names only what it changes."""
    for seed in (0, 1):
        for epoch, acc in ((1, 0.8), (3, 0.9)):
            fake_run(tmp_path / "sweep" / f"e{epoch}", "cts_kl", 0.99, seed, acc,
                     config={"train": {"rewind_epoch": epoch}, "runtime": {"threads": seed + 1}})
        for sparsity, levels in ((0.9, 10), (0.99, 21)):
            fake_run(tmp_path / "sweep", "ltr", sparsity, seed, 0.7,
                     config={"pruner": {"name": "ltr", "when": "rewind", "levels": levels}})
    report = build_report([tmp_path / "sweep"])
    summary = report.summary.set_index(["method", "sparsity"])
    assert summary.loc[("cts_kl train.rewind_epoch=1", 0.99), "test_acc_mean"] == pytest.approx(0.8)
    assert summary.loc[("cts_kl train.rewind_epoch=3", 0.99), "test_acc_mean"] == pytest.approx(0.9)
    assert summary.loc[("cts_kl train.rewind_epoch=3", 0.99), "seeds"] == "0 1"  # runtime.* is no setting
    assert {m for m, _ in summary.index if m.startswith("ltr")} == {"ltr"}
    assert set(report.layers["method"]) == set(summary.index.get_level_values("method"))

    for n, lr in enumerate((0.4, 0.4, 0.1)):
        fake_run(tmp_path / "ablation" / str(n), "cts_kl", 0.99, 0, 0.5, config={"pruner": {"name": "cts", "lr": lr}})
    assert set(build_report([tmp_path / "ablation"]).summary["method"]) == {"cts_kl", "cts_kl pruner.lr=0.1"}


def test_models_and_datasets_have_the_names_papers_use():
    assert model_label({"name": "mlp", "hidden": [300, 100], "depth": 0, "width": 0}) == "LeNet-300-100"
    assert model_label({"name": "mlp", "hidden": [256, 256]}) == "MLP-256-256"
    assert model_label({"name": "resnet_cifar", "depth": 20, "width": 16, "shortcut": "conv3x3"}) == \
        "ResNet-20 conv3x3 shortcuts"
    assert model_label({"name": "resnet_cifar", "depth": 56, "width": 32, "shortcut": "conv1x1"}) == "ResNet-56 w32"
    assert model_label({"name": "vgg", "depth": 16}) == "VGG-16"
    assert model_label({"name": "conv4"}) == "Conv-4"
    # the quickstart's CNN-1D (width 32, pooled head); a run recorded before `head` existed had a flatten head
    assert model_label({"name": "cnn1d", "width": 32, "head": "avgpool"}) == "CNN-1D"
    assert model_label({"name": "cnn1d", "width": 64, "head": "flatten"}) == "CNN-1D w64 flatten head"
    assert model_label({"name": "cnn1d", "width": 32}) == "CNN-1D flatten head"
    assert model_label({"name": "custom", "_target_": "torchvision.models.resnet18"}) == "resnet18 (torchvision)"
    assert dataset_label({"name": "cifar10", "root": "x"}) == "CIFAR-10"
    assert dataset_label({"name": "imagefolder", "root": "../data/cifar10-jpeg.tar.gz"}) == "cifar10-jpeg"


def test_sanity_verdicts_across_seeds(sweep):
    sanity = build_report([sweep]).sanity.set_index(["method", "sparsity", "variant"])
    ltr = sanity.loc[("ltr", 0.9, "shuffle")]
    assert ltr["n"] == 2 and ltr["margin_mean"] == pytest.approx(0.055)
    assert ltr["margin_std"] == pytest.approx(pd.Series([0.05, 0.06]).std(ddof=1))
    assert ltr["verdict"] == "pass"
    # both seeds beat the threshold (0.01, 0.04), but they disagree: 2 * std / sqrt(2) = 0.03 > mean 0.025
    noisy = sanity.loc[("ltr", 0.99, "shuffle")]
    assert noisy["margin_mean"] == pytest.approx(0.025) and noisy["bound"] == pytest.approx(0.03)
    assert noisy["verdict"] == "FAIL" and noisy["seeds_passed"] == "2/2"
    assert sanity.loc[("snip", 0.9, "shuffle"), "verdict"] == "FAIL"
    assert sanity.loc[("snip", 0.9, "invert"), "verdict"] == "pass"
    skipped = sanity.loc[("ltr", 0.9, "reinit")]
    assert skipped["verdict"] == "skipped" and "rewind point" in skipped["skipped_reason"]
    assert "2 * std / sqrt(n)" in skipped["rule"]
    assert list(build_report([sweep]).sanity["variant"][:3]) == ["shuffle", "invert", "reinit"]


def test_seed_rule():
    assert seed_verdict(pd.Series([0.006]), 0.005) == ("pass", 0.005)
    assert seed_verdict(pd.Series([0.005]), 0.005)[0] == "FAIL"
    assert seed_verdict(pd.Series([0.10, 0.11, 0.09]), 0.005)[0] == "pass"
    verdict, bound = seed_verdict(pd.Series([0.0, 0.1]), 0.005)
    assert verdict == "FAIL" and bound == pytest.approx(2 * pd.Series([0.0, 0.1]).std() / math.sqrt(2))
    assert seed_verdict(pd.Series([None], dtype=float), 0.005)[0] == "skipped"


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_report_writes_csv_and_plots(sweep, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(sweep), "--csv", str(out / "table.csv"), "--layers-at", "0.99"]) == 0
    assert "sanity checks" in capsys.readouterr().out
    printed = (out / "table.txt").read_text()  # the printed tables
    assert "0.9650±0.0071" in printed and "3 run(s) not done" in printed and "FAIL" in printed
    assert "failed in retrain: pruner=snip,seed=1,sparsity=0.99: DivergenceError" in printed
    assert str(sweep) not in printed  # run folders relative to the report's DIR
    summary = pd.read_csv(out / "table.csv")
    assert {"method", "sparsity", "test_acc_mean", "test_acc_std", "acc_before_retrain_mean",
            "measured_density", "time_search_s", "total_time_s", "n_failed"} <= set(summary.columns)
    runs = pd.read_csv(out / "table_runs.csv")
    assert (runs["status"] == "failed").sum() == 2
    sanity = pd.read_csv(out / "table_sanity.csv")
    assert {"margin_mean", "margin_std", "verdict", "rule"} <= set(sanity.columns)
    for name in ("accuracy_vs_sparsity.png", "layer_density_0.99.png", "sanity_margins.png"):
        assert _is_png(out / name), name


def test_default_plot_folder_and_layers_at(sweep, tmp_path):
    assert main([str(sweep)]) == 0  # plots next to the first DIR, per-layer plot at the sparsity most methods reached
    assert _is_png(sweep / "accuracy_vs_sparsity.png")
    assert _is_png(sweep / "layer_density_0.99.png")  # ltr and snip both reached 0.9 and 0.99: the higher one
    from ltsearch.errors import LtsearchError

    with pytest.raises(LtsearchError, match="no finished run at that sparsity"):
        main([str(sweep), "--layers-at", "0.5", "--plots", str(tmp_path / "p")])


def test_sweep_summary_files(sweep):
    written = write_sweep_summary(sweep)
    names = {p.name for p in written}
    assert {"summary.csv", "summary_runs.csv", "summary_sanity.csv", "summary.txt",
            "accuracy_vs_sparsity.png"} <= names
    text = (sweep / "summary.txt").read_text()
    assert "2 failed" in text and "sparsity must be in [0, 1)" in text
    assert "2 * std / sqrt(n)" in text.replace("\n", " ")


def test_cli_report_on_a_single_run(sweep, tmp_path):
    run = next(sweep.glob("pruner=ltr,seed=0,sparsity=0.9"))
    proc = run_cli("report", str(run), "--csv", str(tmp_path / "one.csv"), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert "ltr" in proc.stdout and (tmp_path / "one.csv").exists()
    assert not (run / "accuracy_vs_sparsity.png").exists()
    from ltsearch.errors import LtsearchError

    with pytest.raises(LtsearchError, match="does not exist"):
        main([str(tmp_path / "nothing-here")])


# -- figures and tables a paper can use --------------------------------------------------------------------------
def test_plots_come_in_three_formats_with_a_dense_reference_and_stale_ones_go(sweep, tmp_path):
    fake_run(sweep, "dense", 0.0, 0, 0.985)
    out = tmp_path / "plots"
    assert main([str(sweep), "--plots", str(out), "--layers-at", "0.9", "--no-plots"]) == 0
    assert not out.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no matplotlib warning (also not on a single point per method)
        assert main([str(sweep), "--plots", str(out), "--layers-at", "0.9"]) == 0
    for stem in ("accuracy_vs_sparsity", "layer_density_0.9", "sanity_margins"):
        assert _is_png(out / f"{stem}.png")
        assert (out / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
        assert b"<svg" in (out / f"{stem}.svg").read_bytes()[:500]
    accuracy = (out / "accuracy_vs_sparsity.svg").read_text()
    assert "dense (all weights): 0.9850" in accuracy  # the dense network as a reference line
    assert ">10%<" in accuracy and ">1%<" in accuracy  # a tick at every density of the grid
    assert "lenet on MNIST" in accuracy
    layers = (out / "layer_density_0.9.svg").read_text()
    assert "1K" in layers and "300" in layers  # layer sizes under the layer names
    main([str(sweep), "--plots", str(out), "--layers-at", "0.99"])  # rebuilt: the 0.9 figure is stale
    assert not list(out.glob("layer_density_0.9.*")) and len(list(out.glob("layer_density_0.99.*"))) == 3


def test_tables_stay_readable_at_100_columns(sweep):
    text = report_text(build_report([sweep]), sweep)
    assert max(len(line) for line in text.splitlines()) <= 100
    for title, rows in (("accuracy by method", 5), ("time and compute", 5), ("sanity checks", 9)):
        body = text.split(title, 1)[1].split("\n")
        start = next(i for i, line in enumerate(body) if line.startswith("───")) + 1
        # every row on one line: the next `rows` lines all start with a method name
        assert all(line.split()[0] in ("ltr", "snip", "MNIST", "mnist") for line in body[start:start + rows]), \
            "\n".join(body[:start + rows])


@pytest.mark.parametrize(("file", "change", "message"), [
    ("run.json", lambda r: {**r, "config": 5}, "run.json: field config is a number (5), not an object"),
    ("run.json", lambda r: {**r, "config": {k: v for k, v in r["config"].items() if k != "pruner"}},
     "run.json: field config.pruner is missing"),
    ("run.json", lambda r: [r], "run.json: its content is a list, not an object"),
    ("evaluate/results.json", lambda r: {"test_acc": 0.5}, "evaluate/results.json: field density is missing"),
    ("evaluate/results.json", lambda r: {**r, "density": {"target": "x", "measured": 0.1}},
     "evaluate/results.json: field density.target is a string ('x'), not a number"),
    ("evaluate/results.json", lambda r: {**r, "layers": {"fc1.weight": 3}},
     "evaluate/results.json: field layers.fc1.weight is a number (3), not an object"),
    ("sanity/sanity.json", lambda r: {**r, "variants": {"shuffle": {"accuracy": [1]}}},
     "sanity/sanity.json: field variants.shuffle.accuracy is a list, not a number"),
    ("failed.json", lambda r: {"stage": {"a": 1}}, "failed.json: field stage is an object, not a plain value"),
])
def test_a_malformed_run_is_skipped_naming_its_file_and_field(tmp_path, caplog, file, change, message):
    fake_run(tmp_path, "ltr", 0.9, 0, 0.97)
    bad = fake_run(tmp_path, "ltr", 0.9, 1, 0.96, margins={"shuffle": 0.05})
    if file == "failed.json":
        (bad / "evaluate" / "results.json").unlink()
        _write(bad / file, {})
    _write(bad / file, change(json.loads((bad / file).read_text())))
    with caplog.at_level("WARNING"):
        report = build_report([tmp_path])
    assert list(report.runs["seed"]) == [0]  # the rest is reported
    (warning,) = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert warning == f"skipping {bad}: a record is malformed ({message})"


def test_a_resumed_run_is_running_though_an_earlier_stop_left_its_record(tmp_path):
    from ltsearch.locks import open_lock_file, try_lock

    run = fake_run(tmp_path, "ltr", 0.9, 0, failed="Interrupted: interrupted (Ctrl-C) in stage retrain")
    assert list(build_report([tmp_path]).runs["status"]) == ["failed"]
    fd = open_lock_file(run / ".lock")
    try:
        assert try_lock(fd)  # the session that resumes it holds the lock
        assert list(build_report([tmp_path]).runs["status"]) == ["running"]
    finally:
        os.close(fd)
