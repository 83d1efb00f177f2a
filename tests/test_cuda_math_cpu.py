"""The kernels' math, run on the CPU, against the reference (no GPU needed).

tests/cpu_math_ext.cpp compiles cuda_rasterizer/csrc/math.cuh with g++ and drives the same
__host__ __device__ functions the kernels call (preprocess_one, preprocess_backward_one, tile_rect,
gaussian_alpha, render_backward_step) with host loops in the kernels' visiting order.  These tests compare
its forward outputs and its whole chain of VJPs with reference.py and autograd.  What they cannot check:
the kernels' launch structure, shared-memory staging and the warp-level accumulation policies.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cuda_rasterizer.autograd import camera_scalars
from cuda_rasterizer.reference import rasterize_gaussians_reference, random_scene
from cuda_rasterizer.settings import RasterSettings

HERE = Path(__file__).resolve().parent
CSRC = HERE.parent / "cuda_rasterizer" / "csrc"

#: Image and final transmittance: float32 compositing of up to a few hundred layers, summed in a different
#: order than the reference's matmul/cumprod (which accumulates in double on the CPU).
IMAGE_ATOL = 2e-5
#: Pixels whose early stop (T < 1e-4) or 1/255 cut may flip between the two float32 evaluations of the same
#: expression (FMA-free host code vs vectorised torch): at most this fraction of the image.
FLIP_FRACTION = 2e-3
#: Relative L2 error of a whole gradient tensor: the chain of float32 VJPs (division by 1 - alpha, 1/det,
#: 1/z^2) against autograd's float32 chain (observed <= 1e-5); a wrong term gives errors of order 1.
GRAD_REL_L2 = 1e-4
#: Element-wise: |a - b| <= GRAD_ATOL_FRAC * max|b| + GRAD_RTOL * |b| for all but FLIP_FRACTION of elements.
GRAD_ATOL_FRAC = 1e-3
GRAD_RTOL = 1e-2
#: A pixel whose pair flipped at a threshold gains or loses one contribution alpha * T * colour (about
#: 0.01 * colour at most); such pixels (at most FLIP_FRACTION) may exceed IMAGE_ATOL, up to this.
FLIP_IMAGE_MAX = 0.05
#: Expected depth (z composited with the colours' weights), relative to the image's largest depth: the
#: colour's IMAGE_ATOL argument with z in place of a colour; flipped pixels as for the image.
DEPTH_RTOL = 2e-5

_ext = None


def cpu_ext():
    global _ext
    if _ext is None:
        from torch.utils.cpp_extension import load
        build = Path(os.environ.get("CUDA_RASTERIZER_BUILD_DIR", Path.home() / ".cache" / "cuda_rasterizer")) / "cpu_math_ext"
        build.mkdir(parents=True, exist_ok=True)
        _ext = load(name="gsr_cpu_math_ext", sources=[str(HERE / "cpu_math_ext.cpp")],
                    extra_include_paths=[str(CSRC), str(HERE / "csrc")],
                    extra_cflags=["-O2", "-std=c++17", "-ffp-contract=off"],
                    build_directory=str(build), verbose=False)
    return _ext


def cam_args(settings: RasterSettings):
    floats, ints = camera_scalars(settings)
    view = settings.viewmatrix.to(torch.float32).contiguous().reshape(16)
    campos = settings.campos.to(torch.float32).contiguous()
    bg = settings.bg.to(torch.float32).contiguous().reshape(3)
    return view, campos, bg, list(floats), list(ints)


def cpu_pipeline(means, scales, rotations, opacities, shs, colors_precomp, settings, grad_image, grad_final_T=None,
                 grad_means2d_extra=None, grad_depths=None):
    """Forward with the kernels' math, then the whole backward chain.  Returns (forward dict, grads dict)."""
    ext = cpu_ext()
    cam = cam_args(settings)
    f = lambda t: None if t is None else t.detach().to(torch.float32).contiguous()  # noqa: E731
    means, scales, rotations, shs, colors_precomp = map(f, (means, scales, rotations, shs, colors_precomp))
    opac = f(opacities).reshape(-1).contiguous()
    means2d, conics, colors, depths, radii, tiles, clamped = ext.preprocess_forward(means, scales, rotations, shs, *cam)
    if colors_precomp is not None:
        colors = colors_precomp
    point_list, ranges = ext.bin_gaussians(means2d, depths, radii, tiles, *cam)
    image, final_T, n_contrib, depth = ext.render_forward(means2d, conics, colors, opac, depths, point_list, ranges,
                                                          *cam)
    g_m2d, g_con, g_col, g_op = ext.render_backward(means2d, conics, colors, opac, point_list, ranges, final_T,
                                                    n_contrib, grad_image.contiguous(), grad_final_T, *cam)
    g_m2d_total = g_m2d if grad_means2d_extra is None else g_m2d + grad_means2d_extra
    g_means, g_scales, g_rot, g_shs = ext.preprocess_backward(
        means, scales, rotations, shs, tiles, clamped, g_m2d_total, g_con, g_col if shs is not None else None,
        grad_depths, *cam)
    fwd = dict(image=image, radii=radii, means2d=means2d, depths=depths, final_T=final_T, n_contrib=n_contrib,
               depth=depth, point_list=point_list, ranges=ranges, conics=conics, colors=colors, opacities=opac)
    grads = dict(means=g_means, scales=g_scales, rotations=g_rot, opacities=g_op.reshape(opacities.shape),
                 means2d=g_m2d)
    if shs is not None:
        grads["shs"] = g_shs
    else:
        grads["colors_precomp"] = g_col
    return fwd, grads


