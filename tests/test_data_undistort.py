"""Distorted COLMAP cameras: OpenCV undistortion to a pinhole camera, its pixel convention, the cache,
and the clear refusal of fisheye models."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from gs_trainer.data import colmap
from gs_trainer.data.dataset import Scene
from gs_trainer.data.errors import SceneError
from gs_trainer.data.images import Undistorter, needs_undistortion, opencv_intrinsics, read_image, to_float

#: cv2.remap quantises its bilinear weights to 1/32 pixel (INTER_BITS = 5): sampled coordinates are
#: exact to about 1/64 px; 0.05 px leaves room for the float32 maps but catches any half-pixel slip.
REMAP_TOL_PX = 0.05
#: COLMAP's projection against OpenCV's, both float64 through the same polynomial.
PROJECTION_TOL_PX = 1e-9

#: Our OpenCV undistortion against COLMAP's own undistorter on a real image, compared after mapping
#: both to COLMAP's output camera (a second bilinear resampling): 47.2 dB measured; a 0.25 px slip
#: gives 42.7 dB, a 0.5 px slip 38.1 dB, no undistortion at all 24.3 dB.
MIN_PSNR_VS_COLMAP_DB = 44.0

SHIPPED_IMAGES = Path(__file__).resolve().parents[1] / "data" / "tabletop" / "images"

W, H = 160, 120
SIMPLE_RADIAL = colmap.ColmapCamera(1, "SIMPLE_RADIAL", W, H, np.array([120.0, 81.0, 59.0, -0.15]))


def coordinate_ramp(width: int, height: int) -> np.ndarray:
    """float32 [H, W, 3] image whose pixel (row y, col x) holds (x, y, 0): sampling it returns coordinates."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([xs, ys, np.zeros_like(xs)], axis=-1)


def test_simple_radial_undistortion_maps_known_points_where_opencv_projects_them():
    und = Undistorter.for_camera(SIMPLE_RADIAL)
    k, dist = opencv_intrinsics(SIMPLE_RADIAL)
    out = und.apply(coordinate_ramp(W, H))
    fx, fy, cx, cy = und.pinhole()  # COLMAP convention
    # Output pixels (integer centres, numpy/OpenCV convention) spread over the image, corners included.
    targets = np.array([[3, 2], [80, 60], [150, 10], [20, 110], [157, 117], [45, 75]], np.float64)
    rays = np.stack([(targets[:, 0] + 0.5 - cx) / fx, (targets[:, 1] + 0.5 - cy) / fy, np.ones(len(targets))], 1)
    expected, _ = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), k, dist)
    expected = expected.reshape(-1, 2)
    sampled = out[targets[:, 1].astype(int), targets[:, 0].astype(int), :2]
    np.testing.assert_allclose(sampled, expected, rtol=0, atol=REMAP_TOL_PX)
    # The distortion is real: without it the same rays would land elsewhere by more than a pixel.
    pinhole, _ = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), k, np.zeros(5))
    assert np.abs(pinhole.reshape(-1, 2) - expected).max() > 1.0


def test_undistorted_camera_is_centred_and_every_pixel_valid():
    und = Undistorter.for_camera(SIMPLE_RADIAL)
    fx, fy, cx, cy = und.pinhole()
    assert (cx, cy) == (W / 2, H / 2)
    assert und.map_x.min() >= -0.5 and und.map_x.max() <= W - 0.5
    assert und.map_y.min() >= -0.5 and und.map_y.max() <= H - 0.5


def test_opencv_conversion_matches_colmaps_own_projection():
    pycolmap = pytest.importorskip("pycolmap")
    rng = np.random.default_rng(3)
    points = np.c_[rng.uniform(-0.5, 0.5, (20, 2)), np.ones(20)]
    cases = {
        "SIMPLE_RADIAL": [120.0, 81.0, 59.0, -0.15],
        "RADIAL": [120.0, 81.0, 59.0, -0.1, 0.02],
        "OPENCV": [118.0, 121.0, 79.0, 61.0, -0.1, 0.01, 0.001, -0.002],
        "FULL_OPENCV": [118.0, 121.0, 79.0, 61.0, -0.1, 0.01, 0.001, -0.002, 0.003, 0.01, -0.002, 0.001],
    }
    for name, params in cases.items():
        cam = colmap.ColmapCamera(1, name, W, H, np.array(params))
        assert needs_undistortion(cam)
        k, dist = opencv_intrinsics(cam)
        ours, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), k, dist)
        theirs = pycolmap.Camera.create_from_model_name(1, name, 100.0, W, H)
        theirs.params = params
        colmap_px = np.asarray(theirs.img_from_cam(points))
        # COLMAP's pixel centres are at +0.5 of OpenCV's.
        np.testing.assert_allclose(ours.reshape(-1, 2) + 0.5, colmap_px, rtol=0, atol=PROJECTION_TOL_PX, err_msg=name)


