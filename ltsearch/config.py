"""Typed configuration: the schema every composed config is validated against (a leaf: it imports nothing
else of ltsearch, so every layer may use it).

Hydra composes YAML from `conf/` on top of these dataclasses, so types and enum values are checked at
compose time with Hydra's own messages. Ranges and cross-field rules live in `__post_init__` and run when
the typed object is built (`ltsearch.compose.to_config`, first thing in every run); names that refer to a
registry (model, dataset, pruner, objective, stages) are checked there too. Pruner schemas live beside
their pruner (one file per method).

Why this module is long: it is the one schema of every config group but the pruners', each key with its
default, its range check and a line that says what it means; split, a reader would hunt for a key.
"""

from __future__ import annotations

import os
from dataclasses import MISSING as MISSING_FIELD
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf


class When(str, Enum):
    """Pruning point: the initial weights, or the weights after `train.rewind_epoch` epochs of dense training."""

    init = "init"
    rewind = "rewind"


class Optimizer(str, Enum):
    sgd = "sgd"
    adam = "adam"
    adamw = "adamw"


class Schedule(str, Enum):
    constant = "constant"
    multistep = "multistep"
    cosine = "cosine"


class Augment(str, Enum):
    none = "none"
    flip = "flip"
    crop_flip = "crop_flip"  # random crop of the image padded by 4 by reflection (the CTS protocol) + flip
    crop_flip_zero = "crop_flip_zero"  # the same with zero padding (torchvision's RandomCrop(32, 4), open_lth)
    resized_crop_flip = "resized_crop_flip"  # ImageNet's random-resized crop + flip (image folders streamed)


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class Shortcut(str, Enum):
    conv1x1 = "conv1x1"
    conv3x3 = "conv3x3"


class Head(str, Enum):
    """How model=cnn1d feeds its last feature map to the linear head: `flatten` (every position, a head of
    channels x length inputs) or `avgpool` (the mean over positions, a head of channels inputs, as ResNets
    and the CIFAR VGGs do)."""

    flatten = "flatten"
    avgpool = "avgpool"


class BNInit(str, Enum):
    """BatchNorm weights at initialisation (biases are 0 in both): `ones` (PyTorch's own reset), `uniform`
    (gamma ~ U(0, 1), as open_lth's CIFAR defaults and the CTS authors' networks)."""

    ones = "ones"
    uniform = "uniform"


class BNStats(str, Enum):
    """What BatchNorm normalises with: `running` (PyTorch's standard: batch statistics in training, running
    averages in evaluation), `batch` (no running statistics at all: every forward pass normalises with the
    statistics of its own batch, in training, evaluation and search, as the CTS authors' networks do)."""

    running = "running"
    batch = "batch"


class BiasInit(str, Enum):
    """Biases of conv and linear layers at initialisation: `zeros`, or `torch` (kept as PyTorch's layer
    constructor draws them, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as open_lth and the CTS authors leave them)."""

    zeros = "zeros"
    torch = "torch"


class SanityVariant(str, Enum):
    """Perturbations of the found ticket for the sanity stage (see ltsearch/stages/sanity.py)."""

    shuffle = "shuffle"
    invert = "invert"
    reinit = "reinit"
    random = "random"


class Verbosity(str, Enum):
    """What the console shows: quiet (warnings, errors and one closing line), normal (the run directory,
    progress bars, one line per finished stage, the summary), verbose (also every epoch and detail line).
    run.log always gets everything."""

    quiet = "quiet"
    normal = "normal"
    verbose = "verbose"


class LayerCollapse(str, Enum):
    """What the search stage does when a mask leaves a layer with no weight at all (the network is cut)."""

    warn = "warn"
    error = "error"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class ModelConfig:
    """Architecture. `exclude` lists fnmatch patterns of weight names that are never pruned.

    `bn_init`, `bn_stats` and `bias_init` apply to every built-in network (`model=custom` keeps its
    constructor's initialisation, so only `bn_stats` applies to it); the defaults are PyTorch's standard
    BatchNorm with ltsearch's zero biases, and the presets choose per reference (README, Paper presets)."""

    name: str = MISSING
    depth: int = 0
    width: int = 0
    hidden: list[int] = field(default_factory=list)
    shortcut: Shortcut = Shortcut.conv1x1
    head: Head = Head.flatten
    bn_init: BNInit = BNInit.ones
    bn_stats: BNStats = BNStats.running
    bias_init: BiasInit = BiasInit.zeros
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _require(self.depth >= 0 and self.width >= 0, "model.depth and model.width must be >= 0")
        _require(all(h > 0 for h in self.hidden), f"model.hidden sizes must be positive, got {self.hidden}")


