"""Pure-PyTorch differentiable rasterizer with the exact semantics of the original 3DGS rasterizer.

It is the ground truth for the CUDA kernels' tests and the CPU fallback of the trainer.  Gradients come
from autograd.  The pipeline mirrors the CUDA one stage by stage:

1. ``project_gaussians``: near-plane cull (z <= 0.2), 3D covariance from scale and quaternion, EWA
   projection with the Jacobian clamp at 1.3 tan(fov) and the +0.3 low-pass, conic, 3-sigma radius, tile
   rectangle, SH colour (+0.5, clamped at 0).
2. ``bin_gaussians``: (tile, depth) ordering of every (Gaussian, tile touched) pair; ties keep index order,
   as the CUDA path's stable radix sort does.
3. ``render_tiles``: per 16x16 tile, front-to-back compositing with alpha = min(0.99, opacity * G), skipping
   power > 0 and alpha < 1/255, stopping before transmittance drops below 1e-4.

Memory stays bounded because each tile is composited on its own, and because a first pass without
autograd finds, per tile, the last Gaussian that any of its pixels uses: the differentiable pass only
sees that prefix of the tile's list.

Measured on the 2-core CI-class machine (torch 2.13.0 CPU build, float32, one thread, 2026-11-22) with
``python -c "import cuda_rasterizer.reference as r; r._benchmark()"``: a 256x256 image of 20,000 random
Gaussians (SH degree 3, 225k tile-Gaussian pairs) takes 2.3 to 3.2 s CPU for the forward pass and 1.0 s for
the backward pass (four runs on a machine shared with other jobs), at 1.4 GiB peak resident memory for the
whole process.  With two threads on the loaded machine, OpenMP spin-waiting made the same run 10x slower:
pin one thread when the machine is busy.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .settings import BLOCK_X, BLOCK_Y, NEAR_PLANE, RasterOutput, RasterSettings
from .sh import eval_sh

ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
LOW_PASS = 0.3
FRUSTUM_CLAMP = 1.3
POWER_FLOOR = -30.0  # exp(-30) ~ 1e-13: far below 1/255, far above float32's denormals
MASK_CHUNK = 256  # Gaussians per step of the no-autograd pass over a tile's list


class Projected(NamedTuple):
    """Per-Gaussian screen-space quantities (the output of the preprocess stage)."""

    means2d: torch.Tensor    # [N, 2] pixel coordinates, 0 for culled
    conics: torch.Tensor     # [N, 3] inverse 2D covariance (a, b, c) of [[a, b], [b, c]]
    colors: torch.Tensor     # [N, 3]
    opacities: torch.Tensor  # [N]
    depths: torch.Tensor     # [N] camera-space z
    radii: torch.Tensor      # [N] int32, 0 for culled
    rect_min: torch.Tensor   # [N, 2] int64 first tile touched (x, y)
    rect_max: torch.Tensor   # [N, 2] int64 one past the last tile touched (x, y)


def quaternion_to_rotation(q: torch.Tensor) -> torch.Tensor:
    """[N, 4] (w, x, y, z) -> [N, 3, 3].  Not normalised here, as in the original rasterizer."""
    r, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - r * z), 2 * (x * z + r * y),
        2 * (x * y + r * z), 1 - 2 * (x * x + z * z), 2 * (y * z - r * x),
        2 * (x * z - r * y), 2 * (y * z + r * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(q.shape[:-1] + (3, 3))


def compute_cov3d(scales: torch.Tensor, rotations: torch.Tensor, scale_modifier: float = 1.0) -> torch.Tensor:
    """Sigma = R S S^T R^T.  scales [N, 3] (already activated), rotations [N, 4] -> [N, 3, 3]."""
    m = quaternion_to_rotation(rotations) * (scale_modifier * scales)[:, None, :]
    return m @ m.transpose(1, 2)


def _tile_rect(means2d: torch.Tensor, radius: torch.Tensor, settings: RasterSettings):
    """The original's getRect: tiles [min, max) overlapped by the square of half-side ``radius``."""
    gx, gy = settings.tile_grid
    r = radius.to(means2d.dtype)
    px, py = means2d[:, 0].detach(), means2d[:, 1].detach()
    xmin = torch.floor((px - r) / BLOCK_X).clamp(0, gx).long()
    ymin = torch.floor((py - r) / BLOCK_Y).clamp(0, gy).long()
    xmax = torch.floor((px + r + BLOCK_X - 1) / BLOCK_X).clamp(0, gx).long()
    ymax = torch.floor((py + r + BLOCK_Y - 1) / BLOCK_Y).clamp(0, gy).long()
    return torch.stack([xmin, ymin], -1), torch.stack([xmax, ymax], -1)


