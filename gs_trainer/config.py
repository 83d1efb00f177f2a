"""Typed configuration of a training run.

Three layers, each overriding the one before: the dataclass defaults below (the recipe of the original
3DGS trainer), an optional YAML preset (``--config configs/NAME.yaml``), and the command line.  The
resolved config is written into the run folder as ``config.yaml`` and read back with ``load_config``
(``yaml.safe_load`` and typed checks, never ``eval``).

Field names are unique across sections so that every field is also a flat command-line flag, spelled
as in the original trainer (``--densify_grad_threshold``, ``--position_lr_init``, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from cuda_rasterizer import ATOMICS_MODES, BACKENDS, DEFAULT_ATOMICS, DEFAULT_BALANCE_THRESHOLD


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names the file or key."""


@dataclass
class ModelConfig:
    """Scene and model (the original's ModelParams)."""

    source_path: str = ""                # -s: COLMAP (or Blender) scene folder
    model_path: str = ""                 # -m: run folder; default output/<timestamp>
    images: str = "images"               # -i: image folder inside source_path
    resolution: int = -1                 # -r: 1, 2, 4, 8 = downscale factor; >8 = target width; -1 = auto
    white_background: bool = False
    eval: bool = False                   # hold out every 8th view as the test split
    sh_degree: int = 3
    sh_increase_interval: int = 1000     # one more SH band every this many iterations


@dataclass
class OptimConfig:
    """Adam learning rates and the loss (the original's OptimizationParams, less densification)."""

    iterations: int = 30_000
    position_lr_init: float = 0.00016    # times the scene extent
    position_lr_final: float = 0.0000016
    position_lr_delay_mult: float = 0.01
    position_lr_max_steps: int = 30_000
    feature_lr: float = 0.0025           # SH DC; the higher bands use feature_lr / 20
    opacity_lr: float = 0.025
    scaling_lr: float = 0.005
    rotation_lr: float = 0.001
    lambda_dssim: float = 0.2
    random_background: bool = False
    batch_size: int = 0                  # views per step (losses averaged); 0 = one per rank (1 on one process)


@dataclass
class DensifyConfig:
    """Adaptive density control (clone / split / prune / opacity reset)."""

    densify_from_iter: int = 500
    densify_until_iter: int = 15_000
    densification_interval: int = 100
    densify_grad_threshold: float = 0.0002   # mean NDC-space 2D position gradient norm
    percent_dense: float = 0.01              # clone below / split above this fraction of the extent
    opacity_reset_interval: int = 3000
    min_opacity: float = 0.005
    max_screen_size: int = 20                # prune radius > this (pixels) after the first opacity reset
    max_world_size: float = 0.1              # ... or world scale > this fraction of the extent
    scene_size_limit: float = 1.0            # always (every densification_interval, first to last iteration):
                                             # prune world scale > this many extents, a Gaussian larger than
                                             # the scene; 0 = off (the original has no such rule)
    split_factor: float = 1.6                # split children scales = parent / this (0.8 * 2 in the original)


