"""`ltsearch <command>`: a thin dispatcher in front of the Hydra app.

`run` hands its arguments to Hydra unchanged (so -m, --cfg job, --help, --info and sweeps behave as in
any Hydra app; under torchrun each process joins the run's process group first, see `_distributed`); `resume` re-enters a run directory with the overrides it was created with; `report`
tabulates finished runs; `export` writes a run's ticket as a compact file, an ONNX model or a sparse program.
Shell completion is Hydra's, with the word `run` removed before Hydra parses.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ltsearch.distributed as distributed
from ltsearch.errors import Interrupted, LtsearchError, Refused
from ltsearch.overrides import (
    check_group_overrides,
    check_output_dirs,
    check_plugins,
    quote_home_paths,
    verbosity_overrides,
)
from ltsearch.refusals import refusals_in_one_line
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
  export RUN_DIR|TICKET_FILE [--format safetensors|onnx|sparse] [--weights trained|ticket] [--out FILE]
                         the ticket as a compact file (packed masks and kept values), an ONNX model checked
                         in onnxruntime, or a sparse TorchScript program (default: RUN_DIR/export/)
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
  ltsearch export outputs/runs/<run> --format onnx     # also: the default compact file, --format sparse
  ltsearch run --help                                 # config groups and options
  eval "$(ltsearch run -sc install=bash)"             # tab completion
"""


def _error(message: str, every_rank: bool = False) -> int:
    """The one line of a refusal. In a distributed run only rank 0 says what every process finds in its
    arguments; a refusal of the run itself is said by whichever process meets it (`every_rank`)."""
    if every_rank or os.environ.get("RANK", "0") == "0":
        print(f"ltsearch: error: {message}", file=sys.stderr)
    return 2


def _hydra(args: list[str]) -> int:
    from ltsearch.app import main as hydra_main

    if "--version" in args:  # Hydra would print its own version
        print(f"ltsearch {__version__}")
        return 0
    from ltsearch.models.custom import constructor_overrides

    args = constructor_overrides(quote_home_paths(verbosity_overrides(args)))
    problem = check_group_overrides(args) or check_output_dirs(args) or check_plugins(args)
    if problem:
        return _error(problem)
    prog = sys.argv[0] if sys.argv and sys.argv[0] else "ltsearch"
    if os.path.basename(prog) == "__main__.py":  # `python -m ltsearch`: Hydra's help and completion say ltsearch
        prog = "ltsearch"
    if distributed.launched():
        return _distributed(prog, args)
    sys.argv = [prog, *args]
    return _run_app(hydra_main)


