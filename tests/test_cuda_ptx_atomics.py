"""The backward kernel's atomics as the installed nvcc compiles them (PTX for sm_90, the project's flags).

CUDA 13.0's nvcc once turned tile's three global dL/dcolour atomics into shared-memory atomics on the
address of the global ``grad_colors`` buffer (``cvta.to.shared`` applied to the kernel parameter, then
``atom.shared.add.f32``): on a GPU that faults or corrupts the colour gradients.  The trigger was the tile
accumulator, holding global and shared pointers, returned by value from a helper; the kernel now builds it
in place and keeps shared pointers out of it (csrc/render_backward_kernel.cuh, csrc/atomics.cuh).  This test
fails if such a conversion comes back, under whichever nvcc is installed: one ``nvcc -ptx`` call, then per
policy the number of global and shared f32 atomics, and no kernel parameter (every gradient sink is one)
converted to a shared address.  No GPU needed; skipped with its reason where no CUDA toolkit is found.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from cuda_rasterizer import _backend
from cuda_rasterizer._backend import CudaBackendUnavailable, find_cuda_home

POLICIES = ("baseline", "warp", "distwar", "tile", "floor")
#: f32 add atomics in the PTX of each render_backward_kernel<policy> (what the source issues):
#: baseline and distwar's own path global_add9 (9), the reducing policies one per lane 0..8 (1), tile's
#: chunk flush one per (Gaussian, value) (1); no policy uses shared-memory float atomics (tile's shared
#: accumulation is plain stores to per-warp slots).
EXPECTED = {"baseline": (9, 0), "warp": (1, 0), "distwar": (10, 0), "tile": (10, 0), "floor": (0, 0)}

_GLOBAL_F32 = re.compile(r"^\s*(?:@%p\d+\s+)?(?:atom|red)\.global(?:\.\w+)*\.add(?:\.\w+)*\.f32\b", re.M)
_SHARED_F32 = re.compile(r"^\s*(?:@%p\d+\s+)?(?:atom|red)\.shared(?:::\w+)?(?:\.\w+)*\.add(?:\.\w+)*\.f32\b", re.M)
_GENERIC_F32 = re.compile(r"^\s*(?:@%p\d+\s+)?(?:atom|red)(?:\.(?:relaxed|acq_rel|gpu|sys|cta))*\.add(?:\.\w+)*\.f32\b",
                          re.M)


@pytest.fixture(scope="module")
def ptx(tmp_path_factory) -> str:
    try:
        cuda_home = find_cuda_home()
    except CudaBackendUnavailable as err:
        pytest.skip(f"no CUDA toolkit (nvcc) on this machine: {err}")
    out = tmp_path_factory.mktemp("ptx") / "render_backward_sm90.ptx"
    csrc = _backend.CSRC
    cmd = [str(Path(cuda_home) / "bin" / "nvcc"), "-ptx", *_backend.NVCC_FLAGS, "-arch=sm_90", f"-I{csrc}",
           str(csrc / "render_backward.cu"), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"nvcc -ptx failed:\n{res.stderr[-3000:]}"
    return out.read_text()


def kernels(ptx: str) -> dict:
    """{policy: PTX text of render_backward_kernel<policy>}."""
    out = {}
    for m in re.finditer(r"\.entry\s+(\w+)\s*\((.*?)^\}", ptx, re.S | re.M):
        k = re.search(r"render_backward_kernelILi(\d)E", m.group(1))
        if k:
            out[POLICIES[int(k.group(1))]] = m.group(0)
    return out


def params_to_shared(body: str) -> list:
    """``cvta.to.shared`` instructions whose operand is derived from a kernel parameter.

    A register is tainted when an ``ld.param`` defines it, or a ``mov``/``add``/``cvta``/``mad``/``mul``
    of a tainted register does; kernel parameters are never shared addresses, so converting one to a shared
    address is the miscompile.
    """
    tainted, found = set(), []
    for line in body.splitlines():
        ins = line.strip().rstrip(";")
        m = re.match(r"(?:@!?%p\d+\s+)?([a-z][\w.:]*)\s+(%\w+)\s*,\s*(.*)$", ins)
        if not m:
            continue
        op, dst, rest = m.groups()
        srcs = set(re.findall(r"%\w+", rest))
        if op.startswith("cvta.to.shared") and srcs & tainted:
            found.append(ins)
        if op.startswith("ld.param"):
            tainted.add(dst)
        elif re.match(r"(mov|add|sub|cvta|mad|mul|cvt)\b", op) and srcs & tainted:
            tainted.add(dst)
    return found


def test_every_policy_is_compiled(ptx):
    assert set(kernels(ptx)) == set(POLICIES)


@pytest.mark.parametrize("policy", POLICIES)
def test_f32_atomics_per_policy(ptx, policy):
    body = kernels(ptx)[policy]
    glob, shared = len(_GLOBAL_F32.findall(body)), len(_SHARED_F32.findall(body))
    generic = len(_GENERIC_F32.findall(body))
    assert (glob, shared) == EXPECTED[policy], (
        f"{policy}: {glob} global and {shared} shared f32 atomics in the PTX, expected {EXPECTED[policy]}")
    assert generic == 0, f"{policy}: {generic} generic-address f32 atomics (the sinks are global)"


@pytest.mark.parametrize("policy", POLICIES)
def test_no_gradient_sink_becomes_a_shared_address(ptx, policy):
    body = kernels(ptx)[policy]
    bad = params_to_shared(body)
    assert not bad, f"{policy}: kernel parameter converted to a shared address: {bad}"
    assert "cvta.to.shared" not in body, f"{policy}: cvta.to.shared in the kernel (shared arrays are named directly)"


def test_the_check_sees_the_miscompile():
    """The taint check on the PTX that CUDA 13.0 produced for the old tile kernel (abridged)."""
    old = """
	mov.b64 	%rd1, _ZN3gsr22render_backward_kernelILi3EEEvNS_6CameraENS_12RenderParamsEi_param_1;
	ld.param.u64 	%rd7, [%rd1+72];
	{ .reg .b64 %tmp;
	  cvta.to.shared.u64 	%tmp, %rd7;
	  cvt.u32.u64 	%r273, %tmp; }
	atom.shared.add.f32 	%f343, [%r275], %f342;
"""
    assert params_to_shared(old) == ["cvta.to.shared.u64 \t%tmp, %rd7"]
    assert len(_SHARED_F32.findall(old)) == 1
