"""Depth and opacity images of a render: 16-bit depth PNGs, colour-mapped previews, opacity PNGs.

The depth written is the *expected* depth of what a pixel sees, sum_i(alpha_i T_i z_i) / (1 - T_final)
(RasterOutput.depth divided by the accumulated opacity; z is view-space depth, along the optical axis).
Pixels with accumulated opacity below ALPHA_MIN hold 0 ("nothing seen").  The 16-bit PNGs of a split
share one step, ``depth = value * step``, written to ``depth/scale.json``, so views compare directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .utils_io import atomic_write, atomic_write_json

ALPHA_MIN = 1.0 / 255.0
UINT16_MAX = 65535
DEPTH_RANGE_MARGIN = 1.5   # the 16-bit range covers 1.5x the farthest camera-to-point distance


def depth_step(cameras, points: np.ndarray) -> float:
    """Scene units per 16-bit step, from the farthest scene point seen from any camera."""
    centers = np.stack([c.camera_center_np for c in cameras])
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        far = 1.0
    else:
        pts = pts[:: max(1, len(pts) // 20000)]
        far = float(np.max(np.linalg.norm(pts[None, :, :] - centers[:, None, :], axis=-1)))
    return max(far, 1e-6) * DEPTH_RANGE_MARGIN / UINT16_MAX


def expected_depth(depth: torch.Tensor, final_T: torch.Tensor) -> torch.Tensor:
    """[H, W] depth of the surface seen: accumulated alpha-weighted z over accumulated alpha; 0 where none."""
    alpha = 1.0 - final_T
    seen = alpha >= ALPHA_MIN
    return torch.where(seen, depth / alpha.clamp_min(ALPHA_MIN), torch.zeros_like(depth))


def _png(path: Path, array: np.ndarray) -> None:
    import cv2

    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    atomic_write(path, lambda f: f.write(buf.tobytes()))


def save_depth(out_dir: Path, name: str, depth: torch.Tensor, final_T: torch.Tensor, step: float) -> None:
    """depth/<name> (uint16, depth = value * step) and depth_vis/<name> (turbo colour map, near = warm)."""
    import cv2

    d = expected_depth(depth.detach(), final_T.detach()).cpu().numpy().astype(np.float64)
    _png(out_dir / "depth" / name, np.clip(np.round(d / step), 0, UINT16_MAX).astype(np.uint16))
    seen = d > 0
    vis = np.zeros(d.shape + (3,), np.uint8)
    if seen.any():
        lo, hi = np.percentile(d[seen], [1, 99])
        t = np.clip((d - lo) / max(hi - lo, 1e-12), 0, 1)
        vis = cv2.applyColorMap(((1.0 - t) * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
        vis[~seen] = 0
    _png(out_dir / "depth_vis" / name, vis)


def save_alpha(out_dir: Path, name: str, final_T: torch.Tensor) -> None:
    """alpha/<name>: accumulated opacity 1 - T_final as 8-bit grey."""
    a = (1.0 - final_T.detach()).clamp(0, 1).cpu().numpy()
    _png(out_dir / "alpha" / name, (a * 255.0 + 0.5).astype(np.uint8))


def save_depth_scale(out_dir: Path, step: float) -> None:
    atomic_write_json(out_dir / "depth" / "scale.json", {
        "depth_per_step": step,
        "meaning": "view-space expected depth (along the optical axis) = PNG value * depth_per_step, in scene "
                   "units; 0 = nothing seen (accumulated opacity below 1/255)",
    })
