"""The camera and render settings shared by the reference and the CUDA rasterizer.

Conventions (those of the original 3DGS rasterizer, written in plain pinhole terms):

* ``viewmatrix`` is the 4x4 world-to-camera matrix in the column-vector convention
  (``p_cam = viewmatrix @ [p_world, 1]``) with OpenCV/COLMAP axes: x right, y down, z forward.
* ``fx, fy, cx, cy`` are pixel intrinsics in the COLMAP convention, where a centred principal point is
  ``cx = W / 2``.  A camera-space point lands at pixel coordinate ``x = fx * X / Z + cx - 0.5``, where
  pixel ``i``'s centre is at coordinate ``i`` (the original's NDC-to-pixel rule).
* ``tanfovx = W / (2 fx)`` drives the EWA Jacobian clamp at ``1.3 * tanfovx``, as in the original.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch

#: Gradient-accumulation policies of the CUDA backward pass (see csrc/atomics.cuh).
#: ``baseline``: one global atomicAdd per contributing lane (the original rasterizer);
#: ``warp``: reduction over the warp (a reduce-scatter of the 9 values), then one atomic per warp and value;
#: ``distwar``: DISTWAR's balanced scheme (reduce in registers when at least ``balance_threshold``
#: lanes contribute, otherwise direct L2 atomics from the contributing lanes);
#: ``tile``: like ``distwar``, but a reducing warp's sums go to its own shared-memory slot and the block
#: adds the 8 warps' slots together: one global atomic per Gaussian per tile and chunk of 32 Gaussians.
ATOMICS_MODES = ("baseline", "warp", "distwar", "tile")
DEFAULT_ATOMICS = "distwar"
DEFAULT_BALANCE_THRESHOLD = 8

BLOCK_X = 16
BLOCK_Y = 16
NEAR_PLANE = 0.2  # the original culls Gaussians with camera-space z <= 0.2


@dataclass(frozen=True)
class RasterSettings:
    """One camera and how to render it.

    Attributes:
        image_height, image_width: output size in pixels.
        fx, fy, cx, cy: pinhole intrinsics in pixels (COLMAP convention, see module docstring).
        viewmatrix: [4, 4] float32 world-to-camera matrix (column-vector convention).
        bg: [3] background colour added with the final transmittance.
        sh_degree: SH degree in use (0-3); the SH tensor may hold more bands than this.
        scale_modifier: multiplies every scale (the original's ``scaling_modifier``).
    """

    image_height: int
    image_width: int
    fx: float
    fy: float
    cx: float
    cy: float
    viewmatrix: torch.Tensor
    bg: torch.Tensor
    sh_degree: int = 0
    scale_modifier: float = 1.0
    debug: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if self.image_height <= 0 or self.image_width <= 0:
            raise ValueError(f"RasterSettings: image size must be positive, got "
                             f"{self.image_width}x{self.image_height}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"RasterSettings: focal lengths must be positive, got fx={self.fx}, fy={self.fy}")
        if tuple(self.viewmatrix.shape) != (4, 4):
            raise ValueError(f"RasterSettings: viewmatrix must be [4, 4], got {tuple(self.viewmatrix.shape)}")
        if self.bg.numel() != 3:
            raise ValueError(f"RasterSettings: bg must have 3 values, got shape {tuple(self.bg.shape)}")
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"RasterSettings: sh_degree must be in 0..3, got {self.sh_degree}")

    @property
    def tanfovx(self) -> float:
        return self.image_width / (2.0 * self.fx)

    @property
    def tanfovy(self) -> float:
        return self.image_height / (2.0 * self.fy)

    @property
    def campos(self) -> torch.Tensor:
        """[3] camera centre in world space, -R^T t."""
        rot = self.viewmatrix[:3, :3]
        return -(rot.transpose(0, 1) @ self.viewmatrix[:3, 3])

    @property
    def tile_grid(self) -> tuple[int, int]:
        """(tiles in x, tiles in y)."""
        return ((self.image_width + BLOCK_X - 1) // BLOCK_X, (self.image_height + BLOCK_Y - 1) // BLOCK_Y)

    @staticmethod
    def from_fov(image_height: int, image_width: int, tanfovx: float, tanfovy: float,
                 viewmatrix: torch.Tensor, bg: torch.Tensor, **kw) -> "RasterSettings":
        """Settings of a centred pinhole camera given tan(fov/2), as the original rasterizer takes them."""
        fx = image_width / (2.0 * tanfovx)
        fy = image_height / (2.0 * tanfovy)
        return RasterSettings(image_height, image_width, fx, fy, image_width / 2.0, image_height / 2.0,
                              viewmatrix, bg, **kw)


class RasterOutput(NamedTuple):
    """What both rasterizers return.

    image:     [3, H, W] rendered colour (background added with the final transmittance).
    radii:     [N] int32 screen radius in pixels; 0 for culled Gaussians.
    means2d:   [N, 2] pixel-space 2D means (0 for culled).  A non-leaf tensor of the graph: call
               ``means2d.retain_grad()`` before ``backward`` to read the pixel-space gradient that
               densification needs (multiply by (W/2, H/2) for the original's NDC units).
    depths:    [N] camera-space z.
    final_T:   [H, W] transmittance left after the last contributor.
    n_contrib: [H, W] int32, 1 + position (in the pixel's tile list) of its last contributor, 0 if none.
    depth:     [H, W] expected view-space depth sum_i alpha_i T_i z_i over the composited Gaussians, with
               z_i the camera-space z of Gaussian i's mean (not normalised by the accumulated opacity
               1 - final_T; divide by it for the depth of the surface).  Background contributes 0.  No
               gradient flows through it.  Every built-in backend computes it (cuda and cpu in the
               forward pass that composites the colour); None only from a registered backend without it.
    """

    image: torch.Tensor
    radii: torch.Tensor
    means2d: torch.Tensor
    depths: torch.Tensor
    final_T: torch.Tensor
    n_contrib: torch.Tensor
    depth: Optional[torch.Tensor] = None
