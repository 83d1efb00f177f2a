"""The pure-PyTorch reference rasterizer: gradients (fp64 gradcheck) and closed-form cases."""

import math

import pytest
import torch

from cuda_rasterizer import RasterSettings, rasterize_gaussians, rasterize_gaussians_reference
from cuda_rasterizer.reference import (Projected, bin_gaussians, project_gaussians,
                                       quaternion_to_rotation, random_scene, render_tiles)
from cuda_rasterizer.sh import SH_C0

# Closed-form values are computed in float32 by the rasterizer: a few ulps of 1.0.
CLOSED_FORM_ATOL = 1e-6
# gradcheck in float64 with central differences of step 1e-6: truncation error ~1e-8 relative.
GRADCHECK_EPS = 1e-6
GRADCHECK_ATOL = 1e-5
GRADCHECK_RTOL = 1e-4
# The original rasterizer's constants, written out here rather than imported, so that a change in the code
# under test cannot move the expectations with it.
LOW_PASS = 0.3
ALPHA_MAX = 0.99


def make_settings(width, height, fx=None, dtype=torch.float32, view=None, bg=(0.1, 0.2, 0.3), sh_degree=0,
                  cx=None, cy=None):
    fx = fx or float(width)
    return RasterSettings(height, width, fx, fx, width / 2 if cx is None else cx, height / 2 if cy is None else cy,
                          torch.eye(4, dtype=dtype) if view is None else view.to(dtype),
                          torch.tensor(bg, dtype=dtype), sh_degree=sh_degree)


def one_gaussian(x=0.0, y=0.0, z=5.0, scale=0.01, opacity=0.5, color=(0.9, 0.5, 0.1), dtype=torch.float32):
    means = torch.tensor([[x, y, z]], dtype=dtype)
    scales = torch.full((1, 3), scale, dtype=dtype)
    rots = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype)
    ops = torch.tensor([[opacity]], dtype=dtype)
    cols = torch.tensor([color], dtype=dtype)
    return means, scales, rots, ops, cols


def render_colors(means, scales, rots, ops, cols, settings):
    return rasterize_gaussians(means, scales, rots, ops, colors_precomp=cols, settings=settings)


# ---------------------------------------------------------------------------------------------------
# Closed-form cases
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("opacity", [0.5, 1.0])
def test_single_gaussian_centre_pixel(opacity):
    # 33x33 image with cx = 16.5: the optical axis lands on pixel 16's centre (x = fx*0/z + cx - 0.5).
    settings = make_settings(33, 33)
    means, scales, rots, ops, cols = one_gaussian(opacity=opacity)
    out = render_colors(means, scales, rots, ops, cols, settings)
    a = min(ALPHA_MAX, opacity)
    expected = settings.bg * (1 - a) + torch.tensor([0.9, 0.5, 0.1]) * a
    assert torch.allclose(out.image[:, 16, 16], expected, atol=CLOSED_FORM_ATOL)
    assert out.final_T[16, 16].item() == pytest.approx(1 - a, abs=CLOSED_FORM_ATOL)
    assert out.n_contrib[16, 16].item() == 1
    assert torch.allclose(out.means2d[0], torch.tensor([16.0, 16.0]), atol=CLOSED_FORM_ATOL)


def test_low_pass_and_radius_of_a_tiny_gaussian():
    # A point-like Gaussian: its 2D covariance is the 0.3 low-pass alone plus (fx s / z)^2.
    settings = make_settings(33, 33, fx=33.0)
    s, z = 0.01, 5.0
    means, scales, rots, ops, cols = one_gaussian(z=z, scale=s, opacity=0.8)
    proj = project_gaussians(means, scales, rots, ops, None, cols, settings)
    var = (33.0 * s / z) ** 2 + LOW_PASS
    assert proj.conics[0].tolist() == pytest.approx([1 / var, 0.0, 1 / var], rel=1e-5)
    # The original's eigenvalue rule: lambda1 = mid + sqrt(max(0.1, mid^2 - det)); isotropic: mid^2 = det.
    assert proj.radii[0].item() == math.ceil(3 * math.sqrt(var + math.sqrt(0.1)))
    # The pixel next to the centre sees opacity * exp(-0.5 / var).
    out = render_colors(means, scales, rots, ops, cols, settings)
    a = 0.8 * math.exp(-0.5 / var)
    assert out.final_T[16, 17].item() == pytest.approx(1 - a, abs=CLOSED_FORM_ATOL)


