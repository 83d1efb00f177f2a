"""The CUDA kernels themselves, run on the CPU under a thread-per-lane emulation (tests/csrc/cuda_emu.h).

tests/csrc/kernel_emu_ext.cpp compiles cuda_rasterizer/csrc/*_kernel(s).cuh with g++ (one std::thread per
CUDA thread, barriers for __syncthreads and the warp intrinsics, a lock for atomics) and runs the forward,
the binning kernels, the backward kernel under every accumulation policy and threshold, and the lane-count
kernel.  The results are compared with the CPU emulation of the same math (tests/cpu_math_ext.cpp, itself
checked against the reference in test_cuda_math_cpu.py).  The emulation also checks the policies'
convergence contract: every warp intrinsic must be reached by all 32 lanes, with a full mask, as their
same-numbered warp-intrinsic call.

What it cannot show: GPU timing, memory-model effects (the emulated atomics are locked, its barriers fence
everything), or compiler differences between nvcc and g++.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cuda_rasterizer.reference import random_scene, rasterize_gaussians_reference
from test_cuda_math_cpu import assert_depth_close, cam_args, cpu_ext

HERE = Path(__file__).resolve().parent
CSRC = HERE.parent / "cuda_rasterizer" / "csrc"

#: Policies against the sequential CPU emulation: the same float terms, summed in another order.
POLICY_REL_L2 = 1e-6
POLICY_ATOL_FRAC = 1e-5
MODES = {"baseline": 0, "warp": 1, "distwar": 2, "tile": 3, "floor": 4}

_emu = None


def emu_ext():
    global _emu
    if _emu is None:
        from torch.utils.cpp_extension import load
        build = Path(os.environ.get("CUDA_RASTERIZER_BUILD_DIR", Path.home() / ".cache" / "cuda_rasterizer")) / "kernel_emu_ext"
        build.mkdir(parents=True, exist_ok=True)
        _emu = load(name="gsr_kernel_emu_ext", sources=[str(HERE / "csrc" / "kernel_emu_ext.cpp")],
                    extra_include_paths=[str(HERE / "csrc"), str(CSRC)],
                    extra_cflags=["-O2", "-std=c++17", "-ffp-contract=off", "-Wno-unknown-pragmas"],
                    build_directory=str(build), verbose=False)
    return _emu


def prepared(n, width, height, seed, sh_degree, opacity_range=None):
    means, scales, rots, ops, shs, settings = random_scene(n, width, height, seed=seed, sh_degree=sh_degree)
    if opacity_range is not None:
        lo, hi = opacity_range
        ops = lo + (hi - lo) * torch.rand(ops.shape, generator=torch.Generator().manual_seed(seed))
    f = lambda t: t.to(torch.float32).contiguous()  # noqa: E731
    return f(means), f(scales), f(rots), f(ops).reshape(-1).contiguous(), f(shs), settings


def run_forward(ext, means, scales, rots, ops, shs, cam):
    pre = ext.preprocess_forward(means, scales, rots, shs, *cam)
    bins = ext.bin_gaussians(pre[0], pre[3], pre[4], pre[5], *cam)
    fwd = ext.render_forward(pre[0], pre[1], pre[2], ops, pre[3], bins[0], bins[1], *cam)
    return pre, bins, fwd


def assert_policy_close(name, got, want):
    assert torch.isfinite(got).all(), f"{name}: non-finite"
    scale = want.norm().item()
    assert scale > 0
    assert (got - want).norm().item() / scale <= POLICY_REL_L2, f"{name}: relative L2 error too large"
    assert ((got - want).abs() <= POLICY_ATOL_FRAC * want.abs().max()).all(), f"{name}: element off"


def check_scene(means, scales, rots, ops, shs, settings, policies, seed):
    emu, cpu = emu_ext(), cpu_ext()
    cam = cam_args(settings)
    pre_e, bins_e, fwd_e = run_forward(emu, means, scales, rots, ops, shs, cam)
    pre_c, bins_c, fwd_c = run_forward(cpu, means, scales, rots, ops, shs, cam)
    for name, a, b in zip(("means2d", "conics", "colors", "depths", "radii", "tiles", "clamped"), pre_e, pre_c):
        assert torch.equal(a, b), f"preprocess kernel: {name} differs"
    assert torch.equal(bins_e[0], bins_c[0]), "duplicate/sort: point list differs"
    assert torch.equal(bins_e[1], bins_c[1]), "tile_ranges_kernel: ranges differ"
    for name, a, b in zip(("image", "final_T", "n_contrib", "depth"), fwd_e, fwd_c):
        assert torch.equal(a, b), f"render_forward_kernel: {name} differs"
    with torch.no_grad():
        ref = rasterize_gaussians_reference(means, scales, rots, ops, shs, settings=settings)
    assert_depth_close(fwd_e[3], ref.depth)   # the kernel's expected depth, against the oracle

    g = torch.Generator().manual_seed(seed)
    grad_image = torch.randn(3, settings.image_height, settings.image_width, generator=g)
    grad_final_T = torch.randn(settings.image_height, settings.image_width, generator=g)
    want = cpu.render_backward(pre_c[0], pre_c[1], pre_c[2], ops, bins_c[0], bins_c[1], fwd_c[1], fwd_c[2],
                               grad_image, grad_final_T, *cam)
    for mode, threshold in policies:
        got = emu.render_backward(pre_e[0], pre_e[1], pre_e[2], ops, bins_e[0], bins_e[1], fwd_e[1], fwd_e[2],
                                  grad_image, grad_final_T, *cam, MODES[mode], threshold)
        if mode == "floor":
            assert all((t == 0).all() for t in got[:4]), "floor mode must not write the gradients"
            assert got[4].abs().sum() > 0, "floor mode must keep the gradient computation alive"
            continue
        for name, a, b in zip(("means2d", "conics", "colors", "opacities"), got[:4], want):
            assert_policy_close(f"{mode}/{threshold}/{name}", a, b)

    hist = emu.lane_histogram(pre_e[0], pre_e[1], pre_e[2], ops, bins_e[0], bins_e[1], fwd_e[2], *cam)
    assert torch.equal(hist, cpu.lane_histogram(pre_c[0], pre_c[1], ops, bins_c[0], bins_c[1], fwd_c[2], *cam))

    grads = emu.preprocess_backward(means, scales, rots, shs, pre_e[5], pre_e[6], want[0], want[1], want[2], None, *cam)
    grads_c = cpu.preprocess_backward(means, scales, rots, shs, pre_c[5], pre_c[6], want[0], want[1], want[2], None,
                                      *cam)
    for name, a, b in zip(("means", "scales", "rotations", "shs"), grads, grads_c):
        assert torch.equal(a, b), f"preprocess_backward_kernel: {name} differs"
    return fwd_e


@pytest.mark.slow
def test_kernels_every_policy_edge_tiles():
    """3x2 tiles, the last column and row partly outside the image; every policy and threshold."""
    scene = prepared(150, 40, 20, seed=3, sh_degree=2)
    policies = [("baseline", 8), ("warp", 8), ("distwar", 1), ("distwar", 8), ("distwar", 33), ("tile", 1),
                ("tile", 8), ("tile", 33), ("floor", 8)]
    fwd = check_scene(*scene, policies, seed=4)
    assert fwd[2].max() > 0


@pytest.mark.slow
def test_kernels_lists_longer_than_one_batch():
    """Faint Gaussians: tile lists and n_contrib past 256, so the shared-memory batches wrap."""
    scene = prepared(700, 24, 18, seed=5, sh_degree=0, opacity_range=(0.01, 0.04))
    fwd = check_scene(*scene, [("baseline", 8), ("distwar", 33), ("tile", 33), ("tile", 8)], seed=6)
    assert fwd[2].max() > 256, "the scene must need more than one batch"


def test_kernels_empty_scene():
    scene = prepared(0, 20, 17, seed=0, sh_degree=0)
    emu = emu_ext()
    pre, bins, fwd = run_forward(emu, *scene[:5], cam_args(scene[5]))
    assert bins[0].numel() == 0 and (fwd[2] == 0).all() and (fwd[1] == 1).all() and (fwd[3] == 0).all()


def test_pair_count_past_int32_is_an_error_not_a_wrap():
    """The scan of tiles_touched runs in int64 (binning.cu; the emulation mirrors it): three Gaussians of
    2^30 tiles each total 3 * 2^30 pairs, which an int32 running sum would wrap to a negative offset (and
    duplicate_kernel would write there); instead the total is refused with a message naming the cause."""
    scene = prepared(3, 20, 17, seed=0, sh_degree=0)
    cam = cam_args(scene[5])
    tiles = torch.full((3,), 2**30, dtype=torch.int32)
    zeros2, zeros1 = torch.zeros(3, 2), torch.zeros(3)
    with pytest.raises(RuntimeError, match=r"3221225472 \(Gaussian, tile\) pairs.*INT_MAX"):
        emu_ext().bin_gaussians(zeros2, zeros1, torch.zeros(3, dtype=torch.int32), tiles, *cam)


def test_reduced_policies_spread_their_atomics_over_nine_lanes():
    """After the butterfly every lane holds the 9 sums, so warp (and distwar above its threshold) issue the
    9 global atomics of a (warp, Gaussian) step from lanes 0..8, one each, instead of 9 from one lane:
    every float atomicAdd comes from lanes 0..8, the same number from each, and none from lanes 9..31.
    Baseline (one lane, 9 atomics per contributing pixel) is the contrast."""
    means, scales, rots, ops, shs, settings = prepared(60, 16, 16, seed=7, sh_degree=0)
    emu = emu_ext()
    cam = cam_args(settings)
    pre, bins, fwd = run_forward(emu, means, scales, rots, ops, shs, cam)
    grad_image = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(8))
    args = (pre[0], pre[1], pre[2], ops, bins[0], bins[1], fwd[1], fwd[2], grad_image, None, *cam)
    for mode, threshold in (("warp", 8), ("distwar", 1)):
        lanes = emu.render_backward(*args, MODES[mode], threshold)[5]
        assert lanes[:9].min() > 0 and (lanes[:9] == lanes[0]).all(), f"{mode}: lanes 0..8 {lanes[:9].tolist()}"
        assert (lanes[9:] == 0).all(), f"{mode}: lanes 9..31 issued atomics: {lanes[9:].tolist()}"
    base = emu.render_backward(*args, MODES["baseline"], 8)[5]
    assert base.sum() % 9 == 0 and (base[9:] > 0).any(), "baseline: 9 atomics per contributing lane, any lane"
