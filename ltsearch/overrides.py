"""What `ltsearch run` checks and rewrites in its arguments before Hydra parses them: a number given for a
config group, an output folder Hydra cannot use, a launcher or sweeper whose plugin is not installed (each
one line instead of Hydra's traceback or "option not found"), `-q`/`-v` as `runtime.verbosity`, and a path
that starts with `~` quoted."""

from __future__ import annotations

from pathlib import Path

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
    """Hydra answers a run/sweep directory it cannot use (an existing file, a link to nothing, a read-only
    folder) with a traceback; say it in one line."""
    from ltsearch.guards import folder_problem, foreign_problem

    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in ("hydra.run.dir", "hydra.sweep.dir"):
            path = Path(value.strip("'\"")).expanduser()
            problem = folder_problem(path, key) or (foreign_problem(path) if key == "hydra.run.dir" else None)
            if problem:
                return f"'{arg}': {problem}"
    keys = {a.partition("=")[0] for a in args}
    if not keys & {"hydra.run.dir", "hydra.sweep.dir", *NO_RUN_FLAGS}:  # a run into the default outputs/
        return folder_problem(Path("outputs"), "the output folder")
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


# Keys whose value ltsearch reads as a path, expanding a leading `~` itself.
HOME_PATH_KEYS = ("dataset.root", "runtime.cache_dir")


def quote_home_paths(args: list[str]) -> list[str]:
    """`dataset.root=~/data` as a shell leaves it when it expands no `~` after `=` (zsh, fish): quoted, since
    Hydra's override grammar takes no `~` in a plain value; ltsearch expands it when it reads the path."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") in HOME_PATH_KEYS and value.startswith("~") and \
                not any(c in value for c in "'\",[]{}()"):
            arg = f"{key}='{value}'"
        out.append(arg)
    return out


# Hydra flags that print something instead of running (no output folder is written)
NO_RUN_FLAGS = ("--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc")
