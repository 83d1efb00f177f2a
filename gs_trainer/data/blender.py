"""NeRF-synthetic ("Blender") scenes: ``transforms_train.json`` and ``transforms_test.json``.

Each file holds ``camera_angle_x`` (horizontal field of view, radians) and ``frames``, each with a
``file_path`` (relative to the scene, extension optional, ".png" assumed) and a camera-to-world
``transform_matrix`` in OpenGL/Blender axes (x right, y up, z backward).  Flipping the y and z
camera axes gives the OpenCV/COLMAP axes the rasterizer uses.  Per-file ``fl_x``/``fl_y``/``cx``/
``cy``/``w``/``h`` (instant-ngp style) are honoured where present.

RGBA images are composited on the background (white or black), as the original trainer does, so no
alpha mask is kept: the ground truth already shows the background the renderer will add.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import List, Tuple

import numpy as np

from .cameras import Camera
from .errors import scene_error
from .images import View, fit_intrinsics, read_image, to_float

log = logging.getLogger(__name__)

#: The original trainer's random initialisation for synthetic scenes: this many points ...
RANDOM_POINTS = 100_000
#: ... uniform in the cube [-RANDOM_HALF_SIZE, RANDOM_HALF_SIZE]^3, which holds the NeRF-synthetic objects.
RANDOM_HALF_SIZE = 1.3
RANDOM_SEED = 0

# OpenGL camera axes (y up, z backward) -> OpenCV (y down, z forward).
_GL_TO_CV = np.diag([1.0, -1.0, -1.0])


def is_blender_scene(source: Path) -> bool:
    return (source / "transforms_train.json").is_file()


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise scene_error(path, "file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise scene_error(path, f"not valid JSON ({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise scene_error(path, "expected an object with a 'frames' list")
    return meta


def _frame_pose(path: Path, index: int, frame: dict) -> Tuple[np.ndarray, np.ndarray]:
    try:
        c2w = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise scene_error(path, f"frame {index} has no valid 'transform_matrix'") from None
    if c2w.shape != (4, 4) or not np.all(np.isfinite(c2w)):
        raise scene_error(path, f"frame {index}: 'transform_matrix' must be a finite 4x4 matrix, got shape "
                                f"{c2w.shape}")
    rot_c2w = c2w[:3, :3] @ _GL_TO_CV
    if abs(np.linalg.det(rot_c2w) - 1.0) > 1e-3:
        raise scene_error(path, f"frame {index}: the rotation part of 'transform_matrix' is not a rotation "
                                f"(det {np.linalg.det(rot_c2w):.4f})")
    R = rot_c2w.T
    t = -R @ c2w[:3, 3]
    return R, t


def _image_path(source: Path, file_path: str) -> Path:
    path = source / file_path
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".exr", ".tif", ".tiff", ".bmp"):
        return path
    return path.with_name(path.name + ".png")


def _intrinsics(meta: dict, frame: dict, width: int, height: int, json_path: Path, index: int):
    """(fx, fy, cx, cy) for an image of width x height, from the frame or file-level fields."""
    def get(key):
        return frame.get(key, meta.get(key))
    try:
        ref_w, ref_h = float(get("w") or width), float(get("h") or height)
        sx, sy = width / ref_w, height / ref_h
        if get("fl_x") is not None:
            fx = float(get("fl_x")) * sx
            fy = float(get("fl_y") if get("fl_y") is not None else get("fl_x")) * sy
        elif get("camera_angle_x") is not None:
            fx = width / (2.0 * math.tan(float(get("camera_angle_x")) / 2.0))
            fy = (height / (2.0 * math.tan(float(get("camera_angle_y")) / 2.0))
                  if get("camera_angle_y") is not None else fx)
        else:
            raise scene_error(json_path, f"frame {index}: no 'camera_angle_x' (or 'fl_x') for the field of view")
        cx = float(get("cx")) * sx if get("cx") is not None else width / 2.0
        cy = float(get("cy")) * sy if get("cy") is not None else height / 2.0
    except (TypeError, ValueError) as err:
        raise scene_error(json_path, f"frame {index}: bad intrinsics ({err})") from None
    if not (fx > 0 and fy > 0 and math.isfinite(fx) and math.isfinite(fy)):
        raise scene_error(json_path, f"frame {index}: focal length must be positive, got fx={fx}, fy={fy}")
    return fx, fy, cx, cy


def blender_views(source: Path, *, eval: bool, white_background: bool) -> List[View]:
    """Views of transforms_train.json (split "train") and transforms_test.json (split "test" with
    ``eval``; without it the test views are trained on too, as in the original trainer)."""
    files = [("train", source / "transforms_train.json")]
    test_json = source / "transforms_test.json"
    if test_json.is_file():
        files.append(("test" if eval else "train", test_json))
    elif eval:
        raise scene_error(test_json, "file not found (needed for --eval on a Blender scene)")
    bg = np.array([1.0, 1.0, 1.0] if white_background else [0.0, 0.0, 0.0], np.float32)
    views: List[View] = []
    for split, json_path in files:
        meta = _load_json(json_path)
        for index, frame in enumerate(meta["frames"]):
            if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
                raise scene_error(json_path, f"frame {index} has no 'file_path'")
            path = _image_path(source, frame["file_path"])
            R, t = _frame_pose(json_path, index, frame)
            name = path.relative_to(source).with_suffix("").as_posix()
            if name.startswith("./"):
                name = name[2:]

            def load(path=path, name=name, R=R, t=t, meta=meta, frame=frame, index=index, json_path=json_path):
                raw = read_image(path)
                img = to_float(raw)
                h, w = img.shape[:2]
                fit_intrinsics(int(meta.get("w") or w), int(meta.get("h") or h), w, h, path, json_path.name, index)
                fx, fy, cx, cy = _intrinsics(meta, frame, w, h, json_path, index)
                if img.shape[2] == 4:
                    alpha = img[..., 3:4]
                    img = img[..., :3] * alpha + bg * (1.0 - alpha)
                return img, Camera(0, name, w, h, fx, fy, cx, cy, R, t)

            views.append(View(name, path, load, split, listed_in=json_path))
    return views


def blender_points(source: Path) -> Tuple[np.ndarray, np.ndarray]:
    """``points3d.ply`` of the scene if there is one, else the original's random cube of points."""
    ply = source / "points3d.ply"
    if ply.is_file():
        return read_point_ply(ply)
    log.info("%s: no points3d.ply; starting from %d random points in [-%.1f, %.1f]^3", source, RANDOM_POINTS,
             RANDOM_HALF_SIZE, RANDOM_HALF_SIZE)
    return random_points(RANDOM_POINTS, RANDOM_HALF_SIZE, RANDOM_SEED)


def random_points(count: int, half_size: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-half_size, half_size, (count, 3)).astype(np.float32)
    rgb = rng.uniform(0.0, 1.0, (count, 3)).astype(np.float32)
    return xyz, rgb


def read_point_ply(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """x, y, z and (optional) red, green, blue of a point-cloud PLY -> float32 [P, 3] each, colours in [0, 1]."""
    from plyfile import PlyData

    try:
        vertex = PlyData.read(str(path))["vertex"]
        xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float32)
    except Exception as err:  # noqa: BLE001 - plyfile raises many kinds; the message names the file
        raise scene_error(path, f"cannot be read as a point cloud PLY ({type(err).__name__}: {err})") from None
    names = vertex.data.dtype.names
    if all(c in names for c in ("red", "green", "blue")):
        rgb = np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1).astype(np.float32) / 255.0
    else:
        rgb = np.full_like(xyz, 0.5)
    if not np.all(np.isfinite(xyz)):
        raise scene_error(path, "point cloud has non-finite coordinates")
    return xyz, rgb
