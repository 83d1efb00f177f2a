"""The fused C++ SSIM of the CPU extension (csrc/cpu/cpu_ssim.h) against the torch SSIM of gs_trainer/losses.py:
value, dL/dimage, edge sizes, determinism across thread counts, and when losses.ssim takes it or falls back.

The extension is built on first use with the system's C++ compiler; CI has g++, so these tests always run.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import cuda_rasterizer._cpu_backend as cpu_backend
from cuda_rasterizer._cpu_backend import CpuBackendUnavailable, load_cpu_extension
from gs_trainer import losses
from gs_trainer.losses import gaussian_splatting_loss, l1_loss, ssim, ssim_map

#: Mean SSIM, C++ against torch, both float32: the same sums in another order (separable passes in the same
#: order, the mean in float64 here); observed <= 2e-7 relative.
VALUE_RTOL = 1e-5
#: dL/dimage against torch autograd of ssim_map (both float32), elementwise, relative to the largest entry of
#: the reference: analytic derivatives against autograd's chain of ~30 ops; both are ~5e-7 off float64.
GRAD_RTOL = 1e-5
#: Identical images: SSIM is 1 and dSSIM/dimage vanishes analytically; float32 leaves rounding residue only.
IDENTICAL_GRAD_ATOL = 1e-6

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "cuda_rasterizer" / "csrc"
#: The extension's flags (cuda_rasterizer/_cpu_backend.py CFLAGS).
CXX_FLAGS = ["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-Wno-psabi"]

SHAPES = [(1, 1, 1), (3, 1, 1), (1, 5, 7), (3, 5, 7), (3, 12, 11), (1, 12, 11), (3, 9, 13), (1, 31, 17),
          (3, 40, 57), (3, 149, 199)]


@pytest.fixture(scope="module")
def ext():
    return load_cpu_extension()


def _pair(shape, seed, noise=0.2):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(*shape, generator=g)
    b = (a + noise * torch.randn(*shape, generator=g)).clamp(0, 1)
    return a, b


def _torch_ssim_and_grad(a, b, upstream=1.0):
    x = a.detach().clone().requires_grad_(True)
    s = ssim_map(x, b).mean()
    (upstream * s).backward()
    return s.detach(), x.grad


def _fused_ssim_and_grad(a, b, upstream=1.0):
    x = a.detach().clone().requires_grad_(True)
    s = ssim(x, b)
    (upstream * s).backward()
    return s.detach(), x.grad


def _assert_grad_close(got, want):
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=GRAD_RTOL, atol=GRAD_RTOL * max(scale, 1e-12))


@pytest.mark.parametrize("shape", SHAPES)
def test_value_and_gradient_match_torch(ext, shape):
    a, b = _pair(shape, seed=sum(shape))
    mean, maps = ext.ssim_forward(a, b, True)
    s_ref, g_ref = _torch_ssim_and_grad(a, b)
    assert mean.dtype == torch.float32 and mean.dim() == 0 and maps.shape == (3,) + shape
    assert abs(float(mean) - float(s_ref)) <= VALUE_RTOL * abs(float(s_ref))
    g = ext.ssim_backward(a, b, maps, torch.tensor(1.0))
    _assert_grad_close(g, g_ref)
    # Through losses.ssim (the autograd.Function), with a non-unit upstream gradient.
    s, g2 = _fused_ssim_and_grad(a, b, upstream=-0.37)
    _, g2_ref = _torch_ssim_and_grad(a, b, upstream=-0.37)
    assert float(s) == float(mean)
    _assert_grad_close(g2, g2_ref)


def test_gradient_against_float64(ext):
    """Both float32 paths against float64 autograd: the C++ one is no further off than torch's own."""
    a, b = _pair((3, 23, 37), seed=7)
    _, g64 = _torch_ssim_and_grad(a.double(), b.double())
    _, g32 = _torch_ssim_and_grad(a, b)
    _, gcpp = _fused_ssim_and_grad(a, b)
    err = lambda g: float((g.double() - g64).abs().max() / g64.abs().max())  # noqa: E731
    assert err(gcpp) <= max(2 * err(g32), 1e-6)


def test_no_grad_forward_gives_the_same_value(ext):
    a, b = _pair((3, 17, 29), seed=3)
    with_maps, _ = ext.ssim_forward(a, b, True)
    without, maps = ext.ssim_forward(a, b, False)
    assert maps.numel() == 0 and float(with_maps) == float(without)
    with torch.no_grad():
        assert float(ssim(a, b)) == float(without)


def test_identical_images_give_one(ext):
    a, _ = _pair((3, 20, 33), seed=11)
    s, g = _fused_ssim_and_grad(a, a.clone())
    assert abs(float(s) - 1.0) <= 1e-6
    assert float(g.abs().max()) <= IDENTICAL_GRAD_ATOL


@pytest.mark.parametrize("shape", [(3, 149, 199), (1, 97, 13), (3, 33, 8)])
def test_bitwise_the_same_for_any_thread_count(ext, shape):
    """One thread walks each channel in one band; more threads split it into bands of >= 32 rows."""
    a, b = _pair(shape, seed=5)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert ext.num_threads() == threads
            results.append(_fused_ssim_and_grad(a, b, upstream=0.2))
    finally:
        torch.set_num_threads(before)
    (s1, g1), (s2, g2) = results
    assert torch.equal(s1, s2) and torch.equal(g1, g2)


def test_batched_one_and_non_contiguous_inputs(ext):
    a, b = _pair((3, 14, 18), seed=9)
    s_ref, g_ref = _fused_ssim_and_grad(a, b)
    x = a.clone()[None].requires_grad_(True)
    s = ssim(x, b[None])
    s.backward()
    assert torch.equal(s.detach(), s_ref) and torch.equal(x.grad[0], g_ref)
    xt = a.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True)   # same values, not contiguous
    assert not xt.is_contiguous()
    s = ssim(xt, b)
    s.backward()
    assert torch.equal(s.detach(), s_ref) and torch.equal(xt.grad, g_ref)