def reference_run(means, scales, rotations, opacities, shs, colors_precomp, settings, grad_image, grad_final_T=None,
                  grad_means2d_extra=None, grad_depths=None):
    leaves = dict(means=means, scales=scales, rotations=rotations, opacities=opacities)
    if shs is not None:
        leaves["shs"] = shs
    else:
        leaves["colors_precomp"] = colors_precomp
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in leaves.items()}
    out = rasterize_gaussians_reference(leaves["means"], leaves["scales"], leaves["rotations"], leaves["opacities"],
                                        leaves.get("shs"), leaves.get("colors_precomp"), settings=settings)
    out.means2d.retain_grad()
    loss = (out.image * grad_image).sum()
    if grad_final_T is not None:
        loss = loss + (out.final_T * grad_final_T).sum()
    if grad_means2d_extra is not None:
        loss = loss + (out.means2d * grad_means2d_extra).sum()
    if grad_depths is not None:
        loss = loss + (out.depths * grad_depths).sum()
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items()}
    m2d = out.means2d.grad
    grads["means2d"] = m2d - grad_means2d_extra if grad_means2d_extra is not None else m2d
    return out, grads


def assert_close_grad(name, got, want):
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    denom = want.norm().item()
    err = (got - want).norm().item()
    if denom == 0:
        assert err <= 1e-6, f"{name}: expected zeros, error {err}"
        return
    assert err / denom <= GRAD_REL_L2, f"{name}: relative L2 error {err / denom:.2e} > {GRAD_REL_L2}"
    bad = (got - want).abs() > GRAD_ATOL_FRAC * want.abs().max() + GRAD_RTOL * want.abs()
    assert bad.float().mean().item() <= FLIP_FRACTION, f"{name}: {int(bad.sum())} elements off"


