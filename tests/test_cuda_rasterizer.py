"""The CUDA rasterizer against the reference: forward, gradients, every accumulation policy, edge cases.

Marked ``cuda``: skipped with the reason (tests/conftest.py) where there is no GPU or the extension does
not build.  The reference runs on the CPU; the same inputs go to the GPU.
"""

from __future__ import annotations

import pytest
import torch

from cuda_rasterizer import ATOMICS_MODES, rasterize_gaussians
from cuda_rasterizer.reference import random_scene, rasterize_gaussians_reference
from cuda_rasterizer.settings import RasterSettings
from test_cuda_math_cpu import FLIP_FRACTION, reference_run

pytestmark = pytest.mark.cuda

#: Image / final transmittance: float32 compositing of hundreds of layers with the GPU's FMA contraction and
#: expf, against the reference's vectorised CPU float32 (cumprod in double); errors of a few 1e-6 seen on the
#: CPU emulation, and FMA reorders roundings.
IMAGE_ATOL = 1e-4
#: A pair at the 1/255 cut or at the T < 1e-4 stop can flip between the two float32 evaluations (FMA, expf):
#: the pixel then gains or loses one contribution alpha * T * colour, at most about 0.01 * colour for these
#: scenes' colours (< 3).  Such pixels (at most FLIP_FRACTION of them) may exceed IMAGE_ATOL, up to this.
FLIP_IMAGE_MAX = 0.05
#: Expected depth (z composited with the colours' weights, same pass), relative to the image's largest depth:
#: the image's argument with z in place of a colour, so the same bounds (a flipped pair moves a pixel's depth
#: by at most about 0.01 z).
DEPTH_RTOL = IMAGE_ATOL
#: Whole-tensor relative L2 error of a gradient against autograd of the reference (CPU emulation of the same
#: math: <= 1e-5; the GPU adds FMA contraction and atomics order).  A wrong term gives errors of order 1.
GRAD_REL_L2 = 1e-3
#: Element-wise slack for gradients: |a - b| <= GRAD_ATOL_FRAC * max|b| + GRAD_RTOL * |b| except on at most
#: FLIP_FRACTION of the elements (pairs at the 1/255 or T_MIN thresholds may flip).
GRAD_ATOL_FRAC = 2e-3
GRAD_RTOL = 2e-2
#: Policies against baseline: the same float terms summed in another order (atomics, butterflies).
POLICY_REL_L2 = 2e-5
POLICY_ATOL_FRAC = 1e-4

#: (name, Gaussians, width, height, SH degree, seed)
SCENES = [
    ("small-square", 1000, 64, 64, 0, 1),
    ("edge-tiles", 5000, 200, 120, 3, 2),
    ("large", 20000, 256, 190, 1, 3),
    ("overlapping", 2000, 96, 72, 2, 4),
]


