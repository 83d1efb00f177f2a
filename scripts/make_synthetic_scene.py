#!/usr/bin/env python3
"""Render a textured synthetic scene and reconstruct it with real COLMAP (through pycolmap).

The scene: a room (floor, four walls, ceiling) holding a sphere, a box, a cylinder and a small
sphere, each surface with its own procedural texture (multi-octave value noise plus coloured
stickers), lit by a point light with hard shadows and an ambient term.  Cameras orbit the objects
on a gently rising and falling circle, all looking at the centre, so neighbouring views overlap
well.  Images are rendered with a small numpy ray tracer (3x3 supersampling, fixed seeds: the
same bytes every run).

COLMAP then does what it would do on a real capture: SIFT feature extraction (one shared
SIMPLE_RADIAL camera), exhaustive matching, incremental mapping, and undistortion to PINHOLE.
The result is written in the layout the trainer reads:

    <out>/images/*.png
    <out>/sparse/0/{cameras,images,points3D}.bin   (plus COLMAP 4's rigs.bin / frames.bin)

Usage:
    python scripts/make_synthetic_scene.py --out data/tabletop            # the shipped default scene
    python scripts/make_synthetic_scene.py --out /tmp/big --num-views 60 --width 400 --height 300

Needs the ``data`` extra (pycolmap).  The rendered images are byte-identical from run to run; COLMAP's
multi-threaded matching and bundle adjustment can move the model by tiny amounts between runs.  A summary (registered images, 3D points, reprojection error,
size on disk) is printed at the end.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOM_HALF = 4.0          # the room spans [-4, 4] x [-4, 4] in x and y
ROOM_HEIGHT = 3.0        # floor at z = 0, ceiling at z = 3
LIGHT_POS = np.array([1.2, -1.6, 2.6])
AMBIENT = 0.30
HIT_EPS = 1e-4


# --------------------------------------------------------------------------------------------
# Textures
# --------------------------------------------------------------------------------------------

def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """[size, size] tileable value noise in [0, 1] with ``cells`` cells per side (bicubic)."""
    grid = rng.random((cells, cells)).astype(np.float32)
    tiled = np.tile(grid, (3, 3))
    big = cv2.resize(tiled, (3 * size, 3 * size), interpolation=cv2.INTER_CUBIC)
    return np.clip(big[size:2 * size, size:2 * size], 0.0, 1.0)


def make_texture(seed: int, palette: np.ndarray, size: int = 512, stickers: int = 60) -> np.ndarray:
    """[size, size, 3] float32 RGB texture: palette-mapped multi-octave noise plus stickers."""
    rng = np.random.default_rng(seed)
    noise = np.zeros((size, size), np.float32)
    amp_total = 0.0
    for octave, cells in enumerate((4, 8, 16, 32, 64)):
        amp = 0.6 ** octave
        noise += amp * _value_noise(rng, size, cells)
        amp_total += amp
    noise /= amp_total
    noise = (noise - noise.min()) / (noise.max() - noise.min() + 1e-6)
    # Palette lookup: piecewise-linear ramp through the palette colours.
    pos = noise * (len(palette) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(palette) - 2)
    frac = (pos - lo)[..., None]
    tex = palette[lo] * (1 - frac) + palette[lo + 1] * frac
    # Fine grain so every surface has corners and blobs at several scales.
    grain = _value_noise(rng, size, 128)[..., None]
    tex = tex * (0.75 + 0.5 * grain)
    canvas = (np.clip(tex, 0, 1) * 255).astype(np.uint8).copy()
    for _ in range(stickers):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        radius = int(rng.integers(6, 28))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.circle(canvas, centre, radius, colour, -1, lineType=cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(canvas, (centre[0] - radius, centre[1] - radius // 2),
                          (centre[0] + radius, centre[1] + radius // 2), colour, -1)
        else:
            pts = rng.integers(-radius, radius, (3, 2)) + np.array(centre)
            cv2.fillPoly(canvas, [pts.astype(np.int32)], colour, lineType=cv2.LINE_AA)
    return canvas.astype(np.float32) / 255.0


def sample_texture(tex: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear, wrapping lookup; u, v in texture tiles (1.0 = one full texture)."""
    size = tex.shape[0]
    x = (u * size) % size
    y = (v * size) % size
    x0 = np.floor(x).astype(int)
    y0 = np.floor(y).astype(int)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    x0 %= size
    y0 %= size
    x1 = (x0 + 1) % size
    y1 = (y0 + 1) % size
    top = tex[y0, x0] * (1 - fx) + tex[y0, x1] * fx
    bottom = tex[y1, x0] * (1 - fx) + tex[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


# --------------------------------------------------------------------------------------------
# Geometry: every intersect function returns (t, normal, u, v) for all rays, t = inf on a miss.
# --------------------------------------------------------------------------------------------

@dataclass
class Hit:
    t: np.ndarray       # [N]
    normal: np.ndarray  # [N, 3]
    u: np.ndarray       # [N]
    v: np.ndarray       # [N]
    tex: np.ndarray     # [N] int texture index


def _empty_hit(n: int) -> Hit:
    return Hit(np.full(n, np.inf), np.zeros((n, 3)), np.zeros(n), np.zeros(n), np.zeros(n, int))


def _merge(best: Hit, t, normal, u, v, tex) -> None:
    closer = t < best.t
    best.t = np.where(closer, t, best.t)
    best.normal = np.where(closer[:, None], normal, best.normal)
    best.u = np.where(closer, u, best.u)
    best.v = np.where(closer, v, best.v)
    best.tex = np.where(closer, tex, best.tex)


def intersect_room(o, d, tex_ids, tile):
    """Rays start inside the room box; returns where they leave it (floor, ceiling or a wall)."""
    n = len(d)
    lo = np.array([-ROOM_HALF, -ROOM_HALF, 0.0])
    hi = np.array([ROOM_HALF, ROOM_HALF, ROOM_HEIGHT])
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(d > 0, hi, lo)
        t_axes = (bound - o) / d
    t_axes = np.where(np.abs(d) < 1e-12, np.inf, t_axes)
    axis = np.argmin(t_axes, axis=1)
    t = t_axes[np.arange(n), axis]
    p = o + t[:, None] * d
    normal = np.zeros((n, 3))
    normal[np.arange(n), axis] = -np.sign(d[np.arange(n), axis])
    # Texture per face: 0 floor, 1 ceiling, 2..5 walls (+x, -x, +y, -y).
    face = np.where(axis == 2, np.where(d[:, 2] < 0, 0, 1),
                    np.where(axis == 0, np.where(d[:, 0] > 0, 2, 3), np.where(d[:, 1] > 0, 4, 5)))
    u = np.where(axis == 2, p[:, 0], np.where(axis == 0, p[:, 1], p[:, 0]))
    v = np.where(axis == 2, p[:, 1], p[:, 2])
    return t, normal, u / tile, v / tile, np.asarray(tex_ids)[face]


def intersect_sphere(o, d, centre, radius, tex_id, tile):
    oc = o - centre
    b = np.einsum("ij,ij->i", oc, d)
    c = np.einsum("ij,ij->i", oc, oc) - radius * radius
    disc = b * b - c
    sq = np.sqrt(np.maximum(disc, 0.0))
    t = -b - sq
    t = np.where(t > HIT_EPS, t, -b + sq)
    t = np.where((disc > 0) & (t > HIT_EPS), t, np.inf)
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    normal = (p - centre) / radius
    u = np.arctan2(normal[:, 1], normal[:, 0]) * radius
    v = np.arccos(np.clip(normal[:, 2], -1, 1)) * radius
    return t, normal, u / tile, v / tile, np.full(len(d), tex_id)


def intersect_box(o, d, centre, half, yaw, tex_id, tile):
    """Box with half sizes ``half`` rotated by ``yaw`` about the vertical axis."""
    c, s = math.cos(yaw), math.sin(yaw)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])  # local -> world
    lo_, do_ = (o - centre) @ rot, d @ rot
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - lo_) / do_
        t2 = (half - lo_) / do_
    tmin = np.minimum(t1, t2)
    tmax = np.maximum(t1, t2)
    tmin = np.where(np.isnan(tmin), -np.inf, tmin)
    tmax = np.where(np.isnan(tmax), np.inf, tmax)
    t_near = tmin.max(axis=1)
    t_far = tmax.min(axis=1)
    axis = tmin.argmax(axis=1)
    t = np.where((t_near <= t_far) & (t_near > HIT_EPS), t_near, np.inf)
    n = len(d)
    lp = lo_ + np.where(np.isfinite(t), t, 0.0)[:, None] * do_
    nl = np.zeros((n, 3))
    nl[np.arange(n), axis] = np.sign(lp[np.arange(n), axis])
    normal = nl @ rot.T
    # UV from the two local axes other than the face's own.
    u = np.where(axis == 0, lp[:, 1], lp[:, 0]) + 3.0 * axis
    v = np.where(axis == 2, lp[:, 1], lp[:, 2])
    return t, normal, u / tile, v / tile, np.full(n, tex_id)


