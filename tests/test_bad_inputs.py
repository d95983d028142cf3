"""Bad input everywhere gets one clear message and a non-zero exit, no traceback, and leaves finished
artifacts alone (GitHub issues 2 and 7).

Every row of CASES is one test: the command goes through `ltsearch.cli.main` exactly as `ltsearch ...` does
(in process, for speed; a few rows are repeated in a subprocess below, for the exit status and stderr of a
real process). Rows that aim at a finished run directory also check that its artifacts are byte-identical
afterwards.

`python tests/test_bad_inputs.py` runs every row through a real `python -m ltsearch` process and prints the
table of inputs and messages (README/BENCHMARKS).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python tests/test_bad_inputs.py`
    sys.path.insert(0, str(REPO))

# Small and fast: synthetic data, a small MLP, 3 epochs, magnitude pruning (no search training), no sanity stage.
FAST = ["pruner=magnitude", "dataset=fake", "dataset.train_size=256", "dataset.test_size=128", "model=mlp1d", "model.hidden=[32,32]",
        "train=tiny", "runtime.progress=false", "stages=[search,rewind,retrain,evaluate]"]
IMAGES = ["model=mlp1d", "model.hidden=[16]", "train=tiny", "runtime.progress=false",
          "stages=[search,rewind,retrain,evaluate]"]


@dataclass(frozen=True)
class Case:
    id: str
    what: str  # the bad input, as the table names it
    args: tuple[str, ...]  # {fast}, {images}: the override lists above; {fresh}, {done}, {data}: folders
    message: str  # what the one clear line must contain
    target: str = "fresh"  # "done": aims at a finished run, which must stay byte-identical
    data: str = ""  # which prepared input {data} names (see prepare_data)


CASES = [
    # -- values and names in the config ------------------------------------------------------------------
    Case("sparsity_one", "sparsity=1.0", ("run", "{fast}", "sparsity=1.0", "hydra.run.dir={fresh}"),
         "invalid config: sparsity must be in [0, 1) (the fraction of prunable weights removed), got 1.0"),
    Case("sparsity_negative", "sparsity=-0.1", ("run", "{fast}", "sparsity=-0.1", "hydra.run.dir={fresh}"),
         "sparsity must be in [0, 1)", ),
    Case("sparsity_not_a_number", "sparsity=abc", ("run", "{fast}", "sparsity=abc", "hydra.run.dir={fresh}"),
         "Value 'abc' of type 'str' could not be converted to Float"),
    Case("unknown_pruner", "pruner=nope", ("run", "{fast}", "pruner=nope", "hydra.run.dir={fresh}"),
         "Could not find 'pruner/nope'"),
    Case("unknown_experiment", "experiment=nope", ("run", "{fast}", "experiment=nope", "hydra.run.dir={fresh}"),
         "Could not find 'experiment/nope'"),
    Case("typo_top_level_key", "typo in a key: sparsty=0.5", ("run", "{fast}", "sparsty=0.5",
                                                             "hydra.run.dir={fresh}"),
         "Could not override 'sparsty'"),
    Case("typo_nested_key", "typo in a nested key: train.lrr=0.1", ("run", "{fast}", "train.lrr=0.1",
                                                                    "hydra.run.dir={fresh}"),
         "Could not override 'train.lrr'"),
    Case("typo_appended_key", "typo appended with +: +sparsty=0.5", ("run", "{fast}", "+sparsty=0.5",
                                                                    "hydra.run.dir={fresh}"),
         "unknown config key(s) sparsty: ltsearch has no such setting"),
    Case("bad_enum", "train.optimizer=foo", ("run", "{fast}", "train.optimizer=foo", "hydra.run.dir={fresh}"),
         "Invalid value 'foo', expected one of [sgd, adam, adamw]"),
    Case("override_syntax", "unbalanced bracket: sparsity=[0.5", ("run", "{fast}", "sparsity=[0.5",
                                                                  "hydra.run.dir={fresh}"),
         "no viable alternative at input '[0.5'"),
    Case("group_given_a_number", "model=0.9 (a number for a config group)", ("run", "{fast}", "model=0.9",
                                                                             "hydra.run.dir={fresh}"),
         "'model=0.9': model is a config group; choose an option by name"),
    Case("zero_epochs", "train.epochs=0", ("run", "{fast}", "train.epochs=0", "hydra.run.dir={fresh}"),
         "train.epochs must be > 0, got 0"),
    Case("rewind_past_end", "train.rewind_epoch=5 with 3 epochs", ("run", "{fast}", "train.rewind_epoch=5",
                                                                   "hydra.run.dir={fresh}"),
         "train.rewind_epoch must be in [0, epochs=3), got 5"),
    Case("negative_lr", "train.lr=-1", ("run", "{fast}", "train.lr=-1", "hydra.run.dir={fresh}"),
         "train.lr must be > 0, got -1.0"),
    Case("milestone_past_end", "train.milestones=[10] with 3 epochs",
         ("run", "{fast}", "train.milestones=[10]", "hydra.run.dir={fresh}"),
         "train.milestones must lie inside (0, epochs=3), got [10]"),
    Case("unknown_stage", "stages=[nope]", ("run", "{fast}", "stages=[nope]", "hydra.run.dir={fresh}"),
         "unknown stage(s) 'nope' in stages; known (in the order they run): search, rewind, retrain, sanity, "
         "evaluate"),
    Case("stage_twice", "stages=[search,search]", ("run", "{fast}", "stages=[search,search]",
                                                   "hydra.run.dir={fresh}"),
         "stages lists a stage twice"),
    Case("stage_without_upstream", "stages=[retrain] in a new run directory",
         ("run", "{fast}", "stages=[retrain]", "hydra.run.dir={fresh}"),
         "stage retrain needs the output of stage rewind, which is not complete"),
    Case("bad_device", "runtime.device=tpu", ("run", "{fast}", "runtime.device=tpu", "hydra.run.dir={fresh}"),
         "runtime.device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    Case("bf16_on_cpu", "runtime.device=cpu runtime.precision=bf16",
         ("run", "{fast}", "runtime.device=cpu", "runtime.precision=bf16", "hydra.run.dir={fresh}"),
         "runtime.precision=bf16 is supported on CUDA only"),
    Case("bad_std", "dataset.std=[0.0] dataset.mean=[0.5]",
         ("run", "{fast}", "dataset.std=[0.0]", "dataset.mean=[0.5]", "hydra.run.dir={fresh}"),
         "dataset.std entries must be positive"),
    Case("layer_collapse_bad_value", "layer_collapse=maybe", ("run", "{fast}", "layer_collapse=maybe",
                                                              "hydra.run.dir={fresh}"),
         "Invalid value 'maybe', expected one of [warn, error]"),
    Case("layer_collapse_error", "sparsity=0.999 layer_collapse=error (a layer left empty)",
         ("run", "{fast}", "sparsity=0.999", "layer_collapse=error", "hydra.run.dir={fresh}"),
         "layer collapse: at sparsity 0.999 the magnitude mask leaves no weight in hidden.0.weight"),
    Case("run_dir_is_a_file", "hydra.run.dir names an existing file",
         ("run", "{fast}", "hydra.run.dir={data}"), "exists and is not a directory", data="a_file"),
    # -- model and data ------------------------------------------------------------------------------------
    Case("model_needs_images", "model=conv2 on 1-D data (shape mismatch)",
         ("run", "{fast}", "dataset.shape=[1,40]", "model=conv2", "hydra.run.dir={fresh}"),
         "model 'conv2' needs image inputs (C, H, W), got shape (1, 40)"),
    Case("model_input_too_small", "model=conv6 on 4x4 images (shape mismatch)",
         ("run", "{fast}", "dataset.shape=[3,4,4]", "model=conv6", "hydra.run.dir={fresh}"),
         "model 'conv6' does not accept inputs of shape (3, 4, 4) from this dataset"),
    Case("mnist_missing", "dataset=mnist, not downloaded, offline",
         ("run", "{images}", "dataset=mnist", "dataset.root={data}", "hydra.run.dir={fresh}"),
         "dataset 'mnist' not found: expected", data="empty_dir"),
    Case("cifar_missing", "dataset=cifar10, not downloaded, offline",
         ("run", "{images}", "dataset=cifar10", "dataset.root={data}", "model=conv2", "hydra.run.dir={fresh}"),
         "dataset 'cifar10' not found: expected", data="empty_dir"),
    Case("mnist_corrupt", "dataset=mnist with damaged files",
         ("run", "{images}", "dataset=mnist", "dataset.root={data}", "hydra.run.dir={fresh}"),
         "dataset 'mnist' under", data="mnist_junk"),
    Case("imagefolder_no_root", "dataset=imagefolder without dataset.root (default: ./data)",
         ("run", "{images}", "dataset=imagefolder", "hydra.run.dir={fresh}"),
         "dataset 'imagefolder': data does not exist (set dataset.root to a folder with train/<class>/"),
    Case("imagefolder_missing_root", "dataset.root that does not exist",
         ("run", "{images}", "dataset=imagefolder", "dataset.root={data}/nowhere", "hydra.run.dir={fresh}"),
         "does not exist (set dataset.root to a folder with train/<class>/ and test/<class>/", data="empty_dir"),
    Case("imagefolder_missing_class", "image folder whose test split lacks a class",
         ("run", "{images}", "dataset=imagefolder", "dataset.root={data}", "hydra.run.dir={fresh}"),
         "train and test class folders differ", data="missing_class"),
    Case("imagefolder_unreadable_image", "image folder with an unreadable image",
         ("run", "{images}", "dataset=imagefolder", "dataset.root={data}", "hydra.run.dir={fresh}"),
         "cannot decode image", data="corrupt_image"),
    Case("imagefolder_empty_image", "image folder with an empty (0-byte) image",
         ("run", "{images}", "dataset=imagefolder", "dataset.root={data}", "hydra.run.dir={fresh}"),
         "(empty file); remove or replace it", data="empty_image"),
    Case("imagefolder_mixed_sizes", "image folder with images of two sizes",
         ("run", "{images}", "dataset=imagefolder", "dataset.root={data}", "hydra.run.dir={fresh}"),
         "all images must have the same size", data="mixed_sizes"),
    Case("imagefolder_no_test_split", "image folder without test/",
         ("run", "{images}", "dataset=imagefolder", "dataset.root={data}", "hydra.run.dir={fresh}"),
         "no images under", data="no_test"),
    Case("imagefolder_not_an_archive", "dataset.root is a file that is not a tar archive",
         ("run", "{images}", "dataset=imagefolder", "dataset.root={data}", "hydra.run.dir={fresh}"),
         "is not a readable folder or tar archive", data="not_a_tar"),
    Case("imagefolder_truncated_archive", "dataset.root is a truncated .tar.gz",
         ("run", "{images}", "dataset=imagefolder", "dataset.root={data}", "hydra.run.dir={fresh}"),
         "is not a readable folder or tar archive", data="truncated_tar"),
    # -- resuming and re-entering run directories --------------------------------------------------------------
    Case("changed_config_same_dir", "same hydra.run.dir with a changed config (sparsity)",
         ("run", "{fast}", "sparsity=0.5", "hydra.run.dir={done}"),
         "holds a run with a different config (sparsity: 0.9 (recorded) -> 0.5 (now)); refusing to mix results",
         target="done"),
    Case("negative_sparsity_on_finished_run", "sparsity=-0.1 with the hydra.run.dir of a finished run",
         ("run", "{fast}", "sparsity=-0.1", "hydra.run.dir={done}"), "sparsity must be in [0, 1)", target="done"),
    Case("unknown_pruner_on_finished_run", "pruner=nope with the hydra.run.dir of a finished run",
         ("run", "{fast}", "pruner=nope", "hydra.run.dir={done}"), "Could not find 'pruner/nope'", target="done"),
    Case("typo_on_finished_run", "typo in a key (sparsty=0.5) with the hydra.run.dir of a finished run",
         ("run", "{fast}", "sparsty=0.5", "hydra.run.dir={done}"), "Could not override 'sparsty'", target="done"),
    Case("resume_changed_config", "ltsearch resume DIR sparsity=0.5", ("resume", "{done}", "sparsity=0.5"),
         "resume accepts overrides of runtime-only settings", target="done"),
    Case("resume_invalid_runtime", "ltsearch resume DIR runtime.checkpoint_every=0",
         ("resume", "{done}", "runtime.checkpoint_every=0"), "runtime.checkpoint_every must be >= 1",
         target="done"),
    Case("invalid_value_on_finished_run", "sparsity=1.0 with the hydra.run.dir of a finished run",
         ("run", "{fast}", "sparsity=1.0", "hydra.run.dir={done}"), "sparsity must be in [0, 1)", target="done"),
    Case("resume_not_a_run", "ltsearch resume DIR (a folder that is not a run)", ("resume", "{data}"),
         "is not an ltsearch run directory (no run.json in it)", data="empty_dir"),
    Case("resume_before_record", "ltsearch resume DIR of a run killed before it recorded its config",
         ("resume", "{data}"), "its run was stopped before it recorded its config; start it again with its "
                               "original `ltsearch run ...` command", data="killed_at_startup"),
    Case("resume_missing_dir", "ltsearch resume DIR (no such folder)", ("resume", "{data}/nowhere"),
         "is not a directory", data="empty_dir"),
    Case("resume_no_dir", "ltsearch resume (no folder given)", ("resume",),
         "resume needs a run directory: ltsearch resume RUN_DIR"),
    Case("resume_corrupt_record", "ltsearch resume DIR whose run.json is damaged", ("resume", "{data}"),
         "run.json is corrupt (invalid JSON", data="corrupt_record"),
    Case("resume_damaged_artifact", "resume a run whose finished stage has a damaged artifact (ticket.pt)",
         ("resume", "{data}"), "ticket.pt is corrupt: its checksum does not match the one recorded when it was "
                               "written; stage rewind is marked complete", data="damaged_ticket"),
    Case("unknown_command", "ltsearch frobnicate", ("frobnicate",), "unknown command 'frobnicate'"),
    Case("report_missing_dir", "ltsearch report DIR (no such folder)", ("report", "{data}/nowhere"),
         "does not exist", data="empty_dir"),
]


# Rejected by Hydra while composing the config: Hydra's own (multi-line) messages.
HYDRA_COMPOSE = {"sparsity_not_a_number", "unknown_pruner", "unknown_experiment", "typo_top_level_key",
                 "typo_nested_key", "bad_enum", "override_syntax", "layer_collapse_bad_value",
                 "unknown_pruner_on_finished_run", "typo_on_finished_run"}


# -- running the CLI ------------------------------------------------------------------------------------------------
def cli(*args: str) -> tuple[int, str, str]:
    """`ltsearch ARGS` in this process: (exit status, stdout, stderr)."""
    from ltsearch.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def message_of(stderr: str) -> str:
    """The user-facing message: stderr without Hydra's framing (the overrides line, the HYDRA_FULL_ERROR hint)."""
    lines = [ln.rstrip() for ln in stderr.splitlines()]
    keep = [ln for ln in lines if ln.strip() and not ln.startswith("Error executing job with overrides")
            and "HYDRA_FULL_ERROR" not in ln]
    return "\n".join(keep)