def build_scene(n, width, height, sh_degree, seed, overlapping=False):
    """random_scene plus the awkward cases: behind the camera, on the near plane, huge, tiny, past the
    Jacobian clamp; a turned and moved camera with an off-centre principal point."""
    means, scales, rots, ops, shs, settings = random_scene(
        n, width, height, seed=seed, sh_degree=sh_degree,
        scale_range=(-2.5, -0.7) if overlapping else (-4.0, -1.5))
    g = torch.Generator().manual_seed(seed + 1000)
    idx = torch.randperm(n, generator=g)
    k = max(1, n // 40)
    behind, near, huge, tiny, clamp = (idx[i * k:(i + 1) * k] for i in range(5))
    means[behind, 2] = -3.0 * torch.rand(k, generator=g)
    means[near, 2] = 0.2 + 0.2 * torch.rand(k, generator=g)
    scales[huge] = 0.3 + 0.5 * torch.rand(k, 3, generator=g)
    scales[tiny] = 1e-4 * torch.rand(k, 3, generator=g)
    means[clamp, 0] = means[clamp, 2] * 0.95
    if overlapping:
        ops = 0.6 + 0.4 * torch.rand(ops.shape, generator=g)
    c, s = torch.cos(torch.tensor(0.08)), torch.sin(torch.tensor(0.08))
    view = torch.eye(4)
    view[:3, :3] = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    view[:3, 3] = torch.tensor([0.1, -0.05, 0.15])
    settings = RasterSettings(height, width, settings.fx, settings.fy * 1.05, settings.cx + 2.5, settings.cy - 1.5,
                              view, settings.bg, sh_degree=sh_degree)
    return means, scales, rots, ops, shs, settings


def scene_by_name(name):
    for entry in SCENES:
        if entry[0] == name:
            _, n, w, h, deg, seed = entry
            return build_scene(n, w, h, deg, seed, overlapping=name == "overlapping")
    raise KeyError(name)


def to_cuda(*tensors):
    return [None if t is None else t.cuda() for t in tensors]


def cuda_settings(settings: RasterSettings) -> RasterSettings:
    return RasterSettings(settings.image_height, settings.image_width, settings.fx, settings.fy, settings.cx,
                          settings.cy, settings.viewmatrix.cuda(), settings.bg.cuda(), settings.sh_degree,
                          settings.scale_modifier, settings.debug)


def cuda_run(means, scales, rots, ops, shs, colors, settings, grad_image, grad_final_T=None, atomics="distwar",
             balance_threshold=8):
    leaves = dict(means=means, scales=scales, rotations=rots, opacities=ops)
    if shs is not None:
        leaves["shs"] = shs
    else:
        leaves["colors_precomp"] = colors
    leaves = {k: v.detach().cuda().requires_grad_(True) for k, v in leaves.items()}
    out = rasterize_gaussians(leaves["means"], leaves["scales"], leaves["rotations"], leaves["opacities"],
                              leaves.get("shs"), leaves.get("colors_precomp"), settings=cuda_settings(settings),
                              atomics=atomics, balance_threshold=balance_threshold, backend="cuda")
    out.means2d.retain_grad()
    loss = (out.image * grad_image.cuda()).sum()
    if grad_final_T is not None:
        loss = loss + (out.final_T * grad_final_T.cuda()).sum()
    loss.backward()
    grads = {k: v.grad.cpu() for k, v in leaves.items()}
    grads["means2d"] = out.means2d.grad.cpu()
    return out, grads


def assert_grad_close(name, got, want, rel_l2=GRAD_REL_L2, atol_frac=GRAD_ATOL_FRAC, rtol=GRAD_RTOL):
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite gradient"
    scale = want.norm().item()
    err = (got - want).norm().item()
    if scale == 0:
        assert err <= 1e-6, f"{name}: expected zeros, error {err}"
        return
    assert err / scale <= rel_l2, f"{name}: relative L2 error {err / scale:.2e} > {rel_l2}"
    bad = (got - want).abs() > atol_frac * want.abs().max() + rtol * want.abs()
    assert bad.float().mean().item() <= FLIP_FRACTION, f"{name}: {int(bad.sum())} of {bad.numel()} elements off"


def cotangents(settings, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(3, settings.image_height, settings.image_width, generator=g),
            torch.randn(settings.image_height, settings.image_width, generator=g))


@pytest.mark.parametrize("name", [s[0] for s in SCENES])
def test_forward_matches_reference(name):
    means, scales, rots, ops, shs, settings = scene_by_name(name)
    with torch.no_grad():
        ref = rasterize_gaussians_reference(means, scales, rots, ops, shs, settings=settings)
        out = rasterize_gaussians(*to_cuda(means, scales, rots, ops, shs), settings=cuda_settings(settings),
                                  backend="cuda")
    assert out.image.is_cuda and out.image.shape == ref.image.shape
    radii = out.radii.cpu()
    assert (radii != ref.radii).float().mean().item() <= FLIP_FRACTION, "radii differ"
    assert ((radii - ref.radii).abs() <= 1).all(), "a radius differs by more than rounding"
    torch.testing.assert_close(out.depths.cpu(), ref.depths, rtol=1e-5, atol=1e-5)
    same_r = radii == ref.radii
    torch.testing.assert_close(out.means2d.cpu()[same_r], ref.means2d[same_r], rtol=1e-5, atol=1e-3)
    n_contrib = out.n_contrib.cpu()
    same = n_contrib == ref.n_contrib
    assert 1 - same.float().mean().item() <= FLIP_FRACTION, f"n_contrib differs on {(~same).sum()} pixels"
    err = torch.maximum((out.image.cpu() - ref.image).abs().amax(0), (out.final_T.cpu() - ref.final_T).abs())
    assert (err > IMAGE_ATOL).float().mean().item() <= FLIP_FRACTION, f"{int((err > IMAGE_ATOL).sum())} pixels off"
    assert err.max() <= FLIP_IMAGE_MAX, f"image error {err.max():.2e}"
    assert_depth_close(out.depth, ref.depth)
    assert ref.n_contrib.max() > 0 and (radii == 0).any() and (radii > 0).any()


def assert_depth_close(depth, ref_depth):
    """The CUDA forward's expected depth [H, W] against the reference's."""
    assert depth is not None and depth.is_cuda and depth.shape == ref_depth.shape
    scale = max(float(ref_depth.abs().max()), 1.0)
    err = (depth.cpu() - ref_depth).abs() / scale
    assert (err > DEPTH_RTOL).float().mean().item() <= FLIP_FRACTION, f"{int((err > DEPTH_RTOL).sum())} pixels off"
    assert err.max() <= FLIP_IMAGE_MAX, f"depth error {err.max():.2e} (relative to {scale:.2f})"


def test_depth_through_the_stages_has_no_gradient():
    """project + rasterize stages on CUDA give the same depth as the composed call, with no gradient,
    and backward through the image still works beside it."""
    from cuda_rasterizer import project_gaussians, rasterize_projected
    means, scales, rots, ops, shs, settings = scene_by_name("overlapping")
    with torch.no_grad():
        ref = rasterize_gaussians_reference(means, scales, rots, ops, shs, settings=settings)
    m, s, r, o, sh = to_cuda(means, scales, rots, ops, shs)
    m.requires_grad_(True)
    cs = cuda_settings(settings)
    proj = project_gaussians(m, s, r, o, sh, settings=cs, backend="cuda")
    out = rasterize_projected(proj, settings=cs, backend="cuda")
    assert not out.depth.requires_grad
    assert_depth_close(out.depth, ref.depth)
    full = rasterize_gaussians(m, s, r, o, sh, settings=cs, backend="cuda")
    assert torch.equal(out.depth, full.depth)
    (out.image.sum() + out.depth.sum()).backward()
    assert m.grad is not None and torch.isfinite(m.grad).all()


@pytest.mark.parametrize("name", [s[0] for s in SCENES])
def test_gradients_match_reference(name):
    means, scales, rots, ops, shs, settings = scene_by_name(name)
    grad_image, grad_final_T = cotangents(settings, 7)
    _, got = cuda_run(means, scales, rots, ops, shs, None, settings, grad_image, grad_final_T)
    _, want = reference_run(means, scales, rots, ops, shs, None, settings, grad_image, grad_final_T)
    for key in want:
        assert_grad_close(key, got[key], want[key])


def test_precomputed_colors_match_reference():
    means, scales, rots, ops, shs, settings = build_scene(3000, 120, 88, 0, 11)
    colors = torch.rand(means.shape[0], 3, generator=torch.Generator().manual_seed(12))
    grad_image, _ = cotangents(settings, 13)
    _, got = cuda_run(means, scales, rots, ops, None, colors, settings, grad_image)
    _, want = reference_run(means, scales, rots, ops, None, colors, settings, grad_image)
    for key in want:
        assert_grad_close(key, got[key], want[key])


@pytest.mark.parametrize("atomics,threshold", [("warp", 8), ("distwar", 8), ("distwar", 1), ("distwar", 33),
                                               ("tile", 8), ("tile", 1), ("tile", 33)])
def test_policies_match_baseline(atomics, threshold):
    means, scales, rots, ops, shs, settings = scene_by_name("edge-tiles")
    grad_image, grad_final_T = cotangents(settings, 21)
    out_b, base = cuda_run(means, scales, rots, ops, shs, None, settings, grad_image, grad_final_T, atomics="baseline")
    out_p, got = cuda_run(means, scales, rots, ops, shs, None, settings, grad_image, grad_final_T, atomics=atomics,
                          balance_threshold=threshold)
    assert torch.equal(out_b.image, out_p.image), "the policy changed the forward pass"
    for key in base:
        assert_grad_close(key, got[key], base[key], rel_l2=POLICY_REL_L2, atol_frac=POLICY_ATOL_FRAC, rtol=1e-3)


def cuda_projection(probe):
    """The probe's CUDA preprocess outputs as a reference ``Projected`` (what the lane counting reads)."""
    from cuda_rasterizer.reference import Projected
    n = probe.means2d.shape[0]
    unused = torch.zeros(n, 2, dtype=torch.int64)
    return Projected(probe.means2d.cpu(), probe.conics.cpu(), probe.colors.cpu(), probe.opacities.cpu(),
                     torch.zeros(n), probe.radii.cpu(), unused, unused)


def cuda_tile_offsets(ranges):
    """CUDA ranges [tiles, 2] ([start, end), 0 for empty tiles) -> the reference's offsets [tiles + 1]."""
    r = ranges.cpu().long()
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(r[:, 1] - r[:, 0], 0)])


