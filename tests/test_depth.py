"""The reference rasterizer's expected depth, sum_i alpha_i T_i z_i, against closed-form cases."""

import math

import torch

from cuda_rasterizer import RasterSettings, rasterize_gaussians_reference
from cuda_rasterizer.reference import random_scene

EXACT = 1e-5      # float32 compositing of a handful of terms
SIZE = 32         # image side; a centred principal point puts pixel (15.5, 15.5)'s neighbourhood at the centre


def _settings(bg=(0.0, 0.0, 0.0)):
    # cx = W/2 + 0.5 puts the optical axis exactly on the centre of pixel (16, 16)
    return RasterSettings(SIZE, SIZE, 40.0, 40.0, SIZE / 2 + 0.5, SIZE / 2 + 0.5, torch.eye(4),
                          torch.tensor(bg), sh_degree=0)


def _on_axis(zs, opacities, scale=0.3):
    n = len(zs)
    means = torch.tensor([[0.0, 0.0, float(z)] for z in zs])
    scales = torch.full((n, 3), scale)
    rots = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * n)
    ops = torch.tensor(opacities, dtype=torch.float32)[:, None]
    colors = torch.full((n, 3), 0.5)
    return rasterize_gaussians_reference(means, scales, rots, ops, colors_precomp=colors, settings=_settings())


def test_one_gaussian_on_the_axis():
    out = _on_axis([3.0], [0.6])
    assert out.depth.shape == (SIZE, SIZE)
    # at the pixel the mean lands on, G = 1: alpha = 0.6, depth = 0.6 * 3
    assert math.isclose(float(out.depth[16, 16]), 0.6 * 3.0, abs_tol=EXACT)
    assert math.isclose(float(1 - out.final_T[16, 16]), 0.6, abs_tol=EXACT)
    # normalised by the accumulated opacity, the expected depth is the Gaussian's depth wherever it is seen
    seen = out.final_T < 1.0
    assert torch.allclose(out.depth[seen] / (1 - out.final_T[seen]), torch.full_like(out.depth[seen], 3.0), atol=1e-4)
    assert torch.all(out.depth[~seen] == 0)


def test_two_gaussians_front_to_back():
    out = _on_axis([5.0, 2.0], [0.5, 0.7])   # given back to front: the sort puts z = 2 first
    expected = 0.7 * 2.0 + (1 - 0.7) * 0.5 * 5.0
    assert math.isclose(float(out.depth[16, 16]), expected, abs_tol=EXACT)


def test_alpha_clamp_and_early_stop():
    out = _on_axis([2.0, 4.0], [1.0, 0.5])   # alpha clamps at 0.99
    assert math.isclose(float(out.depth[16, 16]), 0.99 * 2.0 + 0.01 * 0.5 * 4.0, rel_tol=1e-5)
    # a second opaque one would take T below 1e-4: the pixel stops before it, as the colour does
    out = _on_axis([2.0, 4.0], [1.0, 1.0])
    assert math.isclose(float(out.depth[16, 16]), 0.99 * 2.0, rel_tol=1e-5)


def test_depth_equals_the_image_of_z_as_colour():
    """Depth is the compositing of z, so rendering colour = z over black gives it in every pixel."""
    means, scales, rots, ops, _, settings = random_scene(300, 48, 40, seed=5)
    settings = RasterSettings(40, 48, settings.fx, settings.fy, settings.cx, settings.cy, settings.viewmatrix,
                              torch.zeros(3))
    out = rasterize_gaussians_reference(means, scales, rots, ops, colors_precomp=torch.rand(300, 3),
                                        settings=settings)
    z = means[:, 2:3].expand(-1, 3).contiguous()
    as_colour = rasterize_gaussians_reference(means, scales, rots, ops, colors_precomp=z, settings=settings)
    assert out.depth.abs().sum() > 0
    assert torch.allclose(out.depth, as_colour.image[0], atol=1e-5, rtol=1e-5)
    assert not out.depth.requires_grad


def test_depth_is_view_space_z_not_distance():
    """Off the axis, z (not the Euclidean distance to the camera) is what is composited."""
    means = torch.tensor([[1.0, 0.0, 4.0]])
    out = rasterize_gaussians_reference(means, torch.full((1, 3), 0.3), torch.tensor([[1.0, 0, 0, 0]]),
                                        torch.tensor([[0.5]]), colors_precomp=torch.full((1, 3), 0.5),
                                        settings=_settings())
    seen = out.final_T < 1.0
    assert torch.allclose(out.depth[seen] / (1 - out.final_T[seen]), torch.full_like(out.depth[seen], 4.0), atol=1e-4)
