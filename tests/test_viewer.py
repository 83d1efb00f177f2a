"""gs-view and gs-train --viewer: camera conventions, clean errors, and the viewer seen in a real browser
(headless Chromium): the first frame matches the project's own render of the same camera, the camera
jumps to a training/test view beside its ground truth, and live training shows progress and pauses."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_run
import torch

from gs_trainer.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "data" / "tabletop"
WAIT_S = 120.0            # every wait on the browser or the render thread is bounded by this
MIN_MATCH_PSNR_DB = 30.0  # screenshot vs our render: JPEG (q 90) and the browser's upscaling only (measured 44 dB)
MIN_CONTENT_STD = 4.0     # grey levels: a blank or error page has (almost) none inside the crop


@pytest.fixture(scope="module", autouse=True)
def _restore_threads(restore_threads):
    yield


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory, "view", "--eval", "--iterations", "10", "--test_iterations",
                    "--save_iterations", "--no-tensorboard")


def wait_until(predicate, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s")
        time.sleep(0.1)


# -- without a browser -----------------------------------------------------------------------------
def test_camera_round_trip():
    from gs_trainer.data.cameras import Camera
    from gs_trainer.utils_synthetic import look_at
    from gs_trainer.viewer.camera import camera_from_viser, fit_resolution, viser_pose

    rot, trans = look_at(np.array([3.0, -1.0, 2.0]), np.array([0.2, 0.1, 0.0]))
    cam = Camera(0, "a", 160, 120, 150.0, 150.0, 80.0, 60.0, rot, trans)
    wxyz, pos, fov = viser_pose(cam)
    back = camera_from_viser(wxyz, pos, fov, 160, 120)
    assert np.allclose(back.R, cam.R, atol=1e-9) and np.allclose(back.t, cam.t, atol=1e-9)
    assert back.fy == pytest.approx(150.0) and back.cx == 80.0
    # viser's identity pose is OpenCV's: the camera at the origin looking down +z
    ident = camera_from_viser((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0), np.pi / 2, 64, 32)
    assert np.allclose(ident.R, np.eye(3)) and np.allclose(ident.t, 0) and ident.fy == pytest.approx(16.0)
    assert fit_resolution(1280, 720, 256) == (256, 144) and fit_resolution(100, 50, 256) == (100, 50)


def test_clean_errors(tmp_path, capsys):
    from gs_trainer.viewer.cli import build_parser, main as view_main

    assert view_main(["-m", str(tmp_path)]) == 2
    assert view_main(["-m", str(tmp_path), "--port", "70000"]) == 2
    assert train_main(["-s", str(SCENE), "-m", str(tmp_path / "r"), "--viewer", "--viewer_port", "-1"]) == 2
    err = capsys.readouterr().err
    assert "no config.yaml" in err and "--port 70000" in err and "--viewer_port -1" in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()   # nothing written on bad input
    text = build_parser().format_help()
    assert "127.0.0.1" in text and "network" in text


def test_train_with_viewer_and_nobody_connected(tmp_path, capsys):
    assert train_main(["-s", str(SCENE), "-m", str(tmp_path / "r"), "-r", "8", "--iterations", "5",
                       "--test_iterations", "--save_iterations", "--cpu_threads", "1", "--quiet",
                       "--no-tensorboard", "--viewer", "--viewer_port", "0"]) == 0
    assert "live viewer at http://127.0.0.1:" in capsys.readouterr().out
    assert (tmp_path / "r" / "point_cloud" / "iteration_5" / "point_cloud.ply").is_file()


def test_gs_view_prints_the_url_and_stops_on_ctrl_c(run):
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "gs_trainer.viewer.cli", "-m", str(run), "--port", "0", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = wait_until(lambda: next((ln for ln in proc.stdout if "Ctrl+C" in ln), None), "the URL line")
        assert "at http://127.0.0.1:" in line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- in a real browser -----------------------------------------------------------------------------
def crop(image: np.ndarray) -> np.ndarray:
    """The middle of the canvas, clear of viser's side panel (top right), its notices (top left), and the
    outline of the frustum of the view the camera sits at (around the image)."""
    h, w = image.shape[:2]
    return image[int(0.40 * h):int(0.90 * h), int(0.22 * w):int(0.62 * w)]


def steady_screenshot(browser, timeout: float = WAIT_S) -> np.ndarray:
    """A screenshot once two in a row, half a second apart, agree."""
    deadline = time.monotonic() + timeout
    prev = browser.screenshot()
    while True:
        time.sleep(0.5)
        shot = browser.screenshot()
        if shot.shape == prev.shape and np.abs(shot.astype(np.int16) - prev).mean() < 0.2:
            return shot
        if time.monotonic() > deadline:
            raise TimeoutError("the page never stopped changing")
        prev = shot


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


def test_gs_view_in_chromium(run):
    import cv2
    from browser import Browser
    from gs_trainer.renderer import render
    from gs_trainer.viewer.camera import viser_pose
    from gs_trainer.viewer.cli import start_viewer
    from gs_trainer.viewer.server import to_uint8

    viewer, iteration = start_viewer(["-m", str(run), "--port", "0", "--max_resolution", "160",
                                      "--preview_resolution", "40", "--quiet"])
    try:
        assert viewer.url.startswith("http://127.0.0.1:")
        with Browser(640, 480) as browser:
            browser.goto(viewer.url)
            frame = wait_until(lambda: (f := viewer.last_frame()) is not None and f.full and f, "first full frame")
            shot = steady_screenshot(browser)   # the JPEG has reached the page, the page's fade-in is over
            frame = viewer.last_frame()          # the frame on the page now
            # progressive: a coarse frame while the camera was just moved, then the full one
            times = viewer.frame_times()
            assert any(not full for full, *_ in times) and any(full for full, *_ in times)
            preview = next(t for t in times if not t[0])
            assert max(preview[1], preview[2]) <= 40 and max(frame.camera.width, frame.camera.height) == 160

            # the project's own render of the same camera, brought to the canvas size as the browser does
            model = viewer.source.model
            with torch.no_grad():
                own = to_uint8(render(model, frame.camera, viewer.bg).image)
            assert np.array_equal(own, frame.image)
            h, w = shot.shape[:2]
            own_big = cv2.resize(own, (w, h), interpolation=cv2.INTER_LINEAR)
            a, b = crop(shot), crop(own_big)
            assert a.std() > MIN_CONTENT_STD, "the canvas region is blank"
            assert psnr(a, b) > MIN_MATCH_PSNR_DB, psnr(a, b)
            # ... and not any image: our render of another view does not match
            other = viewer.views["train"][len(viewer.views["train"]) // 2]
            with torch.no_grad():
                wrong = to_uint8(render(model, other.scaled(frame.camera.width, frame.camera.height), viewer.bg).image)
            assert psnr(a, crop(cv2.resize(wrong, (w, h)))) < psnr(a, b) - 3.0

            # click a test view's frustum, as a user would: back the camera off behind test view 1 along its
            # axis (its far face then spans the middle fifth of the screen), and click the centre
            client = next(iter(viewer.server.get_clients().values()))
            target = viewer.views["test"][1]
            wxyz, pos, _ = viser_pose(target)
            with client.atomic():
                client.camera.wxyz = wxyz
                client.camera.position = pos - 4 * viewer.frustum_scale * np.asarray(target.R)[2]
            wait_until(lambda: not np.allclose(client.camera.position, pos), "camera backed off")
            time.sleep(1.0)
            width, height = browser.evaluate("[window.innerWidth, window.innerHeight]")
            jumped = lambda: np.allclose(client.camera.position, target.camera_center_np, atol=1e-4)  # noqa: E731
            deadline = time.monotonic() + WAIT_S
            while not jumped():                   # the page may take the first click for focus
                assert time.monotonic() < deadline, "a click on the frustum did not move the camera"
                for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
                    browser.call("Input.dispatchMouseEvent", type=kind, x=width / 2, y=height / 2,
                                 button="left", clickCount=1)
                time.sleep(0.5)
            wait_until(lambda: viewer.last_frame().full and np.allclose(
                viewer.last_frame().camera.camera_center_np, target.camera_center_np, atol=1e-4), "frame at the test view")
            browser.wait_for("document.body.innerText.includes('render | ground truth, PSNR')", timeout=WAIT_S)
            assert browser.evaluate(f"document.body.innerText.includes('test view 1 ({target.image_name})')")
            assert len(viewer.view_names()) == 36    # one frustum (and list entry) per training and test view
    finally:
        viewer.close()


def test_live_training_in_chromium(tmp_path):
    from browser import Browser
    from gs_trainer.config import TrainConfig
    from gs_trainer.trainer import Trainer
    from gs_trainer.utils_run import RunFolder
    from gs_trainer.utils_synthetic import make_synthetic_scene
    from gs_trainer.viewer.live import LiveViewer

    cfg = TrainConfig()
    cfg.optim.iterations = 400
    cfg.run.test_iterations, cfg.run.save_iterations, cfg.run.quiet = [], [], True
    cfg.validate()
    scene = make_synthetic_scene(num_gaussians=60, num_views=6, width=32, height=24, seed=1)
    trainer = Trainer(cfg, scene, RunFolder(tmp_path, tensorboard=False))
    live = LiveViewer(trainer, port=0, max_resolution=64, preview_resolution=16)
    trainer.on_step = live.on_step
    done = threading.Event()
    errors = []

    def train():
        try:
            trainer.train()
        except Exception as err:  # noqa: BLE001 - reported by the test
            errors.append(err)
        finally:
            done.set()

    try:
        with Browser(480, 360) as browser:
            browser.goto(live.url)
            wait_until(lambda: live.viewer.num_clients == 1, "browser connected")
            thread = threading.Thread(target=train, daemon=True)
            thread.start()
            browser.wait_for("document.body.innerText.includes('Pause training')", timeout=WAIT_S)
            # the scene as it is now: frames of newer snapshots keep arriving while it trains
            wait_until(lambda: (f := live.viewer.last_frame()) is not None and f.key[1] >= 2 or done.is_set(),
                       "frames of a newer model")
            assert not done.is_set(), "training finished before the viewer showed progress"
            browser.wait_for("document.body.innerText.includes('Gaussians') && "
                             "document.body.innerText.includes('loss')", timeout=WAIT_S)
            # pause from the page: press the button as a user would
            browser.evaluate("[...document.querySelectorAll('button')].find(b => b.innerText.includes('Pause training')).click()")
            wait_until(lambda: live.paused, "paused from the page")
            time.sleep(0.5)
            stopped_at = trainer.iteration
            time.sleep(1.5)
            assert trainer.iteration == stopped_at and not done.is_set()
            browser.wait_for("document.body.innerText.includes('Resume training')", timeout=WAIT_S)
            browser.evaluate("[...document.querySelectorAll('button')].find(b => b.innerText.includes('Resume training')).click()")
            assert done.wait(WAIT_S), "training did not finish after resume"
            assert not errors, errors
            assert trainer.iteration == 400
    finally:
        live.close()