@dataclass
class DatasetConfig:
    """Where the data comes from and how it is normalised and augmented (on the training device)."""

    name: str = MISSING
    root: str = "data"
    download: bool = False
    augment: Augment = Augment.none
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    train_subset: int = 0
    test_subset: int = 0
    # imagenet_folder: network input size, evaluation resize (shorter side), random-resized crop's area range
    image_size: int = 224
    resize_size: int = 256
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    # fake data only
    shape: list[int] = field(default_factory=list)
    num_classes: int = 0
    train_size: int = 0
    test_size: int = 0

    def __post_init__(self) -> None:
        _require(self.train_subset >= 0 and self.test_subset >= 0, "dataset subsets must be >= 0 (0 = all)")
        _require(len(self.mean) == len(self.std), "dataset.mean and dataset.std must have the same length")
        _require(all(s > 0 for s in self.std), "dataset.std entries must be positive")
        _require(all(s > 0 for s in self.shape), f"dataset.shape entries must be positive, got {list(self.shape)}")
        _require(0 < self.image_size <= self.resize_size, "need 0 < dataset.image_size <= dataset.resize_size")
        _require(len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
                 f"dataset.crop_scale must be [low, high] with 0 < low <= high <= 1, got {self.crop_scale}")


@dataclass
class TrainConfig:
    """One training schedule, shared by dense pretraining, IMP levels and retraining of the ticket."""

    epochs: int = MISSING
    batch_size: int = 128
    optimizer: Optimizer = Optimizer.sgd
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    schedule: Schedule = Schedule.multistep
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    rewind_epoch: int = 0
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        _require(self.epochs > 0, f"train.epochs must be > 0, got {self.epochs}")
        _require(self.batch_size > 0, f"train.batch_size must be > 0, got {self.batch_size}")
        _require(self.eval_batch_size > 0, "train.eval_batch_size must be > 0")
        _require(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _require(0 <= self.momentum < 1, f"train.momentum must be in [0, 1), got {self.momentum}")
        _require(not self.nesterov or self.momentum > 0, "train.nesterov needs train.momentum > 0")
        _require(self.weight_decay >= 0, "train.weight_decay must be >= 0")
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.betas: two values in [0, 1)")
        _require(0 < self.gamma <= 1, "train.gamma must be in (0, 1]")
        _require(0 <= self.warmup_epochs < self.epochs, "train.warmup_epochs must be in [0, epochs)")
        _require(
            0 <= self.rewind_epoch < self.epochs,
            f"train.rewind_epoch must be in [0, epochs={self.epochs}), got {self.rewind_epoch} (set it with "
            f"train.rewind_epoch=N; search_protocol=quickstart sets 3 for the CTS pruners on train=mnist1d)",
        )
        _require(
            all(0 < m < self.epochs for m in self.milestones),
            f"train.milestones must lie inside (0, epochs={self.epochs}), got {self.milestones}",
        )


@dataclass
class ObjectiveConfig:
    """What a mask search preserves (`ltsearch.objectives`: the task loss, the dense network's outputs, ...)."""

    name: str = "task"
    temperature: float = 1.0

    def __post_init__(self) -> None:
        _require(self.temperature > 0, "objective.temperature must be > 0")


@dataclass
class SanityConfig:
    """Sanity checks of the ticket: which perturbed variants to retrain, and the margin (in accuracy, 0.005
    = 0.5 percentage points) by which the ticket must beat each of them to pass."""

    # `invert` (the lowest scores) is left out of the default: every ticket beats it by a wide margin, and
    # it costs a retraining like the others; `reinit` runs only for masks found at initialisation.
    variants: list[SanityVariant] = field(
        default_factory=lambda: [SanityVariant.shuffle, SanityVariant.reinit, SanityVariant.random]
    )
    margin: float = 0.005
    # Also retrain the unpruned network from the ticket's starting weights with the ticket's budget: the
    # dense reference that the summary quotes beside the ticket (a reference, not a check; one retraining).
    dense: bool = False

    def __post_init__(self) -> None:
        _require(0.0 <= self.margin < 1.0, f"sanity.margin must be in [0, 1) (accuracy, 0.005 = 0.5 points), "
                                           f"got {self.margin}")
        _require(len(set(self.variants)) == len(self.variants), f"sanity.variants lists a variant twice: "
                                                                f"{self.variants}")


@dataclass
class RuntimeConfig:
    """How to run, not what to compute: excluded from the resume check, so it can change between sessions."""

    device: str = "auto"
    precision: Precision = Precision.auto
    channels_last: bool = True
    compile: bool = False
    threads: int = 0
    deterministic: bool = True
    progress: bool = True
    verbosity: Verbosity = Verbosity.normal  # `ltsearch run -q` / `-v` set it
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    data_on_device: str = "auto"
    # Several processes: BatchNorm on the whole global batch (SyncBatchNorm) instead of each process's rows.
    sync_batchnorm: bool = False
    # imagenet_folder: images decoded once into memory|read every epoch (stream)|auto; workers: -1 = auto
    data_storage: str = "auto"
    data_workers: int = -1
    # Reuse upstream work (dense pretraining, IMP levels) across runs with the same upstream config.
    cache: bool = True
    cache_dir: str = ""  # "" = $LTSEARCH_CACHE/artifacts, else ~/.cache/ltsearch/artifacts

    def __post_init__(self) -> None:
        _require(
            self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:"),
            f"runtime.device must be auto, cpu, cuda, cuda:N or mps, got '{self.device}'",
        )
        _require(self.threads >= 0, "runtime.threads must be >= 0 (0 = torch default)")
        cpus = os.cpu_count() or 1
        _require(self.threads <= cpus, f"runtime.threads={self.threads} is more than the {cpus} CPUs of this "
                                       f"machine (0 = torch's default)")
        _require(self.checkpoint_every >= 1, "runtime.checkpoint_every must be >= 1")
        _require(self.keep_checkpoints >= 1, "runtime.keep_checkpoints must be >= 1")
        _require(self.data_on_device in ("auto", "true", "false"), "runtime.data_on_device: auto, true or false")
        _require(self.data_storage in ("auto", "memory", "stream"), "runtime.data_storage: auto, memory or stream")
        _require(self.data_workers >= -1, "runtime.data_workers must be >= 0, or -1 (auto)")


@dataclass
class TensorBoardConfig:
    """TensorBoard event files under RUN_DIR/<dir> (`logger=tensorboard`)."""

    enabled: bool = False
    dir: str = "tensorboard"


@dataclass
class WandbConfig:
    """Weights & Biases (`logger=wandb`, the `wandb` extra). `mode`: offline (files under RUN_DIR/wandb, sync
    later with `wandb sync`), online, or disabled."""

    enabled: bool = False
    project: str = "ltsearch"
    entity: str = ""
    mode: str = "offline"
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _require(self.mode in ("offline", "online", "disabled"),
                 f"logger.wandb.mode must be offline, online or disabled, got '{self.mode}'")


@dataclass
class MLflowConfig:
    """MLflow (`logger=mlflow`, the `mlflow` extra). `tracking_uri` "" = a local store, RUN_DIR/mlflow.db."""

    enabled: bool = False
    tracking_uri: str = ""
    experiment: str = "ltsearch"


@dataclass
class LoggerConfig:
    """Experiment loggers. RUN_DIR/metrics.csv is always written; the others are switched on by the
    `logger` config group (`logger=tensorboard`, `logger=[tensorboard,mlflow]`) or `logger.<name>.enabled`."""

    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)


