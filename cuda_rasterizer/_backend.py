"""Find the CUDA toolkit, build the extension on first use, load it.

Two steps, both cached and incremental (ninja):

1. the kernels (``csrc/*.cu``, no torch headers) are compiled by nvcc into a static library, in a build
   folder keyed by the architecture list and the flags; ninja rebuilds what changed (nvcc writes the header
   dependencies);
2. the torch glue (``csrc/bindings.cpp``) is compiled and linked against that library and the toolkit's
   libcudart by ``torch.utils.cpp_extension.load``.  The library is linked under a name that carries its
   content hash, so the glue is relinked whenever a kernel changed.

The glue never includes torch's CUDA headers or links torch's CUDA libraries, so the same build works with
a CPU build of torch (CI compiles and imports the extension there) and with a CUDA build.

Environment:
    CUDA_HOME / CUDA_PATH           the toolkit (else found through ``nvcc`` on PATH, wrappers followed)
    TORCH_CUDA_ARCH_LIST            e.g. "8.0;9.0" or "9.0+PTX" (else the GPU present, else 8.0 and 9.0);
                                    the highest one always gets PTX too (forward compatibility), and
                                    load_extension refuses a GPU that neither machine code nor PTX covers
    CUDA_RASTERIZER_BUILD_DIR       build folder (else $TORCH_EXTENSIONS_DIR/cuda_rasterizer, else
                                    ~/.cache/cuda_rasterizer)
    CUDA_RASTERIZER_NVCC_FLAGS      extra nvcc flags (e.g. "-lineinfo")
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Optional

CSRC = Path(__file__).resolve().parent / "csrc"
CU_SOURCES = ("preprocess.cu", "binning.cu", "render_forward.cu", "render_backward.cu")
GLUE_SOURCE = "bindings.cpp"
EXTENSION_NAME = "cuda_rasterizer_ext"
DEFAULT_ARCHS = ("8.0", "9.0")
NVCC_FLAGS = ("-O3", "-std=c++17", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC", "-lineinfo")
_LOG_TAIL_CHARS = 6000

_lock = threading.Lock()
_module = None


class CudaBackendUnavailable(RuntimeError):
    """The CUDA extension cannot be used here; the message says why and what to do."""


def _is_toolkit(root: Path) -> bool:
    return (root / "bin" / "nvcc").exists() and (root / "include" / "cuda_runtime_api.h").exists()


def _candidates_from_nvcc(nvcc: str):
    """Toolkit roots suggested by an nvcc on PATH: its real location, or paths named inside a wrapper."""
    real = Path(os.path.realpath(nvcc))
    yield real.parent.parent
    try:
        if real.stat().st_size < 65536:
            text = real.read_text(errors="ignore")
            for match in re.findall(r"(/[^\s\"'`;:]+)/bin/nvcc", text):
                yield Path(match)
    except OSError:
        pass


def find_cuda_home() -> str:
    """The CUDA toolkit root (holding bin/nvcc, include/ and the cudart library).

    CUDA_HOME or CUDA_PATH first, then the ``nvcc`` on PATH (following symlinks and wrapper scripts such
    as ``exec /usr/local/cuda-13.0/bin/nvcc "$@"``), then /usr/local/cuda.
    Raises CudaBackendUnavailable when none is found.
    """
    tried = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var)
        if value:
            if _is_toolkit(Path(value)):
                return str(Path(value))
            tried.append(f"{var}={value} (no bin/nvcc with include/cuda_runtime_api.h there)")
    nvcc = shutil.which("nvcc")
    if nvcc:
        for root in _candidates_from_nvcc(nvcc):
            if _is_toolkit(root):
                return str(root)
        tried.append(f"nvcc on PATH at {nvcc} (could not locate the toolkit folder it belongs to)")
    else:
        tried.append("no nvcc on PATH")
    if _is_toolkit(Path("/usr/local/cuda")):
        return "/usr/local/cuda"
    tried.append("/usr/local/cuda (missing)")
    raise CudaBackendUnavailable(
        "CUDA toolkit not found: the rasterizer's CUDA extension needs nvcc and the CUDA headers and runtime. "
        "Install the CUDA toolkit and set CUDA_HOME (or put nvcc on PATH). Tried: " + "; ".join(tried))


def _cudart_dir(cuda_home: str) -> str:
    for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
        d = Path(cuda_home) / sub
        if (d / "libcudart.so").exists() or any(d.glob("libcudart.so.*")):
            return str(d)
    raise CudaBackendUnavailable(f"CUDA toolkit at {cuda_home} has no libcudart.so (looked in lib64/, lib/, "
                                 "targets/*/lib)")


def cuda_archs() -> list[str]:
    """Architectures to compile for, as "8.0" / "9.0+PTX" strings."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env:
        archs = [a for a in re.split(r"[;\s,]+", env) if a]
    else:
        archs = []
        try:
            import torch
            if torch.cuda.is_available():
                for d in range(torch.cuda.device_count()):
                    major, minor = torch.cuda.get_device_capability(d)
                    archs.append(f"{major}.{minor}")
        except Exception:  # noqa: BLE001 - no usable CUDA runtime: fall back to the defaults
            archs = []
        archs = sorted(set(archs)) or list(DEFAULT_ARCHS)
    for a in archs:
        if not re.fullmatch(r"\d+\.\d+a?(\+PTX)?", a):
            raise CudaBackendUnavailable(f"TORCH_CUDA_ARCH_LIST: cannot read architecture {a!r} "
                                         "(expected e.g. 8.0, 9.0 or 9.0+PTX)")
    return archs