def expand(case: Case, folders: dict[str, Path]) -> list[str]:
    out: list[str] = []
    for arg in case.args:
        if arg == "{fast}":
            out.extend(FAST)
        elif arg == "{images}":
            out.extend(IMAGES)
        else:
            out.append(arg.format(**{k: str(v) for k, v in folders.items()}))
    return out


def snapshot(run_dir: Path) -> dict[str, str]:
    """SHA-256 of every file of a run except Hydra's per-session logs (.hydra/, run.log) and the lock."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.relative_to(run_dir).parts[0] != ".hydra" and p.name not in ("run.log", ".lock")}


# -- prepared inputs ---------------------------------------------------------------------------------------------
def _png(path: Path, size: int = 8, value: int = 0) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, 255 - value, (3 * value) % 256)).save(path)


def _image_folder(root: Path, classes=("a", "b"), test_classes=None, per_class: int = 3) -> Path:
    for split, names in (("train", classes), ("test", classes if test_classes is None else test_classes)):
        for c, name in enumerate(names):
            for i in range(per_class):
                _png(root / split / name / f"{i}.png", value=40 * c + 7 * i)
    return root


def prepare_data(root: Path, done: Path) -> dict[str, Path]:
    """Every bad input a case can point {data} at."""
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    out["empty_dir"] = root / "empty_dir"
    out["empty_dir"].mkdir()
    out["a_file"] = root / "a_file.txt"
    out["a_file"].write_text("not a folder\n")
    mnist = root / "mnist_junk" / "MNIST" / "raw"
    mnist.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (mnist / name).write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 20)
    out["mnist_junk"] = root / "mnist_junk"
    out["missing_class"] = _image_folder(root / "missing_class", test_classes=("a",))
    out["corrupt_image"] = _image_folder(root / "corrupt_image")
    (out["corrupt_image"] / "train" / "a" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    out["empty_image"] = _image_folder(root / "empty_image")
    (out["empty_image"] / "test" / "b" / "9.jpg").write_bytes(b"")
    out["mixed_sizes"] = _image_folder(root / "mixed_sizes")
    _png(out["mixed_sizes"] / "train" / "b" / "9.png", size=16)
    out["no_test"] = _image_folder(root / "no_test")
    shutil.rmtree(out["no_test"] / "test")
    out["not_a_tar"] = root / "images.tar.gz"
    out["not_a_tar"].write_bytes(gzip.compress(b"this is not a tar archive" * 40))
    good = _image_folder(root / "for_tar", per_class=20)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(good, arcname="images")
    out["truncated_tar"] = root / "truncated.tar.gz"
    out["truncated_tar"].write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    out["killed_at_startup"] = root / "killed_at_startup"  # Hydra wrote its files, ltsearch nothing yet
    (out["killed_at_startup"] / ".hydra" / "2026-01-01_00-00-00").mkdir(parents=True)
    (out["killed_at_startup"] / ".hydra" / "2026-01-01_00-00-00" / "overrides.yaml").write_text("- seed=0\n")
    out["corrupt_record"] = root / "corrupt_record"
    out["corrupt_record"].mkdir()
    (out["corrupt_record"] / "run.json").write_text('{"config": {"seed": 0,')
    # a finished run whose rewind stage's ticket.pt was damaged later; retrain and evaluate still to do
    damaged = root / "damaged_ticket"
    shutil.copytree(done, damaged)
    for stage in ("retrain", "evaluate"):
        shutil.rmtree(damaged / stage)
    ticket = damaged / "rewind" / "ticket.pt"
    data = bytearray(ticket.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ticket.write_bytes(bytes(data))
    out["damaged_ticket"] = damaged
    return out


# -- tests ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run of FAST (sparsity 0.9)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    rc, out, err = cli("run", *FAST, f"hydra.run.dir={run_dir}")
    assert rc == 0, err
    assert (run_dir / "evaluate" / "DONE.json").exists()
    return run_dir


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, finished) -> dict[str, Path]:
    return prepare_data(tmp_path_factory.mktemp("inputs"), finished)


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setenv("LTSEARCH_CACHE", str(tmp_path / "cache"))


def test_at_least_25_bad_inputs():
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, finished, inputs):
    if case.id == "bf16_on_cpu" and not _cpu_only():
        pytest.skip("bf16 is allowed where CUDA is available")
    folders = {"fresh": tmp_path / "run", "done": finished, "data": inputs.get(case.data, tmp_path)}
    before = snapshot(finished)
    rc, out, err = cli(*expand(case, folders))
    assert rc != 0, f"accepted: {out[-2000:]}{err[-2000:]}"
    assert "Traceback" not in out + err, err
    message = message_of(err)
    assert case.message in message, message
    if case.id in HYDRA_COMPOSE:  # Hydra's own message: the expected text is on one of its lines
        assert any(case.message in line for line in message.splitlines()), message
    else:  # ours: exactly one line (no warnings, no native library noise)
        assert len(message.splitlines()) == 1, message
    assert snapshot(finished) == before, "a bad input changed a finished run"
    assert not (finished / "failed.json").exists()


def _cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available()


def test_resume_of_damaged_artifact_leaves_other_stages_alone(inputs):
    """The damaged-ticket run was refused without writing any artifact of the stages after it."""
    damaged = inputs["damaged_ticket"]
    assert not (damaged / "retrain" / "DONE.json").exists()
    assert not (damaged / "retrain" / "final.pt").exists()


def test_layer_collapse_error_then_accepted_with_warn_on_resume(tmp_path):
    """layer_collapse=error stops the search stage; it only decides whether to stop (a runtime-only key), so
    the refused run continues with layer_collapse=warn (the default), which warns and records the layers."""
    run_dir = tmp_path / "run"
    rc, _, err = cli("run", *FAST, "sparsity=0.999", "layer_collapse=error", f"hydra.run.dir={run_dir}")
    assert rc == 1 and "layer collapse" in err and "Traceback" not in err
    assert not (run_dir / "search" / "DONE.json").exists()
    assert json.loads((run_dir / "failed.json").read_text())["stage"] == "search"
    rc, _, err = cli("resume", str(run_dir), "layer_collapse=warn")
    assert rc == 0, err
    results = json.loads((run_dir / "evaluate" / "results.json").read_text())
    assert "hidden.0.weight" in results["collapsed_layers"]
    assert "layer collapse: no weight left in hidden.0.weight" in (run_dir / "run.log").read_text()
    assert not (run_dir / "failed.json").exists()


# A few rows again through a real process: exit status, stderr, no traceback.
@pytest.mark.parametrize("case_id", ["sparsity_negative", "resume_not_a_run", "imagefolder_unreadable_image",
                                     "model_input_too_small"])
def test_bad_input_in_a_real_process(case_id, tmp_path, finished, inputs):
    from tests.conftest import run_cli

    case = next(c for c in CASES if c.id == case_id)
    folders = {"fresh": tmp_path / "run", "done": finished, "data": inputs.get(case.data, tmp_path)}
    proc = run_cli(*expand(case, folders), env={"LTSEARCH_CACHE": str(tmp_path / "cache")})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    assert case.message in proc.stderr
    # one line: no Python warnings, no complaints of native decoders (libpng writes to descriptor 2)
    assert len(message_of(proc.stderr).splitlines()) == 1, proc.stderr


def test_hydra_full_error_shows_the_traceback(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "PYTHONUNBUFFERED": "1"}
    full = subprocess.run([sys.executable, "-m", "ltsearch", "run", *FAST, "sparsity=1.0",
                           f"hydra.run.dir={tmp_path / 'run'}"], env=env, capture_output=True, text=True)
    assert full.returncode != 0
    assert "Traceback" in full.stderr and "sparsity must be in [0, 1)" in full.stderr


# -- the table ----------------------------------------------------------------------------------------------------
def table() -> str:
    """Run every case through `python -m ltsearch` and return the Markdown table of messages."""
    import tempfile

    rows = ["| # | bad input | command | exit | message (stderr, Hydra's framing lines omitted) |",
            "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "LTSEARCH_CACHE": str(tmp_path / "cache")}
        env.pop("HYDRA_FULL_ERROR", None)
        finished = tmp_path / "finished"
        subprocess.run([sys.executable, "-m", "ltsearch", "run", *FAST, f"hydra.run.dir={finished}"], env=env,
                       check=True, capture_output=True)
        inputs = prepare_data(tmp_path / "inputs", finished)
        for number, case in enumerate(CASES, 1):
            folders = {"fresh": tmp_path / f"fresh_{number}", "done": finished,
                       "data": inputs.get(case.data, tmp_path)}
            args = expand(case, folders)
            proc = subprocess.run([sys.executable, "-m", "ltsearch", *args], env=env, capture_output=True,
                                  text=True)
            message = message_of(proc.stderr).replace(str(tmp_path), "/tmp/x")
            lines = message.splitlines()
            shown = " ⏎ ".join(lines[:4]) + (" ⏎ …" if len(lines) > 4 else "")
            shown_args = [a for a in args if a not in FAST and a not in IMAGES]
            command = "ltsearch " + " ".join(shown_args).replace(str(tmp_path), "/tmp/x")
            ok = (proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr and case.message in message
                  and (case.id in HYDRA_COMPOSE or len(lines) == 1))
            rows.append(f"| {number} | {case.what} | `{command}` | {proc.returncode}{'' if ok else ' FAIL'} | "
                        f"{shown.replace('|', '&#124;')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