def project_gaussians(means: torch.Tensor, scales: torch.Tensor, rotations: torch.Tensor,
                      opacities: torch.Tensor, shs: Optional[torch.Tensor],
                      colors_precomp: Optional[torch.Tensor], settings: RasterSettings) -> Projected:
    """The preprocess stage: see the module docstring.  Inputs as in ``rasterize_gaussians_reference``."""
    view = settings.viewmatrix.to(means)
    rot_w, t_w = view[:3, :3], view[:3, 3]
    p_view = means @ rot_w.T + t_w
    x, y, z = p_view.unbind(-1)
    in_front = z.detach() > NEAR_PLANE
    # Culled Gaussians take a harmless depth so that nothing below produces inf/NaN that could leak
    # into the gradients through 0 * inf.
    z_s = torch.where(in_front, z, torch.ones_like(z))

    mean_x = settings.fx * x / z_s + (settings.cx - 0.5)
    mean_y = settings.fy * y / z_s + (settings.cy - 0.5)

    # EWA: cov2D = J W Sigma W^T J^T, with the camera-space point clamped to 1.3x the frustum for J.
    limx = FRUSTUM_CLAMP * settings.tanfovx
    limy = FRUSTUM_CLAMP * settings.tanfovy
    txtz = (x / z_s).clamp(-limx, limx)
    tytz = (y / z_s).clamp(-limy, limy)
    zero = torch.zeros_like(z_s)
    jac = torch.stack([
        settings.fx / z_s, zero, -settings.fx * txtz / z_s,
        zero, settings.fy / z_s, -settings.fy * tytz / z_s,
    ], -1).reshape(-1, 2, 3)
    t_mat = jac @ rot_w
    cov3d = compute_cov3d(scales, rotations, settings.scale_modifier)
    cov2d = t_mat @ cov3d @ t_mat.transpose(1, 2)
    a = cov2d[:, 0, 0] + LOW_PASS
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + LOW_PASS
    det = a * c - b * b
    det_ok = det.detach() != 0
    det_inv = 1.0 / torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c * det_inv, -b * det_inv, a * det_inv], -1)

    with torch.no_grad():
        mid = 0.5 * (a + c)
        lambda1 = mid + torch.sqrt(torch.clamp_min(mid * mid - det, 0.1))
        radius = torch.ceil(3.0 * torch.sqrt(lambda1))
        radius = torch.where(in_front & det_ok & torch.isfinite(radius), radius, torch.zeros_like(radius))
    means2d_all = torch.stack([mean_x, mean_y], -1)
    rect_min, rect_max = _tile_rect(means2d_all, radius, settings)
    area = (rect_max - rect_min).prod(-1)
    visible = in_front & det_ok & (area > 0)

    radii = torch.where(visible, radius, torch.zeros_like(radius)).to(torch.int32)
    means2d = torch.where(visible[:, None], means2d_all, torch.zeros_like(means2d_all))
    rect_max = torch.where(visible[:, None], rect_max, rect_min)

    if colors_precomp is not None:
        colors = colors_precomp
    else:
        if shs is None:
            raise ValueError("rasterize_gaussians: give either shs or colors_precomp")
        dirs = means - settings.campos.to(means)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        colors = torch.clamp_min(eval_sh(settings.sh_degree, shs, dirs) + 0.5, 0.0)
    return Projected(means2d, conics, colors, opacities.reshape(-1), z, radii, rect_min, rect_max)