def test_ewa_covariance_of_an_anisotropic_rotated_gaussian():
    # Scale (sx, sy, sz) rotated 90 degrees about z swaps the x and y extents on screen.
    settings = make_settings(64, 48, fx=50.0)
    z = 4.0
    means = torch.tensor([[0.0, 0.0, z]])
    scales = torch.tensor([[0.2, 0.05, 0.1]])
    half = math.sqrt(0.5)
    rots = torch.tensor([[half, 0.0, 0.0, half]])
    proj = project_gaussians(means, scales, rots, torch.ones(1, 1), None, torch.ones(1, 3), settings)
    var_x = (50.0 * 0.05 / z) ** 2 + LOW_PASS
    var_y = (50.0 * 0.2 / z) ** 2 + LOW_PASS
    assert proj.conics[0].tolist() == pytest.approx([1 / var_x, 0.0, 1 / var_y], rel=1e-5, abs=1e-6)


def test_jacobian_is_clamped_at_1_3_tan_fov():
    # A Gaussian far to the side: J uses x/z clamped to 1.3 tan(fov_x), the mean itself is not clamped.
    settings = make_settings(32, 32, fx=32.0)  # tan(fov_x / 2) = 0.5, clamp at 0.65
    x, z, s = 4.0, 4.0, 1.0                     # x/z = 1.0 > 0.65; big enough to reach the image
    means = torch.tensor([[x, 0.0, z]])
    proj = project_gaussians(means, torch.full((1, 3), s), torch.tensor([[1.0, 0, 0, 0]]), torch.ones(1, 1),
                             None, torch.ones(1, 3), settings)
    fx, tx = 32.0, 0.65
    # J = [[fx/z, 0, -fx*tx/z], [0, fx/z, 0]], Sigma = s^2 I
    var_x = (fx / z) ** 2 * s * s * (1 + tx * tx) + LOW_PASS
    var_y = (fx / z) ** 2 * s * s + LOW_PASS
    assert proj.conics[0, 0].item() == pytest.approx(1 / var_x, rel=1e-5)
    assert proj.conics[0, 2].item() == pytest.approx(1 / var_y, rel=1e-5)
    assert proj.means2d[0, 0].item() == pytest.approx(fx * x / z + 16 - 0.5, rel=1e-6)


def test_principal_point_offset_moves_the_projection():
    settings = make_settings(40, 30, fx=40.0, cx=12.0, cy=20.0)
    means, scales, rots, ops, cols = one_gaussian(x=0.5, y=-0.25, z=5.0)
    out = render_colors(means, scales, rots, ops, cols, settings)
    assert out.means2d[0].tolist() == pytest.approx([40 * 0.1 + 12 - 0.5, 40 * -0.05 + 20 - 0.5], rel=1e-6)


def test_empty_scene_and_zero_opacity_give_the_background():
    settings = make_settings(40, 24)
    bg = settings.bg.reshape(3, 1, 1).expand(3, 24, 40)
    empty = torch.zeros(0, 3)
    out = rasterize_gaussians(empty, empty, torch.zeros(0, 4), torch.zeros(0, 1), colors_precomp=empty,
                              settings=settings)
    assert torch.equal(out.image, bg)
    assert torch.equal(out.final_T, torch.ones(24, 40))
    assert out.radii.shape == (0,)
    means, scales, rots, ops, cols = one_gaussian(opacity=0.0, scale=0.3)
    out = render_colors(means, scales, rots, ops, cols, settings)
    assert torch.equal(out.image, bg)
    assert int(out.n_contrib.max()) == 0


