"""torch.autograd.Functions over the CUDA extension: one per differentiable op.

``_Preprocess``: (means, scales, rotations, shs) -> (means2d, conics, colors, depths) [+ radii, tiles].
``_Render``: (means2d, conics, colors, opacities) -> (image, final_T) [+ n_contrib, depth]; it bins the
Gaussians (non-differentiable) before compositing; the expected depth comes from the same forward pass and
carries no gradient.

``means2d`` is an output of the first and an input of the second, so ``out.means2d.retain_grad()`` gives
dL/dmeans2d in pixel units, as with the reference.  Everything runs on the current CUDA stream of the
tensors' device; the binning synchronises once (to size the sorted list).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ._backend import CudaBackendUnavailable, debug_enabled, load_extension
from .reference import FRUSTUM_CLAMP
from .settings import ATOMICS_MODES, RasterOutput, RasterSettings

#: Kernel ids of the gradient-accumulation policies (csrc/rasterizer.h, AtomicsMode).
MODE_IDS = {"baseline": 0, "warp": 1, "distwar": 2, "tile": 3, "floor": 4}


def camera_scalars(settings: RasterSettings) -> tuple[tuple, tuple]:
    """(floats, ints) of the camera as csrc/bindings.cpp's make_camera reads them.  The sums are formed in
    double, as the reference forms them from Python floats, and rounded to float32 once by the glue."""
    floats = (float(settings.fx), float(settings.fy), settings.cx - 0.5, settings.cy - 0.5,
              FRUSTUM_CLAMP * settings.tanfovx, FRUSTUM_CLAMP * settings.tanfovy, float(settings.scale_modifier))
    ints = (int(settings.image_width), int(settings.image_height), int(settings.sh_degree))
    return floats, ints


@dataclass(frozen=True)
class CameraArgs:
    """The camera as the extension takes it (see csrc/bindings.cpp, make_camera)."""

    view: torch.Tensor      # [16] float32, row-major world-to-camera
    campos: torch.Tensor    # [3] float32
    bg: torch.Tensor        # [3] float32
    floats: tuple           # fx, fy, cx - 0.5, cy - 0.5, 1.3 tan(fovx/2), 1.3 tan(fovy/2), scale_modifier
    ints: tuple             # width, height, sh_degree
    stream: int
    debug: bool

    def args(self) -> tuple:
        return (self.view, self.campos, self.bg, list(self.floats), list(self.ints), self.stream, self.debug)

    @staticmethod
    def make(settings: RasterSettings, device: torch.device) -> "CameraArgs":
        f32 = dict(device=device, dtype=torch.float32)
        view = settings.viewmatrix.detach().to(**f32).contiguous().reshape(16)
        campos = settings.campos.detach().to(**f32).contiguous().reshape(3)
        bg = settings.bg.detach().to(**f32).contiguous().reshape(3)
        floats, ints = camera_scalars(settings)
        return CameraArgs(view, campos, bg, floats, ints, _current_stream(device), debug_enabled(settings.debug))


def _current_stream(device: torch.device) -> int:
    """The raw cudaStream_t of the device's current stream (the extension launches on it)."""
    return int(torch.cuda.current_stream(device).cuda_stream)