def bin_gaussians(proj: Projected, settings: RasterSettings):
    """Sorted (tile, depth) list of every (Gaussian, tile touched) pair.

    Returns (gaussian_ids [M] int64, tile_ranges [num_tiles + 1] int64): tile t's Gaussians, front to back,
    are ``gaussian_ids[tile_ranges[t]:tile_ranges[t + 1]]``.
    """
    gx, gy = settings.tile_grid
    n = proj.radii.shape[0]
    device = proj.radii.device
    span = proj.rect_max - proj.rect_min                       # [N, 2], 0 for culled
    count = span[:, 0] * span[:, 1]
    gauss = torch.repeat_interleave(torch.arange(n, device=device), count)
    first = torch.cumsum(count, 0) - count
    local = torch.arange(gauss.numel(), device=device) - first[gauss]
    w = span[gauss, 0].clamp_min(1)
    tx = proj.rect_min[gauss, 0] + local % w
    ty = proj.rect_min[gauss, 1] + local // w
    tile = ty * gx + tx
    depth_rank = torch.empty(n, dtype=torch.int64, device=device)
    depth_rank[torch.sort(proj.depths.detach(), stable=True).indices] = torch.arange(n, device=device)
    order = torch.sort(tile * max(n, 1) + depth_rank[gauss]).indices
    gaussian_ids = gauss[order]
    tile_counts = torch.bincount(tile, minlength=gx * gy)
    tile_ranges = torch.zeros(gx * gy + 1, dtype=torch.int64, device=device)
    tile_ranges[1:] = torch.cumsum(tile_counts, 0)
    return gaussian_ids, tile_ranges


def _tile_pixels(tx: int, ty: int, settings: RasterSettings, device, dtype):
    x0, y0 = tx * BLOCK_X, ty * BLOCK_Y
    xs = torch.arange(x0, min(x0 + BLOCK_X, settings.image_width), device=device)
    ys = torch.arange(y0, min(y0 + BLOCK_Y, settings.image_height), device=device)
    py, px = torch.meshgrid(ys, xs, indexing="ij")
    return px.reshape(-1), py.reshape(-1)


def _alphas(proj: Projected, ids: torch.Tensor, px: torch.Tensor, py: torch.Tensor):
    """[P, K] raw alpha opacity * exp(power) and the power itself."""
    xy = proj.means2d[ids]
    con = proj.conics[ids]
    dx = xy[:, 0][None, :] - px[:, None].to(xy.dtype)
    dy = xy[:, 1][None, :] - py[:, None].to(xy.dtype)
    power = -0.5 * (con[:, 0] * dx * dx + con[:, 2] * dy * dy) - con[:, 1] * dx * dy
    # exp() of the far tail gives denormal floats, 10-50x slower to compute with on a CPU.  Every composited
    # pair has power >= ln(1/255) > -5.6, so clamping the exponent at POWER_FLOOR changes no result.
    return proj.opacities[ids][None, :] * torch.exp(torch.clamp_min(power, POWER_FLOOR)), power


def contribution_mask(proj: Projected, ids: torch.Tensor, px: torch.Tensor, py: torch.Tensor,
                      chunk: int = MASK_CHUNK):
    """Which (pixel, Gaussian) pairs of one tile's list are composited.  [P, K'] bool, no autograd.

    A pair counts when power <= 0, alpha >= 1/255, and the transmittance after it stays >= 1e-4 (the
    first pair that would cross that line ends the pixel, as in the original's early stop).  The list is
    walked in chunks, the running transmittance carried from one to the next in the same order of
    multiplication as the kernel's; the walk stops once every pixel has stopped, so K' <= K columns come
    back (the Gaussians past K' are composited by no pixel of the tile).
    """
    with torch.no_grad():
        t_run = torch.ones(px.numel(), 1, dtype=proj.means2d.dtype, device=px.device)
        masks = []
        for start in range(0, ids.numel(), chunk):
            raw, power = _alphas(proj, ids[start:start + chunk], px, py)
            alpha = torch.clamp_max(raw, ALPHA_MAX)
            valid = (power <= 0) & (alpha >= ALPHA_MIN)
            one_minus = 1.0 - torch.where(valid, alpha, torch.zeros_like(alpha))
            t_after = torch.cumprod(torch.cat([t_run, one_minus], dim=1), dim=1)[:, 1:]
            masks.append(valid & (t_after >= T_MIN))
            t_run = t_after[:, -1:]
            if bool((t_run < T_MIN).all()):
                break
        return torch.cat(masks, dim=1)