def make_scene(kind: str, seed: int):
    """Scenes with the awkward cases: non-square sizes not multiple of 16, Gaussians behind the camera and
    near the near plane, huge and tiny ones, many overlapping, a rotated and translated camera."""
    if kind == "basic":
        return random_scene(600, 70, 45, seed=seed, sh_degree=3)
    if kind == "degree1":
        return random_scene(500, 33, 61, seed=seed, sh_degree=1)
    g = torch.Generator().manual_seed(seed)
    if kind == "awkward":
        means, scales, rots, ops, shs, settings = random_scene(800, 83, 50, seed=seed, sh_degree=2)
        n = means.shape[0]
        idx = torch.randperm(n, generator=g)
        behind, near, huge, tiny, far_off = idx[:60], idx[60:100], idx[100:130], idx[130:200], idx[200:240]
        means[behind, 2] = -torch.rand(len(behind), generator=g) * 3.0
        means[near, 2] = 0.2 + 0.15 * torch.rand(len(near), generator=g)
        scales[huge] = 0.5 + torch.rand(len(huge), 3, generator=g)
        scales[tiny] = 1e-4 * torch.rand(len(tiny), 3, generator=g)
        # past the Jacobian clamp (1.3 tan(fov/2) = 0.74 here), large enough to reach into the image
        means[far_off, 0] = means[far_off, 2] * (0.76 + 0.2 * torch.rand(len(far_off), generator=g))
        scales[far_off] = 0.4 + 0.4 * torch.rand(len(far_off), 3, generator=g)
        # a camera turned by a few degrees and moved
        angle = 0.1
        rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, torch.cos(torch.tensor(angle)), -torch.sin(torch.tensor(angle))],
                            [0.0, torch.sin(torch.tensor(angle)), torch.cos(torch.tensor(angle))]])
        view = torch.eye(4)
        view[:3, :3] = rot
        view[:3, 3] = torch.tensor([0.05, -0.1, 0.2])
        settings = RasterSettings(settings.image_height, settings.image_width, settings.fx * 1.1, settings.fy,
                                  settings.cx + 1.7, settings.cy - 2.3, view, settings.bg, sh_degree=2,
                                  scale_modifier=0.9)
        return means, scales, rots, ops, shs, settings
    if kind == "overlap":
        # many large Gaussians stacked over a small image: long lists, early stops, opacity near 1
        means, scales, rots, ops, shs, settings = random_scene(400, 40, 24, seed=seed, sh_degree=0,
                                                               scale_range=(-2.0, -0.5))
        ops = 0.5 + 0.5 * torch.rand(ops.shape, generator=g)
        return means, scales, rots, ops, shs, settings
    raise ValueError(kind)


