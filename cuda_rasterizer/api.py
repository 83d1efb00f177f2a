"""The public entry point: choose a backend, dispatch."""

from __future__ import annotations

import logging
from typing import Optional

import torch

from .reference import rasterize_gaussians_reference
from .settings import ATOMICS_MODES, DEFAULT_ATOMICS, DEFAULT_BALANCE_THRESHOLD, RasterOutput, RasterSettings

log = logging.getLogger(__name__)

#: Values of rasterize_gaussians(backend=...).
BACKENDS = ("auto", "cuda", "cpu", "reference")

_fallback_warned = False
_cpu_choice_logged = False


def _cpu_auto_available() -> bool:
    """Whether "auto" can use the CPU backend; logs the choice and its reason once per process."""
    global _cpu_choice_logged
    from ._cpu_backend import cpu_extension_status
    reason = cpu_extension_status()
    if not _cpu_choice_logged:
        _cpu_choice_logged = True
        if reason is None:
            log.info("rasterizer backend for CPU tensors: cpu (the C++ backend built and loaded)")
        else:
            log.warning("rasterizer backend for CPU tensors: reference (slow PyTorch), because the C++ CPU "
                        "backend is unavailable: %s", reason)
    return reason is None


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
            Every policy gives the same gradients up to float summation order; the CPU backend and the
            reference ignore it.
        balance_threshold: distwar only: reduce within the warp when at least this many lanes contribute
            (1 = always reduce, 33 = never).
        backend: "auto" (CUDA tensors -> the CUDA extension; CPU tensors -> the C++ CPU backend when it
            builds, else the reference, with one log line saying which and why; float64 CPU tensors -> the
            reference, which computes in float64 where the C++ backend computes in float32), "cuda", "cpu" (the C++
            CPU backend, float32, deterministic for any thread count) or "reference" (pure PyTorch, the oracle).
    Returns:
        RasterOutput(image [3, H, W], radii [N], means2d [N, 2], depths [N], final_T [H, W], n_contrib [H, W]).
    """
    if atomics not in ATOMICS_MODES:
        raise ValueError(f"rasterize_gaussians: atomics must be one of {ATOMICS_MODES}, got {atomics!r}")
    if not 1 <= int(balance_threshold) <= 33:
        raise ValueError(f"rasterize_gaussians: balance_threshold must be in 1..33, got {balance_threshold}")
    if backend not in BACKENDS:
        raise ValueError(f"rasterize_gaussians: backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(means, torch.Tensor):
        raise ValueError(f"rasterize_gaussians: means must be a tensor, got {type(means).__name__}")
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
    elif backend == "cpu" or (backend == "auto" and means.device.type == "cpu" and means.dtype != torch.float64
                              and _cpu_auto_available()):
        from .cpu_autograd import rasterize_gaussians_cpu
        return rasterize_gaussians_cpu(means, scales, rotations, opacities, shs, colors_precomp,
                                       settings=settings)
    return rasterize_gaussians_reference(means, scales, rotations, opacities, shs, colors_precomp,
                                         settings=settings)
