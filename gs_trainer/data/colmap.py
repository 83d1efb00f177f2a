"""COLMAP sparse models: read and write cameras, images and points3D, binary and text.

The format is COLMAP's own (``src/colmap/scene/reconstruction_io.cc``): little-endian binary files
``cameras.bin``, ``images.bin``, ``points3D.bin``, or their ``.txt`` twins.  COLMAP 4 adds
``rigs.*`` and ``frames.*`` next to them; those are accepted and ignored (every image is treated
as its own frame, which is what a single-sensor capture is).

Every problem with the input raises :class:`SceneError` with a one-line message that names the
file (and, for text files, the line) and says what is wrong.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, NamedTuple, Optional

import numpy as np

from .errors import SceneError, scene_error

log = logging.getLogger(__name__)

MODEL_FILES = ("cameras", "images", "points3D")


class CameraModel(NamedTuple):
    model_id: int
    name: str
    num_params: int
    #: "pinhole": used as is; "distorted": undistorted on load with OpenCV;
    #: "unsupported": fisheye and other non-perspective models, to be undistorted with COLMAP first.
    handling: str


CAMERA_MODELS = (
    CameraModel(0, "SIMPLE_PINHOLE", 3, "pinhole"),
    CameraModel(1, "PINHOLE", 4, "pinhole"),
    CameraModel(2, "SIMPLE_RADIAL", 4, "distorted"),
    CameraModel(3, "RADIAL", 5, "distorted"),
    CameraModel(4, "OPENCV", 8, "distorted"),
    CameraModel(5, "OPENCV_FISHEYE", 8, "unsupported"),
    CameraModel(6, "FULL_OPENCV", 12, "distorted"),
    CameraModel(7, "FOV", 5, "unsupported"),
    CameraModel(8, "SIMPLE_RADIAL_FISHEYE", 4, "unsupported"),
    CameraModel(9, "RADIAL_FISHEYE", 5, "unsupported"),
    CameraModel(10, "THIN_PRISM_FISHEYE", 12, "unsupported"),
    CameraModel(11, "RAD_TAN_THIN_PRISM_FISHEYE", 16, "unsupported"),
    CameraModel(12, "SIMPLE_DIVISION", 4, "unsupported"),
    CameraModel(13, "DIVISION", 5, "unsupported"),
    CameraModel(14, "SIMPLE_FISHEYE", 3, "unsupported"),
    CameraModel(15, "FISHEYE", 4, "unsupported"),
    CameraModel(16, "EUCM", 6, "unsupported"),
    CameraModel(17, "EQUIRECTANGULAR", 2, "unsupported"),
)
CAMERA_MODEL_BY_ID: Dict[int, CameraModel] = {m.model_id: m for m in CAMERA_MODELS}
CAMERA_MODEL_BY_NAME: Dict[str, CameraModel] = {m.name: m for m in CAMERA_MODELS}

INVALID_POINT3D_ID = -1  # COLMAP writes uint64(-1) for a 2D point without a 3D point


@dataclass
class ColmapCamera:
    camera_id: int
    model: str           # a key of CAMERA_MODEL_BY_NAME
    width: int
    height: int
    params: np.ndarray   # [num_params] float64, in COLMAP's order for the model

    @property
    def model_id(self) -> int:
        return CAMERA_MODEL_BY_NAME[self.model].model_id


@dataclass
class ColmapImage:
    image_id: int
    qvec: np.ndarray          # [4] float64, world-to-camera rotation (w, x, y, z)
    tvec: np.ndarray          # [3] float64, world-to-camera translation
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))                  # [N, 2] float64
    point3D_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))    # [N] int64, -1 = none


@dataclass
class ColmapPoints:
    """All 3D points, as arrays.  Point i's track is ``track_image_ids[off[i]:off[i+1]]`` (and the
    matching ``track_point2D_idxs``), where ``off = track_offsets``."""

    ids: np.ndarray                 # [P] int64
    xyz: np.ndarray                 # [P, 3] float64
    rgb: np.ndarray                 # [P, 3] uint8
    errors: np.ndarray              # [P] float64, mean reprojection error in pixels
    track_lengths: np.ndarray       # [P] int64
    track_image_ids: np.ndarray     # [T] int64
    track_point2D_idxs: np.ndarray  # [T] int64

    @staticmethod
    def empty() -> "ColmapPoints":
        z = np.zeros(0, np.int64)
        return ColmapPoints(z, np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0), z, z, z)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def track_offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.track_lengths)]).astype(np.int64)


@dataclass
class ColmapModel:
    cameras: Dict[int, ColmapCamera]
    images: Dict[int, ColmapImage]
    points: ColmapPoints
    path: Optional[Path] = None
    format: str = "bin"


# ------------------------------------------------------------------------------------------------
# Finding the model
# ------------------------------------------------------------------------------------------------

def detect_model_format(model_dir: "os.PathLike | str") -> str:
    """"bin" or "txt", from the files present; SceneError when neither set is complete."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise scene_error(model_dir, "COLMAP model folder not found")
    for ext in ("bin", "txt"):
        if all((model_dir / f"{name}.{ext}").is_file() for name in MODEL_FILES):
            return ext
    for ext in ("bin", "txt"):
        present = [n for n in MODEL_FILES if (model_dir / f"{n}.{ext}").is_file()]
        if present:
            missing = [f"{n}.{ext}" for n in MODEL_FILES if n not in present]
            raise scene_error(model_dir, f"incomplete COLMAP model: missing {', '.join(missing)}")
    raise scene_error(model_dir, "no COLMAP model here (expected cameras, images and points3D as .bin or .txt)")