def test_culled_gaussians_contribute_nothing_and_get_zero_gradient():
    settings = make_settings(48, 32, dtype=torch.float64)
    means = torch.tensor([[0.0, 0.0, 4.0],      # visible
                          [0.0, 0.0, 0.15],     # in front of the camera but before the near plane
                          [0.0, 0.0, -3.0],     # behind the camera
                          [40.0, 0.0, 4.0]],    # far outside the frustum
                         dtype=torch.float64, requires_grad=True)
    scales = torch.tensor([[0.2, 0.3, 0.25]] * 4, dtype=torch.float64, requires_grad=True)  # anisotropic
    rots = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2, 0.1, 0.3]] * 4, dtype=torch.float64), dim=-1)
    rots.requires_grad_(True)
    ops = torch.full((4, 1), 0.7, dtype=torch.float64, requires_grad=True)
    shs = torch.rand(4, 16, 3, dtype=torch.float64, requires_grad=True)
    settings = make_settings(48, 32, dtype=torch.float64, sh_degree=3)
    out = rasterize_gaussians(means, scales, rots, ops, shs, settings=settings)
    alone = rasterize_gaussians(means[:1], scales[:1], rots[:1], ops[:1], shs[:1], settings=settings)
    assert torch.equal(out.image, alone.image)
    assert out.radii[1:].tolist() == [0, 0, 0]
    (out.image * torch.randn_like(out.image)).sum().backward()
    for t in (means, scales, rots, ops, shs):
        assert torch.isfinite(t.grad).all()
        assert torch.count_nonzero(t.grad[1:]) == 0
        assert torch.count_nonzero(t.grad[0]) > 0


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_near_opaque_gaussian_hides_far_one_whatever_the_input_order(order):
    settings = make_settings(33, 33)
    means = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 6.0]])
    scales = torch.tensor([[0.4] * 3, [0.8] * 3])
    rots = torch.tensor([[1.0, 0, 0, 0]] * 2)
    ops = torch.tensor([[1.0], [0.5]])
    cols = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    idx = torch.tensor(order)
    out = render_colors(means[idx], scales[idx], rots[idx], ops[idx], cols[idx], settings)
    centre = out.image[:, 16, 16]
    # 0.99 of the near red, then the far blue (alpha 0.5) sees only the 1% left.
    expected = torch.tensor([0.99, 0.0, 0.01 * 0.5]) + 0.01 * 0.5 * settings.bg
    assert torch.allclose(centre, expected, atol=CLOSED_FORM_ATOL)


def test_early_stop_when_transmittance_would_drop_below_1e_4():
    # Stacked Gaussians of alpha 0.96: T = 0.04, 1.6e-3, then 6.4e-5 < 1e-4 stops the pixel before the third
    # (a threshold of 1e-5 would let it in).
    settings = make_settings(33, 33)
    n = 5
    means = torch.stack([torch.zeros(n), torch.zeros(n), torch.arange(1, n + 1) + 2.0], -1)
    scales = torch.full((n, 3), 0.5)
    rots = torch.tensor([[1.0, 0, 0, 0]] * n)
    ops = torch.full((n, 1), 0.96)
    cols = torch.eye(3).repeat(2, 1)[:n]
    out = render_colors(means, scales, rots, ops, cols, settings)
    assert out.n_contrib[16, 16].item() == 2
    assert out.final_T[16, 16].item() == pytest.approx(0.04 ** 2, rel=1e-5)
    weights = [0.96, 0.96 * 0.04, 0.0]
    expected = torch.tensor(weights) + 0.04 ** 2 * settings.bg
    assert torch.allclose(out.image[:, 16, 16], expected, atol=CLOSED_FORM_ATOL)


def test_sh_degree_3_with_zero_higher_bands_equals_degree_0():
    means, scales, rots, ops, shs, settings3 = random_scene(60, 48, 40, sh_degree=3, seed=3)
    shs[:, 1:] = 0.0
    settings0 = make_settings(48, 40, fx=settings3.fx, bg=settings3.bg.tolist(), sh_degree=0)
    a = rasterize_gaussians(means, scales, rots, ops, shs, settings=settings3).image
    b = rasterize_gaussians(means, scales, rots, ops, shs[:, :1].contiguous(), settings=settings0).image
    assert torch.equal(a, b)
    # Degree-0 colour is SH_C0 * dc + 0.5, clamped at 0.
    proj = project_gaussians(means, scales, rots, ops, shs, None, settings3)
    assert torch.allclose(proj.colors, torch.clamp_min(SH_C0 * shs[:, 0] + 0.5, 0.0))