def _run_app(hydra_main: Callable[[], Any]) -> int:
    """The Hydra app. A refusal ends it with its one line alone, an interruption with one line (printed by
    rank 0 of a distributed run)."""
    try:
        with refusals_in_one_line():
            hydra_main()
    except Refused as refusal:  # rank 0's errors reach the other ranks as PeerFailure, which stops them quietly
        _error(refusal.message, every_rank=True)
        return 1
    except Interrupted as stop:  # the pipeline wrote its failure record and says how to resume
        if distributed.is_main():
            print(f"ltsearch: {stop.message}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        if distributed.is_main():
            print("ltsearch: interrupted", file=sys.stderr)
        return 130
    return 0


# Other ranks log errors only, to the console, and leave Hydra's copy of the config to rank 0.
QUIET_RANK = ["hydra.output_subdir=null", "hydra.job_logging.root.level=ERROR",
              "hydra.job_logging.root.handlers=[console]", "~hydra.job_logging.handlers.file"]


def _distributed(prog: str, args: list[str]) -> int:
    """One process of a run over several (torchrun, or submitit tasks): join the process group, name the
    run folder with rank 0's start time, let rank 0 alone report an invalid config, run the Hydra app."""
    from ltsearch.app import main as hydra_main
    from ltsearch.distributed import LAUNCH_TIME_ENV

    distributed.setup()
    try:
        os.environ[LAUNCH_TIME_ENV] = repr(distributed.shared_launch_time())
        valid = distributed.on_main(lambda: _composes(args))
        if not valid and not distributed.is_main():
            distributed.barrier()  # until rank 0 has printed the error (the app on rank 0 fails with it)
            return 1
        sys.argv = [prog, *args, *([] if distributed.is_main() else QUIET_RANK)]
        try:
            return _run_app(hydra_main)
        finally:
            if not valid:
                distributed.barrier()
    finally:
        distributed.teardown()


def _composes(args: list[str]) -> bool:
    """Whether the overrides of a single run compose into a valid config (sweeps and flags: assumed so)."""
    from ltsearch.compose import compose

    if any(a.startswith("-") for a in args):
        return True
    try:
        compose(*[a for a in args if not a.lstrip("+~").startswith(("hydra.", "hydra/"))])
    except Exception:
        return False
    return True


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


# The run folder of `ltsearch resume` reaches Hydra through the environment: `hydra.run.dir` reads it with
# oc.env, whose value is taken as it is, so no character of the path (quote, backslash, `${`, `=`, `,`, a
# line break) can be mistaken for override or interpolation syntax.
RESUME_DIR_ENV = "LTSEARCH_RESUME_DIR"


def record_problem(overrides: object) -> str | None:
    """A run record's overrides are replayed by `resume`: they must be plain config overrides. Hydra's own
    settings (log handlers, callbacks, search path, run folder) and command-line flags are never taken from
    a file in a run folder, which others may have written."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        return "its overrides are not a list of strings"
    parser = OverridesParser.create()
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except Exception:  # Hydra's grammar errors, whatever their type
            return f"its override {text!r} is not a config override"
        key, package = override.key_or_group, override.package or ""
        if key == "hydra" or override.is_hydra_override() or package.split(".")[0] == "hydra":
            return (f"it lists the Hydra setting {text!r}; resume takes no hydra.* settings from a run folder "
                    f"(they choose log files, callbacks and paths): remove it from the record's overrides, or give "
                    f"it on the command line")
    return None


def _resume(args: list[str]) -> int:
    from ltsearch.config import RUNTIME_KEYS
    from ltsearch.guards import folder_problem
    from ltsearch.paths import RECORD
    from ltsearch.rundir import read_record

    if not args or args[0].startswith("-"):
        return _error("resume needs a run directory: ltsearch resume RUN_DIR [runtime.*=...]")
    run_dir, extra = Path(args[0]), verbosity_overrides(args[1:])
    if not run_dir.is_dir():
        return _error(folder_problem(run_dir, "run directory") or f"{run_dir} is not a directory")
    try:
        record = read_record(run_dir)
    except LtsearchError as exc:
        return _error(str(exc))
    problem = record_problem(record["overrides"])
    if problem:
        return _error(f"{run_dir / RECORD}: {problem}")
    allowed = (*RUNTIME_KEYS, "hydra")
    keys = [o.lstrip("+~").partition("=")[0] for o in extra]
    bad = [o for o, k in zip(extra, keys, strict=True)
           if not any(k == a or k.startswith(f"{a}.") for a in allowed)]
    if bad:
        return _error(f"resume accepts overrides of runtime-only settings ({', '.join(RUNTIME_KEYS)}) and hydra.* "
                      f"only, got {' '.join(bad)}; a changed experiment needs a new run directory")
    problem = folder_problem(run_dir, "run directory")
    if problem:
        return _error(f"{problem}: make it writable, or copy the run (cp -r) and resume the copy")
    if "${" in str(run_dir.resolve()):  # Hydra resolves its run folder's path again in its log settings
        return _error(f"cannot resume {run_dir}: its path holds '${{', which Hydra reads as an interpolation; "
                      f"rename the folder (mv) and resume it under the new name")
    os.environ[RESUME_DIR_ENV] = str(run_dir.resolve())
    return _hydra([*record["overrides"], *extra, f"hydra.run.dir=${{oc.env:{RESUME_DIR_ENV}}}"])


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


def _export(args: list[str]) -> int:
    from ltsearch.export import main as export_main

    try:
        return export_main(args)
    except LtsearchError as exc:
        return _error(str(exc))


COMMANDS = {"run": _hydra, "resume": _resume, "report": _report, "cache": _cache, "export": _export}


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