def test_undistortion_agrees_with_colmaps_undistorter(tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    name = "view_010.png"
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / name).write_bytes((SHIPPED_IMAGES / name).read_bytes())
    cam = colmap.ColmapCamera(1, "SIMPLE_RADIAL", 199, 149, np.array([150.0, 99.5, 74.5, -0.2]))
    image = colmap.ColmapImage(1, np.array([1.0, 0, 0, 0]), np.zeros(3), 1, name)
    colmap.write_model(colmap.ColmapModel({1: cam}, {1: image}, colmap.ColmapPoints.empty()), tmp_path / "in", "bin")
    pycolmap.undistort_images(str(tmp_path / "out"), str(tmp_path / "in"), str(tmp_path / "images"))
    theirs = to_float(read_image(tmp_path / "out" / "images" / name))
    their_cam = colmap.read_model(tmp_path / "out" / "sparse").cameras[1]
    assert their_cam.model == "PINHOLE"
    tfx, tfy, tcx, tcy = their_cam.params

    und = Undistorter.for_camera(cam)
    ours = to_float(und.apply(read_image(tmp_path / "images" / name)))
    fx, fy, cx, cy = und.pinhole()
    rows, cols = np.mgrid[0:theirs.shape[0], 0:theirs.shape[1]].astype(np.float64)
    u = (cols + 0.5 - tcx) / tfx * fx + cx - 0.5  # COLMAP's output pixel -> ray -> our pixel index
    v = (rows + 0.5 - tcy) / tfy * fy + cy - 0.5
    inside = (u >= 1) & (u <= ours.shape[1] - 2) & (v >= 1) & (v <= ours.shape[0] - 2)
    assert inside.mean() > 0.8
    resampled = cv2.remap(ours, u.astype(np.float32), v.astype(np.float32), cv2.INTER_LINEAR)
    mse = float(((resampled - theirs)[inside] ** 2).mean())
    assert 10 * np.log10(1.0 / mse) >= MIN_PSNR_VS_COLMAP_DB


def test_zero_distortion_is_used_as_is():
    cam = colmap.ColmapCamera(1, "SIMPLE_RADIAL", W, H, np.array([120.0, 80.0, 60.0, 0.0]))
    assert not needs_undistortion(cam)


def _write_scene(root, camera: colmap.ColmapCamera, count: int = 3):
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {}
    for i in range(count):
        name = f"im{i}.png"
        cv2.imwrite(str(root / "images" / name), rng.integers(0, 256, (camera.height, camera.width, 3), np.uint8))
        images[i + 1] = colmap.ColmapImage(i + 1, np.array([1.0, 0, 0, 0]), np.array([0.1 * i, 0, 4.0]),
                                           camera.camera_id, name)
    points = colmap.ColmapPoints(np.arange(4), rng.normal(size=(4, 3)), np.full((4, 3), 100, np.uint8), np.zeros(4),
                                 np.zeros(4, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    colmap.write_model(colmap.ColmapModel({camera.camera_id: camera}, images, points), root / "sparse" / "0", "bin")


def test_scene_undistorts_into_the_cache_dir_not_the_scene(tmp_path):
    scene_dir = tmp_path / "scene"
    _write_scene(scene_dir, SIMPLE_RADIAL)
    before = sorted(p.relative_to(scene_dir) for p in scene_dir.rglob("*"))
    cache = tmp_path / "run" / "cache"
    scene = Scene(scene_dir, cache_dir=cache)
    assert sorted(p.relative_to(scene_dir) for p in scene_dir.rglob("*")) == before
    cached = sorted(cache.rglob("*.png"))
    assert len(cached) == 3
    cam = scene.train_cameras[0]
    fx, fy, cx, cy = Undistorter.for_camera(SIMPLE_RADIAL).pinhole()
    assert (cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy) == (W, H, fx, fy, cx, cy)
    # A second load reads the cache and gives the same pixels.
    again = Scene(scene_dir, cache_dir=cache)
    assert all(bool((a.image == b.image).all()) for a, b in zip(scene.train_cameras, again.train_cameras))


def test_undistortion_is_announced_and_cache_files_keep_the_image_names(tmp_path, caplog):
    import logging
    scene_dir = tmp_path / "scene"
    _write_scene(scene_dir, SIMPLE_RADIAL)
    caplog.set_level(logging.INFO)
    Scene(scene_dir, cache_dir=tmp_path / "cache")
    notes = [r.getMessage() for r in caplog.records if "undistorting" in r.getMessage()]
    assert len(notes) == 1 and "3 of 3 images" in notes[0] and "SIMPLE_RADIAL" in notes[0], notes
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*.png")) == ["im0.png", "im1.png", "im2.png"]


def test_default_cache_is_outside_the_scene(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    scene_dir = tmp_path / "scene"
    _write_scene(scene_dir, SIMPLE_RADIAL, count=1)
    Scene(scene_dir)
    assert len(list((tmp_path / "xdg").rglob("*.png"))) == 1
    assert not list(scene_dir.rglob("*undistorted*"))


@pytest.mark.parametrize("model", ["OPENCV_FISHEYE", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE",
                                   "THIN_PRISM_FISHEYE", "FOV", "SIMPLE_FISHEYE", "EQUIRECTANGULAR"])
def test_fisheye_models_are_refused_with_instructions(tmp_path, model):
    spec = colmap.CAMERA_MODEL_BY_NAME[model]
    params = np.array([100.0, 100.0, 80.0, 60.0, 0.01, 0.0, 0.0, 0.0, 0, 0, 0, 0][:spec.num_params])
    _write_scene(tmp_path, colmap.ColmapCamera(1, model, W, H, params), count=1)
    with pytest.raises(SceneError) as err:
        Scene(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "sparse" / "0" / "cameras.bin") in message
    assert model in message and "colmap image_undistorter" in message
