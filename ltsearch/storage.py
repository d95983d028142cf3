"""Crash-safe artifact storage.

Every file ltsearch writes goes through `atomic_write`: the bytes go to a hidden temporary file in the
same folder, are flushed and fsynced, and the file is renamed over its final name (then the folder is
fsynced). A reader, or a resumed run, therefore sees either the old complete file or the new complete
file, never a partial one, whenever the process is killed.

Tensors are loaded only with `torch.load(weights_only=True)`: a file that needs arbitrary unpickling
(and so could run code) is refused. Artifacts carry a SHA-256 recorded by their writer, so a truncated or
flipped file is detected by name instead of silently producing a wrong number.

In a run over several processes only rank 0 writes (`ltsearch.distributed`): `atomic_write` on another
rank returns the checksum of the bytes it was given and touches no file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ltsearch import distributed
from ltsearch.errors import ArtifactError, UnsafeArtifactError
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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: str | Path, data: bytes) -> str:
    """Write `data` to `path` atomically and durably; return its SHA-256 (on rank 0 only, see above)."""
    if not distributed.is_main():
        return sha256_bytes(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{TMP_MARK}{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. disk full: leave no temporary behind (a kill leaves one; see below)
        raise
    _fsync_dir(path.parent)
    return sha256_bytes(data)


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete temporary files left by a killed writer below `folder`; return how many."""
    count = 0
    for tmp in Path(folder).rglob(f".*{TMP_MARK}*"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            count += 1
    return count


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
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"{path} is corrupt or truncated ({reason})") from exc


# What torch's weights-only unpickler reports when a file names a callable or class it will not import.
_UNSAFE = re.compile(r"GLOBAL\s+([\w.]+)|[Uu]nsupported class\s+([\w.]+)")

