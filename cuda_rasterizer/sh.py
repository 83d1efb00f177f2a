"""Real spherical harmonics up to degree 3, with the constants and sign conventions of the original 3DGS."""

from __future__ import annotations

import torch

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def num_sh_bases(degree: int) -> int:
    """Coefficients per colour channel for an SH degree: (degree + 1)^2."""
    return (degree + 1) ** 2


def eval_sh(degree: int, sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Evaluate SH colour.

    Args:
        degree: 0..3, bands used.
        sh: [N, K, 3] coefficients, K >= (degree + 1)^2.
        dirs: [N, 3] unit view directions (Gaussian centre minus camera centre, normalised).
    Returns:
        [N, 3] raw colour, before the +0.5 offset and the clamp.
    """
    if sh.shape[1] < num_sh_bases(degree):
        raise ValueError(f"eval_sh: degree {degree} needs {num_sh_bases(degree)} coefficients, got {sh.shape[1]}")
    result = SH_C0 * sh[:, 0]
    if degree > 0:
        x, y, z = dirs[:, 0:1], dirs[:, 1:2], dirs[:, 2:3]
        result = result - SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3]
        if degree > 1:
            xx, yy, zz = x * x, y * y, z * z
            xy, yz, xz = x * y, y * z, x * z
            result = (result
                      + SH_C2[0] * xy * sh[:, 4]
                      + SH_C2[1] * yz * sh[:, 5]
                      + SH_C2[2] * (2.0 * zz - xx - yy) * sh[:, 6]
                      + SH_C2[3] * xz * sh[:, 7]
                      + SH_C2[4] * (xx - yy) * sh[:, 8])
            if degree > 2:
                result = (result
                          + SH_C3[0] * y * (3.0 * xx - yy) * sh[:, 9]
                          + SH_C3[1] * xy * z * sh[:, 10]
                          + SH_C3[2] * y * (4.0 * zz - xx - yy) * sh[:, 11]
                          + SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * sh[:, 12]
                          + SH_C3[4] * x * (4.0 * zz - xx - yy) * sh[:, 13]
                          + SH_C3[5] * z * (xx - yy) * sh[:, 14]
                          + SH_C3[6] * x * (xx - 3.0 * yy) * sh[:, 15])
    return result


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    """DC coefficient whose degree-0 colour (after the +0.5 offset) is ``rgb``."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh_dc: torch.Tensor) -> torch.Tensor:
    return sh_dc * SH_C0 + 0.5
