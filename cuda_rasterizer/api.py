"""The public entry point: dispatch on the tensors' device."""

from __future__ import annotations

import logging
from typing import Optional

import torch

from .reference import rasterize_gaussians_reference
from .settings import ATOMICS_MODES, DEFAULT_ATOMICS, DEFAULT_BALANCE_THRESHOLD, RasterOutput, RasterSettings

log = logging.getLogger(__name__)
_fallback_warned = False


def rasterize_gaussians(means: torch.Tensor, scales: torch.Tensor, rotations: torch.Tensor,
                        opacities: torch.Tensor, shs: Optional[torch.Tensor] = None,
                        colors_precomp: Optional[torch.Tensor] = None, *, settings: RasterSettings,
                        atomics: str = DEFAULT_ATOMICS,
                        balance_threshold: int = DEFAULT_BALANCE_THRESHOLD,
                        backend: str = "auto") -> RasterOutput:
    """Render Gaussians; differentiable with respect to every tensor input.

    Args:
        means: [N, 3] float32 world positions.
        scales: [N, 3] activated scales.
        rotations: [N, 4] unit quaternions (w, x, y, z).
        opacities: [N] or [N, 1] activated opacities.
        shs: [N, K, 3] SH coefficients, K >= (settings.sh_degree + 1)^2; or
        colors_precomp: [N, 3] colours.
        settings: camera and render settings.
        atomics: gradient-accumulation policy of the CUDA backward pass, one of ATOMICS_MODES.
            Every policy gives the same gradients up to float summation order; the reference ignores it.
        balance_threshold: distwar only: reduce within the warp when at least this many lanes contribute
            (1 = always reduce, 33 = never).
        backend: "auto" (CUDA tensors -> the extension, CPU tensors -> the reference), "cuda" or
            "reference".
    Returns:
        RasterOutput(image [3, H, W], radii [N], means2d [N, 2], depths [N], final_T [H, W], n_contrib [H, W],
        depth [H, W] expected view-space depth, or None from a backend that does not compute it yet).
    """
    if atomics not in ATOMICS_MODES:
        raise ValueError(f"rasterize_gaussians: atomics must be one of {ATOMICS_MODES}, got {atomics!r}")
    if not 1 <= int(balance_threshold) <= 33:
        raise ValueError(f"rasterize_gaussians: balance_threshold must be in 1..33, got {balance_threshold}")
    if backend not in ("auto", "cuda", "reference"):
        raise ValueError(f"rasterize_gaussians: backend must be auto, cuda or reference, got {backend!r}")
    use_cuda = backend == "cuda" or (backend == "auto" and means.is_cuda)
    if use_cuda:
        from ._backend import CudaBackendUnavailable
        try:
            from .autograd import rasterize_gaussians_cuda
            return rasterize_gaussians_cuda(means, scales, rotations, opacities, shs, colors_precomp,
                                            settings=settings, atomics=atomics,
                                            balance_threshold=int(balance_threshold))
        except CudaBackendUnavailable as err:
            if backend == "cuda":
                raise
            global _fallback_warned
            if not _fallback_warned:
                log.warning("CUDA rasterizer unavailable, using the (slow) PyTorch reference: %s", err)
                _fallback_warned = True
    return rasterize_gaussians_reference(means, scales, rotations, opacities, shs, colors_precomp,
                                         settings=settings)
