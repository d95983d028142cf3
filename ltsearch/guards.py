"""Checks before ltsearch writes into a run folder: that the folder can be written, that it is ltsearch's
own, that its log and lock files are not links, and that a resumed run reads the data it was computed on.

Run folders may sit on shared filesystems and may be named by hand (`hydra.run.dir=...`), so ltsearch
never assumes a folder is its own: one without a run record that already holds the user's files is
refused (ltsearch would otherwise overwrite or clean up inside it), and a `run.log` or `.lock` that is a
symbolic link is refused rather than written through.

The data record (`data.json`) names the content of the data a run was computed on (`Data.identity`) and
where it was read from. A later session may read it from elsewhere (`dataset.root` is a runtime key: data
moves between machines), but only when the content is the same.
"""

from __future__ import annotations

import os
from pathlib import Path

from ltsearch.errors import ResumeError, UnsafePathError
from ltsearch.paths import DATA_RECORD, FAILURE, HYDRA, LOCK, LOG, RECORD, TMP_MARK
from ltsearch.storage import is_temporary, load_json, open_new, save_json

# What a folder holds before ltsearch has recorded a run in it: Hydra's files of a session that started
# (its config copies and the log), the lock, and a failed job's record written by the sweep callback.
STARTUP_FILES = (HYDRA, LOG, LOCK, FAILURE)


def foreign_problem(run_dir: Path) -> str | None:
    """Why ltsearch must not use `run_dir` as a run folder (it holds files of someone else's), or None."""
    if not run_dir.is_dir() or (run_dir / RECORD).exists():
        return None
    own = {*STARTUP_FILES}
    foreign = sorted(p.name for p in run_dir.iterdir()
                     if p.name not in own and not (is_temporary(p.name) and p.name.startswith((f".{RECORD}",
                                                                                                f".{FAILURE}"))))
    if not foreign:
        return None
    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    return (f"{run_dir} is not an ltsearch run folder but already holds files ({shown}); ltsearch writes each "
            f"run into a folder of its own and never overwrites or removes what it did not write: choose a new "
            f"or empty folder (hydra.run.dir=...)")


def refuse_foreign(run_dir: Path) -> None:
    """A folder without a run record must hold nothing but what a starting session writes."""
    problem = foreign_problem(run_dir)
    if problem:
        raise UnsafePathError(problem)


def refuse_links(run_dir: Path) -> None:
    """The log and the lock are appended to and truncated: never through a link planted at their names."""
    for name in (LOG, LOCK):
        path = run_dir / name
        if path.is_symlink():
            raise UnsafePathError(f"{path} is a symbolic link (to {os.readlink(path)}); ltsearch never writes its "
                                  f"log or lock files through links: remove the link and run again")


def check_data(run_dir: Path, root: str, identity: str) -> None:
    """Record the data's identity on first use; later, refuse data whose content differs."""
    path = run_dir / DATA_RECORD
    if not path.exists():
        save_json(path, {"root": root, "identity": identity})
        return
    recorded = load_json(path)
    then = recorded.get("identity") if isinstance(recorded, dict) else None
    if then == identity:
        return
    was = recorded.get("root") if isinstance(recorded, dict) else None
    where = (f"the data under dataset.root={root} is not the data this run was computed on (it read "
             f"dataset.root={was})") if was != root else f"the data under dataset.root={root} changed since this run used it"
    raise ResumeError(f"{run_dir}: {where}: content {str(then)[:16]} recorded, {identity[:16]} now; resume with "
                      f"the same data (dataset.root={was}), or start a new run")


def folder_problem(path: Path, what: str) -> str | None:
    """Why ltsearch cannot work in the folder `path` (to be created if missing), or None: an existing file,
    a link to nothing, a folder (or the nearest existing parent of a new one) that takes no files."""
    if path.is_symlink() and not path.exists():
        return f"{what} {path} is a symbolic link to {os.readlink(path)}, which does not exist"
    if path.exists() and not path.is_dir():
        return f"{what} {path} exists and is not a directory"
    probe_dir = path
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    probe = probe_dir / f".ltsearch-write-test{TMP_MARK}{os.getpid()}"
    try:
        os.close(open_new(probe))
        probe.unlink()
    except OSError as exc:
        return f"{what} {path} is not writable ({exc.strerror or exc}); ltsearch writes its run there"
    return None
