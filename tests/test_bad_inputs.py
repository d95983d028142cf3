"""Bad input everywhere gets one clear message and a non-zero exit, no traceback, and leaves finished
artifacts alone.

Every row of CASES is one test: the command goes through `ltsearch.cli.main` exactly as `ltsearch ...` does
(in process, for speed; a few rows are repeated in a subprocess below, for the exit status and stderr of a
real process). Rows that aim at a finished run directory also check that its artifacts are byte-identical
afterwards, and no row may change the file that planted links point at (`victim.txt`).

Some rows are faults rather than inputs: a fault injected into the process (`tests/faults.py`: a full disk,
Ctrl-C, SIGTERM, a read-only cache), or a folder mounted read-only in a user namespace (skipped where the
machine allows none). Rows marked `ok` are inputs ltsearch works around: the command succeeds, and `message`
is the warning it prints (or the log line that shows the work was done).

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
import re
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

from tests import faults  # noqa: E402 - after the path set-up above

# Small and fast: synthetic data, a small MLP, 3 epochs, magnitude pruning (no search training), no sanity stage.
FAST = ["pruner=magnitude", "dataset=fake", "dataset.train_size=256", "dataset.test_size=128", "model=mlp1d", "model.hidden=[32,32]",
        "train=tiny", "runtime.progress=false", "stages=[search,rewind,retrain,evaluate]"]
IMAGES = ["model=mlp1d", "model.hidden=[16]", "train=tiny", "runtime.progress=false",
          "stages=[search,rewind,retrain,evaluate]"]
# After FAST: only the search stage, with dense pretraining to epoch 1 (what the artifact cache holds).
PRETRAIN = ["pruner.when=rewind", "train.rewind_epoch=1", "stages=[search]"]
CACHED_RUN = ("run", "{fast}", "{pretrain}", "runtime.cache_dir={data}", "hydra.run.dir={fresh}")


@dataclass(frozen=True)
class Case:
    id: str
    what: str  # the bad input, as the table names it
    args: tuple[str, ...]  # {fast}, {images}: the override lists above; {fresh}, {done}, {data}: folders
    message: str  # what the one clear line must contain
    target: str = "fresh"  # "done": aims at a finished run, which must stay byte-identical
    data: str = ""  # which prepared input {data} names (see prepare_data); {inputs}: the folder of them all
    ok: bool = False  # the command succeeds; `message` is in its warnings or its run's log
    fault: str = ""  # a fault injected into the process (tests/faults.py)
    readonly: tuple[str, ...] = ()  # folders mounted read-only around the command ({data}, ...)
    code: int = 0  # the exit status, when it is not the usual one (1 for a refused run, 2 for a usage error)


CASES = [
    # -- values and names in the config ------------------------------------------------------------------
    Case("sparsity_one", "sparsity=1.0", ("run", "{fast}", "sparsity=1.0", "hydra.run.dir={fresh}"),
         "invalid config: sparsity must be in [0, 1) (the fraction of prunable weights removed), got 1.0"),
    Case("sparsity_negative", "sparsity=-0.1", ("run", "{fast}", "sparsity=-0.1", "hydra.run.dir={fresh}"),
         "sparsity must be in [0, 1)", ),
    Case("sparsity_not_a_number", "sparsity=abc", ("run", "{fast}", "sparsity=abc", "hydra.run.dir={fresh}"),
         "Value 'abc' of type 'str' could not be converted to Float"),
    Case("unknown_pruner", "pruner=nope", ("run", "{fast}", "pruner=nope", "hydra.run.dir={fresh}"),
         "pruner=nope: no such option; the options of pruner are cts, cts_kl, dense, grasp, imp, ltr"),
    Case("unknown_experiment", "experiment=nope", ("run", "{fast}", "experiment=nope", "hydra.run.dir={fresh}"),
         "experiment=nope: no such option; the options of experiment are conv2_cifar10"),
    Case("typo_top_level_key", "typo in a key: sparsty=0.5", ("run", "{fast}", "sparsty=0.5",
                                                             "hydra.run.dir={fresh}"),
         "unknown config key sparsty (did you mean sparsity?): ltsearch has no such setting"),
    Case("typo_nested_key", "typo in a nested key: train.lrr=0.1", ("run", "{fast}", "train.lrr=0.1",
                                                                    "hydra.run.dir={fresh}"),
         "unknown config key train.lrr (did you mean train.lr?): ltsearch has no such setting"),
    Case("typo_appended_key", "typo appended with +: +sparsty=0.5", ("run", "{fast}", "+sparsty=0.5",
                                                                    "hydra.run.dir={fresh}"),
         "unknown config key sparsty (did you mean sparsity?): ltsearch has no such setting"),
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
         "holds a run with a different config (sparsity: 0.99 (recorded) -> 0.5 (now)); refusing to mix results",
         target="done"),
    Case("negative_sparsity_on_finished_run", "sparsity=-0.1 with the hydra.run.dir of a finished run",
         ("run", "{fast}", "sparsity=-0.1", "hydra.run.dir={done}"), "sparsity must be in [0, 1)", target="done"),
    Case("unknown_pruner_on_finished_run", "pruner=nope with the hydra.run.dir of a finished run",
         ("run", "{fast}", "pruner=nope", "hydra.run.dir={done}"), "pruner=nope: no such option", target="done"),
    Case("typo_on_finished_run", "typo in a key (sparsty=0.5) with the hydra.run.dir of a finished run",
         ("run", "{fast}", "sparsty=0.5", "hydra.run.dir={done}"), "unknown config key sparsty", target="done"),
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
    # -- values that used to crash -------------------------------------------------------------------------------
    Case("seed_beyond_64_bits", "seed=99999999999999999999999 (beyond 64 bits)",
         ("run", "{fast}", "seed=99999999999999999999999", "hydra.run.dir={fresh}"),
         "invalid config: seed must be a 64-bit integer (from -2**63 to 2**64 - 1), got 99999999999999999999999"),
    Case("exclude_everything", "model.exclude=[*] (no weight left to prune)",
         ("run", "{fast}", "model.exclude=[*]", "hydra.run.dir={fresh}"),
         "model.exclude=['*'] excludes every prunable weight of model 'mlp'"),
    Case("zero_sized_shape", "dataset.shape=[3,0,8] (a zero-sized dimension)",
         ("run", "{fast}", "dataset.shape=[3,0,8]", "hydra.run.dir={fresh}"),
         "invalid config: dataset.shape entries must be positive, got [3, 0, 8]"),
    Case("threads_beyond_machine", "runtime.threads=100000 (more than the machine has)",
         ("run", "{fast}", "runtime.threads=100000", "hydra.run.dir={fresh}"),
         "invalid config: runtime.threads=100000 is more than the"),
    Case("line_break_in_config", "a line break in a config string (pruner.label)",
         ("run", "{fast}", "pruner.label='a\nforged line'", "hydra.run.dir={fresh}"),
         "invalid config: pruner.label=a\\nforged line holds a line break or another control character"),
    # -- run folders others can write to ---------------------------------------------------------------------------
    Case("lock_is_a_link", "resume a run whose .lock is a symbolic link (to victim.txt)", ("resume", "{data}"),
         ".lock is a symbolic link (to", data="lock_link"),
    Case("log_is_a_link", "resume a run whose run.log is a symbolic link (to victim.txt)", ("resume", "{data}"),
         "run.log is a symbolic link (to", data="log_link"),
    Case("hydra_setting_in_record", "resume a run whose run.json lists a hydra.* override (a log file elsewhere)",
         ("resume", "{data}"), "resume takes no hydra.* settings from a run folder", data="hydra_record"),
    Case("users_folder", "hydra.run.dir names a folder of the user's (not a run, not empty)",
         ("run", "{fast}", "hydra.run.dir={data}"),
         "is not an ltsearch run folder but already holds files (.draft.tmp-1, notes.txt, search); ltsearch writes "
         "each run into a folder of its own", data="users_folder"),
    Case("resume_dangling_link", "ltsearch resume DIR, DIR a symbolic link to nothing", ("resume", "{data}"),
         "is a symbolic link to", data="dangling"),
    Case("run_dir_dangling_link", "hydra.run.dir is a symbolic link to nothing",
         ("run", "{fast}", "hydra.run.dir={data}"), "is a symbolic link to", data="dangling"),
    Case("resume_read_only", "resume a run in a read-only folder", ("resume", "{data}"),
         "is not writable (Read-only file system)", data="unfinished", readonly=("{data}",)),
    Case("run_into_read_only", "hydra.run.dir inside a read-only folder",
         ("run", "{fast}", "hydra.run.dir={data}/run"), "is not writable (Read-only file system); ltsearch writes "
         "its run there", data="empty_dir", readonly=("{data}",)),
    Case("resume_backslash_path", "ltsearch resume DIR with backslashes, quotes, '=' and ',' in its path",
         ("resume", "{data}"), "stage evaluate: done", data="odd_path", ok=True),
    Case("resume_interpolation_path", "ltsearch resume DIR with '${' in its path", ("resume", "{data}"),
         "its path holds '${', which Hydra reads as an interpolation; rename the folder", data="dollar_path"),
    Case("artifact_deleted", "resume a run whose finished stage lost an artifact (ticket.pt deleted)",
         ("resume", "{data}"), "rewind/ticket.pt is missing; stage rewind is marked complete",
         data="missing_artifact"),
    # -- the data a run was computed on -------------------------------------------------------------------------------
    Case("resume_other_data", "resume with dataset.root naming other images",
         ("resume", "{data}", "dataset.root={inputs}/images_b", "stages=[search,rewind]"),
         "is not the data this run was computed on", data="img_other"),
    Case("resume_changed_data", "resume after the images under dataset.root changed",
         ("resume", "{data}", "stages=[search,rewind]"), "changed since this run used it", data="img_changed"),
    Case("resume_moved_data", "resume with dataset.root naming a copy of the same images",
         ("resume", "{data}", "dataset.root={inputs}/images_same", "stages=[search,rewind]"),
         "stage rewind: done", data="img_same", ok=True),
    # -- the artifact cache ---------------------------------------------------------------------------------------
    Case("cache_escape", "a cache entry whose record names ../../escaped.pt",
         CACHED_RUN,
         "which is not a plain name inside the entry); evicted, computing search/pretrain again",
         data="cache_escape", ok=True),
    Case("cache_link", "a cache entry whose weights.pt is a symbolic link (to victim.txt)",
         CACHED_RUN,
         "weights.pt is a symbolic link); evicted, computing search/pretrain again", data="cache_link", ok=True),
    Case("cache_checksum", "a cache entry whose weights.pt was damaged",
         CACHED_RUN,
         "weights.pt is corrupt: its checksum does not match the one recorded when it was written); evicted",
         data="cache_checksum", ok=True),
    Case("cache_bad_marker", "a cache entry whose DONE.json is not JSON",
         CACHED_RUN,
         "DONE.json is corrupt (invalid JSON", data="cache_bad_marker", ok=True),
    Case("cache_disk_full", "disk full in the artifact cache",
         CACHED_RUN,
         "search/pretrain: could not store a copy in the artifact cache", data="cache_empty", ok=True,
         fault="disk_full_in_cache"),
    Case("cache_read_only_injected", "a read-only artifact cache",
         ("run", "{fast}", "{pretrain}", "runtime.cache_dir={data}/artifacts", "hydra.run.dir={fresh}"),
         "cannot be locked or written (Read-only file system): it is used read-only", data="cache_good",
         ok=True, fault="cache_read_only"),
    Case("cache_read_only", "a read-only artifact cache",
         CACHED_RUN,
         "cannot be locked or written (Read-only file system): it is used read-only", data="cache_good", ok=True,
         readonly=("{data}",)),
    # -- faults ------------------------------------------------------------------------------------------------------
    Case("disk_full_in_run", "disk full in the run folder (while retraining)",
         ("run", "{fast}", "hydra.run.dir={fresh}"),
         "the disk is full; stage retrain stopped and continues where it stopped once that is fixed: ltsearch "
         "resume", fault="disk_full_in_run"),
    Case("disk_full_no_record", "disk full in the run folder, failed.json included",
         ("run", "{fast}", "hydra.run.dir={fresh}"),
         "the disk is full; stage retrain stopped (no failure record: cannot write", fault="disk_full_with_record"),
    Case("ctrl_c", "Ctrl-C (SIGINT) during retraining", ("run", "{fast}", "hydra.run.dir={fresh}"),
         "ltsearch: interrupted (Ctrl-C) in stage retrain; resume with: ltsearch resume", fault="ctrl_c_in_retrain",
         code=130),
    Case("sigterm", "SIGTERM during retraining", ("run", "{fast}", "hydra.run.dir={fresh}"),
         "ltsearch: terminated (SIGTERM) in stage retrain; resume with: ltsearch resume",
         fault="sigterm_in_retrain", code=143),
    # -- reports -----------------------------------------------------------------------------------------------------
    Case("report_malformed_record", "ltsearch report over a run whose run.json is malformed",
         ("report", "{data}", "--no-plots"), "a record is malformed (run.json: field config is a number (5), not an object)", data="report_bad_record",
         ok=True),
    Case("report_malformed_results", "ltsearch report over a run whose results.json is malformed",
         ("report", "{data}", "--no-plots"), "a record is malformed (evaluate/results.json: field density is missing)", data="report_bad_results",
         ok=True),
    Case("report_csv_is_a_folder", "ltsearch report DIR --csv FOLDER", ("report", "{done}", "--csv", "{data}"),
         "is a folder; name the CSV file to write", data="empty_dir"),
    # -- exports -----------------------------------------------------------------------------------------------------
    Case("export_unfinished", "ltsearch export RUN_DIR of a run whose retrain stage has not finished",
         ("export", "{data}"), "stage retrain is not complete, so it holds no final.pt (ltsearch resume",
         data="no_retrain"),
    Case("export_unknown_format", "ltsearch export RUN_DIR --format pt", ("export", "{done}", "--format", "pt"),
         "unknown format 'pt' (formats: safetensors, onnx, sparse)", target="done"),
    Case("export_truncated", "ltsearch export of a truncated ticket file", ("export", "{data}", "--format", "onnx"),
         "is truncated: its tensors need", data="ticket_truncated"),
    Case("export_tampered", "ltsearch export of a ticket file with a flipped bit", ("export", "{data}", "--format",
                                                                                    "onnx"),
         "is corrupt or was altered: its payload does not match the checksum it was written with",
         data="ticket_tampered"),
    Case("export_newer_format", "ltsearch export of a ticket file of a newer format version",
         ("export", "{data}", "--format", "onnx"), "was written by a newer ltsearch (ticket format version 2",
         data="ticket_newer"),
    Case("export_pickle", "ltsearch export of a pickle named ticket.safetensors", ("export", "{data}", "--format",
                                                                                   "onnx"),
         "is not a safetensors file (a ticket file that ltsearch export writes); ltsearch never unpickles",
         data="ticket_pickle"),
    Case("export_read_only", "ltsearch export RUN_DIR --out FILE in a read-only folder",
         ("export", "{done}", "--out", "{data}/ticket.safetensors"), "is on a read-only file system",
         target="done", data="empty_dir", readonly=("{data}",)),
    Case("head_option_elsewhere", "model.head=avgpool on a network that builds its own head",
         ("run", "{fast}", "model.head=avgpool", "hydra.run.dir={fresh}"),
         "model.head=avgpool is an option of model=cnn1d only; model=mlp builds its own head"),
]


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
    """The user-facing message: the lines of stderr (a refusal is one line: ltsearch's sentence, without the
    framing Hydra gives errors, the job's overrides and the HYDRA_FULL_ERROR hint)."""
    return "\n".join(ln.rstrip() for ln in stderr.splitlines() if ln.strip())


def expand(case: Case, folders: dict[str, Path]) -> list[str]:
    out: list[str] = []
    for arg in case.args:
        if arg == "{fast}":
            out.extend(FAST)
        elif arg == "{images}":
            out.extend(IMAGES)
        elif arg == "{pretrain}":
            out.extend(PRETRAIN)
        else:
            out.append(arg.format(**{k: str(v) for k, v in folders.items()}))
    return out


def snapshot(run_dir: Path) -> dict[str, str]:
    """SHA-256 of every file of a run except Hydra's per-session logs (.hydra/, run.log) and the lock."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.relative_to(run_dir).parts[0] != ".hydra" and p.name not in ("run.log", ".lock")}


# -- prepared inputs ---------------------------------------------------------------------------------------------
VICTIM = "victim.txt"  # what planted links point at: no row may change it
VICTIM_TEXT = "a file of the user's that a planted link points at\n"


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
    _prepare_run_folders(root, done, out)
    _prepare_tickets(root, done, out)
    _prepare_data_changes(root, out)
    _prepare_caches(root, out)
    return out


def _copy_run(done: Path, dest: Path, *unfinished: str) -> Path:
    shutil.copytree(done, dest, symlinks=True)
    for stage in unfinished:
        shutil.rmtree(dest / stage)
    return dest


def _prepare_run_folders(root: Path, done: Path, out: dict[str, Path]) -> None:
    """Run folders with planted links, a tampered record, odd names; a folder of the user's."""
    victim = root / VICTIM
    victim.write_text(VICTIM_TEXT)
    for name, link in (("lock_link", ".lock"), ("log_link", "run.log")):
        out[name] = _copy_run(done, root / name, "evaluate")
        (out[name] / link).unlink(missing_ok=True)
        (out[name] / link).symlink_to(victim)
    out["hydra_record"] = _copy_run(done, root / "hydra_record", "evaluate")
    record = json.loads((out["hydra_record"] / "run.json").read_text())
    record["overrides"].append(f"hydra.job_logging.handlers.file.filename={victim}")
    (out["hydra_record"] / "run.json").write_text(json.dumps(record))
    users = root / "users_folder"
    (users / "search").mkdir(parents=True)
    (users / "notes.txt").write_text("my notes\n")
    (users / ".draft.tmp-1").write_text("looks like a temporary, is the user's\n")
    (users / "search" / "mine.txt").write_text("mine\n")
    out["users_folder"] = users
    out["dangling"] = root / "dangling"
    out["dangling"].symlink_to(root / "nowhere")
    out["unfinished"] = _copy_run(done, root / "unfinished", "evaluate")
    out["odd_path"] = _copy_run(done, root / "odd \\path\\ 'quoted' a=b,c", "evaluate")
    out["dollar_path"] = _copy_run(done, root / "run${x}", "evaluate")
    out["missing_artifact"] = _copy_run(done, root / "missing_artifact", "retrain", "evaluate")
    (out["missing_artifact"] / "rewind" / "ticket.pt").unlink()
    for name, path, text in (("report_bad_record", "run.json", '{"config": 5, "overrides": []}'),
                             ("report_bad_results", "evaluate/results.json", '{"test_acc": 0.5}')):
        out[name] = root / name
        _copy_run(done, out[name] / "good")
        (_copy_run(done, out[name] / "bad") / path).write_text(text)


def _prepare_tickets(root: Path, done: Path, out: dict[str, Path]) -> None:
    """A run without its retrain stage, and damaged copies of the finished run's ticket file."""
    import torch

    out["no_retrain"] = _copy_run(done, root / "no_retrain", "retrain", "evaluate")
    data = (done / "evaluate" / "ticket.safetensors").read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    info = json.loads(header["__metadata__"]["ltsearch"])
    info["format_version"] = 2
    header["__metadata__"]["ltsearch"] = json.dumps(info)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    flipped = bytearray(data)
    flipped[-3] ^= 0x10
    pickled = io.BytesIO()
    torch.save({"state_dict": {}}, pickled)
    for name, content in (("ticket_truncated", data[:-100]), ("ticket_tampered", bytes(flipped)),
                          ("ticket_newer", len(text).to_bytes(8, "little") + text + data[8 + size:]),
                          ("ticket_pickle", pickled.getvalue())):
        out[name] = root / name / "ticket.safetensors"
        out[name].parent.mkdir()
        out[name].write_bytes(content)


def _prepare_data_changes(root: Path, out: dict[str, Path]) -> None:
    """A search-only run on an image folder, copied three times: to resume with a copy of the same images,
    with other images, and after its images changed in place."""
    _image_folder(root / "images_a")
    shutil.copytree(root / "images_a", root / "images_same")
    shutil.copytree(root / "images_a", root / "images_used")
    _image_folder(root / "images_b")
    _png(root / "images_b" / "train" / "a" / "0.png", value=200)
    run = root / "img_run"
    rc, _, err = cli("run", *IMAGES, "dataset=imagefolder", f"dataset.root={root / 'images_used'}",
                     "stages=[search]", f"hydra.run.dir={run}")
    assert rc == 0, err
    for name in ("img_other", "img_same", "img_changed"):
        out[name] = _copy_run(run, root / name)
    _png(root / "images_used" / "test" / "b" / "1.png", value=99)  # changed in place, same size


def _prepare_caches(root: Path, out: dict[str, Path]) -> None:
    """An artifact cache holding the pretraining of FAST + PRETRAIN, and copies of it with one damage each."""
    good = root / "cache_good"
    rc, _, err = cli("run", *FAST, *PRETRAIN, f"runtime.cache_dir={good}", f"hydra.run.dir={root / 'cache_run'}")
    assert rc == 0, err
    out["cache_good"] = good
    out["cache_empty"] = root / "cache_empty" / "artifacts"  # the fault's cache (it knows it by that name)
    for name in ("cache_escape", "cache_link", "cache_checksum", "cache_bad_marker"):
        out[name] = root / name
        shutil.copytree(good, out[name])
        entry = next(p for p in (out[name] / "pretrain").iterdir() if p.is_dir())
        marker = entry / "DONE.json"
        info = json.loads(marker.read_text())
        if name == "cache_escape":
            info["artifacts"]["../../escaped.pt"] = info["artifacts"]["weights.pt"]
            marker.write_text(json.dumps(info))
        elif name == "cache_link":  # a consistent record: the checksum is the linked file's
            (entry / "weights.pt").unlink()
            (entry / "weights.pt").symlink_to(root / VICTIM)
            info["artifacts"]["weights.pt"] = hashlib.sha256(VICTIM_TEXT.encode()).hexdigest()
            marker.write_text(json.dumps(info))
        elif name == "cache_checksum":
            weights = bytearray((entry / "weights.pt").read_bytes())
            weights[len(weights) // 2] ^= 0x01
            (entry / "weights.pt").write_bytes(bytes(weights))
        else:
            marker.write_text('{"artifacts": {')


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
    folders = {"fresh": tmp_path / "run", "done": finished, "data": inputs.get(case.data, tmp_path),
               "inputs": inputs["empty_dir"].parent}
    before = snapshot(finished)
    if case.readonly:
        rc, out, err = run_read_only(case, folders)
    else:
        with faults.installed(case.fault):
            rc, out, err = cli(*expand(case, folders))
    check_answer(case, rc, out, err, folders)
    assert snapshot(finished) == before, "a bad input changed a finished run"
    assert not (finished / "failed.json").exists()
    assert (folders["inputs"] / VICTIM).read_text() == VICTIM_TEXT, "a planted link was written through"


def check_answer(case: Case, rc: int, out: str, err: str, folders: dict[str, Path]) -> str:
    """The answer the row expects; returns the message as the table shows it."""
    assert "Traceback" not in out + err, err
    if case.ok:
        assert rc == 0, f"refused: {out[-2000:]}{err[-2000:]}"
        line = found_line(case.message, out, err, folders)
        assert line, f"{case.message!r} not in the output or the run's log:\n{out[-3000:]}{err[-3000:]}"
        return line
    assert rc == (case.code or rc) and rc != 0, f"exit {rc}: {out[-2000:]}{err[-2000:]}"
    message = message_of(err)
    assert case.message in message, message
    # exactly one line: no framing of Hydra's, no warnings, no native library noise
    assert len(message.splitlines()) == 1, message
    return message


def found_line(text: str, out: str, err: str, folders: dict[str, Path]) -> str:
    """The line holding `text`: in the run's log (its file handler writes whole lines), else in the output
    (a console may wrap a line: its whitespace is joined)."""
    for folder in (folders["fresh"], folders["data"]):
        log = folder / "run.log"
        if log.is_file() and not log.is_symlink():
            for line in log.read_text(errors="replace").splitlines():
                if text in line:
                    return re.sub(r"^\[[^]]*\]\[[^]]*\]\[(\w+)\] ", lambda m: f"{m.group(1).lower()}: ", line)
    for line in err.splitlines():  # a warning of a command without a run log (report): one line on stderr
        if text in line:
            return line.strip()
    joined = " ".join((out + "\n" + err).split())
    if text in joined:
        start = joined.rfind("WARNING", 0, joined.index(text))
        return joined[start if start >= 0 else joined.index(text):].split(" │")[0][:400]
    return ""


def run_read_only(case: Case, folders: dict[str, Path]) -> tuple[int, str, str]:
    """The row in a real process, with its `readonly` folders mounted read-only."""
    if not faults.can_sandbox():
        pytest.skip("this machine allows no unprivileged mount namespace (unshare -Urm)")
    readonly = [Path(f.format(**{k: str(v) for k, v in folders.items()})) for f in case.readonly]
    cmd, env = faults.sandboxed(faults.command(case.fault, expand(case, folders)), readonly)
    proc = subprocess.run(cmd, cwd=REPO, env={**_env_of_process(), **env}, capture_output=True, text=True,
                          timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def _env_of_process() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


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
    """Run every case through a real `python -m ltsearch` process (with its fault injected, or its folders
    mounted read-only) and return the Markdown table of messages."""
    import tempfile

    rows = ["| # | bad input | command | exit | message (stderr; for exit 0 the warning or log "
            "line) |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        os.environ["LTSEARCH_CACHE"] = str(tmp_path / "cache")  # the preparing runs, in this process, too
        env = {**_env_of_process(), "LTSEARCH_CACHE": str(tmp_path / "cache")}
        finished = tmp_path / "finished"
        subprocess.run([sys.executable, "-m", "ltsearch", "run", *FAST, f"hydra.run.dir={finished}"], env=env,
                       check=True, capture_output=True)
        inputs = prepare_data(tmp_path / "inputs", finished)
        for number, case in enumerate(CASES, 1):
            folders = {"fresh": tmp_path / f"fresh_{number}", "done": finished,
                       "data": inputs.get(case.data, tmp_path), "inputs": tmp_path / "inputs"}
            args = expand(case, folders)
            if case.readonly and not faults.can_sandbox():
                continue
            if case.readonly:
                rc, out, err = run_read_only(case, folders)
            else:
                proc = subprocess.run(faults.command(case.fault, args), cwd=REPO, env=env, capture_output=True,
                                      text=True)
                rc, out, err = proc.returncode, proc.stdout, proc.stderr
            try:
                message, mark = check_answer(case, rc, out, err, folders), ""
            except AssertionError:
                message, mark = message_of(err), " FAIL"
            lines = message.replace(str(tmp_path), "/tmp/x").splitlines()
            shown = " ⏎ ".join(lines[:4]) + (" ⏎ …" if len(lines) > 4 else "")
            shown_args = [a for a in args if a not in FAST and a not in IMAGES and a not in PRETRAIN]
            command = "ltsearch " + " ".join(shown_args).replace(str(tmp_path), "/tmp/x").replace("\n", "\\n")
            how = f" (fault `{case.fault}`)" if case.fault else " (read-only mount)" if case.readonly else ""
            rows.append(f"| {number} | {case.what}{how} | `{command}` | {rc}{mark} | "
                        f"{shown.replace('|', '&#124;')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
