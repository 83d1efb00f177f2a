"""A differentiable tile rasterizer for 3D Gaussian Splatting with DISTWAR gradient accumulation.

``import cuda_rasterizer`` needs neither a GPU nor a compiler: the CUDA extension is built on first use
with CUDA tensors (see ``_backend``).  CPU tensors go through the C++ CPU backend (built on first use with
the system's C++ compiler, see ``_cpu_backend``), or through the pure-PyTorch reference where it cannot be
built.  ``rasterize_gaussians(..., backend=)`` chooses explicitly: "auto", "cuda", "cpu", "reference".
"""

from .api import (BACKENDS, STAGE_BACKENDS, ProjectedGaussians, project_gaussians, rasterize_gaussians,
                  rasterize_projected, register_stage_backend)
from .reference import rasterize_gaussians_reference
from .settings import (ATOMICS_MODES, DEFAULT_ATOMICS, DEFAULT_BALANCE_THRESHOLD, RasterOutput,
                       RasterSettings)

__all__ = [
    "ATOMICS_MODES",
    "BACKENDS",
    "DEFAULT_ATOMICS",
    "DEFAULT_BALANCE_THRESHOLD",
    "ProjectedGaussians",
    "RasterOutput",
    "RasterSettings",
    "STAGE_BACKENDS",
    "project_gaussians",
    "rasterize_gaussians",
    "rasterize_gaussians_reference",
    "rasterize_projected",
    "register_stage_backend",
]
