"""`ltsearch <command>`: a thin dispatcher in front of the Hydra app.

`run` hands its arguments to Hydra unchanged (so -m, --cfg job, --help, --info and sweeps behave as in
any Hydra app); `resume` re-enters a run directory with the overrides it was created with; `report`
tabulates finished runs. Shell completion is Hydra's, with the word `run` removed before Hydra parses.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ltsearch.errors import LtsearchError
from ltsearch.version import __version__

USAGE = """usage: ltsearch <command> [args]

commands:
  run [-q|-v] [OVERRIDES...]
                         compose a config from conf/ and run the pipeline (a Hydra app: -m for sweeps,
                         --cfg job to print the config, --help for the config groups and their options);
                         -q: warnings and one closing line only, -v: every epoch too (run.log has all)
  resume RUN_DIR [-q|-v] [OVERRIDES...]
                         continue a killed or stopped run in place (finished stages are skipped); extra
                         overrides may change runtime.* settings only
  report DIR... [--csv FILE] [--plots DIR] [--layers-at SPARSITY] [--no-plots]
                         tables (method x sparsity: accuracy mean +- std over seeds, cost; sanity
                         verdicts; failed runs) and plots (PNG, PDF, SVG) of the runs found below each DIR
  cache ls|clear [--kind KIND] [--older-than AGE] [--dry-run] [--dir DIR]
                         the artifact cache and decoded datasets: entries with sizes and ages; remove them
  --version              ltsearch's version

examples:
  ltsearch run                                        # quickstart: CTS-KL on MNIST-1D, a few CPU minutes
  ltsearch run pruner=cts_kl sparsity=0.993
  ltsearch run -m pruner=cts_kl,magnitude sparsity=0.9,0.99 seed=0,1
  ltsearch run -m +sweep=paper_grid pruner=cts_kl    # density 0.8^k, k = 2..32, seeds 0-2 (summary in the sweep dir)
  ltsearch report outputs/sweeps/<date> --csv results/summary.csv
  ltsearch run experiment=lenet_mnist pruner=magnitude sparsity=0.9 dataset.root=DATA_DIR
  ltsearch run model=custom model._target_=torchvision.models.resnet18 dataset=cifar10 dataset.root=DATA_DIR
  ltsearch run logger=tensorboard                     # besides RUN_DIR/metrics.csv; also wandb, mlflow
  ltsearch cache ls
  ltsearch run --help                                 # config groups and options
  eval "$(ltsearch run -sc install=bash)"             # tab completion
"""

VERBOSITY_FLAGS = {"-q": "quiet", "--quiet": "quiet", "-v": "verbose", "--verbose": "verbose"}
# (config group, option) -> (the module its Hydra plugin or package needs, the ltsearch extra that installs it)
PLUGINS = {
    ("hydra/launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    ("hydra/launcher", "slurm"): ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("hydra/launcher", "submitit_slurm"): ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("hydra/launcher", "submitit_local"): ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("hydra/sweeper", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
    ("sweep", "optuna_cts"): ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
}


def _error(message: str) -> int:
    print(f"ltsearch: error: {message}", file=sys.stderr)
    return 2


def _quote(value: str) -> str:
    """Quote a value for a Hydra override (paths of sweep jobs contain '=' and ',')."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def config_groups() -> list[str]:
    """The config groups shipped in conf/ (folders other than hydra/)."""
    from importlib.resources import files

    root = files("ltsearch.conf")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__"))


def check_group_overrides(args: list[str]) -> str | None:
    """Hydra answers `model=0.993` with a raw traceback; catch a number given for a config group here."""
    groups = config_groups()
    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in groups:
            continue
        for item in value.split(","):
            try:
                float(item)
            except ValueError:
                continue
            return (f"'{arg}': {key} is a config group; choose an option by name "
                    f"(ltsearch run --help lists them), or set a key inside it, e.g. {key}.<key>={item}")
    return None


def check_output_dirs(args: list[str]) -> str | None:
    """Hydra answers a run/sweep directory that is an existing file with a traceback; say it in one line."""
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in ("hydra.run.dir", "hydra.sweep.dir"):
            path = Path(value.strip("'\"")).expanduser()
            if path.exists() and not path.is_dir():
                return f"'{arg}': {path} exists and is not a directory; {key} must name a folder"
    return None


