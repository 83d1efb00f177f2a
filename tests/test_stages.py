"""The rasterizer's two public stages: project_gaussians then rasterize_projected.

Their composition must be rasterize_gaussians (same image, same gradients), gradients must flow through
both stages, and the projected rows must survive what sharded training does with them between the stages
(keep only the visible ones, split them into parts, concatenate the parts in order).  The CUDA backend's
stages are checked on the CPU through the emulated extension of test_cuda_autograd_cpu (fake_ext).
"""

from __future__ import annotations

import pytest
import torch

from cuda_rasterizer import (STAGE_BACKENDS, ProjectedGaussians, autograd, project_gaussians,
                             rasterize_gaussians, rasterize_gaussians_reference, rasterize_projected)
from cuda_rasterizer.reference import random_scene
from test_cuda_autograd_cpu import fake_ext  # noqa: F401 - pytest fixture
from test_cuda_math_cpu import assert_close_grad

#: Same float32 operations in the same order: the composition is bit-identical to the one-call path.
EXACT = dict(rtol=0.0, atol=0.0)
#: Rendering a subset of rows (the visible ones) or a re-assembled set changes no operation on the rows
#: that contribute, but the per-tile matmul may block differently: a few ulps.
SUBSET = dict(rtol=1e-6, atol=1e-6)


def leaves(seed=0, n=300, w=40, h=30, sh_degree=1):
    means, scales, rots, ops, shs, settings = random_scene(n, w, h, seed=seed, sh_degree=sh_degree)
    tensors = [t.clone().requires_grad_(True) for t in (means, scales, rots, ops, shs)]
    return tensors, settings


def grads_of(tensors, out, cotangent):
    loss = (out.image * cotangent).sum()
    return torch.autograd.grad(loss, tensors, retain_graph=True)


def test_composition_equals_rasterize_gaussians_with_gradients():
    tensors, settings = leaves()
    g = torch.randn(3, 30, 40, generator=torch.Generator().manual_seed(1))
    whole = rasterize_gaussians(*tensors, settings=settings, backend="reference")
    proj = project_gaussians(*tensors, settings=settings, backend="reference")
    staged = rasterize_projected(proj, settings=settings, backend="reference")
    torch.testing.assert_close(staged.image, whole.image, **EXACT)
    torch.testing.assert_close(staged.final_T, whole.final_T, **EXACT)
    assert torch.equal(staged.radii, whole.radii) and torch.equal(staged.n_contrib, whole.n_contrib)
    oracle = rasterize_gaussians_reference(*tensors, settings=settings)
    torch.testing.assert_close(whole.image, oracle.image, **EXACT)
    for a, b, c in zip(grads_of(tensors, staged, g), grads_of(tensors, whole, g), grads_of(tensors, oracle, g)):
        torch.testing.assert_close(a, b, **EXACT)
        torch.testing.assert_close(a, c, **EXACT)


def test_gradients_flow_through_both_stages():
    tensors, settings = leaves(seed=2)
    proj = project_gaussians(*tensors, settings=settings, backend="reference")
    for name in ("means2d", "conics", "colors", "opacities"):
        getattr(proj, name).retain_grad()
    out = rasterize_projected(proj, settings=settings, backend="reference")
    out.image.square().sum().backward()
    visible = proj.radii > 0
    assert visible.sum() > 50
    for name in ("means2d", "conics", "colors", "opacities"):
        grad = getattr(proj, name).grad
        assert grad is not None and torch.isfinite(grad).all(), name
        assert grad[visible].abs().sum() > 0, f"{name}: no gradient reached the projected rows"
        assert grad[~visible].abs().sum() == 0, f"{name}: culled rows got a gradient"
    assert out.means2d is proj.means2d   # densification reads the statistic here
    for name, t in zip(("means", "scales", "rotations", "opacities", "shs"), tensors):
        assert t.grad is not None and t.grad[visible].abs().sum() > 0, f"{name}: no gradient through stage 1"


def test_visible_rows_split_and_reassembled_render_the_same():
    tensors, settings = leaves(seed=3, n=400)
    g = torch.randn(3, 30, 40, generator=torch.Generator().manual_seed(4))
    proj = project_gaussians(*tensors, settings=settings)
    whole = rasterize_projected(proj, settings=settings)
    idx = torch.nonzero(proj.radii > 0).squeeze(1)
    parts = [proj.select(idx[a:b]) for a, b in ((0, 100), (100, 250), (250, None))]
    again = rasterize_projected(ProjectedGaussians.cat(parts), settings=settings)
    torch.testing.assert_close(again.image, whole.image, **SUBSET)
    for a, b in zip(grads_of(tensors, again, g), grads_of(tensors, whole, g)):
        torch.testing.assert_close(a, b, **SUBSET)


def test_bad_stage_inputs_name_the_argument():
    tensors, settings = leaves(n=20)
    proj = project_gaussians(*tensors, settings=settings)
    with pytest.raises(ValueError, match="conics must have shape"):
        rasterize_projected(proj._replace(conics=proj.conics[:5]), settings=settings)
    with pytest.raises(ValueError, match="backend must be one of"):
        project_gaussians(*tensors, settings=settings, backend="metal")
    with pytest.raises(ValueError, match="atomics"):
        rasterize_projected(proj, settings=settings, atomics="nope")


def test_backends_register_both_stages():
    assert {"reference", "cuda"} <= set(STAGE_BACKENDS)
    for backend in STAGE_BACKENDS.values():
        assert callable(backend.project) and callable(backend.rasterize)


def test_cuda_stages_compose_and_match_the_reference(fake_ext):  # noqa: F811
    tensors, settings = leaves(seed=5, n=250, sh_degree=2)
    g = torch.randn(3, 30, 40, generator=torch.Generator().manual_seed(6))
    proj = autograd.project_gaussians_cuda(*tensors[:4], tensors[4], None, settings)
    assert proj.radii.dtype == torch.int32 and proj.tiles_touched.dtype == torch.int32
    ref = project_gaussians(*tensors, settings=settings, backend="reference")
    assert torch.equal(proj.radii, ref.radii) and torch.equal(proj.tiles_touched, ref.tiles_touched)
    image, final_T, _, depth = autograd.rasterize_projected_cuda(proj, settings, "distwar", 8)
    whole = autograd._rasterize(*tensors[:4], tensors[4], None, settings, "distwar", 8)
    torch.testing.assert_close(image, whole.image, **EXACT)
    torch.testing.assert_close(depth, whole.depth, **EXACT)
    assert not depth.requires_grad
    oracle = rasterize_gaussians_reference(*tensors, settings=settings)
    got = torch.autograd.grad((image * g).sum(), tensors)
    want = torch.autograd.grad((oracle.image * g).sum(), tensors)
    for name, a, b in zip(("means", "scales", "rotations", "opacities", "shs"), got, want):
        assert_close_grad(name, a, b)
    # rows exchanged between the stages (visible subset): the CUDA render of the subset is the same image
    sub = proj.select(proj.radii > 0)
    image_sub, _, _, depth_sub = autograd.rasterize_projected_cuda(sub, settings, "distwar", 8)
    torch.testing.assert_close(image_sub, image, **SUBSET)
    torch.testing.assert_close(depth_sub, depth, **SUBSET)
    assert {"preprocess_forward", "bin_gaussians", "render_forward", "render_backward",
            "preprocess_backward"} <= set(fake_ext.calls)
