"""The C++ CPU backend (rasterize_gaussians(..., backend="cpu")) against the reference, its stages, its
determinism, the "auto" choice, and bad input.

The backend is built on first use with the system's C++ compiler (torch.utils.cpp_extension); CI has g++, so
these tests always run.
"""

from __future__ import annotations

import logging

import pytest
import torch

import cuda_rasterizer.api as api
from cuda_rasterizer import RasterSettings, rasterize_gaussians
from cuda_rasterizer._cpu_backend import load_cpu_extension
from cuda_rasterizer.cpu_autograd import CpuCamera, preprocess_cpu, render_cpu
from cuda_rasterizer.reference import random_scene

#: Images and final transmittance (the issue's target): float32 compositing in the kernels' order against
#: the reference's cumprod/matmul; observed <= 3e-7.
IMAGE_ATOL = 1e-5
#: Expected depth sum alpha T z (no gradient), relative to the largest depth of the image: the same float32
#: compositing as the colour, with the scene's z (~1-6 here) in place of colours <= ~1; observed <= 1.2e-6
#: absolute (~2.5e-7 relative).
DEPTH_RTOL = 1e-5
#: Relative L2 error of each gradient tensor (the issue's target); observed <= 1e-6 on these scenes.
GRAD_REL_L2 = 1e-4
#: 60 iterations of data/tabletop at quarter resolution through gs-train: clearly above the initial point cloud.
MIN_SMOKE_PSNR_DB = 17.0


@pytest.fixture(scope="module", autouse=True)
def ext():
    return load_cpu_extension()


