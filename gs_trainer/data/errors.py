"""The one exception type for bad scene input."""

from __future__ import annotations

import os


class SceneError(ValueError):
    """Bad scene input.  The message is one line that names the file and says what is wrong."""


def scene_error(path: "os.PathLike | str", problem: str) -> SceneError:
    """``SceneError("<path>: <problem>")`` with the problem folded onto one line."""
    return SceneError(f"{os.fspath(path)}: {' '.join(str(problem).split())}")
