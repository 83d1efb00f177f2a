"""The CUDA extension compiles (nvcc for the kernels, g++ for the torch glue) and imports, GPU or not.

This runs on the CPU CI machine: a kernel that does not compile fails here even without a GPU.  The
default architectures (no GPU, no TORCH_CUDA_ARCH_LIST) are sm_80 and sm_90, plus compute_90 PTX.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from cuda_rasterizer import _backend
from cuda_rasterizer._backend import CudaBackendUnavailable, find_cuda_home, load_extension

EXPORTED = ("preprocess_forward", "bin_gaussians", "render_forward", "render_backward", "lane_histogram",
            "preprocess_backward")


def _toolkit_or_skip() -> str:
    try:
        return find_cuda_home()
    except CudaBackendUnavailable as err:
        pytest.skip(f"no CUDA toolkit on this machine: {err}")


@pytest.mark.slow
def test_extension_compiles_and_imports():
    cuda_home = _toolkit_or_skip()
    module = load_extension()
    for name in EXPORTED:
        assert hasattr(module, name), f"extension lacks {name}"
    assert module.ATOMICS_MODES == ("baseline", "warp", "distwar", "tile", "floor")
    # every requested architecture has its own machine code in the kernel library
    libs = list(Path(module.__file__).parent.parent.glob("kernels-*/libgsr_kernels.a"))
    cuobjdump = Path(cuda_home) / "bin" / "cuobjdump"
    if libs and cuobjdump.exists():
        lib = max(libs, key=lambda p: p.stat().st_mtime)
        listing = subprocess.run([str(cuobjdump), "--list-elf", str(lib)], capture_output=True, text=True).stdout
        for arch in _backend.cuda_archs():
            num = arch.replace("+PTX", "").replace(".", "")
            assert f"sm_{num}" in listing, f"no sm_{num} code in {lib}:\n{listing}"
        # and the highest one its PTX (forward compatibility with newer GPUs)
        ptx = subprocess.run([str(cuobjdump), "--list-ptx", str(lib)], capture_output=True, text=True).stdout
        for arch in _backend.ptx_archs(_backend.cuda_archs()):
            num = arch.replace("+PTX", "").replace(".", "")
            assert f"sm_{num}" in ptx or f"compute_{num}" in ptx, f"no PTX for {arch} in {lib}:\n{ptx}"


def test_find_cuda_home_follows_a_wrapper_script(tmp_path, monkeypatch):
    cuda_home = _toolkit_or_skip()
    wrapper_dir = tmp_path / "bin"
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {cuda_home}/bin/nvcc "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(wrapper_dir) + os.pathsep + "/usr/bin:/bin")
    assert Path(find_cuda_home()).resolve() == Path(cuda_home).resolve()


def test_missing_toolkit_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "no-cuda-here"))
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(_backend, "_is_toolkit", lambda root: False)
    with pytest.raises(CudaBackendUnavailable, match="CUDA toolkit not found.*CUDA_HOME"):
        find_cuda_home()


def test_arch_list_from_environment(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    assert _backend.cuda_archs() == ["8.0", "9.0+PTX"]
    assert _backend._gencode_flags(["9.0+PTX"]) == ["-gencode=arch=compute_90,code=sm_90",
                                                    "-gencode=arch=compute_90,code=compute_90"]
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "sm_90")
    with pytest.raises(CudaBackendUnavailable, match="TORCH_CUDA_ARCH_LIST"):
        _backend.cuda_archs()


def test_highest_arch_always_embeds_ptx():
    assert _backend._gencode_flags(["8.0", "9.0"]) == ["-gencode=arch=compute_80,code=sm_80",
                                                       "-gencode=arch=compute_90,code=sm_90",
                                                       "-gencode=arch=compute_90,code=compute_90"]
    # the highest by number, not by position; an explicit +PTX keeps its own PTX
    assert _backend.ptx_archs(["9.0", "8.6+PTX", "8.0"]) == ["9.0", "8.6+PTX"]
    for archs in (list(_backend.DEFAULT_ARCHS), ["9.0+PTX"]):
        flags = _backend._gencode_flags(archs)
        assert len(flags) == len(set(flags)), "a -gencode flag is repeated"


def test_arch_coverage_of_a_device():
    covers = _backend.arch_covers
    assert covers(["8.0", "9.0"], (8, 0)) and covers(["8.0", "9.0"], (8, 6))      # sm_80 binary: 8.x, x >= 0
    assert covers(["8.0", "9.0"], (9, 0)) and covers(["8.0", "9.0"], (12, 0))     # 12.0: compute_90 PTX
    assert not covers(["8.0", "9.0"], (7, 5))                                      # older than every target
    assert covers(["8.6"], (8, 9)) and not covers(["8.6"], (8, 0))
    assert not covers(["9.0a"], (10, 0)) and covers(["9.0a"], (9, 0))              # "a": exactly 9.0
    assert covers(["8.0+PTX", "9.0a"], (8, 9)) and covers(["8.0+PTX", "9.0a"], (10, 0))


def test_uncovered_gpu_gives_a_clear_error(monkeypatch):
    import torch
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(_backend, "_module", None)
    with pytest.raises(CudaBackendUnavailable, match=r"compute capability 7\.0.*TORCH_CUDA_ARCH_LIST"):
        load_extension()


def test_import_needs_no_compiler():
    code = ("import sys, cuda_rasterizer; "
            "assert 'cuda_rasterizer_ext' not in sys.modules; "
            "assert 'cuda_rasterizer.autograd' not in sys.modules")
    env = dict(os.environ, PATH="/nonexistent", CUDA_HOME="/nonexistent")
    subprocess.run([shutil.which("python") or "python", "-c", code], check=True, env=env,
                   cwd=Path(__file__).resolve().parent.parent)