def read_model(model_dir: "os.PathLike | str", fmt: Optional[str] = None) -> ColmapModel:
    """Read a sparse model folder (format detected unless ``fmt`` is "bin" or "txt") and check that
    every image refers to a known camera."""
    model_dir = Path(model_dir)
    fmt = fmt or detect_model_format(model_dir)
    if fmt == "bin":
        cameras = read_cameras_binary(model_dir / "cameras.bin")
        images = read_images_binary(model_dir / "images.bin")
        points = read_points3D_binary(model_dir / "points3D.bin")
    elif fmt == "txt":
        cameras = read_cameras_text(model_dir / "cameras.txt")
        images = read_images_text(model_dir / "images.txt")
        points = read_points3D_text(model_dir / "points3D.txt")
    else:
        raise ValueError(f"unknown COLMAP model format {fmt!r} (use 'bin' or 'txt')")
    images_file = model_dir / f"images.{fmt}"
    for img in images.values():
        if img.camera_id not in cameras:
            raise scene_error(images_file, f"image {img.image_id} ({img.name}) refers to camera "
                                           f"{img.camera_id}, which cameras.{fmt} does not define")
    return ColmapModel(cameras, images, points, model_dir, fmt)


def write_model(model: ColmapModel, model_dir: "os.PathLike | str", fmt: str = "bin") -> None:
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "bin":
        write_cameras_binary(model.cameras, model_dir / "cameras.bin")
        write_images_binary(model.images, model_dir / "images.bin")
        write_points3D_binary(model.points, model_dir / "points3D.bin")
    elif fmt == "txt":
        write_cameras_text(model.cameras, model_dir / "cameras.txt")
        write_images_text(model.images, model_dir / "images.txt")
        write_points3D_text(model.points, model_dir / "points3D.txt")
    else:
        raise ValueError(f"unknown COLMAP model format {fmt!r} (use 'bin' or 'txt')")


# ------------------------------------------------------------------------------------------------
# Binary
# ------------------------------------------------------------------------------------------------