def _count_fused(monkeypatch):
    calls = []
    orig = losses._CpuSsim.apply
    monkeypatch.setattr(losses._CpuSsim, "apply", staticmethod(lambda *args: (calls.append(1), orig(*args))[1]))
    return calls


def test_gaussian_splatting_loss_uses_it_on_cpu_float32(ext, monkeypatch):
    calls = _count_fused(monkeypatch)
    a, b = _pair((3, 21, 26), seed=13)
    x = a.clone().requires_grad_(True)
    loss, l1 = gaussian_splatting_loss(x, b, 0.2)
    loss.backward()
    assert len(calls) == 1
    xr = a.clone().requires_grad_(True)
    ref = 0.8 * l1_loss(xr, b) + 0.2 * (1.0 - ssim_map(xr, b).mean())
    ref.backward()
    assert abs(float(loss.detach()) - float(ref.detach())) <= VALUE_RTOL * float(ref.detach())
    _assert_grad_close(x.grad, xr.grad)


@pytest.mark.parametrize("case", ["float64", "batched", "window", "gt_requires_grad", "fused_off"])
def test_other_inputs_keep_the_torch_path(ext, monkeypatch, case):
    calls = _count_fused(monkeypatch)
    a, b = _pair((2, 3, 12, 13) if case == "batched" else (3, 12, 13), seed=17)
    kwargs = {}
    if case == "float64":
        a, b = a.double(), b.double()
    if case == "window":
        kwargs["window_size"] = 7
    if case == "fused_off":
        kwargs["fused"] = False
    if case == "gt_requires_grad":
        b.requires_grad_(True)
    x = a.clone().requires_grad_(True)
    s = ssim(x, b, **kwargs)
    want = ssim_map(x, b, kwargs.get("window_size", losses.SSIM_WINDOW)).mean()
    assert not calls
    assert torch.equal(s, want)
    if case == "gt_requires_grad":
        s.backward()
        assert b.grad is not None and x.grad is not None


def test_an_empty_image_is_refused_as_before(ext, monkeypatch):
    calls = _count_fused(monkeypatch)
    a, b = _pair((3, 0, 13), seed=17)
    with pytest.raises(RuntimeError):
        ssim(a, b)
    assert not calls


def test_falls_back_silently_without_the_extension(monkeypatch):
    def unavailable():
        raise CpuBackendUnavailable("no C++ compiler: 'c++' is not on PATH")
    monkeypatch.setattr(cpu_backend, "load_cpu_extension", unavailable)
    calls = _count_fused(monkeypatch)
    a, b = _pair((3, 12, 13), seed=19)
    x = a.clone().requires_grad_(True)
    s = ssim(x, b)
    s.backward()
    s_ref, g_ref = _torch_ssim_and_grad(a, b)
    assert not calls and torch.equal(s.detach(), s_ref) and torch.equal(x.grad, g_ref)


def test_metrics_keep_the_torch_ssim(ext, monkeypatch):
    from gs_trainer.metrics import image_metrics
    calls = _count_fused(monkeypatch)
    a, b = _pair((3, 16, 20), seed=23)
    assert image_metrics(a, b)["SSIM"] == float(ssim_map(a, b).mean())
    assert not calls


@pytest.mark.parametrize("bad, message", [
    (lambda a, b: (a.double(), b.double()), "ssim: image must be Float"),
    (lambda a, b: (a, b[:, :-1].contiguous()), "ssim: gt must have shape"),
    (lambda a, b: (a[None], b[None]), "ssim: image must be [C, H, W]"),
    (lambda a, b: (a.transpose(1, 2), b.transpose(1, 2)), "ssim: image must be contiguous"),
    (lambda a, b: (a[:, :0], b[:, :0]), "ssim: image has no pixels"),
])
def test_bad_input_is_a_value_error_naming_the_tensor(ext, bad, message):
    a, b = _pair((3, 8, 9), seed=29)
    x, y = bad(a, b)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ext.ssim_forward(x, y, True)


def test_backward_checks_its_maps(ext):
    a, b = _pair((3, 8, 9), seed=31)
    _, maps = ext.ssim_forward(a, b, True)
    with pytest.raises(ValueError, match="ssim: ssim_grad must have shape"):
        ext.ssim_backward(a, b, maps[:2], torch.tensor(1.0))
    with pytest.raises(ValueError, match="grad_ssim must be a scalar"):
        ext.ssim_backward(a, b, maps, torch.ones(2))


def _checksum(tmp_path: Path, extra: list) -> str:
    exe = tmp_path / ("ssim_check" + "".join(extra).replace("-", "_").replace("=", "_"))
    src = ROOT / "tests" / "cpp" / "cpu_ssim_check.cpp"
    build = subprocess.run([shutil.which("c++") or "c++", *CXX_FLAGS, *extra, f"-I{CSRC}", f"-I{CSRC / 'cpu'}",
                            str(src), "-o", str(exe)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout.strip()


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler (c++) on PATH")
def test_every_instruction_set_build_agrees_bitwise(tmp_path):
    """The extension is built for the CPU's best instruction set (_cpu_backend.ISAS): without FMA contraction,
    the same bits from each."""
    from cuda_rasterizer._cpu_backend import ISAS, _cpu_flags
    have = _cpu_flags()
    base = _checksum(tmp_path, [])
    assert len(base) == 16
    for name, need, flags in ISAS:
        if flags and set(need) <= have:
            assert _checksum(tmp_path, list(flags)) == base, name