def test_colour_clamp_blocks_the_gradient_but_alpha_clamp_does_not():
    settings = make_settings(33, 33, dtype=torch.float64)
    means, scales, rots, _, _ = one_gaussian(dtype=torch.float64, scale=0.2)
    ops = torch.tensor([[1.0]], dtype=torch.float64, requires_grad=True)    # alpha clamped to 0.99
    shs = torch.zeros(1, 1, 3, dtype=torch.float64)
    shs[0, 0] = torch.tensor([1.0, -5.0, 1.0])                               # green below 0: clamped
    shs.requires_grad_(True)
    out = rasterize_gaussians(means, scales, rots, ops, shs, settings=settings)
    out.image[:, 16, 16].sum().backward()
    assert shs.grad[0, 0, 1].item() == 0.0
    assert shs.grad[0, 0, 0].item() > 0.0
    # d pixel / d opacity at the centre, as if alpha = opacity * G with G = 1 (straight through).
    colour = torch.clamp_min(SH_C0 * shs.detach()[0, 0] + 0.5, 0.0)
    assert ops.grad.item() == pytest.approx((colour - settings.bg).sum().item(), rel=1e-9)


def test_input_order_does_not_change_the_image():
    means, scales, rots, ops, shs, settings = random_scene(300, 64, 48, sh_degree=1, seed=5)
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    a = rasterize_gaussians(means, scales, rots, ops, shs, settings=settings)
    b = rasterize_gaussians(means[perm], scales[perm], rots[perm], ops[perm], shs[perm], settings=settings)
    assert torch.equal(a.image, b.image)
    assert torch.equal(a.radii[perm], b.radii)


def test_tile_lists_are_depth_sorted_and_follow_the_rect_rule():
    means, scales, rots, ops, shs, settings = random_scene(200, 70, 50, seed=7)
    proj = project_gaussians(means, scales, rots, ops, shs, None, settings)
    ids, ranges = bin_gaussians(proj, settings)
    gx, gy = settings.tile_grid
    for tile in range(gx * gy):
        tile_ids = ids[ranges[tile]:ranges[tile + 1]]
        assert torch.all(proj.depths[tile_ids][1:] >= proj.depths[tile_ids][:-1])
        tx, ty = tile % gx, tile // gx
        inside = ((proj.rect_min[:, 0] <= tx) & (tx < proj.rect_max[:, 0])
                  & (proj.rect_min[:, 1] <= ty) & (ty < proj.rect_max[:, 1]))
        assert set(tile_ids.tolist()) == set(torch.nonzero(inside).flatten().tolist())
    # The rect is the original's: floor((x -+ r) / 16) style, clamped to the grid.
    r = proj.radii.float()
    vis = proj.radii > 0
    xmin = torch.floor((proj.means2d[:, 0] - r) / 16).clamp(0, gx)
    assert torch.equal(proj.rect_min[vis, 0].float(), xmin[vis])


def test_quaternion_rotation_is_orthonormal_for_unit_quaternions():
    q = torch.nn.functional.normalize(torch.randn(10, 4, dtype=torch.float64), dim=-1)
    rot = quaternion_to_rotation(q)
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(10, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(10, dtype=torch.float64), atol=1e-12)


def test_bad_inputs_name_the_argument():
    means, scales, rots, ops, shs, settings = random_scene(5, 16, 16)
    with pytest.raises(ValueError, match="scales"):
        rasterize_gaussians(means, scales[:, :2], rots, ops, shs, settings=settings)
    with pytest.raises(ValueError, match="atomics"):
        rasterize_gaussians(means, scales, rots, ops, shs, settings=settings, atomics="nope")
    with pytest.raises(ValueError, match="balance_threshold"):
        rasterize_gaussians(means, scales, rots, ops, shs, settings=settings, balance_threshold=0)
    with pytest.raises(ValueError, match="colors_precomp"):
        rasterize_gaussians(means, scales, rots, ops, settings=settings)


# ---------------------------------------------------------------------------------------------------
# Gradients: fp64 gradcheck on tiny scenes, for every differentiable input of both stages
# ---------------------------------------------------------------------------------------------------

