"""torch.autograd.Functions over the CPU backend (csrc/cpu/), the twins of autograd.py's CUDA ones.

``preprocess_cpu``: (means, scales, rotations, shs) -> Preprocessed(means2d, conics, colors, depths, radii,
tiles_touched), differentiable in means, scales, rotations, shs.
``render_cpu``: (means2d, conics, colors, opacities) + (depths, radii, tiles_touched) -> (image, final_T,
n_contrib, depth); it bins the Gaussians (not differentiable) before compositing, and is differentiable in
means2d, conics, colors and opacities (the expected depth, from the same pass, carries no gradient).

The two stages are callable on their own (the projected Gaussians can come from elsewhere, e.g. another
rank); ``rasterize_gaussians_cpu`` is their composition, with the same call and outputs as the reference.

Numerics: float32 throughout (math.cuh is float code); other floating dtypes are cast to float32 on the way
in, and autograd casts the gradients back.  Deterministic: bitwise the same results for any thread count
(every sum has a fixed order, see csrc/cpu/cpu_rasterizer.h).  Threads: torch.get_num_threads().
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ._cpu_backend import load_cpu_extension
from .autograd import camera_scalars
from .settings import RasterOutput, RasterSettings


class CpuCamera:
    """The camera as the CPU extension takes it: view [16], campos [3], bg [3] float32, floats, ints."""

    __slots__ = ("view", "campos", "bg", "floats", "ints")

    def __init__(self, settings: RasterSettings):
        f32 = dict(device="cpu", dtype=torch.float32)
        self.view = settings.viewmatrix.detach().to(**f32).contiguous().reshape(16)
        self.campos = settings.campos.detach().to(**f32).contiguous().reshape(3)
        self.bg = settings.bg.detach().to(**f32).contiguous().reshape(3)
        floats, ints = camera_scalars(settings)
        self.floats, self.ints = list(floats), list(ints)

    def args(self) -> tuple:
        return (self.view, self.campos, self.bg, self.floats, self.ints)


class Preprocessed(NamedTuple):
    """The first stage's outputs (per Gaussian)."""

    means2d: torch.Tensor   # [N, 2] pixel coordinates, 0 for culled
    conics: torch.Tensor    # [N, 3] inverse 2D covariance (A, B, C) of [[A, B], [B, C]]
    colors: torch.Tensor    # [N, 3] SH colour (empty [0] when colours are precomputed)
    depths: torch.Tensor    # [N] camera-space z
    radii: torch.Tensor     # [N] int32, 0 for culled
    tiles: torch.Tensor     # [N] int32 tiles touched, 0 for culled


class _PreprocessCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, scales, rotations, shs, cam: CpuCamera):
        ext = load_cpu_extension()
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
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float32)  # noqa: E731
        g_means2d = zeros(n, 2) if g_means2d is None else g_means2d.contiguous()
        g_conics = zeros(n, 3) if g_conics is None else g_conics.contiguous()
        g_colors = None if (g_colors is None or not ctx.has_shs) else g_colors.contiguous()
        g_depths = None if g_depths is None else g_depths.contiguous()
        g_means, g_scales, g_rotations, g_shs = load_cpu_extension().preprocess_backward(
            means, scales, rotations, shs, tiles, clamped, g_means2d, g_conics, g_colors, g_depths,
            *ctx.cam.args())
        return (g_means if need[0] else None, g_scales if need[1] else None,
                g_rotations if need[2] else None, g_shs if (need[3] and ctx.has_shs) else None, None)


class _RenderCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, depths, radii, tiles, cam: CpuCamera):
        ext = load_cpu_extension()
        point_list, ranges, offsets, pair_pos = ext.bin_gaussians(means2d, depths, radii, tiles, *cam.args())
        image, final_T, n_contrib, depth = ext.render_forward(means2d, conics, colors, opacities, depths,
                                                              point_list, ranges, *cam.args())
        ctx.cam = cam
        ctx.save_for_backward(means2d, conics, colors, opacities, point_list, ranges, offsets, pair_pos,
                              final_T, n_contrib)
        ctx.mark_non_differentiable(n_contrib, depth)
        ctx.set_materialize_grads(False)
        return image, final_T, n_contrib, depth

    @staticmethod
    def backward(ctx, g_image, g_final_T, _g_n_contrib, _g_depth):
        need = ctx.needs_input_grad
        if not any(need[:4]) or (g_image is None and g_final_T is None):
            return (None,) * 8
        saved = ctx.saved_tensors
        final_T = saved[8]
        if g_image is None:
            g_image = torch.zeros((3,) + tuple(final_T.shape), dtype=torch.float32)
        g_m2d, g_con, g_col, g_op = load_cpu_extension().render_backward(
            *saved, g_image.contiguous(), None if g_final_T is None else g_final_T.contiguous(), *ctx.cam.args())
        return (g_m2d if need[0] else None, g_con if need[1] else None, g_col if need[2] else None,
                g_op if need[3] else None) + (None,) * 4


