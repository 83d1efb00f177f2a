"""The lane histogram of the reference against a brute-force per-pixel compositing loop in plain Python."""

import math

import pytest
import torch

from cuda_rasterizer import lane_profile
from cuda_rasterizer.lane_profile import NUM_BINS, lane_histogram_reference, lane_summary
from cuda_rasterizer.reference import (ALPHA_MAX, ALPHA_MIN, T_MIN, contribution_mask, project_gaussians,
                                       random_scene, _tile_pixels, bin_gaussians)
from cuda_rasterizer.settings import BLOCK_X, BLOCK_Y

#: The brute force and the reference both work in float64 but form exp() and the transmittance products
#: with different code; they can only disagree on a pair whose alpha or transmittance lies within rounding
#: of the 1/255 or 1e-4 thresholds.  The test asserts that no pair of the scene is closer than this
#: (relative), so exact equality of the histograms is a fair demand and not luck.
EDGE_MARGIN = 1e-9


def brute_force_histogram(proj, settings):
    """Per tile: its Gaussians by rectangle overlap and depth; per pixel: sequential compositing, as the
    original forward does; per warp (rows 2w, 2w+1) and Gaussian: count of contributing in-image lanes."""
    n = proj.radii.shape[0]
    mx = proj.means2d.tolist()
    con = proj.conics.tolist()
    op = proj.opacities.tolist()
    depth = proj.depths.tolist()
    radii = proj.radii.tolist()
    rmin, rmax = proj.rect_min.tolist(), proj.rect_max.tolist()
    width, height = settings.image_width, settings.image_height
    gx, gy = settings.tile_grid
    order = sorted(range(n), key=lambda i: (depth[i], i))
    hist = [0] * NUM_BINS
    closest = math.inf
    for ty in range(gy):
        for tx in range(gx):
            gauss = [i for i in order if radii[i] > 0 and rmin[i][0] <= tx < rmax[i][0]
                     and rmin[i][1] <= ty < rmax[i][1]]
            used = {}
            for ly in range(BLOCK_Y):
                for lx in range(BLOCK_X):
                    x, y = tx * BLOCK_X + lx, ty * BLOCK_Y + ly
                    if x >= width or y >= height:
                        continue
                    t, mine = 1.0, set()
                    for k, i in enumerate(gauss):
                        dx, dy = mx[i][0] - x, mx[i][1] - y
                        power = -0.5 * (con[i][0] * dx * dx + con[i][2] * dy * dy) - con[i][1] * dx * dy
                        if power > 0:
                            continue
                        alpha = min(ALPHA_MAX, op[i] * math.exp(power))
                        closest = min(closest, abs(alpha - ALPHA_MIN) / ALPHA_MIN)
                        if alpha < ALPHA_MIN:
                            continue
                        test_t = t * (1.0 - alpha)
                        closest = min(closest, abs(test_t - T_MIN) / T_MIN)
                        if test_t < T_MIN:
                            break
                        mine.add(k)
                        t = test_t
                    used[(lx, ly)] = mine
            for w in range(BLOCK_Y // 2):
                lanes = [used[(lx, ly)] for ly in (2 * w, 2 * w + 1) for lx in range(BLOCK_X) if (lx, ly) in used]
                if not lanes:
                    continue
                for k in range(len(gauss)):
                    hist[sum(k in lane for lane in lanes)] += 1
    return hist, closest


@pytest.fixture(scope="module")
def tiny():
    # 40x36: a partial tile column (8 of 16 pixels wide) and a partial tile row (4 rows: 2 warps).
    means, scales, rots, opac, shs, settings = random_scene(150, 40, 36, seed=3, dtype=torch.float64,
                                                            scale_range=(-2.5, -0.8))
    return means, scales, rots, opac, shs, settings


def test_reference_histogram_matches_brute_force(tiny):
    means, scales, rots, opac, shs, settings = tiny
    hist = lane_histogram_reference(means, scales, rots, opac, shs, None, settings)
    proj = project_gaussians(means, scales, rots, opac, shs, None, settings)
    brute, closest = brute_force_histogram(proj, settings)
    assert closest > EDGE_MARGIN
    assert hist.dtype == torch.int64 and hist.shape == (NUM_BINS,)
    assert hist.tolist() == brute
    # The scene exercises the interesting part of the histogram: lone lanes, partial and full warps.
    assert hist[1] > 0 and hist[2:32].sum() > 0 and hist[32] > 0


def test_histogram_counts_every_step_of_every_in_image_warp(tiny):
    means, scales, rots, opac, shs, settings = tiny
    proj = project_gaussians(means, scales, rots, opac, shs, None, settings)
    ids, ranges = bin_gaussians(proj, settings)
    hist = lane_histogram_reference(means, scales, rots, opac, shs, None, settings)
    gx, gy = settings.tile_grid
    lengths = (ranges[1:] - ranges[:-1]).reshape(gy, gx)
    warps_per_row = [min(8, (min(16, settings.image_height - 16 * ty) + 1) // 2) for ty in range(gy)]
    assert warps_per_row[-1] == 2
    assert int(hist.sum()) == sum(int(lengths[ty].sum()) * warps_per_row[ty] for ty in range(gy))
    # Lanes summed over the histogram = (pixel, Gaussian) pairs composited.
    pairs = 0
    for ty in range(gy):
        for tx in range(gx):
            a, b = int(ranges[ty * gx + tx]), int(ranges[ty * gx + tx + 1])
            px, py = _tile_pixels(tx, ty, settings, "cpu", torch.float64)
            pairs += int(contribution_mask(proj, ids[a:b], px, py).sum())
    assert sum(c * int(hist[c]) for c in range(NUM_BINS)) == pairs


def test_histogram_does_not_depend_on_the_chunk_of_the_walk(tiny, monkeypatch):
    means, scales, rots, opac, shs, settings = tiny
    whole = lane_histogram_reference(means, scales, rots, opac, shs, None, settings)
    monkeypatch.setattr(lane_profile, "MASK_CHUNK", 5)
    assert torch.equal(lane_histogram_reference(means, scales, rots, opac, shs, None, settings), whole)


def test_empty_scene_gives_empty_histogram():
    means, scales, rots, opac, shs, settings = random_scene(4, 32, 32, seed=0)
    means = means.clone()
    means[:, 2] = -1.0                                     # all behind the camera
    hist = lane_histogram_reference(means, scales, rots, opac, shs, None, settings)
    assert hist.tolist() == [0] * NUM_BINS


def test_lane_summary_counts_atomics():
    hist = torch.zeros(NUM_BINS, dtype=torch.int64)
    hist[0], hist[1], hist[5], hist[32] = 10, 4, 2, 3      # active steps 9; lanes 4 + 10 + 96 = 110
    s = lane_summary(hist, thresholds=(1, 8, 33))
    assert s["active_steps"] == 9 and s["steps"] == 19
    assert s["atomics"]["baseline"] == 110 and s["atomics"]["warp"] == 9
    assert s["atomics"]["distwar@1"] == 9                  # always reduce = warp
    assert s["atomics"]["distwar@8"] == 4 + 10 + 3         # 1- and 5-lane steps by lane, full warps once
    assert s["atomics"]["distwar@33"] == 110               # never reduce = baseline
    assert s["mean_lanes_per_active_step"] == pytest.approx(110 / 9)
