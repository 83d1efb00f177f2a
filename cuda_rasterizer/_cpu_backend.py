"""Build the CPU backend's extension on first use, load it, say why when it cannot be.

``csrc/cpu/cpu_bindings.cpp`` (with ``cpu_rasterizer.h`` and the kernels' ``math.cuh``) is compiled by the
public ``torch.utils.cpp_extension.load`` with ``-O3`` and, when the compiler accepts it, ``-fopenmp``.  The
build folder and the module name carry a hash of every source and header and of the flags, so an edit to
any of them (math.cuh included) gives a fresh build, and an unchanged tree loads the cached one.

OpenMP: the extension links ``libgomp.so.1``, which torch has already loaded (its own copy), so the loops
run on torch's OpenMP runtime and honour ``torch.set_num_threads``.

Environment:
    CUDA_RASTERIZER_BUILD_DIR   build folder root (else $TORCH_EXTENSIONS_DIR/cuda_rasterizer, else
                                ~/.cache/cuda_rasterizer), shared with the CUDA backend
    CXX                         the C++ compiler (else ``c++``), as for torch's own extension builds
    GSR_CPU_ISA                 avx2 or baseline: build for that instruction set even where the CPU has a
                                better one (the default is the best it has: ``ISAS``)

Instruction set: the extension is built on the machine it runs on, for the best instruction set the CPU
has (AVX-512 gives 16-lane tile loops, AVX2 8, the baseline 8 in two SSE registers), that the compiler
accepts; the results are bitwise the same for each.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from ._backend import _build_root

CSRC = Path(__file__).resolve().parent / "csrc"
CPU_DIR = CSRC / "cpu"
SOURCES = (CPU_DIR / "cpu_bindings.cpp",)
#: Every file the build reads: a change to any of them is a new build.
DEPENDS = (CPU_DIR / "cpu_bindings.cpp", CPU_DIR / "cpu_rasterizer.h", CPU_DIR / "cpu_lanes.h", CSRC / "math.cuh",
           CSRC / "rasterizer.h", CPU_DIR / "cpu_ssim.h")
#: -ffp-contract=off: no fused multiply-adds, so that results do not depend on the CPU the build targets;
#: -fno-math-errno: expf and sqrtf need not set errno (no value changes); -Wno-psabi: the lane vectors of
#: cpu_rasterizer.h are 32 bytes, which the baseline ABI passes differently (inline code only; no effect).
CFLAGS = ("-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-Wno-psabi")
OPENMP_FLAG = "-fopenmp"
#: The instruction sets the extension is built for, best first, with the CPU flags (/proc/cpuinfo) each needs
#: and the compiler flags it adds.  The build is for the best one the CPU has (it runs where it is built; the
#: build folder's key has the flags); GSR_CPU_ISA=avx2|baseline picks a lower one.  No FMA flags: with
#: -ffp-contract=off the results are bitwise the same for every one (tests/test_cpu_backend.py).
ISAS = (
    ("avx512", ("avx2", "avx512f", "avx512vl", "avx512dq", "avx512bw"),
     ("-mavx2", "-mavx512f", "-mavx512vl", "-mavx512dq", "-mavx512bw")),   # 16-lane tile loops
    ("avx2", ("avx2",), ("-mavx2",)),
    ("baseline", (), ()),
)
#: Lines of the compiler's output quoted when the build fails.
ERROR_LINES = 12

_lock = threading.Lock()
_module = None
_failure: "CpuBackendUnavailable | None" = None


class CpuBackendUnavailable(RuntimeError):
    """The CPU extension cannot be built or loaded here; the message says why."""


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


def _openmp_works(cxx: str) -> bool:
    """Whether ``cxx -fopenmp`` compiles and links a program that includes omp.h."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "omp.cpp"
        src.write_text("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            proc = subprocess.run([cxx, OPENMP_FLAG, str(src), "-o", str(Path(tmp) / "omp")],
                                  capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return proc.returncode == 0


def _cpu_flags() -> set:
    """The CPU's feature flags (Linux x86-64), else an empty set (the baseline build)."""
    import platform
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _compiles(cxx: str, flags) -> bool:
    """Whether ``cxx`` compiles a trivial program with these flags."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "isa.cpp"
        src.write_text("int main() { return 0; }\n")
        try:
            proc = subprocess.run([cxx, *flags, "-c", str(src), "-o", str(Path(tmp) / "isa.o")],
                                  capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return proc.returncode == 0


def isa_flags(cxx: "str | None" = None) -> tuple:
    """(name, compiler flags) of the instruction set to build for: the best the CPU has and the compiler
    takes, or GSR_CPU_ISA's when that is lower (an unknown GSR_CPU_ISA is ignored)."""
    have = _cpu_flags()
    names = [name for name, _, _ in ISAS]
    want = os.environ.get("GSR_CPU_ISA", "").strip().lower()
    floor = names.index(want) if want in names else 0
    for name, need, flags in ISAS[floor:]:
        if set(need) <= have and (not flags or _compiles(cxx or _compiler(), flags)):
            return name, list(flags)
    return ISAS[-1][0], []


def _first_lines(text: str, n: int = ERROR_LINES) -> str:
    """The compiler's first error lines (torch's message wraps the log; keep the lines that say what failed)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errors = [i for i, ln in enumerate(lines) if "error" in ln.lower()]
    start = errors[0] if errors else 0
    return "\n".join(lines[start:start + n])


def _key(flags: list) -> str:
    h = hashlib.sha256()
    for path in DEPENDS:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    import torch
    h.update(repr((flags, torch.__version__, _compiler())).encode())
    return h.hexdigest()[:12]


def _build(verbose: bool):
    cxx = _compiler()
    if shutil.which(cxx) is None:
        raise CpuBackendUnavailable(f"no C++ compiler: {cxx!r} is not on PATH (install g++ or clang++, or set CXX)")
    try:
        import torch.utils.cpp_extension as cpp_ext
    except ImportError as err:  # pragma: no cover - torch is a dependency
        raise CpuBackendUnavailable(f"torch.utils.cpp_extension is unavailable: {err}") from err
    openmp = _openmp_works(cxx)
    _, isa = isa_flags(cxx)
    cflags = list(CFLAGS) + isa + ([OPENMP_FLAG] if openmp else [])
    ldflags = [OPENMP_FLAG] if openmp else []
    key = _key(cflags)
    build_dir = _build_root() / f"cpu-{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        module = cpp_ext.load(name=f"gsr_cpu_backend_{key}", sources=[str(s) for s in SOURCES],
                              extra_cflags=cflags, extra_ldflags=ldflags,
                              extra_include_paths=[str(CSRC), str(CPU_DIR)], build_directory=str(build_dir),
                              with_cuda=False, verbose=verbose)
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError/ImportError/OSError here
        raise CpuBackendUnavailable(f"building the CPU rasterizer failed (build folder {build_dir}):\n"
                                    + _first_lines(str(err))) from err
    return module


def load_cpu_extension(verbose: bool = False):
    """The compiled CPU extension, built on the first call; a failure is remembered for the process.

    Raises CpuBackendUnavailable: no compiler, or the build failed (with the compiler's first error lines).
    """
    global _module, _failure
    with _lock:
        if _module is None:
            if _failure is not None:
                raise _failure
            try:
                _module = _build(verbose)
            except CpuBackendUnavailable as err:
                _failure = err
                raise
        return _module


def cpu_extension_status() -> "str | None":
    """None when the CPU extension loads, else the reason it does not."""
    try:
        load_cpu_extension()
    except CpuBackendUnavailable as err:
        return str(err)
    return None