def test_probe_matches_autograd_and_counts_lanes():
    from cuda_rasterizer.lane_profile import lane_histogram_from_projection, lane_histogram_reference
    from cuda_rasterizer.profiling import BackwardRenderProbe
    means, scales, rots, ops, shs, settings = scene_by_name("small-square")
    grad_image, _ = cotangents(settings, 31)
    cs = cuda_settings(settings)
    probe = BackwardRenderProbe(*to_cuda(means, scales, rots, ops, shs), None, cs)
    # the probe returns views of its persistent buffers, which the next call overwrites: keep a copy
    base = {k: v.clone() for k, v in probe.backward_render(grad_image.cuda(), "baseline").items()}
    assert set(base) == {"means2d", "conics", "opacities", "colors"}
    assert base["means2d"].shape == (means.shape[0], 2) and base["opacities"].shape == (means.shape[0],)
    for mode in ATOMICS_MODES:
        for thr in (1, 8, 33):
            got = probe.backward_render(grad_image.cuda(), mode, thr)
            for key in base:
                assert_grad_close(f"{mode}/{thr}/{key}", got[key].cpu(), base[key].cpu(), rel_l2=POLICY_REL_L2,
                                  atol_frac=POLICY_ATOL_FRAC, rtol=1e-3)
    floor = probe.backward_render(grad_image.cuda(), "floor")  # runs; stores nothing (atomics.cuh)
    assert floor["means2d"].shape == base["means2d"].shape
    assert all((v == 0).all() for v in floor.values()), "floor must not write the gradients"
    probe.zero_grads()  # then the next launch is the kernel alone; same results
    again = probe.backward_render(grad_image.cuda(), "baseline")
    for key in base:
        assert_grad_close(f"again/{key}", again[key].cpu(), base[key].cpu(), rel_l2=POLICY_REL_L2,
                          atol_frac=POLICY_ATOL_FRAC, rtol=1e-3)
    _, want = cuda_run(means, scales, rots, ops, shs, None, settings, grad_image)
    assert_grad_close("means2d", base["means2d"].cpu(), want["means2d"], rel_l2=POLICY_REL_L2,
                      atol_frac=POLICY_ATOL_FRAC, rtol=1e-3)
    hist = probe.lane_histogram().cpu()
    assert hist.shape == (33,) and hist.dtype == torch.int64
    # Against the reference counting run on the CUDA path's own projection and tile lists: the same
    # (warp, Gaussian) steps, so the totals are equal exactly; only the lanes counted per step may differ
    # where a pair sits at the alpha or power threshold (expf, FMA).  (An independent reference projection
    # may put a Gaussian on the other side of a tile edge, which changes the list lengths: see below.)
    own = lane_histogram_from_projection(cuda_projection(probe), settings, probe.point_list.cpu().long(),
                                         cuda_tile_offsets(probe.ranges))
    assert hist.sum() == own.sum(), "the CUDA histogram must count one step per (warp, Gaussian of the list)"
    assert (hist - own).abs().sum().item() <= FLIP_FRACTION * own.sum().item()
    ref = lane_histogram_reference(means, scales, rots, ops, shs, None, settings)
    assert (hist - ref).abs().sum().item() <= FLIP_FRACTION * ref.sum().item()


