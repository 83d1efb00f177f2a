"""math.cuh's per-pixel steps instantiated with the CPU's 8-pixel lane type against the float ones, in C++.

The CPU backend runs the CUDA kernels' own per-pixel code (gaussian_power, gaussian_alpha_of_power,
pixel_forward_step, render_backward_step), instantiated with csrc/cpu/cpu_lanes.h's vector type.
tests/cpp/cpu_lanes_check.cpp checks exp_lanes within 2 ulp of expf, alpha within 2 ulp, and every other
lane result bitwise equal to the float instantiation's (the kernels'), on random inputs.  Compiled for the
baseline target and, where the CPU has them, for AVX2 and AVX-512VL too: the builds must print the same
checksums (the tile loops' builds for each instruction set give the same bits).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "tests" / "cpp" / "cpu_lanes_check.cpp"
CSRC = ROOT / "cuda_rasterizer" / "csrc"
FLAGS = ["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-Wno-psabi"]


def _cpu_has(*flags: str) -> bool:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return platform.machine() in ("x86_64", "AMD64") and all(f" {f}" in info for f in flags)


AVX512 = ("avx512f", "avx512vl", "avx512dq", "avx512bw")


def _run(tmp_path: Path, extra: list) -> str:
    exe = tmp_path / ("check" + "".join(extra).replace("-", "_"))
    build = subprocess.run([shutil.which("c++") or "c++", *FLAGS, *extra, f"-I{CSRC}", str(SRC), "-o", str(exe)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout.strip()


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler (c++) on PATH")
def test_lane_forms_match_the_scalar_math_bitwise(tmp_path):
    base = _run(tmp_path, [])
    assert "fails 0" in base
    if _cpu_has("avx2"):
        assert _run(tmp_path, ["-mavx2"]) == base
    if _cpu_has(*AVX512):   # the tile loops' AVX-512VL build (cpu_rasterizer.h)
        assert _run(tmp_path, [f"-m{f}" for f in AVX512]) == base
