"""COLMAP model I/O: the shipped scene, binary/text agreement, exact round trips, pycolmap agreement,
every camera model, and truncated / corrupted / malformed files."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from gs_trainer.data import colmap
from gs_trainer.data.cameras import qvec_to_rotmat
from gs_trainer.data.errors import SceneError

REPO = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = REPO / "data" / "tabletop" / "sparse" / "0"

#: pycolmap may renormalise a quaternion it reads; that moves it by float64 round-off only.
QUAT_TOL = 1e-12


def assert_models_equal(a: colmap.ColmapModel, b: colmap.ColmapModel) -> None:
    """Bit-exact equality of two models (everything the files hold)."""
    assert sorted(a.cameras) == sorted(b.cameras)
    for cid, ca in a.cameras.items():
        cb = b.cameras[cid]
        assert (ca.model, ca.width, ca.height) == (cb.model, cb.width, cb.height)
        np.testing.assert_array_equal(ca.params, cb.params)
    assert sorted(a.images) == sorted(b.images)
    for iid, ia in a.images.items():
        ib = b.images[iid]
        assert (ia.name, ia.camera_id) == (ib.name, ib.camera_id)
        np.testing.assert_array_equal(ia.qvec, ib.qvec)
        np.testing.assert_array_equal(ia.tvec, ib.tvec)
        np.testing.assert_array_equal(ia.xys, ib.xys)
        np.testing.assert_array_equal(ia.point3D_ids, ib.point3D_ids)
    for name in ("ids", "xyz", "rgb", "errors", "track_lengths", "track_image_ids", "track_point2D_idxs"):
        np.testing.assert_array_equal(getattr(a.points, name), getattr(b.points, name), err_msg=name)


def assert_one_line_naming(err: pytest.ExceptionInfo, path: Path, *fragments: str) -> None:
    message = str(err.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture(scope="module")
def shipped() -> colmap.ColmapModel:
    return colmap.read_model(SHIPPED_MODEL)


def tiny_model() -> colmap.ColmapModel:
    """A hand-made model with awkward values: non-round floats, an image without 2D points,
    invalid point ids, a name with a space, a point with an empty track."""
    rng = np.random.default_rng(7)
    cams = {
        1: colmap.ColmapCamera(1, "OPENCV", 640, 480, rng.normal(size=8) + np.array([500, 500, 320, 240, 0, 0, 0, 0])),
        7: colmap.ColmapCamera(7, "SIMPLE_PINHOLE", 33, 17, np.array([1 / 3, 16.5, 8.5])),
    }
    images = {
        3: colmap.ColmapImage(3, rng.normal(size=4), rng.normal(size=3), 1, "a b/c.png",
                              rng.normal(size=(5, 2)) * 100, np.array([0, -1, 5, 2**40, -1], np.int64)),
        1: colmap.ColmapImage(1, np.array([1.0, 0, 0, 0]), np.zeros(3), 7, "z.jpg"),
    }
    points = colmap.ColmapPoints(np.array([5, 0, 2**40], np.int64), rng.normal(size=(3, 3)),
                                 np.array([[0, 128, 255], [1, 2, 3], [9, 9, 9]], np.uint8), np.array([0.1, 2.0, 1e-17]),
                                 np.array([2, 0, 1], np.int64), np.array([3, 3, 3], np.int64),
                                 np.array([2, 0, 3], np.int64))
    return colmap.ColmapModel(cams, images, points)


# ------------------------------------------------------------------------------------------------
# The shipped scene
# ------------------------------------------------------------------------------------------------

def test_shipped_scene_is_a_complete_binary_model(shipped):
    assert colmap.detect_model_format(SHIPPED_MODEL) == "bin"
    assert len(shipped.cameras) >= 1 and all(c.model == "PINHOLE" for c in shipped.cameras.values())
    assert 30 <= len(shipped.images) <= 40
    assert len(shipped.points) > 500
    names = [img.name for img in shipped.images.values()]
    assert all((SHIPPED_MODEL.parents[1] / "images" / n).is_file() for n in names)
    # Every track refers to a registered image and to a 2D point of it that points back.
    off = shipped.points.track_offsets
    for i in range(0, len(shipped.points), 97):
        for image_id, idx in zip(shipped.points.track_image_ids[off[i]:off[i + 1]],
                                 shipped.points.track_point2D_idxs[off[i]:off[i + 1]]):
            assert shipped.images[int(image_id)].point3D_ids[int(idx)] == shipped.points.ids[i]


def test_shipped_scene_size_budget():
    total = sum(f.stat().st_size for f in SHIPPED_MODEL.parents[1].rglob("*") if f.is_file())
    assert total <= 5 * 1024 * 1024


def test_binary_and_text_readings_of_shipped_scene_agree(shipped, tmp_path):
    colmap.write_model(shipped, tmp_path, "txt")
    assert colmap.detect_model_format(tmp_path) == "txt"
    assert_models_equal(shipped, colmap.read_model(tmp_path))


@pytest.mark.parametrize("fmt", ["bin", "txt"])
def test_write_then_read_round_trips_exactly(fmt, tmp_path):
    model = tiny_model()
    colmap.write_model(model, tmp_path, fmt)
    again = colmap.read_model(tmp_path, fmt)
    assert_models_equal(model, again)
    # And writing what was read gives the same bytes.
    colmap.write_model(again, tmp_path / "second", fmt)
    for name in colmap.MODEL_FILES:
        assert (tmp_path / f"{name}.{fmt}").read_bytes() == (tmp_path / "second" / f"{name}.{fmt}").read_bytes()


def test_writing_shipped_binary_reproduces_colmaps_bytes(shipped, tmp_path):
    colmap.write_model(shipped, tmp_path, "bin")
    for name in colmap.MODEL_FILES:
        assert (tmp_path / f"{name}.bin").read_bytes() == (SHIPPED_MODEL / f"{name}.bin").read_bytes(), name


def test_every_camera_model_round_trips_with_its_parameter_count(tmp_path):
    cams = {m.model_id + 1: colmap.ColmapCamera(m.model_id + 1, m.name, 100, 80, np.arange(m.num_params) + 0.25)
            for m in colmap.CAMERA_MODELS}
    for fmt in ("bin", "txt"):
        path = tmp_path / f"cameras.{fmt}"
        (colmap.write_cameras_binary if fmt == "bin" else colmap.write_cameras_text)(cams, path)
        back = (colmap.read_cameras_binary if fmt == "bin" else colmap.read_cameras_text)(path)
        for cid, cam in cams.items():
            assert back[cid].model == cam.model
            np.testing.assert_array_equal(back[cid].params, cam.params)


def test_colmap4_rig_and_frame_files_are_ignored(shipped, tmp_path):
    colmap.write_model(shipped, tmp_path, "txt")
    (tmp_path / "rigs.txt").write_text("# rig list\n1 1 CAMERA 1\n")
    (tmp_path / "frames.txt").write_text("# frame list\nthis is not parsed\n")
    assert_models_equal(shipped, colmap.read_model(tmp_path))


# ------------------------------------------------------------------------------------------------
# pycolmap, when installed
# ------------------------------------------------------------------------------------------------

def test_reader_agrees_with_pycolmap_on_every_camera_pose_and_point(shipped):
    pycolmap = pytest.importorskip("pycolmap")
    rec = pycolmap.Reconstruction(str(SHIPPED_MODEL))
    assert sorted(rec.cameras) == sorted(shipped.cameras)
    for cid, cam in rec.cameras.items():
        ours = shipped.cameras[cid]
        assert (cam.model.name, cam.width, cam.height) == (ours.model, ours.width, ours.height)
        np.testing.assert_array_equal(np.asarray(cam.params), ours.params)
    assert sorted(rec.images) == sorted(shipped.images)
    for iid, img in rec.images.items():
        ours = shipped.images[iid]
        assert (img.name, img.camera_id) == (ours.name, ours.camera_id)
        pose = img.cam_from_world() if callable(img.cam_from_world) else img.cam_from_world
        xyzw = np.asarray(pose.rotation.quat)
        np.testing.assert_allclose(np.r_[xyzw[3], xyzw[:3]], ours.qvec, rtol=0, atol=QUAT_TOL)
        np.testing.assert_allclose(pose.rotation.matrix(), qvec_to_rotmat(ours.qvec), rtol=0, atol=QUAT_TOL)
        np.testing.assert_array_equal(np.asarray(pose.translation), ours.tvec)
        np.testing.assert_array_equal(np.array([p.xy for p in img.points2D]).reshape(-1, 2), ours.xys)
    assert sorted(rec.points3D) == sorted(shipped.points.ids.tolist())
    index = {int(pid): i for i, pid in enumerate(shipped.points.ids)}
    off = shipped.points.track_offsets
    for pid, point in rec.points3D.items():
        i = index[pid]
        np.testing.assert_array_equal(np.asarray(point.xyz), shipped.points.xyz[i])
        np.testing.assert_array_equal(np.asarray(point.color), shipped.points.rgb[i])
        assert point.error == shipped.points.errors[i]
        track = [(e.image_id, e.point2D_idx) for e in point.track.elements]
        ours_track = list(zip(shipped.points.track_image_ids[off[i]:off[i + 1]].tolist(),
                              shipped.points.track_point2D_idxs[off[i]:off[i + 1]].tolist()))
        assert track == ours_track


def test_pycolmap_reads_our_text_files_and_we_read_its(shipped, tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    colmap.write_model(shipped, tmp_path / "ours", "txt")
    rec = pycolmap.Reconstruction(str(tmp_path / "ours"))
    assert (rec.num_cameras(), rec.num_images(), rec.num_points3D()) == (
        len(shipped.cameras), len(shipped.images), len(shipped.points))
    (tmp_path / "theirs").mkdir()
    pycolmap.Reconstruction(str(SHIPPED_MODEL)).write_text(str(tmp_path / "theirs"))
    theirs = colmap.read_model(tmp_path / "theirs", "txt")
    assert sorted(theirs.images) == sorted(shipped.images)
    for iid, img in theirs.images.items():
        assert img.name == shipped.images[iid].name
        np.testing.assert_array_equal(img.tvec, shipped.images[iid].tvec)  # COLMAP writes 17 digits: exact
    np.testing.assert_array_equal(np.sort(theirs.points.ids), np.sort(shipped.points.ids))


def test_camera_model_table_matches_pycolmap():
    pycolmap = pytest.importorskip("pycolmap")
    for model in colmap.CAMERA_MODELS:
        cam = pycolmap.Camera.create_from_model_name(1, model.name, 100.0, 64, 48)
        assert int(cam.model) == model.model_id, model.name
        assert len(cam.params) == model.num_params, model.name


# ------------------------------------------------------------------------------------------------
# Bad files
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def model_copy(tmp_path) -> Path:
    dst = tmp_path / "sparse0"
    shutil.copytree(SHIPPED_MODEL, dst)
    return dst


@pytest.mark.parametrize("name", ["cameras.bin", "images.bin", "points3D.bin"])
@pytest.mark.parametrize("where", ["in the count", "half way", "last byte"])
def test_truncated_binary_files_name_the_file(model_copy, name, where):
    path = model_copy / name
    data = path.read_bytes()
    cut = {"in the count": 4, "half way": len(data) // 2, "last byte": len(data) - 1}[where]
    path.write_bytes(data[:cut])
    with pytest.raises(SceneError) as err:
        colmap.read_model(model_copy)
    assert_one_line_naming(err, path, "truncated")


@pytest.mark.parametrize("name", ["cameras.bin", "images.bin", "points3D.bin"])
def test_trailing_garbage_is_reported(model_copy, name):
    path = model_copy / name
    path.write_bytes(path.read_bytes() + b"\x01\x02\x03")
    with pytest.raises(SceneError) as err:
        colmap.read_model(model_copy)
    assert_one_line_naming(err, path, "3 unexpected bytes")


def test_huge_record_count_is_reported_not_allocated(model_copy):
    path = model_copy / "points3D.bin"
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 2**62) + data[8:])
    with pytest.raises(SceneError) as err:
        colmap.read_model(model_copy)
    assert_one_line_naming(err, path, str(2**62))


def test_unknown_camera_model_id(model_copy):
    path = model_copy / "cameras.bin"
    data = bytearray(path.read_bytes())
    struct.pack_into("<i", data, 8 + 4, 99)  # first camera's model id
    path.write_bytes(bytes(data))
    with pytest.raises(SceneError) as err:
        colmap.read_model(model_copy)
    assert_one_line_naming(err, path, "unknown camera model id 99")


def test_unknown_camera_model_name_in_text(tmp_path):
    path = tmp_path / "cameras.txt"
    path.write_text("# comment\n1 PINHOLE 10 10 5 5 5 5\n2 FANCY_LENS 10 10 1 2 3\n")
    with pytest.raises(SceneError) as err:
        colmap.read_cameras_text(path)
    assert_one_line_naming(err, path, ":3", "unknown camera model 'FANCY_LENS'")


def test_wrong_parameter_count_in_text(tmp_path):
    path = tmp_path / "cameras.txt"
    path.write_text("1 SIMPLE_RADIAL 10 10 5 5 5\n")
    with pytest.raises(SceneError) as err:
        colmap.read_cameras_text(path)
    assert_one_line_naming(err, path, "SIMPLE_RADIAL takes 4 parameters, got 3")


@pytest.mark.parametrize("points_line, problem", [("1.0 2.0", "triplets"), ("1.0 2.0 x", "expected numbers")])
def test_malformed_image_points_line(tmp_path, points_line, problem):
    images = tmp_path / "images.txt"
    images.write_text(f"# header\n1 1 0 0 0 0 0 0 1 a.png\n{points_line}\n")
    with pytest.raises(SceneError) as err:
        colmap.read_images_text(images)
    assert_one_line_naming(err, images, ":3", problem)


def test_malformed_point_line(tmp_path):
    points = tmp_path / "points3D.txt"
    points.write_text("5 0.1 0.2 not_a_number 1 2 3 0.5\n")
    with pytest.raises(SceneError) as err:
        colmap.read_points3D_text(points)
    assert_one_line_naming(err, points, ":1", "expected numbers")


def test_image_referring_to_missing_camera(tmp_path):
    model = tiny_model()
    del model.cameras[7]
    colmap.write_model(model, tmp_path, "bin")
    with pytest.raises(SceneError) as err:
        colmap.read_model(tmp_path)
    assert_one_line_naming(err, tmp_path / "images.bin", "camera 7")


def test_incomplete_model_folder(tmp_path):
    colmap.write_model(tiny_model(), tmp_path, "bin")
    (tmp_path / "points3D.bin").unlink()
    with pytest.raises(SceneError) as err:
        colmap.read_model(tmp_path)
    assert_one_line_naming(err, tmp_path, "missing points3D.bin")