def intersect_cylinder(o, d, base, radius, height, tex_id, tile):
    """Vertical capped cylinder standing on ``base`` (x, y, z of the bottom centre)."""
    n = len(d)
    oc = o - base
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = oc[:, 0] * d[:, 0] + oc[:, 1] * d[:, 1]
    c = oc[:, 0] ** 2 + oc[:, 1] ** 2 - radius * radius
    disc = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0))) / a
    z = oc[:, 2] + t_side * d[:, 2]
    t_side = np.where((disc > 0) & (a > 1e-12) & (t_side > HIT_EPS) & (z >= 0) & (z <= height),
                      t_side, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_cap = (height - oc[:, 2]) / d[:, 2]
    pc = oc + np.where(np.isfinite(t_cap), t_cap, 0)[:, None] * d
    t_cap = np.where((t_cap > HIT_EPS) & (pc[:, 0] ** 2 + pc[:, 1] ** 2 <= radius * radius), t_cap, np.inf)
    side = t_side <= t_cap
    t = np.minimum(t_side, t_cap)
    p = oc + np.where(np.isfinite(t), t, 0)[:, None] * d
    normal = np.where(side[:, None], np.stack([p[:, 0], p[:, 1], np.zeros(n)], 1) / radius,
                      np.array([0.0, 0.0, 1.0]))
    u = np.where(side, np.arctan2(p[:, 1], p[:, 0]) * radius, p[:, 0] + 5.0)
    v = np.where(side, p[:, 2], p[:, 1])
    return t, normal, u / tile, v / tile, np.full(n, tex_id)


class SyntheticScene:
    """The objects, their textures and the light."""

    def __init__(self, texture_size: int = 512):
        palettes = [
            [[0.35, 0.22, 0.12], [0.62, 0.42, 0.24], [0.85, 0.70, 0.45], [0.45, 0.30, 0.18]],  # floor: wood
            [[0.85, 0.85, 0.80], [0.60, 0.65, 0.70], [0.95, 0.92, 0.85]],                      # ceiling
            [[0.20, 0.35, 0.55], [0.55, 0.70, 0.85], [0.15, 0.25, 0.35], [0.80, 0.85, 0.90]],  # wall +x
            [[0.55, 0.20, 0.20], [0.85, 0.55, 0.45], [0.35, 0.10, 0.10], [0.95, 0.85, 0.70]],  # wall -x
            [[0.20, 0.45, 0.25], [0.60, 0.80, 0.45], [0.10, 0.25, 0.15], [0.90, 0.90, 0.60]],  # wall +y
            [[0.45, 0.35, 0.60], [0.80, 0.70, 0.90], [0.25, 0.15, 0.35], [0.95, 0.80, 0.50]],  # wall -y
            [[0.90, 0.40, 0.10], [0.98, 0.85, 0.20], [0.50, 0.10, 0.05]],                      # sphere
            [[0.10, 0.30, 0.70], [0.30, 0.80, 0.90], [0.95, 0.95, 0.95], [0.05, 0.10, 0.30]],  # box
            [[0.20, 0.60, 0.20], [0.90, 0.90, 0.30], [0.10, 0.30, 0.10]],                      # cylinder
            [[0.70, 0.10, 0.50], [0.95, 0.60, 0.80], [0.30, 0.05, 0.25]],                      # small sphere
        ]
        self.textures = np.stack([make_texture(1000 + i, np.asarray(p, np.float32), texture_size)
                                  for i, p in enumerate(palettes)])
        self.objects = [
            lambda o, d: intersect_sphere(o, d, np.array([0.8, 0.35, 0.55]), 0.55, 6, 2.0),
            lambda o, d: intersect_box(o, d, np.array([-0.75, -0.45, 0.45]), np.array([0.4, 0.35, 0.45]),
                                       0.5, 7, 2.0),
            lambda o, d: intersect_cylinder(o, d, np.array([-0.3, 1.0, 0.0]), 0.35, 1.2, 8, 2.0),
            lambda o, d: intersect_sphere(o, d, np.array([0.45, -1.05, 0.3]), 0.3, 9, 1.5),
        ]

    def trace(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Shade rays (origins [N, 3], unit directions [N, 3]) -> RGB [N, 3] in [0, 1]."""
        n = len(d)
        best = _empty_hit(n)
        _merge(best, *intersect_room(o, d, [0, 1, 2, 3, 4, 5], 4.0))
        for obj in self.objects:
            _merge(best, *obj(o, d))
        p = o + best.t[:, None] * d
        albedo = sample_texture(self.textures[0], best.u, best.v)
        for k in range(1, len(self.textures)):
            sel = best.tex == k
            if sel.any():
                albedo[sel] = sample_texture(self.textures[k], best.u[sel], best.v[sel])
        to_light = LIGHT_POS - p
        dist = np.linalg.norm(to_light, axis=1)
        ldir = to_light / dist[:, None]
        normal = best.normal
        facing = np.einsum("ij,ij->i", normal, -d) < 0
        normal = np.where(facing[:, None], -normal, normal)
        lambert = np.clip(np.einsum("ij,ij->i", normal, ldir), 0, 1)
        # Hard shadows from the objects (the room itself never occludes the light inside it).
        origin = p + normal * 1e-3
        blocked = np.zeros(n, bool)
        for obj in self.objects:
            t_occ = obj(origin, ldir)[0]
            blocked |= t_occ < dist
        falloff = 9.0 / (3.0 + dist ** 2)
        light = AMBIENT + (1 - AMBIENT) * lambert * np.where(blocked, 0.0, 1.0) * falloff
        return np.clip(albedo * light[:, None], 0, 1)


# --------------------------------------------------------------------------------------------
# Cameras and rendering
# --------------------------------------------------------------------------------------------

def look_at(eye: np.ndarray, target: np.ndarray, up=np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """Camera-to-world rotation (columns: x right, y down, z forward; OpenCV axes)."""
    fwd = target - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd], axis=1)


def orbit_cameras(num_views: int, radius: float = 3.3):
    target = np.array([0.0, 0.0, 0.45])
    poses = []
    for i in range(num_views):
        ang = 2 * math.pi * i / num_views
        height = 1.55 + 0.35 * math.sin(3 * ang)
        r = radius + 0.25 * math.cos(2 * ang)
        eye = np.array([r * math.cos(ang), r * math.sin(ang), height])
        poses.append((eye, look_at(eye, target)))
    return poses


def render(scene: SyntheticScene, eye, c2w_rot, width, height, fov_x_deg, supersample=3) -> np.ndarray:
    f = width / (2 * math.tan(math.radians(fov_x_deg) / 2))
    s = supersample
    offs = (np.arange(s) + 0.5) / s
    xs = (np.arange(width)[:, None] + offs[None, :]).reshape(-1)
    ys = (np.arange(height)[:, None] + offs[None, :]).reshape(-1)
    px, py = np.meshgrid(xs, ys)
    dirs_cam = np.stack([(px - width / 2) / f, (py - height / 2) / f, np.ones_like(px)], -1).reshape(-1, 3)
    dirs = dirs_cam @ c2w_rot.T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    origins = np.broadcast_to(eye, dirs.shape)
    rgb = scene.trace(origins, dirs).reshape(height * s, width * s, 3)
    rgb = rgb.reshape(height, s, width, s, 3).mean(axis=(1, 3))
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# COLMAP
# --------------------------------------------------------------------------------------------

def run_colmap(image_dir: Path, work: Path, out: Path, seed: int):
    import pycolmap

    db = work / "database.db"
    sparse = work / "sparse"
    sparse.mkdir(parents=True, exist_ok=True)
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_RADIAL"
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = 2
    extraction.sift.max_num_features = 2048
    extraction.sift.peak_threshold = 0.004  # small images: keep weaker (but still stable) extrema
    pycolmap.extract_features(db, image_dir, camera_mode=pycolmap.CameraMode.SINGLE,
                              reader_options=reader, extraction_options=extraction,
                              device=pycolmap.Device.cpu)
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = 2
    pycolmap.match_exhaustive(db, matching_options=matching, device=pycolmap.Device.cpu)
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = 2
    options.random_seed = seed
    options.multiple_models = False
    recs = pycolmap.incremental_mapping(db, image_dir, sparse, options)
    if not recs:
        raise SystemExit("COLMAP registered no model: the images do not overlap enough")
    best_id = max(recs, key=lambda k: recs[k].num_reg_images())
    rec = recs[best_id]
    model_dir = sparse / str(best_id)
    rec.write_binary(str(model_dir))

    undist = work / "undistorted"
    pycolmap.undistort_images(undist, model_dir, image_dir, output_type="COLMAP")
    if out.exists():
        shutil.rmtree(out)
    (out / "sparse" / "0").mkdir(parents=True)
    shutil.copytree(undist / "images", out / "images")
    for f in sorted((undist / "sparse").iterdir()):
        if f.is_file():
            shutil.copy2(f, out / "sparse" / "0" / f.name)
    return rec


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("data/tabletop"))
    ap.add_argument("--num-views", type=int, default=36)
    ap.add_argument("--width", type=int, default=200)
    ap.add_argument("--height", type=int, default=150)
    ap.add_argument("--fov", type=float, default=62.0, help="horizontal field of view, degrees")
    ap.add_argument("--supersample", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="COLMAP's random seed")
    ap.add_argument("--keep-work", type=Path, default=None, help="keep the COLMAP database etc. here")
    args = ap.parse_args(argv)

    scene = SyntheticScene()
    work = Path(tempfile.mkdtemp(prefix="gs_synth_")) if args.keep_work is None else args.keep_work
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "input"
    raw.mkdir(exist_ok=True)
    for i, (eye, rot) in enumerate(orbit_cameras(args.num_views)):
        img = render(scene, eye, rot, args.width, args.height, args.fov, args.supersample)
        cv2.imwrite(str(raw / f"view_{i:03d}.png"), img[..., ::-1])
    print(f"rendered {args.num_views} views of {args.width}x{args.height} into {raw}")

    rec = run_colmap(raw, work, args.out, args.seed)
    if args.keep_work is None:
        shutil.rmtree(work, ignore_errors=True)

    import pycolmap
    final = pycolmap.Reconstruction(str(args.out / "sparse" / "0"))
    cam = next(iter(final.cameras.values()))
    print("---- summary ----")
    print(f"output:               {args.out}")
    print(f"registered images:    {final.num_reg_images()} / {args.num_views}")
    print(f"3D points:            {final.num_points3D()}")
    print(f"mean reproj. error:   {final.compute_mean_reprojection_error():.3f} px")
    print(f"mean track length:    {final.compute_mean_track_length():.2f}")
    print(f"camera (undistorted): {cam.model.name} {cam.width}x{cam.height} params {[round(float(x), 3) for x in cam.params]}")
    print(f"camera (SfM):         {next(iter(rec.cameras.values())).model.name} "
          f"params {[round(float(x), 4) for x in next(iter(rec.cameras.values())).params]}")
    print(f"size on disk:         {dir_size(args.out) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
