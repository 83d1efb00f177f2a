"""The Python side of the CUDA path (autograd.py, profiling.py), run on the CPU.

The extension is replaced by an adapter over the CPU emulation (tests/cpu_math_ext.cpp).  Before the
emulation answers, every call is also made, with the very same arguments, on the real compiled extension
(when nvcc is here to build it): with CPU tensors it must get through pybind's argument conversion and stop
at the glue's device check, which proves that autograd.py calls each bound function with the right
number, order and types of arguments.  The outputs and gradients are then compared with the reference.
"""

from __future__ import annotations

import pytest
import torch

from cuda_rasterizer import autograd, profiling
from cuda_rasterizer._backend import CudaBackendUnavailable, find_cuda_home, load_extension
from cuda_rasterizer.reference import random_scene
from test_cuda_math_cpu import assert_close_grad, assert_depth_close, cpu_ext, make_scene, reference_run


class CheckedCpuExt:
    """Same signatures as csrc/bindings.cpp; answers with the CPU emulation."""

    def __init__(self, real):
        self.real = real
        self.cpu = cpu_ext()
        self.calls = []

    def _check(self, name, args):
        self.calls.append(name)
        if self.real is not None:
            with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
                getattr(self.real, name)(*args)

    def preprocess_forward(self, *args):
        self._check("preprocess_forward", args)
        assert len(args) == 11
        out = self.cpu.preprocess_forward(*args[:9])
        if args[3] is None:  # no shs: the glue returns empty colours and clamp flags
            out[2] = torch.empty(0)
            out[6] = torch.zeros(0, 3, dtype=torch.uint8)
        return out

    def bin_gaussians(self, *args):
        self._check("bin_gaussians", args)
        return self.cpu.bin_gaussians(*args[:9])

    def render_forward(self, *args):
        self._check("render_forward", args)
        return self.cpu.render_forward(*args[:12])

    def render_backward(self, *args):
        self._check("render_backward", args)
        assert args[15] in autograd.MODE_IDS.values() and 1 <= args[16] <= 33
        return self.cpu.render_backward(*args[:15])

    def render_backward_into(self, *args):
        self._check("render_backward_into", args)
        grads, rest = args[0], args[1:]
        assert rest[15] in autograd.MODE_IDS.values() and 1 <= rest[16] <= 33
        n = rest[0].shape[0]
        assert grads.shape == (9 * n,) and grads.dtype == torch.float32
        got = self.cpu.render_backward(*rest[:15])  # (means2d, conics, colors, opacities), as the kernel adds
        views = [grads[:2 * n].view(n, 2), grads[2 * n:5 * n].view(n, 3), grads[5 * n:8 * n].view(n, 3),
                 grads[8 * n:]]
        for view, g in zip(views, got):
            view.add_(g.reshape(view.shape))
        return views

    def lane_histogram(self, *args):
        self._check("lane_histogram", args)
        a = list(args)
        return self.cpu.lane_histogram(a[0], a[1], a[3], a[4], a[5], a[6], *a[7:12])

    def preprocess_backward(self, *args):
        self._check("preprocess_backward", args)
        return self.cpu.preprocess_backward(*args[:15])


@pytest.fixture
def fake_ext(monkeypatch):
    try:
        find_cuda_home()
        real = load_extension()
    except CudaBackendUnavailable:
        real = None
    ext = CheckedCpuExt(real)
    monkeypatch.setattr(autograd, "load_extension", lambda: ext)
    monkeypatch.setattr(profiling, "load_extension", lambda: ext)
    monkeypatch.setattr(autograd, "_current_stream", lambda device: 0)
    return ext


