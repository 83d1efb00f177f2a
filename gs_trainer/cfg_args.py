"""The original trainer's ``cfg_args``: written beside config.yaml, and read from its run folders.

The original writes ``str(argparse.Namespace(...))`` of its model parameters into ``RUN/cfg_args`` and
reads it back with ``eval``; its viewer and render/metrics scripts find the scene through it.  We write the
same text, and read it with a parser that accepts only ``Namespace(key=literal, ...)`` (``ast.literal_eval``
per value), never ``eval``.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

from .config import ConfigError, TrainConfig, apply_overrides

CFG_ARGS = "cfg_args"
#: Keys of the original's ModelParams that map onto ours (same names, same meaning).
SHARED_KEYS = ("sh_degree", "source_path", "images", "resolution", "white_background", "eval")


def format_cfg_args(cfg: TrainConfig) -> str:
    """The original's Namespace string for ``cfg``, paths absolute, keys in the original's order.

    ``depths`` and ``train_test_exp`` are the newer original's additions (empty / off: we train on all
    the pixels of the train split); ``data_device`` is where it keeps the images, ours is the run device.
    """
    m = cfg.model
    data_device = "cuda" if cfg.run.device.startswith("cuda") else "cpu"
    values: list[tuple[str, Any]] = [
        ("sh_degree", int(m.sh_degree)),
        ("source_path", os.path.abspath(m.source_path)),
        ("model_path", os.path.abspath(m.model_path)),
        ("images", m.images),
        ("depths", ""),
        ("resolution", int(m.resolution)),
        ("white_background", bool(m.white_background)),
        ("train_test_exp", False),
        ("data_device", data_device),
        ("eval", bool(m.eval)),
    ]
    return "Namespace(" + ", ".join(f"{k}={v!r}" for k, v in values) + ")"


def parse_cfg_args(text: str, where: str = CFG_ARGS) -> dict[str, Any]:
    """``Namespace(a=1, b='x', ...)`` -> {"a": 1, "b": "x"}; ConfigError naming ``where`` otherwise."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ConfigError(f"{where}: not a Namespace(...) line as the original trainer writes it") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Namespace"
            and not call.args):
        raise ConfigError(f"{where}: not a Namespace(...) line as the original trainer writes it")
    out: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise ConfigError(f"{where}: '**' is not allowed in cfg_args")
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            raise ConfigError(f"{where}: the value of {kw.arg} is not a plain literal") from None
    return out


def read_cfg_args(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read ({err})") from None
    return parse_cfg_args(text, str(path))


def config_from_cfg_args(path: str | Path) -> TrainConfig:
    """A TrainConfig for a run folder of the original trainer (only the shared keys are taken)."""
    values = read_cfg_args(path)
    shared = {k: values[k] for k in SHARED_KEYS if k in values}
    if "source_path" not in shared:
        raise ConfigError(f"{path}: no source_path in cfg_args")
    return apply_overrides(TrainConfig(), shared, str(path)).validate()


__all__ = ["CFG_ARGS", "config_from_cfg_args", "format_cfg_args", "parse_cfg_args", "read_cfg_args"]