def _leaves(tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def _run(backend, means, scales, rots, ops, shs=None, colors=None, *, settings, g_image, g_T=None, g_depth=None):
    """Render, backpropagate a random cotangent; return (outputs, input grads, dL/dmeans2d)."""
    leaves = _leaves([means, scales, rots, ops] + [shs if shs is not None else colors])
    kw = {"shs": leaves[4]} if shs is not None else {"colors_precomp": leaves[4]}
    out = rasterize_gaussians(*leaves[:4], settings=settings, backend=backend, **kw)
    out.means2d.retain_grad()
    loss = (out.image * g_image).sum()
    if g_T is not None:
        loss = loss + (out.final_T * g_T).sum()
    if g_depth is not None:
        loss = loss + (out.depths * g_depth).sum()
    loss.backward()
    return out, [t.grad for t in leaves], out.means2d.grad


def _compare(scene, *, colors=False, with_T=True, seed=0):
    means, scales, rots, ops, shs, settings = scene
    gen = torch.Generator().manual_seed(seed)
    h, w = settings.image_height, settings.image_width
    g_image = torch.randn(3, h, w, generator=gen)
    g_T = torch.randn(h, w, generator=gen) if with_T else None
    g_depth = torch.randn(means.shape[0], generator=gen)
    extra = dict(colors=torch.rand(means.shape[0], 3, generator=gen, dtype=means.dtype)) if colors else dict(shs=shs)
    ref = _run("reference", means, scales, rots, ops, settings=settings, g_image=g_image, g_T=g_T, g_depth=g_depth,
               **extra)
    cpu = _run("cpu", means, scales, rots, ops, settings=settings, g_image=g_image, g_T=g_T, g_depth=g_depth, **extra)
    (ro, rg, rm), (co, cg, cm) = ref, cpu
    assert torch.equal(ro.radii, co.radii)
    assert torch.equal(ro.n_contrib, co.n_contrib)
    assert (ro.image - co.image).abs().max() <= IMAGE_ATOL
    assert (ro.final_T - co.final_T).abs().max() <= IMAGE_ATOL
    assert torch.allclose(ro.depths, co.depths.to(ro.depths.dtype), atol=1e-6, rtol=1e-6)
    assert_depth_close(co, ro)
    for name, a, b in zip(("means", "scales", "rotations", "opacities", "colors" if colors else "shs", "means2d"),
                          rg + [rm], cg + [cm]):
        assert b is not None and b.shape == a.shape, name
        assert name == "means2d" or b.dtype == a.dtype, name   # means2d is a float32 output of the backend
        err = ((a - b.to(a.dtype)).norm() / a.norm().clamp_min(1e-12)).item()
        assert err <= GRAD_REL_L2, f"{name}: relative L2 error {err:.2e}"
    return ro, co


def assert_depth_close(out, ref):
    """out.depth (a backend's, from its forward pass) against the reference's, with no gradient."""
    assert out.depth is not None and out.depth.shape == ref.depth.shape
    assert not out.depth.requires_grad
    scale = max(float(ref.depth.abs().max()), 1.0)
    err = float((out.depth.to(ref.depth.dtype) - ref.depth).abs().max())
    assert err <= DEPTH_RTOL * scale, f"depth: max error {err:.2e} for depths up to {scale:.2f}"


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_matches_reference_every_sh_degree(sh_degree):
    # 77x53: partial tiles on the right and bottom edges
    _compare(random_scene(400, 77, 53, seed=sh_degree, sh_degree=sh_degree))


def test_matches_reference_precomputed_colours():
    _compare(random_scene(300, 64, 40, seed=5), colors=True, with_T=False)


def test_culled_and_off_screen_gaussians():
    means, scales, rots, ops, shs, settings = random_scene(300, 70, 50, seed=7, sh_degree=2)
    means = means.clone()
    means[:40, 2] = 0.1                 # inside the near plane
    means[40:80, 2] = -3.0              # behind the camera
    means[80:120, 0] += 50.0            # far off to the side
    ro, co = _compare((means, scales, rots, ops, shs, settings))
    assert int((co.radii[:120] > 0).sum()) == 0 and int((co.radii > 0).sum()) > 100


def test_saturated_alpha_and_early_stop():
    # large, nearly opaque Gaussians: alpha hits the 0.99 clamp and pixels stop at T < 1e-4
    means, scales, rots, ops, shs, settings = random_scene(250, 48, 48, seed=11, sh_degree=1,
                                                           scale_range=(-2.0, -0.5))
    ops = torch.full_like(ops, 0.995)
    ro, co = _compare((means, scales, rots, ops, shs, settings))
    assert float(co.final_T.detach().min()) < 1e-3          # early stop happened
    lens = ro.n_contrib.float()
    assert float(lens.max()) < 250                 # and cut lists short


def test_float64_inputs_give_float64_gradients():
    # computed in float32 (math.cuh is float code); autograd casts the gradients back to the inputs' dtype
    _compare(random_scene(200, 40, 33, seed=3, sh_degree=3, dtype=torch.float64))


def test_no_gaussian_visible_and_zero_gaussians():
    means, scales, rots, ops, shs, settings = random_scene(20, 33, 17, seed=1)
    for n in (0, 20):
        m = means[:n].clone()
        m[:, 2] = -1.0  # all behind the camera
        out, grads, _ = _run("cpu", m, scales[:n], rots[:n], ops[:n], shs[:n], settings=settings,
                             g_image=torch.ones(3, 17, 33))
        assert torch.allclose(out.image, settings.bg.reshape(3, 1, 1).expand(3, 17, 33))
        assert torch.all(out.final_T == 1) and torch.all(out.n_contrib == 0)
        assert torch.all(out.depth == 0)
        for g in grads:
            assert g is None or (g.shape[0] == n and torch.all(g == 0))


def test_stages_compose_to_the_full_render():
    means, scales, rots, ops, shs, settings = random_scene(200, 50, 40, seed=2, sh_degree=1)
    full = rasterize_gaussians(means, scales, rots, ops, shs=shs, settings=settings, backend="cpu")
    pre = preprocess_cpu(means, scales, rots, shs, settings)
    image, final_T, n_contrib, depth = render_cpu(pre.means2d, pre.conics, pre.colors, ops, pre.depths, pre.radii,
                                                  pre.tiles, settings)
    assert torch.equal(image, full.image) and torch.equal(final_T, full.final_T)
    assert torch.equal(n_contrib, full.n_contrib) and torch.equal(pre.radii, full.radii)
    assert torch.equal(depth, full.depth)


def _grads_at(threads, scene):
    means, scales, rots, ops, shs, settings = scene
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out, grads, g2d = _run("cpu", means, scales, rots, ops, shs, settings=settings,
                               g_image=torch.linspace(-1, 1, 3 * 70 * 90).reshape(3, 70, 90))
    finally:
        torch.set_num_threads(before)
    return [out.image, out.final_T, out.depth] + grads + [g2d]


def test_deterministic_for_a_thread_count_and_across_thread_counts():
    scene = random_scene(3000, 90, 70, seed=4, sh_degree=3)
    a, b = _grads_at(2, scene), _grads_at(2, scene)
    c = _grads_at(1, scene)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y)      # fixed thread count: bitwise
        assert torch.equal(x, z)      # and across thread counts (fixed summation order)


_ISA_SCRIPT = """
import hashlib, sys, torch
from cuda_rasterizer import rasterize_gaussians
from cuda_rasterizer._cpu_backend import load_cpu_extension
from cuda_rasterizer.reference import random_scene
torch.set_num_threads(1)
means, scales, rots, ops, shs, settings = random_scene(2000, 75, 61, seed=9, sh_degree=2)
leaves = [t.detach().clone().requires_grad_(True) for t in (means, scales, rots, ops, shs)]
out = rasterize_gaussians(*leaves[:4], shs=leaves[4], settings=settings, backend="cpu")
(out.image * torch.linspace(-1, 1, out.image.numel()).reshape(out.image.shape)).sum().backward()
h = hashlib.sha256()
for t in [out.image, out.final_T, out.depth] + [x.grad for x in leaves]:
    h.update(t.detach().contiguous().numpy().tobytes())
print(load_cpu_extension().isa(), h.hexdigest())
"""