def run_autograd(means, scales, rots, ops, shs, colors, settings, grad_image, grad_final_T, grad_depths):
    leaves = dict(means=means, scales=scales, rotations=rots, opacities=ops)
    leaves["shs" if shs is not None else "colors_precomp"] = shs if shs is not None else colors
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in leaves.items()}
    out = autograd._rasterize(leaves["means"], leaves["scales"], leaves["rotations"], leaves["opacities"],
                              leaves.get("shs"), leaves.get("colors_precomp"), settings, "distwar", 8)
    out.means2d.retain_grad()
    loss = (out.image * grad_image).sum() + (out.final_T * grad_final_T).sum() + (out.depths * grad_depths).sum()
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items()}
    grads["means2d"] = out.means2d.grad
    return out, grads


@pytest.mark.parametrize("kind,seed,precomp", [("awkward", 1, False), ("basic", 2, True)])
def test_autograd_plumbing_matches_reference(fake_ext, kind, seed, precomp):
    means, scales, rots, ops, shs, settings = make_scene(kind, seed)
    colors = torch.rand(means.shape[0], 3, generator=torch.Generator().manual_seed(seed)) if precomp else None
    shs = None if precomp else shs
    g = torch.Generator().manual_seed(50 + seed)
    H, W = settings.image_height, settings.image_width
    grad_image, grad_final_T = torch.randn(3, H, W, generator=g), torch.randn(H, W, generator=g)
    grad_depths = 0.01 * torch.randn(means.shape[0], generator=g)
    out, got = run_autograd(means, scales, rots, ops, shs, colors, settings, grad_image, grad_final_T, grad_depths)
    ref, want = reference_run(means, scales, rots, ops, shs, colors, settings, grad_image, grad_final_T, None,
                              grad_depths)
    assert out.radii.dtype == torch.int32 and out.n_contrib.dtype == torch.int32
    # the expected depth: render_forward's fourth output, through _Render as a non-differentiable output
    assert out.depth is not None and not out.depth.requires_grad
    assert_depth_close(out.depth, ref.depth.detach())
    for name in want:
        assert_close_grad(name, got[name], want[name])
    assert {"preprocess_forward", "bin_gaussians", "render_forward", "render_backward",
            "preprocess_backward"} <= set(fake_ext.calls)


def test_needs_input_grad_is_honoured(fake_ext):
    means, scales, rots, ops, shs, settings = random_scene(100, 32, 24, seed=3, sh_degree=1)
    ops = ops.clone().requires_grad_(True)
    out = autograd._rasterize(means, scales, rots, ops, shs, None, settings, "baseline", 8)
    out.image.sum().backward()
    assert ops.grad is not None and torch.isfinite(ops.grad).all()
    assert "preprocess_backward" not in fake_ext.calls  # nothing upstream of the render needed a gradient


def test_probe_plumbing(fake_ext):
    means, scales, rots, ops, shs, settings = random_scene(200, 40, 30, seed=4, sh_degree=2)
    probe = profiling.BackwardRenderProbe(means, scales, rots, ops, shs, None, settings)
    grad_image = torch.randn(3, 30, 40, generator=torch.Generator().manual_seed(5))
    for mode in ("baseline", "warp", "distwar", "tile", "floor"):
        grads = probe.backward_render(grad_image, mode, 8)
        assert set(grads) == {"means2d", "conics", "opacities", "colors"}
        assert grads["opacities"].shape == (200,) and grads["means2d"].shape == (200, 2)
    with pytest.raises(ValueError, match="atomics"):
        probe.backward_render(grad_image, "nope")
    # persistent buffers: zeroed again before the next launch, by zero_grads (outside a timed region) or
    # by backward_render itself; either way a repeated call gives the same gradients, not their sum
    first = {k: v.clone() for k, v in probe.backward_render(grad_image, "baseline", 8).items()}
    again = probe.backward_render(grad_image, "baseline", 8)
    for key in first:
        torch.testing.assert_close(again[key], first[key], rtol=0, atol=0)
    probe.zero_grads()
    assert all((v == 0).all() for v in again.values()), "zero_grads must clear the returned buffers"
    assert "render_backward_into" in fake_ext.calls and "render_backward" not in fake_ext.calls
    hist = probe.lane_histogram()
    assert hist.shape == (33,) and hist.sum() > 0
