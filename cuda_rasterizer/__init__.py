"""A differentiable tile rasterizer for 3D Gaussian Splatting with DISTWAR gradient accumulation.

``import cuda_rasterizer`` needs neither a GPU nor a compiler: the CUDA extension is built on first use
with CUDA tensors (see ``_backend``).  CPU tensors go through the pure-PyTorch reference.
"""

from .api import (STAGE_BACKENDS, ProjectedGaussians, project_gaussians, rasterize_gaussians,
                  rasterize_projected, register_stage_backend)
from .reference import rasterize_gaussians_reference
from .settings import (ATOMICS_MODES, DEFAULT_ATOMICS, DEFAULT_BALANCE_THRESHOLD, RasterOutput,
                       RasterSettings)

__all__ = [
    "ATOMICS_MODES",
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