def test_degenerate_inputs_stay_finite():
    means, scales, rots, ops, shs, settings = build_scene(1000, 64, 48, 3, 41)
    scales[:50] = 0.0
    rots[50:100] = 0.0
    means[100:120] = torch.tensor([0.0, 0.0, 0.2])
    means[120:140] = 0.0
    scales[140:160] = 1e3
    means[160:180, 2] = 0.2000001
    ops[180:200] = 1.0
    ops[200:220] = 0.0
    grad_image, grad_final_T = cotangents(settings, 42)
    for atomics in ATOMICS_MODES:
        out, grads = cuda_run(means, scales, rots, ops, shs, None, settings, grad_image, grad_final_T, atomics=atomics)
        for key, value in list(out._asdict().items()) + list(grads.items()):
            if value.is_floating_point():
                assert torch.isfinite(value).all(), f"{atomics}: {key} has NaN or Inf"


def test_empty_scene():
    means, scales, rots, ops, shs, settings = random_scene(0, 40, 23, seed=0)
    out, grads = cuda_run(means, scales, rots, ops, shs, None, settings, torch.ones(3, 23, 40))
    bg = settings.bg.reshape(3, 1, 1).expand(3, 23, 40)
    torch.testing.assert_close(out.image.detach().cpu(), bg)
    assert (out.n_contrib == 0).all() and (out.final_T == 1).all() and (out.depth == 0).all()
    assert grads["means"].shape == (0, 3)


