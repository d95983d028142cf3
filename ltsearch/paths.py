"""Every name ltsearch gives a file or folder, in one module (as open_lth keeps its paths).

A run folder:

    RUN_DIR/run.json                 the run's own record of its config, written once
    RUN_DIR/.lock                    held (flock) by the one process working on the run
    RUN_DIR/run.log                  the log of every session
    RUN_DIR/metrics.csv              every number the run logged (loop, epoch, metric, value)
    RUN_DIR/{tensorboard/,wandb/,mlflow.db}  the optional experiment loggers' files
    RUN_DIR/failed.json              the last session's failure (stage and error), removed by a clean finish
    RUN_DIR/data.json                the identity of the data the run was computed on (content, first root)
    RUN_DIR/<stage>/...              one folder per pipeline stage (search, rewind, retrain, sanity, evaluate)
    <any artifact folder>/DONE.json  completion marker, written last: wall time, compute, SHA-256 per artifact
    <any artifact folder>/clock.json elapsed time and compute up to the last persisted progress
    <any artifact folder>/checkpoints/{index.json,epoch_NNNN.pt}   epoch checkpoints of a resumable loop

Inside the stages: search/{pruning_point.pt, mask.pt, scores.pt, density.json, metrics.json, levels.json,
pretrain/, cts/, level_NN/}, rewind/ticket.pt, retrain/{metrics.json, final.pt},
sanity/{sanity.json, <variant>/{mask.pt, result.json}}, evaluate/{results.json, ticket.safetensors};
`ltsearch export` writes into RUN_DIR/export/ unless told otherwise.

A sweep folder adds summary.csv, summary_*.csv, summary.txt, the plots (PNG, PDF, SVG) and `.summary.lock`.
The artifact cache lives under `cache_root()/artifacts/<kind>/<key>/`, decoded image folders under `cache_root()`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# -- the run folder ----------------------------------------------------------------------------------------------
RECORD = "run.json"
LOCK = ".lock"
LOG = "run.log"
METRICS_CSV = "metrics.csv"  # every loop's per-epoch numbers, stage times and results, one row per number
MLFLOW_DB = "mlflow.db"  # logger=mlflow: the local MLflow store
MLFLOW_ARTIFACTS = "mlartifacts"  # logger=mlflow: its artifact folder
FAILURE = "failed.json"
DATA_RECORD = "data.json"
HYDRA = ".hydra"

# -- any artifact folder ------------------------------------------------------------------------------------------
MARKER = "DONE.json"
CLOCK = "clock.json"
CHECKPOINTS = "checkpoints"
CHECKPOINT_INDEX = "index.json"
METRICS = "metrics.json"  # per-epoch records of a loop (search/metrics.json: the search stage's record)
TMP_MARK = ".tmp-"  # infix of the temporary files atomic writes rename into place


def checkpoint_file(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pt"


# -- the pipeline stages, in the order they run (each is a folder of the run) -------------------------------------
SEARCH = "search"
REWIND = "rewind"
RETRAIN = "retrain"
SANITY = "sanity"
EVALUATE = "evaluate"

# -- artifacts ---------------------------------------------------------------------------------------------------
PRUNING_POINT = "pruning_point.pt"  # search: dense weights where the mask was found
MASK = "mask.pt"  # search, sanity variants, IMP levels: weight name -> bool tensor
SCORES = "scores.pt"  # search: per-weight scores or CTS logits (higher = keep)
DENSITY = "density.json"  # search: per-layer density report
LEVELS = "levels.json"  # search (IMP/LTR): density and accuracy of every level
WEIGHTS = "weights.pt"  # search/pretrain and IMP levels: trained weights
TICKET = "ticket.pt"  # rewind: {state_dict, masks, start_epoch}
FINAL = "final.pt"  # retrain: {state_dict, masks}
SANITY_SUMMARY = "sanity.json"  # sanity: verdicts
VARIANT_RESULT = "result.json"  # sanity/<variant>: accuracy or skip reason
RESULTS = "results.json"  # evaluate: the one record a report reads
TICKET_FILE = "ticket.safetensors"  # evaluate: the evaluated network as a compact ticket file (ltsearch.ticketfile)
EXPORT = "export"  # RUN_DIR/export/: what `ltsearch export RUN_DIR` writes by default

# -- parts of stages ---------------------------------------------------------------------------------------------
PRETRAIN = "pretrain"  # search/pretrain: dense training to the rewind point
CTS_SEARCH = "cts"  # search/cts: the resumable Concrete Ticket Search


def imp_level(level: int) -> str:
    return f"level_{level:02d}"


# -- a sweep folder ----------------------------------------------------------------------------------------------
def job_folder(override_dirname: str) -> str:
    """The folder name of a sweep job from its overrides (`key=value,key=value`, Hydra's override_dirname):
    one folder per job, whatever the values hold. A `/` would nest folders (and `dataset.root=../..` would
    climb out of the sweep), a control character would break a line: they, and `%` itself, are written as
    %XX. A name too long for a filesystem keeps its start and a hash of the whole."""
    name = "".join(f"%{ord(c):02X}" if c in "%/" or ord(c) < 32 or ord(c) == 127 else c for c in override_dirname)
    if len(name.encode()) > 200:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        name = name.encode()[:180].decode(errors="ignore") + f"...{digest}"
    return name


SUMMARY_LOCK = ".summary.lock"
SUMMARY_CSV = "summary.csv"
SUMMARY_TXT = "summary.txt"
# plots: one file per format, named <stem>.<format>
PLOT_FORMATS = ("png", "pdf", "svg")
ACCURACY_PLOT = "accuracy_vs_sparsity"
SANITY_PLOT = "sanity_margins"
LAYER_PLOT = "layer_density_"


def layer_plot(sparsity: float) -> str:
    return f"{LAYER_PLOT}{sparsity:g}"


def plot_files(folder: Path) -> list[Path]:
    """Every plot a report wrote into `folder` (what a rebuilt report replaces)."""
    stems = (ACCURACY_PLOT, SANITY_PLOT, f"{LAYER_PLOT}*")
    return sorted(p for stem in stems for fmt in PLOT_FORMATS for p in Path(folder).glob(f"{stem}.{fmt}"))


# -- readers of finished runs ------------------------------------------------------------------------------------
def results_file(run_dir: Path) -> Path:
    return Path(run_dir) / EVALUATE / RESULTS


def levels_file(run_dir: Path) -> Path:
    return Path(run_dir) / SEARCH / LEVELS


def sanity_file(run_dir: Path) -> Path:
    return Path(run_dir) / SANITY / SANITY_SUMMARY


# -- caches ------------------------------------------------------------------------------------------------------
CACHE_ENV = "LTSEARCH_CACHE"
CACHE_SPEC = "spec.json"  # an artifact-cache entry's spec


def cache_root() -> Path:
    """$LTSEARCH_CACHE, else ~/.cache/ltsearch: decoded datasets here, shared upstream work in artifacts/."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "ltsearch"


def artifact_cache_dir(configured: str = "") -> Path:
    """The artifact cache: `runtime.cache_dir` when set, else cache_root()/artifacts."""
    return Path(configured).expanduser() if configured else cache_root() / "artifacts"