def check_plugins(args: list[str]) -> str | None:
    """A launcher, sweeper or sweep config whose plugin is not installed: name the pip command that adds it
    (Hydra would only say that the option does not exist)."""
    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        for option in value.strip("[]").split(",") if sep else ():
            needed = PLUGINS.get((key, option.strip()))
            if needed and not _installed(needed[0]):
                return f"'{arg}' needs the {needed[1]} extra, which is not installed: pip install 'ltsearch[{needed[1]}]'"
    return None


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def verbosity_overrides(args: list[str]) -> list[str]:
    """`-q`/`--quiet` and `-v`/`--verbose` as the override runtime.verbosity=quiet|verbose (the last wins)."""
    flags = [VERBOSITY_FLAGS[a] for a in args if a in VERBOSITY_FLAGS]
    rest = [a for a in args if a not in VERBOSITY_FLAGS]
    if not flags:
        return rest
    # beside the other overrides: Hydra's parser takes them as one run of positional arguments
    at = next((i for i, a in enumerate(rest) if "=" in a and not a.startswith("-")), len(rest))
    return [*rest[:at], f"runtime.verbosity={flags[-1]}", *rest[at:]]


def _hydra(args: list[str]) -> int:
    from ltsearch.app import main as hydra_main

    if "--version" in args:  # Hydra would print its own version
        print(f"ltsearch {__version__}")
        return 0
    args = verbosity_overrides(args)
    problem = check_group_overrides(args) or check_output_dirs(args) or check_plugins(args)
    if problem:
        return _error(problem)
    prog = sys.argv[0] if sys.argv and sys.argv[0] else "ltsearch"
    if os.path.basename(prog) == "__main__.py":  # `python -m ltsearch`: Hydra's help and completion say ltsearch
        prog = "ltsearch"
    sys.argv = [prog, *args]
    hydra_main()
    return 0


def _completion(args: list[str]) -> int:
    """Shell completion query: drop the subcommand word from COMP_LINE so Hydra sees only overrides."""
    line = os.environ.get("COMP_LINE", "")
    words = line.split(" ")
    if len(words) == 2:  # the command word itself ("ltsearch <TAB>", "ltsearch ru<TAB>")
        print(" ".join(COMMANDS))
        return 0
    if len(words) > 2 and words[1] == "run":
        os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]])
    elif len(words) > 2:
        print("")
        return 0
    return _hydra(args)


def _resume(args: list[str]) -> int:
    from ltsearch.config import RUNTIME_KEYS
    from ltsearch.rundir import read_record

    if not args or args[0].startswith("-"):
        return _error("resume needs a run directory: ltsearch resume RUN_DIR [runtime.*=...]")
    run_dir, extra = Path(args[0]), verbosity_overrides(args[1:])
    if not run_dir.is_dir():
        return _error(f"{run_dir} is not a directory")
    try:
        record = read_record(run_dir)
    except LtsearchError as exc:
        return _error(str(exc))
    allowed = (*RUNTIME_KEYS, "hydra")
    keys = [o.lstrip("+~").partition("=")[0] for o in extra]
    bad = [o for o, k in zip(extra, keys, strict=True)
           if not any(k == a or k.startswith(f"{a}.") for a in allowed)]
    if bad:
        return _error(f"resume accepts overrides of runtime-only settings ({', '.join(RUNTIME_KEYS)}) and hydra.* "
                      f"only, got {' '.join(bad)}; a changed experiment needs a new run directory")
    overrides = [*record["overrides"], *extra, f"hydra.run.dir={_quote(str(run_dir.resolve()))}"]
    return _hydra(overrides)


def _report(args: list[str]) -> int:
    from ltsearch.report import main as report_main

    try:
        return report_main(args)
    except LtsearchError as exc:
        return _error(str(exc))


def _cache(args: list[str]) -> int:
    from ltsearch.cache_admin import main as cache_main

    try:
        return cache_main(args)
    except LtsearchError as exc:
        return _error(str(exc))


COMMANDS = {"run": _hydra, "resume": _resume, "report": _report, "cache": _cache}


def main(argv: list[str] | None = None) -> int:
    """The `ltsearch` command; a reader that goes away (`ltsearch report ... | head`) ends it quietly."""
    try:
        return _main(argv)
    except BrokenPipeError:
        from ltsearch.runtime import silence_stdout

        silence_stdout()
        return 0


def _main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    if command in ("--version", "-V"):
        print(f"ltsearch {__version__}")
        return 0
    if command in ("-sc", "--shell-completion"):
        return _completion(args)
    if command in COMMANDS:
        return COMMANDS[command](rest)
    return _error(f"unknown command '{command}' (commands: {', '.join(COMMANDS)}; see ltsearch --help)")


if __name__ == "__main__":
    sys.exit(main())
