"""Image files: reading, the resolution rule, and OpenCV undistortion of distorted COLMAP cameras.

Pixel conventions: COLMAP puts the centre of the top-left pixel at (0.5, 0.5); OpenCV (and numpy
indexing) puts it at (0, 0).  Every conversion between the two happens here, in
:func:`opencv_intrinsics` and :meth:`Undistorter.pinhole`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

import cv2
import numpy as np

from .colmap import CAMERA_MODEL_BY_NAME, ColmapCamera
from .errors import scene_error

log = logging.getLogger(__name__)

#: The original trainer's -r -1 rule: images wider than this are shrunk to this width.
MAX_AUTO_WIDTH = 1600
#: -r values read as downscale factors; any other positive value is a target width.
DOWNSCALE_FACTORS = (1, 2, 4, 8)


# ------------------------------------------------------------------------------------------------
# Reading and resizing
# ------------------------------------------------------------------------------------------------

def read_image(path: "os.PathLike | str") -> np.ndarray:
    """The file as stored: [H, W, C] uint8 or uint16 with C in (3, 4), RGB(A) channel order."""
    path = Path(path)
    if not path.is_file():
        raise scene_error(path, "image file not found")
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise scene_error(path, "cannot be decoded as an image (corrupted or unsupported format)")
    if raw.dtype not in (np.uint8, np.uint16):
        raise scene_error(path, f"unsupported pixel type {raw.dtype} (8- or 16-bit images only)")
    if raw.ndim == 2:
        raw = raw[..., None]
    channels = raw.shape[2]
    if channels == 1:
        return np.repeat(raw, 3, axis=2)
    if channels == 2:  # grey + alpha
        return np.concatenate([np.repeat(raw[..., :1], 3, axis=2), raw[..., 1:]], axis=2)
    if channels == 3:
        return raw[..., ::-1].copy()
    if channels == 4:
        return raw[..., [2, 1, 0, 3]].copy()
    raise scene_error(path, f"unsupported number of channels {channels}")


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8/uint16 [H, W, C] -> float32 in [0, 1]."""
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    return image.astype(np.float32) / scale


def target_size(width: int, height: int, resolution: int, *, warn=None) -> Tuple[int, int]:
    """The original 3DGS rule for ``-r/--resolution``.

    -1: keep the size, but shrink to MAX_AUTO_WIDTH wide when wider (``warn`` is called with a
    message then); 1, 2, 4, 8: divide both sides by that factor (rounded); any other positive
    value: that target width, height in proportion.
    """
    if resolution in DOWNSCALE_FACTORS:
        return max(1, round(width / resolution)), max(1, round(height / resolution))
    if resolution == -1:
        if width <= MAX_AUTO_WIDTH:
            return width, height
        if warn is not None:
            warn(f"input images are {width} px wide (> {MAX_AUTO_WIDTH}); rescaling them to {MAX_AUTO_WIDTH} px "
                 f"wide. Pass -r 1 to keep the full size, or -r <width> to choose.")
        scale = width / MAX_AUTO_WIDTH
    elif resolution > 0:
        scale = width / resolution
    else:
        raise ValueError(f"resolution must be -1, 1, 2, 4, 8 or a target width in pixels, got {resolution}")
    return max(1, int(width / scale)), max(1, int(height / scale))


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrinking = width < image.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    out = cv2.resize(image, (width, height), interpolation=interp)
    return out if out.ndim == 3 else out[..., None]


# ------------------------------------------------------------------------------------------------
# Undistortion
# ------------------------------------------------------------------------------------------------

def opencv_intrinsics(cam: ColmapCamera) -> Tuple[np.ndarray, np.ndarray]:
    """(K [3, 3], distortion coefficients [8]) of a pinhole or distorted perspective COLMAP camera,
    in OpenCV's pixel convention (principal point shifted by -0.5) and coefficient order
    (k1, k2, p1, p2, k3, k4, k5, k6)."""
    p = np.asarray(cam.params, np.float64)
    dist = np.zeros(8)
    model = cam.model
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        fx = fy = p[0]
        cx, cy = p[1], p[2]
        if model == "SIMPLE_RADIAL":
            dist[0] = p[3]
        elif model == "RADIAL":
            dist[0], dist[1] = p[3], p[4]
    elif model in ("PINHOLE", "OPENCV", "FULL_OPENCV"):
        fx, fy, cx, cy = p[:4]
        if model == "OPENCV":
            dist[:4] = p[4:8]
        elif model == "FULL_OPENCV":
            dist[:] = p[4:12]  # COLMAP's k1 k2 p1 p2 k3 k4 k5 k6 is OpenCV's rational model, same order
    else:
        raise ValueError(f"{model} is not a pinhole or OpenCV-style perspective model")
    k = np.array([[fx, 0.0, cx - 0.5], [0.0, fy, cy - 0.5], [0.0, 0.0, 1.0]])
    return k, dist


def needs_undistortion(cam: ColmapCamera) -> bool:
    handling = CAMERA_MODEL_BY_NAME[cam.model].handling
    if handling == "pinhole":
        return False
    if handling == "distorted":
        return bool(np.any(opencv_intrinsics(cam)[1] != 0))
    raise ValueError(f"{cam.model} cannot be undistorted here")