@pytest.mark.parametrize("kind,seed", [("basic", 0), ("degree1", 1), ("awkward", 2), ("overlap", 3)])
def test_forward_matches_reference(kind, seed):
    means, scales, rots, ops, shs, settings = make_scene(kind, seed)
    grad_image = torch.zeros(3, settings.image_height, settings.image_width)
    fwd, _ = cpu_pipeline(means, scales, rots, ops, shs, None, settings, grad_image)
    with torch.no_grad():
        ref = rasterize_gaussians_reference(means, scales, rots, ops, shs, settings=settings)
    assert torch.equal(fwd["radii"], ref.radii), "radii differ"
    torch.testing.assert_close(fwd["means2d"], ref.means2d, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(fwd["depths"], ref.depths, rtol=1e-6, atol=1e-6)
    flips = (fwd["n_contrib"] != ref.n_contrib).float().mean().item()
    assert flips <= FLIP_FRACTION, f"n_contrib differs on {flips:.2%} of pixels"
    assert_image_close(fwd["image"], fwd["final_T"], ref.image, ref.final_T)
    assert_depth_close(fwd["depth"], ref.depth)
    assert ref.n_contrib.max() > 0


def assert_depth_close(depth, ref_depth):
    scale = max(float(ref_depth.abs().max()), 1.0)
    err = (depth - ref_depth).abs() / scale
    assert (err > DEPTH_RTOL).float().mean().item() <= FLIP_FRACTION, f"{int((err > DEPTH_RTOL).sum())} pixels off"
    assert err.max() <= FLIP_IMAGE_MAX, f"depth error {err.max():.2e} (relative to {scale:.2f})"


def assert_image_close(image, final_T, ref_image, ref_final_T):
    err = torch.maximum((image - ref_image.detach()).abs().amax(0), (final_T - ref_final_T.detach()).abs())
    assert (err > IMAGE_ATOL).float().mean().item() <= FLIP_FRACTION, f"{int((err > IMAGE_ATOL).sum())} pixels off"
    assert err.max() <= FLIP_IMAGE_MAX, f"image error {err.max():.2e}"


@pytest.mark.parametrize("kind,seed", [("basic", 10), ("degree1", 11), ("awkward", 12), ("overlap", 13)])
def test_gradients_match_reference(kind, seed):
    means, scales, rots, ops, shs, settings = make_scene(kind, seed)
    g = torch.Generator().manual_seed(100 + seed)
    H, W = settings.image_height, settings.image_width
    grad_image = torch.randn(3, H, W, generator=g)
    grad_final_T = torch.randn(H, W, generator=g)
    extra_m2d = torch.randn(means.shape[0], 2, generator=g) * 0.01
    grad_depths = torch.randn(means.shape[0], generator=g) * 0.01
    _, got = cpu_pipeline(means, scales, rots, ops, shs, None, settings, grad_image, grad_final_T, extra_m2d,
                          grad_depths)
    _, want = reference_run(means, scales, rots, ops, shs, None, settings, grad_image, grad_final_T, extra_m2d,
                            grad_depths)
    for name in want:
        assert_close_grad(name, got[name], want[name])


def test_precomputed_colors_and_scale_modifier():
    means, scales, rots, ops, shs, settings = random_scene(500, 48, 40, seed=5, sh_degree=0)
    settings = RasterSettings(settings.image_height, settings.image_width, settings.fx, settings.fy, settings.cx,
                              settings.cy, settings.viewmatrix, settings.bg, scale_modifier=1.3)
    colors = torch.rand(means.shape[0], 3, generator=torch.Generator().manual_seed(6))
    grad_image = torch.randn(3, 40, 48, generator=torch.Generator().manual_seed(7))
    fwd, got = cpu_pipeline(means, scales, rots, ops, None, colors, settings, grad_image)
    ref, want = reference_run(means, scales, rots, ops, None, colors, settings, grad_image)
    assert (fwd["n_contrib"] != ref.n_contrib).float().mean() <= FLIP_FRACTION
    assert_image_close(fwd["image"], fwd["final_T"], ref.image, ref.final_T)
    for name in want:
        assert_close_grad(name, got[name], want[name])


def test_lane_histogram_matches_reference_profile():
    from cuda_rasterizer.lane_profile import lane_histogram_reference
    means, scales, rots, ops, shs, settings = random_scene(700, 50, 37, seed=8, sh_degree=1)
    fwd, _ = cpu_pipeline(means, scales, rots, ops, shs, None, settings, torch.zeros(3, 37, 50))
    hist = cpu_ext().lane_histogram(fwd["means2d"], fwd["conics"], fwd["opacities"], fwd["point_list"],
                                    fwd["ranges"], fwd["n_contrib"], *cam_args(settings))
    ref = lane_histogram_reference(means, scales, rots, ops, shs, None, settings)
    # exact up to the rare pair at a threshold (see FLIP_FRACTION)
    assert hist.sum() == ref.sum()
    assert (hist - ref).abs().sum().item() <= FLIP_FRACTION * ref.sum().item()


def test_degenerate_inputs_stay_finite():
    """Zero scales, zero quaternions, Gaussians on the near plane and at the camera centre, huge scales."""
    means, scales, rots, ops, shs, settings = random_scene(200, 40, 30, seed=9, sh_degree=3)
    scales[:20] = 0.0
    rots[20:40] = 0.0
    means[40:50] = torch.tensor([0.0, 0.0, 0.2])
    means[50:60] = 0.0
    scales[60:70] = 1e3
    means[70:80, 2] = 0.2000001
    ops[80:90] = 1.0
    grad_image = torch.randn(3, 30, 40, generator=torch.Generator().manual_seed(1))
    fwd, grads = cpu_pipeline(means, scales, rots, ops, shs, None, settings, grad_image)
    for k, v in list(fwd.items()) + list(grads.items()):
        if v.is_floating_point():
            assert torch.isfinite(v).all(), f"{k} has non-finite values"


def test_empty_scene():
    means, scales, rots, ops, shs, settings = random_scene(0, 20, 17, seed=0)
    fwd, grads = cpu_pipeline(means, scales, rots, ops, shs, None, settings, torch.ones(3, 17, 20))
    assert torch.allclose(fwd["image"], settings.bg.reshape(3, 1, 1).expand(3, 17, 20))
    assert (fwd["n_contrib"] == 0).all() and (fwd["final_T"] == 1).all()
    assert grads["means"].shape == (0, 3)