def tiny_scene(sh_degree=3):
    """Four overlapping Gaussians seen by a slightly rotated camera, away from every discrete threshold."""
    dt = torch.float64
    angle = 0.1
    view = torch.eye(4, dtype=dt)
    view[:3, :3] = torch.tensor([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0],
                                 [-math.sin(angle), 0, math.cos(angle)]], dtype=dt)
    view[:3, 3] = torch.tensor([0.1, -0.05, 0.2], dtype=dt)
    settings = make_settings(22, 18, fx=20.0, dtype=dt, view=view, sh_degree=sh_degree)
    campos = settings.campos
    means = torch.tensor([[0.0, 0.0, 3.0], [0.3, 0.2, 3.5], [-0.3, -0.1, 4.0], [0.1, -0.3, 2.5]], dtype=dt)
    means = (means - view[:3, 3]) @ view[:3, :3]          # place them in camera space
    assert torch.allclose(campos, -view[:3, :3].T @ view[:3, 3])
    scales = torch.tensor([[0.3, 0.2, 0.25], [0.2, 0.35, 0.2], [0.4, 0.3, 0.3], [0.15, 0.2, 0.25]], dtype=dt)
    rots = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1, 0.2, 0.0], [0.9, -0.2, 0.1, 0.3],
                                                       [1.0, 0.0, 0.0, 0.4], [0.8, 0.3, -0.1, 0.1]], dtype=dt), dim=-1)
    ops = torch.tensor([[0.6], [0.5], [0.7], [0.4]], dtype=dt)
    g = torch.Generator().manual_seed(0)
    shs = 0.1 * torch.randn(4, 16, 3, generator=g, dtype=dt)
    shs[:, 0] = 0.8 + 0.5 * torch.rand(4, 3, generator=g, dtype=dt)
    cot = torch.randn(3, 18, 22, generator=g, dtype=dt)
    return means, scales, rots, ops, shs, settings, cot


def test_gradcheck_every_input_through_sh():
    means, scales, rots, ops, shs, settings, cot = tiny_scene()
    inputs = [t.clone().requires_grad_(True) for t in (means, scales, rots, ops, shs)]

    def f(m, s, r, o, sh):
        return (rasterize_gaussians_reference(m, s, r, o, sh, settings=settings).image * cot).sum()

    assert torch.autograd.gradcheck(f, inputs, eps=GRADCHECK_EPS, atol=GRADCHECK_ATOL, rtol=GRADCHECK_RTOL)


def test_gradcheck_precomputed_colours():
    means, scales, rots, ops, _, settings, cot = tiny_scene(sh_degree=0)
    cols = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.4], [0.5, 0.5, 0.9], [0.7, 0.3, 0.1]], dtype=torch.float64)
    inputs = [t.clone().requires_grad_(True) for t in (means, cols)]

    def f(m, c):
        return (rasterize_gaussians_reference(m, scales, rots, ops, colors_precomp=c, settings=settings).image
                * cot).sum()

    assert torch.autograd.gradcheck(f, inputs, eps=GRADCHECK_EPS, atol=GRADCHECK_ATOL, rtol=GRADCHECK_RTOL)


def test_gradcheck_render_stage_inputs():
    """The 2D quantities the CUDA render backward accumulates: means2d, conics, opacities, colours."""
    means, scales, rots, ops, shs, settings, cot = tiny_scene()
    with torch.no_grad():
        proj = project_gaussians(means, scales, rots, ops, shs, None, settings)
    ids, ranges = bin_gaussians(proj, settings)
    leaves = [t.clone().requires_grad_(True) for t in (proj.means2d, proj.conics, proj.colors, proj.opacities)]

    def f(m2, con, col, op):
        p = Projected(m2, con, col, op, proj.depths, proj.radii, proj.rect_min, proj.rect_max)
        image, final_t, _ = render_tiles(p, settings, ids, ranges)
        return (image * cot).sum() + final_t.sum()

    assert torch.autograd.gradcheck(f, leaves, eps=GRADCHECK_EPS, atol=GRADCHECK_ATOL, rtol=GRADCHECK_RTOL)


def test_means2d_gradient_is_exposed_for_densification():
    means, scales, rots, ops, shs, settings, cot = tiny_scene()
    means = means.clone().requires_grad_(True)
    out = rasterize_gaussians(means, scales, rots, ops, shs, settings=settings)
    out.means2d.retain_grad()
    (out.image * cot).sum().backward()
    assert out.means2d.grad.shape == (4, 2)
    assert torch.all(out.means2d.grad.norm(dim=-1) > 0)
    # Chain rule to the 3D mean through the projection, checked against a finite difference of means2d.
    eps = 1e-6
    delta = torch.zeros_like(means)
    delta[0, 0] = eps
    with torch.no_grad():
        p1 = project_gaussians(means + delta, scales, rots, ops, shs, None, settings).means2d
        p0 = project_gaussians(means - delta, scales, rots, ops, shs, None, settings).means2d
    dm2 = (p1 - p0) / (2 * eps)
    assert dm2[0, 0].item() != 0.0
