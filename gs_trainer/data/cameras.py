"""Camera: intrinsics, world-to-view transform, projection, and the ground-truth image of one view.

Axes follow COLMAP/OpenCV (x right, y down, z forward); intrinsics are in pixels with COLMAP's
convention (a centred principal point is cx = W/2).  See cuda_rasterizer.settings for the pixel rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from cuda_rasterizer import RasterSettings


def focal_to_fov(focal: float, pixels: int) -> float:
    return 2.0 * math.atan(pixels / (2.0 * focal))


def fov_to_focal(fov: float, pixels: int) -> float:
    return pixels / (2.0 * math.tan(fov / 2.0))


def qvec_to_rotmat(qvec) -> np.ndarray:
    """COLMAP quaternion (w, x, y, z) -> 3x3 rotation matrix."""
    w, x, y, z = (float(v) for v in qvec)
    return np.array([
        [1 - 2 * y * y - 2 * z * z, 2 * x * y - 2 * w * z, 2 * z * x + 2 * w * y],
        [2 * x * y + 2 * w * z, 1 - 2 * x * x - 2 * z * z, 2 * y * z - 2 * w * x],
        [2 * z * x - 2 * w * y, 2 * y * z + 2 * w * x, 1 - 2 * x * x - 2 * y * y],
    ])


def rotmat_to_qvec(rot: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix -> COLMAP quaternion (w, x, y, z) with w >= 0."""
    rxx, ryx, rzx, rxy, ryy, rzy, rxz, ryz, rzz = np.asarray(rot, dtype=np.float64).flat
    k = np.array([
        [rxx - ryy - rzz, 0, 0, 0],
        [ryx + rxy, ryy - rxx - rzz, 0, 0],
        [rzx + rxz, rzy + ryz, rzz - rxx - ryy, 0],
        [ryz - rzy, rzx - rxz, rxy - ryx, rxx + ryy + rzz],
    ]) / 3.0
    eigvals, eigvecs = np.linalg.eigh(k)
    qvec = eigvecs[[3, 0, 1, 2], np.argmax(eigvals)]
    return -qvec if qvec[0] < 0 else qvec


@dataclass
class Camera:
    """One view.

    R, t: world-to-camera rotation [3, 3] and translation [3] (p_cam = R p_world + t), float64 numpy.
    image: [3, H, W] float32 in [0, 1] on the device the scene was loaded to (None when not loaded).
    alpha_mask: optional [1, H, W] float32, for RGBA inputs.
    """

    uid: int
    image_name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    R: np.ndarray
    t: np.ndarray
    image: Optional[torch.Tensor] = None
    alpha_mask: Optional[torch.Tensor] = None
    znear: float = 0.01
    zfar: float = 100.0
    _view_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def fovx(self) -> float:
        return focal_to_fov(self.fx, self.width)

    @property
    def fovy(self) -> float:
        return focal_to_fov(self.fy, self.height)

    @property
    def tanfovx(self) -> float:
        return self.width / (2.0 * self.fx)

    @property
    def tanfovy(self) -> float:
        return self.height / (2.0 * self.fy)

    @property
    def world_view_np(self) -> np.ndarray:
        """[4, 4] float64 world-to-camera matrix (column-vector convention)."""
        m = np.eye(4)
        m[:3, :3] = self.R
        m[:3, 3] = self.t
        return m

    @property
    def camera_center_np(self) -> np.ndarray:
        return -np.asarray(self.R).T @ np.asarray(self.t)

    def world_view(self, device="cpu") -> torch.Tensor:
        """[4, 4] float32 world-to-camera matrix on ``device`` (cached per device)."""
        key = str(device)
        if key not in self._view_cache:
            self._view_cache[key] = torch.tensor(self.world_view_np, dtype=torch.float32, device=device)
        return self._view_cache[key]

    def camera_center(self, device="cpu") -> torch.Tensor:
        """[3] float32 camera centre in world coordinates on ``device`` (cached per device)."""
        key = ("center", str(device))
        if key not in self._view_cache:
            self._view_cache[key] = torch.tensor(self.camera_center_np, dtype=torch.float32, device=device)
        return self._view_cache[key]

    def full_projection(self, device="cpu") -> torch.Tensor:
        """[4, 4] float32 world -> clip matrix on ``device`` (cached per device)."""
        key = ("full_projection", str(device))
        if key not in self._view_cache:
            self._view_cache[key] = torch.tensor(self.full_projection_np(), dtype=torch.float32, device=device)
        return self._view_cache[key]

    def projection_np(self) -> np.ndarray:
        """[4, 4] OpenGL-style perspective matrix (camera -> clip), with the principal point honoured."""
        p = np.zeros((4, 4))
        p[0, 0] = 2.0 * self.fx / self.width
        p[1, 1] = 2.0 * self.fy / self.height
        p[0, 2] = 2.0 * self.cx / self.width - 1.0
        p[1, 2] = 2.0 * self.cy / self.height - 1.0
        p[2, 2] = self.zfar / (self.zfar - self.znear)
        p[2, 3] = -(self.zfar * self.znear) / (self.zfar - self.znear)
        p[3, 2] = 1.0
        return p

    def full_projection_np(self) -> np.ndarray:
        """[4, 4] world -> clip (projection @ world_view)."""
        return self.projection_np() @ self.world_view_np

    def raster_settings(self, bg: torch.Tensor, sh_degree: int = 0, scale_modifier: float = 1.0,
                        debug: bool = False) -> RasterSettings:
        return RasterSettings(self.height, self.width, self.fx, self.fy, self.cx, self.cy,
                              self.world_view(bg.device), bg, sh_degree=sh_degree,
                              scale_modifier=scale_modifier, debug=debug)

    def to_json(self) -> dict:
        """The original trainer's cameras.json entry (camera-to-world rotation and position)."""
        c2w = np.linalg.inv(self.world_view_np)
        return {
            "id": self.uid,
            "img_name": self.image_name,
            "width": self.width,
            "height": self.height,
            "position": c2w[:3, 3].tolist(),
            "rotation": c2w[:3, :3].tolist(),
            "fy": self.fy,
            "fx": self.fx,
            "cx": self.cx,
            "cy": self.cy,
        }

    @staticmethod
    def from_json(entry: dict) -> "Camera":
        c2w = np.eye(4)
        c2w[:3, :3] = np.asarray(entry["rotation"])
        c2w[:3, 3] = np.asarray(entry["position"])
        w2c = np.linalg.inv(c2w)
        w, h = int(entry["width"]), int(entry["height"])
        return Camera(int(entry["id"]), entry["img_name"], w, h, float(entry["fx"]), float(entry["fy"]),
                      float(entry.get("cx", w / 2.0)), float(entry.get("cy", h / 2.0)),
                      w2c[:3, :3], w2c[:3, 3])

    def scaled(self, width: int, height: int) -> "Camera":
        """The same camera at another resolution (intrinsics scaled; image not carried)."""
        sx, sy = width / self.width, height / self.height
        return Camera(self.uid, self.image_name, width, height, self.fx * sx, self.fy * sy,
                      self.cx * sx, self.cy * sy, self.R, self.t, znear=self.znear, zfar=self.zfar)
