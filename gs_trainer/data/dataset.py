"""Scene: the cameras, images and initial point cloud of one capture, with the 3DGS conventions.

    scene = Scene("data/tabletop", resolution=-1, eval=True, device="cuda")
    scene.train_cameras, scene.test_cameras   # list[Camera], sorted by image name, images loaded
    scene.points, scene.colors                # [P, 3] float32 initial point cloud, colours in [0, 1]
    scene.extent                              # radius of the camera centres around their mean, x 1.1

COLMAP scenes (``<source>/sparse/0`` or ``<source>/sparse``) and Blender scenes
(``transforms_train.json``) are recognised from the files present.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from . import colmap
from .blender import blender_points, blender_views, is_blender_scene
from .cameras import Camera, qvec_to_rotmat
from .errors import SceneError, scene_error
from .images import (Undistorter, View, default_cache_dir, fit_intrinsics, needs_undistortion, read_image, resize,
                     target_size, to_float, undistorted_image)

log = logging.getLogger(__name__)

#: --eval holds out every LLFF_HOLD-th image (in name order, starting with the first) as the test split.
LLFF_HOLD = 8
#: The camera extent is the radius of the camera centres around their mean, times this margin.
EXTENT_MARGIN = 1.1
#: Threads that decode images (OpenCV releases the GIL while decoding).
LOAD_THREADS = min(4, os.cpu_count() or 1)
#: How many missing image names a message spells out before it summarises the rest.
MAX_LISTED_MISSING = 50

UNDISTORT_HINT = ("undistort the scene first with COLMAP: colmap image_undistorter --image_path <scene>/images "
                  "--input_path <scene>/sparse/0 --output_path <scene>_undistorted --output_type COLMAP, "
                  "then train on <scene>_undistorted")


class Scene:
    """Cameras with their images loaded (once) onto ``device``, the split, the initial points."""

    def __init__(self, source_path, *, images: str = "images", resolution: int = -1, eval: bool = False,
                 white_background: bool = False, device="cpu", cache_dir=None):
        source = Path(source_path)
        self.source_path = str(source_path)
        if not source.is_dir():
            raise scene_error(source, "scene folder not found")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(source)
        self.device = torch.device(device)
        self.white_background = white_background

        model_dir = find_colmap_model(source)
        if model_dir is not None:
            self.kind = "colmap"
            views, self.points, self.colors = colmap_views(source, model_dir, images, self.cache_dir)
        elif is_blender_scene(source):
            self.kind = "blender"
            views = blender_views(source, eval=eval, white_background=white_background)
            self.points, self.colors = blender_points(source)
        else:
            raise scene_error(source / "sparse" / "0", "no COLMAP model found (expected sparse/0/ with cameras, "
                                                       "images and points3D as .bin or .txt), and no "
                                                       "transforms_train.json for a Blender scene either")
        if not views:
            raise scene_error(source, "the scene has no images")
        _check_all_exist(views, source)
        views = sorted(views, key=lambda v: v.name)
        cameras = self._load(views, resolution)
        train, test = split_views(views, cameras, eval)
        self.train_cameras: List[Camera] = train
        self.test_cameras: List[Camera] = test
        self.extent = camera_extent(train if train else test)
        log.info("%s: %s scene, %d train / %d test cameras at %dx%d, %d initial points, extent %.3f",
                 source, self.kind, len(train), len(test), cameras[0].width, cameras[0].height, len(self.points),
                 self.extent)

    @property
    def point_colors(self) -> np.ndarray:
        """Alias of ``colors``."""
        return self.colors

    @property
    def cameras(self) -> List[Camera]:
        """All cameras, sorted by image name."""
        return sorted(self.train_cameras + self.test_cameras, key=lambda c: c.image_name)

    def _load(self, views: List[View], resolution: int) -> List[Camera]:
        warned = []

        def warn_once(message: str) -> None:
            if not warned:
                warned.append(message)
                log.warning(message)

        def load_one(item: Tuple[int, View]) -> Camera:
            uid, view = item
            image, cam = view.load()
            w, h = target_size(cam.width, cam.height, resolution, warn=warn_once)
            image = resize(image, w, h)
            cam = cam.scaled(w, h)
            cam.uid = uid
            tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
            if tensor.shape[0] == 4:
                alpha = tensor[3:4]
                cam.alpha_mask = alpha.contiguous().to(self.device)
                tensor = tensor[:3] * alpha  # the ground truth seen through the mask the render will get
            cam.image = tensor.contiguous().to(self.device)
            return cam

        items = list(enumerate(views))
        if LOAD_THREADS > 1 and len(items) > 1:
            with ThreadPoolExecutor(LOAD_THREADS) as pool:
                return list(pool.map(load_one, items))
        return [load_one(item) for item in items]


# ------------------------------------------------------------------------------------------------
# Rules shared by every scene kind
# ------------------------------------------------------------------------------------------------

def split_views(views: List[View], cameras: List[Camera], eval: bool) -> Tuple[List[Camera], List[Camera]]:
    """Train and test cameras.  Views that carry a split (Blender) keep it; the others (COLMAP)
    are all training views, or with ``eval`` every LLFF_HOLD-th in name order is a test view."""
    train, test = [], []
    for index, (view, cam) in enumerate(zip(views, cameras)):
        if view.split is not None:
            (test if view.split == "test" else train).append(cam)
        elif eval and index % LLFF_HOLD == 0:
            test.append(cam)
        else:
            train.append(cam)
    return train, test


def camera_extent(cameras: List[Camera]) -> float:
    """The 3DGS ``cameras_extent``: the largest distance of a camera centre from their mean, x 1.1."""
    centres = np.stack([c.camera_center_np for c in cameras])
    radius = float(np.linalg.norm(centres - centres.mean(axis=0), axis=1).max())
    return radius * EXTENT_MARGIN


def _check_all_exist(views: List[View], source: Path) -> None:
    missing = [v for v in views if not v.path.is_file()]
    if not missing:
        return
    folder = missing[0].path.parent
    names = [v.path.name if v.path.parent == folder else str(v.path.relative_to(source)) for v in missing]
    listed = ", ".join(names[:MAX_LISTED_MISSING])
    if len(names) > MAX_LISTED_MISSING:
        listed += f", ... and {len(names) - MAX_LISTED_MISSING} more"
    lister = missing[0].listed_in
    where = f"listed in {lister}" if lister is not None else "listed by the scene"
    raise scene_error(folder, f"{len(missing)} of {len(views)} images {where} are missing: {listed}")


# ------------------------------------------------------------------------------------------------
# COLMAP
# ------------------------------------------------------------------------------------------------

def find_colmap_model(source: Path) -> Optional[Path]:
    """``sparse/0`` (or ``sparse`` itself when it holds the model files), or None."""
    sparse = source / "sparse"
    if (sparse / "0").is_dir():
        return sparse / "0"
    if sparse.is_dir() and any((sparse / f"cameras.{ext}").is_file() for ext in ("bin", "txt")):
        return sparse
    return None


def colmap_views(source: Path, model_dir: Path, images: str, cache_dir: Path):
    """Views and initial point cloud of a COLMAP scene."""
    model = colmap.read_model(model_dir)
    fmt = model.format
    cameras_file = model_dir / f"cameras.{fmt}"
    images_file = model_dir / f"images.{fmt}"
    if not model.cameras:
        raise scene_error(cameras_file, "empty model: no cameras")
    if not model.images:
        raise scene_error(images_file, "empty model: no registered images")
    if len(model.points) == 0:
        raise scene_error(model_dir / f"points3D.{fmt}", "empty model: no 3D points to initialise the Gaussians from")
    for cam in model.cameras.values():
        if colmap.CAMERA_MODEL_BY_NAME[cam.model].handling == "unsupported":
            raise scene_error(cameras_file, f"camera {cam.camera_id} uses the {cam.model} model, which is not "
                                            f"undistorted on load; {UNDISTORT_HINT}")
    image_dir = source / images
    if not image_dir.is_dir():
        raise scene_error(image_dir, f"image folder not found (the -i/--images folder, {images!r}, must sit in "
                                     f"the scene folder)")
    undistorters: Dict[Tuple[int, int, int], Undistorter] = {}

    def undistorter_cached(cam: colmap.ColmapCamera, w: int, h: int) -> Undistorter:
        key = (cam.camera_id, w, h)
        if key not in undistorters:
            undistorters[key] = Undistorter.for_camera(scale_colmap_camera(cam, w, h))
        return undistorters[key]

    views = []
    for img in model.images.values():
        cam = model.cameras[img.camera_id]
        R = qvec_to_rotmat(img.qvec / np.linalg.norm(img.qvec))
        t = np.asarray(img.tvec, np.float64)
        path = image_dir / img.name

        def load(img=img, cam=cam, R=R, t=t, path=path):
            if needs_undistortion(cam):
                def undistorter_for(w, h, cam=cam, path=path):
                    fit_intrinsics(cam.width, cam.height, w, h, path, cameras_file.name, cam.camera_id)
                    return undistorter_cached(cam, w, h)
                raw, und = undistorted_image(path, undistorter_for, cache_dir, (cam.width, cam.height))
                image = to_float(raw)
                fx, fy, cx, cy = und.pinhole()
            else:
                image = to_float(read_image(path))
                h, w = image.shape[:2]
                scale = fit_intrinsics(cam.width, cam.height, w, h, path, cameras_file.name, cam.camera_id)
                fx, fy, cx, cy = (v / scale for v in pinhole_params(cam))
            h, w = image.shape[:2]
            return image, Camera(img.image_id, img.name, w, h, fx, fy, cx, cy, R, t)

        views.append(View(img.name, path, load, listed_in=images_file))
    distorted = sorted({model.cameras[img.camera_id].model for img in model.images.values()
                        if needs_undistortion(model.cameras[img.camera_id])})
    if distorted:
        count = sum(needs_undistortion(model.cameras[img.camera_id]) for img in model.images.values())
        where = f"cached in {Path(cache_dir) / 'undistorted'}" if cache_dir is not None else "not cached"
        log.info("%s: %d of %d images come from distorted cameras (%s): undistorting them to pinhole cameras "
                 "on load with OpenCV (%s)", source, count, len(model.images), ", ".join(distorted), where)
    points = model.points.xyz.astype(np.float32)
    colors = model.points.rgb.astype(np.float32) / 255.0
    return views, points, colors


def pinhole_params(cam: colmap.ColmapCamera) -> Tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of a camera used as a pinhole (distortion, if any, ignored)."""
    p = cam.params
    if cam.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        return float(p[0]), float(p[0]), float(p[1]), float(p[2])
    return float(p[0]), float(p[1]), float(p[2]), float(p[3])


def scale_colmap_camera(cam: colmap.ColmapCamera, width: int, height: int) -> colmap.ColmapCamera:
    """The same perspective camera for an image of width x height (focal and principal point scaled;
    distortion coefficients act on normalised coordinates and stay)."""
    if (width, height) == (cam.width, cam.height):
        return cam
    s = cam.width / width
    params = np.array(cam.params, np.float64)
    n_intrinsic = 3 if cam.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL") else 4
    params[:n_intrinsic] /= s
    return colmap.ColmapCamera(cam.camera_id, cam.model, width, height, params)


__all__ = ["Scene", "SceneError", "LLFF_HOLD", "EXTENT_MARGIN", "split_views", "camera_extent", "find_colmap_model",
           "colmap_views"]
