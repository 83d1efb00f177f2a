"""Between viser's browser camera and the project's Camera.

viser reports a camera as ``wxyz`` (the rotation R_world_camera, OpenCV axes: x right, y down, z forward),
``position`` (the camera centre in world space), a vertical field of view in radians and the canvas size.
Our Camera holds the world-to-camera (R, t) with the same axes, so R = R_world_camera^T, t = -R c.
"""

from __future__ import annotations

import math

import numpy as np

from ..data.cameras import Camera, qvec_to_rotmat, rotmat_to_qvec


def fit_resolution(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) with the aspect of ``width x height`` and the longer side at most ``max_side`` (>= 1)."""
    width, height = max(int(width), 1), max(int(height), 1)
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def camera_from_viser(wxyz, position, fov_y: float, width: int, height: int, uid: int = -1,
                      name: str = "viewer") -> Camera:
    """The pinhole Camera (square pixels, centred principal point) a browser camera sees."""
    r_wc = qvec_to_rotmat(np.asarray(wxyz, dtype=np.float64))
    rot = r_wc.T
    trans = -rot @ np.asarray(position, dtype=np.float64)
    focal = height / (2.0 * math.tan(fov_y / 2.0))
    return Camera(uid, name, int(width), int(height), focal, focal, width / 2.0, height / 2.0, rot, trans)


def viser_pose(camera: Camera) -> tuple[np.ndarray, np.ndarray, float]:
    """(wxyz, position, vertical fov) to put a browser camera where ``camera`` is."""
    wxyz = rotmat_to_qvec(np.asarray(camera.R, dtype=np.float64).T)
    return wxyz, camera.camera_center_np, camera.fovy


def scene_up(cameras) -> np.ndarray:
    """The mean 'up' of the cameras (COLMAP's y axis points down), unit length."""
    up = -np.mean(np.stack([np.asarray(c.R)[1] for c in cameras]), axis=0)
    norm = np.linalg.norm(up)
    return up / norm if norm > 1e-9 else np.array([0.0, 0.0, 1.0])