def render_tiles(proj: Projected, settings: RasterSettings, gaussian_ids: torch.Tensor,
                 tile_ranges: torch.Tensor, *, with_depth: bool = False):
    """Composite every tile.  Returns image [3, H, W], final_T [H, W], n_contrib [H, W] int32, and with
    ``with_depth`` also the expected depth [H, W] (sum of alpha * T * z over the composited Gaussians, no
    gradient)."""
    H, W = settings.image_height, settings.image_width
    gx, gy = settings.tile_grid
    device, dtype = proj.means2d.device, proj.means2d.dtype
    bg = settings.bg.to(device=device, dtype=dtype).reshape(3)
    ranges = tile_ranges.tolist()
    pieces, pix_index, t_pieces, n_pieces, d_pieces = [], [], [], [], []
    z_all = proj.depths.detach()
    for ty in range(gy):
        for tx in range(gx):
            tile = ty * gx + tx
            px, py = _tile_pixels(tx, ty, settings, device, dtype)
            pix_index.append(py * W + px)
            start, end = ranges[tile], ranges[tile + 1]
            if end == start:
                pieces.append(bg.expand(px.numel(), 3))
                t_pieces.append(torch.ones(px.numel(), device=device, dtype=dtype))
                n_pieces.append(torch.zeros(px.numel(), device=device, dtype=torch.int32))
                d_pieces.append(torch.zeros(px.numel(), device=device, dtype=dtype))
                continue
            ids = gaussian_ids[start:end]
            keep = contribution_mask(proj, ids, px, py)
            position = torch.arange(1, keep.shape[1] + 1, device=device)
            n_contrib = (keep * position).amax(dim=1)
            k = int(n_contrib.max())          # no pixel of the tile uses the Gaussians past this one
            ids, keep = ids[:k], keep[:, :k]
            raw, _ = _alphas(proj, ids, px, py)
            # min(0.99, raw) in value, but the gradient passes straight through the clamp, as in the original.
            alpha = raw - torch.clamp_min(raw - ALPHA_MAX, 0.0).detach()
            alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
            t_after = torch.cumprod(1.0 - alpha, dim=1)
            t_before = torch.cat([torch.ones_like(t_after[:, :1]), t_after[:, :-1]], dim=1)
            final_t = t_after[:, -1] if k > 0 else torch.ones(px.numel(), device=device, dtype=dtype)
            color = (alpha * t_before) @ proj.colors[ids] if k > 0 else torch.zeros(px.numel(), 3, device=device, dtype=dtype)
            with torch.no_grad():
                d_pieces.append((alpha * t_before) @ z_all[ids].to(dtype) if k > 0
                                else torch.zeros(px.numel(), device=device, dtype=dtype))
            pieces.append(color + final_t[:, None] * bg)
            t_pieces.append(final_t)
            n_pieces.append(n_contrib.to(torch.int32))
    index = torch.cat(pix_index)
    inverse = torch.empty_like(index)
    inverse[index] = torch.arange(index.numel(), device=device)
    image = torch.cat(pieces)[inverse].T.reshape(3, H, W)
    final_T = torch.cat(t_pieces)[inverse].reshape(H, W)
    n_contrib = torch.cat(n_pieces)[inverse].reshape(H, W)
    depth = torch.cat(d_pieces)[inverse].reshape(H, W)
    return (image, final_T, n_contrib, depth) if with_depth else (image, final_T, n_contrib)


def _check_inputs(means, scales, rotations, opacities, shs, colors_precomp, settings):
    n = means.shape[0]

    def need(name, t, shape):
        if t.dim() != len(shape) or any(s is not None and t.shape[i] != s for i, s in enumerate(shape)):
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise ValueError(f"rasterize_gaussians: {name} must have shape {want}, got {list(t.shape)}")
        if t.device != means.device:
            raise ValueError(f"rasterize_gaussians: {name} is on {t.device} but means is on {means.device}")

    need("means", means, (None, 3))
    need("scales", scales, (n, 3))
    need("rotations", rotations, (n, 4))
    if opacities.shape not in ((n,), (n, 1)):
        raise ValueError(f"rasterize_gaussians: opacities must have shape [{n}] or [{n}, 1], got {list(opacities.shape)}")
    if (shs is None) == (colors_precomp is None):
        raise ValueError("rasterize_gaussians: give exactly one of shs and colors_precomp")
    if shs is not None:
        need("shs", shs, (n, None, 3))
        if shs.shape[1] < (settings.sh_degree + 1) ** 2:
            raise ValueError(f"rasterize_gaussians: sh_degree {settings.sh_degree} needs "
                             f"{(settings.sh_degree + 1) ** 2} SH coefficients, shs has {shs.shape[1]}")
    if colors_precomp is not None:
        need("colors_precomp", colors_precomp, (n, 3))


