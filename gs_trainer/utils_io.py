"""Crash-safe file writes: write a temporary file beside the target, flush it to disk, rename it.

A process killed at any moment leaves either the old file or the new one, never a truncated one (the
rename is atomic on POSIX and Windows file systems).  Leftover ``*.tmp-*`` files from a killed writer are
harmless and are overwritten or ignored.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call ``write(f)`` on a temporary file in the target's folder, fsync it, and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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


def torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """Load a checkpoint written by ``atomic_torch_save`` (tensors, numbers, strings, dicts, lists only)."""
    return torch.load(path, map_location=map_location, weights_only=True)