class _Reader:
    """Bounds-checked little-endian reads over a whole file's bytes."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = path.read_bytes()
        except FileNotFoundError:
            raise scene_error(path, "file not found") from None
        except OSError as err:
            raise scene_error(path, f"cannot be read ({err.strerror or err})") from None
        self.pos = 0

    def need(self, nbytes: int, what: str) -> None:
        if self.pos + nbytes > len(self.data):
            raise scene_error(self.path, f"truncated or corrupted: {what} needs {nbytes} bytes at offset "
                                         f"{self.pos}, but the file has only {len(self.data)} bytes")

    def unpack(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        self.need(size, what)
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def array(self, dtype, count: int, what: str) -> np.ndarray:
        dtype = np.dtype(dtype)
        self.need(dtype.itemsize * count, what)
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += dtype.itemsize * count
        return out

    def count(self, what: str, min_record_bytes: int) -> int:
        (n,) = self.unpack("<Q", f"the number of {what}")
        remaining = len(self.data) - self.pos
        if n * min_record_bytes > remaining:
            raise scene_error(self.path, f"truncated or corrupted: says {n} {what} but only {remaining} bytes follow "
                                         f"(at least {min_record_bytes} per entry)")
        return n

    def finish(self) -> None:
        extra = len(self.data) - self.pos
        if extra:
            raise scene_error(self.path, f"corrupted: {extra} unexpected bytes after the last record "
                                         f"(offset {self.pos})")


def _camera_model(path, camera_id, model_id=None, name=None) -> CameraModel:
    model = CAMERA_MODEL_BY_ID.get(model_id) if name is None else CAMERA_MODEL_BY_NAME.get(name)
    if model is None:
        what = f"id {model_id}" if name is None else f"{name!r}"
        known = f"ids 0-{len(CAMERA_MODELS) - 1}, names as in COLMAP's cameras.txt"
        raise scene_error(path, f"camera {camera_id}: unknown camera model {what} (known: {known})")
    return model


def _check_camera(path, cam: ColmapCamera) -> ColmapCamera:
    if cam.width <= 0 or cam.height <= 0 or cam.width > 1 << 20 or cam.height > 1 << 20:
        raise scene_error(path, f"camera {cam.camera_id}: implausible image size {cam.width}x{cam.height}")
    if not np.all(np.isfinite(cam.params)):
        raise scene_error(path, f"camera {cam.camera_id}: non-finite parameters {cam.params.tolist()}")
    return cam


def read_cameras_binary(path: "os.PathLike | str") -> Dict[int, ColmapCamera]:
    r = _Reader(Path(path))
    n = r.count("cameras", 24)
    cameras = {}
    for _ in range(n):
        camera_id, model_id, width, height = r.unpack("<IiQQ", "a camera record")
        model = _camera_model(r.path, camera_id, model_id=model_id)
        params = r.array("<f8", model.num_params, f"camera {camera_id}'s {model.name} parameters").astype(np.float64)
        cameras[camera_id] = _check_camera(r.path, ColmapCamera(camera_id, model.name, width, height, params))
    r.finish()
    return cameras


_IMAGE_HEAD = struct.Struct("<I4d3dI")
_POINT2D = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])


def read_images_binary(path: "os.PathLike | str") -> Dict[int, ColmapImage]:
    r = _Reader(Path(path))
    n = r.count("images", _IMAGE_HEAD.size + 2 + 8)
    images = {}
    for _ in range(n):
        head = r.unpack(_IMAGE_HEAD.format, "an image record")
        image_id, qvec, tvec, camera_id = head[0], np.array(head[1:5]), np.array(head[5:8]), head[8]
        end = r.data.find(b"\0", r.pos)
        if end < 0:
            raise scene_error(r.path, f"truncated or corrupted: image {image_id}'s name has no terminating zero byte")
        try:
            name = r.data[r.pos:end].decode("utf-8")
        except UnicodeDecodeError:
            raise scene_error(r.path, f"corrupted: image {image_id}'s name is not valid UTF-8") from None
        if not name:
            raise scene_error(r.path, f"corrupted: image {image_id} has an empty name")
        r.pos = end + 1
        (num_points,) = r.unpack("<Q", f"image {image_id}'s number of 2D points")
        pts = r.array(_POINT2D, num_points, f"image {image_id}'s {num_points} 2D points")
        if not (np.all(np.isfinite(qvec)) and np.all(np.isfinite(tvec)) and np.linalg.norm(qvec) > 1e-6):
            raise scene_error(r.path, f"corrupted: image {image_id} ({name}) has an invalid pose "
                                      f"q={qvec.tolist()} t={tvec.tolist()}")
        xys = np.stack([pts["x"], pts["y"]], axis=1).astype(np.float64)
        images[image_id] = ColmapImage(image_id, qvec, tvec, camera_id, name, xys, pts["id"].astype(np.int64))
    r.finish()
    return images


_POINT_HEAD = np.dtype([("id", "<u8"), ("xyz", "<f8", 3), ("rgb", "u1", 3), ("error", "<f8"), ("len", "<u8")])


def read_points3D_binary(path: "os.PathLike | str") -> ColmapPoints:
    r = _Reader(Path(path))
    head_size = _POINT_HEAD.itemsize
    n = r.count("3D points", head_size)
    data = r.data
    starts = np.empty(n, np.int64)
    lengths = np.empty(n, np.int64)
    pos = r.pos
    size = len(data)
    for i in range(n):
        if pos + head_size > size:
            r.pos = pos
            r.need(head_size, f"3D point record {i}")
        (length,) = struct.unpack_from("<Q", data, pos + head_size - 8)
        if length > (size - pos - head_size) // 8:
            r.pos = pos + head_size
            r.need(8 * length, f"3D point record {i}'s track of {length} observations")
        starts[i] = pos
        lengths[i] = length
        pos += head_size + 8 * length
    r.pos = pos
    r.finish()
    raw = np.frombuffer(data, np.uint8)
    heads = raw[(starts[:, None] + np.arange(head_size)[None, :])].copy().view(_POINT_HEAD).reshape(n)
    total = int(lengths.sum())
    if total:
        track_start = np.repeat(starts + head_size, lengths) + 8 * (np.arange(total) - np.repeat(
            np.cumsum(lengths) - lengths, lengths))
        track = raw[track_start[:, None] + np.arange(8)[None, :]].copy().view("<u4").reshape(total, 2)
    else:
        track = np.zeros((0, 2), np.uint32)
    points = ColmapPoints(heads["id"].astype(np.int64), heads["xyz"].astype(np.float64), heads["rgb"].astype(np.uint8),
                          heads["error"].astype(np.float64), lengths, track[:, 0].astype(np.int64),
                          track[:, 1].astype(np.int64))
    if not np.all(np.isfinite(points.xyz)):
        bad = int(points.ids[~np.all(np.isfinite(points.xyz), axis=1)][0])
        raise scene_error(r.path, f"corrupted: 3D point {bad} has non-finite coordinates")
    return points


def write_cameras_binary(cameras: Dict[int, ColmapCamera], path: "os.PathLike | str") -> None:
    out = [struct.pack("<Q", len(cameras))]
    for cam in cameras.values():
        params = np.asarray(cam.params, "<f8")
        if len(params) != CAMERA_MODEL_BY_NAME[cam.model].num_params:
            raise ValueError(f"camera {cam.camera_id}: {cam.model} takes "
                             f"{CAMERA_MODEL_BY_NAME[cam.model].num_params} parameters, got {len(params)}")
        out.append(struct.pack("<IiQQ", cam.camera_id, cam.model_id, cam.width, cam.height))
        out.append(params.tobytes())
    _atomic_write(Path(path), b"".join(out))


def write_images_binary(images: Dict[int, ColmapImage], path: "os.PathLike | str") -> None:
    out = [struct.pack("<Q", len(images))]
    for img in images.values():
        out.append(_IMAGE_HEAD.pack(img.image_id, *np.asarray(img.qvec, float), *np.asarray(img.tvec, float),
                                    img.camera_id))
        out.append(img.name.encode("utf-8") + b"\0")
        pts = np.zeros(len(img.point3D_ids), _POINT2D)
        pts["x"], pts["y"], pts["id"] = img.xys[:, 0], img.xys[:, 1], img.point3D_ids
        out.append(struct.pack("<Q", len(pts)))
        out.append(pts.tobytes())
    _atomic_write(Path(path), b"".join(out))


def write_points3D_binary(points: ColmapPoints, path: "os.PathLike | str") -> None:
    out = [struct.pack("<Q", len(points))]
    off = points.track_offsets
    for i in range(len(points)):
        head = np.zeros(1, _POINT_HEAD)
        head["id"], head["xyz"], head["rgb"] = points.ids[i], points.xyz[i], points.rgb[i]
        head["error"], head["len"] = points.errors[i], points.track_lengths[i]
        track = np.stack([points.track_image_ids[off[i]:off[i + 1]],
                          points.track_point2D_idxs[off[i]:off[i + 1]]], axis=1).astype("<u4")
        out.append(head.tobytes())
        out.append(track.tobytes())
    _atomic_write(Path(path), b"".join(out))


def _atomic_write(path: Path, payload: "bytes | str") -> None:
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(payload, str):
        tmp.write_text(payload, encoding="utf-8")
    else:
        tmp.write_bytes(payload)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------------

def _text_lines(path: Path):
    """(line number, stripped line) for every line that is not a comment; blank lines kept."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise scene_error(path, "file not found") from None
    except UnicodeDecodeError:
        raise scene_error(path, "not a text file (not valid UTF-8)") from None
    except OSError as err:
        raise scene_error(path, f"cannot be read ({err.strerror or err})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line.startswith("#"):
            yield number, line


def _numbers(path: Path, number: int, tokens, kind, what: str) -> np.ndarray:
    try:
        return np.array([kind(t) for t in tokens])
    except ValueError:
        raise scene_error(f"{path}:{number}", f"{what}: expected numbers, got {' '.join(tokens)[:80]!r}") from None


def read_cameras_text(path: "os.PathLike | str") -> Dict[int, ColmapCamera]:
    path = Path(path)
    cameras = {}
    for number, line in _text_lines(path):
        if not line:
            continue
        tok = line.split()
        where = f"{path}:{number}"
        if len(tok) < 4:
            raise scene_error(where, "camera line needs CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]")
        camera_id, width, height = (int(v) for v in _numbers(path, number, [tok[0], tok[2], tok[3]], int, "camera"))
        model = _camera_model(where, camera_id, name=tok[1])
        params = _numbers(path, number, tok[4:], float, f"camera {camera_id} parameters").astype(np.float64)
        if len(params) != model.num_params:
            raise scene_error(where, f"camera {camera_id}: {model.name} takes {model.num_params} parameters, "
                                     f"got {len(params)}")
        cameras[camera_id] = _check_camera(where, ColmapCamera(camera_id, model.name, width, height, params))
    return cameras


def read_images_text(path: "os.PathLike | str") -> Dict[int, ColmapImage]:
    path = Path(path)
    images = {}
    lines = list(_text_lines(path))
    i = 0
    while i < len(lines):
        number, line = lines[i]
        i += 1
        if not line:
            continue
        tok = line.split(maxsplit=9)
        if len(tok) < 10:
            raise scene_error(f"{path}:{number}", "image line needs IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
        vals = _numbers(path, number, tok[1:8], float, "image pose")
        image_id, camera_id = (int(v) for v in _numbers(path, number, [tok[0], tok[8]], int, "image/camera id"))
        points_line = lines[i][1] if i < len(lines) else ""
        points_number = lines[i][0] if i < len(lines) else number + 1
        i += 1
        ptok = points_line.split()
        if len(ptok) % 3:
            raise scene_error(f"{path}:{points_number}", f"image {image_id}'s 2D points must come in X Y POINT3D_ID "
                                                         f"triplets, got {len(ptok)} values")
        xy = _numbers(path, points_number, ptok[0::3] + ptok[1::3], float, "2D points").reshape(2, -1).T
        ids = _numbers(path, points_number, ptok[2::3], int, "2D point ids").astype(np.int64)
        images[image_id] = ColmapImage(image_id, vals[:4].astype(np.float64), vals[4:7].astype(np.float64), camera_id,
                                       tok[9], xy.astype(np.float64).reshape(-1, 2), ids)
    return images


def read_points3D_text(path: "os.PathLike | str") -> ColmapPoints:
    path = Path(path)
    ids, xyz, rgb, errors, lengths, track = [], [], [], [], [], []
    for number, line in _text_lines(path):
        if not line:
            continue
        tok = line.split()
        if len(tok) < 8 or (len(tok) - 8) % 2:
            raise scene_error(f"{path}:{number}", "3D point line needs POINT3D_ID X Y Z R G B ERROR "
                                                  "then (IMAGE_ID POINT2D_IDX) pairs")
        ids.append(int(_numbers(path, number, tok[:1], int, "3D point id")[0]))
        xyz.append(_numbers(path, number, tok[1:4], float, "3D point position"))
        colour = _numbers(path, number, tok[4:7], int, "3D point colour")
        if np.any(colour < 0) or np.any(colour > 255):
            raise scene_error(f"{path}:{number}", f"3D point colour {colour.tolist()} is outside 0..255")
        rgb.append(colour)
        errors.append(float(_numbers(path, number, tok[7:8], float, "3D point error")[0]))
        t = _numbers(path, number, tok[8:], int, "3D point track").reshape(-1, 2)
        lengths.append(len(t))
        track.append(t)
    if not ids:
        return ColmapPoints.empty()
    track_all = np.concatenate(track).astype(np.int64) if track else np.zeros((0, 2), np.int64)
    return ColmapPoints(np.array(ids, np.int64), np.array(xyz, np.float64), np.array(rgb, np.uint8),
                        np.array(errors, np.float64), np.array(lengths, np.int64), track_all[:, 0].copy(),
                        track_all[:, 1].copy())


def _fmt(values) -> str:
    """Numbers as text that reads back bit for bit (Python's shortest round-trip repr)."""
    return " ".join(repr(v) for v in np.asarray(values).tolist())


def write_cameras_text(cameras: Dict[int, ColmapCamera], path: "os.PathLike | str") -> None:
    lines = ["# Camera list with one line of data per camera:",
             "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
             f"# Number of cameras: {len(cameras)}"]
    for cam in cameras.values():
        lines.append(f"{cam.camera_id} {cam.model} {cam.width} {cam.height} {_fmt(np.asarray(cam.params, float))}")
    _atomic_write(Path(path), "\n".join(lines) + "\n")


def write_images_text(images: Dict[int, ColmapImage], path: "os.PathLike | str") -> None:
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)",
             f"# Number of images: {len(images)}"]
    for img in images.values():
        lines.append(f"{img.image_id} {_fmt(np.asarray(img.qvec, float))} {_fmt(np.asarray(img.tvec, float))} "
                     f"{img.camera_id} {img.name}")
        lines.append(" ".join(f"{x!r} {y!r} {int(p)}" for (x, y), p in zip(img.xys.tolist(), img.point3D_ids)))
    _atomic_write(Path(path), "\n".join(lines) + "\n")


