"""The public entry points: two differentiable stages and their composition, dispatched per backend.

    proj = project_gaussians(means, scales, rotations, opacities, shs, settings=s)   # 3D -> 2D, per Gaussian
    out = rasterize_projected(proj, settings=s)                                      # bin, sort, blend
    # == rasterize_gaussians(means, scales, rotations, opacities, shs, settings=s)

The projected Gaussians (``ProjectedGaussians``) are plain tensors, one row per Gaussian, so a caller may
filter, concatenate or ship rows between the stages (sharded training exchanges them between ranks); the
rasterize stage needs nothing but those rows and the camera.

Backends register their two stages in ``STAGE_BACKENDS`` (``register_stage_backend``): ``reference``
(pure PyTorch, autograd), ``cuda`` (the extension, autograd.py) and ``cpu`` (the C++ backend built from the
same math.cuh, cpu_autograd.py).  A backend is a name and two callables with the signatures of
``_reference_project`` / ``_reference_rasterize`` below, plus a check that says whether it can run here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch

from .reference import Projected, _check_inputs, _tile_rect, bin_gaussians, render_tiles
from .reference import project_gaussians as _project_reference
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
            from ._cpu_backend import load_cpu_extension
            log.info("rasterizer backend for CPU tensors: cpu (the C++ backend built and loaded; %s tile loops)",
                     load_cpu_extension().isa())
        else:
            log.warning("rasterizer backend for CPU tensors: reference (slow PyTorch), because the C++ CPU "
                        "backend is unavailable: %s", reason)
    return reason is None


class ProjectedGaussians(NamedTuple):
    """The output of the project stage and the input of the rasterize stage, one row per Gaussian.

    means2d:       [N, 2] float32 pixel coordinates (0 for culled); differentiable.  Call
                   ``means2d.retain_grad()`` before backward to read dL/dmeans2d (pixel units).
    conics:        [N, 3] float32 inverse 2D covariance (a, b, c) of [[a, b], [b, c]]; differentiable.
    colors:        [N, 3] float32 RGB (SH evaluated, or the precomputed colours); differentiable.
    opacities:     [N] float32 activated opacities; differentiable.
    depths:        [N] float32 camera-space z (sorting only: the rasterize stage gives it no gradient).
    radii:         [N] int32 3-sigma screen radius in pixels, 0 for culled Gaussians.
    tiles_touched: [N] int32 number of 16x16 tiles the Gaussian's square overlaps (0 for culled).
    """

    means2d: torch.Tensor
    conics: torch.Tensor
    colors: torch.Tensor
    opacities: torch.Tensor
    depths: torch.Tensor
    radii: torch.Tensor
    tiles_touched: torch.Tensor

    def select(self, index: torch.Tensor) -> "ProjectedGaussians":
        """Rows by bool mask or index tensor (differentiable through the float fields)."""
        return ProjectedGaussians(*(t[index] for t in self))

    @staticmethod
    def cat(parts: list["ProjectedGaussians"]) -> "ProjectedGaussians":
        """Rows of several sets, in order (depth ties keep this order when rasterized)."""
        return ProjectedGaussians(*(torch.cat(ts, dim=0) for ts in zip(*parts)))


ProjectFn = Callable[..., ProjectedGaussians]
RasterizeFn = Callable[..., tuple]


@dataclass(frozen=True)
class StageBackend:
    """One backend's two stages.

    project(means, scales, rotations, opacities, shs, colors_precomp, settings) -> ProjectedGaussians
    rasterize(proj, settings, atomics, balance_threshold) -> (image [3, H, W], final_T [H, W],
        n_contrib [H, W] int32[, depth [H, W], the expected depth, not differentiable]); the three built-in
        backends return the depth; a registered one that leaves it out gives RasterOutput.depth = None
    check(device) raises CudaBackendUnavailable when the backend cannot run on tensors of ``device``
    here; ``auto`` then falls back to the reference (with one warning).
    """

    name: str
    project: ProjectFn
    rasterize: RasterizeFn
    check: Callable[[torch.device], None] = lambda device: None


STAGE_BACKENDS: dict[str, StageBackend] = {}


def register_stage_backend(name: str, project: ProjectFn, rasterize: RasterizeFn,
                           check: Callable[[torch.device], None] = lambda device: None) -> None:
    STAGE_BACKENDS[name] = StageBackend(name, project, rasterize, check)


# -- the reference's stages -------------------------------------------------------------------------
def _reference_project(means, scales, rotations, opacities, shs, colors_precomp, settings) -> ProjectedGaussians:
    p = _project_reference(means, scales, rotations, opacities, shs, colors_precomp, settings)
    tiles = (p.rect_max - p.rect_min).prod(-1).to(torch.int32)
    return ProjectedGaussians(p.means2d, p.conics, p.colors, p.opacities, p.depths, p.radii, tiles)


def _reference_rasterize(proj: ProjectedGaussians, settings: RasterSettings, atomics: str, balance_threshold: int):
    # The tile rectangle follows from the 2D mean and the radius (the original's getRect), so rows that
    # travelled without it bin exactly as where they were projected.
    visible = proj.radii > 0
    rect_min, rect_max = _tile_rect(proj.means2d, proj.radii, settings)
    rect_max = torch.where(visible[:, None], rect_max, rect_min)
    p = Projected(proj.means2d, proj.conics, proj.colors, proj.opacities, proj.depths, proj.radii,
                  rect_min, rect_max)
    gaussian_ids, tile_ranges = bin_gaussians(p, settings)
    return render_tiles(p, settings, gaussian_ids, tile_ranges, with_depth=True)


def _need_cuda(t: torch.Tensor, caller: str) -> None:
    if not t.is_cuda:
        from ._backend import CudaBackendUnavailable
        raise CudaBackendUnavailable(f"{caller}(backend='cuda') needs CUDA tensors, got tensors on {t.device}")


def _cuda_project(means, *args):
    from .autograd import project_gaussians_cuda
    _need_cuda(means, "project_gaussians")
    return project_gaussians_cuda(means, *args)


def _cuda_rasterize(proj, *args):
    from .autograd import rasterize_projected_cuda
    _need_cuda(proj.means2d, "rasterize_projected")
    return rasterize_projected_cuda(proj, *args)


def _cuda_check(device: torch.device):
    from ._backend import CudaBackendUnavailable, load_extension
    if device.type != "cuda":
        raise CudaBackendUnavailable(f"the cuda backend needs CUDA tensors, got tensors on {device}")
    load_extension()


def _cpu_project(means, scales, rotations, opacities, shs, colors_precomp, settings) -> ProjectedGaussians:
    from .cpu_autograd import _as_f32, preprocess_cpu
    opac = _as_f32(opacities, "opacities").reshape(-1)
    colors_f = _as_f32(colors_precomp, "colors_precomp")
    pre = preprocess_cpu(means, scales, rotations, shs, settings)
    colors = pre.colors if colors_f is None else colors_f
    return ProjectedGaussians(pre.means2d, pre.conics, colors, opac, pre.depths, pre.radii, pre.tiles)


def _cpu_rasterize(proj: ProjectedGaussians, settings: RasterSettings, atomics: str, balance_threshold: int):
    from .cpu_autograd import render_cpu
    return render_cpu(proj.means2d, proj.conics, proj.colors, proj.opacities, proj.depths,
                      proj.radii.to(torch.int32), proj.tiles_touched.to(torch.int32), settings)


def _cpu_check(device: torch.device):
    from ._cpu_backend import load_cpu_extension
    if device.type != "cpu":
        raise ValueError(f"the cpu backend needs CPU tensors, got tensors on {device}")
    load_cpu_extension()   # CpuBackendUnavailable (no compiler, build failed) says why


register_stage_backend("reference", _reference_project, _reference_rasterize)
register_stage_backend("cuda", _cuda_project, _cuda_rasterize, _cuda_check)
register_stage_backend("cpu", _cpu_project, _cpu_rasterize, _cpu_check)


# -- dispatch ---------------------------------------------------------------------------------------
def _resolve(backend: str, device: torch.device, caller: str, dtype: torch.dtype = torch.float32) -> StageBackend:
    """The backend to use for tensors on ``device``; ``auto`` = cuda for CUDA tensors (falling back to
    the reference, with one warning, when the extension cannot be built); for CPU tensors the C++ backend
    when it builds (one log line says which and why), except float64 tensors, which the reference computes
    in float64 where the C++ backend computes in float32."""
    from ._backend import CudaBackendUnavailable
    names = ("auto",) + tuple(STAGE_BACKENDS)
    if backend not in names:
        raise ValueError(f"{caller}: backend must be one of {', '.join(names)}, got {backend!r}")
    if backend != "auto":
        chosen = STAGE_BACKENDS[backend]
        chosen.check(device)
        return chosen
    if device.type == "cuda":
        try:
            STAGE_BACKENDS["cuda"].check(device)
            return STAGE_BACKENDS["cuda"]
        except CudaBackendUnavailable as err:
            global _fallback_warned
            if not _fallback_warned:
                log.warning("CUDA rasterizer unavailable, using the (slow) PyTorch reference: %s", err)
                _fallback_warned = True
    elif device.type == "cpu" and dtype != torch.float64 and _cpu_auto_available():
        return STAGE_BACKENDS["cpu"]
    return STAGE_BACKENDS["reference"]


def _check_tensor(means, caller: str) -> None:
    if not isinstance(means, torch.Tensor):
        raise ValueError(f"{caller}: means must be a tensor, got {type(means).__name__}")


def _check_modes(atomics: str, balance_threshold: int, caller: str) -> None:
    if atomics not in ATOMICS_MODES:
        raise ValueError(f"{caller}: atomics must be one of {ATOMICS_MODES}, got {atomics!r}")
    if not 1 <= int(balance_threshold) <= 33:
        raise ValueError(f"{caller}: balance_threshold must be in 1..33, got {balance_threshold}")


def project_gaussians(means: torch.Tensor, scales: torch.Tensor, rotations: torch.Tensor,
                      opacities: torch.Tensor, shs: Optional[torch.Tensor] = None,
                      colors_precomp: Optional[torch.Tensor] = None, *, settings: RasterSettings,
                      backend: str = "auto") -> ProjectedGaussians:
    """Stage 1: project N 3D Gaussians into the camera; differentiable w.r.t. every tensor input.

    Args: as ``rasterize_gaussians`` (means [N, 3], scales [N, 3], rotations [N, 4], opacities [N] or
        [N, 1], shs [N, K, 3] or colors_precomp [N, 3], settings, backend).
    Returns: ProjectedGaussians, N rows (culled ones have radius 0).
    """
    _check_tensor(means, "project_gaussians")
    _check_inputs(means, scales, rotations, opacities, shs, colors_precomp, settings)
    chosen = _resolve(backend, means.device, "project_gaussians", means.dtype)
    return chosen.project(means, scales, rotations, opacities, shs, colors_precomp, settings)


def rasterize_projected(proj: ProjectedGaussians, *, settings: RasterSettings, atomics: str = DEFAULT_ATOMICS,
                        balance_threshold: int = DEFAULT_BALANCE_THRESHOLD, backend: str = "auto") -> RasterOutput:
    """Stage 2: bin, depth-sort and alpha-blend projected Gaussians; differentiable w.r.t. means2d, conics,
    colors and opacities.

    Args:
        proj: ProjectedGaussians with M rows (any subset or concatenation of project_gaussians' rows).
        settings: the camera the rows were projected for (image size, background).
        atomics, balance_threshold, backend: as ``rasterize_gaussians``.
    Returns:
        RasterOutput(image [3, H, W], radii [M], means2d [M, 2], depths [M], final_T [H, W],
        n_contrib [H, W], depth [H, W] expected view-space depth, no gradient); radii, means2d and depths are
        proj's own tensors.
    """
    _check_modes(atomics, balance_threshold, "rasterize_projected")
    m = proj.means2d.shape[0]
    shapes = dict(means2d=(m, 2), conics=(m, 3), colors=(m, 3), opacities=(m,), depths=(m,), radii=(m,),
                  tiles_touched=(m,))
    for name, shape in shapes.items():
        t = getattr(proj, name)
        if tuple(t.shape) != shape:
            raise ValueError(f"rasterize_projected: {name} must have shape {list(shape)}, got {list(t.shape)}")
        if t.device != proj.means2d.device:
            raise ValueError(f"rasterize_projected: {name} is on {t.device} but means2d is on {proj.means2d.device}")
    chosen = _resolve(backend, proj.means2d.device, "rasterize_projected", proj.means2d.dtype)
    image, final_T, n_contrib, *depth = chosen.rasterize(proj, settings, atomics, int(balance_threshold))
    return RasterOutput(image, proj.radii, proj.means2d, proj.depths, final_T, n_contrib, *depth)


def rasterize_gaussians(means: torch.Tensor, scales: torch.Tensor, rotations: torch.Tensor,
                        opacities: torch.Tensor, shs: Optional[torch.Tensor] = None,
                        colors_precomp: Optional[torch.Tensor] = None, *, settings: RasterSettings,
                        atomics: str = DEFAULT_ATOMICS,
                        balance_threshold: int = DEFAULT_BALANCE_THRESHOLD,
                        backend: str = "auto") -> RasterOutput:
    """Render Gaussians (``rasterize_projected(project_gaussians(...))``); differentiable w.r.t. every
    tensor input.

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
        RasterOutput(image [3, H, W], radii [N], means2d [N, 2], depths [N], final_T [H, W], n_contrib [H, W],
        depth [H, W] expected view-space depth, no gradient; every built-in backend computes it).
    """
    _check_modes(atomics, balance_threshold, "rasterize_gaussians")
    _check_tensor(means, "rasterize_gaussians")
    _check_inputs(means, scales, rotations, opacities, shs, colors_precomp, settings)
    chosen = _resolve(backend, means.device, "rasterize_gaussians", means.dtype)
    proj = chosen.project(means, scales, rotations, opacities, shs, colors_precomp, settings)
    image, final_T, n_contrib, *depth = chosen.rasterize(proj, settings, atomics, int(balance_threshold))
    return RasterOutput(image, proj.radii, proj.means2d, proj.depths, final_T, n_contrib, *depth)