def _parse_arch(arch: str) -> tuple[int, int, bool]:
    """"9.0a+PTX" -> (9, 0, True): major, minor, arch-specific ("a": runs on exactly that capability)."""
    base = arch.replace("+PTX", "")
    specific = base.endswith("a")
    major, minor = base.rstrip("a").split(".")
    return int(major), int(minor), specific


def ptx_archs(archs: list[str]) -> list[str]:
    """The architectures whose PTX is embedded: those marked +PTX, and always the highest one, so that a
    GPU newer than every sm target still runs the kernels (the driver JIT-compiles the PTX)."""
    highest = max(archs, key=lambda a: _parse_arch(a)[:2])
    return [a for a in archs if a.endswith("+PTX") or a == highest]


def _gencode_flags(archs: list[str]) -> list[str]:
    with_ptx = set(ptx_archs(archs)) if archs else set()
    flags = []
    for a in archs:
        num = a.replace("+PTX", "").replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if a in with_ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


def arch_covers(archs: list[str], capability: tuple[int, int]) -> bool:
    """Whether a build for ``archs`` runs on a GPU of compute capability ``capability``: machine code for
    sm_XY runs on X.Y' with Y' >= Y (same major); PTX for compute_XY is JIT-compiled for any capability
    >= X.Y; the arch-specific "a" targets only on exactly X.Y."""
    cap = tuple(capability)
    with_ptx = set(ptx_archs(archs)) if archs else set()
    for a in archs:
        major, minor, specific = _parse_arch(a)
        if specific:
            if cap == (major, minor):
                return True
            continue
        if cap[0] == major and cap[1] >= minor:
            return True
        if a in with_ptx and cap >= (major, minor):
            return True
    return False


def _check_device_covered(archs: list[str]) -> None:
    """Raise CudaBackendUnavailable when the current GPU can run neither the machine code nor the PTX."""
    try:
        import torch
        if not torch.cuda.is_available():
            return
        capability = tuple(torch.cuda.get_device_capability())
    except Exception:  # noqa: BLE001 - no usable CUDA runtime: nothing to check (the CPU build and import)
        return
    if not arch_covers(archs, capability):
        cap = f"{capability[0]}.{capability[1]}"
        raise CudaBackendUnavailable(
            f"the rasterizer's CUDA extension was built for {';'.join(archs)} (machine code) with PTX for "
            f"{';'.join(ptx_archs(archs))}, which cannot run on this GPU (compute capability {cap}). "
            f"Set TORCH_CUDA_ARCH_LIST to include {cap} (e.g. TORCH_CUDA_ARCH_LIST=\"{cap}\") and rebuild.")


def _build_root() -> Path:
    if os.environ.get("CUDA_RASTERIZER_BUILD_DIR"):
        return Path(os.environ["CUDA_RASTERIZER_BUILD_DIR"])
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "cuda_rasterizer"
    return Path.home() / ".cache" / "cuda_rasterizer"


def _tail(text: str) -> str:
    return text if len(text) <= _LOG_TAIL_CHARS else "...\n" + text[-_LOG_TAIL_CHARS:]


