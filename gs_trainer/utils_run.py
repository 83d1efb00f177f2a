"""The run folder (the original trainer's layout) and its logging sinks.

::

    RUN/config.yaml                                   resolved config (read back by gs-render / gs-metrics)
    RUN/cfg_args                                      the original trainer's Namespace(...) line (its viewer reads it)
    RUN/input.ply                                     the initial point cloud (x, y, z, normals, uint8 colours)
    RUN/cameras.json                                  test then train cameras, the original's format
    RUN/point_cloud/iteration_N/point_cloud.ply       Gaussians after N iterations
    RUN/chkpntN.pth                                   model + optimizer + densification + RNG state
    RUN/events.out.tfevents.*                         tensorboard scalars and images
    RUN/<split>/ours_N/{renders,gt}/00000.png         gs-render
    RUN/results.json, RUN/per_view.json               gs-metrics, test split (the original's shape)
    RUN/results_train.json, RUN/per_view_train.json   gs-metrics --split train
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional

import torch

from .utils_io import atomic_torch_save, atomic_write_json

log = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^chkpnt(\d+)\.pth$")
ITERATION_PATTERN = re.compile(r"^iteration_(\d+)$")


class RunFolder:
    """Paths and writers of one run.  ``tensorboard=False`` (or tensorboard missing) logs nothing there."""

    def __init__(self, path: str | Path, *, tensorboard: bool = True) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._writer = SummaryWriter(str(self.path))
            except ImportError as err:
                log.warning("tensorboard is not available, no event files will be written: %s", err)

    # -- layout -----------------------------------------------------------------------------------
    def ply_path(self, iteration: int) -> Path:
        return self.path / "point_cloud" / f"iteration_{iteration}" / "point_cloud.ply"

    def checkpoint_path(self, iteration: int) -> Path:
        return self.path / f"chkpnt{iteration}.pth"

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    # -- writers ----------------------------------------------------------------------------------
    def save_gaussians(self, model, iteration: int) -> Path:
        return model.save_ply(self.ply_path(iteration))

    def save_checkpoint(self, state: dict, iteration: int) -> Path:
        return atomic_torch_save(state, self.checkpoint_path(iteration))

    def save_cfg_args(self, cfg) -> Path:
        from .cfg_args import CFG_ARGS, format_cfg_args
        from .utils_io import atomic_write_text
        path = self.path / CFG_ARGS
        atomic_write_text(path, format_cfg_args(cfg))
        return path

    def save_input_ply(self, points, colors) -> Path:
        """The initial point cloud as the original stores it: float x, y, z, nx, ny, nz (zero), uchar rgb."""
        import numpy as np
        from plyfile import PlyData, PlyElement
        from .utils_io import atomic_write

        xyz = np.asarray(points, dtype=np.float32).reshape(-1, 3)
        rgb = np.clip(np.asarray(colors, dtype=np.float64).reshape(-1, 3) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        names = [(c, "f4") for c in ("x", "y", "z", "nx", "ny", "nz")] + [(c, "u1") for c in ("red", "green", "blue")]
        vertex = np.zeros(len(xyz), dtype=names)
        for i, c in enumerate("xyz"):
            vertex[c] = xyz[:, i]
        for i, c in enumerate(("red", "green", "blue")):
            vertex[c] = rgb[:, i]
        return atomic_write(self.path / "input.ply", PlyData([PlyElement.describe(vertex, "vertex")]).write)

    def save_cameras(self, cameras) -> Path:
        entries = []
        for index, cam in enumerate(cameras):
            entry = cam.to_json()
            entry["id"] = index
            entries.append(entry)
        return atomic_write_json(self.path / "cameras.json", entries)

    def scalar(self, tag: str, value: float, iteration: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, value, iteration)

    def histogram(self, tag: str, values: torch.Tensor, iteration: int) -> None:
        if self._writer is not None:
            self._writer.add_histogram(tag, values.detach().reshape(-1).cpu(), iteration)

    def image(self, tag: str, image: torch.Tensor, iteration: int) -> None:
        if self._writer is not None:
            self._writer.add_image(tag, image.detach().clamp(0, 1).cpu(), iteration)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def configure_torch(run_cfg) -> None:
    """Process-wide CPU settings for the entry points (never done on import).

    Denormal floats are flushed to zero: the reference rasterizer evaluates exp() of very negative
    exponents, and arithmetic on the resulting denormals is one to two orders of magnitude slower on
    x86 CPUs (measured: a 200x150 forward pass went from ~10 s to under 1 s).  ``cpu_threads`` > 0
    caps torch's intra-op threads (one thread is much faster than two on a busy 2-core machine, where
    the reference's many small ops spend their time in thread synchronisation).
    """
    torch.set_flush_denormal(True)
    if getattr(run_cfg, "cpu_threads", 0) > 0:
        torch.set_num_threads(run_cfg.cpu_threads)


def saved_iterations(run: str | Path) -> list[int]:
    """Iterations with a point_cloud/iteration_N/point_cloud.ply, ascending."""
    root = Path(run) / "point_cloud"
    found = []
    if root.is_dir():
        for child in root.iterdir():
            m = ITERATION_PATTERN.match(child.name)
            if m and (child / "point_cloud.ply").is_file():
                found.append(int(m.group(1)))
    return sorted(found)


def latest_checkpoint(run: str | Path) -> Optional[Path]:
    best = None
    for child in Path(run).glob("chkpnt*.pth"):
        m = CHECKPOINT_PATTERN.match(child.name)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), child)
    return None if best is None else best[1]
