"""Crash-safe file writes: write a temporary file beside the target, flush it to disk, rename it.

A process killed at any moment leaves either the old file or the new one, never a truncated one (the
rename is atomic on POSIX and Windows file systems).  A killed writer leaves its temporary file
(``.NAME.XXXXXXXX.tmp``) behind; ``remove_temporaries`` clears them (gs-train does at the start and end of
a run).  The written file gets the mode a plain ``open()`` would give it (0666 less the umask), not the
0600 of ``mkstemp``, so that other users, web servers and containers can read results.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)

TEMPORARY_PATTERN = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")   # what atomic_write's mkstemp names
_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask (read by setting it and restoring it at once, under a lock)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call ``write(f)`` on a temporary file in the target's folder, fsync it, and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


class CheckpointError(ValueError):
    """A file that cannot be read as a checkpoint; the message is one line and says why."""


def torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """Load a checkpoint written by ``atomic_torch_save`` (tensors, numbers, strings, dicts, lists only).

    A file that is no checkpoint raises CheckpointError with a one-line reason (empty, truncated, not a
    torch file, or holding objects other than tensors and plain containers).
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError("the file is empty")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:2] == b"PK":
            raise CheckpointError(f"truncated or damaged ({size} bytes; the end of the zip archive is missing)")
        if head[:3] == b"ply":
            raise CheckpointError("a PLY point cloud, not a checkpoint (checkpoints are the chkpntN.pth files)")
        if head[:1] == b"\x80":
            raise CheckpointError("a plain pickle, not a torch checkpoint written by gs-train")
        raise CheckpointError("not a torch checkpoint (unknown content)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except EOFError:
        raise CheckpointError("truncated (ends early)") from None
    except Exception as err:   # noqa: BLE001 - torch's zip and unpickler errors vary between versions
        text = " ".join(str(err).split())
        if "weights_only" in text or "Unsupported global" in text or "Unpickl" in type(err).__name__:
            raise CheckpointError("holds Python objects other than tensors and plain containers "
                                  "(not a checkpoint written by gs-train)") from None
        if "zip" in text.lower() or "central directory" in text or isinstance(err, (RuntimeError, zipfile.BadZipFile)):
            raise CheckpointError(f"truncated or damaged ({text[:120]})") from None
        raise


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the ``.NAME.XXXXXXXX.tmp`` files that killed ``atomic_write`` calls left under ``folder``."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.rglob(".*.tmp"):
        if path.is_file() and not path.is_symlink() and TEMPORARY_PATTERN.match(path.name):
            try:
                path.unlink()
                removed.append(path)
            except OSError as err:
                log.warning("could not remove the leftover temporary file %s: %s", path, err)
    if removed:
        log.info("removed %d leftover temporary file(s) of interrupted writes in %s", len(removed), folder)
    return removed
