"""Scene: the shipped default scene, the --eval split, the -r rule, the extent, and every bad input
(missing sparse/0, missing images, wrong image size, empty model, corrupted model) as one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gs_trainer.data import colmap
from gs_trainer.data.cameras import rotmat_to_qvec
from gs_trainer.data.dataset import EXTENT_MARGIN, LLFF_HOLD, Scene, camera_extent
from gs_trainer.data.errors import SceneError
from gs_trainer.data.images import MAX_AUTO_WIDTH, target_size

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "data" / "tabletop"

#: Extent and intrinsics are computed in float64 from exact inputs: only round-off remains.
FLOAT64_TOL = 1e-9

W, H = 40, 30


def write_colmap_scene(root: Path, count: int = 17, *, width: int = W, height: int = H, fmt: str = "bin",
                       centre=(0.0, 0.0, 0.0), radius: float = 2.0, rgba: bool = False) -> colmap.ColmapModel:
    """A small PINHOLE scene: ``count`` cameras on a circle of ``radius`` around ``centre`` looking
    inwards, random images, a few points.  Image ids run opposite to name order on purpose."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    images = {}
    for i in range(count):
        ang = 2 * math.pi * i / count
        eye = np.asarray(centre) + radius * np.array([math.cos(ang), math.sin(ang), 0.0])
        fwd = (np.asarray(centre) - eye) / radius
        right = np.cross(fwd, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        c2w = np.stack([right, np.cross(fwd, right), fwd], axis=1)
        R = c2w.T
        name = f"img_{i:02d}.png"
        pixels = rng.integers(0, 256, (height, width, 4 if rgba else 3), np.uint8)
        cv2.imwrite(str(root / "images" / name), pixels)
        images[count - i] = colmap.ColmapImage(count - i, rotmat_to_qvec(R), -R @ eye, 1, name)
    cams = {1: colmap.ColmapCamera(1, "PINHOLE", width, height, np.array([50.0, 52.0, width / 2, height / 2]))}
    points = colmap.ColmapPoints(np.arange(5), rng.normal(size=(5, 3)), rng.integers(0, 256, (5, 3)).astype(np.uint8),
                                 np.zeros(5), np.zeros(5, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    model = colmap.ColmapModel(cams, images, points)
    colmap.write_model(model, root / "sparse" / "0", fmt)
    return model


def one_line_naming(err: pytest.ExceptionInfo, path: Path, *fragments: str) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ------------------------------------------------------------------------------------------------
# The shipped scene
# ------------------------------------------------------------------------------------------------

def test_shipped_scene_loads(tmp_path):
    scene = Scene(SHIPPED, eval=True, cache_dir=tmp_path)
    cams = scene.train_cameras + scene.test_cameras
    assert 30 <= len(cams) <= 40
    assert len(scene.test_cameras) == math.ceil(len(cams) / LLFF_HOLD)
    for cam in cams:
        assert cam.image.dtype == torch.float32 and tuple(cam.image.shape) == (3, cam.height, cam.width)
        assert 0.0 <= float(cam.image.min()) and float(cam.image.max()) <= 1.0
        assert cam.alpha_mask is None
    assert scene.points.dtype == np.float32 and scene.points.shape[1] == 3 and len(scene.points) > 500
    assert scene.colors.dtype == np.float32 and scene.colors.min() >= 0 and scene.colors.max() <= 1
    assert scene.extent > 0
    # The SfM points lie in front of the cameras that see them (a sanity check of the pose convention).
    cam = scene.train_cameras[0]
    z = (scene.points @ cam.R.T + cam.t)[:, 2]
    assert np.median(z) > 0
    assert not list(tmp_path.rglob("*.png"))  # PINHOLE: nothing to undistort, nothing cached


# ------------------------------------------------------------------------------------------------
# Split, resolution, extent
# ------------------------------------------------------------------------------------------------

def test_eval_holds_out_every_8th_image_in_name_order(tmp_path):
    write_colmap_scene(tmp_path, count=17)
    scene = Scene(tmp_path, eval=True)
    assert [c.image_name for c in scene.test_cameras] == ["img_00.png", "img_08.png", "img_16.png"]
    assert [c.image_name for c in scene.train_cameras] == [f"img_{i:02d}.png" for i in range(17) if i % 8]
    no_eval = Scene(tmp_path)
    assert no_eval.test_cameras == []
    assert [c.image_name for c in no_eval.train_cameras] == [f"img_{i:02d}.png" for i in range(17)]


def test_text_and_binary_scenes_give_the_same_cameras(tmp_path):
    write_colmap_scene(tmp_path / "b", count=5, fmt="bin")
    write_colmap_scene(tmp_path / "t", count=5, fmt="txt")
    for a, b in zip(Scene(tmp_path / "b").train_cameras, Scene(tmp_path / "t").train_cameras):
        assert (a.image_name, a.fx, a.fy, a.cx, a.cy) == (b.image_name, b.fx, b.fy, b.cx, b.cy)
        np.testing.assert_array_equal(a.R, b.R)
        assert torch.equal(a.image, b.image)


def test_sparse_without_0_is_accepted(tmp_path):
    write_colmap_scene(tmp_path, count=3)
    (tmp_path / "sparse" / "0").rename(tmp_path / "model")
    (tmp_path / "sparse").rmdir()
    (tmp_path / "model").rename(tmp_path / "sparse")
    assert len(Scene(tmp_path).train_cameras) == 3


def test_extent_is_radius_of_centres_times_margin(tmp_path):
    write_colmap_scene(tmp_path, count=8, centre=(1.0, -2.0, 3.0), radius=2.5)
    scene = Scene(tmp_path)
    assert abs(scene.extent - 2.5 * EXTENT_MARGIN) < FLOAT64_TOL
    assert abs(camera_extent(scene.train_cameras) - scene.extent) < FLOAT64_TOL
    assert abs(EXTENT_MARGIN - 1.1) < FLOAT64_TOL


@pytest.mark.parametrize("resolution, size", [(1, (W, H)), (2, (20, 15)), (4, (10, 8)), (8, (5, 4)),
                                              (-1, (W, H)), (25, (25, 18))])
def test_resolution_rule_on_a_scene(tmp_path, resolution, size):
    write_colmap_scene(tmp_path, count=2)
    cam = Scene(tmp_path, resolution=resolution).train_cameras[0]
    assert (cam.width, cam.height) == size
    assert tuple(cam.image.shape) == (3, size[1], size[0])
    assert abs(cam.fx - 50.0 * size[0] / W) < FLOAT64_TOL and abs(cam.fy - 52.0 * size[1] / H) < FLOAT64_TOL
    assert abs(cam.cx - size[0] / 2) < FLOAT64_TOL and abs(cam.cy - size[1] / 2) < FLOAT64_TOL


def test_auto_resolution_shrinks_wide_images_with_a_message():
    messages = []
    assert target_size(3200, 2400, -1, warn=messages.append) == (MAX_AUTO_WIDTH, 1200)
    assert len(messages) == 1 and "1600" in messages[0]
    assert target_size(1600, 900, -1, warn=messages.append) == (1600, 900)
    assert len(messages) == 1
    assert target_size(1000, 750, 400) == (400, 300)
    assert target_size(1001, 751, 2) == (500, 376)
    with pytest.raises(ValueError):
        target_size(100, 100, 0)


def test_images_land_on_the_requested_device_and_are_loaded_once(tmp_path):
    write_colmap_scene(tmp_path, count=2)
    scene = Scene(tmp_path, device="cpu")
    first = scene.train_cameras[0].image
    assert first.device == torch.device("cpu")
    assert scene.train_cameras[0].image.data_ptr() == first.data_ptr()


def test_rgba_images_give_an_alpha_mask(tmp_path):
    write_colmap_scene(tmp_path, count=2, rgba=True)
    cam = Scene(tmp_path).train_cameras[0]
    assert tuple(cam.alpha_mask.shape) == (1, H, W)
    raw = cv2.imread(str(tmp_path / "images" / cam.image_name), cv2.IMREAD_UNCHANGED)
    alpha = torch.from_numpy(raw[..., 3].astype(np.float32) / 255.0)
    assert torch.equal(cam.alpha_mask[0], alpha)
    red = torch.from_numpy(raw[..., 2].astype(np.float32) / 255.0)
    assert torch.equal(cam.image[0], red * alpha)  # ground truth seen through the mask, as the render will be


def test_downscaled_image_folder_scales_intrinsics(tmp_path):
    """The original trainer's ``-i images_2``: the model describes full-size images."""
    write_colmap_scene(tmp_path, count=2)
    (tmp_path / "images_2").mkdir()
    for p in (tmp_path / "images").iterdir():
        cv2.imwrite(str(tmp_path / "images_2" / p.name), cv2.imread(str(p))[::2, ::2])
    cam = Scene(tmp_path, images="images_2").train_cameras[0]
    assert (cam.width, cam.height) == (W // 2, H // 2)
    assert abs(cam.fx - 25.0) < FLOAT64_TOL and abs(cam.cx - W / 4) < FLOAT64_TOL


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------

def test_missing_sparse_0(tmp_path):
    write_colmap_scene(tmp_path, count=2)
    for f in (tmp_path / "sparse" / "0").iterdir():
        f.unlink()
    (tmp_path / "sparse" / "0").rmdir()
    with pytest.raises(SceneError) as err:
        Scene(tmp_path)
    one_line_naming(err, tmp_path / "sparse" / "0", "no COLMAP model")


def test_missing_scene_folder(tmp_path):
    with pytest.raises(SceneError) as err:
        Scene(tmp_path / "nowhere")
    one_line_naming(err, tmp_path / "nowhere", "not found")


def test_truncated_model_through_scene(tmp_path):
    write_colmap_scene(tmp_path, count=3)
    path = tmp_path / "sparse" / "0" / "images.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(SceneError) as err:
        Scene(tmp_path)
    one_line_naming(err, path, "truncated")


def test_unknown_camera_model_through_scene(tmp_path):
    write_colmap_scene(tmp_path, count=2)
    path = tmp_path / "sparse" / "0" / "cameras.bin"
    data = bytearray(path.read_bytes())
    data[12:16] = (42).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(SceneError) as err:
        Scene(tmp_path)
    one_line_naming(err, path, "unknown camera model id 42")


def test_all_missing_images_are_listed(tmp_path):
    write_colmap_scene(tmp_path, count=10)
    for name in ("img_03.png", "img_07.png", "img_09.png"):
        (tmp_path / "images" / name).unlink()
    with pytest.raises(SceneError) as err:
        Scene(tmp_path)
    one_line_naming(err, tmp_path / "images", "3 of 10", "img_03.png", "img_07.png", "img_09.png",
                    str(tmp_path / "sparse" / "0" / "images.bin"))


def test_missing_image_folder(tmp_path):
    write_colmap_scene(tmp_path, count=2)
    with pytest.raises(SceneError) as err:
        Scene(tmp_path, images="images_4")
    one_line_naming(err, tmp_path / "images_4", "image folder not found")


@pytest.mark.parametrize("bad_size", [(W + 1, H), (W, H - 7), (W * 2, H * 2), (W // 2, H)])
def test_image_size_disagreeing_with_its_camera(tmp_path, bad_size):
    write_colmap_scene(tmp_path, count=3)
    bad = tmp_path / "images" / "img_01.png"
    cv2.imwrite(str(bad), np.zeros((bad_size[1], bad_size[0], 3), np.uint8))
    with pytest.raises(SceneError) as err:
        Scene(tmp_path)
    one_line_naming(err, bad, f"{bad_size[0]}x{bad_size[1]}", f"{W}x{H}")


def test_unreadable_image(tmp_path):
    write_colmap_scene(tmp_path, count=2)
    bad = tmp_path / "images" / "img_00.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(SceneError) as err:
        Scene(tmp_path)
    one_line_naming(err, bad, "cannot be decoded")


@pytest.mark.parametrize("what, file", [("images", "images.bin"), ("points", "points3D.bin"),
                                        ("cameras", "cameras.bin")])
def test_empty_model(tmp_path, what, file):
    model = write_colmap_scene(tmp_path, count=2)
    if what == "images":
        model.images = {}
    elif what == "points":
        model.points = colmap.ColmapPoints.empty()
    else:
        model.cameras, model.images = {}, {}
    colmap.write_model(model, tmp_path / "sparse" / "0", "bin")
    with pytest.raises(SceneError) as err:
        Scene(tmp_path)
    one_line_naming(err, tmp_path / "sparse" / "0" / file, "empty model")
