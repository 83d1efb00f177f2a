"""gs-render and gs-metrics on a tiny run of the default scene: the original's folder layout, the orbit
video, the results files, and clean errors."""

import json
from pathlib import Path

import pytest
from conftest import tiny_run

from gs_trainer.evaluate import main as metrics_main
from gs_trainer.render import main as render_main
from gs_trainer.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "data" / "tabletop"
NUM_TEST_VIEWS = 5    # data/tabletop has 36 views; --eval holds out every 8th


@pytest.fixture(scope="module", autouse=True)
def _restore_threads(restore_threads):
    yield


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory, "render", "--eval", "--iterations", "20", "--test_iterations",
                    "--save_iterations", "10")


def test_train_output_layout(run):
    assert (run / "point_cloud" / "iteration_10" / "point_cloud.ply").is_file()
    assert (run / "point_cloud" / "iteration_20" / "point_cloud.ply").is_file()   # the last iteration is always saved
    cams = json.loads((run / "cameras.json").read_text())
    assert len(cams) == 36 and {"id", "img_name", "width", "height", "position", "rotation", "fx", "fy"} <= set(cams[0])
    assert "iterations: 20" in (run / "config.yaml").read_text()
    assert list(run.glob("events.out.tfevents.*"))


def test_render_and_metrics(run, capsys):
    assert render_main(["-m", str(run), "--split", "test", "--orbit", "--orbit_frames", "6", "--quiet"]) == 0
    out = run / "test" / "ours_20"
    renders, gts = sorted((out / "renders").glob("*.png")), sorted((out / "gt").glob("*.png"))
    assert [p.name for p in renders] == [p.name for p in gts] == [f"{i:05d}.png" for i in range(NUM_TEST_VIEWS)]
    frames = sorted((run / "orbit" / "ours_20" / "frames").glob("*.png"))
    assert len(frames) == 6
    video = run / "orbit" / "ours_20" / "orbit.mp4"
    assert video.is_file() and video.stat().st_size > 0
    assert render_main(["-m", str(run), "--iteration", "10", "--split", "train", "--quiet"]) == 0
    assert len(list((run / "train" / "ours_10" / "renders").glob("*.png"))) == 36 - NUM_TEST_VIEWS

    assert metrics_main(["-m", str(run)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((run / "results.json").read_text())
    assert set(results) == {"ours_20"}
    r = results["ours_20"]
    assert set(r) == {"SSIM", "PSNR"}                     # the original's shape: numbers only
    assert json.loads((run / "results_info.json").read_text())["ours_20"]["num_views"] == NUM_TEST_VIEWS
    assert 5.0 < r["PSNR"] < 60.0 and 0.0 < r["SSIM"] <= 1.0
    per_view = json.loads((run / "per_view.json").read_text())
    assert set(per_view["ours_20"]) == {"PSNR", "SSIM"} and len(per_view["ours_20"]["PSNR"]) == NUM_TEST_VIEWS
    assert f"{r['PSNR']:8.2f}" in printed and "LPIPS" in printed


def test_clean_errors(tmp_path, capsys):
    assert render_main(["-m", str(tmp_path), "--quiet"]) == 2
    assert metrics_main(["-m", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no config.yaml" in err and "no ours_N folders" in err and "Traceback" not in err


def test_orbit_path_is_closed_and_looks_at_the_scene(run):
    import numpy as np
    from gs_trainer.data.dataset import Scene
    from gs_trainer.render import orbit_cameras
    scene = Scene(SCENE, resolution=8, eval=True, cache_dir=run / "cache")
    path = orbit_cameras(scene.train_cameras, 12)
    centers = np.stack([c.camera_center_np for c in path])
    steps = np.linalg.norm(np.diff(np.vstack([centers, centers[:1]]), axis=0), axis=1)
    assert steps.max() < 2.0 * steps.mean()                     # smooth and closed
    pts = np.asarray(scene.points)
    median = np.median(pts, axis=0)
    for cam in path:                                            # the scene's centre is in front of each camera
        assert (np.asarray(cam.R) @ median + np.asarray(cam.t))[2] > 0


def test_cli_resume_from_checkpoint_matches(run, tmp_path):
    """--start_checkpoint through the CLI: 20 iterations resumed from iteration 10 equal the straight run."""
    import torch
    from gs_trainer.model import GaussianModel
    args = ["-s", str(SCENE), "--eval", "-r", "8", "--iterations", "20", "--test_iterations", "--save_iterations",
            "--cpu_threads", "1", "--quiet", "--no-tensorboard"]
    assert train_main(args + ["-m", str(tmp_path / "a"), "--checkpoint_iterations", "10"]) == 0
    assert train_main(args + ["-m", str(tmp_path / "b"), "--start_checkpoint", str(tmp_path / "a" / "chkpnt10.pth")]) == 0
    a = GaussianModel.load_ply(tmp_path / "a" / "point_cloud" / "iteration_20" / "point_cloud.ply")
    b = GaussianModel.load_ply(tmp_path / "b" / "point_cloud" / "iteration_20" / "point_cloud.ply")
    for name, p in a.param_dict().items():
        assert torch.equal(p, getattr(b, name)), name
    assert train_main(args + ["-m", str(tmp_path / "c"), "--start_checkpoint", str(tmp_path / "missing.pth")]) == 2