def test_every_instruction_set_gives_the_same_bits():
    """The tile loops' AVX-512 / AVX2 / baseline builds (GSR_CPU_ISA picks a lower one): bitwise the same."""
    import os
    import subprocess
    import sys
    results = {}
    for isa in ("", "avx2", "baseline"):
        env = dict(os.environ, GSR_CPU_ISA=isa)
        run = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        name, digest = run.stdout.split()
        results[name] = digest
    assert "baseline" in results                 # the forced lowest one ran
    assert len(set(results.values())) == 1, results


# --- "auto" ------------------------------------------------------------------------------------------

def test_auto_picks_the_cpu_backend_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(api, "_cpu_choice_logged", False)
    means, scales, rots, ops, shs, settings = random_scene(50, 32, 32, seed=1)
    with caplog.at_level(logging.INFO, logger="cuda_rasterizer.api"):
        a = rasterize_gaussians(means, scales, rots, ops, shs=shs, settings=settings)
        rasterize_gaussians(means, scales, rots, ops, shs=shs, settings=settings)
    b = rasterize_gaussians(means, scales, rots, ops, shs=shs, settings=settings, backend="cpu")
    assert torch.equal(a.image, b.image)
    lines = [r.getMessage() for r in caplog.records if "backend for CPU tensors" in r.getMessage()]
    assert len(lines) == 1 and ": cpu" in lines[0]


def test_auto_falls_back_to_the_reference_with_the_reason(monkeypatch, caplog):
    import cuda_rasterizer._cpu_backend as cb
    monkeypatch.setattr(api, "_cpu_choice_logged", False)
    monkeypatch.setattr(cb, "cpu_extension_status", lambda: "no C++ compiler: 'c++' is not on PATH")
    means, scales, rots, ops, shs, settings = random_scene(30, 20, 20, seed=1)
    with caplog.at_level(logging.INFO, logger="cuda_rasterizer.api"):
        a = rasterize_gaussians(means, scales, rots, ops, shs=shs, settings=settings)
        rasterize_gaussians(means, scales, rots, ops, shs=shs, settings=settings)
    ref = rasterize_gaussians(means, scales, rots, ops, shs=shs, settings=settings, backend="reference")
    assert torch.equal(a.image, ref.image)
    lines = [r.getMessage() for r in caplog.records if "backend for CPU tensors" in r.getMessage()]
    assert len(lines) == 1 and "reference" in lines[0] and "not on PATH" in lines[0]


def test_build_failure_quotes_the_compiler(monkeypatch, tmp_path):
    import cuda_rasterizer._cpu_backend as cb
    bad = tmp_path / "broken.cpp"
    bad.write_text("int main( { this is not C++ }\n")
    monkeypatch.setattr(cb, "SOURCES", (bad,))
    monkeypatch.setattr(cb, "DEPENDS", (bad,))
    monkeypatch.setenv("CUDA_RASTERIZER_BUILD_DIR", str(tmp_path / "build"))
    with pytest.raises(cb.CpuBackendUnavailable, match="(?s)building the CPU rasterizer failed.*error"):
        cb._build(verbose=False)


def test_no_compiler_is_reported(monkeypatch):
    import cuda_rasterizer._cpu_backend as cb
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(cb.CpuBackendUnavailable, match="no C\\+\\+ compiler"):
        cb._build(verbose=False)


# --- bad input -----------------------------------------------------------------------------------------

def _scene():
    return random_scene(40, 32, 24, seed=9, sh_degree=1)


@pytest.mark.parametrize("name", ["means", "scales", "rotations", "opacities", "shs"])
def test_nan_input_is_a_value_error_naming_the_tensor(name):
    means, scales, rots, ops, shs, settings = _scene()
    tensors = dict(means=means, scales=scales, rotations=rots, opacities=ops, shs=shs)
    bad = tensors[name].clone()
    bad.view(-1)[3] = float("nan")
    tensors[name] = bad
    with pytest.raises(ValueError, match=name):
        rasterize_gaussians(tensors["means"], tensors["scales"], tensors["rotations"], tensors["opacities"],
                            shs=tensors["shs"], settings=settings, backend="cpu")