def _as_f32(t: Optional[torch.Tensor], name: str) -> Optional[torch.Tensor]:
    """float32, contiguous, on the CPU; a ValueError naming the tensor otherwise."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"rasterize_gaussians (cpu backend): {name} must be a tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"rasterize_gaussians (cpu backend): {name} must be a CPU tensor, got {t.device}")
    if not t.dtype.is_floating_point:
        raise ValueError(f"rasterize_gaussians (cpu backend): {name} must be a floating-point tensor, got {t.dtype}")
    return t.to(torch.float32).contiguous()


def preprocess_cpu(means: torch.Tensor, scales: torch.Tensor, rotations: torch.Tensor,
                   shs: Optional[torch.Tensor], settings: RasterSettings) -> Preprocessed:
    """Stage 1 on the CPU: project the 3D Gaussians (cull, EWA covariance, conic, radius, tiles, SH colour).

    Args: means [N, 3], scales [N, 3] (activated), rotations [N, 4] (w, x, y, z), shs [N, K, 3] or None
    (colours precomputed by the caller: ``colors`` comes back empty); settings: the camera.
    """
    cam = CpuCamera(settings)
    out = _PreprocessCPU.apply(_as_f32(means, "means"), _as_f32(scales, "scales"),
                               _as_f32(rotations, "rotations"), _as_f32(shs, "shs"), cam)
    return Preprocessed(*out)


def render_cpu(means2d: torch.Tensor, conics: torch.Tensor, colors: torch.Tensor, opacities: torch.Tensor,
               depths: torch.Tensor, radii: torch.Tensor, tiles: torch.Tensor, settings: RasterSettings):
    """Stage 2 on the CPU: bin, depth-sort per tile and composite the projected Gaussians.

    Args: means2d [N, 2], conics [N, 3], colors [N, 3], opacities [N] (differentiable); depths [N],
    radii [N] int32, tiles [N] int32 (the binning, as stage 1 returns them).
    Returns (image [3, H, W], final_T [H, W], n_contrib [H, W] int32, depth [H, W] expected depth
    sum alpha * T * z, not differentiable).
    """
    for name, t in (("radii", radii), ("tiles", tiles)):
        if t.dtype != torch.int32:
            raise ValueError(f"rasterize_gaussians (cpu backend): {name} must be int32, got {t.dtype}")
    return _RenderCPU.apply(_as_f32(means2d, "means2d"), _as_f32(conics, "conics"), _as_f32(colors, "colors"),
                            _as_f32(opacities, "opacities").reshape(-1), _as_f32(depths, "depths").detach(),
                            radii.contiguous(), tiles.contiguous(), CpuCamera(settings))


def rasterize_gaussians_cpu(means: torch.Tensor, scales: torch.Tensor, rotations: torch.Tensor,
                            opacities: torch.Tensor, shs: Optional[torch.Tensor],
                            colors_precomp: Optional[torch.Tensor], *, settings: RasterSettings) -> RasterOutput:
    """The CPU pipeline, same call and outputs as ``rasterize_gaussians_reference``.

    Args (N Gaussians, floating-point CPU tensors; computed in float32, gradients in the inputs' dtypes):
        means [N, 3], scales [N, 3], rotations [N, 4] (w, x, y, z), opacities [N] or [N, 1];
        shs [N, K, 3] or colors_precomp [N, 3] (exactly one); settings: the camera.
    Returns RasterOutput(image [3, H, W], radii [N] int32, means2d [N, 2], depths [N], final_T [H, W],
        n_contrib [H, W] int32, depth [H, W] expected depth, no gradient), in float32.
    Raises ValueError naming the tensor for a wrong shape, device or dtype, or a NaN.
    Deterministic: bitwise the same for any thread count.
    """
    from .reference import _check_inputs
    _check_inputs(means, scales, rotations, opacities, shs, colors_precomp, settings)
    _as_f32(means, "means")  # device and dtype of means first: the others are checked against it
    opacities_f = _as_f32(opacities, "opacities")
    colors_f = _as_f32(colors_precomp, "colors_precomp")
    load_cpu_extension()  # raises CpuBackendUnavailable before any graph is built
    pre = preprocess_cpu(means, scales, rotations, shs, settings)
    colors = pre.colors if colors_f is None else colors_f
    image, final_T, n_contrib, depth = render_cpu(pre.means2d, pre.conics, colors, opacities_f, pre.depths,
                                                  pre.radii, pre.tiles, settings)
    return RasterOutput(image, pre.radii, pre.means2d, pre.depths, final_T, n_contrib, depth)
