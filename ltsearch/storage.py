"""Crash-safe artifact storage.

Every file ltsearch writes goes through `atomic_write`: the bytes go to a hidden temporary file in the
same folder, are flushed and fsynced, and the file is renamed over its final name (then the folder is
fsynced). A reader, or a resumed run, therefore sees either the old complete file or the new complete
file, never a partial one, whenever the process is killed.

Tensors are loaded only with `torch.load(weights_only=True)`: a file that needs arbitrary unpickling
(and so could run code) is refused. Artifacts carry a SHA-256 recorded by their writer, so a truncated or
flipped file is detected by name instead of silently producing a wrong number.

Run folders and caches may sit on shared filesystems that others can write to, so nothing here follows a
symbolic link it did not expect: temporaries are created exclusively (O_EXCL | O_NOFOLLOW, a planted link
at their name is never written through), the final rename replaces a link instead of writing to its target,
copies read only regular files, and only ltsearch's own temporaries (`.NAME.tmp-PID`, regular files) are
ever removed.

In a run over several processes only rank 0 writes (`ltsearch.distributed`): `atomic_write` on another
rank returns the checksum of the bytes it was given and touches no file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

import ltsearch.distributed as distributed
from ltsearch.errors import ArtifactError, UnsafeArtifactError, first_line
from ltsearch.paths import TMP_MARK


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 of the dtypes, shapes and bytes of `tensors` (one pass over their memory, no copy of a
    contiguous CPU tensor): the same data gives the same digest wherever it was read from."""
    digest = hashlib.sha256()
    for tensor in tensors:
        array = tensor.detach().cpu().contiguous().numpy().reshape(-1)
        digest.update(f"{array.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(array.view("uint8"))
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_new(path: Path) -> int:
    """Create `path` for writing, exclusively and without following a link at its name; a leftover of an
    earlier process with the same name (a temporary of a killed writer whose pid came round again) is
    removed first (unlink removes a link itself, never its target)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o644)
    except FileExistsError:
        os.unlink(path)
        return os.open(path, flags, 0o644)


def _named(exc: OSError, path: Path) -> OSError:
    """The same error with the file it concerns (a failed write() or fsync() names none)."""
    if exc.filename is not None or exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror, str(path))


def atomic_write(path: str | Path, data: bytes) -> str:
    """Write `data` to `path` atomically and durably; return its SHA-256 (on rank 0 only, see above)."""
    if not distributed.is_main():
        return sha256_bytes(data)
    with _replacing(Path(path)) as handle:
        handle.write(data)
    return sha256_bytes(data)


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[BinaryIO]:
    """A new file, written in the block, that then replaces `path` atomically and durably. A block that ends
    early (disk full, a bad checksum) leaves no temporary behind (a kill leaves one; see
    `remove_stale_temporaries`); an OSError names `path`."""
    tmp = path.parent / f".{path.name}{TMP_MARK}{os.getpid()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(open_new(tmp), "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise _named(exc, path) from exc
    except BaseException:
        _discard(tmp)
        raise
    _fsync_dir(path.parent)


def _discard(tmp: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only folder: nothing was created there either
        tmp.unlink(missing_ok=True)


def copy_verified(src: Path, dst: Path, sha256: str | None = None) -> str:
    """Copy the regular file `src` (never a link) to `dst` atomically, checking its SHA-256 on the way;
    return it. A source that is a link, not a regular file, or does not match raises ArtifactError (naming
    it); a failed write raises OSError and leaves no temporary."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ArtifactError(f"{src} is missing") from None
    except OSError as exc:
        raise ArtifactError(f"{src} cannot be read ({'a symbolic link' if Path(src).is_symlink() else exc.strerror})") from exc
    with os.fdopen(fd, "rb") as source:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ArtifactError(f"{src} is not a regular file")
        digest = hashlib.sha256()
        with _replacing(dst) as target:
            for block in iter(lambda: source.read(1 << 20), b""):
                digest.update(block)
                target.write(block)
            if sha256 is not None and digest.hexdigest() != sha256:
                raise ArtifactError(f"{src} is corrupt: its checksum does not match the one recorded when it "
                                    f"was written")
    return digest.hexdigest()


_TEMPORARY = re.compile(r"\..+" + re.escape(TMP_MARK) + r"\d+")


def is_temporary(name: str) -> bool:
    """Whether `name` is that of an atomic-write temporary (`.NAME.tmp-PID`)."""
    return _TEMPORARY.fullmatch(name) is not None


def remove_stale_temporaries(folder: str | Path, own_files: Iterable[str] = (),
                             own_folders: Iterable[str] = ()) -> int:
    """Delete the temporaries a killed writer left in `folder`; return how many.

    Only ltsearch's own are touched: in `folder` itself the temporaries of the files named in `own_files`,
    and below it any temporary inside the subfolders named in `own_folders` (which ltsearch created); only
    regular files, and no symbolic link to a folder is followed. Whatever else a folder holds is left alone.
    """
    folder = Path(folder)
    names = {f".{name}{TMP_MARK}" for name in own_files}
    candidates = [p for p in _listing(folder) if any(p.name.startswith(n) for n in names)]
    for sub in own_folders:
        top = folder / sub
        if top.is_symlink() or not top.is_dir():
            continue
        for parent, _dirs, files in os.walk(top, followlinks=False):
            candidates += [Path(parent) / f for f in files]
    count = 0
    for path in candidates:
        if is_temporary(path.name) and stat.S_ISREG(path.lstat().st_mode):
            path.unlink(missing_ok=True)
            count += 1
    return count


def _listing(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return []


def save_json(path: str | Path, obj: Any) -> str:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    return atomic_write(path, text.encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def load_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is corrupt (invalid JSON: {exc.msg} at line {exc.lineno})") from exc
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{path} is corrupt (not UTF-8 text)") from exc


def save_torch(path: str | Path, obj: Any) -> str:
    """Serialise tensors/containers atomically; return the SHA-256 of the file."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write(path, buffer.getvalue())


def load_torch(path: str | Path, sha256: str | None = None, map_location: str | torch.device = "cpu") -> Any:
    """Load a tensor file safely (weights_only), checking its SHA-256 when one was recorded."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path} is missing") from exc
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise ArtifactError(f"{path} is corrupt: its checksum does not match the one recorded when it was written")
    if not data:
        raise ArtifactError(f"{path} is corrupt or truncated (empty file)")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _UNSAFE.search(str(exc))
        if unsafe:
            what = unsafe.group(1) or unsafe.group(2)
            raise UnsafeArtifactError(
                f"{path} refused: loading it needs arbitrary unpickling (it references {what}), "
                f"which could run code; ltsearch loads tensor files with torch.load(weights_only=True) only "
                f"and did not write this file"
            ) from exc
        raise ArtifactError(f"{path} is corrupt or not a tensor file ltsearch wrote (torch.load with "
                            f"weights_only=True rejects its contents)") from exc
    except Exception as exc:  # zip/EOF/shape errors of a truncated or damaged file
        raise ArtifactError(f"{path} is corrupt or truncated ({first_line(exc, 120)})") from exc


# What torch's weights-only unpickler reports when a file names a callable or class it will not import.
_UNSAFE = re.compile(r"GLOBAL\s+([\w.]+)|[Uu]nsupported class\s+([\w.]+)")

