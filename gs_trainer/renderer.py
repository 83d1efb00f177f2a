"""Render a GaussianModel from a Camera with the rasterizer (CUDA extension, C++ CPU backend or reference)."""

from __future__ import annotations

import logging

import torch

from cuda_rasterizer import DEFAULT_ATOMICS, DEFAULT_BALANCE_THRESHOLD, RasterOutput, rasterize_gaussians

from .data.cameras import Camera
from .model import GaussianModel

log = logging.getLogger(__name__)
_cpu_atomics_noted = False


def note_atomics(device: torch.device | str, atomics: str) -> None:
    """Say once per process that the CPU backends ignore the atomics mode."""
    global _cpu_atomics_noted
    if torch.device(device).type != "cuda" and not _cpu_atomics_noted:
        log.info("rendering on CPU: --atomics %s has no effect there (it is a policy of the CUDA backward pass)", atomics)
        _cpu_atomics_noted = True


def render(model: GaussianModel, camera: Camera, bg: torch.Tensor, *, atomics: str = DEFAULT_ATOMICS,
           balance_threshold: int = DEFAULT_BALANCE_THRESHOLD, scale_modifier: float = 1.0,
           backend: str = "auto") -> RasterOutput:
    """Differentiable render of ``model`` seen by ``camera`` over background ``bg`` ([3], model's device).

    Returns the rasterizer's RasterOutput: image [3, H, W], radii [N], means2d [N, 2] (pixels; call
    ``means2d.retain_grad()`` before backward for densification), depths, final_T, n_contrib.
    backend: the rasterizer's (auto, cuda, cpu, reference).
    """
    settings = camera.raster_settings(bg, sh_degree=model.active_sh_degree, scale_modifier=scale_modifier)
    return rasterize_gaussians(model.means, model.scales, model.rotations, model.opacities, shs=model.shs,
                               settings=settings, atomics=atomics, balance_threshold=balance_threshold,
                               backend=backend)