@dataclass
class Undistorter:
    """Maps the images of one distorted camera to a pinhole camera of the same size.

    The new camera is OpenCV's optimal one with every output pixel valid (alpha = 0) and the
    principal point centred.
    """

    source: ColmapCamera
    k_new: np.ndarray     # [3, 3], OpenCV convention
    map_x: np.ndarray     # [H, W] float32, source x (OpenCV convention) of each output pixel
    map_y: np.ndarray

    @staticmethod
    def for_camera(cam: ColmapCamera) -> "Undistorter":
        k, dist = opencv_intrinsics(cam)
        size = (cam.width, cam.height)
        k_new, _ = cv2.getOptimalNewCameraMatrix(k, dist, size, 0.0, size, centerPrincipalPoint=True)
        map_x, map_y = cv2.initUndistortRectifyMap(k, dist, None, k_new, size, cv2.CV_32FC1)
        return Undistorter(cam, k_new, map_x, map_y)

    def pinhole(self) -> Tuple[float, float, float, float]:
        """(fx, fy, cx, cy) of the undistorted camera, COLMAP convention."""
        k = self.k_new
        return float(k[0, 0]), float(k[1, 1]), float(k[0, 2] + 0.5), float(k[1, 2] + 0.5)

    def key(self) -> str:
        """Identifies the mapping (model, size, parameters) for cache folders."""
        text = f"{self.source.model} {self.source.width} {self.source.height} {self.source.params.tolist()}"
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Undistort an [H, W, C] image (any dtype OpenCV's remap takes), bilinear."""
        out = cv2.remap(image, self.map_x, self.map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return out if out.ndim == 3 else out[..., None]


def default_cache_dir(source_path: "os.PathLike | str") -> Path:
    """A per-scene folder in the user's cache (never inside the scene itself)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distwar-gs"
    tag = hashlib.sha1(str(Path(source_path).resolve()).encode()).hexdigest()[:16]
    return base / f"{Path(source_path).resolve().name}-{tag}"


def undistorted_image(path: Path, undistorter_for, cache_dir: Optional[Path], expected_size: Tuple[int, int]):
    """The undistorted image (as stored: uint8/uint16 RGB(A)) and its Undistorter.

    ``undistorter_for(w, h)`` gives the Undistorter for a source image of that size, after checking
    that size against the camera.  A fresh cached copy (written by an earlier run into
    ``cache_dir/undistorted/<mapping key>/``) is used when there is one.
    """
    undistorter = undistorter_for(*expected_size)
    cached = _cache_file(cache_dir, undistorter, path)
    if cached is not None:
        try:
            if cached.stat().st_mtime >= path.stat().st_mtime:
                arr = cv2.imread(str(cached), cv2.IMREAD_UNCHANGED)
                if arr is not None and arr.ndim == 3 and arr.shape[1::-1] == tuple(expected_size):
                    return arr[..., [2, 1, 0, 3][:arr.shape[2]]].copy(), undistorter
        except FileNotFoundError:
            pass
    image = read_image(path)
    size = (image.shape[1], image.shape[0])
    if size != tuple(expected_size):
        undistorter = undistorter_for(*size)
        cached = _cache_file(cache_dir, undistorter, path)
    out = undistorter.apply(image)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(cached.stem + f".{os.getpid()}.tmp.png")
            if not cv2.imwrite(str(tmp), np.ascontiguousarray(out[..., [2, 1, 0, 3][:out.shape[2]]])):
                raise OSError("cv2.imwrite failed")
            os.replace(tmp, cached)
        except OSError as err:
            log.warning("could not cache the undistorted image %s (%s); continuing without the cache", cached, err)
    return out, undistorter


def _cache_file(cache_dir: Optional[Path], undistorter: Undistorter, path: Path) -> Optional[Path]:
    if cache_dir is None:
        return None
    # x.png is cached as x.png; other formats keep their name and gain .png (x.jpg.png), so no two collide
    name = path.name if path.suffix.lower() == ".png" else path.name + ".png"
    return Path(cache_dir) / "undistorted" / undistorter.key() / name


# ------------------------------------------------------------------------------------------------
# One view of a scene, before its image is loaded
# ------------------------------------------------------------------------------------------------

@dataclass
class View:
    """A view as a reader describes it.

    ``load()`` returns ``(image, camera)``: the image as float32 [H, W, C] in [0, 1] (C = 3, or 4
    with alpha) at its stored (undistorted) size, and the pinhole Camera (no image attached) whose
    intrinsics match that size.  ``split`` is "train", "test", or None where the scene rule decides.
    """

    name: str
    path: Path
    load: Callable[[], Tuple[np.ndarray, "object"]]
    split: Optional[str] = None
    listed_in: Optional[Path] = None  # the file that lists this view (for error messages)


def fit_intrinsics(cam_w: int, cam_h: int, img_w: int, img_h: int, image_path: Path, camera_file: str,
                   camera_id) -> Optional[float]:
    """The factor by which an image is smaller than its camera, or a SceneError.

    Equal sizes give 1.  A uniformly downscaled copy (as in the original trainer's ``-i images_4``)
    gives its factor, the height agreeing to within a pixel of rounding.  Anything else is an error.
    """
    if (img_w, img_h) == (cam_w, cam_h):
        return 1.0
    scale = cam_w / img_w
    if scale > 1.0 and abs(cam_h / scale - img_h) <= 1.0:
        return scale
    raise scene_error(image_path, f"image is {img_w}x{img_h} but camera {camera_id} in {camera_file} is "
                                  f"{cam_w}x{cam_h} (sizes must match, or be a uniformly downscaled copy)")