@dataclass
class RunConfig:
    """Everything else: schedule of evaluations and saves, device, rasterizer options, logging."""

    test_iterations: list[int] = field(default_factory=lambda: [7000, 30_000])
    save_iterations: list[int] = field(default_factory=lambda: [7000, 30_000])
    checkpoint_iterations: list[int] = field(default_factory=list)
    start_checkpoint: str = ""
    device: str = ""                     # "" = cuda if available, else cpu
    atomics: str = DEFAULT_ATOMICS
    balance_threshold: int = DEFAULT_BALANCE_THRESHOLD
    backend: str = "auto"                # rasterizer: auto, cuda, cpu (C++), reference (PyTorch)
    seed: int = 0
    cpu_threads: int = 0                 # torch intra-op threads for CPU work; 0 = torch's default
    dist_timeout: float = 300.0          # seconds a rank waits on the others (torchrun) before giving up
    log_interval: int = 10               # tqdm postfix and tensorboard scalars every this many iterations
    num_eval_images: int = 5             # test renders written to tensorboard at each evaluation
    tensorboard: bool = True
    quiet: bool = False


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> "TrainConfig":
        m, o, d, r = self.model, self.optim, self.densify, self.run
        checks = [
            (0 <= m.sh_degree <= 3, f"sh_degree must be in 0..3, got {m.sh_degree}"),
            (m.sh_increase_interval > 0, "sh_increase_interval must be positive"),
            (m.resolution in (-1, 1, 2, 4, 8) or m.resolution > 8,
             f"resolution must be -1, 1, 2, 4, 8 or a target width > 8, got {m.resolution}"),
            (o.iterations > 0, f"iterations must be positive, got {o.iterations}"),
            (o.batch_size >= 0, f"batch_size must be >= 0 (0 = one view per rank), got {o.batch_size}"),
            (0.0 <= o.lambda_dssim <= 1.0, f"lambda_dssim must be in [0, 1], got {o.lambda_dssim}"),
            (d.densification_interval > 0, "densification_interval must be positive"),
            (d.opacity_reset_interval > 0, "opacity_reset_interval must be positive"),
            (d.split_factor > 0, "split_factor must be positive"),
            (d.scene_size_limit >= 0, f"scene_size_limit must be >= 0 (0 = off), got {d.scene_size_limit}"),
            (r.atomics in ATOMICS_MODES, f"atomics must be one of {ATOMICS_MODES}, got {r.atomics!r}"),
            (r.backend in BACKENDS, f"backend must be one of {BACKENDS}, got {r.backend!r}"),
            (1 <= r.balance_threshold <= 33, f"balance_threshold must be in 1..33, got {r.balance_threshold}"),
            (r.log_interval > 0, "log_interval must be positive"),
            (r.dist_timeout > 0, f"dist_timeout must be positive, got {r.dist_timeout}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTION_TYPES = {"model": ModelConfig, "optim": OptimConfig, "densify": DensifyConfig, "run": RunConfig}
SHORT_FLAGS = {"source_path": "-s", "model_path": "-m", "images": "-i", "resolution": "-r"}


def _field_index() -> dict[str, tuple[str, dataclasses.Field, Any]]:
    """Flat field name -> (section, field, resolved type)."""
    index = {}
    for section, cls in _SECTION_TYPES.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in index:
                raise AssertionError(f"config field {f.name} appears in two sections")
            index[f.name] = (section, f, hints[f.name])
    return index


FIELDS = _field_index()


def _coerce(key: str, value: Any, typ: Any, where: str) -> Any:
    """Check and convert one value against the field's type; raise ConfigError naming the key."""
    origin = typing.get_origin(typ)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            value = [value]
        (item,) = typing.get_args(typ)
        return [_coerce(key, v, item, where) for v in value]
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
        return int(value)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
        try:
            return float(value)   # YAML reads 1e-4 without a dot as a string
        except ValueError:
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}") from None
    if typ is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
        return str(value)
    raise AssertionError(f"unsupported config type {typ} for {key}")


def apply_overrides(cfg: TrainConfig, values: dict, where: str) -> TrainConfig:
    """Apply a nested ({section: {key: value}}) or flat ({key: value}) mapping to ``cfg`` in place."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, got {type(values).__name__}")
    for key, value in values.items():
        if key in _SECTION_TYPES and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                if sub_key not in FIELDS or FIELDS[sub_key][0] != key:
                    raise ConfigError(f"{where}: unknown key {key}.{sub_key}")
                _set(cfg, sub_key, sub_value, where)
        elif key in FIELDS:
            _set(cfg, key, value, where)
        else:
            raise ConfigError(f"{where}: unknown key {key!r}")
    return cfg


def _set(cfg: TrainConfig, key: str, value: Any, where: str) -> None:
    section, f, typ = FIELDS[key]
    setattr(getattr(cfg, section), key, _coerce(key, value, typ, where))


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {yaml_error_line(err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read ({err.__class__.__name__}: {err})") from None
    return data or {}


def yaml_error_line(err: yaml.YAMLError) -> str:
    """The parser's problem and where it is, on one line (its own text spans several)."""
    problem = getattr(err, "problem", None) or getattr(err, "context", None) or str(err)
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``prog: error: ...``, exit 2) instead of the whole usage."""

    def error(self, message: str) -> "typing.NoReturn":
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


def load_config(path: str | Path) -> TrainConfig:
    """Read a config (a preset or a run's resolved config.yaml) over the defaults, typed and validated."""
    return apply_overrides(TrainConfig(), load_yaml(path), str(path)).validate()


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    from .utils_io import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, with no default (so that only flags actually given override)."""
    parser.add_argument("--config", default=None, help="YAML preset (e.g. configs/default.yaml)")
    for name, (section, f, typ) in FIELDS.items():
        flags = [SHORT_FLAGS[name]] if name in SHORT_FLAGS else []
        flags.append(f"--{name}")
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        help_text = f"[{section}] default: {default}"
        kw: dict[str, Any] = dict(dest=name, default=argparse.SUPPRESS, help=help_text)
        if typ is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(typ) is list:
            parser.add_argument(*flags, nargs="*", type=typing.get_args(typ)[0], **kw)
        elif name == "atomics":
            parser.add_argument(*flags, choices=ATOMICS_MODES, **kw)
        elif name == "backend":
            parser.add_argument(*flags, choices=BACKENDS, **kw)
        else:
            parser.add_argument(*flags, type=typ, **kw)


def config_from_args(args: argparse.Namespace, base: Optional[TrainConfig] = None) -> TrainConfig:
    """Defaults <- ``--config`` preset <- command-line flags."""
    cfg = base or TrainConfig()
    preset = getattr(args, "config", None)
    if preset:
        apply_overrides(cfg, load_yaml(preset), str(preset))
    given = {k: v for k, v in vars(args).items() if k in FIELDS}
    apply_overrides(cfg, given, "command line")
    return cfg.validate()
