"""The lane profile that motivates DISTWAR, computed exactly with the reference rasterizer.

In the backward render kernel a 16x16 block covers one tile; thread ``t = 16 * ly + lx`` handles pixel
``(lx, ly)`` of the tile, so warp ``w = t // 32`` covers rows ``2w`` and ``2w + 1``.  The block walks the
tile's depth-sorted Gaussian list, and at each step every lane of a warp works on the same Gaussian.  A
lane *contributes* to that (warp, Gaussian) step when its pixel is inside the image and the Gaussian is
composited there (``reference.contribution_mask``: power <= 0, alpha >= 1/255, before the pixel's early
stop).  The number of contributing lanes decides what gradient accumulation costs: ``baseline`` issues one
global atomic per contributing lane and per parameter, ``warp`` reduces first and issues one per warp, and
``distwar`` picks between the two from that count.

``lane_histogram_reference`` returns, over every tile, every warp with at least one in-image pixel, and
every Gaussian of the tile's list, the histogram of that count (bins 0..32).  It is the same quantity the
CUDA engineer's counting kernel (``profiling.BackwardRenderProbe.lane_histogram``) produces.  The code is
pure PyTorch and runs on whatever device the inputs are on.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import reference
from .reference import _tile_pixels, bin_gaussians, contribution_mask, project_gaussians
from .settings import BLOCK_X, BLOCK_Y, RasterSettings

WARP_SIZE = 32
ROWS_PER_WARP = WARP_SIZE // BLOCK_X          # 2: a warp covers two rows of a 16-wide tile
WARPS_PER_TILE = (BLOCK_X * BLOCK_Y) // WARP_SIZE
NUM_BINS = WARP_SIZE + 1                      # 0..32 contributing lanes
#: Gaussians per step of ``contribution_mask``'s walk over a tile's list (it bounds the [256, chunk] masks
#: held at once; the result does not depend on it).
MASK_CHUNK = reference.MASK_CHUNK


def _warps_in_image(ty: int, settings: RasterSettings) -> int:
    """Warps of a tile in tile row ``ty`` that hold at least one in-image pixel (rows 0..rows-1 exist)."""
    rows = min(BLOCK_Y, settings.image_height - ty * BLOCK_Y)
    return (rows + ROWS_PER_WARP - 1) // ROWS_PER_WARP


def lane_counts_of_tile(proj, ids: torch.Tensor, tx: int, ty: int, settings: RasterSettings) -> torch.Tensor:
    """[warps with an in-image pixel, K] int64: contributing lanes of each (warp, Gaussian) step of a tile."""
    device = ids.device
    n_warps = _warps_in_image(ty, settings)
    if ids.numel() == 0:
        return torch.zeros(n_warps, 0, dtype=torch.int64, device=device)
    px, py = _tile_pixels(tx, ty, settings, device, proj.means2d.dtype)
    warp_of_pixel = (py - ty * BLOCK_Y) // ROWS_PER_WARP
    # [P, K'] with K' <= K: the walk stops once every pixel of the tile has stopped, and the Gaussians
    # past K' are composited by no pixel (their steps count 0 lanes).
    mask = contribution_mask(proj, ids, px, py, chunk=MASK_CHUNK)
    counts = torch.zeros(n_warps, ids.numel(), dtype=torch.int64, device=device)
    counts[:, :mask.shape[1]].index_add_(0, warp_of_pixel, mask.to(torch.int64))
    return counts


def lane_histogram_from_projection(proj, settings: RasterSettings, gaussian_ids: Optional[torch.Tensor] = None,
                                   tile_ranges: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The lane histogram from the output of ``project_gaussians`` (and optionally ``bin_gaussians``)."""
    if gaussian_ids is None or tile_ranges is None:
        gaussian_ids, tile_ranges = bin_gaussians(proj, settings)
    device = proj.means2d.device
    gx, gy = settings.tile_grid
    ranges = tile_ranges.tolist()
    hist = torch.zeros(NUM_BINS, dtype=torch.int64, device=device)
    for ty in range(gy):
        for tx in range(gx):
            tile = ty * gx + tx
            start, end = ranges[tile], ranges[tile + 1]
            if end > start:
                counts = lane_counts_of_tile(proj, gaussian_ids[start:end], tx, ty, settings)
                hist += torch.bincount(counts.reshape(-1), minlength=NUM_BINS)
    return hist.cpu()


def lane_histogram_reference(means: torch.Tensor, scales: torch.Tensor, rotations: torch.Tensor,
                             opacities: torch.Tensor, shs: Optional[torch.Tensor],
                             colors_precomp: Optional[torch.Tensor], settings: RasterSettings) -> torch.Tensor:
    """Histogram (LongTensor [33], on the CPU) of contributing lanes per (warp, Gaussian) step.

    Inputs as for ``rasterize_gaussians`` (activated scales, unit quaternions, opacities [N] or [N, 1],
    exactly one of shs [N, K, 3] and colors_precomp [N, 3]).  Runs on the inputs' device.
    """
    with torch.no_grad():
        proj = project_gaussians(means, scales, rotations, opacities, shs, colors_precomp, settings)
        return lane_histogram_from_projection(proj, settings)


def lane_summary(hist: torch.Tensor, thresholds=(8,)) -> dict:
    """Figures derived from a lane histogram: mean lanes per active step, and gradient atomics per policy.

    An *active* step is one where at least one lane contributes (bins 1..32); steps with no lane do no
    gradient work in any policy.  Atomics are counted per gradient word written (the same factor for
    every policy, so the ratios are exact): ``baseline`` one per contributing lane, ``warp`` one per active
    step, ``distwar@t`` one per step with at least t lanes and one per lane below that.
    """
    h = [int(v) for v in hist.tolist()]
    if len(h) != NUM_BINS:
        raise ValueError(f"lane_summary: histogram must have {NUM_BINS} bins, got {len(h)}")
    total = sum(h)
    active = total - h[0]
    lanes = sum(c * h[c] for c in range(NUM_BINS))
    summary = {
        "steps": total,
        "active_steps": active,
        "zero_step_fraction": (h[0] / total) if total else 0.0,
        "mean_lanes_per_active_step": (lanes / active) if active else 0.0,
        "full_warp_step_fraction": (h[WARP_SIZE] / active) if active else 0.0,
        "atomics": {"baseline": lanes, "warp": active},
    }
    for t in thresholds:
        summary["atomics"][f"distwar@{t}"] = sum(c * h[c] for c in range(1, min(t, NUM_BINS))) + \
            sum(h[c] for c in range(max(t, 1), NUM_BINS))
    return summary