@dataclass
class Config:
    """The whole experiment. `sparsity` is the fraction of prunable weights removed."""

    seed: int = 0
    sparsity: float = 0.9
    # names from the stage registry (ltsearch.stages.STAGES); they run in the registry's order
    stages: list[str] = MISSING
    model: Any = MISSING
    dataset: Any = MISSING
    train: Any = MISSING
    pruner: Any = MISSING
    objective: Any = MISSING
    sanity: SanityConfig = field(default_factory=SanityConfig)
    layer_collapse: LayerCollapse = LayerCollapse.warn
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # The number `ltsearch run` returns to a Hydra sweeper (Optuna): a dotted key of results.json
    sweep_metric: str = "test_acc"

    def __post_init__(self) -> None:
        _require(-(2**63) <= self.seed < 2**64, f"seed must be a 64-bit integer (from -2**63 to 2**64 - 1), "
                                                f"got {self.seed}")
        _require(
            isinstance(self.sparsity, float | int) and 0.0 <= float(self.sparsity) < 1.0,
            f"sparsity must be in [0, 1) (the fraction of prunable weights removed), got {self.sparsity}",
        )
        _require(len(self.stages) > 0, "stages must name at least one stage")
        _require(len(set(self.stages)) == len(self.stages), f"stages lists a stage twice: {list(self.stages)}")

    @property
    def density(self) -> float:
        return 1.0 - float(self.sparsity)


# Keys that describe how (or from where) to run rather than what to compute; a resumed run may change them.
# (layer_collapse only decides whether a run stops on a collapsed layer, loggers only copy numbers elsewhere,
# sweep_metric only picks one of them; none changes a number.)
RUNTIME_KEYS = ("runtime", "stages", "dataset.root", "dataset.download", "layer_collapse", "logger",
                "sweep_metric")


def config_container(cfg: Config | DictConfig) -> dict[str, Any]:
    """Plain, resolved dict of a config (enums as names), for records, diffs and results.json."""
    node = OmegaConf.structured(cfg) if isinstance(cfg, Config) else cfg
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)  # type: ignore[return-value]


def schema_defaults(cfg: Config) -> dict[str, Any]:
    """Dotted key -> the schema's default value, for every key of `cfg` whose dataclass field has a
    default (enums as names), e.g. {"sanity.margin": 0.005, "pruner.lr": 0.1, ...}."""
    out: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in fields(obj):
            value = getattr(obj, f.name)
            if is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            elif f.default is not MISSING_FIELD:
                out[prefix + f.name] = f.default.value if isinstance(f.default, Enum) else f.default
            elif f.default_factory is not MISSING_FIELD:
                default = f.default_factory()
                out[prefix + f.name] = [v.value if isinstance(v, Enum) else v for v in default] \
                    if isinstance(default, list) else default

    walk(cfg, "")
    return out


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested dict; lists are compared as values."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}