def _c(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


class _Preprocess(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, scales, rotations, shs, cam: CameraArgs):
        ext = load_extension()
        means2d, conics, colors, depths, radii, tiles, clamped = ext.preprocess_forward(
            means, scales, rotations, shs, *cam.args())
        ctx.cam = cam
        ctx.has_shs = shs is not None
        ctx.save_for_backward(means, scales, rotations, shs, tiles, clamped)
        ctx.mark_non_differentiable(radii, tiles)
        ctx.set_materialize_grads(False)
        return means2d, conics, colors, depths, radii, tiles

    @staticmethod
    def backward(ctx, g_means2d, g_conics, g_colors, g_depths, _g_radii, _g_tiles):
        need = ctx.needs_input_grad
        if not any(need[:4]):
            return None, None, None, None, None
        means, scales, rotations, shs, tiles, clamped = ctx.saved_tensors
        n = means.shape[0]
        zeros = lambda *shape: torch.zeros(*shape, device=means.device, dtype=torch.float32)  # noqa: E731
        g_means2d = zeros(n, 2) if g_means2d is None else g_means2d.contiguous()
        g_conics = zeros(n, 3) if g_conics is None else g_conics.contiguous()
        if ctx.has_shs:
            g_colors = zeros(n, 3) if g_colors is None else g_colors.contiguous()
        else:
            g_colors = None
        g_means, g_scales, g_rotations, g_shs = load_extension().preprocess_backward(
            means, scales, rotations, shs, tiles, clamped, g_means2d, g_conics, g_colors, _c(g_depths),
            *ctx.cam.args())
        return (g_means if need[0] else None, g_scales if need[1] else None,
                g_rotations if need[2] else None, g_shs if (need[3] and ctx.has_shs) else None, None)


class _Render(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, depths, radii, tiles, cam: CameraArgs, mode: int,
                balance_threshold: int):
        ext = load_extension()
        point_list, ranges = ext.bin_gaussians(means2d, depths, radii, tiles, *cam.args())
        image, final_T, n_contrib, depth = ext.render_forward(means2d, conics, colors, opacities, depths,
                                                              point_list, ranges, *cam.args())
        ctx.cam = cam
        ctx.mode = mode
        ctx.balance_threshold = balance_threshold
        ctx.save_for_backward(means2d, conics, colors, opacities, point_list, ranges, final_T, n_contrib)
        ctx.mark_non_differentiable(n_contrib, depth)
        ctx.set_materialize_grads(False)
        return image, final_T, n_contrib, depth

    @staticmethod
    def backward(ctx, g_image, g_final_T, _g_n_contrib, _g_depth):
        need = ctx.needs_input_grad
        if not any(need[:4]) or (g_image is None and g_final_T is None):
            return (None,) * 10
        means2d, conics, colors, opacities, point_list, ranges, final_T, n_contrib = ctx.saved_tensors
        if g_image is None:
            g_image = torch.zeros((3,) + tuple(final_T.shape), device=final_T.device, dtype=torch.float32)
        g_m2d, g_con, g_col, g_op = load_extension().render_backward(
            means2d, conics, colors, opacities, point_list, ranges, final_T, n_contrib, g_image.contiguous(),
            _c(g_final_T), *ctx.cam.args()[:5], ctx.mode, ctx.balance_threshold, *ctx.cam.args()[5:])
        return (g_m2d if need[0] else None, g_con if need[1] else None, g_col if need[2] else None,
                g_op if need[3] else None) + (None,) * 6


def _as_f32(t: Optional[torch.Tensor], name: str, device: torch.device) -> Optional[torch.Tensor]:
    if t is None:
        return None
    if t.device != device:
        raise ValueError(f"rasterize_gaussians: {name} is on {t.device} but means is on {device}")
    return t.to(torch.float32).contiguous()


def rasterize_gaussians_cuda(means: torch.Tensor, scales: torch.Tensor, rotations: torch.Tensor,
                             opacities: torch.Tensor, shs: Optional[torch.Tensor],
                             colors_precomp: Optional[torch.Tensor], *, settings: RasterSettings,
                             atomics: str, balance_threshold: int) -> RasterOutput:
    """The CUDA pipeline, same call and outputs as ``rasterize_gaussians_reference``.

    Args (N Gaussians, float tensors on one CUDA device; other float dtypes are cast to float32):
        means [N, 3], scales [N, 3], rotations [N, 4] (w, x, y, z), opacities [N] or [N, 1];
        shs [N, K, 3] or colors_precomp [N, 3] (exactly one); settings: the camera;
        atomics: one of ATOMICS_MODES; balance_threshold: 1..33 (distwar and tile).
    Returns RasterOutput(image [3, H, W], radii [N] int32, means2d [N, 2], depths [N], final_T [H, W],
        n_contrib [H, W] int32, depth [H, W] expected depth, no gradient).
    """
    if not means.is_cuda:
        raise CudaBackendUnavailable(f"rasterize_gaussians_cuda needs CUDA tensors, got means on {means.device}")
    if atomics not in ATOMICS_MODES:
        raise ValueError(f"rasterize_gaussians: atomics must be one of {ATOMICS_MODES}, got {atomics!r}")
    if not 1 <= int(balance_threshold) <= 33:
        raise ValueError(f"rasterize_gaussians: balance_threshold must be in 1..33, got {balance_threshold}")
    if (shs is None) == (colors_precomp is None):
        raise ValueError("rasterize_gaussians: give exactly one of shs and colors_precomp")
    from .reference import _check_inputs
    _check_inputs(means, scales, rotations, opacities, shs, colors_precomp, settings)
    load_extension()  # raises CudaBackendUnavailable before any graph is built
    return _rasterize(means, scales, rotations, opacities, shs, colors_precomp, settings, atomics,
                      int(balance_threshold))


def project_gaussians_cuda(means, scales, rotations, opacities, shs, colors_precomp, settings):
    """The project stage on the extension (inputs already checked by api.project_gaussians).

    Returns api.ProjectedGaussians (means2d [N, 2], conics [N, 3], colors [N, 3], opacities [N], depths [N],
    radii [N] int32, tiles_touched [N] int32), differentiable through _Preprocess.
    """
    from .api import ProjectedGaussians
    load_extension()  # raises CudaBackendUnavailable before any graph is built
    device = means.device
    cam = CameraArgs.make(settings, device)
    means2d, conics, colors, depths, radii, tiles = _Preprocess.apply(
        _as_f32(means, "means", device), _as_f32(scales, "scales", device),
        _as_f32(rotations, "rotations", device), _as_f32(shs, "shs", device), cam)
    if colors_precomp is not None:
        colors = _as_f32(colors_precomp, "colors_precomp", device)
    return ProjectedGaussians(means2d, conics, colors, _as_f32(opacities, "opacities", device).reshape(-1),
                              depths, radii, tiles)


def rasterize_projected_cuda(proj, settings, atomics, balance_threshold):
    """The rasterize stage on the extension: bin + render, differentiable through _Render.
    Returns (image [3, H, W], final_T [H, W], n_contrib [H, W] int32, depth [H, W] expected depth
    sum alpha * T * z, not differentiable)."""
    load_extension()
    device = proj.means2d.device
    cam = CameraArgs.make(settings, device)
    f32 = lambda t, name: _as_f32(t, name, device)  # noqa: E731
    radii = proj.radii.to(torch.int32).contiguous()
    tiles = proj.tiles_touched.to(torch.int32).contiguous()
    return _Render.apply(f32(proj.means2d, "means2d"), f32(proj.conics, "conics"), f32(proj.colors, "colors"),
                         f32(proj.opacities, "opacities").reshape(-1), f32(proj.depths, "depths").detach(),
                         radii, tiles, cam, MODE_IDS[atomics], int(balance_threshold))


def _rasterize(means, scales, rotations, opacities, shs, colors_precomp, settings, atomics, balance_threshold):
    """The pipeline behind rasterize_gaussians_cuda, inputs already checked: the two stages composed."""
    proj = project_gaussians_cuda(means, scales, rotations, opacities, shs, colors_precomp, settings)
    image, final_T, n_contrib, depth = rasterize_projected_cuda(proj, settings, atomics, balance_threshold)
    return RasterOutput(image, proj.radii, proj.means2d, proj.depths, final_T, n_contrib, depth)