def _ninja() -> str:
    found = shutil.which("ninja")
    if found:
        return found
    try:
        import ninja  # type: ignore
        return str(Path(ninja.BIN_DIR) / "ninja")
    except ImportError as err:
        raise CudaBackendUnavailable("ninja is needed to build the CUDA extension: pip install ninja") from err


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def build_kernels(cuda_home: str, archs: list[str], build_dir: Path, verbose: bool = False) -> Path:
    """Compile the .cu files into a static library with nvcc (ninja, incremental); return its path."""
    nvcc = str(Path(cuda_home) / "bin" / "nvcc")
    flags = list(NVCC_FLAGS) + _gencode_flags(archs) + [f"-I{CSRC}"]
    flags += os.environ.get("CUDA_RASTERIZER_NVCC_FLAGS", "").split()
    lines = [
        "ninja_required_version = 1.3",
        f"nvcc = {nvcc}",
        "flags = " + " ".join(flags),
        "rule nvcc",
        "  command = $nvcc $flags -MD -MF $out.d -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = NVCC $out",
        "rule ar",
        "  command = rm -f $out && ar rcs $out $in",
        "  description = AR $out",
    ]
    objs = []
    for src in CU_SOURCES:
        obj = src.replace(".cu", ".o")
        objs.append(obj)
        lines.append(f"build {obj}: nvcc {CSRC / src}")
    lines.append("build libgsr_kernels.a: ar " + " ".join(objs))
    lines.append("default libgsr_kernels.a")
    build_dir.mkdir(parents=True, exist_ok=True)
    _write_if_changed(build_dir / "build.ninja", "\n".join(lines) + "\n")
    env = dict(os.environ)
    env["PATH"] = str(Path(cuda_home) / "bin") + os.pathsep + env.get("PATH", "")
    jobs = str(max(1, min(len(CU_SOURCES), os.cpu_count() or 1)))
    proc = subprocess.run([_ninja(), "-C", str(build_dir), "-j", jobs], capture_output=True, text=True, env=env)
    if verbose:
        print(proc.stdout, proc.stderr, file=sys.stderr)
    if proc.returncode != 0:
        raise CudaBackendUnavailable(f"nvcc failed to compile the rasterizer kernels (build folder {build_dir}):\n"
                                     + _tail(proc.stdout + proc.stderr))
    return build_dir / "libgsr_kernels.a"


def _build_and_load(verbose: bool):
    archs = cuda_archs()
    _check_device_covered(archs)
    cuda_home = find_cuda_home()
    cudart = _cudart_dir(cuda_home)
    try:
        import torch
        import torch.utils.cpp_extension as cpp_ext
    except ImportError as err:  # pragma: no cover - torch is a dependency
        raise CudaBackendUnavailable(f"torch is needed to build the extension: {err}") from err
    # every nvcc flag (the fixed ones, the -gencode list, the user's) is part of the key
    key = hashlib.sha256(repr((cuda_home, archs, _gencode_flags(archs), NVCC_FLAGS, torch.__version__,
                               sys.version_info[:2],
                               os.environ.get("CUDA_RASTERIZER_NVCC_FLAGS", ""))).encode()).hexdigest()[:12]
    root = _build_root()
    kernel_dir = root / f"kernels-{key}"
    glue_dir = root / f"glue-{key}"
    glue_dir.mkdir(parents=True, exist_ok=True)
    with open(root / f"build-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per folder, across processes
        lib = build_kernels(cuda_home, archs, kernel_dir, verbose)
        digest = hashlib.sha256(lib.read_bytes()).hexdigest()[:16]
        linked = kernel_dir / f"libgsr_kernels-{digest}.a"
        if not linked.exists():
            for old in kernel_dir.glob("libgsr_kernels-*.a"):
                old.unlink()
            shutil.copyfile(lib, linked)
        ldflags = [str(linked), f"-L{cudart}", "-lcudart", f"-Wl,-rpath,{cudart}"]
        try:
            return cpp_ext.load(name=EXTENSION_NAME, sources=[str(CSRC / GLUE_SOURCE)],
                                extra_cflags=["-O2", "-std=c++17"], extra_ldflags=ldflags,
                                extra_include_paths=[str(CSRC), str(Path(cuda_home) / "include")],
                                build_directory=str(glue_dir), with_cuda=False, verbose=verbose)
        except Exception as err:  # noqa: BLE001 - torch raises RuntimeError/ImportError/OSError here
            raise CudaBackendUnavailable(f"building or loading the rasterizer's torch glue failed "
                                         f"(build folder {glue_dir}):\n{_tail(str(err))}") from err


def load_extension(verbose: bool = False):
    """The compiled extension module, built on the first call (then cached in this process).

    Raises CudaBackendUnavailable with the reason: no toolkit, a GPU that the architecture list covers
    neither with machine code nor with PTX, a compile error (with the compiler output's tail), a link or
    load error.
    """
    global _module
    with _lock:
        if _module is None:
            _module = _build_and_load(verbose)
        return _module


def debug_enabled(settings_debug: bool = False) -> bool:
    """Synchronise after each launch (and name the failing kernel): settings.debug or CUDA_RASTERIZER_DEBUG=1."""
    return bool(settings_debug) or os.environ.get("CUDA_RASTERIZER_DEBUG", "") not in ("", "0")


def extension_status() -> Optional[str]:
    """None when the extension loads, else the reason it does not (for diagnostics)."""
    try:
        load_extension()
    except CudaBackendUnavailable as err:
        return str(err)
    return None