def write_points3D_text(points: ColmapPoints, path: "os.PathLike | str") -> None:
    lines = ["# 3D point list with one line of data per point:",
             "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
             f"# Number of points: {len(points)}"]
    off = points.track_offsets
    for i in range(len(points)):
        track = np.stack([points.track_image_ids[off[i]:off[i + 1]],
                          points.track_point2D_idxs[off[i]:off[i + 1]]], axis=1).reshape(-1)
        lines.append(f"{int(points.ids[i])} {_fmt(points.xyz[i])} {_fmt(points.rgb[i].astype(int))} "
                     f"{float(points.errors[i])!r} {_fmt(track)}".rstrip())
    _atomic_write(Path(path), "\n".join(lines) + "\n")


__all__ = [
    "CAMERA_MODELS", "CAMERA_MODEL_BY_ID", "CAMERA_MODEL_BY_NAME", "CameraModel", "ColmapCamera", "ColmapImage",
    "ColmapPoints", "ColmapModel", "SceneError", "detect_model_format", "read_model", "write_model",
    "read_cameras_binary", "read_images_binary", "read_points3D_binary", "read_cameras_text", "read_images_text",
    "read_points3D_text", "write_cameras_binary", "write_images_binary", "write_points3D_binary",
    "write_cameras_text", "write_images_text", "write_points3D_text",
]