def rasterize_gaussians_reference(means: torch.Tensor, scales: torch.Tensor, rotations: torch.Tensor,
                                  opacities: torch.Tensor, shs: Optional[torch.Tensor] = None,
                                  colors_precomp: Optional[torch.Tensor] = None, *,
                                  settings: RasterSettings) -> RasterOutput:
    """Render N Gaussians with the reference pipeline.

    Args:
        means: [N, 3] world positions.
        scales: [N, 3] activated (positive) scales.
        rotations: [N, 4] quaternions (w, x, y, z), expected normalised by the caller.
        opacities: [N] or [N, 1] activated opacities in [0, 1].
        shs: [N, K, 3] SH coefficients, K >= (sh_degree + 1)^2; or
        colors_precomp: [N, 3] colours used as they are.
        settings: the camera, see RasterSettings.
    """
    _check_inputs(means, scales, rotations, opacities, shs, colors_precomp, settings)
    proj = project_gaussians(means, scales, rotations, opacities, shs, colors_precomp, settings)
    gaussian_ids, tile_ranges = bin_gaussians(proj, settings)
    image, final_T, n_contrib, depth = render_tiles(proj, settings, gaussian_ids, tile_ranges,
                                                      with_depth=True)
    return RasterOutput(image, proj.radii, proj.means2d, proj.depths, final_T, n_contrib, depth)


def random_scene(n: int, width: int, height: int, *, seed: int = 0, sh_degree: int = 0,
                 dtype=torch.float32, device="cpu", scale_range=(-4.0, -1.5)):
    """A random cloud in front of a centred camera at the origin, for tests and benchmarks.

    Returns (means, scales, rotations, opacities, shs, settings).
    """
    g = torch.Generator().manual_seed(seed)
    fx = fy = 0.8 * width
    z = 2.0 + 6.0 * torch.rand(n, generator=g, dtype=torch.float64)
    x = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 1.4 * z * width / (2 * fx)
    y = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 1.4 * z * height / (2 * fy)
    means = torch.stack([x, y, z], -1)
    lo, hi = scale_range
    scales = torch.exp(lo + (hi - lo) * torch.rand(n, 3, generator=g, dtype=torch.float64))
    rotations = torch.nn.functional.normalize(torch.randn(n, 4, generator=g, dtype=torch.float64), dim=-1)
    opacities = 0.05 + 0.9 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    shs = 0.5 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=torch.float64)
    settings = RasterSettings(height, width, fx, fy, width / 2, height / 2,
                              torch.eye(4, dtype=dtype, device=device),
                              torch.tensor([0.1, 0.2, 0.3], dtype=dtype, device=device), sh_degree=sh_degree)
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(means), cast(scales), cast(rotations), cast(opacities), cast(shs), settings


def _benchmark(n: int = 20000, size: int = 256) -> None:
    """Time forward + backward of the reference; report wall and CPU time and peak resident memory."""
    import resource
    import time

    means, scales, rots, ops, shs, settings = random_scene(n, size, size, sh_degree=3)
    for t in (means, scales, rots, ops, shs):
        t.requires_grad_(True)
    w0, c0 = time.perf_counter(), time.process_time()
    out = rasterize_gaussians_reference(means, scales, rots, ops, shs, settings=settings)
    w1, c1 = time.perf_counter(), time.process_time()
    out.image.sum().backward()
    w2, c2 = time.perf_counter(), time.process_time()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{size}x{size}, {n} Gaussians, SH degree 3, {torch.get_num_threads()} threads: "
          f"forward {w1 - w0:.2f} s wall / {c1 - c0:.2f} s CPU, backward {w2 - w1:.2f} s wall / "
          f"{c2 - c1:.2f} s CPU, peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    _benchmark()
