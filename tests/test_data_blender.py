"""NeRF-synthetic (Blender) scenes: field of view, the OpenGL-to-OpenCV flip, background compositing,
the train/test files, the random initial points, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from gs_trainer.data.blender import RANDOM_HALF_SIZE, RANDOM_POINTS
from gs_trainer.data.dataset import Scene
from gs_trainer.data.errors import SceneError

#: Poses and intrinsics go through float64 matrix inverses of exact inputs: round-off only.
FLOAT64_TOL = 1e-9
#: 8-bit images: one quantisation step.
PIXEL_TOL = 1.0 / 255.0

W, H = 16, 12
FOV_X = 0.8


def gl_look_at(eye) -> list:
    """A Blender camera-to-world matrix (camera looks down its -z, y up) at ``eye`` facing the origin."""
    eye = np.asarray(eye, float)
    back = eye / np.linalg.norm(eye)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    m = np.eye(4)
    m[:3, :3] = np.stack([right, up, back], axis=1)
    m[:3, 3] = eye
    return m.tolist()


def write_blender_scene(root: Path, n_train: int = 3, n_test: int = 2, *, alpha=None):
    rng = np.random.default_rng(2)
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        frames = []
        for i in range(n):
            rgba = rng.integers(0, 256, (H, W, 4), np.uint8)
            if alpha is not None:
                rgba[..., 3] = alpha
            cv2.imwrite(str(root / split / f"r_{i}.png"), rgba[..., [2, 1, 0, 3]])
            ang = 2 * math.pi * i / max(n, 1) + (0.3 if split == "test" else 0.0)
            frames.append({"file_path": f"./{split}/r_{i}",
                           "transform_matrix": gl_look_at([4 * math.cos(ang), 4 * math.sin(ang), 1.5])})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": FOV_X, "frames": frames}))


def test_camera_angle_axis_flip_and_intrinsics(tmp_path):
    write_blender_scene(tmp_path)
    scene = Scene(tmp_path, eval=True)
    assert [c.image_name for c in scene.train_cameras] == ["train/r_0", "train/r_1", "train/r_2"]
    assert [c.image_name for c in scene.test_cameras] == ["test/r_0", "test/r_1"]
    cam = scene.train_cameras[0]
    focal = W / (2 * math.tan(FOV_X / 2))
    assert abs(cam.fx - focal) < FLOAT64_TOL and abs(cam.fy - focal) < FLOAT64_TOL
    assert (cam.cx, cam.cy) == (W / 2, H / 2)
    assert abs(cam.fovx - FOV_X) < FLOAT64_TOL
    # Camera 0 sits at (4, 0, 1.5) looking at the origin: OpenCV axes put the origin straight ahead
    # (+z), the world's up above the centre (-y), and the centre where the Blender matrix says.
    np.testing.assert_allclose(cam.camera_center_np, [4.0, 0.0, 1.5], atol=FLOAT64_TOL)
    origin_cam = cam.R @ np.zeros(3) + cam.t
    assert abs(origin_cam[0]) < FLOAT64_TOL and abs(origin_cam[1]) < FLOAT64_TOL
    assert abs(origin_cam[2] - math.hypot(4.0, 1.5)) < FLOAT64_TOL
    above = cam.R @ np.array([0.0, 0.0, 1.0]) + cam.t
    assert above[1] < 0
    world_y = cam.R @ np.array([0.0, 1.0, 0.0]) + cam.t  # looking down -x, world +y is to the right
    assert world_y[0] > 0
    assert abs(np.linalg.det(cam.R) - 1.0) < FLOAT64_TOL


def test_without_eval_the_test_views_train_too(tmp_path):
    write_blender_scene(tmp_path)
    scene = Scene(tmp_path)
    assert len(scene.train_cameras) == 5 and scene.test_cameras == []


@pytest.mark.parametrize("white, expected", [(True, 1.0), (False, 0.0)])
def test_rgba_composited_on_the_background(tmp_path, white, expected):
    write_blender_scene(tmp_path, n_test=0, alpha=0)
    cam = Scene(tmp_path, white_background=white).train_cameras[0]
    assert cam.alpha_mask is None
    assert float((cam.image - expected).abs().max()) == 0.0  # alpha 0: exactly the background


def test_partial_alpha_blends(tmp_path):
    write_blender_scene(tmp_path, n_train=1, n_test=0, alpha=51)  # alpha = 0.2
    cam = Scene(tmp_path, white_background=True).train_cameras[0]
    raw = cv2.imread(str(tmp_path / "train" / "r_0.png"), cv2.IMREAD_UNCHANGED)
    red = raw[..., 2].astype(np.float32) / 255.0
    expected = red * 0.2 + (1 - 0.2)
    np.testing.assert_allclose(cam.image[0].numpy(), expected, rtol=0, atol=PIXEL_TOL)


def test_random_points_when_none_given(tmp_path):
    write_blender_scene(tmp_path, n_test=0)
    scene = Scene(tmp_path)
    assert scene.points.shape == (RANDOM_POINTS, 3) and scene.points.dtype == np.float32
    assert np.abs(scene.points).max() <= RANDOM_HALF_SIZE
    assert scene.colors.shape == (RANDOM_POINTS, 3) and 0 <= scene.colors.min() and scene.colors.max() <= 1
    np.testing.assert_array_equal(Scene(tmp_path).points, scene.points)  # seeded: the same every time


def test_points3d_ply_is_used_when_present(tmp_path):
    write_blender_scene(tmp_path, n_test=0)
    vertex = np.array([(0.1, 0.2, 0.3, 255, 0, 51)], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"),
                                                            ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(tmp_path / "points3d.ply"))
    scene = Scene(tmp_path)
    np.testing.assert_allclose(scene.points, [[0.1, 0.2, 0.3]])
    np.testing.assert_allclose(scene.colors, [[1.0, 0.0, 0.2]])


def test_missing_frames_are_all_listed(tmp_path):
    write_blender_scene(tmp_path, n_train=4, n_test=0)
    (tmp_path / "train" / "r_1.png").unlink()
    (tmp_path / "train" / "r_3.png").unlink()
    with pytest.raises(SceneError) as err:
        Scene(tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "train") in message
    assert "r_1.png" in message and "r_3.png" in message and "2 of 4" in message


def test_broken_json_names_the_file(tmp_path):
    write_blender_scene(tmp_path, n_test=0)
    (tmp_path / "transforms_train.json").write_text('{"camera_angle_x": 0.8, "frames": [')
    with pytest.raises(SceneError) as err:
        Scene(tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path / "transforms_train.json") in str(err.value)


def test_eval_without_test_file(tmp_path):
    write_blender_scene(tmp_path, n_test=0)
    (tmp_path / "transforms_test.json").unlink()
    with pytest.raises(SceneError) as err:
        Scene(tmp_path, eval=True)
    assert str(tmp_path / "transforms_test.json") in str(err.value)