def test_all_culled_scene():
    means, scales, rots, ops, shs, settings = random_scene(500, 48, 32, seed=1)
    means[:, 2] = -1.0
    out, grads = cuda_run(means, scales, rots, ops, shs, None, settings, torch.ones(3, 32, 48))
    assert (out.radii == 0).all() and (out.n_contrib == 0).all() and (out.depth == 0).all()
    assert (grads["means"] == 0).all()


def test_debug_mode_and_env(monkeypatch):
    means, scales, rots, ops, shs, settings = random_scene(300, 40, 40, seed=2)
    monkeypatch.setenv("CUDA_RASTERIZER_DEBUG", "1")
    grad_image, _ = cotangents(settings, 3)
    _, grads = cuda_run(means, scales, rots, ops, shs, None, settings, grad_image)
    assert torch.isfinite(grads["means"]).all()


def test_dispatch_and_needs_input_grad():
    means, scales, rots, ops, shs, settings = random_scene(300, 40, 32, seed=4, sh_degree=1)
    # CPU tensors go to the reference
    out_cpu = rasterize_gaussians(means, scales, rots, ops, shs, settings=settings)
    assert not out_cpu.image.is_cuda
    # only the opacities need a gradient: the others get none
    m, s, r, o, sh = to_cuda(means, scales, rots, ops, shs)
    o.requires_grad_(True)
    out = rasterize_gaussians(m, s, r, o, sh, settings=cuda_settings(settings), backend="cuda")
    out.image.sum().backward()
    assert o.grad is not None and m.grad is None and sh.grad is None


def test_bad_inputs_name_the_argument():
    means, scales, rots, ops, shs, settings = random_scene(10, 32, 32, seed=5)
    m, s, r, o, sh = to_cuda(means, scales, rots, ops, shs)
    with pytest.raises(ValueError, match="scales"):
        rasterize_gaussians(m, s[:, :2], r, o, sh, settings=cuda_settings(settings), backend="cuda")
    with pytest.raises(ValueError, match="rotations"):
        rasterize_gaussians(m, s, r.cpu(), o, sh, settings=cuda_settings(settings), backend="cuda")