def test_nan_colours_and_camera_are_value_errors():
    means, scales, rots, ops, shs, settings = _scene()
    colors = torch.rand(40, 3)
    colors[5, 1] = float("nan")
    with pytest.raises(ValueError, match="colors"):
        rasterize_gaussians(means, scales, rots, ops, colors_precomp=colors, settings=settings, backend="cpu")
    view = torch.eye(4)
    view[0, 3] = float("nan")
    bad = RasterSettings(24, 32, 30.0, 30.0, 16.0, 12.0, view, torch.zeros(3))
    with pytest.raises(ValueError, match="viewmatrix"):
        rasterize_gaussians(means, scales, rots, ops, shs=shs, settings=bad, backend="cpu")


def test_wrong_dtype_is_a_value_error_naming_the_tensor():
    means, scales, rots, ops, shs, settings = _scene()
    with pytest.raises(ValueError, match="scales"):
        rasterize_gaussians(means, scales.to(torch.int32), rots, ops, shs=shs, settings=settings, backend="cpu")
    with pytest.raises(ValueError, match="means"):
        rasterize_gaussians(means.cuda() if torch.cuda.is_available() else means.to(torch.int64), scales, rots,
                            ops, shs=shs, settings=settings, backend="cpu")


def test_wrong_shape_is_a_value_error_naming_the_tensor():
    means, scales, rots, ops, shs, settings = _scene()
    with pytest.raises(ValueError, match="rotations"):
        rasterize_gaussians(means, scales, rots[:, :3], ops, shs=shs, settings=settings, backend="cpu")


def test_non_contiguous_inputs_render_like_contiguous_ones():
    means, scales, rots, ops, shs, settings = _scene()
    nc_means = means.t().contiguous().t()
    assert not nc_means.is_contiguous()
    a = rasterize_gaussians(nc_means, scales, rots, ops, shs=shs, settings=settings, backend="cpu")
    b = rasterize_gaussians(means.contiguous(), scales, rots, ops, shs=shs, settings=settings, backend="cpu")
    assert torch.equal(a.image, b.image)


def test_extension_refuses_non_contiguous_and_wrong_dtype_with_value_errors(ext):
    means, scales, rots, ops, shs, settings = _scene()
    cam = CpuCamera(settings)
    nc = means.t().contiguous().t()
    with pytest.raises(ValueError, match="means must be contiguous"):
        ext.preprocess_forward(nc, scales, rots, shs, *cam.args())
    with pytest.raises(ValueError, match="scales must be Float"):
        ext.preprocess_forward(means, scales.double(), rots, shs, *cam.args())
    with pytest.raises(ValueError, match="rotations must have shape"):
        ext.preprocess_forward(means, scales, rots[:5], shs, *cam.args())
    pre = ext.preprocess_forward(means, scales, rots, shs, *cam.args())
    pl, ranges, offsets, pair_pos = ext.bin_gaussians(pre[0], pre[3], pre[4], pre[5], *cam.args())
    bad_ids = pl.clone()
    if bad_ids.numel():
        bad_ids[0] = 10_000
        with pytest.raises(ValueError, match="point_list"):
            ext.render_forward(pre[0], pre[1], pre[2], ops.reshape(-1), pre[3], bad_ids, ranges, *cam.args())


def test_zero_pixel_image_is_a_value_error(ext):
    with pytest.raises(ValueError, match="image size"):
        RasterSettings(0, 32, 30.0, 30.0, 16.0, 0.0, torch.eye(4), torch.zeros(3))
    means, scales, rots, ops, shs, settings = _scene()
    cam = CpuCamera(settings)
    with pytest.raises(ValueError, match="image size"):
        ext.preprocess_forward(means, scales, rots, shs, cam.view, cam.campos, cam.bg, cam.floats, [0, 24, 1])


# --- training through the CLI on the CPU backend ------------------------------------------------------

def test_training_smoke_through_the_cli_on_the_cpu_backend(tmp_path, caplog):
    from pathlib import Path
    import json

    from gs_trainer.evaluate import main as metrics_main
    from gs_trainer.render import main as render_main
    from gs_trainer.train import main as train_main
    scene = Path(__file__).resolve().parents[1] / "data" / "tabletop"
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        assert train_main(["-s", str(scene), "-m", str(run), "--eval", "-r", "4", "--iterations", "60",
                           "--densify_from_iter", "20", "--densification_interval", "20", "--densify_until_iter", "50",
                           "--test_iterations", "--save_iterations", "--cpu_threads", "2", "--backend", "cpu",
                           "--quiet"]) == 0
        assert "backend: cpu" in (run / "config.yaml").read_text()
        assert render_main(["-m", str(run), "--split", "test", "--backend", "cpu", "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert metrics_main(["-m", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    # measured 20.2 dB; the SfM initialisation renders the test views at about 15.8 dB
    assert results["ours_60"]["PSNR"] > MIN_SMOKE_PSNR_DB
