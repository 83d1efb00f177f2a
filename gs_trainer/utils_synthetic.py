"""A tiny synthetic scene for tests and quick experiments (no files): random coloured Gaussians seen by
cameras on a ring, their images rendered by the reference rasterizer.  Not a substitute for real data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from cuda_rasterizer import rasterize_gaussians_reference

from .data.cameras import Camera


def look_at(position: np.ndarray, target: np.ndarray, world_up=(0.0, 0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera (R, t) of a camera at ``position`` looking at ``target`` (x right, y down, z forward)."""
    forward = target - position
    forward = forward / np.linalg.norm(forward)
    down = -np.asarray(world_up, dtype=np.float64)
    down = down - forward * np.dot(down, forward)
    if np.linalg.norm(down) < 1e-9:
        down = np.array([0.0, 1.0, 0.0]) - forward * forward[1]
    down = down / np.linalg.norm(down)
    right = np.cross(down, forward)
    rot = np.stack([right, down, forward])
    return rot, -rot @ position


@dataclass
class SyntheticScene:
    """Duck-types gs_trainer.data.dataset.Scene."""

    train_cameras: list
    test_cameras: list
    points: np.ndarray
    colors: np.ndarray
    extent: float
    truth: dict = field(default_factory=dict, repr=False)


def make_synthetic_scene(num_gaussians: int = 200, num_views: int = 12, width: int = 64, height: int = 48,
                         seed: int = 0, test_every: int = 4, bg=(0.0, 0.0, 0.0)) -> SyntheticScene:
    """Cameras on a ring of radius 4 around a cloud in [-1, 1]^3; every ``test_every``-th view is a test
    view (0 = none).  The initial points are the true centres plus noise, with grey colours."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-1.0, 1.0, (num_gaussians, 3))
    scales = np.exp(rng.uniform(-3.0, -2.0, (num_gaussians, 3)))
    quats = rng.normal(size=(num_gaussians, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    opac = rng.uniform(0.5, 0.95, (num_gaussians, 1))
    colors = rng.uniform(0.0, 1.0, (num_gaussians, 3))
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    bg_t = torch.tensor(bg, dtype=torch.float32)
    cameras = []
    fx = 0.9 * width
    for i in range(num_views):
        angle = 2 * np.pi * i / num_views
        pos = np.array([4.0 * np.cos(angle), 4.0 * np.sin(angle), 1.0 + 0.5 * np.sin(3 * angle)])
        rot, trans = look_at(pos, np.zeros(3))
        cam = Camera(i, f"view_{i:03d}", width, height, fx, fx, width / 2, height / 2, rot, trans)
        with torch.no_grad():
            out = rasterize_gaussians_reference(t(means), t(scales), t(quats), t(opac), colors_precomp=t(colors),
                                                settings=cam.raster_settings(bg_t))
        cam.image = out.image.clamp(0, 1).contiguous()
        cameras.append(cam)
    test = [c for i, c in enumerate(cameras) if test_every and i % test_every == 0]
    train = [c for i, c in enumerate(cameras) if not (test_every and i % test_every == 0)]
    centers = np.stack([c.camera_center_np for c in train])
    extent = float(np.linalg.norm(centers - centers.mean(0), axis=1).max() * 1.1)
    points = (means + rng.normal(scale=0.05, size=means.shape)).astype(np.float32)
    init_colors = np.full_like(points, 0.5) + rng.normal(scale=0.05, size=points.shape).astype(np.float32)
    return SyntheticScene(train, test, points, np.clip(init_colors, 0, 1).astype(np.float32), extent,
                          truth=dict(means=means, scales=scales, quats=quats, opacities=opac, colors=colors))
